"""Per-series summaries: what the classifier needs, PHI-free, from evidence every vendor gives.

Two sources, each read once per exam:

- staging reads every file's header (in its process pool) and keeps a `FileRecord` of it:
  series identity, SOP class, image type, acquisition time, the standard b-value and, for
  enhanced DICOM, the per-frame ASL context;
- one dcm2niix conversion of the whole exam (`prepass.py`) says what each series becomes:
  every output file with its postfix (echo, `_ph`, `_fieldmaphz`, `_ADC`, a partial volume's
  own series number), its sidecar (TR/TE/TI of enhanced DICOM too, phase-encoding polarity from
  the vendor's tags, BidsGuess), its image shape and its b-values.

`summarize` folds one series' records and outputs into a `SeriesHeader`. Outside bidsapp (a plain
`heudiconv -f auto.py`), `prepass.custom_seqinfo` builds the same from the series' own files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID

# Sidecar fields copied into the summary (never identifying: no names, dates or UIDs).
ASL_KEYS = (
    "ArterialSpinLabelingType",
    "PostLabelingDelay",
    "LabelingDuration",
    "M0Type",
    "TotalAcquiredPairs",
    "BackgroundSuppression",
    "RepetitionTimePreparation",
    "BolusCutOffFlag",
)
_IOP = "ImageOrientationPatientDICOM"
_ASL_CONTEXT = {"M_ZERO_SCAN": "m0scan", "LABEL": "label", "CONTROL": "control"}
ENHANCED_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}


def words(value: object) -> tuple[str, ...]:
    """A multi-valued text (list, or one string with backslashes) as a tuple of words."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(w for w in value.replace("\\", "/").split("/") if w)
    try:
        return tuple(str(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return (str(value),)


def number(value: object) -> float:
    """A DICOM or JSON number as a float (0.0 when absent or unreadable)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


@dataclass(frozen=True)
class FileRecord:
    """What the classifier keeps of one staged file (plain data: it crosses processes)."""

    series_uid: str
    number: int = 0
    description: str = ""
    protocol: str = ""
    sop_class: str = ""  # its name, e.g. "MR Image Storage"
    image_type: tuple[str, ...] = ()
    acquired: str = ""  # HHMMSS.ffffff, for ordering
    bvalues: tuple[float, ...] = ()  # the standard tag; per frame in enhanced DICOM
    asl_context: tuple[str, ...] = ()  # per frame (enhanced ASL)
    instance: int = 0


def _frame_values(ds: pydicom.Dataset, keyword: str) -> list[object]:
    """A keyword's value in each frame's functional groups (enhanced DICOM)."""
    values = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for item in frame:
            if item.VR == "SQ" and item.value and keyword in item.value[0]:
                values.append(item.value[0].get(keyword))
                break
    return values


def record(ds: pydicom.Dataset) -> FileRecord:
    """The record of one file's header (enhanced files: read whole, for their frames)."""
    sop = str(ds.get("SOPClassUID") or "")
    bvalues: tuple[float, ...] = ()
    if "DiffusionBValue" in ds:
        bvalues = (number(ds.DiffusionBValue),)
    elif sop in ENHANCED_CLASSES:
        bvalues = tuple(number(v) for v in _frame_values(ds, "DiffusionBValue"))
    context: tuple[str, ...] = ()
    if sop in ENHANCED_CLASSES and "ASL" in words(ds.get("ImageType")):
        context = tuple(
            _ASL_CONTEXT.get(str(v), str(v).lower()) for v in _frame_values(ds, "ASLContext")
        )
    acquired = (
        str(ds.get("AcquisitionTime") or "")
        or str(ds.get("AcquisitionDateTime") or "")[8:]
        # SeriesTime, the last resort, is when the series was stored (differs between recons)
        or str(ds.get("SeriesTime") or "")
    )
    return FileRecord(
        series_uid=str(ds.get("SeriesInstanceUID") or ""),
        number=int(number(ds.get("SeriesNumber"))),
        description=str(ds.get("SeriesDescription") or ""),
        protocol=str(ds.get("ProtocolName") or ""),
        sop_class=UID(sop).name if sop else "",
        image_type=words(ds.get("ImageType")),
        acquired=acquired,
        bvalues=bvalues,
        asl_context=context,
        instance=int(number(ds.get("InstanceNumber"))),
    )


@dataclass(frozen=True)
class Output:
    """One image dcm2niix writes from a series, and what its sidecar and header say."""

    postfix: str = ""  # dcm2niix's: '', 'e2', 'e1_ph', 'fieldmaphz', 'ADC', 'real', 'i00001'…
    image_type: tuple[str, ...] = ()
    echo_number: int = 0
    echo_time: float = 0.0
    orientation: tuple[float, ...] = ()
    file: str = ""  # its stem in the dcm2niix pass's folder
    series_number: int = 0  # as dcm2niix reports it: 1006 for a partial volume of series 6
    shape: tuple[int, ...] = ()
    bvalues: tuple[float, ...] = ()  # from its .bval: () when dcm2niix wrote none
    acquired: str = ""
    bidsguess: tuple[str, ...] = ()

    @property
    def volumes(self) -> int:
        return self.shape[3] if len(self.shape) > 3 else 1

    @property
    def is_phase(self) -> bool:
        return "P" in self.image_type or "PHASE" in self.image_type or self.postfix.endswith("ph")

    @property
    def is_fieldmap_hz(self) -> bool:
        return self.postfix.endswith("fieldmaphz")

    @property
    def is_side_product(self) -> bool:
        """dcm2niix's derived extra (Philips' ADC/trace volume split off a DWI series)."""
        return self.postfix.split("_")[-1] == "ADC"


@dataclass(frozen=True)
class SeriesHeader:
    """What one series' headers and dcm2niix say, in the units of BIDS (seconds)."""

    series_id: str = ""  # heudiconv's: "<SeriesNumber>-<ProtocolName>"
    series_uid: str = ""  # two series can share heudiconv's id; never their UID
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
    bvalues: tuple[float, ...] = ()  # b-values seen, sorted (headers and dcm2niix's .bval)
    bidsguess: tuple[str, ...] = ()
    acquired: str = ""  # HHMMSS.ffffff acquisition start, for ordering
    outputs: tuple[Output, ...] = ()  # what dcm2niix writes (empty: nothing at all)
    asl: tuple[tuple[str, str], ...] = ()  # ASL sidecar fields dcm2niix found (JSON values)
    asl_context: tuple[str, ...] = ()  # per volume, from the per-frame functional groups
    notes: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        """What identifies this series in a plan (its UID; heudiconv's id where it has none)."""
        return self.series_uid or self.series_id

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesHeader:
        data = dict(data)
        known = {f.name for f in fields(Output)}
        data["outputs"] = tuple(
            Output(**{k: _tupled(v) for k, v in o.items() if k in known})
            for o in data.get("outputs", ())
        )
        data["asl"] = tuple(tuple(p) for p in data.get("asl", ()))
        for key, value in list(data.items()):
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls(**data)


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def series_id(first: FileRecord) -> str:
    """heudiconv's name for a series: its number and protocol name."""
    return f"{first.number}-{first.protocol}"


def summarize(
    records: Sequence[FileRecord], outputs: Sequence[tuple[Output, dict[str, Any]]]
) -> SeriesHeader:
    """One series: its files' records and dcm2niix's outputs (each with its sidecar)."""
    first = min(records, key=lambda r: (r.instance, r.acquired))
    kept = [(o, sc) for o, sc in outputs if not o.is_side_product]
    main_output, main = (
        min(kept, key=lambda p: (p[0].series_number != first.number, p[0].postfix))
        if kept
        else (None, {})
    )
    shape = main_output.shape if main_output else ()
    # cols x rows x slices x volumes, as heudiconv reports them (a 3D image has one volume)
    dims = tuple(int(shape[k]) if len(shape) > k else int(k == 3 and bool(shape)) for k in range(4))
    contexts: list[str] = []
    for r in sorted(records, key=lambda r: (r.instance, r.acquired)):
        contexts += r.asl_context[:1]  # enhanced ASL: one file per volume, its first frame
    if len(contexts) == 1 and len(records) == 1:
        contexts = list(first.asl_context)  # every volume in one file
    bvalues = {round(b, 1) for r in records for b in r.bvalues}
    bvalues |= {round(b, 1) for o, _ in kept for b in o.bvalues}
    return SeriesHeader(
        series_id=series_id(first),
        series_uid=first.series_uid,
        number=first.number,
        description=first.description,
        protocol=first.protocol,
        sop_class=first.sop_class,
        manufacturer=str(main.get("Manufacturer") or ""),
        image_type=first.image_type or words(main.get("ImageType")),
        image_type_text=words(main.get("ImageTypeText")),
        scanning_sequence="\\".join(words(main.get("ScanningSequence"))),
        sequence_variant="\\".join(words(main.get("SequenceVariant"))),
        sequence_name=str(main.get("SequenceName") or ""),
        pulse_sequence=str(main.get("PulseSequenceDetails") or ""),
        acquisition_type=str(main.get("MRAcquisitionType") or ""),
        tr=number(main.get("RepetitionTime")),
        te=number(main.get("EchoTime")),
        ti=number(main.get("InversionTime")),
        flip_angle=number(main.get("FlipAngle")),
        dims=dims,  # type: ignore[arg-type]
        files=len(records),
        volumes=len(contexts) if contexts else (dims[3] if shape else 0),
        pe_direction=str(main.get("PhaseEncodingDirection") or ""),
        orientation=tuple(round(number(v), 4) for v in main.get(_IOP) or ()),
        parallel_factor=number(main.get("ParallelReductionFactorInPlane")),
        multiband_factor=number(main.get("MultibandAccelerationFactor")),
        bvalues=tuple(sorted(bvalues)),
        bidsguess=words(main.get("BidsGuess")),
        acquired=first.acquired or str(main.get("AcquisitionTime") or "").replace(":", ""),
        outputs=tuple(o for o, _ in outputs),
        asl=tuple((k, json.dumps(main[k])) for k in ASL_KEYS if k in main),
        asl_context=tuple(contexts),
    )


def series_key(r: FileRecord) -> str:
    """The series a file belongs to in a plan (SeriesHeader.key): its UID, and for non-image
    files that share the UID of images (Philips' raw data, exam cards) their SOP class too."""
    return r.series_uid if "Image Storage" in r.sop_class else f"{r.series_uid}/{r.sop_class}"


def summaries(
    records: Iterable[FileRecord], outputs: dict[str, list[tuple[Output, dict[str, Any]]]]
) -> list[SeriesHeader]:
    """Every series of a study: its records grouped by series UID, with dcm2niix's outputs.

    Non-image files sharing a series UID with images (Philips keeps raw data and exam cards in
    the series they belong to) are a series of their own, so neither hides the other.
    """
    by_uid: dict[str, list[FileRecord]] = {}
    for r in records:
        by_uid.setdefault(series_key(r), []).append(r)
    return [
        replace(summarize(rs, outputs.get(key, [])), series_uid=key) for key, rs in by_uid.items()
    ]


def write_summaries(path: Path, headers: Iterable[SeriesHeader]) -> None:
    """For the heuristic inside heudiconv (BIDSAPP_HEADERS): written whole, then renamed, so a
    reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([h.to_json() for h in headers]), encoding="utf-8")
    os.replace(tmp, path)


def read_summaries(path: Path) -> list[SeriesHeader]:
    return [SeriesHeader.from_json(d) for d in json.loads(path.read_text(encoding="utf-8"))]


def from_custom(custom: Iterable[tuple[str, str]], series_id_: str) -> SeriesHeader:
    """Back from heudiconv's `SeqInfo.custom` to a summary."""
    data = {k: json.loads(v) for k, v in custom}
    data["series_id"] = series_id_
    return SeriesHeader.from_json(data)
