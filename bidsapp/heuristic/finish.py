"""After heudiconv: what only the whole session shows, written into the converted sidecars.

The auto heuristic records its decisions (the plan); from them this step sets the fields
overrides ask for, writes `aslcontext.tsv` and the ASL fields derived from the headers, and links
field maps to the images they correct (`B0FieldIdentifier`, `B0FieldSource`, `IntendedFor`),
so fMRIPrep uses them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bidsapp.heuristic.classify import Decision, output_names
from bidsapp.heuristic.headers import SeriesHeader

PLAN_ENV = "BIDSAPP_PLAN"
PlanEntry = tuple[Decision, SeriesHeader]
_TARGETS = {("func", "bold"), ("func", "sbref"), ("dwi", "dwi"), ("dwi", "sbref"), ("perf", "asl")}


def read_plan(path: Path) -> list[PlanEntry]:
    """The heuristic's decisions for one session, in acquisition order."""
    entries = []
    for item in json.loads(path.read_text(encoding="utf-8")):
        d = item["decision"]
        decision = Decision(
            d["series_id"],
            d["datatype"],
            d["suffix"],
            tuple((k, v) for k, v in d["entities"]),
            d["reason"],
            tuple((k, v) for k, v in d["sidecar"]),
            tuple(d["aslcontext"]),
        )
        entries.append((decision, SeriesHeader.from_json(item["header"])))
    return entries


def write_plan(decisions: list[Decision], headers: dict[str, SeriesHeader]) -> None:
    """Inside heudiconv: record the heuristic's decisions where bidsapp asked (BIDSAPP_PLAN)."""
    target = os.environ.get(PLAN_ENV)
    if not target:
        return
    record = [
        {
            "header": headers[d.series_id].to_json(),
            "decision": {
                "series_id": d.series_id,
                "datatype": d.datatype,
                "suffix": d.suffix,
                "entities": [list(e) for e in d.entities],
                "reason": d.reason,
                "sidecar": [[k, v] for k, v in d.sidecar],
                "aslcontext": list(d.aslcontext),
            },
        }
        for d in decisions
    ]
    Path(target).write_text(json.dumps(record, indent=1), encoding="utf-8")


def full_stem(name: str, label: str, session: str) -> str:
    """'anat/acq-x_T1w' → 'sub-01[/ses-1]/anat/sub-01[_ses-1]_acq-x_T1w'."""
    datatype, _, rest = name.partition("/")
    folder = f"sub-{label}" + (f"/ses-{session}" if session else "")
    prefix = f"sub-{label}" + (f"_ses-{session}" if session else "")
    return f"{folder}/{datatype}/{prefix}_{rest}"


def _patch(sidecar: Path, fields: dict[str, Any], keep: bool = False) -> None:
    """Set fields in a sidecar; with `keep`, only those it does not have yet."""
    if not sidecar.is_file() or not fields:
        return
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    data.update({k: v for k, v in fields.items() if not (keep and k in data)})
    sidecar.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def finish(bids: Path, label: str, session: str, entries: list[PlanEntry]) -> dict[str, str]:
    """Sidecar fields, aslcontext.tsv and field-map links for one converted session.

    Returns notes by series id: side products dcm2niix wrote beside a series' images (Philips'
    ADC/trace volume, which heudiconv names `<stem>_heudiconvNNN_ADC`) are not data, and are
    removed here with a note rather than published under an invalid name.
    """
    notes = _remove_side_products(bids, label, session, entries)
    converted: list[tuple[Decision, list[str]]] = []
    for d, h in entries:
        stems = [
            s
            for n in output_names(d, h)
            if (bids / f"{(s := full_stem(n, label, session))}.nii.gz").is_file()
        ]
        if not stems:
            continue
        converted.append((d, stems))
        for stem in stems:
            _patch(bids / f"{stem}.json", dict(d.sidecar))
            if "_part-phase_" in stem:  # BIDS requires it; dcm2niix keeps the scanner's values
                _patch(bids / f"{stem}.json", {"Units": "arbitrary"}, keep=True)
        if d.suffix == "asl" and d.aslcontext:
            tsv = bids / f"{stems[0][: -len('_asl')]}_aslcontext.tsv"
            tsv.write_text("volume_type\n" + "".join(f"{c}\n" for c in d.aslcontext))
    _link_fieldmaps(bids, label, converted)
    return notes


def _remove_side_products(
    bids: Path, label: str, session: str, entries: list[PlanEntry]
) -> dict[str, str]:
    predicted = {
        full_stem(n, label, session): d.series_id for d, h in entries for n in output_names(d, h)
    }
    notes: dict[str, str] = {}
    removed: set[str] = set()
    for stem, series_id in predicted.items():
        for extra in sorted((bids / stem).parent.glob(f"{Path(stem).name}_*")):
            if extra.name.split(".")[0] in {Path(p).name for p in predicted}:
                continue
            kind = extra.name.split(".")[0].rsplit("_", 1)[-1]
            notes[series_id] = (
                f"dcm2niix also wrote an image it calls {kind} (scanner-derived): not published"
            )
            removed.add(extra.relative_to(bids / stem.split("/")[0]).as_posix())
            extra.unlink()
    if removed:
        for scans in bids.glob(f"sub-{label}/**/*_scans.tsv"):
            base = scans.parent
            lines = scans.read_text(encoding="utf-8").splitlines(keepends=True)
            keep = [ln for ln in lines[1:] if (base / ln.split("\t", 1)[0]).exists()]
            scans.write_text("".join(lines[:1] + keep), encoding="utf-8")
    return notes


def _link_fieldmaps(bids: Path, label: str, converted: list[tuple[Decision, list[str]]]) -> None:
    """Each field map acquisition gets an identifier; each target the nearest field map."""
    groups: list[tuple[str, list[str], int]] = []  # identifier, stems, position
    current: dict[str, int] = {}
    for pos, (d, stems) in enumerate(converted):
        if d.datatype != "fmap":
            continue
        kind = "pepolar" if d.suffix == "epi" else "phasediff"
        key = f"{kind}/{d.entity('acq')}/{d.entity('run')}"
        if key not in current:
            n = sum(1 for g in groups if g[0].startswith(kind)) + 1
            current[key] = len(groups)
            groups.append((f"{kind}{d.entity('acq')}{n}", [], pos))
        groups[current[key]][1].extend(stems)
    if not groups:
        return
    intended: dict[int, list[str]] = {k: [] for k in range(len(groups))}
    for pos, (d, stems) in enumerate(converted):
        if (d.datatype, d.suffix) not in _TARGETS:
            continue
        before = [k for k, g in enumerate(groups) if g[2] < pos]
        k = before[-1] if before else 0
        for stem in stems:
            _patch(bids / f"{stem}.json", {"B0FieldSource": groups[k][0]})
            intended[k].append(f"bids::{stem}.nii.gz")
    for k, (identifier, stems, _) in enumerate(groups):
        fields: dict[str, Any] = {"B0FieldIdentifier": identifier}
        if intended[k]:
            fields["IntendedFor"] = intended[k]
        for stem in stems:
            _patch(bids / f"{stem}.json", fields)
