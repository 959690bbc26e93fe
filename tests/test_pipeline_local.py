"""The real pipeline (heudiconv, dcm2niix, validator) on synthetic exams, local → local."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from bidsapp_sandbox.exams import Patient, Series

from bidsapp.pipeline.gate import validate
from bidsapp.pipeline.publish import FAULT_POINTS
from tests.conftest import MakeExam, RunCli, assert_loads_in_pybids, need, published_files

pytestmark = pytest.mark.slow

T1 = ["sub-01/anat/sub-01_T1w.json", "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/sub-01_scans.tsv"]
DERIV = ["gate.json", "log.jsonl", "manifest.json"]


def manifest(output: Path, target: str = "sub-01") -> dict:
    return json.loads((output / f"derivatives/bidsapp/{target}/.log/manifest.json").read_text())


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file (bookkeeping aside) with its size and mtime: proves a tree was not touched."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".bidsapp" not in p.relative_to(folder).parts
    }


def test_participant_group_rerun_and_force(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, work_dir: Path
) -> None:
    make_exam("01")
    source, output = tmp_path / "source", tmp_path / "out"
    first = bidsapp(source, output, "participant", "--participant-label", "01")
    assert first.returncode == 0, first.stderr
    assert [f for f in published_files(output) if f.startswith("sub-")] == T1
    assert list(work_dir.iterdir()) == [], "the work dir is removed after success"
    assert (work_dir.stat().st_mode & 0o777) == 0o700
    m1 = manifest(output)
    assert {f["path"] for f in m1["files"]} == set(T1) | {
        f"derivatives/bidsapp/sub-01/.log/{name}"
        for name in ("gate.json", "log.jsonl", "report.html", "figures/sub-01_T1w.png")
    }
    assert m1["versions"]["heudiconv"] and m1["heuristic"] == "auto"
    before = snapshot(output)

    again = bidsapp(source, output, "participant", "--participant-label", "sub-01")
    assert again.returncode == 0
    assert "nothing to do" in again.stderr
    assert snapshot(output) == before, "a rerun with the same inputs publishes nothing"

    forced = bidsapp(source, output, "participant", "--participant-label", "01", "--force")
    assert forced.returncode == 0, forced.stderr
    m2 = manifest(output)
    assert m2["run_id"] != m1["run_id"]
    # dcm2niix is deterministic: a reconversion gives the same data files.
    assert {f["path"]: f["md5"] for f in m2["files"] if f["path"].endswith(".nii.gz")} == {
        f["path"]: f["md5"] for f in m1["files"] if f["path"].endswith(".nii.gz")
    }
    assert not any((output / ".bidsapp/incoming").iterdir())
    assert not any((output / ".bidsapp/replaced").iterdir())

    group = bidsapp(source, output, "group")
    assert group.returncode == 0, group.stderr
    description = json.loads((output / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "bidsapp"
    assert (output / "participants.tsv").read_text() == "participant_id\nsub-01\n"


def test_keep_work_keeps_a_private_work_dir(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, work_dir: Path
) -> None:
    make_exam("01")
    result = bidsapp(tmp_path / "source", tmp_path / "out", "participant", "--keep-work")
    assert result.returncode == 0, result.stderr
    (job,) = list(work_dir.iterdir())
    assert job.name.startswith("sub-01-")
    assert (job.stat().st_mode & 0o777) == 0o700
    assert (job / "dicom" / "study-1").is_dir()
    assert (job / "heudiconv" / "unit-1" / ".heudiconv").is_dir()


def test_new_session_leaves_other_sessions_untouched(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("exam-a", seed=1, study_date="20240102")
    source, output = tmp_path / "source", tmp_path / "out"
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\nexam-a\t01\tpre\n")
    first = bidsapp(source, output, "participant", "--subject-map", subject_map)
    assert first.returncode == 0, first.stderr
    pre = snapshot(output / "sub-01" / "ses-pre")
    pre_deriv = snapshot(output / "derivatives/bidsapp/sub-01/ses-pre/.log")
    assert "anat/sub-01_ses-pre_T1w.nii.gz" in pre

    make_exam("exam-b", seed=2, study_date="20240301")
    subject_map.write_text(subject_map.read_text() + "exam-b\t01\tpost\n")
    second = bidsapp(source, output, "participant", "--subject-map", subject_map)
    assert second.returncode == 0, second.stderr
    assert "sub-01 ses-pre published and up to date" in second.stderr
    assert snapshot(output / "sub-01" / "ses-pre") == pre
    assert snapshot(output / "derivatives/bidsapp/sub-01/ses-pre/.log") == pre_deriv
    assert (output / "sub-01/ses-post/anat/sub-01_ses-post_T1w.nii.gz").is_file()

    group = bidsapp(source, output, "group")
    assert group.returncode == 0, group.stderr
    sessions = (output / "sub-01/sub-01_sessions.tsv").read_text().split()
    assert sessions == ["session_id", "ses-post", "ses-pre"]


def test_exam_with_two_studies_becomes_sessions_in_acquisition_order(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    # The later study sits in the folder whose name sorts first.
    make_exam("01/a_second", seed=2, study_date="20240301")
    make_exam("01/b_first", seed=1, study_date="20240102")
    output = tmp_path / "out"
    result = bidsapp(tmp_path / "source", output, "participant")
    assert result.returncode == 0, result.stderr
    scans1 = (output / "sub-01/ses-1/sub-01_ses-1_scans.tsv").read_text().split()
    scans2 = (output / "sub-01/ses-2/sub-01_ses-2_scans.tsv").read_text().split()
    # Dates are shifted (de-identified), the 59 days between 2024-01-02 and 2024-03-01 kept.
    first, second = (datetime.fromisoformat(s[3]) for s in (scans1, scans2))
    assert (second - first).days == 59


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_killed_at_every_publish_step_then_rerun(
    point: str, tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("01")
    source, output = tmp_path / "source", tmp_path / "out"
    assert bidsapp(source, output, "participant").returncode == 0
    old = manifest(output)

    killed = bidsapp(source, output, "participant", "--force", env={"BIDSAPP_FAULT_AT": point})
    assert killed.returncode == -9, f"the fault point {point} was never reached: {killed.stderr}"

    rerun = bidsapp(source, output, "participant")
    assert rerun.returncode == 0, rerun.stderr
    final = manifest(output)
    # Killed before the verified upload was recorded: the old copy stands; after: the new one.
    new_expected = FAULT_POINTS.index(point) >= FAULT_POINTS.index("pending")
    assert (final["run_id"] != old["run_id"]) == new_expected
    on_disk = {f for f in published_files(output) if not f.endswith("manifest.json")}
    assert on_disk == {f["path"] for f in final["files"]}, "exactly one complete copy"
    assert not any((output / ".bidsapp/incoming").iterdir())
    assert not any((output / ".bidsapp/replaced").iterdir())
    assert [p.name for p in (output / "derivatives/bidsapp").iterdir()] == ["sub-01"]


def test_four_jobs_at_once_then_group_keeps_curated_column(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, work_dir: Path
) -> None:
    for n in range(1, 5):
        make_exam(f"0{n}", seed=n)
    source, output = tmp_path / "source", tmp_path / "out"
    assert bidsapp(source, output, "group", "--init").returncode == 0
    (output / "participants.tsv").write_text("participant_id\thandedness\nsub-02\tleft\n")
    (output / "README.md").write_text("# Curated README\n\nWritten by a person.\n")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bidsapp.cli",
                str(source),
                str(output),
                "participant",
                "--participant-label",
                f"0{n}",
                "--work-dir",
                str(work_dir),
                "--participant-fields",
                "age,sex",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(1, 5)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    group = bidsapp(source, output, "group", "--participant-fields", "age,sex")
    assert group.returncode == 0, group.stderr
    with (output / "participants.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert rows[1]["handedness"] == "left" and rows[0]["handedness"] == "n/a"
    assert all(r["age"] == "54" and r["sex"] == "O" for r in rows)
    assert (output / "README.md").read_text().startswith("# Curated README")
    report = json.loads((output / ".bidsapp/group-validation.json").read_text())
    assert [i for i in report["issues"]["issues"] if i["severity"] == "error"] == []
    # The reports folder is a derivative dataset of its own: the dataset validates clean with
    # and without -r (which validates derivatives/bidsapp as a dataset), and so does it alone.
    for folder, options in (
        (output, {}),
        (output, {"recursive": True}),
        (output / "derivatives/bidsapp", {}),
    ):
        result = validate(folder, tmp_path / "validation.json", **options)
        assert result.errors == [] and result.exit_code == 0, (folder, options)
    assert (output / "derivatives/bidsapp/sub-01/.log/report.html").is_file()
    index = (output / "derivatives/bidsapp/.log/index.html").read_text()
    assert all(f'href="../sub-0{n}/.log/report.html"' in index for n in range(1, 5))


def test_patient_data_stays_out_of_everything(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    patient = Patient(
        name="Conceição^Zélia", patient_id="HX99812", birth_date="19640229", accession="ACC77123"
    )
    make_exam(
        "Conceicao Zelia",
        patient=patient,
        series=(Series("anat-T1w", "t1w"),),
        file_names="{patient}_{instance:04d}.IMA",
    )
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\nConceicao Zelia\t01\t\n")
    output = tmp_path / "out"
    result = bidsapp(tmp_path / "source", output, "participant", "--subject-map", subject_map)
    assert result.returncode == 0, result.stderr
    assert bidsapp(tmp_path / "source", output, "group").returncode == 0
    everything = result.stdout + result.stderr
    for path in output.rglob("*"):
        everything += path.name + "\n"
        if path.is_file() and not path.name.endswith(".nii.gz"):
            everything += path.read_text(errors="replace")
    lowered = everything.lower()
    for value in (
        "conceicao",
        "conceição",
        "zelia",
        "zélia",
        "hx99812",
        "19640229",
        "1964-02-29",
        "acc77123",
    ):
        assert value not in lowered


def test_dry_run_writes_nothing(tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli) -> None:
    make_exam("01")
    output = tmp_path / "out"
    output.mkdir()
    result = bidsapp(tmp_path / "source", output, "participant", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would be converted" in result.stderr
    assert list(output.iterdir()) == []


def test_demo_runs_offline_without_shared_data(tmp_path: Path) -> None:
    # A network namespace with nothing but loopback proves the demo needs no network.
    # Loopback is brought up inside it: the demo's Drive emulator listens on 127.0.0.1.
    offline = (
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
        else []
    )
    need(bool(offline), "running offline needs root and unshare(1)")
    env = {
        **os.environ,
        "BIDSAPP_WORK_DIR": str(tmp_path / "w"),
        "BIDSAPP_SHARED_DICOM": "/nonexistent",
    }
    result = subprocess.run(
        [*offline, sys.executable, "-m", "bidsapp.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sub-02_task-rest_bold.nii.gz" in result.stdout
    assert "BIDS dataset on Drive (gdrive://" in result.stdout, "through the Drive emulator"
    assert (tmp_path / "demo/bids/sub-01/func/sub-01_task-rest_bold.nii.gz").is_file()
    assert assert_loads_in_pybids(tmp_path / "demo/bids") >= 8
    checked = validate(tmp_path / "demo/bids", tmp_path / "v.json", recursive=True)
    assert checked.exit_code == 0 and checked.errors == [], checked.errors[:5]
    assert "souza" not in (result.stdout + result.stderr).lower()
    # made in a clone, the demo's patient-like folders, key and secret are never committed
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    untracked = subprocess.run(
        ["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert (tmp_path / "demo/service-account.json").is_file()
    assert not [line for line in untracked.splitlines() if "demo/" in line], untracked


def test_work_dir_after_a_failure_is_kept_only_when_asked(
    tmp_path: Path, bidsapp: RunCli, work_dir: Path
) -> None:
    exam = tmp_path / "source" / "01"
    exam.mkdir(parents=True)
    (exam / "notes.txt").write_text("not an image\n")
    output = tmp_path / "out"
    assert bidsapp(tmp_path / "source", output, "participant").returncode == 65
    assert list(work_dir.iterdir()) == [], "raw patient data is wiped after a failure too"
    kept = bidsapp(tmp_path / "source", output, "participant", "--keep-work")
    assert kept.returncode == 65
    (job,) = list(work_dir.iterdir())
    assert (job.stat().st_mode & 0o777) == 0o700 and (job / "log.jsonl").is_file()


def test_published_logs_carry_no_local_path(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    """The job log is published (and a failed job's kept on OUTPUT): it must not say where a
    user's home, the key, the secret or the installation is."""
    home = tmp_path / "home" / "jdoe"
    home.mkdir(parents=True)
    make_exam("01")
    make_exam("02", seed=2, series=[])  # no series at all: a job that fails after staging
    source, output = tmp_path / "source", tmp_path / "out"
    subject_map = home / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\n01\t01\t\n02\t02\t\n")
    overrides = home / "overrides.toml"
    overrides.write_text("")
    result = bidsapp(
        source, output, "participant", "--subject-map", subject_map,
        "--overrides", overrides, "--date-secret", home / "date.secret",
    )  # fmt: skip
    assert result.returncode != 0  # sub-02 failed, as it should
    logs = {
        "published": output / "derivatives/bidsapp/sub-01/.log/log.jsonl",
        "failed": output / ".bidsapp/failed/sub-02/log.jsonl",
    }
    for kind, log in logs.items():
        text = log.read_text(encoding="utf-8")
        for local in (str(tmp_path), "jdoe", sys.prefix, str(Path.home()), "/tmp/"):
            assert local not in text, (kind, local)
        start = json.loads(text.splitlines()[0])["record"]["extra"]
        assert start["settings"]["source"] == "SOURCE" and start["settings"]["output"] == "OUTPUT"
        assert start["settings"]["date_secret"] == ".../date.secret"
