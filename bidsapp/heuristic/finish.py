"""After naming: what only the whole session shows, written into the converted sidecars.

From the plan: the fields overrides ask for, `aslcontext.tsv` and the ASL fields derived from the
headers, `Units` for phase images and field maps in Hz, `TaskName`, the two echo times of a
phase difference, a time axis for a BOLD run that stopped after one volume, and the links
between field maps and the images they correct (`B0FieldIdentifier`, `B0FieldSource`,
`IntendedFor`), so fMRIPrep uses them.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bidsapp.files import rewrite
from bidsapp.heuristic.classify import Decision
from bidsapp.heuristic.headers import SeriesHeader
from bidsapp.heuristic.plan import output_plan
from bidsapp.heuristic.settle import full_stem

_TARGETS = {("func", "bold"), ("func", "sbref"), ("dwi", "dwi"), ("dwi", "sbref"), ("perf", "asl")}


def patch(sidecar: Path, fields: dict[str, Any], *, keep: bool = False) -> None:
    """Set fields in a sidecar; with `keep`, only those it does not have yet."""
    if not sidecar.is_file() or not fields:
        return
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    new = {**data, **{k: v for k, v in fields.items() if not (keep and k in data)}}
    if new != data:
        rewrite(sidecar, (json.dumps(new, indent=2, ensure_ascii=False) + "\n").encode())


def finish(
    bids: Path, label: str, session: str, entries: Sequence[tuple[Decision, SeriesHeader]]
) -> dict[str, str]:
    """Sidecar fields, aslcontext.tsv and field-map links for one converted session; returns
    notes by series key."""
    notes: dict[str, str] = {}
    converted: Converted = []
    for d, h in entries:
        stems = [
            s
            for _, name, _ in output_plan(d, h)
            if name and (bids / f"{(s := full_stem(name, label, session))}.nii.gz").is_file()
        ]
        if not stems:
            continue
        converted.append((d, h, stems))
        for stem in stems:
            sidecar = bids / f"{stem}.json"
            patch(sidecar, dict(d.sidecar))
            if d.entity("task"):
                patch(sidecar, {"TaskName": d.entity("task")}, keep=True)
            if "_part-phase_" in stem or stem.endswith(("_phasediff", "_phase1", "_phase2")):
                # BIDS requires it; dcm2niix keeps the scanner's values, not radians
                patch(sidecar, {"Units": "arbitrary"}, keep=True)
            if stem.endswith("_fieldmap"):
                patch(sidecar, {"Units": "Hz"})
        if d.suffix == "bold" and _add_time_axis(bids / f"{stems[0]}.nii.gz"):
            notes[d.key] = "a single volume (the run stopped early): written as a 4D series of 1"
        if d.suffix == "asl" and d.aslcontext:
            tsv = bids / f"{stems[0][: -len('_asl')]}_aslcontext.tsv"
            tsv.write_text("volume_type\n" + "".join(f"{c}\n" for c in d.aslcontext))
    _phasediff_echo_times(bids, converted)
    for key, note in _link_fieldmaps(bids, converted).items():
        notes[key] = f"{notes[key]}; {note}" if key in notes else note
    return notes


def _add_time_axis(path: Path) -> bool:
    """A 3D image whose suffix says time series gets a time axis of one (BIDS: bold is 4D)."""
    with gzip.open(path, "rb") as fh:
        data = bytearray(fh.read())
    if len(data) < 348 or struct.unpack("<i", data[:4])[0] != 348:
        return False
    dim = list(struct.unpack("<8h", data[40:56]))
    if dim[0] != 3:
        return False
    dim[0], dim[4] = 4, 1
    data[40:56] = struct.pack("<8h", *dim)
    rewrite(path, gzip.compress(bytes(data), compresslevel=6, mtime=0))
    return True


Converted = list[tuple[Decision, SeriesHeader, list[str]]]


def _phasediff_echo_times(bids: Path, converted: Converted) -> None:
    """A phase difference carries both echo times (its magnitudes' sidecars have them)."""
    by_set: dict[str, list[str]] = {}
    for d, _, stems in converted:
        if d.fieldmap:
            by_set.setdefault(d.fieldmap, []).extend(stems)
    for stems in by_set.values():
        mags = sorted(s for s in stems if s.rsplit("_", 1)[-1].startswith("magnitude"))
        times = sorted(
            {
                float(json.loads((bids / f"{s}.json").read_text()).get("EchoTime", 0))
                for s in mags
                if (bids / f"{s}.json").is_file()
            }
            - {0.0}
        )
        for stem in (s for s in stems if s.endswith("_phasediff")):
            if len(times) >= 2:
                patch(bids / f"{stem}.json", {"EchoTime1": times[0], "EchoTime2": times[-1]})


def _pe_axis(h: SeriesHeader) -> str:
    return h.pe_direction[:1]


def _link_fieldmaps(bids: Path, converted: Converted) -> dict[str, str]:
    """Each complete field-map set gets its identifier; each image it can correct gets the
    nearest set acquired before it (else the first): a GRE set corrects anything, an EPI set
    images encoded along the same axis on the same grid. Returns a note for each linked image
    that lacks what unwarping needs."""
    notes: dict[str, str] = {}
    sets: dict[str, tuple[int, list[str], list[SeriesHeader]]] = {}
    for pos, (d, h, stems) in enumerate(converted):
        if d.datatype == "fmap" and d.fieldmap:
            first, all_stems, headers = sets.get(d.fieldmap, (pos, [], []))
            sets[d.fieldmap] = (first, [*all_stems, *stems], [*headers, h])
    if not sets:
        return notes
    intended: dict[str, list[str]] = {k: [] for k in sets}
    for pos, (d, h, stems) in enumerate(converted):
        if (d.datatype, d.suffix) not in _TARGETS:
            continue
        usable = [
            (first, ident)
            for ident, (first, _, headers) in sets.items()
            if not ident.startswith("pepolar") or any(_corrects(f, h) for f in headers)
        ]
        if not usable:
            continue
        before = [u for u in usable if u[0] < pos]
        ident = (before[-1] if before else usable[0])[1]
        for stem in stems:
            patch(bids / f"{stem}.json", {"B0FieldSource": ident})
            intended[ident].append(f"bids::{stem}.nii.gz")
        if missing := _unwarp_missing(bids / f"{stems[0]}.json"):
            notes[d.key] = (
                f"linked to field map {ident}, but its sidecar has no {' or '.join(missing)} "
                "(this scanner's DICOM does not record it): fMRIPrep and other tools cannot "
                "unwarp it; give it in --overrides as sidecar = { "
                + ", ".join(f"{m} = …" for m in missing)
                + " }"
            )
    for ident, (_, stems, _) in sets.items():
        fields: dict[str, Any] = {"B0FieldIdentifier": ident}
        if intended[ident]:
            fields["IntendedFor"] = intended[ident]
        for stem in stems:
            patch(bids / f"{stem}.json", fields)
    return notes


def _unwarp_missing(sidecar: Path) -> list[str]:
    """What a corrected image's sidecar lacks for unwarping: the phase-encoding polarity and a
    readout time (fMRIPrep reads TotalReadoutTime, else derives it from EffectiveEchoSpacing).
    Without them fMRIPrep still plans the correction and shifts no voxel."""
    data = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    missing = [] if data.get("PhaseEncodingDirection") else ["PhaseEncodingDirection"]
    if not (data.get("TotalReadoutTime") or data.get("EffectiveEchoSpacing")):
        missing.append("TotalReadoutTime")
    return missing


def _corrects(fmap: SeriesHeader, target: SeriesHeader) -> bool:
    same_grid = (fmap.dims[:2], fmap.orientation) == (target.dims[:2], target.orientation)
    return bool(_pe_axis(fmap)) and _pe_axis(fmap) == _pe_axis(target) and same_grid
