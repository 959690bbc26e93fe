"""Tooling from the first commit: lint, types, and the README/CI contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [BIN / "ruff", "check", "."], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def readme_commands() -> list[str]:
    """The commands of the README's first code block (the set-up on a fresh machine)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```(?:sh|bash)\n(.*?)```", text, re.S)
    assert block, "README.md starts with a shell code block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_commands() -> None:
    demo, tests = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bidsapp demo" in demo and "pytest" in tests
    assert demo in ci and tests in ci
    assert "BIDSAPP_TEST_REQUIRE_ALL=1" in ci, "CI turns missing-facility skips into failures"


def test_exit_codes_are_documented_in_help() -> None:
    from bidsapp.errors import EXIT_CODES

    result = subprocess.run(
        [sys.executable, "-m", "bidsapp.cli", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s", result.stdout, re.M), code
    readme = (REPO / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, f"exit code {code} missing from README"
