"""Synthetic DICOM sessions (classic single-frame MR Image Storage) for demos and tests.

Every image samples the same head-like phantom: a bright ellipsoid "brain" inside a darker
"skull" shell, plus a brighter spherical marker in the subject's **left-anterior-superior**
octant. After conversion to NIfTI and ``nibabel.as_closest_canonical`` (RAS+: +x towards the
subject's right), the marker lies at *low* x, *high* y and *high* z voxel indices.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["DEFAULT_SERIES", "Patient", "Series", "write_session"]


@dataclass(frozen=True)
class Patient:
    """Patient-level attributes (PHI), written verbatim even when invalid (e.g. "***")."""

    name: str = "Demo^Subject"
    patient_id: str = "DEMO0001"
    birth_date: str = "19700101"
    sex: str = "O"
    age: str = "054Y"
    accession: str = ""


@dataclass(frozen=True)
class Series:
    """One series: ReproIn protocol name and image kind ("t1w", "bold" or "localizer")."""

    protocol: str
    kind: str
    description: str | None = None
    image_comments: str = ""


DEFAULT_SERIES: tuple[Series, ...] = (
    # reproin ignores protocols it cannot parse, whereas "anat-scout" would be tarred into
    # sourcedata/ -- a plain "localizer" keeps the BIDS output to the two real series
    Series("localizer", "localizer"),
    Series("anat-T1w", "t1w"),
    Series("func-bold_task-rest", "bold"),
)

_Vec = tuple[float, float, float]
_AXIAL: tuple[_Vec, _Vec] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
# phantom units: LPS, so +x is the subject's left, -y anterior, +z superior
_HEAD_AXES = np.array([0.8, 0.9, 0.85])
_MARKER_CENTRE = np.array([0.45, -0.35, 0.4]) * _HEAD_AXES


@dataclass(frozen=True)
class _Slice:
    row_dir: _Vec  # LPS direction of increasing column index
    col_dir: _Vec  # LPS direction of increasing row index
    position: _Vec  # centre of the first transmitted pixel, mm


@dataclass(frozen=True)
class _Geometry:
    size: int  # rows == columns
    spacing: float
    thickness: float
    slices: tuple[_Slice, ...]
    half_fov: _Vec  # mm per phantom unit along each LPS axis


@dataclass(frozen=True)
class _Kind:
    geometry: _Geometry
    volumes: int
    brain: float
    skull: float
    tr_ms: float
    tags: dict[str, object]


def _axial_stack(size: int, n: int, spacing: float) -> _Geometry:
    corner, z0 = -(size - 1) * spacing / 2, -(n - 1) * spacing / 2
    slices = tuple(_Slice(*_AXIAL, (corner, corner, z0 + k * spacing)) for k in range(n))
    half = size * spacing / 2
    return _Geometry(size, spacing, spacing, slices, (half, half, n * spacing / 2))


def _triplanar(size: int, spacing: float) -> _Geometry:
    c = -(size - 1) * spacing / 2
    slices = (
        _Slice((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (0.0, c, -c)),  # sagittal
        _Slice((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (c, 0.0, -c)),  # coronal
        _Slice(*_AXIAL, (c, c, 0.0)),  # axial
    )
    half = size * spacing / 2
    return _Geometry(size, spacing, 5.0, slices, (half, half, half))


# per kind: geometry, volumes, brain and skull intensity, TR (ms), kind-specific tags
_KINDS: dict[str, _Kind] = {
    "t1w": _Kind(
        _axial_stack(48, 32, 1.0),
        1,
        700,
        250,
        2300,
        {
            "ScanningSequence": ["GR", "IR"],
            "SequenceVariant": ["SK", "SP", "MP"],
            "SequenceName": "*tfl3d1_16ns",
            "MRAcquisitionType": "3D",
            "EchoTime": 2.98,
            "InversionTime": 900,
            "FlipAngle": 9,
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "NORM"],
            "InPlanePhaseEncodingDirection": "ROW",
        },
    ),
    "bold": _Kind(
        _axial_stack(32, 12, 3.0),
        6,
        600,
        150,
        2000,
        {
            "ScanningSequence": "EP",
            "SequenceVariant": ["SK", "SS"],
            "SequenceName": "*epfid2d1_32",
            "MRAcquisitionType": "2D",
            "EchoTime": 30,
            "FlipAngle": 70,
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
            "InPlanePhaseEncodingDirection": "COL",
        },
    ),
    "localizer": _Kind(
        _triplanar(64, 4.0),
        1,
        500,
        200,
        8.6,
        {
            "ScanningSequence": "GR",
            "SequenceVariant": "SP",
            "SequenceName": "*fl2d1",
            "MRAcquisitionType": "2D",
            "EchoTime": 4,
            "FlipAngle": 20,
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
            "InPlanePhaseEncodingDirection": "ROW",
        },
    ),
}


def _pixels(kind: _Kind, sl: _Slice, scale: float, rng: np.random.Generator) -> np.ndarray:
    geom = kind.geometry
    idx = np.arange(geom.size) * geom.spacing
    rows, cols = np.meshgrid(idx, idx, indexing="ij")
    points = (
        np.asarray(sl.position)
        + cols[..., None] * np.asarray(sl.row_dir)
        + rows[..., None] * np.asarray(sl.col_dir)
    )
    u = points / np.asarray(geom.half_fov)
    r = np.sqrt(((u / _HEAD_AXES) ** 2).sum(axis=-1))
    img = np.where(r <= 1.0, kind.skull, 0.0)
    img = np.where(r <= 0.85, kind.brain, img)
    img = np.where(np.linalg.norm(u - _MARKER_CENTRE, axis=-1) <= 0.2, 2.3 * kind.brain, img)
    img = img * scale + rng.normal(20.0, 5.0, img.shape)  # a noise floor, like a real scanner
    return np.clip(np.rint(img), 0, 4095).astype("<u2")


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _study_start(study_date: str, study_time: str) -> tuple[datetime, bool]:
    """Parse the study start; the flag says whether the date itself was valid."""
    try:
        return datetime.strptime(study_date + study_time[:6], "%Y%m%d%H%M%S"), True
    except ValueError:
        pass
    try:
        return datetime.strptime(study_time[:6], "%H%M%S"), False
    except ValueError:
        return datetime(2000, 1, 1, 12), False  # only offsets are derived from it


def _study_dataset(
    patient: Patient,
    study_date: str,
    study_time: str,
    description: str,
    study_uid: str,
    frame_uid: str,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so accented names survive
    ds.SOPClassUID = MRImageStorage
    ds.StudyInstanceUID = study_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate, ds.StudyTime = study_date, study_time
    ds.AccessionNumber = patient.accession
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.BodyPartExamined = "BRAIN"
    ds.SoftwareVersions = "bidsapp.synthetic"
    ds.MagneticFieldStrength = 3
    ds.ImagingFrequency = 123.2
    ds.ImagedNucleus = "1H"
    ds.PatientPosition = "HFS"
    ds.StudyID = "1"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    return ds


def write_session(
    dest: Path,
    *,
    patient: Patient = Patient(),
    series: Sequence[Series] = DEFAULT_SERIES,
    study_date: str = "20240102",
    study_time: str = "101500",
    study_description: str = "Demo study",
    study_uid: str | None = None,
    seed: int = 0,
    file_names: str = "{series:02d}/{instance:04d}.dcm",
) -> list[Path]:
    """Write one study (one StudyInstanceUID) as classic single-frame MR Image Storage files.

    Return the paths, in writing order. ``file_names`` is formatted with ``series`` and
    ``instance`` (1-based), ``protocol`` and ``patient`` (the name with ``^`` as ``_``).
    """
    for spec in series:
        if spec.kind not in _KINDS:
            raise ValueError(f"unknown series kind {spec.kind!r}; expected one of {sorted(_KINDS)}")
    study_uid = study_uid or _uid("study", seed)
    start, date_ok = _study_start(study_date, study_time)
    paths: list[Path] = []
    # anonymised exports carry invalid values such as "***", which must be kept verbatim
    with config.disable_value_validation():
        base = _study_dataset(
            patient,
            study_date,
            study_time,
            study_description,
            study_uid,
            _uid("frame", study_uid, seed),
        )
        for number, spec in enumerate(series, start=1):
            kind = _KINDS[spec.kind]
            geom = kind.geometry
            series_uid = _uid("series", study_uid, seed, number)
            series_start = start + timedelta(minutes=3 * number)
            rng = np.random.default_rng([seed, number])
            sds = copy.deepcopy(base)
            sds.SeriesInstanceUID = series_uid
            sds.SeriesNumber = number
            sds.SeriesDate = series_start.strftime("%Y%m%d") if date_ok else study_date
            sds.SeriesTime = series_start.strftime("%H%M%S.%f")
            sds.SeriesDescription = spec.protocol if spec.description is None else spec.description
            sds.ProtocolName = spec.protocol
            sds.ImageComments = spec.image_comments
            sds.RepetitionTime = kind.tr_ms
            for key, value in kind.tags.items():
                setattr(sds, key, value)
            sds.SliceThickness = geom.thickness
            sds.PixelSpacing = [geom.spacing, geom.spacing]
            sds.Rows = sds.Columns = geom.size
            if kind.volumes > 1:
                sds.NumberOfTemporalPositions = kind.volumes
            nslices = len(geom.slices)
            for vol in range(kind.volumes):
                # 2D EPI: slices acquired one after another within each TR
                slice_dt = kind.tr_ms / 1000 / nslices if kind.volumes > 1 else 0.0
                for k, sl in enumerate(geom.slices):
                    instance = vol * nslices + k + 1
                    acq = series_start + timedelta(seconds=vol * kind.tr_ms / 1000 + k * slice_dt)
                    ds = copy.deepcopy(sds)
                    ds.SOPInstanceUID = _uid("sop", series_uid, seed, instance)
                    ds.InstanceCreationDate = ds.AcquisitionDate = ds.ContentDate = (
                        acq.strftime("%Y%m%d") if date_ok else study_date
                    )
                    ds.InstanceCreationTime = ds.AcquisitionTime = ds.ContentTime = acq.strftime(
                        "%H%M%S.%f"
                    )
                    ds.InstanceNumber = instance
                    ds.AcquisitionNumber = vol + 1
                    if kind.volumes > 1:
                        ds.TemporalPositionIdentifier = vol + 1
                    ds.ImageOrientationPatient = [*sl.row_dir, *sl.col_dir]
                    ds.ImagePositionPatient = [round(v, 4) for v in sl.position]
                    normal = np.cross(sl.row_dir, sl.col_dir)
                    ds.SliceLocation = round(float(np.dot(normal, sl.position)), 4)
                    ds.PixelData = _pixels(kind, sl, 1.0 + 0.01 * np.sin(vol), rng).tobytes()
                    ds.file_meta = FileMetaDataset()
                    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                    name = file_names.format(
                        series=number,
                        instance=instance,
                        protocol=spec.protocol,
                        patient=patient.name.replace("^", "_"),
                    )
                    path = Path(dest) / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    ds.save_as(path, enforce_file_format=True)
                    paths.append(path)
    return paths
