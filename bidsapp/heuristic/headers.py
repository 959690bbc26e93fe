"""Per-series header summaries: what the classifier needs, PHI-free, and hashable.

heudiconv's `SeqInfo` lacks b-values, phase-encoding direction, inversion time and the TR/TE of
enhanced DICOM. A sidecar-only dcm2niix pass (`-b o`) over the series' own files supplies those
the way dcm2niix will later convert them (TR/TE from enhanced functional groups, phase-encoding
polarity from vendor private tags, echo and magnitude/phase splits), and pydicom adds what
dcm2niix does not report: SOP class, per-file b-values, per-frame ASL context, ImageTypeText.

The summary is made inside heudiconv (the heuristic's `custom_seqinfo` hook), so it sees the
same series grouping as the conversion; `bidsapp inspect` goes through the same path.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from bidsapp.tools import ToolFailed, run

# Sidecar fields copied into the summary (never identifying: no names, dates or UIDs).
_ASL_KEYS = (
    "ArterialSpinLabelingType",
    "PostLabelingDelay",
    "LabelingDuration",
    "M0Type",
    "TotalAcquiredPairs",
    "BackgroundSuppression",
    "RepetitionTimePreparation",
    "BolusCutOffFlag",
)
# Vendor b-value tags for classic DICOM that lacks the standard (0018,9087).
_BVALUE_TAGS = ((0x0043, 0x1039), (0x2001, 0x1003), (0x0019, 0x100C))
_ASL_CONTEXT = {"M_ZERO_SCAN": "m0scan", "LABEL": "label", "CONTROL": "control"}


@dataclass(frozen=True)
class Output:
    """One file dcm2niix makes from the series (its postfix, e.g. '', 'e2', 'e2_ph', 'ADC')."""

    postfix: str
    image_type: tuple[str, ...] = ()
    echo_number: int = 0
    echo_time: float = 0.0
    orientation: tuple[float, ...] = ()


@dataclass(frozen=True)
class SeriesHeader:
    """What the headers of one series say, in the units of BIDS (seconds)."""

    series_id: str = ""
    number: int = 0
    description: str = ""
    protocol: str = ""
    sop_class: str = ""
    manufacturer: str = ""
    image_type: tuple[str, ...] = ()
    image_type_text: tuple[str, ...] = ()  # Siemens XA: keeps NORM/ND that ImageType lost
    scanning_sequence: str = ""
    sequence_variant: str = ""
    sequence_name: str = ""
    pulse_sequence: str = ""
    acquisition_type: str = ""  # 2D or 3D
    tr: float = 0.0
    te: float = 0.0
    ti: float = 0.0
    flip_angle: float = 0.0
    dims: tuple[int, int, int, int] = (0, 0, 0, 0)
    files: int = 0
    volumes: int = 0
    pe_direction: str = ""  # BIDS: i, i-, j, j-, k, k- (empty when unknown)
    orientation: tuple[float, ...] = ()  # ImageOrientationPatient of the first image
    parallel_factor: float = 0.0
    multiband_factor: float = 0.0
    bvalues: tuple[float, ...] = ()  # b-values seen, sorted (enough for b=0 vs weighted)
    bidsguess: tuple[str, ...] = ()
    acquired: str = ""  # HHMMSS.ffffff acquisition start, for ordering
    outputs: tuple[Output, ...] = ()  # what dcm2niix writes (empty: nothing at all)
    asl: tuple[tuple[str, str], ...] = ()  # ASL sidecar fields dcm2niix found (JSON values)
    asl_context: tuple[str, ...] = ()  # per volume, from the per-frame functional groups
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesHeader:
        data = dict(data)
        data["outputs"] = tuple(
            Output(
                str(o["postfix"]),
                tuple(o.get("image_type", ())),
                int(o.get("echo_number", 0)),
                float(o.get("echo_time", 0.0)),
                tuple(o.get("orientation", ())),
            )
            for o in data.get("outputs", ())
        )
        data["asl"] = tuple(tuple(p) for p in data.get("asl", ()))
        for key, value in list(data.items()):
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls(**data)


def _words(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(w for w in value.replace("\\", "/").split("/") if w)
    try:
        return tuple(str(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return (str(value),)


def _text(value: object) -> str:
    return "\\".join(_words(value)) if not isinstance(value, str) else value


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _sidecars(files: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """dcm2niix -b o over exactly these files: (postfix, sidecar) per output it would write."""
    with tempfile.TemporaryDirectory(prefix="bidsapp-sidecars-") as tmp:
        src, out = Path(tmp, "in"), Path(tmp, "out")
        src.mkdir()
        out.mkdir()
        for k, f in enumerate(files):
            os.symlink(os.path.abspath(f), src / f"{k:06d}.dcm")
        try:
            # -ba y: no names or dates reach even this temporary copy
            run(["dcm2niix", "-b", "o", "-ba", "y", "-f", "s", "-o", str(out), str(src)])
        except ToolFailed:
            return []
        found = []
        for sidecar in sorted(out.glob("*.json")):
            postfix = sidecar.stem[1:].lstrip("_")
            try:
                found.append((postfix, json.loads(sidecar.read_text())))
            except (OSError, json.JSONDecodeError):
                continue
        return found


def _read(path: str) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return None


def _first(ds: pydicom.Dataset, keyword: str) -> object:
    """A keyword at the top level, else in the first frame's or the shared functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        for item in seq[0]:
            if item.VR == "SQ" and item.value and keyword in item.value[0]:
                return item.value[0].get(keyword)
    return None


def _frame_values(ds: pydicom.Dataset, keyword: str) -> list[object]:
    """A keyword's value in each frame's functional groups (enhanced DICOM)."""
    values = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for item in frame:
            if item.VR == "SQ" and item.value and keyword in item.value[0]:
                values.append(item.value[0].get(keyword))
                break
    return values


def _bvalue(ds: pydicom.Dataset) -> float | None:
    if "DiffusionBValue" in ds:
        return _float(ds.DiffusionBValue)
    frames = [_float(v) for v in _frame_values(ds, "DiffusionBValue")]
    if frames:
        return max(frames)
    for tag in _BVALUE_TAGS:
        if tag in ds:
            value = ds[tag].value
            if isinstance(value, bytes):
                continue
            value = (
                value[0] if isinstance(value, list | tuple | pydicom.multival.MultiValue) else value
            )
            number = _float(value)
            # GE stores b-values with a large offset on some versions
            return number % 100000 if number >= 0 else None
    return None


def _bvalues(first: pydicom.Dataset, files: Sequence[str]) -> list[float]:
    """B-values enough to tell b=0 from diffusion-weighted volumes: from the first file and,
    when it has one below 50, from a spread of others until a diffusion-weighted one shows
    (reading every file of a big enhanced series would cost seconds)."""
    b = _bvalue(first)
    if b is None:
        return []
    found = {round(b, 1)}
    for f in _sample(files[1:], 8):
        if max(found) >= 50:
            break
        d = _read(f)
        if d is not None and (b := _bvalue(d)) is not None:
            found.add(round(b, 1))
    return sorted(found)


def _stop_after_orientation(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > 0x00200037)


def _stop_after_series_number(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > 0x00200011)


def _position(path: str) -> tuple[str, int] | None:
    """(ImagePositionPatient, InstanceNumber) read only as far as group 0020: fast on big series."""
    try:
        with open(path, "rb") as fh:
            ds = read_partial(fh, stop_when=_stop_after_orientation, force=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError, TypeError):
        return None
    return str(list(ds.get("ImagePositionPatient") or [])), int(_float(ds.get("InstanceNumber")))


def _sample(files: Sequence[str], n: int) -> list[str]:
    if len(files) <= n:
        return list(files)
    step = (len(files) - 1) / (n - 1)
    return [files[round(k * step)] for k in range(n)]


def summarize(
    files: Sequence[str], series_id: str = "", first: pydicom.Dataset | None = None
) -> SeriesHeader:
    """The summary of one series from its files (pydicom headers + a sidecar-only dcm2niix).

    `first` is the first file's dataset when the caller has read it already (heudiconv has):
    an enhanced file takes a large part of a second to parse.
    """
    files = sorted(files)
    ds = first if first is not None and str(first.get("filename", "")) == files[0] else None
    ds = ds or next((d for f in files[:3] if (d := _read(f)) is not None), None)
    if ds is None:
        return SeriesHeader(series_id=series_id, files=len(files), notes=("unreadable",))
    sidecars = _sidecars(files)
    main = sidecars[0][1] if sidecars else {}
    image_type = _words(ds.get("ImageType"))
    frames = int(ds.get("NumberOfFrames") or 1)
    bvalues = _bvalues(ds, files)
    contexts: list[str] = []
    if "ASL" in image_type or "ArterialSpinLabelingType" in main:
        ordered = sorted(
            ((d, f) for f in files if (d := _read(f)) is not None),
            key=lambda p: (_float(p[0].get("InstanceNumber")), p[1]),
        )
        for d, _ in ordered:
            frame_ctx = [str(v) for v in _frame_values(d, "ASLContext")]
            if frame_ctx:
                contexts.append(_ASL_CONTEXT.get(frame_ctx[0], frame_ctx[0].lower()))
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    outputs = tuple(
        Output(
            postfix,
            _words(sc.get("ImageType")),
            int(sc.get("EchoNumber") or 0),
            _float(sc.get("EchoTime")),
            tuple(_float(v) for v in sc.get("ImageOrientationPatientDICOM") or ()),
        )
        for postfix, sc in sidecars
    )
    iop = _first(ds, "ImageOrientationPatient") or main.get("ImageOrientationPatientDICOM") or ()
    slices, volumes = _extent(ds, files, frames, image_type)
    if contexts:
        volumes = len(contexts)
    return SeriesHeader(
        series_id=series_id,
        number=int(_float(ds.get("SeriesNumber"))),
        description=str(ds.get("SeriesDescription") or ""),
        protocol=str(ds.get("ProtocolName") or ""),
        sop_class=getattr(ds.get("SOPClassUID"), "name", str(ds.get("SOPClassUID") or "")),
        manufacturer=str(ds.get("Manufacturer") or main.get("Manufacturer") or ""),
        image_type=image_type,
        image_type_text=_words(main.get("ImageTypeText")),
        scanning_sequence=_text(ds.get("ScanningSequence") or main.get("ScanningSequence") or ""),
        sequence_variant=_text(ds.get("SequenceVariant") or main.get("SequenceVariant") or ""),
        sequence_name=str(
            main.get("SequenceName")
            or ds.get("SequenceName")
            or _first(ds, "PulseSequenceName")
            or ""
        ),
        pulse_sequence=str(main.get("PulseSequenceDetails") or ""),
        acquisition_type=str(ds.get("MRAcquisitionType") or main.get("MRAcquisitionType") or ""),
        tr=_float(main.get("RepetitionTime")) or _float(ds.get("RepetitionTime")) / 1000,
        te=_float(main.get("EchoTime")) or _float(ds.get("EchoTime")) / 1000,
        ti=_float(main.get("InversionTime")) or _float(ds.get("InversionTime")) / 1000,
        flip_angle=_float(main.get("FlipAngle") or ds.get("FlipAngle")),
        dims=(cols, rows, slices, volumes),
        files=len(files),
        volumes=volumes,
        pe_direction=str(main.get("PhaseEncodingDirection") or ""),
        orientation=tuple(round(_float(v), 4) for v in iop),  # type: ignore[union-attr]
        parallel_factor=_float(main.get("ParallelReductionFactorInPlane")),
        multiband_factor=_float(main.get("MultibandAccelerationFactor")),
        bvalues=tuple(bvalues),
        bidsguess=_words(main.get("BidsGuess")),
        # when the acquisition started (enhanced DICOM: AcquisitionDateTime); SeriesTime, the
        # last resort, is when the series was stored, which differs between reconstructions
        acquired=str(ds.get("AcquisitionTime") or "")
        or str(ds.get("AcquisitionDateTime") or "")[8:]
        or str(ds.get("SeriesTime") or ""),
        outputs=outputs,
        asl=tuple((k, json.dumps(main[k])) for k in _ASL_KEYS if k in main),
        asl_context=tuple(contexts),
    )


def _extent(
    first: pydicom.Dataset, files: Sequence[str], frames: int, image_type: tuple[str, ...]
) -> tuple[int, int]:
    """(slices, volumes) of the series."""
    if frames > 1:  # enhanced: one file per volume, or every volume in one file
        if len(files) > 1:
            return frames, len(files)
        slices = max(1, len({str(v) for v in _frame_values(first, "ImagePositionPatient")}))
        return slices, max(1, frames // slices)
    if "MOSAIC" in image_type:
        mosaic = first.get((0x0019, 0x100A))
        return int(_float(mosaic.value)) if mosaic is not None else 0, len(files)
    positions: dict[str, int] = {}
    for found in map(_position, files):
        if found is not None:
            positions[found[0]] = positions.get(found[0], 0) + 1
    volumes = max(positions.values()) if positions else 1
    return len(positions), volumes


def custom_seqinfo(wrapper: Any, series_files: list[str]) -> tuple[tuple[str, str], ...]:
    """heudiconv's hook: the summary as sorted (key, JSON) pairs, which heudiconv can hash."""
    summary = summarize(series_files, first=getattr(wrapper, "dcm_data", None))
    return tuple(sorted((k, json.dumps(v)) for k, v in summary.to_json().items()))


def from_custom(custom: Iterable[tuple[str, str]], series_id: str) -> SeriesHeader:
    """Back from heudiconv's `SeqInfo.custom` to a summary."""
    data = {k: json.loads(v) for k, v in custom}
    data["series_id"] = series_id
    return SeriesHeader.from_json(data)


@dataclass(frozen=True)
class InventoryRow:
    """One series as staged, including the ones heudiconv never lists (raw data, documents)."""

    number: int
    description: str
    sop_class: str
    files: int
    image_type: str = ""


def inventory(folder: Path) -> list[InventoryRow]:
    """Every series in a staged study folder, by SeriesInstanceUID, in series-number order."""
    series: dict[str, list[Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            # every tag needed comes before (0020,0012): enhanced files are not parsed further
            with open(path, "rb") as fh:
                ds = read_partial(fh, stop_when=_stop_after_series_number)
        except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError, TypeError):
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID") or path.parent.name), []).append(ds)
    rows = []
    for items in series.values():
        ds = items[0]
        sop = ds.get("SOPClassUID")
        rows.append(
            InventoryRow(
                int(_float(ds.get("SeriesNumber"))),
                str(ds.get("SeriesDescription") or ""),
                getattr(sop, "name", str(sop or "")),
                len(items),
                "\\".join(_words(ds.get("ImageType"))),
            )
        )
    return sorted(rows, key=lambda r: (r.number, r.description))
