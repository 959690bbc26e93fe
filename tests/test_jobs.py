"""`participant --jobs N` and SIGTERM: the real pipeline on small synthetic exams, local → local.

SOURCE and OUTPUT are parameters of each scenario (the `locations` fixture), so the same
checks can run against any store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bidsapp.pipeline.publish import FAULT_ENV, FAULT_SIGNAL_ENV
from tests.conftest import MakeExam, RunCli

pytestmark = pytest.mark.slow


def status(bidsapp: RunCli, output: Path | str, *extra: str | Path) -> dict[str, dict]:
    result = bidsapp("status", output, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return {row["label"]: row for row in json.loads(result.stdout)}


def summary(stderr: str) -> list[list[str]]:
    """The rows of the --jobs summary table (after its header line)."""
    lines = stderr.splitlines()
    start = max(i for i, line in enumerate(lines) if line.split() == ["job", "state", "exit"])
    return [line.split() for line in lines[start + 1 :]]


def test_jobs_three_at_once_with_one_broken(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, work_dir: Path
) -> None:
    make_exam("01", seed=1)
    make_exam("03", seed=3)
    broken = tmp_path / "source" / "02"  # sorts between the good ones: map order is kept
    broken.mkdir(parents=True)
    (broken / "notes.txt").write_text("not an image\n")
    source, output = tmp_path / "source", tmp_path / "out"

    result = bidsapp(source, output, "participant", "--jobs", "3", "--drive-rps", "9")
    assert result.returncode == 65, result.stderr
    assert "3 jobs, 3 at once, 3 Drive requests/s each" in result.stderr
    assert summary(result.stderr) == [
        ["sub-01", "published", "0"],
        ["sub-02", "failed", "65"],
        ["sub-03", "published", "0"],
    ]
    # Three processes really ran side by side: all three started before any one published.
    first_published = result.stderr.index("published (")
    for n in (1, 2, 3):
        assert result.stderr.index(f"bidsapp job sub-0{n} started") < first_published
    states = status(bidsapp, output)
    assert {k: (v["state"], v["published"]) for k, v in states.items()} == {
        "01": ("published", True),
        "02": ("failed", False),
        "03": ("published", True),
    }
    assert states["02"]["exit_code"] == 65 and states["02"]["retryable"] is False
    assert (output / "sub-01/anat/sub-01_T1w.nii.gz").is_file()
    assert (output / "sub-03/anat/sub-03_T1w.nii.gz").is_file()
    assert not (output / "sub-02").exists()
    assert list(work_dir.iterdir()) == [], "every child removed its own work dir"


def test_status_with_a_map_lists_subjects_that_never_ran(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("exam-a", seed=1)
    make_exam("exam-b", seed=2)
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\nexam-a\t01\t\nexam-b\t02\t\n")
    output = tmp_path / "out"
    run = bidsapp(
        tmp_path / "source", output, "participant", "--subject-map", subject_map,
        "--participant-label", "01",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    # A manifest that no longer matches its files is not a publication.
    nifti = output / "sub-01/anat/sub-01_T1w.nii.gz"
    with_map = status(bidsapp, output, "--subject-map", subject_map)
    assert {k: (v["state"], v["published"]) for k, v in with_map.items()} == {
        "01": ("published", True),
        "02": ("missing", False),
    }
    assert list(status(bidsapp, output)) == ["01"], "without the map only jobs that ran"
    nifti.write_bytes(nifti.read_bytes()[:-10])
    assert status(bidsapp, output)["01"]["state"] == "incomplete"
    text = bidsapp("status", output, "--subject-map", subject_map)
    assert text.returncode == 0
    assert "exam-" not in text.stdout, "the map's source column is PHI"


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Until the process froze itself (SIGSTOP at the fault point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "T":
            return
        assert proc.poll() is None, "the process ended before reaching the fault point"
        time.sleep(0.2)
    raise TimeoutError("the fault point was never reached")


@pytest.mark.parametrize("point", ["upload", "moved-data"])
def test_sigterm_at_a_publish_step_leaves_nothing_half_published(
    point: str, tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, work_dir: Path
) -> None:
    make_exam("01")
    source, output = tmp_path / "source", tmp_path / "out"
    env = {
        **os.environ,
        FAULT_ENV: point,
        FAULT_SIGNAL_ENV: "STOP",
        "BIDSAPP_DATE_SECRET": str(tmp_path / "date-shift.secret"),
    }
    argv = [sys.executable, "-m", "bidsapp.cli", str(source), str(output), "participant"]
    proc = subprocess.Popen(
        [*argv, "--work-dir", str(work_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_stopped(proc)
        # What SLURM does at a time limit or preemption: SIGTERM (SIGKILL would follow).
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err
    assert "stopped by SIGTERM" in err
    record = json.loads((output / ".bidsapp/status/sub-01.json").read_text())
    assert (record["state"], record["exit_code"], record["retryable"]) == ("failed", 75, True)
    assert status(bidsapp, output)["01"]["published"] is False
    assert list(work_dir.iterdir()) == [], "the stopped job still removed its work dir"

    rerun = bidsapp(source, output, "participant")
    assert rerun.returncode == 0, rerun.stderr
    row = status(bidsapp, output)["01"]
    assert row["published"] is True and row["state"] in ("published", "skipped")
    manifest = json.loads(
        next(output.glob("derivatives/bidsapp/sub-01/**/manifest.json")).read_text()
    )
    on_disk = sorted(
        p.relative_to(output).as_posix()
        for p in output.rglob("*")
        if p.is_file() and ".bidsapp" not in p.parts and p.name != "manifest.json"
    )
    assert on_disk == sorted(f["path"] for f in manifest["files"]), "exactly one complete copy"
    assert not any((output / ".bidsapp/incoming").iterdir())
    assert not any((output / ".bidsapp/replaced").iterdir())


def _term_pending(pid: int) -> bool:
    """Whether SIGTERM is pending for a process (its SigPnd/ShdPnd masks in /proc)."""
    bit = 1 << (signal.SIGTERM - 1)
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    masks = [line.split()[1] for line in lines if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(int(mask, 16) & bit for mask in masks)


def test_sigterm_to_the_jobs_parent_stops_every_child_cleanly(
    tmp_path: Path, make_exam: MakeExam, work_dir: Path
) -> None:
    for n in (1, 2, 3):
        make_exam(f"0{n}", seed=n)
    source, output = tmp_path / "source", tmp_path / "out"
    env = {
        **os.environ,
        FAULT_ENV: "uploaded",
        FAULT_SIGNAL_ENV: "STOP",
        "BIDSAPP_DATE_SECRET": str(tmp_path / "date-shift.secret"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bidsapp.cli", str(source), str(output), "participant",
         "--jobs", "2", "--work-dir", str(work_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        children: list[int] = []
        deadline = time.monotonic() + 300
        while len(children) < 2 and time.monotonic() < deadline:
            children = [
                int(pid)
                for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
            ]
            time.sleep(0.2)
        assert len(children) == 2, "both children should have frozen at the fault point"
        proc.send_signal(signal.SIGTERM)
        # Thaw them only once the parent has passed the SIGTERM on (pending while they are
        # stopped): thawed earlier, a child would publish before its signal lands.
        deadline = time.monotonic() + 60
        while not all(_term_pending(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_term_pending(pid) for pid in children), "the parent did not pass SIGTERM on"
        for pid in children:
            os.kill(pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err
    assert summary(err) == [
        ["sub-01", "failed", "75"],
        ["sub-02", "failed", "75"],
        ["sub-03", "not", "run", "75"],
    ]
    assert not (output / "sub-01").exists() and not (output / "sub-02").exists()
    assert list(work_dir.iterdir()) == []


def test_p5_a_killed_job_s_work_folder_is_swept_and_status_says_it_is_gone(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, work_dir: Path
) -> None:
    make_exam("01")
    source, output = tmp_path / "source", tmp_path / "out"

    killed = bidsapp(source, output, "participant", env={FAULT_ENV: "upload"})  # SIGKILL

    assert killed.returncode == -signal.SIGKILL
    left = list(work_dir.iterdir())
    assert len(left) == 1 and any((left[0] / "dicom").rglob("*.dcm")), "raw DICOMs were left"
    row = status(bidsapp, output)["01"]
    assert row["state"] in ("started", "staged", "converted", "gated")
    assert row["process_gone"] is True
    text = bidsapp("status", output)
    assert "(process gone)" in text.stdout

    rerun = bidsapp(source, output, "participant")

    assert rerun.returncode == 0, rerun.stderr
    assert "removed the work folder" in rerun.stderr
    assert list(work_dir.iterdir()) == []
    assert "process_gone" not in status(bidsapp, output)["01"]


def test_a_rerun_with_nothing_to_do_leaves_the_subject_published(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("01")
    source, output = tmp_path / "source", tmp_path / "out"
    assert bidsapp(source, output, "participant").returncode == 0
    record = output / ".bidsapp/status/sub-01.json"
    written = record.read_bytes()

    rerun = bidsapp(source, output, "participant")

    assert rerun.returncode == 0 and "nothing to do" in rerun.stderr, rerun.stderr
    assert status(bidsapp, output)["01"]["state"] == "published"
    assert record.read_bytes() == written, "a record that is already right is not rewritten"
    table = bidsapp("status", output).stdout.splitlines()
    assert table[0].split("\t") == ["participant", "session", "state", "exit", "note"]
    assert table[1].split("\t")[:4] == ["sub-01", "-", "published", "0"]


def test_status_json_into_head_ends_quietly(tmp_path: Path) -> None:
    """`bidsapp status --json | head`: head leaves early; bidsapp must stop without a word."""
    folder = tmp_path / "out/.bidsapp/status"
    folder.mkdir(parents=True)
    for n in range(1, 600):  # ~250 KB of JSON: more than a pipe holds, so writes hit EPIPE
        record = {"label": f"{n:03d}", "session": "", "run_id": "x", "state": "failed"}
        record |= {"exit_code": 65, "error_class": "BadInputData", "retryable": False}
        (folder / f"sub-{n:03d}.json").write_text(json.dumps(record))
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", '"$@" | head -3', "sh", sys.executable, "-m",
         "bidsapp.cli", "status", str(tmp_path / "out"), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.stdout.splitlines()[0] == "["
    assert result.stderr == "" and result.returncode == 0, result.stderr


def test_a_job_that_fails_before_staging_records_its_code(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    """A SLURM task whose SOURCE is gone (or mistyped) fails before it knows its exam; status
    must still say `failed 66` for it rather than 'missing'."""
    make_exam("01")
    make_exam("02", seed=2)
    output = tmp_path / "out"
    first = bidsapp(tmp_path / "source", output, "participant", "--participant-label", "01")
    assert first.returncode == 0, first.stderr
    typo = tmp_path / "sourse"

    failed = bidsapp(typo, output, "participant", "--participant-label", "02")

    assert failed.returncode == 66, failed.stderr
    rows = status(bidsapp, output)
    assert (rows["02"]["state"], rows["02"]["exit_code"]) == ("failed", 66)
    assert rows["02"]["error_class"] == "LocationNotFound"
    assert rows["01"]["state"] == "published"
    # an OUTPUT that does not exist is not made just to hold the record
    elsewhere = tmp_path / "elsewhere"
    again = bidsapp(typo, elsewhere, "participant", "--participant-label", "02")
    assert again.returncode == 66 and not elsewhere.exists()


def test_dry_run_names_output_as_output(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("01")
    source = tmp_path / "source"
    new = tmp_path / "new"
    result = bidsapp(source, new, "participant", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"OUTPUT {new} does not exist yet: a real run creates it" in result.stderr
    assert "would be converted" in result.stderr and not new.exists()
    typo = tmp_path / "typo" / "out"
    result = bidsapp(source, typo, "participant", "--dry-run")
    assert result.returncode == 66, result.stderr
    assert f"OUTPUT {typo} was not found, nor its parent folder" in result.stderr
    assert "SOURCE" not in result.stderr
