"""Series that fail BIDS validation are set aside, so the rest of the subject publishes.

Each validator error that points at a file of a converted series takes that whole series out of
the tree: its images and sidecars, its scans.tsv rows, and any field-map link to it. An error
that points at no series (the subject's scans.tsv, a missing dataset file, no location) cannot
be set aside: the gate fails as before. With --strict nothing is set aside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.bids import SubjectSession
from bidsapp.files import rewrite


@dataclass
class SetAside:
    """One series taken out: which, its files, and the validator's codes against it."""

    series_id: str
    files: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)


def owners(
    series: list[dict[str, Any]], errors: list[tuple[str, str]]
) -> tuple[dict[int, set[str]], list[tuple[str, str]]]:
    """Which series (row index) each error (code, location) is against; and those against none."""
    stems = {f"/{stem}": k for k, row in enumerate(series) for stem in row.get("outputs") or []}
    found: dict[int, set[str]] = {}
    orphans: list[tuple[str, str]] = []
    for code, location in errors:
        k = next(
            (k for stem, k in stems.items() if location.startswith((f"{stem}.", f"{stem}_"))),
            None,
        )
        if k is None:
            orphans.append((code, location))
        else:
            found.setdefault(k, set()).add(code)
    return found, orphans


def set_aside(
    bids: Path, label: str, series: list[dict[str, Any]], against: dict[int, set[str]]
) -> list[SetAside]:
    """Take the series out of the tree; their rows say so. Returns what was set aside."""
    removed: list[SetAside] = []
    gone: set[str] = set()
    broken: set[str] = set()  # field-map sets that lost a member: they estimate nothing now
    for k, codes in sorted(against.items()):
        row = series[k]
        entry = SetAside(str(row.get("series_id", "")), codes=sorted(codes))
        for stem in row.get("outputs") or []:
            base = bids / stem
            if "/fmap/" in stem:
                broken.add(
                    str(_read(base.with_name(base.name + ".json")).get("B0FieldIdentifier", ""))
                )
            for path in sorted(base.parent.glob(base.name + "[._]*")):
                entry.files.append(path.relative_to(bids).as_posix())
                path.unlink()
            gone.add(stem)
        row["reason"] = f"set aside: fails BIDS validation ({', '.join(entry.codes)})"
        row["outputs"] = []
        removed.append(entry)
    _unlink(bids / SubjectSession(label).folder, bids, gone, broken - {""})
    return removed


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _unlink(sub: Path, bids: Path, gone: set[str], broken: set[str]) -> None:
    """No scans.tsv row, IntendedFor entry or field-map link points at what was set aside."""
    for scans in sub.rglob("*_scans.tsv"):
        lines = scans.read_text(encoding="utf-8").splitlines()
        base = scans.parent.relative_to(bids).as_posix()
        keep = [
            line
            for line in lines[1:]
            if f"{base}/{line.split(chr(9))[0]}".removesuffix(".nii.gz") not in gone
        ]
        if len(keep) != len(lines) - 1:
            rewrite(scans, ("\n".join(lines[:1] + keep) + "\n").encode())
    for sidecar in sorted(sub.rglob("*.json")):
        data = _read(sidecar)
        new = dict(data)
        if isinstance(new.get("IntendedFor"), list):
            new["IntendedFor"] = [t for t in new["IntendedFor"] if _target(t) not in gone]
            if not new["IntendedFor"]:
                del new["IntendedFor"]
        if new.get("B0FieldIdentifier") in broken or new.get("B0FieldSource") in broken:
            for key in ("B0FieldIdentifier", "B0FieldSource", "IntendedFor"):
                new.pop(key, None)
        if new != data:
            rewrite(sidecar, (json.dumps(new, indent=2, ensure_ascii=False) + "\n").encode())


def _target(uri: str) -> str:
    return str(uri).removeprefix("bids::").removesuffix(".nii.gz")
