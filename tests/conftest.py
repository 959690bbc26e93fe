"""Shared fixtures: the CLI as a subprocess, synthetic exams, and the shared real DICOM cases.

On a user's machine, tests needing ../shared/dicom (or another missing facility) skip with a
reason; CI sets BIDSAPP_TEST_REQUIRE_ALL=1, which turns those skips into failures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from bidsapp_sandbox.exams import Patient, Series, write_session

REPO = Path(__file__).resolve().parent.parent
SHARED_DICOM = Path(os.environ.get("BIDSAPP_SHARED_DICOM", REPO.parent / "shared" / "dicom"))
REQUIRE_ALL = os.environ.get("BIDSAPP_TEST_REQUIRE_ALL") == "1"
T1_ONLY = (Series("anat-T1w", "t1w"),)


def need(condition: bool, reason: str) -> None:
    """Skip when a facility is missing, unless CI demands everything run."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required by BIDSAPP_TEST_REQUIRE_ALL but missing: {reason}")
    pytest.skip(reason)


def shared_cases() -> list[str]:
    """Names of the real DICOM sessions in ../shared/dicom (empty when absent)."""
    if not SHARED_DICOM.is_dir():
        return []
    return sorted(p.name for p in SHARED_DICOM.iterdir() if p.is_dir())


@pytest.fixture
def shared_dicom() -> Path:
    need(SHARED_DICOM.is_dir(), f"{SHARED_DICOM} (real DICOM sessions) is not present")
    return SHARED_DICOM


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.fixture
def bidsapp(work_dir: Path) -> RunCli:
    """Run `bidsapp ARGS` in a subprocess (the real entry point), work dir inside tmp_path."""

    def run(
        *args: str | Path,
        env: dict[str, str] | None = None,
        work: bool = True,
        prefix: Sequence[str] = (),
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        if (
            work
            and argv
            and argv[0] not in ("subjects", "status", "pull", "demo")
            and len(argv) >= 3
        ):
            argv += ["--work-dir", str(work_dir)]
        full_env = {
            **os.environ,
            "BIDSAPP_LOG_LEVEL": "INFO",
            # Without a subject map the secret would go to ~/.config: keep tests to tmp_path.
            "BIDSAPP_DATE_SECRET": str(work_dir.parent / "date-shift.secret"),
            **(env or {}),
        }
        return subprocess.run(
            [*prefix, sys.executable, "-m", "bidsapp.cli", *argv],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )

    return run


def run_bidsapp(
    *args: str | Path,
    work: Path,
    env: dict[str, str] | None = None,
    work_flag: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`bidsapp ARGS --work-dir WORK` in a subprocess, outside any fixture (module-scoped runs);
    `work_flag=False` for helper commands, which take no --work-dir."""
    full_env = {
        **os.environ,
        "BIDSAPP_LOG_LEVEL": "INFO",
        "BIDSAPP_DATE_SECRET": str(work.parent / "date-shift.secret"),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "bidsapp.cli", *map(str, args)]
        + (["--work-dir", str(work)] if work_flag else []),
        capture_output=True,
        text=True,
        env=full_env,
        timeout=900,
        check=False,
    )


MakeExam = Callable[..., Path]


@pytest.fixture
def make_exam(tmp_path: Path) -> MakeExam:
    """Write a synthetic exam folder under tmp_path/source/<folder>; returns the folder."""

    def make(
        folder: str = "01",
        *,
        patient: Patient | None = None,
        series: Sequence[Series] = T1_ONLY,
        seed: int = 1,
        **kwargs: object,
    ) -> Path:
        dest = tmp_path / "source" / folder
        write_session(dest, patient=patient or Patient(), series=series, seed=seed, **kwargs)  # type: ignore[arg-type]
        return dest

    return make


def published_files(output: Path) -> list[str]:
    """Every file in OUTPUT outside the bookkeeping folder, sorted."""
    return sorted(
        p.relative_to(output).as_posix()
        for p in output.rglob("*")
        if p.is_file() and p.relative_to(output).parts[0] != ".bidsapp"
    )


def error_lines(stderr: str) -> list[str]:
    """The console's ERROR lines."""
    return [line for line in stderr.splitlines() if " ERROR " in line]


# pybids' names for the entities bidsapp writes (what downstream tools query by)
PYBIDS_ENTITIES = {
    "sub": "subject",
    "ses": "session",
    "task": "task",
    "acq": "acquisition",
    "rec": "reconstruction",
    "dir": "direction",
    "run": "run",
    "echo": "echo",
    "part": "part",
}


def assert_loads_in_pybids(output: Path) -> int:
    """The dataset, with derivatives/bidsapp, loads in pybids' BIDSLayout (validation on) and
    every published image and sidecar carries the entities its name gives; returns how many."""
    from bids import BIDSLayout

    layout = BIDSLayout(output, validate=True, derivatives=True)
    assert list(layout.derivatives) == ["derivatives/bidsapp"], layout.derivatives
    checked = 0
    for path in sorted(output.glob("sub-*/**/sub-*")):
        if not path.name.endswith((".nii.gz", ".json", ".bval", ".bvec", ".tsv")):
            continue
        found = layout.get_file(str(path))
        assert found is not None, f"pybids does not index {path.relative_to(output)}"
        entities = found.get_entities()
        stem, _, ext = path.name.partition(".")
        *pairs, suffix = stem.split("_")
        expected = {PYBIDS_ENTITIES[k]: v for k, v in (p.split("-", 1) for p in pairs)}
        expected |= {"suffix": suffix, "extension": f".{ext}"}
        got = {k: str(v) if k != "run" else str(int(v)) for k, v in entities.items()}
        if "run" in expected:
            expected["run"] = str(int(expected["run"]))
        assert {k: got.get(k) for k in expected} == expected, path.relative_to(output)
        if path.parent.name in ("anat", "func", "dwi", "fmap", "perf"):
            assert entities.get("datatype") == path.parent.name, path
        checked += 1
    return checked
