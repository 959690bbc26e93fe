"""After conversion: every image of a planned series under the name the plan gives it.

heudiconv writes a series that makes one image under its final name. A series that makes
several (echoes, magnitude and phase, a field map in Hz, a partial volume, dcm2niix's derived
extras, two acquisitions heudiconv grouped as one) goes through a provisional name that heudiconv
only numbers; each numbered image is then recognised by its sidecar and header against what the
dcm2niix pass wrote for the same series, and renamed. A series heudiconv could not convert takes
the dcm2niix pass's own image. The subject's scans.tsv follows every rename.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.bids import SubjectSession
from bidsapp.files import rewrite
from bidsapp.heuristic.classify import Decision
from bidsapp.heuristic.headers import Output, SeriesHeader
from bidsapp.heuristic.plan import output_plan
from bidsapp.heuristic.prepass import nifti_shape

# What identifies one of a series' images in its sidecar, whoever ran dcm2niix.
SIGNATURE = (
    "SeriesNumber",
    "AcquisitionTime",
    "ImageType",
    "ImageTypeText",
    "EchoNumber",
    "EchoTime",
    "SeriesDescription",
)
COMPANIONS = (".json", ".bval", ".bvec")


@dataclass
class Settled:
    """What naming the images did: files written under their final name, notes by series."""

    written: dict[str, str] = field(default_factory=dict)  # final stem → series key
    notes: dict[str, list[str]] = field(default_factory=dict)

    def note(self, key: str, text: str) -> None:
        if text not in self.notes.setdefault(key, []):
            self.notes[key].append(text)


def full_stem(name: str, label: str, session: str) -> str:
    """'anat/acq-x_T1w' → 'sub-01[/ses-1]/anat/sub-01[_ses-1]_acq-x_T1w'."""
    return SubjectSession(label, session).path(name)


def settle(
    bids: Path,
    label: str,
    session: str,
    entries: Sequence[tuple[Decision, SeriesHeader]],
    templates: Sequence[dict[str, Any]],
    prepass: Path,
    by_dcm2niix: set[str],
) -> Settled:
    """Name every image of `entries`: heudiconv's (per `templates`, what the heuristic gave
    heudiconv) and, for the series keys in `by_dcm2niix`, the dcm2niix pass's."""
    result = Settled()
    plans = {h.key: (d, h, output_plan(d, h)) for d, h in entries}
    renames: dict[str, str | None] = {}  # old path (relative to the subject) → new or None
    for record in templates:
        stem = _format(record["template"], label, session)
        members = [plans[k] for k in record["members"] if k in plans]
        if not any(name for _, _, rows in members for _, name, _ in rows):
            continue
        produced = sorted((bids / stem).parent.glob(Path(stem).name + "*.nii.gz"))
        if not _provisional(stem):
            # a single image under its final name; anything beside it (heudiconv names dcm2niix's
            # derived extras `<stem>_heudiconvNNN_<postfix>`) is not published
            for extra in produced:
                if extra.name != f"{Path(stem).name}.nii.gz":
                    _drop(extra, renames, bids, label)
            if (bids / f"{stem}.nii.gz").is_file():
                result.written[stem] = members[0][1].key
            continue
        if produced:
            _name_numbered(bids, stem, produced, members, label, session, prepass, renames, result)
    for key in sorted(by_dcm2niix):
        if key in plans:
            _, h, rows = plans[key]
            _from_prepass(bids, label, session, h, rows, prepass, result)
    _follow_in_scans(bids, label, session, renames, result)
    return result


def _format(template: str, label: str, session: str) -> str:
    who = SubjectSession(label, session)
    return template.format(
        bids_subject_session_dir=who.folder, bids_subject_session_prefix=who.prefix
    )


def _provisional(stem: str) -> bool:
    return bool(re.search(r"_acq-bidsapp\d+_magnitude$", stem))


def _signature(sidecar: dict[str, Any]) -> tuple[str, ...]:
    return tuple(json.dumps(sidecar.get(k), sort_keys=True) for k in SIGNATURE)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _gz_shape(path: Path) -> tuple[int, ...]:
    with gzip.open(path, "rb") as fh:
        head = fh.read(548)
    tmp = path.with_name(path.name + ".head")
    try:
        tmp.write_bytes(head)
        return nifti_shape(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def _name_numbered(
    bids: Path,
    stem: str,
    produced: list[Path],
    members: list[tuple[Decision, SeriesHeader, list[tuple[Output, str, str]]]],
    label: str,
    session: str,
    prepass: Path,
    renames: dict[str, str | None],
    result: Settled,
) -> None:
    """Recognise each numbered image heudiconv wrote for one of its series, and rename it."""
    candidates = [
        (h.key, o, name, why, _signature(_read_json(prepass / f"{o.file}.json")))
        for _, h, rows in members
        for o, name, why in rows
    ]
    taken: set[int] = set()
    for image in produced:
        old = image.name[: -len(".nii.gz")]
        signature = _signature(_read_json(image.with_name(old + ".json")))
        shape = _gz_shape(image)
        match = next(
            (
                n
                for n, c in enumerate(candidates)
                if n not in taken and c[4] == signature and (not c[1].shape or c[1].shape == shape)
            ),
            None,
        )
        if match is None:  # never guessed: an image nobody can name is not published
            _drop(image, renames, bids, label)
            result.note(members[0][1].key, f"an image heudiconv wrote ({shape}) matched no plan")
            continue
        taken.add(match)
        key, output, name, _ = candidates[match][:4]
        if not name:  # planned so (a derived extra, a partial volume): the table says why
            _drop(image, renames, bids, label)
            continue
        final = full_stem(name, label, session)
        _move_all(bids, image.parent / old, final, output, renames, label)
        result.written[final] = key
    # heudiconv puts a numbered series' b-values beside the unnumbered provisional stem
    for suffix in (".bval", ".bvec"):
        (bids / f"{stem}{suffix}").unlink(missing_ok=True)


def _move_all(
    bids: Path,
    old: Path,
    final: str,
    output: Output,
    renames: dict[str, str | None],
    label: str,
) -> None:
    target = bids / final
    target.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".nii.gz", ".json"):
        source = old.with_name(old.name + ext)
        if source.exists():
            source.replace(target.with_name(target.name + ext))
    if output.bvalues:
        for ext in (".bval", ".bvec"):
            numbered = old.with_name(old.name + ext)
            shared = old.with_name(re.sub(r"\d+$", "", old.name) + ext)
            source = numbered if numbered.exists() else shared
            if source.exists():
                shutil.copyfile(source, target.with_name(target.name + ext))
    sub = bids / SubjectSession(label).folder
    renames[(old.with_name(old.name + ".nii.gz")).relative_to(sub).as_posix()] = (
        target.with_name(target.name + ".nii.gz").relative_to(sub).as_posix()
    )


def _drop(image: Path, renames: dict[str, str | None], bids: Path, label: str) -> None:
    stem = image.name[: -len(".nii.gz")]
    for ext in (".nii.gz", *COMPANIONS):
        image.with_name(stem + ext).unlink(missing_ok=True)
    renames[image.relative_to(bids / SubjectSession(label).folder).as_posix()] = None


def _from_prepass(
    bids: Path,
    label: str,
    session: str,
    h: SeriesHeader,
    rows: list[tuple[Output, str, str]],
    prepass: Path,
    result: Settled,
) -> None:
    """The dcm2niix pass's images of a series heudiconv could not convert, compressed."""
    for output, name, _ in rows:
        source = prepass / f"{output.file}.nii"
        if not name or not source.is_file():
            continue
        final = bids / full_stem(name, label, session)
        final.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as src, gzip.open(f"{final}.nii.gz", "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        for ext in COMPANIONS:
            extra = prepass / f"{output.file}{ext}"
            if extra.is_file():
                shutil.copyfile(extra, f"{final}{ext}")
        result.written[full_stem(name, label, session)] = h.key


def _follow_in_scans(
    bids: Path, label: str, session: str, renames: dict[str, str | None], result: Settled
) -> None:
    """scans.tsv rows follow renamed images, leave with dropped ones, arrive with new ones."""
    who = SubjectSession(label, session)
    folder, prefix = bids / who.folder, who.prefix
    scans = folder / f"{prefix}_scans.tsv"
    base = f"ses-{session}/" if session else ""
    header, rows = "filename\tacq_time", []
    if scans.is_file():
        lines = scans.read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], [ln.split("\t") for ln in lines[1:] if ln.strip()]
    kept: dict[str, list[str]] = {}
    for cells in rows:
        path = base + cells[0]
        new = renames.get(path, path)
        if new is not None:
            kept[new[len(base) :]] = [new[len(base) :], *cells[1:]]
    width = len(header.split("\t"))
    for stem in result.written:
        rel = f"{stem}.nii.gz"[len(who.folder) + 1 :]
        kept.setdefault(rel, [rel, *["n/a"] * (width - 1)])
    present = {r: c for r, c in kept.items() if (folder / r).is_file()}
    if present or scans.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        text = header + "\n" + "".join("\t".join(c) + "\n" for _, c in sorted(present.items()))
        rewrite(scans, text.encode())
