"""SLURM arrays on a real single-node cluster (Debian's slurmctld, slurmd, munge) against the
Drive emulator, and shellcheck over the generated scripts for every runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bidsapp_sandbox.emulator import Emulator
from bidsapp_sandbox.exams import Series, write_session

from bidsapp.batch.slurm import RUNTIMES
from tests.conftest import RunCli, need
from tests.slurm_cluster import SlurmCluster, missing

SA = "bidsapp@lab-project.iam.gserviceaccount.com"
MAP = "source\tparticipant\tsession\nexam-c\t03\t\nexam-a\t01\t\nexam-b\t02\t\n"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_generated_scripts_pass_shellcheck(runtime: str, tmp_path: Path, bidsapp: RunCli) -> None:
    need(shutil.which("shellcheck") is not None, "shellcheck is not installed")
    for exam in ("exam-a", "exam-b", "exam-c"):
        (tmp_path / "source" / exam).mkdir(parents=True)
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(MAP)
    written = bidsapp(
        "slurm", "write", tmp_path / "source", tmp_path / "out", "--subject-map", subject_map,
        "--runtime", runtime, "--image", "bidsapp.sif", "--array-limit", "2", "--drive-rps", "8",
        "--partition", "short", "--time", "01:00:00", "--mem", "4G", "--cpus", "2",
        "--credentials", tmp_path / "key dir/sa.json", "--slurm-dir", tmp_path / "slurm",
        "--", "--heuristic", "reproin",
        work=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    batch = tmp_path / "slurm/batch-001"
    scripts = [batch / "participant.sbatch", batch / "group.sbatch"]
    check = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    participant = scripts[0].read_text()
    assert "#SBATCH --array=1-3%2" in participant
    assert "--drive-rps 4 " in participant, "budget 8 over an array limit of 2"
    assert "--drive-rps 8 " in scripts[1].read_text(), "the group job runs alone"
    for directive in ("--partition=short", "--time=01:00:00", "--mem=4G", "--cpus-per-task=2"):
        assert f"#SBATCH {directive}" in participant
    assert "set -euo pipefail" in participant and "trap cleanup EXIT" in participant
    assert "SLURM_TMPDIR" in participant
    assert f"--credentials '{tmp_path}/key dir/sa.json'" in participant
    if runtime in ("apptainer", "singularity"):
        assert f"{runtime} exec --cleanenv" in participant
        assert f"--bind {tmp_path}/out:{tmp_path}/out" in participant
    # The task list is sorted by label: the map's row order (03, 01, 02) does not matter.
    assert (batch / "tasks.tsv").read_text().split("\n")[1:4] == ["01\t", "02\t", "03\t"]
    assert "exam-" not in participant, "the map's source column (PHI) stays in the map"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = missing()
    need(not reason, reason)
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()


@dataclass
class DriveLab:
    """A shared drive on the emulator with exam folders, and how the CLI reaches it."""

    emu: Emulator
    key: Path
    drive: str
    env: dict[str, str]

    def source(self, exams: Path, names: list[str]) -> str:
        folder = self.emu.folder(f"exams-{len(names)}-{os.urandom(3).hex()}", parent=self.drive)
        for name in names:
            self.add_exam(folder, exams / name)
        return folder

    def add_exam(self, source: str, exam: Path) -> None:
        self.emu.upload_tree(exam, parent=self.emu.folder(exam.name, parent=source))

    def output(self, name: str) -> str:
        return self.emu.folder(name, parent=self.drive)


@pytest.fixture
def lab(tmp_path: Path, cluster: SlurmCluster) -> Iterator[DriveLab]:
    with Emulator() as emu:
        key = emu.service_account(SA, dest=tmp_path / "keys" / "sa.json")
        drive = emu.shared_drive("lab", members={SA: "organizer"})
        yield DriveLab(emu, key, drive, {**cluster.env, "BIDSAPP_DRIVE_URL": emu.url})


RESERVED_SPELLINGS = [
    ["--work-dir", "/shared"],
    ["--work", "/shared"],
    ["-w/shared"],
    ["--cred", "k.json"],
    ["--subject-map", "other.tsv"],
]


@pytest.mark.parametrize("extra", RESERVED_SPELLINGS)
def test_options_the_scripts_set_cannot_follow_the_separator(
    extra: list[str], tmp_path: Path, bidsapp: RunCli
) -> None:
    """Raw DICOMs must stay on node-local scratch: no spelling of --work-dir gets through."""
    (tmp_path / "source").mkdir()
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(MAP)
    result = bidsapp(
        "slurm", "write", tmp_path / "source", tmp_path / "out", "--subject-map", subject_map,
        "--slurm-dir", tmp_path / "slurm", "--", *extra, work=False,
    )  # fmt: skip
    assert result.returncode == 64, result.stderr
    assert "is set by the scripts" in result.stderr
    assert not (tmp_path / "slurm").exists()


def test_slurm_array_against_drive_then_resubmit(
    tmp_path: Path, bidsapp: RunCli, cluster: SlurmCluster, lab: DriveLab
) -> None:
    exams = tmp_path / "exams"
    for n, name in enumerate(("exam-a", "exam-b", "exam-c"), start=1):
        write_session(exams / name, series=(Series("anat-T1w", "t1w"),), seed=n)
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(MAP)

    def run(action: str, source: str, output: str) -> subprocess.CompletedProcess[str]:
        return bidsapp(
            "slurm", action, f"gdrive://{source}", f"gdrive://{output}",
            "--subject-map", subject_map, "--runtime", "none", "--array-limit", "2",
            "--drive-rps", "40", "--credentials", lab.key, "--slurm-dir", tmp_path / "slurm",
            env=lab.env, work=False,
        )  # fmt: skip

    def submit(action: str, source: str, output: str) -> tuple[str, str]:
        result = run(action, source, output)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        array = next(line.split()[2] for line in lines if line.startswith("array job "))
        group = next(line.split()[2] for line in lines if line.startswith("group job "))
        return array, group

    def status(output: str) -> dict[str, dict]:
        result = bidsapp(
            "status", f"gdrive://{output}", "--json", "--subject-map", subject_map,
            "--credentials", lab.key, env=lab.env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return {row["label"]: row for row in json.loads(result.stdout)}

    def logs() -> str:
        return "\n".join(p.read_text() for p in sorted((tmp_path / "slurm").rglob("*.log")))

    # Run 1: three subjects, array and dependent group job.
    source, output = lab.source(exams, ["exam-a", "exam-b", "exam-c"]), lab.output("bids")
    array, group = submit("submit", source, output)
    states = cluster.wait_jobs([array, group])
    assert states == {array: ["COMPLETED"] * 3, group: ["COMPLETED"]}, logs()
    assert {k: (v["state"], v["published"]) for k, v in status(output).items()} == {
        label: ("published", True) for label in ("01", "02", "03")
    }
    tree = lab.emu.tree(output)
    validation = json.loads(tree[".bidsapp/group-validation.json"])
    assert [i for i in validation["issues"]["issues"] if i["severity"] == "error"] == []
    assert tree["participants.tsv"].decode().split() == [
        "participant_id", "sub-01", "sub-02", "sub-03",
    ]  # fmt: skip
    assert "exam-" not in logs(), "no exam folder name in any job log"

    # A mistyped SOURCE (here: a folder without the exams) is refused before anything is
    # queued or written: one line, exit 66, no batch folder, no job.
    batches = sorted((tmp_path / "slurm").glob("batch-*"))
    typo = run("submit", lab.source(exams, []), lab.output("typo"))
    assert typo.returncode == 66, typo.stderr
    assert "3 of the 3 exam folders in the subject map are not in SOURCE" in typo.stderr
    assert sorted((tmp_path / "slurm").glob("batch-*")) == batches
    assert cluster.squeue() == []

    # Run 2: exam-b's folder holds no DICOM: its task fails, the others publish, and the
    # group job writes the dataset files, then fails naming the task.
    source2, output2 = lab.source(exams, ["exam-a", "exam-c"]), lab.output("bids2")
    exam_b = lab.emu.folder("exam-b", parent=source2)
    lab.emu.file("notes.txt", b"not a DICOM", parent=exam_b)
    array, group = submit("submit", source2, output2)
    states = cluster.wait_jobs([array, group])
    assert sorted(states[array]) == ["COMPLETED", "COMPLETED", "FAILED"], logs()
    assert states[group] == ["FAILED"], logs()
    group_log = next((tmp_path / "slurm").glob(f"batch-*/logs/group-{group}.log")).read_text()
    assert "1 job not published: sub-02 failed (exit 65)" in group_log
    rows = status(output2)
    assert [k for k, v in rows.items() if v["state"] == "failed"] == ["02"]
    assert rows["02"]["exit_code"] == 65 and not rows["02"]["published"]
    assert [k for k, v in rows.items() if v["published"]] == ["01", "03"]
    assert "participants.tsv" in lab.emu.tree(output2)

    # Put the exam in; resubmit runs only the failed task and the group job again.
    lab.emu.upload_tree(exams / "exam-b", parent=exam_b)
    array, group = submit("resubmit", source2, output2)
    tasks = sorted((tmp_path / "slurm").glob("batch-*"))[-1] / "tasks.tsv"
    assert tasks.read_text().splitlines() == ["participant\tsession", "02\t"]
    states = cluster.wait_jobs([array, group])
    assert states == {array: ["COMPLETED"], group: ["COMPLETED"]}, logs()
    assert {k: (v["state"], v["published"]) for k, v in status(output2).items()} == {
        label: ("published", True) for label in ("01", "02", "03")
    }
    again = bidsapp(
        "slurm", "resubmit", f"gdrive://{source2}", f"gdrive://{output2}",
        "--subject-map", subject_map, "--credentials", lab.key,
        "--slurm-dir", tmp_path / "slurm", env=lab.env, work=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "nothing to resubmit" in again.stdout
