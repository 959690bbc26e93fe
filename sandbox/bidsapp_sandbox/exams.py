"""Synthetic DICOM sessions (classic single-frame MR Image Storage) for demos and tests.

Every image samples the same head-like phantom: a bright ellipsoid "brain" inside a darker
"skull" shell, plus a brighter spherical marker in the subject's **left-anterior-superior**
octant. After conversion to NIfTI and ``nibabel.as_closest_canonical`` (RAS+: +x towards the
subject's right), the marker lies at *low* x, *high* y and *high* z voxel indices.

`EXAMS` are clinical and research sessions as three vendors' scanners write them, for testing
the default heuristic on what the shared real data lacks: each vendor's series names, image
types (Siemens SWI magnitude, phase and the scanner's SWI and mIP reconstructions; a
prescan-normalised copy), sequence vocabulary, and the phase-encoding polarity in the private
tags dcm2niix reads it from (Siemens: the CSA image header; GE: RectilinearPhaseEncodeReordering).
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["DEFAULT_SERIES", "EXAMS", "Exam", "Patient", "Series", "write_session"]


@dataclass(frozen=True)
class Patient:
    """Patient-level attributes (PHI), written verbatim even when invalid (e.g. "***")."""

    name: str = "Demo^Subject"
    patient_id: str = "DEMO0001"
    birth_date: str = "19700101"
    sex: str = "O"
    age: str = "054Y"
    accession: str = ""


# A tag: a keyword, or a vendor's private tag as (group, element offset, private creator, VR).
Tag = str | tuple[int, int, str, str]


@dataclass(frozen=True)
class Series:
    """One series: protocol name and image kind (a key of `_KINDS`, e.g. "t1w" or "bold").

    `tags` override the kind's header values (e.g. another ImageType); `phase_positive` writes
    the phase-encoding polarity the vendor's way; `acquisition` (a series number) makes this
    series another reconstruction of that series' acquisition (same acquisition time).
    """

    protocol: str
    kind: str
    description: str | None = None
    image_comments: str = ""
    tags: tuple[tuple[Tag, object], ...] = ()
    phase_positive: bool | None = None
    acquisition: int = 0
    stacks: tuple[tuple[tuple[Tag, object], ...], ...] = ()
    """Per stack of slices, the tags that differ (an echo, magnitude or phase, a b-value): when
    given, the series is these stacks instead of the kind's volumes."""
    tilt: float = 0.0
    """Degrees the slice stack is tilted about the left-right axis (another grid)."""


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


def _small(volumes: int, brain: float, skull: float, tr_ms: float, **tags: object) -> _Kind:
    """A 16 x 16 x 8 kind: tiny, so that whole exams convert in seconds."""
    return _Kind(_axial_stack(16, 8, 12.0), volumes, brain, skull, tr_ms, tags)


def _type(text: str) -> list[str]:
    return text.split("\\")


# Sequences as each vendor's scanner labels them (times in ms, as DICOM has them).
_KINDS.update(
    {
        "siemens_mprage": _small(
            1, 700, 250, 2300, ScanningSequence=["GR", "IR"], SequenceVariant=["SK", "SP", "MP"],
            SequenceName="*tfl3d1_16ns", MRAcquisitionType="3D", EchoTime=2.98,
            InversionTime=900, FlipAngle=9, ImageType=_type("ORIGINAL\\PRIMARY\\M\\ND"),
            InPlanePhaseEncodingDirection="ROW",
        ),
        "siemens_tirm": _small(
            1, 500, 300, 9000, ScanningSequence=["SE", "IR"],
            SequenceVariant=["SK", "SP", "MP", "OSP"], SequenceName="*tir2d1_16",
            MRAcquisitionType="2D", EchoTime=81, InversionTime=2500, FlipAngle=150,
            ImageType=_type("ORIGINAL\\PRIMARY\\M\\ND\\NORM"),
            InPlanePhaseEncodingDirection="ROW",
        ),
        "siemens_swi": _small(
            1, 400, 200, 27, ScanningSequence="GR", SequenceVariant=["SP", "OSP"],
            SequenceName="*swi3d1r", MRAcquisitionType="3D", EchoTime=20, FlipAngle=15,
            ImageType=_type("ORIGINAL\\PRIMARY\\M\\SWI\\ND\\NORM"),
            InPlanePhaseEncodingDirection="ROW",
        ),
        "siemens_bold": _small(
            6, 600, 150, 800, ScanningSequence="EP", SequenceVariant=["SK", "SS"],
            SequenceName="*epfid2d1_16", MRAcquisitionType="2D", EchoTime=30, FlipAngle=52,
            ImageType=_type("ORIGINAL\\PRIMARY\\M\\ND"), InPlanePhaseEncodingDirection="COL",
        ),
        "siemens_sbref": _small(
            1, 900, 300, 800, ScanningSequence="EP", SequenceVariant=["SK", "SS"],
            SequenceName="*epfid2d1_16", MRAcquisitionType="2D", EchoTime=30, FlipAngle=52,
            ImageType=_type("ORIGINAL\\PRIMARY\\M\\ND"), InPlanePhaseEncodingDirection="COL",
        ),
        "siemens_se_epi": _small(
            3, 800, 250, 7000, ScanningSequence="EP", SequenceVariant="SK",
            SequenceName="*epse2d1_16", MRAcquisitionType="2D", EchoTime=60, FlipAngle=90,
            ImageType=_type("ORIGINAL\\PRIMARY\\M\\ND"), InPlanePhaseEncodingDirection="COL",
        ),
        "philips_survey": _Kind(
            _triplanar(32, 8.0), 1, 500, 200, 11, {
                "ScanningSequence": "GR", "SequenceVariant": "SP", "MRAcquisitionType": "2D",
                "EchoTime": 4.6, "FlipAngle": 15,
                "ImageType": _type("ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"),
                "InPlanePhaseEncodingDirection": "ROW",
            },
        ),
        "philips_tfe": _small(
            1, 700, 250, 8.1, ScanningSequence="GR", SequenceVariant="MP",
            MRAcquisitionType="3D", EchoTime=3.7, FlipAngle=8,
            ImageType=_type("ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"),
            InPlanePhaseEncodingDirection="ROW",
        ),
        # a spoiled FFE (GR/SP): dcm2niix guesses a Philips field map and warns without a newline
        "philips_ffe": _small(
            1, 500, 250, 600, ScanningSequence="GR", SequenceVariant="SP",
            MRAcquisitionType="2D", EchoTime=20, FlipAngle=18,
            ImageType=_type("ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"),
            InPlanePhaseEncodingDirection="ROW",
        ),
        "philips_tse": _small(
            1, 600, 300, 3000, ScanningSequence="SE", SequenceVariant="SK",
            MRAcquisitionType="2D", EchoTime=80, FlipAngle=90,
            ImageType=_type("ORIGINAL\\PRIMARY\\M_SE\\M\\SE"),
            InPlanePhaseEncodingDirection="COL",
        ),
        "ge_bravo": _small(
            1, 700, 250, 8.2, ScanningSequence="GR", SequenceVariant=["SS", "SK"],
            MRAcquisitionType="3D", EchoTime=3.2, InversionTime=450, FlipAngle=12,
            ImageType=_type("ORIGINAL\\PRIMARY\\OTHER"), InPlanePhaseEncodingDirection="ROW",
        ),
        "ge_cube_flair": _small(
            1, 500, 300, 6000, ScanningSequence=["SE", "IR"], SequenceVariant=["SK", "SS"],
            MRAcquisitionType="3D", EchoTime=120, InversionTime=1800, FlipAngle=90,
            ImageType=_type("ORIGINAL\\PRIMARY\\OTHER"), InPlanePhaseEncodingDirection="ROW",
        ),
        "ge_frfse": _small(
            1, 600, 300, 4500, ScanningSequence="SE", SequenceVariant=["SK", "OSP"],
            MRAcquisitionType="2D", EchoTime=100, FlipAngle=125,
            ImageType=_type("ORIGINAL\\PRIMARY\\OTHER"), InPlanePhaseEncodingDirection="COL",
        ),
        # field maps and diffusion: their stacks (echoes, magnitude/phase, field, b-values)
        # are set per series (Series.stacks)
        "siemens_gre_fieldmap": _small(
            1, 500, 250, 600, ScanningSequence="GR", SequenceVariant="SP",
            SequenceName="*fm2d2r", MRAcquisitionType="2D", EchoTime=4.92, FlipAngle=60,
            ImageType=_type("ORIGINAL\\PRIMARY\\M\\ND"), InPlanePhaseEncodingDirection="ROW",
        ),
        "ge_b0map": _small(
            1, 500, 250, 700, ScanningSequence="GR", SequenceVariant="SS",
            MRAcquisitionType="2D", EchoTime=3.0, FlipAngle=30,
            ImageType=_type("ORIGINAL\\PRIMARY\\OTHER"), InPlanePhaseEncodingDirection="COL",
        ),
        "ge_dwi": _small(
            1, 800, 250, 8000, ScanningSequence=["EP", "SE"], SequenceVariant="SK",
            MRAcquisitionType="2D", EchoTime=80, FlipAngle=90,
            ImageType=_type("ORIGINAL\\PRIMARY\\OTHER"), InPlanePhaseEncodingDirection="COL",
        ),
    }
)  # fmt: skip

# Study-level headers by vendor ("" = the attribute is absent, as GE leaves StudyDescription).
_VENDORS: dict[str, Mapping[str, object]] = {
    "synthetic": {},
    "siemens": {"ManufacturerModelName": "Prisma_fit", "SoftwareVersions": "syngo MR E11"},
    "philips": {"Manufacturer": "Philips Medical Systems", "ManufacturerModelName": "Ingenia",
                "SoftwareVersions": "5.7.1\\5.7.1.2"},
    "ge": {"Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "SIGNA Premier",
           "SoftwareVersions": "28\\LX\\MR29.1_R01", "StudyDescription": ""},
}  # fmt: skip


@dataclass(frozen=True)
class Exam:
    """A scanner's session: its vendor and series, in the order it acquired them."""

    vendor: str
    series: tuple[Series, ...]


def _it(text: str) -> tuple[tuple[str, object], ...]:
    return (("ImageType", _type(text)),)


# GE's B0 map: the pulse sequence name says so, and each file holds both the field (first
# stack) and the magnitude, so GE's count of slice locations is half the images.
_GE_ACQ, _GE_REL = "GEMS_ACQU_01", "GEMS_RELA_01"
_GE_B0MAP: tuple[tuple[Tag, object], ...] = (
    ((0x0019, 0x9C, _GE_ACQ, "LO"), "b0map"),
    ((0x0019, 0x9E, _GE_ACQ, "LO"), "B0map"),
    ((0x0021, 0x4F, _GE_REL, "SS"), 8),
    ("ImagesInAcquisition", 16),
)
_PHASE = (*_it("ORIGINAL\\PRIMARY\\P\\ND"), ("EchoTime", 7.38), ("EchoNumbers", 2))
_MAGNITUDES = ((("EchoTime", 4.92), ("EchoNumbers", 1)), (("EchoTime", 7.38), ("EchoNumbers", 2)))


def _ge_diffusion(volumes: int) -> tuple[tuple[tuple[Tag, object], ...], ...]:
    """b=0 then b=1000 along spread directions, in GE's private tags only."""
    stacks = []
    for n in range(volumes):
        b = 0 if n == 0 else 1000
        x, y, z = (0.0, 0.0, 0.0) if n == 0 else np.roll((1.0, 0.5 * n % 1, 0.0), n)
        stacks.append((
            ((0x0043, 0x39, "GEMS_PARM_01", "IS"), [b, 8, 0, 0]),
            ((0x0019, 0xBB, _GE_ACQ, "DS"), float(x)),
            ((0x0019, 0xBC, _GE_ACQ, "DS"), float(y)),
            ((0x0019, 0xBD, _GE_ACQ, "DS"), float(z)),
        ))  # fmt: skip
    return tuple(stacks)


EXAMS: dict[str, Exam] = {
    # a clinical brain exam: MPRAGE saved unnormalised (_ND) and prescan-normalised, FLAIR,
    # and SWI with the magnitude, phase, SWI and mIP series the scanner reconstructs
    "siemens_clinical": Exam("siemens", (
        Series("AAHead_Scout", "localizer"),
        Series("t1_mprage_sag_p2", "siemens_mprage", description="t1_mprage_sag_p2_ND"),
        Series("t1_mprage_sag_p2", "siemens_mprage", acquisition=2,
               tags=_it("ORIGINAL\\PRIMARY\\M\\ND\\NORM")),
        Series("t2_tse_dark-fluid_tra", "siemens_tirm"),
        Series("swi_tra", "siemens_swi", description="Mag_Images"),
        Series("swi_tra", "siemens_swi", description="Pha_Images", acquisition=5,
               tags=_it("ORIGINAL\\PRIMARY\\P\\SWI\\ND")),
        Series("swi_tra", "siemens_swi", description="mIP_Images(SW)", acquisition=5,
               tags=_it("DERIVED\\PRIMARY\\MNIP\\SWI\\ND\\NORM")),
        Series("swi_tra", "siemens_swi", description="SWI_Images", acquisition=5,
               tags=_it("DERIVED\\PRIMARY\\M\\SWI\\ND\\NORM")),
    )),
    "philips_tfe": Exam("philips", (
        Series("Survey", "philips_survey", description="SmartBrain"),
        Series("T1 3D TFE", "philips_tfe"),
        Series("T2W_TSE tra", "philips_tse"),
        Series("T2*W_FFE tra", "philips_ffe"),
    )),
    "ge_bravo_cube": Exam("ge", (
        Series("3Plane Loc SSFSE", "localizer", tags=_it("ORIGINAL\\PRIMARY\\OTHER")),
        Series("Sag BRAVO", "ge_bravo"),
        Series("Sag CUBE FLAIR", "ge_cube_flair"),
        Series("Ax T2 FRFSE", "ge_frfse"),
    )),
    # GE: a B0 map (dcm2niix writes its magnitude and the field in Hz) and a DWI whose
    # b-values and directions are only in GE's private tags, under an uninformative name
    "ge_b0map_dwi": Exam("ge", (
        Series("Ax B0 map", "ge_b0map", tags=_GE_B0MAP,
               stacks=(_it("DERIVED\\PRIMARY\\OTHER"), _it("ORIGINAL\\PRIMARY\\OTHER"))),
        Series("Ax seq 7", "ge_dwi", phase_positive=True, stacks=_ge_diffusion(6)),
        Series("Sag BRAVO", "ge_bravo"),
    )),
    # Philips: a B0 map (magnitude + field in Hz) and a two-echo GRE field map that stores
    # magnitude and phase for each echo in one series; a BOLD run last, whose polarity Philips
    # DICOM does not record
    "philips_fieldmaps": Exam("philips", (
        Series("B0 map", "philips_ffe", stacks=(
            (*_it("ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"), ("ComplexImageComponent", "MAGNITUDE")),
            (*_it("ORIGINAL\\PRIMARY\\B0 MAP\\B0\\UNSPECIFIED"), ("ComplexImageComponent", "REAL")),
        )),
        Series("fMRI Field Mapping", "philips_ffe", stacks=tuple(
            (*_it(f"ORIGINAL\\PRIMARY\\{kind}\\{part}\\FFE"), ("EchoTime", te), ("EchoNumbers", n))
            for n, te in ((1, 2.3), (2, 4.6))
            for kind, part in (("M_FFE", "M"), ("PHASE MAP", "P"))
        )),
        Series("T1 3D TFE", "philips_tfe"),
        Series("fMRI_rest", "bold"),
    )),
    # Siemens: two GRE field maps, each a magnitude series (two echoes) and a phase-difference
    # series of the same acquisition; the scanner numbered each phase series before its
    # magnitudes, and the second set sits on another grid. A BOLD run follows each.
    "siemens_two_gre_sets": Exam("siemens", (
        Series("gre_field_mapping", "siemens_gre_fieldmap", tags=_PHASE, acquisition=2),
        Series("gre_field_mapping", "siemens_gre_fieldmap", stacks=_MAGNITUDES),
        Series("rfMRI_REST_AP", "siemens_bold", phase_positive=True),
        Series("gre_field_mapping", "siemens_gre_fieldmap", tags=_PHASE, acquisition=5,
               tilt=15.0),
        Series("gre_field_mapping", "siemens_gre_fieldmap", stacks=_MAGNITUDES, tilt=15.0),
        Series("tfMRI_MOTOR_AP", "siemens_bold", phase_positive=True),
    )),
    # Siemens: single-volume EPIs in opposite phase-encoding directions named for nothing in
    # particular, then a BOLD run: a PEPOLAR field map pair that corrects it
    "siemens_pepolar_singles": Exam("siemens", (
        Series("ep2d_1vol_AP", "siemens_se_epi", phase_positive=True, stacks=((),)),
        Series("ep2d_1vol_PA", "siemens_se_epi", phase_positive=False, stacks=((),)),
        Series("rfMRI_REST_AP", "siemens_bold", phase_positive=True),
    )),
    # HCP-style: a spin-echo EPI field map pair (AP, PA) and a resting BOLD with its SBRef
    "siemens_bold_se_epi": Exam("siemens", (
        Series("SpinEchoFieldMap_AP", "siemens_se_epi", phase_positive=True),
        Series("SpinEchoFieldMap_PA", "siemens_se_epi", phase_positive=False),
        Series("rfMRI_REST_AP_SBRef", "siemens_sbref", phase_positive=True),
        Series("rfMRI_REST_AP", "siemens_bold", phase_positive=True),
    )),
}  # fmt: skip


def _csa(fields: Mapping[str, str]) -> bytes:
    """A Siemens CSA image header (SV10): per field a tag and, as the scanner writes, six
    items, the value in the first (readers such as dcm2niix read up to three)."""
    out = [b"SV10\x04\x03\x02\x01", struct.pack("<II", len(fields), 77)]
    for name, value in fields.items():
        data = value.encode() + b"\0"
        out.append(struct.pack("<64si4siii", name.encode(), 1, b"DS", 3, 6, 77))
        out.append(struct.pack("<iiii", len(data), len(data), 77, len(data)))
        out.append(data + b"\0" * (-len(data) % 4))
        out.append(struct.pack("<iiii", 0, 0, 77, 0) * 5)
    return b"".join(out)


def _tilted(sl: _Slice, degrees: float) -> _Slice:
    """The slice rotated about the left-right (x) axis through the isocentre."""
    if not degrees:
        return sl
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))

    def turn(v: _Vec) -> _Vec:
        return (v[0], round(c * v[1] - s * v[2], 6), round(s * v[1] + c * v[2], 6))

    return _Slice(turn(sl.row_dir), turn(sl.col_dir), turn(sl.position))


def _set(ds: Dataset, key: Tag, value: object) -> None:
    if isinstance(key, str):
        setattr(ds, key, value)
        return
    group, offset, creator, vr = key
    ds.private_block(group, creator, create=True).add_new(offset, vr, value)


def _write_polarity(ds: Dataset, manufacturer: str, positive: bool) -> None:
    """The phase-encoding polarity where the vendor keeps it (Philips headers have none)."""
    if manufacturer == "SIEMENS":
        csa = {"PhaseEncodingDirectionPositive": str(int(positive)),
               "BandwidthPerPixelPhaseEncode": "31.25"}  # fmt: skip
        ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", _csa(csa))
    elif manufacturer.startswith("GE"):
        ds.RectilinearPhaseEncodeReordering = "REVERSE_LINEAR" if positive else "LINEAR"


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
    ds.SoftwareVersions = "bidsapp_sandbox.exams"
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
    vendor: str = "synthetic",
) -> list[Path]:
    """Write one study (one StudyInstanceUID) as classic single-frame MR Image Storage files.

    Return the paths, in writing order. ``file_names`` is formatted with ``series`` and
    ``instance`` (1-based), ``protocol`` and ``patient`` (the name with ``^`` as ``_``).
    ``vendor`` (a key of `_VENDORS`) sets the manufacturer's study-level headers.
    """
    for spec in series:
        if spec.kind not in _KINDS:
            raise ValueError(f"unknown series kind {spec.kind!r}; expected one of {sorted(_KINDS)}")
    if vendor not in _VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}; expected one of {sorted(_VENDORS)}")
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
        for key, value in _VENDORS[vendor].items():
            if value == "":
                delattr(base, key)
            else:
                setattr(base, key, value)
        for number, spec in enumerate(series, start=1):
            kind = _KINDS[spec.kind]
            geom = kind.geometry
            series_uid = _uid("series", study_uid, seed, number)
            series_start = start + timedelta(minutes=3 * number)
            # another reconstruction of an earlier acquisition: that acquisition's times
            acquired = start + timedelta(minutes=3 * (spec.acquisition or number))
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
            for tag, value in (*kind.tags.items(), *spec.tags):
                _set(sds, tag, value)
            if spec.phase_positive is not None:
                _write_polarity(sds, str(sds.Manufacturer), spec.phase_positive)
            sds.SliceThickness = geom.thickness
            sds.PixelSpacing = [geom.spacing, geom.spacing]
            sds.Rows = sds.Columns = geom.size
            volumes = len(spec.stacks) or kind.volumes
            if volumes > 1 and not spec.stacks:
                sds.NumberOfTemporalPositions = volumes
            nslices = len(geom.slices)
            for vol in range(volumes):
                # 2D EPI: slices acquired one after another within each TR
                slice_dt = kind.tr_ms / 1000 / nslices if volumes > 1 else 0.0
                for k, sl in enumerate(_tilted(s, spec.tilt) for s in geom.slices):
                    instance = vol * nslices + k + 1
                    acq = acquired + timedelta(seconds=vol * kind.tr_ms / 1000 + k * slice_dt)
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
                    if volumes > 1 and not spec.stacks:
                        ds.TemporalPositionIdentifier = vol + 1
                    for tag, value in spec.stacks[vol] if spec.stacks else ():
                        _set(ds, tag, value)
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
