"""What `bidsapp slurm write` puts into scripts: values it cannot hold safely are refused.

No cluster needed (tests/test_slurm.py runs the scripts on a real one).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunCli

MAP = "source\tparticipant\tsession\nexam-a\t01\t\n"


def _write(
    bidsapp: RunCli, tmp_path: Path, *args: str | Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "source" / "exam-a").mkdir(parents=True, exist_ok=True)
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(MAP)
    return bidsapp(
        "slurm", "write", tmp_path / "source", tmp_path / "out", "--subject-map", subject_map,
        *args, work=False, prefix=prefix,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["--partition", "short\ntouch x"],
        ["--time", "01:00:00\n#SBATCH --mem=1"],
        ["--mem", "4G\r"],
        ["--image", "img.sif\ntouch x", "--runtime", "apptainer"],
        ["--", "--heuristic", "auto\ntouch x"],
    ],
    ids=["partition", "time", "mem", "image", "after-separator"],
)
def test_u5_control_characters_are_refused(
    bidsapp: RunCli, tmp_path: Path, args: list[str]
) -> None:
    result = _write(bidsapp, tmp_path, "--slurm-dir", tmp_path / "slurm", *args)
    assert result.returncode == 64, result.stderr
    assert "control character" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "slurm").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--partition", "short long"], "not a SLURM value"),
        (["--mem", "4G;x"], "not a SLURM value"),
        (["--slurm-dir", "{tmp}/my slurm"], "--slurm-dir"),
        (["--slurm-dir", "{tmp}/slurm%j"], "--slurm-dir"),
    ],
)
def test_u5_directive_values_and_paths_are_refused(
    bidsapp: RunCli, tmp_path: Path, args: list[str], words: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--slurm-dir" not in args:  # never the default (the current folder)
        args += ["--slurm-dir", str(tmp_path / "slurm")]
    result = _write(bidsapp, tmp_path, *args)
    assert result.returncode == 64, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr
    assert not [p for p in tmp_path.iterdir() if "slurm" in p.name]


def test_u5_a_working_directory_with_a_space_is_quoted(bidsapp: RunCli, tmp_path: Path) -> None:
    here = tmp_path / "my dir %x"
    here.mkdir()
    result = _write(
        bidsapp, tmp_path, "--slurm-dir", tmp_path / "slurm", prefix=("env", "-C", str(here))
    )
    assert result.returncode == 0, result.stderr
    script = tmp_path / "slurm/batch-001/participant.sbatch"
    text = script.read_text()
    assert f"cd -- '{here}'" in text
    assert "--chdir" not in text
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if shutil.which("shellcheck"):
        check = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


@pytest.mark.parametrize(
    ("mistake", "code", "words"),
    [
        ("source", 66, "1 of the 1 exam folders in the subject map are not in SOURCE"),
        ("map-row", 66, "(sub-01); nothing was submitted"),
        ("map-unreadable", 64, "cannot read the subject map"),
        ("output", 66, "bidsapp creates OUTPUT's last folder only"),
    ],
)
def test_mistakes_are_caught_before_a_batch_is_written(
    bidsapp: RunCli, tmp_path: Path, mistake: str, code: int, words: str
) -> None:
    """What would fail every task alike fails `slurm write|submit` once, before any batch,
    script or OUTPUT folder exists (tests/test_slurm.py shows submit queues nothing)."""
    (tmp_path / "source" / "exam-a").mkdir(parents=True)
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(MAP)
    source, output = tmp_path / "source", tmp_path / "out"
    if mistake == "source":
        source = tmp_path / "sourse"
        source.mkdir()  # a folder, but not the one holding the exams
    elif mistake == "map-row":
        subject_map.write_text(MAP.replace("exam-a", "exam-b"))
    elif mistake == "map-unreadable":
        subject_map.unlink()
        subject_map.mkdir()  # unreadable for root too
    else:
        output = tmp_path / "typo" / "out"
    result = bidsapp(
        "slurm", "write", source, output, "--subject-map", subject_map,
        "--slurm-dir", tmp_path / "slurm", work=False,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "exam-" not in result.stderr  # the map's source column is PHI: never printed
    assert not (tmp_path / "slurm").exists()
    assert not output.exists()
