"""Bad input: the documented exit code, one console ERROR line, no traceback, nothing published.

Corrupt files mixed with good ones and `***` dates are not fatal: the good data is published.
Nothing a job prints names the patient (exam folder name, header values).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import pydicom
import pytest
from bidsapp_sandbox.exams import Patient, write_session
from conftest import T1_ONLY, MakeExam, RunCli, error_lines, need, published_files
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset

from bidsapp.pipeline.publish import FAULT_ENV

FOLDER = "Zyxwvut Qqqq"  # an exam folder named after the patient, as exports often are
PATIENT = Patient(
    name="Zyxwvut^Qqqq", patient_id="QX7731Z", birth_date="19620817", accession="ACC99172"
)
PHI = ("Zyxwvut", "Qqqq", "QX7731Z", "19620817", "1962-08-17", "ACC99172")
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
T1W = "sub-01/anat/sub-01_T1w.nii.gz"
MANIFEST = "derivatives/bidsapp/sub-01/.log/manifest.json"


def output_text(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_nothing_published(output: Path) -> None:
    if not output.exists():
        return
    assert not list(output.glob("sub-*"))
    assert not list(output.glob("derivatives/bidsapp/sub-*"))
    assert published_files(output) == []


def assert_fails(
    result: subprocess.CompletedProcess[str], code: int, output: Path, *words: str
) -> None:
    """The exit code, exactly one ERROR line naming the problem, no traceback, nothing published."""
    text = output_text(result)
    assert result.returncode == code, text
    assert "Traceback" not in text
    errors = error_lines(result.stderr)
    assert len(errors) == 1, text
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    assert_nothing_published(output)


def assert_published_t1w(result: subprocess.CompletedProcess[str], output: Path) -> None:
    text = output_text(result)
    assert result.returncode == 0, text
    assert "Traceback" not in text
    assert error_lines(result.stderr) == [], text
    assert (output / T1W).is_file(), published_files(output)


def assert_no_phi(result: subprocess.CompletedProcess[str]) -> None:
    text = output_text(result).lower()
    for value in (FOLDER, *PHI):
        assert value.lower() not in text, f"{value!r} printed"


def write_map(path: Path, source: str, participant: str = "01") -> Path:
    path.write_text(f"source\tparticipant\tsession\n{source}\t{participant}\t\n", encoding="utf-8")
    return path


def dicomdir_like(path: Path) -> None:
    """A media index (DICOMDIR) with no image in it."""
    ds = Dataset()
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = []
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


# -- 1, 2, 9: selection, locations, command line ------------------------------------------------


def test_unknown_label(bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path) -> None:
    make_exam("01")
    out = tmp_path / "out"
    result = bidsapp(tmp_path / "source", out, "participant", "--participant-label", "02")
    assert_fails(result, 18, out, "sub-02")


def test_missing_source(bidsapp: RunCli, tmp_path: Path) -> None:
    source, out = tmp_path / "no-such-source", tmp_path / "out"
    result = bidsapp(source, out, "participant")
    assert_fails(result, 66, out, str(source))


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["foo"], 17, ["analysis level", "foo"]),
        (["participant", "--bogus"], 64, ["--bogus"]),
    ],
    ids=["unknown-level", "unknown-option"],
)
def test_command_line(
    bidsapp: RunCli,
    make_exam: MakeExam,
    tmp_path: Path,
    args: list[str],
    code: int,
    words: list[str],
) -> None:
    make_exam("01")
    out = tmp_path / "out"
    assert_fails(bidsapp(tmp_path / "source", out, *args), code, out, *words)


# -- 3, 10: no DICOM at all ---------------------------------------------------------------------


def test_empty_exam_folder(bidsapp: RunCli, tmp_path: Path) -> None:
    (tmp_path / "source" / "01").mkdir(parents=True)
    out = tmp_path / "out"
    assert_fails(bidsapp(tmp_path / "source", out, "participant"), 65, out, "empty")


def test_exam_without_dicom(bidsapp: RunCli, tmp_path: Path) -> None:
    exam = tmp_path / "source" / FOLDER
    exam.mkdir(parents=True)
    (exam / "notes.txt").write_text("exported 2024-01-02\n")
    (exam / "report.pdf").write_bytes(
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
    )
    (exam / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(range(256)) * 4)
    dicomdir_like(exam / "DICOMDIR")
    out = tmp_path / "out"
    subject_map = write_map(tmp_path / "map.tsv", FOLDER)
    result = bidsapp(tmp_path / "source", out, "participant", "--subject-map", subject_map)
    assert_fails(result, 65, out, "no DICOM")
    assert_no_phi(result)


# -- 4, 10: corrupt files beside good ones ------------------------------------------------------


@pytest.mark.slow
def test_corrupt_files_are_skipped(bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path) -> None:
    exam = make_exam(FOLDER, patient=PATIENT)
    good = sorted(exam.rglob("*.dcm"))[0].read_bytes()
    garbage = bytes((i * 97 + 13) % 256 for i in range(4096))
    (exam / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + garbage)
    (exam / "half.dcm").write_bytes(good[: len(good) // 2])  # a copy: all 32 slices stay
    (exam / "readme.txt").write_text("scanner export\n")
    out = tmp_path / "out"
    subject_map = write_map(tmp_path / "map.tsv", FOLDER)
    result = bidsapp(tmp_path / "source", out, "participant", "--subject-map", subject_map)
    assert_published_t1w(result, out)
    assert_no_phi(result)
    assert nib.load(out / T1W).shape == (48, 48, 32)
    gate = json.loads((out / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    reasons = {item["file"]: item["reason"] for item in gate["skipped_files"]}
    assert sorted(reasons) == ["garbage.dcm", "half.dcm", "readme.txt"], reasons
    assert "corrupt" in reasons["garbage.dcm"]
    assert "corrupt" in reasons["half.dcm"]
    assert "not DICOM" in reasons["readme.txt"]


@pytest.mark.slow
def test_corrupt_header_element_is_skipped(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path
) -> None:
    """A copy whose SeriesTime element has a garbled VR parses lazily, then fails on access."""
    exam = make_exam("01")
    good = sorted(exam.rglob("*.dcm"))[0].read_bytes()
    series_time = b"\x08\x00\x31\x00TM"  # (0008,0031) explicit VR little endian
    assert series_time in good
    (exam / "garbled.dcm").write_bytes(good.replace(series_time, series_time[:5] + b"\x89", 1))
    out = tmp_path / "out"
    assert_published_t1w(bidsapp(tmp_path / "source", out, "participant"), out)
    gate = json.loads((out / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    reasons = {item["file"]: item["reason"] for item in gate["skipped_files"]}
    assert "corrupt" in reasons.get("garbled.dcm", ""), reasons


# -- 5: OUTPUT not writable ---------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-readable temp dir (tmp_path is inside a 0700 folder that nobody cannot read)."""
    base = Path(tempfile.mkdtemp(prefix="bidsapp-bad-input-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def unprivileged_prefix(cwd: Path) -> tuple[str, ...]:
    """Root ignores file modes: run as nobody (as anyone else, run as is)."""
    if os.geteuid() != 0:
        return ()
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import bidsapp.cli"],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    need(
        probe.returncode == 0,
        f"uid 65534 cannot run {sys.executable} -c 'import bidsapp.cli' (the venv and the repo "
        f"must be readable by others): {probe.stderr.strip().splitlines()[-1:]}",
    )
    return NOBODY


@pytest.mark.parametrize("variant", ["existing-read-only", "missing-parent-read-only"])
def test_output_not_writable(bidsapp: RunCli, open_dir: Path, variant: str) -> None:
    prefix = unprivileged_prefix(open_dir)
    source = open_dir / "source"
    write_session(source / "01", series=T1_ONLY, seed=1)
    for path in [source, *source.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    work = open_dir / "work"
    work.mkdir()
    work.chmod(0o777)
    readonly = open_dir / "readonly"
    readonly.mkdir()
    out = readonly if variant == "existing-read-only" else readonly / "out"
    readonly.chmod(0o555)
    result = bidsapp(source, out, "participant", "--work-dir", work, work=False, prefix=prefix)
    assert_fails(result, 73, out, "cannot", str(out))
    assert not out.exists() or list(out.iterdir()) == []


# -- 6, 7: heuristics, labels, subject map ------------------------------------------------------


@pytest.mark.parametrize(
    ("heuristic", "text", "words"),
    [
        ("no_such_heuristic", None, ["no heuristic named", "no_such_heuristic"]),
        ("missing.py", None, ["does not exist", "missing.py"]),
        ("broken.py", "def infotodict(seqinfo:\n    return {}\n", ["does not load", "SyntaxError"]),
        ("no_infotodict.py", "def create_key(template):\n    return template\n", ["infotodict"]),
    ],
    ids=["unknown-name", "missing-path", "syntax-error", "no-infotodict"],
)
def test_bad_heuristic(
    bidsapp: RunCli,
    make_exam: MakeExam,
    tmp_path: Path,
    heuristic: str,
    text: str | None,
    words: list[str],
) -> None:
    make_exam("01")
    spec = str(tmp_path / heuristic) if heuristic.endswith(".py") else heuristic
    if text is not None:
        Path(spec).write_text(text)
    out = tmp_path / "out"
    result = bidsapp(tmp_path / "source", out, "participant", "--heuristic", spec)
    assert_fails(result, 64, out, *words)


@pytest.mark.parametrize(
    ("label", "in_map"),
    [("a_b", False), ("../x", False), ("sub-01!", True)],
    ids=["underscore", "dotdot", "map-bang"],
)
def test_invalid_label(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path, label: str, in_map: bool
) -> None:
    make_exam("01")
    out = tmp_path / "out"
    if in_map:
        args = ["--subject-map", str(write_map(tmp_path / "map.tsv", "01", label))]
    else:
        args = ["--participant-label", label]
    result = bidsapp(tmp_path / "source", out, "participant", *args)
    assert_fails(result, 64, out, "invalid participant label", label)


# -- 8: anonymised `***` dates ------------------------------------------------------------------


@pytest.mark.slow
def test_star_dates_convert(bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path) -> None:
    exam = make_exam("01", patient=Patient(birth_date="***"), study_date="***")
    with config.disable_value_validation():
        ds = pydicom.dcmread(sorted(exam.rglob("*.dcm"))[0], stop_before_pixels=True)
    assert (ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate, ds.PatientBirthDate) == ("***",) * 4
    out = tmp_path / "out"
    assert_published_t1w(bidsapp(tmp_path / "source", out, "participant"), out)


# -- issue 16 ------------------------------------------------------------------------------------


def test_p4_every_component_of_a_map_source_is_an_identifier(
    bidsapp: RunCli, tmp_path: Path
) -> None:
    """`Zyxwvut Qqqq/DICOM` that is not a folder: the message names neither part of the name."""
    (tmp_path / "source" / FOLDER).mkdir(parents=True)
    (tmp_path / "source" / FOLDER / "DICOM").write_text("a file, not the exam folder\n")
    subject_map = write_map(tmp_path / "map.tsv", f"{FOLDER}/DICOM", "09")
    out = tmp_path / "out"

    result = bidsapp(tmp_path / "source", out, "participant", "--subject-map", subject_map)

    assert_fails(result, 66, out, "not a folder")
    assert_no_phi(result)
    failed_log = out / ".bidsapp" / "failed" / "sub-09" / "log.jsonl"
    assert failed_log.is_file()
    text = failed_log.read_text(encoding="utf-8").lower()
    assert "zyxwvut" not in text and "qqqq" not in text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--deface-cmd", "pydeface '{in} --outfile {out}"], ["--deface-cmd", "quotation"]),
        (["--deface-cmd", "pydeface {in}"], ["--deface-cmd", "{out}"]),
        (["--log-level", "bogus"], ["--log-level", "bogus"]),
    ],
    ids=["deface-quote", "deface-placeholder", "log-level"],
)
def test_t2_bad_options_are_refused_before_any_work(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path, args: list[str], words: list[str]
) -> None:
    make_exam("01")
    out = tmp_path / "out"
    result = bidsapp(tmp_path / "source", out, "participant", *args)
    assert_fails(result, 64, out, *words)
    assert "started" not in result.stderr  # refused at the start, not after staging


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BIDSAPP_DRIVE_RPS", "abc"), ("BIDSAPP_DRIVE_RPS", "-1"), ("BIDSAPP_LOG_LEVEL", "bogus")],
)
def test_t2_bad_environment_variables_are_usage_errors(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path, variable: str, value: str
) -> None:
    make_exam("01")
    out = tmp_path / "out"
    result = bidsapp(tmp_path / "source", out, "participant", env={variable: value})
    assert_fails(result, 64, out, variable)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("o.toml", b'[[series]]\nnumber = 2\nskip = "caf\xe9"\n', ["not UTF-8"]),
        ("o.json", b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
        ("o.toml", b"x = " + b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
    ],
    ids=["latin-1", "deep-json", "deep-toml"],
)
def test_t2_unreadable_overrides_are_usage_errors(
    bidsapp: RunCli,
    make_exam: MakeExam,
    tmp_path: Path,
    name: str,
    content: bytes,
    words: list[str],
) -> None:
    make_exam("01")
    (tmp_path / name).write_bytes(content)
    out = tmp_path / "out"
    result = bidsapp(tmp_path / "source", out, "participant", "--overrides", tmp_path / name)
    assert_fails(result, 64, out, "overrides", *words)
    assert "started" not in result.stderr


def test_t2_odd_files_in_an_exam_are_listed_and_the_rest_publishes(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path
) -> None:
    exam = make_exam("01", series=T1_ONLY)
    with open(bytes(exam) + b"/notas_Jo\xe3o.txt", "wb") as fh:  # Latin-1 name
        fh.write(b"not DICOM")
    (exam / "dangling.dcm").symlink_to(tmp_path / "nowhere")
    os.mkfifo(exam / "pipe")
    out = tmp_path / "out"

    result = bidsapp(tmp_path / "source", out, "participant")

    assert_published_t1w(result, out)
    gate = json.loads((out / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    assert sorted(gate["skipped_files"], key=lambda s: s["file"]) == [
        {"file": "dangling.dcm", "reason": "broken symbolic link"},
        {"file": "notas_Jo\\xe3o.txt", "reason": "not DICOM"},
        {"file": "pipe", "reason": "not a regular file (FIFO, socket or device)"},
    ]


def test_w1_studies_of_two_patients_in_one_exam_fail_with_65(
    bidsapp: RunCli, tmp_path: Path
) -> None:
    exam = tmp_path / "source" / "01"
    write_session(exam / "a", patient=PATIENT, series=T1_ONLY, seed=1)
    write_session(exam / "b", patient=Patient(name="Qwerty^Ytrewq", patient_id="QW1"), seed=2)
    out = tmp_path / "out"

    result = bidsapp(tmp_path / "source", out, "participant")

    assert_fails(result, 65, out, "2 different patients", "one_person")
    assert_no_phi(result)
    assert "qwerty" not in output_text(result).lower()


def test_t1_a_full_work_disk_is_74_in_one_line_and_the_work_dir_is_removed(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path, work_dir: Path
) -> None:
    """A 4 KB work disk: staging fails, and so does the job's log (the first record, which
    names OUTPUT three times, is longer than the disk)."""
    need(
        os.geteuid() == 0 and shutil.which("unshare") is not None,
        "a small work disk needs root and unshare(1) (a tmpfs in a mount namespace)",
    )
    make_exam("01")
    deep = tmp_path.joinpath(*["o" * 200] * 8)
    deep.mkdir(parents=True)
    out = deep / "out"
    work_dir.mkdir()
    small_disk = (
        "unshare",
        "--mount",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=4k tmpfs "{work_dir}" || exit 99; "$@"; code=$?; '
        f'ls -A "{work_dir}" > "{tmp_path}/left.txt"; exit $code',
        "sh",
    )

    result = bidsapp(tmp_path / "source", out, "participant", prefix=small_disk)

    assert_fails(result, 74, out, "No space left")
    assert "Logging error" not in result.stderr
    assert (tmp_path / "left.txt").read_text() == "", "the work dir was removed"


def test_u2_a_full_output_disk_is_74_naming_output_and_leaves_no_partial_upload(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path
) -> None:
    need(
        os.geteuid() == 0 and shutil.which("unshare") is not None,
        "a small OUTPUT disk needs root and unshare(1) (a tmpfs in a mount namespace)",
    )
    make_exam("01")
    out = tmp_path / "out"
    out.mkdir()
    listing = tmp_path / "left.txt"
    small_disk = (
        "unshare",
        "--mount",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=32k tmpfs "{out}" || exit 99; "$@"; code=$?; '
        f'(cd "{out}" && find . -type f | sort && cat .bidsapp/status/sub-01.json) > "{listing}"; '
        "exit $code",
        "sh",
    )

    result = bidsapp(tmp_path / "source", out, "participant", prefix=small_disk)

    assert result.returncode == 74, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "OUTPUT's disk" in errors[0] and "work dir" not in errors[0]
    left = listing.read_text()
    files = [line for line in left.splitlines() if line.startswith("./")]
    assert not [f for f in files if f.startswith("./.bidsapp/incoming/")], files
    assert not [f for f in files if ".tmp" in f], files
    assert not [f for f in files if f.startswith("./sub-")], files
    assert '"state": "failed"' in left and '"exit_code": 74' in left, "the status was written"


def test_u2_group_finishes_a_publish_that_stopped_before_its_manifest(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path
) -> None:
    make_exam("01")
    out = tmp_path / "out"
    killed = bidsapp(tmp_path / "source", out, "participant", env={FAULT_ENV: "moved"})
    assert killed.returncode == -signal.SIGKILL
    assert (out / T1W).is_file() and not (out / MANIFEST).exists()

    group = bidsapp(tmp_path / "source", out, "group")

    assert group.returncode == 0, group.stderr
    assert "1 published subjects" in group.stderr
    assert (out / MANIFEST).is_file()
    assert not any((out / ".bidsapp/incoming").iterdir())
