"""bidsapp.pipeline.stage: exam folder → numbered local DICOM tree (no conversion runs)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from bidsapp_sandbox.exams import Patient, Series, write_session
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from bidsapp.errors import BadInputData
from bidsapp.pipeline.stage import StagedExam, distinct_patients, stage
from bidsapp.stores.local import LocalStore
from tests.conftest import need

LOCALIZER = (Series("localizer", "localizer"),)  # three small slices: the fastest real session
STAGED_NAME = re.compile(r"^study-\d+/\d{6}\.dcm$")
DATE_FIELDS = (
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "PatientBirthDate",
)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _session(dest: Path, **kwargs: object) -> list[Path]:
    kwargs.setdefault("series", LOCALIZER)
    return write_session(dest, **kwargs)  # type: ignore[arg-type]


def _run(
    tmp_path: Path, exam: str = "exam", *, one_person: bool = False
) -> tuple[StagedExam, Path]:
    work = tmp_path / "work"
    return stage(LocalStore(tmp_path / "src"), exam, work, one_person=one_person), work


def _staged(work: Path) -> list[Path]:
    return sorted(p for p in (work / "dicom").rglob("*") if p.is_file())


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and folder under root: md5 (files), mtime and mode."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = _md5(p.read_bytes()) if p.is_file() else "dir"
        snap[p.relative_to(root).as_posix()] = (digest, st.st_mtime_ns, st.st_mode)
    return snap


def _assert_only_numbered_files(work: Path) -> None:
    """Everything left in work is a numbered staged DICOM: no source name, no leftovers."""
    files = _files_under(work)
    assert files, "nothing staged"
    stray = [f for f in files if not f.startswith("dicom/") or not STAGED_NAME.match(f[6:])]
    assert stray == []


# ---------------------------------------------------------------------------------------------
# loose files


def test_loose_files_are_copied_under_numbered_names(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    patient = Patient(name="Souza^Maria", patient_id="PID777")
    sources = _session(
        exam, patient=patient, file_names="Maria Souza/deep er/{series:02d}/IM_{patient}_{instance}"
    )
    study_uid = pydicom.dcmread(sources[0]).StudyInstanceUID
    sources += _session(
        exam / "second",
        patient=patient,
        seed=1,
        study_uid=study_uid,
        file_names="{protocol}/{instance:04d}.dcm",
    )  # same study, other folders
    (exam / "top-level.dcm").write_bytes(sources[0].read_bytes())
    before = _snapshot(tmp_path / "src")

    result, work = _run(tmp_path)

    assert _snapshot(tmp_path / "src") == before  # bytes, mtimes and modes all unchanged
    _assert_only_numbered_files(work)
    staged = _staged(work)
    assert [p.parent.name for p in staged] == ["study-1"] * 7
    assert [p.name for p in staged] == [f"{n:06d}.dcm" for n in range(1, 8)]
    assert result.files == 7 and [s.files for s in result.studies] == [7]
    assert result.studies[0].folder == work / "dicom" / "study-1"
    assert result.skipped == [] and result.corrupt == [] and result.repaired_dates == 0
    # the copies are exact and no source name (or patient name) reaches the work dir
    source_files = [p for p in (tmp_path / "src").rglob("*") if p.is_file()]
    assert Counter(_md5(p.read_bytes()) for p in staged) == Counter(
        _md5(p.read_bytes()) for p in source_files
    )
    for path in (p.relative_to(work).as_posix() for p in work.rglob("*")):
        assert not re.search(r"Maria|Souza|IM_|deep|second|localizer|top-level", path), path
    # on one file system no byte is copied: each staged file is the source file's own inode
    # (a hard link) or, where the file system clones, a file sharing its blocks
    source_inodes = {p.stat().st_ino for p in source_files}
    linked = [p.stat().st_ino in source_inodes for p in staged]
    assert all(linked) or not any(p.stat().st_nlink > 1 for p in source_files)


# ---------------------------------------------------------------------------------------------
# archives

HOSTILE_NAMES = (
    "../../evil.dcm",
    "/etc/evil.dcm",
    "ctl\x07\x1b[2J\r\nevil\x7f.dcm",
    "evil" + "x" * 292 + ".dcm",  # 300 bytes
    "a/" * 40 + "evil.dcm",
)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]], links: tuple[tuple[str, str, bytes], ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return buf.getvalue()


LINKS = (
    ("evil-symlink.dcm", "/etc/passwd", tarfile.SYMTYPE),
    ("evil-hardlink.dcm", "/etc/passwd", tarfile.LNKTYPE),
    ("evil-dir-link", "../../../etc", tarfile.SYMTYPE),
)


def _archive(kind: str, members: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    if kind == "zip":
        return "export.zip", _zip(members)
    if kind == "tar.gz":
        return "export.tar.gz", _tar(members, LINKS)
    # an archive inside an archive, each with hostile names
    half = len(members) // 2
    inner = _tar(members[:half], LINKS)
    return "export.zip", _zip([("../../evil-inner.tar.gz", inner), *members[half:]])


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar.gz-in-zip"])
def test_archives_unpacked_without_trusting_member_names(tmp_path: Path, kind: str) -> None:
    dicoms = [p.read_bytes() for p in _session(tmp_path / "gen", seed=3)]
    dicoms += [p.read_bytes() for p in _session(tmp_path / "gen2", seed=4)[:2]]
    members = list(zip(HOSTILE_NAMES, dicoms, strict=True))
    name, blob = _archive(kind, members)
    exam = tmp_path / "src" / "exam"
    (exam / "sub").mkdir(parents=True)
    (exam / "sub" / name).write_bytes(blob)
    outside_before = _files_under(tmp_path.parent)

    result, work = _run(tmp_path)

    staged = _staged(work)
    assert Counter(_md5(p.read_bytes()) for p in staged) == Counter(_md5(d) for d in dicoms)
    assert result.files == len(dicoms) and result.corrupt == []
    _assert_only_numbered_files(work)
    # nothing written outside work, and no member name used anywhere
    assert not Path("/etc/evil.dcm").exists()
    outside_after = _files_under(tmp_path.parent)
    assert [
        f for f in outside_after if "evil" in f and not f.startswith(f"{tmp_path.name}/work/")
    ] == []
    new = set(outside_after) - set(outside_before)
    assert all(f.startswith(f"{tmp_path.name}/work/") for f in new), sorted(new)
    # links inside the tar are never followed: /etc/passwd is not staged
    passwd = Path("/etc/passwd")
    if passwd.is_file():
        assert _md5(passwd.read_bytes()) not in {_md5(p.read_bytes()) for p in staged}
    # the source names are reported (in memory) for the non-DICOM members only
    assert all("!" in rel for rel, _ in result.skipped)


def test_tar_symlink_to_a_member_is_not_staged_twice(tmp_path: Path) -> None:
    dicoms = [p.read_bytes() for p in _session(tmp_path / "gen")]
    members = [(f"{n}.dcm", d) for n, d in enumerate(dicoms)]
    blob = _tar(
        members, (("copy.dcm", "0.dcm", tarfile.SYMTYPE), ("hard.dcm", "1.dcm", tarfile.LNKTYPE))
    )
    (tmp_path / "src" / "exam").mkdir(parents=True)
    (tmp_path / "src" / "exam" / "a.tgz").write_bytes(blob)

    result, work = _run(tmp_path)

    assert result.files == len(dicoms) == len(_staged(work))


# ---------------------------------------------------------------------------------------------
# non-DICOM and corrupt files


def _dicomdir(path: Path, *, with_media_class: bool) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        MediaStorageDirectoryStorage if with_media_class else "1.2.840.10008.5.1.4.1.1.4"
    )
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "EXPORT"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    record = Dataset()
    record.DirectoryRecordType = "PATIENT"
    record.PatientName = "Souza^Maria"
    record.PatientID = "PID777"
    ds.DirectoryRecordSequence = [record]
    if not with_media_class:  # an index that also carries image-like UIDs
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.StudyInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)


NOT_DICOM = {
    "notes.txt": b"exported by the scanner console\nno images here\n",
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 200 + b"\x08\x0b\x00\x00\x00\x00\x00\x00" * 8,
    "report.pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n",
    "empty.dcm": b"",
}


def test_non_dicom_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    good = _session(exam / "images")
    for name, data in NOT_DICOM.items():
        (exam / "misc").mkdir(parents=True, exist_ok=True)
        (exam / "misc" / name).write_bytes(data)
    _dicomdir(exam / "DICOMDIR", with_media_class=True)
    _dicomdir(exam / "misc" / "INDEX", with_media_class=False)

    result, work = _run(tmp_path)

    reasons = dict(result.skipped)
    assert sorted(reasons) == sorted(["DICOMDIR", "misc/INDEX", *(f"misc/{n}" for n in NOT_DICOM)])
    for name in NOT_DICOM:
        assert reasons[f"misc/{name}"] == "not DICOM"
    assert reasons["DICOMDIR"].startswith("DICOMDIR")
    assert reasons["misc/INDEX"].startswith("DICOMDIR")
    assert result.corrupt == []
    staged = _staged(work)
    assert Counter(_md5(p.read_bytes()) for p in staged) == Counter(
        _md5(p.read_bytes()) for p in good
    )
    _assert_only_numbered_files(work)


def _cuts(data: bytes) -> dict[str, int]:
    pixel_tag = data.rfind(b"\xe0\x7f\x10\x00")
    rows_tag = data.find(b"\x28\x00\x10\x00US")
    assert 132 < rows_tag < pixel_tag
    assert set(CUT_NAMES) == {
        "inside the file meta group length",
        "header cut before Rows",
        "header cut right before the pixel data",
        "inside the pixel data length field",
        "half the pixel data",
        "last 100 bytes missing",
        "last byte missing",
    }
    pixel_value = pixel_tag + 12  # explicit VR OW: tag, VR, 2 reserved bytes, 4-byte length
    return {
        "inside the file meta group length": 142,
        "header cut before Rows": rows_tag,
        "header cut right before the pixel data": pixel_tag,
        "inside the pixel data length field": pixel_tag + 9,
        "half the pixel data": pixel_value + (len(data) - pixel_value) // 2,
        "last 100 bytes missing": len(data) - 100,
        "last byte missing": len(data) - 1,
    }


CUT_NAMES = [
    "inside the file meta group length",
    "header cut before Rows",
    "header cut right before the pixel data",
    "inside the pixel data length field",
    "half the pixel data",
    "last 100 bytes missing",
    "last byte missing",
]


@pytest.mark.parametrize("cut", CUT_NAMES)
def test_truncated_copy_is_corrupt(tmp_path: Path, cut: str) -> None:
    exam = tmp_path / "src" / "exam"
    good = _session(exam)
    data = good[0].read_bytes()
    (exam / "broken.dcm").write_bytes(data[: _cuts(data)[cut]])

    result, work = _run(tmp_path)

    assert [rel for rel, _ in result.corrupt] == ["broken.dcm"]
    assert result.corrupt[0][1].startswith("corrupt")
    assert result.files == len(good) == len(_staged(work))


def test_dicm_preamble_with_garbage_is_corrupt(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    good = _session(exam)
    garbage = bytes((n * 7919 + 13) % 251 for n in range(3000))
    (exam / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + garbage)
    (exam / "short.dcm").write_bytes(b"\x00" * 128 + b"DICM")

    result, work = _run(tmp_path)

    assert sorted(rel for rel, _ in result.corrupt) == ["garbage.dcm", "short.dcm"]
    assert all(reason.startswith("corrupt") for _, reason in result.corrupt)
    assert result.skipped == []
    assert len(_staged(work)) == len(good)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("empty", "empty"),
        ("only empty subfolders", "empty"),
        ("only corrupt", "only corrupt"),
        ("only non-DICOM", "no DICOM"),
    ],
)
def test_exam_without_usable_dicom_is_bad_input(tmp_path: Path, layout: str, match: str) -> None:
    exam = tmp_path / "src" / "exam"
    exam.mkdir(parents=True)
    if layout == "only empty subfolders":
        (exam / "a" / "b").mkdir(parents=True)
    elif layout == "only corrupt":
        data = _session(tmp_path / "gen")[0].read_bytes()
        (exam / "cut.dcm").write_bytes(data[: len(data) // 2])
        (exam / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x13\x37" * 500)
    elif layout == "only non-DICOM":
        (exam / "notes.txt").write_text("hello\n")

    with pytest.raises(BadInputData, match=match) as caught:
        _run(tmp_path)
    assert caught.value.exit_code == 65


# ---------------------------------------------------------------------------------------------
# dates heudiconv cannot parse


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("StudyDate", "***"),
        ("StudyDate", "2024-13-45"),
        ("SeriesDate", "2024-13-45"),
        ("AcquisitionDate", "***"),
        ("AcquisitionDate", "20240230"),
        ("StudyTime", "99:99"),
        ("StudyTime", "***"),
        ("PatientBirthDate", "***"),
        ("PatientBirthDate", "1970-01-01"),
        ("AcquisitionDateTime", "***"),
        ("InstanceCreationDate", "***"),  # (0008,0012)
    ],
)
def test_unparseable_dates_are_blanked(tmp_path: Path, field: str, value: str) -> None:
    exam = tmp_path / "src" / "exam"
    paths = _session(exam)
    bad = paths[0::2]  # two of the three files
    with config.disable_value_validation():
        for p in bad:
            ds = pydicom.dcmread(p)
            setattr(ds, field, value)
            ds.save_as(p)
    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in paths}
    before = _snapshot(tmp_path / "src")

    result, work = _run(tmp_path)

    assert result.repaired_dates == len(bad)
    # staged files can be links to the user's files: a repair replaces the staged file instead
    # of writing through it, so the source keeps its bytes
    assert _snapshot(tmp_path / "src") == before
    staged = [pydicom.dcmread(p) for p in _staged(work)]
    assert len(staged) == len(paths)
    blanked = 0
    for ds in staged:
        original = originals[ds.SOPInstanceUID]
        if original.get(field) == value:
            assert ds[field].value in ("", None)
            blanked += 1
        for other in DATE_FIELDS:
            if other != field:
                assert ds.get(other) == original.get(other), other
        assert ds.PixelData == original.PixelData
    assert blanked == len(bad)


def test_unparseable_dates_are_blanked_in_implicit_vr_files(tmp_path: Path) -> None:
    """Implicit VR Little Endian (older archives, PACS exports): the elements as read carry no
    VR, so the date check takes the dictionary's."""
    paths = _session(tmp_path / "src" / "exam")
    with config.disable_value_validation():
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.StudyDate = "***"
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            ds.save_as(p, implicit_vr=True, little_endian=True)

    result, work = _run(tmp_path)

    assert result.repaired_dates == len(paths)
    assert all(pydicom.dcmread(p).StudyDate in ("", None) for p in _staged(work))


def test_valid_dates_are_untouched(tmp_path: Path) -> None:
    paths = _session(tmp_path / "src" / "exam", study_date="20231231", study_time="235959.123")

    result, work = _run(tmp_path)

    assert result.repaired_dates == 0
    assert Counter(_md5(p.read_bytes()) for p in _staged(work)) == Counter(
        _md5(p.read_bytes()) for p in paths
    )


# ---------------------------------------------------------------------------------------------
# several studies, headers


@pytest.mark.parametrize(
    "studies",
    [
        # (folder, study date, study time) in the order they are written
        [("a-later", "20240301", "080000"), ("z-earlier", "20230301", "080000")],
        [("b", "20240301", "170000"), ("c", "20240301", "073000")],
        [("1", "20240102", "101500"), ("2", "20240101", "101500"), ("3", "20220615", "120000")],
    ],
)
def test_studies_numbered_in_acquisition_order(
    tmp_path: Path, studies: list[tuple[str, str, str]]
) -> None:
    exam = tmp_path / "src" / "exam"
    uids = {}
    for seed, (folder, date, time) in enumerate(studies, start=1):
        paths = _session(exam / folder, seed=seed, study_date=date, study_time=time)
        uids[folder] = pydicom.dcmread(paths[0]).StudyInstanceUID

    result, work = _run(tmp_path)

    expected = [folder for folder, _, _ in sorted(studies, key=lambda s: (s[1], s[2]))]
    assert [s.uid for s in result.studies] == [uids[f] for f in expected]
    for k, study in enumerate(result.studies, start=1):
        assert study.folder == work / "dicom" / f"study-{k}"
        files = sorted(study.folder.iterdir())
        assert len(files) == study.files == 3
        assert {pydicom.dcmread(p).StudyInstanceUID for p in files} == {study.uid}
    assert sorted(p.name for p in (work / "dicom").iterdir()) == [
        f"study-{k}" for k in range(1, len(studies) + 1)
    ]


def test_headers_hold_distinct_values(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    maria = Patient(
        name="Souza^Maria", patient_id="PID777", birth_date="19800101", accession="ACC1"
    )
    gen = _session(tmp_path / "gen", patient=maria)
    for n in range(100):
        target = exam / f"d{n % 7}" / f"{n:03d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gen[n % len(gen)], target)

    result, _ = _run(tmp_path)

    assert result.files == 100
    assert len(result.headers) == 1
    header = {k: str(v) for k, v in result.headers[0].items() if v is not None}
    assert header["PatientName"] == "Souza^Maria"
    assert header["PatientID"] == "PID777"
    assert header["PatientBirthDate"] == "19800101"
    assert header["AccessionNumber"] == "ACC1"

    # a second identity (another ID for the same name) is a second entry
    _session(exam / "other", patient=Patient(name="Souza^Maria", patient_id="X-2"), seed=9)
    shutil.rmtree(tmp_path / "work")
    result, _ = _run(tmp_path, one_person=True)  # two IDs: the map must say it is one person
    assert result.files == 103
    assert sorted(str(h["PatientID"]) for h in result.headers) == ["PID777", "X-2"]


# ---------------------------------------------------------------------------------------------
# issue 16: links, special files, odd names, several patients


def test_w1_links_and_special_files_are_listed_not_followed(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    mine = _session(exam / "series", patient=Patient(name="Souza^Maria", patient_id="P1"))
    theirs = _session(
        tmp_path / "src" / "other", patient=Patient(name="Lima^Rui", patient_id="P2"), seed=2
    )
    (exam / "to-another-patient.dcm").symlink_to(theirs[0])
    (exam / "to-a-system-file").symlink_to("/etc/passwd")
    (exam / "to-a-folder").symlink_to(tmp_path / "src" / "other", target_is_directory=True)
    (exam / "inside.dcm").symlink_to(mine[0])
    (exam / "dangling.dcm").symlink_to(tmp_path / "nowhere")
    os.mkfifo(exam / "pipe")

    result, work = _run(tmp_path)

    assert result.files == len(mine)
    assert {str(h["PatientID"]) for h in result.headers} == {"P1"}
    assert sorted(result.skipped) == [
        ("dangling.dcm", "broken symbolic link"),
        ("inside.dcm", "symbolic link (its target is staged itself)"),
        ("pipe", "not a regular file (FIFO, socket or device)"),
        ("to-a-folder", "symbolic link to outside the exam folder"),
        ("to-a-system-file", "symbolic link to outside the exam folder"),
        ("to-another-patient.dcm", "symbolic link to outside the exam folder"),
    ]
    _assert_only_numbered_files(work)


def test_t2_a_file_name_that_is_not_utf8_is_staged_and_shown_escaped(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    dicoms = _session(exam)
    os.rename(dicoms[0], bytes(exam) + b"/IM_Jo\xe3o.dcm")
    with open(bytes(exam) + b"/notas_\xe9.txt", "wb") as fh:
        fh.write(b"not DICOM")

    result, _ = _run(tmp_path)

    assert result.files == len(dicoms)
    assert result.skipped == [("notas_\\xe9.txt", "not DICOM")]
    assert all(name.encode("utf-8") for name, _ in result.skipped)


@pytest.mark.parametrize(
    ("patients", "count"),
    [
        ([("P1", "Souza^Maria"), ("P2", "Lima^Rui")], 2),
        ([("P1", "Souza^Maria"), ("P1", "SOUZA^MARIA")], 1),
        ([("P1", "Souza^Maria"), ("P1", "Souza^Mariana")], 1),  # the ID decides
        ([("", "Souza^Maria"), ("", "Lima^Rui")], 2),  # no IDs: names decide
        ([("", "Souza^Maria"), ("", "souza maria")], 1),
        ([("P1", "Souza^Maria"), ("", "Souza^Maria")], 1),
        ([("P1", "Souza^Maria"), ("", "Lima^Rui")], 2),
        ([("", ""), ("", "")], 1),
    ],
)
def test_w1_distinct_patients(patients: list[tuple[str, str]], count: int) -> None:
    headers = [{"PatientID": pid, "PatientName": name} for pid, name in patients]
    assert distinct_patients(headers) == count


def test_w1_studies_of_two_patients_fail_unless_the_map_says_one_person(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    _session(exam / "a", patient=Patient(name="Souza^Maria", patient_id="P1"), seed=1)
    _session(exam / "b", patient=Patient(name="Lima^Rui", patient_id="P2"), seed=2)

    with pytest.raises(BadInputData, match="2 different patients") as caught:
        _run(tmp_path)
    assert caught.value.exit_code == 65
    assert "P1" not in caught.value.one_line() and "Souza" not in caught.value.one_line()

    shutil.rmtree(tmp_path / "work")
    result, _ = _run(tmp_path, one_person=True)
    assert len(result.studies) == 2


def _zeros_zip(path: Path, member_size: int, extra: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.bin", bytes(member_size))
        zf.write(extra, "images/0001.dcm")


def test_u4_archive_members_that_expand_too_far_are_refused_and_listed(tmp_path: Path) -> None:
    exam = tmp_path / "src" / "exam"
    dicoms = _session(exam / "loose")
    _zeros_zip(exam / "upload.zip", 16 << 20, dicoms[0])  # 16 MB of zeros: about 1000:1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("zeros.raw")
        info.size = 16 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    (exam / "more.tar.gz").write_bytes(buf.getvalue())

    result, work = _run(tmp_path)

    assert result.files == len(dicoms) + 1  # the DICOM inside the zip is staged
    refused = {name: reason for name, reason in result.skipped if reason.startswith("refused")}
    assert set(refused) == {"upload.zip!bomb.bin", "more.tar.gz!zeros.raw"}
    assert all("200:1" in reason for reason in refused.values())
    _assert_only_numbered_files(work)


STAGE_IN_SMALL_WORK_DIR = """
import json, sys
from pathlib import Path
from bidsapp.pipeline.stage import stage
from bidsapp.stores.local import LocalStore
result = stage(LocalStore(Path(sys.argv[1])), "exam", Path(sys.argv[2]) / "job")
print(json.dumps(result.skipped))
"""


def test_u4_archive_members_that_would_fill_the_work_dir_are_refused(tmp_path: Path) -> None:
    need(
        os.geteuid() == 0 and shutil.which("unshare") is not None,
        "a small work disk needs root and unshare(1) (a tmpfs in a mount namespace)",
    )
    exam = tmp_path / "src" / "exam"
    dicoms = _session(exam / "loose")
    rng = np.random.default_rng(1)
    data = rng.integers(0, 2, 4 << 20, dtype=np.uint8).tobytes()  # 4 MB that packs ~4:1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("big.raw")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    (exam / "big.tar.gz").write_bytes(buf.getvalue())
    work = tmp_path / "work"
    work.mkdir()

    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$2" -c "$3" "$4" "$1"',
            "sh",
            str(work),
            sys.executable,
            STAGE_IN_SMALL_WORK_DIR,
            str(tmp_path / "src"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    skipped = dict(json.loads(proc.stdout))
    assert "free space" in skipped["big.tar.gz!big.raw"]
    assert "loose/01/0001.dcm" not in skipped and len(dicoms) == 3
