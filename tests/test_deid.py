"""bidsapp.privacy.deid: profile on sidecars, TSVs and NIfTI; dates; DICOM copies; faces."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from bidsapp_sandbox.exams import Patient, Series, write_session

from bidsapp.errors import BadInputData, UsageError
from bidsapp.privacy.deid import (
    DATE_MODES,
    DeidReport,
    date_offset,
    deface,
    deidentify,
    deidentify_dicoms,
    load_secret,
    profile,
    shift_date,
)
from bidsapp.privacy.phi import Identifiers, scan_tree
from bidsapp.privacy.profiles import REMOVE, rule_for

NAME = "Gonçalves^João"
HEADER = {
    "PatientName": NAME,
    "PatientID": "PX99123",
    "PatientBirthDate": "19800304",
    "AccessionNumber": "ACC4455",
}
FOLDER = "GONCALVES_JOAO_EXAM"
SECRET = bytes(range(32))
OFFSET = date_offset("01", SECRET)
REMOVED = sorted(r.field for r in profile() if r.action == REMOVE and "*" not in r.field)
SESSIONS = {"1": "2016-10-14T09:26:34.692500", "2": "2017-03-02T11:05:10"}


def ids() -> Identifiers:
    return Identifiers.collect([HEADER], FOLDER, "01")


def sidecar(when: str, **extra: Any) -> dict[str, Any]:
    """Shaped like dcm2niix's with -ba n: every identifying field it writes, and more."""
    people = "Silva^Rui"
    return {
        "Modality": "MR",
        "MagneticFieldStrength": 3,
        "Manufacturer": "Siemens",
        "InstitutionName": "Hospital de Santa Maria",
        "InstitutionAddress": "Av Prof Egas Moniz, Lisboa, PT",
        "InstitutionalDepartmentName": "None",
        "StationName": "AWP66012",
        "DeviceSerialNumber": "66012",
        "OperatorsName": people,
        "ReferringPhysicianName": people,
        "PerformingPhysicianName": people,
        "PhysiciansOfRecord": people,
        "RequestingPhysician": people,
        "AccessionNumber": "ACC4455",
        "StudyID": "7781",
        "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.2",
        "PatientName": NAME,
        "PatientID": "PX99123",
        "PatientBirthDate": "1980-03-04",
        "PatientSex": "F",
        "PatientAge": 36,
        "PatientWeight": 61,
        "PatientSize": 1.65,
        "StudyDescription": "Brain^Routine",
        "SeriesDescription": "anat-T1w",
        "ProtocolName": "anat-T1w",
        "ImageComments": "Unaliased MB3/PE4",
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "AcquisitionTime": when[11:],
        "AcquisitionDateTime": when,
        "SeriesDate": when[:10].replace("-", ""),
        "EchoTime": 0.00298,
        "SpoilingState": True,
        "ConversionSoftware": "dcm2niix",
        **extra,
    }


def nifti(
    path: Path, descrip: bytes = b"TE=3;Time=092634.693", ext: bytes = b"", kind: Any = None
) -> None:
    img = (kind or nib.Nifti1Image)(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4))
    img.header["descrip"] = descrip
    if ext:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, ext))
    nib.save(img, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent="\t", ensure_ascii=False) + "\n")


def make_subject(root: Path, adversarial: bool = False) -> Path:
    """sub-01 with two sessions as heudiconv lays them out (read-only, like heudiconv's)."""
    sub = root / "sub-01"
    sub.mkdir(parents=True)
    rows = "".join(f"ses-{s}\t{when}\n" for s, when in SESSIONS.items())
    (sub / "sub-01_sessions.tsv").write_text("session_id\tacq_time\n" + rows)
    for ses, when in SESSIONS.items():
        base = sub / f"ses-{ses}"
        stem = f"sub-01_ses-{ses}"
        write_json(base / "anat" / f"{stem}_T1w.json", sidecar(when))
        nifti(base / "anat" / f"{stem}_T1w.nii.gz")
        write_json(base / "func" / f"{stem}_task-rest_bold.json", sidecar(when, TaskName="rest"))
        nifti(base / "func" / f"{stem}_task-rest_bold.nii.gz")
        (base / f"{stem}_scans.tsv").write_text(
            "filename\tacq_time\toperator\trandstr\n"
            f"anat/{stem}_T1w.nii.gz\t{when}\tSilva^Rui\t5a1c9e0f\n"
            f"func/{stem}_task-rest_bold.nii.gz\t\tSilva^Rui\t77e0d2b1\n"
        )
    if adversarial:
        anat = sub / "ses-1" / "anat"
        write_json(
            anat / "sub-01_ses-1_T2w.json",
            sidecar(
                SESSIONS["1"],
                StudyDescription="GONÇALVES^JOÃO cranio",
                ProcedureStepDescription="GonÃ§alves JoÃ£o",  # dcm2niix's mojibake
                ProtocolName=f"t2 {FOLDER}",
                ImageComments="born 1980-03-04",
                Extra={"nested": [{"note": "id PX99123"}, "acc ACC4455"], "ok": "fine"},
                AcquisitionMatrix=[256, "joão"],
            ),
        )
        nifti(anat / "sub-01_ses-1_T2w.nii.gz", descrip=b"Goncalves Joao", ext=b"PX99123")
        with (sub / "ses-1" / "sub-01_ses-1_scans.tsv").open("a") as tsv:
            tsv.write("anat/sub-01_ses-1_T2w.nii.gz\t2016-10-14T09:40:00\tx\tJoão\n")
    for path in sub.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    return sub


def read_tsv(path: Path) -> list[dict[str, str]]:
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    return [dict(zip(header, row, strict=True)) for row in rows]


def t1(sub: Path, ses: str = "1") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (sub / f"ses-{ses}" / "anat" / f"sub-01_ses-{ses}_T1w.json").read_text()
    )
    return data


@pytest.fixture
def subject(tmp_path: Path) -> Path:
    return make_subject(tmp_path / "bids")


# --- profile ------------------------------------------------------------------------------------


def test_every_profile_field_is_removed(subject: Path) -> None:
    report = deidentify(subject, ids(), offset_days=OFFSET)
    for path in subject.rglob("*.json"):
        data = json.loads(path.read_text())
        assert not set(REMOVED) & set(data), path.name
        assert data["SeriesDescription"] == "anat-T1w"  # descriptors without identifiers kept
        assert data["ImageComments"] == "Unaliased MB3/PE4"
    for path in subject.rglob("*_scans.tsv"):
        assert path.read_text().splitlines()[0] == "filename\tacq_time"
    assert report.removed["InstitutionName"] == 4
    assert report.removed["tsv:operator"] == report.removed["tsv:randstr"] == 2
    assert report.files_changed == 7
    assert report.blanked == {}


def test_basic_profile_covers_what_the_issue_lists() -> None:
    needed = (
        "InstitutionName InstitutionAddress InstitutionalDepartmentName StationName"
        " DeviceSerialNumber OperatorsName ReferringPhysicianName PerformingPhysicianName"
        " PhysiciansOfRecord RequestingPhysician AccessionNumber StudyID PatientName PatientID"
        " PatientBirthDate PatientSex PatientAge PatientWeight PatientSize"
    )
    assert set(needed.split()) <= set(REMOVED)
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        rule = rule_for(profile(), uid)
        assert rule is not None and rule.action == REMOVE
    assert all(r.reason for r in profile())


def test_unknown_profile_or_dates_is_a_usage_error(subject: Path) -> None:
    with pytest.raises(UsageError) as err:
        profile("strict")
    assert err.value.exit_code == 64
    with pytest.raises(UsageError):
        deidentify(subject, ids(), profile_name="strict", offset_days=OFFSET)
    with pytest.raises(UsageError):
        deidentify(subject, ids(), dates="blur", offset_days=OFFSET)
    with pytest.raises(UsageError, match="offset"):
        deidentify(subject, ids())  # a zero shift would keep the real dates


@pytest.mark.parametrize(
    "description", [NAME, "GONÇALVES^JOÃO cranio", "goncalves joao", "GonÃ§alves^JoÃ£o"]
)
def test_free_text_with_the_name_is_blanked(tmp_path: Path, description: str) -> None:
    path = tmp_path / "sub-01" / "anat" / "sub-01_T1w.json"
    write_json(path, {"StudyDescription": description, "ProtocolName": "t1_mprage_sag"})
    report = deidentify(path.parents[1], ids(), dates="keep")
    assert json.loads(path.read_text()) == {"StudyDescription": "", "ProtocolName": "t1_mprage_sag"}
    assert report.blanked == {"StudyDescription": 1}
    assert "Gon" not in json.dumps(report.to_json())


# --- dates --------------------------------------------------------------------------------------


def parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_shift_moves_every_date_by_the_offset_and_keeps_intervals(subject: Path) -> None:
    report = deidentify(subject, ids(), offset_days=OFFSET)
    for ses, when in SESSIONS.items():
        data = t1(subject, ses)
        shifted = parse(data["AcquisitionDateTime"])
        assert shifted - parse(when) == dt.timedelta(days=OFFSET)
        assert data["AcquisitionDateTime"][10:] == when[10:]  # time of day and precision kept
        assert data["AcquisitionTime"] == when[11:]
        assert data["SeriesDate"] == shifted.strftime("%Y%m%d")
        assert shifted.year <= 1925
    sessions = read_tsv(subject / "sub-01_sessions.tsv")
    before = parse(SESSIONS["2"]) - parse(SESSIONS["1"])
    assert parse(sessions[1]["acq_time"]) - parse(sessions[0]["acq_time"]) == before
    scans = read_tsv(subject / "ses-1" / "sub-01_ses-1_scans.tsv")
    assert scans[0]["acq_time"] == shift_date(SESSIONS["1"], OFFSET)
    assert scans[1]["acq_time"] == "n/a"  # heudiconv's empty cell is invalid BIDS
    assert report.dates == "shift" and report.shifted["tsv:acq_time"] == 4
    assert report.shifted["AcquisitionDateTime"] == 4


def test_drop_removes_dates_and_keep_keeps_them(tmp_path: Path) -> None:
    dropped = make_subject(tmp_path / "a")
    deidentify(dropped, ids(), dates="drop")
    assert "AcquisitionDateTime" not in t1(dropped) and "SeriesDate" not in t1(dropped)
    assert t1(dropped)["AcquisitionTime"] == SESSIONS["1"][11:]
    assert {r["acq_time"] for r in read_tsv(dropped / "sub-01_sessions.tsv")} == {"n/a"}
    kept = make_subject(tmp_path / "b")
    report = deidentify(kept, ids(), dates="keep")
    assert t1(kept)["AcquisitionDateTime"] == SESSIONS["1"]
    assert [r["acq_time"] for r in read_tsv(kept / "sub-01_sessions.tsv")] == list(
        SESSIONS.values()
    )
    assert report.to_json()["dates"] == "keep" and DATE_MODES == ("keep", "shift", "drop")


def test_offset_is_stable_per_label_and_differs_between_labels() -> None:
    assert OFFSET == date_offset("01", SECRET) == date_offset("sub-01", SECRET) == -42294
    assert date_offset("02", SECRET) != OFFSET
    assert date_offset("01", bytes(32)) != OFFSET
    code = (
        "from bidsapp.privacy.deid import date_offset; print(date_offset('01', bytes(range(32))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert int(out.stdout) == OFFSET
    for label in ("01", "02", "abc", "99"):
        latest = dt.date(2035, 12, 31) + dt.timedelta(days=date_offset(label, SECRET))
        assert latest.year <= 1925
    with pytest.raises(UsageError):
        date_offset("01", b"")


def test_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "maps" / "date-shift.secret"
    first = load_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32 and path.read_text().strip() == first.hex()
    assert load_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_secret_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    """E.g. a subject map in a read-only folder: one line naming --date-secret, no traceback."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the map's folder would be\n")
    with pytest.raises(UsageError) as caught:
        load_secret(blocker / "map.secret")
    assert caught.value.exit_code == 64
    assert "--date-secret" in caught.value.one_line()


def test_offset_is_never_written(subject: Path) -> None:
    report = deidentify(subject, ids(), offset_days=OFFSET)
    texts = [p.read_text() for p in subject.rglob("*") if p.suffix in (".json", ".tsv")]
    texts.append(json.dumps(report.to_json()))
    for text in texts:
        assert str(abs(OFFSET)) not in text


# --- NIfTI, files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [nib.Nifti1Image, nib.Nifti2Image])
def test_nifti_text_with_an_identifier_is_cleared_and_data_kept(tmp_path: Path, kind: Any) -> None:
    sub = tmp_path / "sub-01"
    (sub / "anat").mkdir(parents=True)
    dirty, clean = sub / "anat" / "sub-01_T1w.nii.gz", sub / "anat" / "sub-01_T2w.nii"
    nifti(dirty, descrip=b"TE=3;Joao Goncalves", ext=b"patient PX99123", kind=kind)
    nifti(clean, kind=kind)
    before = gzip.decompress(dirty.read_bytes())
    clean_bytes = clean.read_bytes()
    report = deidentify(sub, ids(), dates="keep")
    after = gzip.decompress(dirty.read_bytes())
    img = nib.load(dirty)
    assert img.header["descrip"].item() == b""
    assert [e.get_code() for e in img.header.extensions] == [0]
    data_bytes = 60 * 2  # int16, at the end of the file
    assert after[-data_bytes:] == before[-data_bytes:] and len(after) == len(before)
    assert np.array_equal(img.get_fdata(), np.arange(60).reshape(3, 4, 5))
    assert clean.read_bytes() == clean_bytes
    assert report.blanked == {"nifti:descrip": 1, "nifti:extension": 1}
    assert report.files_changed == 1


def test_read_only_outputs_are_rewritten_with_their_mode(subject: Path) -> None:
    deidentify(subject, ids(), offset_days=OFFSET)
    for path in subject.rglob("*"):
        assert path.is_dir() or stat.S_IMODE(path.stat().st_mode) == 0o444, path
        assert not path.name.startswith(".deid-")


def test_broken_json_fails_closed(tmp_path: Path) -> None:
    bad = tmp_path / "sub-01" / "anat" / "sub-01_T1w.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"InstitutionName": "Hospital"')
    with pytest.raises(BadInputData, match=r"sub-01/anat/sub-01_T1w\.json"):
        deidentify(bad.parents[1], ids(), dates="keep")


def test_adversarial_subject_is_clean_for_the_gate(tmp_path: Path) -> None:
    sub = make_subject(tmp_path / "bids", adversarial=True)
    assert scan_tree(sub, ids())  # the fixture does leak before de-identification
    report = deidentify(sub, ids(), offset_days=OFFSET)
    assert scan_tree(sub, ids()) == []
    t2 = json.loads((sub / "ses-1" / "anat" / "sub-01_ses-1_T2w.json").read_text())
    assert t2["Extra"] == {"nested": [{"note": ""}, ""], "ok": "fine"}
    assert t2["ProcedureStepDescription"] == ""  # mojibake of the name is caught too
    assert t2["AcquisitionMatrix"] == [256, ""]
    assert "PX99123" not in json.dumps(report.to_json())
    assert isinstance(report, DeidReport) and report.blanked["nifti:descrip"] == 1


# --- sourcedata DICOM copies ---------------------------------------------------------------------


def texts_of(ds: pydicom.Dataset) -> list[str]:
    out: list[str] = []

    def visit(_: pydicom.Dataset, elem: pydicom.DataElement) -> None:
        if elem.keyword != "PixelData":
            value = elem.value
            out.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))

    ds.file_meta.walk(visit)
    ds.walk(visit)
    return out


@pytest.mark.parametrize("dates", ["shift", "drop"])
def test_dicom_copies_lose_every_identifier_and_keep_pixels(tmp_path: Path, dates: str) -> None:
    patient = Patient(NAME, "PX99123", "19800304", "F", "036Y", "ACC4455")
    src = tmp_path / "exam"
    sources = write_session(
        src,
        patient=patient,
        series=(Series("localizer", "localizer", image_comments="for Gonçalves João"),),
        study_description="GONÇALVES^JOÃO cranio",
        study_date="20161014",
        file_names="{patient}/{series:02d}/{instance:04d}.dcm",
    )
    (src / "notes.txt").write_text("not DICOM")
    dest = tmp_path / "sourcedata"
    n = deidentify_dicoms(src, dest, offset_days=OFFSET, dates=dates, seed="k1")
    assert n == len(sources) == 3
    written = sorted(dest.iterdir())
    assert [p.name for p in written] == ["000001.dcm", "000002.dcm", "000003.dcm"]
    originals = [pydicom.dcmread(p) for p in sorted(sources)]
    forbidden = ["Gonçalves", "João", "PX99123", "19800304", "1980", "ACC4455"]
    forbidden.append(originals[0].StudyInstanceUID)
    for orig, path in zip(originals, written, strict=True):
        ds = pydicom.dcmread(path)
        for text in texts_of(ds):
            assert not ids().find(text), text
            assert not any(f.lower() in text.lower() for f in forbidden), text
        assert ds.PixelData == orig.PixelData
        assert ds.StudyInstanceUID == pydicom.dcmread(written[0]).StudyInstanceUID
        assert "DICOGNITO" in ds.DeidentificationMethod
        expected = shift_date("20161014", OFFSET) if dates == "shift" else ""
        assert ds.StudyDate == expected and ds.PatientBirthDate == ""
        assert ds.SeriesTime == orig.SeriesTime
    again = tmp_path / "again"
    deidentify_dicoms(src, again, offset_days=OFFSET, dates=dates, seed="k1")
    first, second = (pydicom.dcmread(d / "000001.dcm") for d in (dest, again))
    assert first.StudyInstanceUID == second.StudyInstanceUID  # stable across reruns
    assert first.PatientName == second.PatientName


# --- faces ----------------------------------------------------------------------------------------

# stands in for pydeface: zeroes the last 20 voxels (40 bytes of int16), stdlib only for speed
FAKE_DEFACE = """
import gzip, sys
if len(sys.argv) > 3:
    sys.exit(int(sys.argv[3]))
with open(sys.argv[1], "rb") as src:
    data = gzip.decompress(src.read())
with open(sys.argv[2], "wb") as out:
    out.write(gzip.compress(data[:-40] + bytes(40)))
"""


def test_deface_replaces_anatomical_images_only(subject: Path, tmp_path: Path) -> None:
    script = tmp_path / "fake_deface.py"
    script.write_text(FAKE_DEFACE)
    bold = subject / "ses-1" / "func" / "sub-01_ses-1_task-rest_bold.nii.gz"
    bold_bytes = bold.read_bytes()
    done = deface(subject, f"{sys.executable} {script} {{in}} {{out}}")
    assert done == [f"sub-01/ses-{s}/anat/sub-01_ses-{s}_T1w.nii.gz" for s in SESSIONS]
    data = np.asanyarray(nib.load(subject.parent / done[0]).dataobj).ravel(order="F")
    original = np.arange(60).reshape(3, 4, 5).ravel(order="F")
    assert not data[-20:].any() and np.array_equal(data[:-20], original[:-20])
    assert stat.S_IMODE((subject.parent / done[0]).stat().st_mode) == 0o444
    assert bold.read_bytes() == bold_bytes
    assert [p.name for p in subject.parent.iterdir()] == ["sub-01"]  # temp folders gone


def test_failing_deface_command_is_bad_input(subject: Path, tmp_path: Path) -> None:
    script = tmp_path / "fake_deface.py"
    script.write_text(FAKE_DEFACE)
    with pytest.raises(BadInputData) as err:
        deface(subject, f"{sys.executable} {script} {{in}} {{out}} 3")
    assert err.value.exit_code == 65
    assert "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz" in str(err.value)
    assert "exited with 3" in str(err.value)
    with pytest.raises(UsageError):
        deface(subject, "pydeface {in}")
