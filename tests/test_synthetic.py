"""Tests for the synthetic DICOM session generator, including real conversions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bidsapp_sandbox.exams import DEFAULT_SERIES, Patient, Series, write_session
from pydicom import config

from tests.conftest import need


@pytest.fixture
def tool(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Return a finder for executables, preferring the ones installed next to this Python."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    monkeypatch.setenv("PATH", path)
    # heudiconv/nipype would otherwise phone home for version checks
    monkeypatch.setenv("NO_ET", "1")
    monkeypatch.setenv("NIPYPE_NO_ET", "1")

    def find(name: str) -> str:
        exe = shutil.which(name)
        need(exe is not None, f"{name} not installed")  # a failure in CI, a skip elsewhere
        return str(exe)

    return find


def _read_all(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def _marker_centroid(img: nib.Nifti1Image) -> np.ndarray:
    data = np.asarray(nib.as_closest_canonical(img).dataobj, dtype=float)
    if data.ndim == 4:
        data = data.mean(axis=3)
    # centroid of the bright marker as a fraction of the field of view along each RAS axis
    return (np.argwhere(data > 0.75 * data.max()).mean(axis=0) + 0.5) / np.array(data.shape)


def _assert_left_anterior_superior(img: nib.Nifti1Image) -> None:
    # RAS+ voxel space: left = low x, anterior = high y, superior = high z
    x, y, z = _marker_centroid(img)
    assert x < 0.42 and y > 0.58 and z > 0.58, (x, y, z)


def test_fields_round_trip(tmp_path: Path) -> None:
    patient = Patient(
        name="Müller^José",
        patient_id="PID 42",
        birth_date="19811231",
        sex="F",
        age="042Y",
        accession="ACC123",
    )
    series = (
        Series("anat-T1w", "t1w", description="T1 MPRAGE", image_comments="hello"),
        Series("func-bold_task-rest", "bold"),
    )
    paths = write_session(
        tmp_path,
        patient=patient,
        series=series,
        study_date="20230405",
        study_time="083000",
        study_description="Lab^Study",
        file_names="{patient}/{protocol}/{series}-{instance:03d}.dcm",
    )
    assert len(paths) == 32 + 6 * 12
    assert paths[0] == tmp_path / "Müller_José" / "anat-T1w" / "1-001.dcm"
    assert all(p.is_file() for p in paths)
    datasets = _read_all(paths)
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 2
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    for ds in datasets:
        assert str(ds.PatientName) == "Müller^José"
        assert ds.PatientID == "PID 42"
        assert ds.PatientBirthDate == "19811231"
        assert (ds.PatientSex, ds.PatientAge, ds.AccessionNumber) == ("F", "042Y", "ACC123")
        assert ds.StudyDescription == "Lab^Study"
        assert ds.StudyDate == ds.SeriesDate == ds.AcquisitionDate == ds.ContentDate == "20230405"
        assert ds.StudyTime == "083000"
        assert ds.AcquisitionTime > ds.StudyTime
        assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    t1, bold = datasets[0], datasets[-1]
    assert (t1.SeriesNumber, t1.ProtocolName, t1.SeriesDescription) == (1, "anat-T1w", "T1 MPRAGE")
    assert t1.ImageComments == "hello"
    assert t1.pixel_array.shape == (48, 48) and t1.pixel_array.dtype == np.uint16
    assert list(t1.ScanningSequence) == ["GR", "IR"]
    assert (float(t1.RepetitionTime), float(t1.EchoTime), float(t1.InversionTime)) == (
        2300,
        2.98,
        900,
    )
    assert (bold.SeriesNumber, bold.SeriesDescription) == (2, "func-bold_task-rest")
    assert bold.ImageComments == ""
    assert bold.pixel_array.shape == (32, 32)
    assert (bold.AcquisitionNumber, bold.TemporalPositionIdentifier, bold.InstanceNumber) == (
        6,
        6,
        72,
    )
    bold_times = [ds.AcquisitionTime for ds in datasets[32:]]
    assert bold_times == sorted(bold_times) and len(set(bold_times)) == 72


def test_default_session_layout(tmp_path: Path) -> None:
    paths = write_session(tmp_path)
    protocols = [s.protocol for s in DEFAULT_SERIES]
    assert [s.kind for s in DEFAULT_SERIES] == ["localizer", "t1w", "bold"]
    assert "anat-T1w" in protocols and "func-bold_task-rest" in protocols
    assert len(paths) == 3 + 32 + 72
    assert paths[0] == tmp_path / "01" / "0001.dcm"
    assert paths[-1] == tmp_path / "03" / "0072.dcm"


def test_anonymised_birth_date_is_written_raw(tmp_path: Path) -> None:
    before = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    paths = write_session(
        tmp_path, patient=Patient(birth_date="***"), series=[Series("localizer", "localizer")]
    )
    assert (
        config.settings.reading_validation_mode,
        config.settings.writing_validation_mode,
    ) == before
    for ds in _read_all(paths):
        assert ds.PatientBirthDate == "***"
        assert ds.StudyDate == "20240102"
    assert b"***" in paths[0].read_bytes()


def test_determinism_and_seeds(tmp_path: Path) -> None:
    series = [Series("anat-T1w", "t1w")]
    a = write_session(tmp_path / "a", series=series, seed=1)
    b = write_session(tmp_path / "b", series=series, seed=1)
    c = write_session(tmp_path / "c", series=series, seed=2)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    ds_a, ds_c = pydicom.dcmread(a[0]), pydicom.dcmread(c[0])
    assert ds_a.StudyInstanceUID != ds_c.StudyInstanceUID
    assert ds_a.SeriesInstanceUID != ds_c.SeriesInstanceUID
    assert not np.array_equal(ds_a.pixel_array, ds_c.pixel_array)
    d = write_session(tmp_path / "d", series=series, seed=1, study_uid="1.2.3.4")
    ds_d = pydicom.dcmread(d[0])
    assert ds_d.StudyInstanceUID == "1.2.3.4"
    assert ds_d.SeriesInstanceUID != ds_a.SeriesInstanceUID


def test_unknown_kind_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown series kind"):
        write_session(tmp_path, series=[Series("dwi", "dwi")])
    assert not any(tmp_path.iterdir())


def test_dcm2niix_t1w_shape_and_orientation(tmp_path: Path, tool: Callable[[str], str]) -> None:
    dcm2niix = tool("dcm2niix")
    write_session(tmp_path / "dicom", series=[Series("anat-T1w", "t1w")])
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run(
        [dcm2niix, "-z", "y", "-b", "n", "-f", "t1w", "-o", str(out), str(tmp_path / "dicom")],
        check=True,
        capture_output=True,
    )
    img = nib.load(out / "t1w.nii.gz")
    assert img.shape == (48, 48, 32)
    assert np.allclose(img.header.get_zooms(), 1.0)
    _assert_left_anterior_superior(img)
    # the check must be able to fail: mirror the voxels left-right, keep the affine
    canonical = nib.as_closest_canonical(img)
    mirrored = nib.Nifti1Image(np.asarray(canonical.dataobj)[::-1], canonical.affine)
    with pytest.raises(AssertionError):
        _assert_left_anterior_superior(mirrored)


@pytest.mark.slow
def test_heudiconv_reproin_gives_valid_bids(tmp_path: Path, tool: Callable[[str], str]) -> None:
    heudiconv, validator = tool("heudiconv"), tool("bids-validator-deno")
    dicom, out = tmp_path / "dicom", tmp_path / "out"
    write_session(dicom)
    # -l . : without it reproin nests the output under a locator taken from StudyDescription
    subprocess.run(
        [
            heudiconv,
            "--files",
            str(dicom),
            "-s",
            "01",
            "-f",
            "reproin",
            "-c",
            "dcm2niix",
            "--bids",
            "notop",
            "--minmeta",
            "-o",
            str(out),
            "-l",
            ".",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    sub = out / "sub-01"
    produced = sorted(p.relative_to(sub).as_posix() for p in sub.rglob("*") if p.is_file())
    assert produced == [
        "anat/sub-01_T1w.json",
        "anat/sub-01_T1w.nii.gz",
        "func/sub-01_task-rest_bold.json",
        "func/sub-01_task-rest_bold.nii.gz",
        "sub-01_scans.tsv",
    ]
    # the localizer is ignored altogether, not even tarred into sourcedata/
    assert not any("scout" in p.name or "localizer" in p.name for p in out.rglob("*"))
    t1 = nib.load(sub / "anat" / "sub-01_T1w.nii.gz")
    bold = nib.load(sub / "func" / "sub-01_task-rest_bold.nii.gz")
    assert t1.shape == (48, 48, 32)
    assert bold.shape == (32, 32, 12, 6)
    _assert_left_anterior_superior(t1)
    _assert_left_anterior_superior(bold)
    sidecar = json.loads((sub / "func" / "sub-01_task-rest_bold.json").read_text())
    assert sidecar["RepetitionTime"] == 2.0 and sidecar["TaskName"] == "rest"
    assert len(sidecar["SliceTiming"]) == 12

    dataset = tmp_path / "bids"
    shutil.copytree(sub, dataset / "sub-01")
    (dataset / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0"})
    )
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [validator, str(dataset), "--format", "json", "-o", str(report)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    issues = json.loads(report.read_text())["issues"]["issues"]
    errors = [i for i in issues if i.get("severity") == "error"]
    assert errors == [], errors
    assert proc.returncode == 0, proc.stderr
