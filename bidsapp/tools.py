"""The one subprocess helper, and the versions of the external tools bidsapp runs."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bidsapp import __version__

# heudiconv and nipype check for updates over the network on every run unless told not to.
QUIET_ENV = {"NO_ET": "1", "NIPYPE_NO_ET": "1"}


class ToolFailed(RuntimeError):
    """An external tool exited with an unexpected code; carries the tail of its stderr."""

    def __init__(self, argv: Sequence[str], code: int, tail: str, output: str = "") -> None:
        super().__init__(f"{Path(argv[0]).name} exited with {code}: {tail}")
        self.argv = list(argv)
        self.code = code
        self.tail = tail
        self.output = output  # all it wrote to stderr then stdout, for callers that parse it


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every subprocess: ours first on PATH, no phoning home."""
    env = dict(os.environ)
    env.update(QUIET_ENV)
    # The console scripts of heudiconv, dcm2niix and the validator sit beside our interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if extra:
        env.update(extra)
    return env


def which(name: str) -> str | None:
    """Find a tool beside our interpreter first, then on PATH."""
    return shutil.which(name, path=tool_env()["PATH"])


def run(
    argv: Sequence[str],
    *,
    ok_codes: Sequence[int] = (0,),
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool with a list of arguments; raise ToolFailed (with stderr's tail) on a bad code."""
    exe = which(argv[0]) or argv[0]
    try:
        proc = subprocess.run(
            [exe, *argv[1:]],
            cwd=cwd,
            env=tool_env(env),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolFailed(argv, 127, f"{argv[0]} is not installed") from exc
    if proc.returncode not in ok_codes:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ToolFailed(argv, proc.returncode, tail, f"{proc.stderr}\n{proc.stdout}")
    return proc


def _first_line(argv: Sequence[str], ok_codes: Sequence[int]) -> str:
    try:
        proc = run(argv, ok_codes=ok_codes, timeout=60)
    except ToolFailed:
        return "missing"
    out = (proc.stdout or proc.stderr).strip().splitlines()
    return out[-1].strip() if out else "unknown"


@functools.cache
def versions() -> dict[str, str]:
    """Versions of bidsapp and every tool it runs, for logs, manifests and GeneratedBy."""
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    return {
        "bidsapp": __version__,
        "heudiconv": pkg("heudiconv"),
        "dcm2niix": _binary_version("dcm2niix", pkg, ["dcm2niix", "-v"], (0, 3)),
        "bids-validator": _binary_version(
            "bids-validator-deno", pkg, ["bids-validator-deno", "--version"], (0,)
        ),
        "pydicom": pkg("pydicom"),
        "python": sys.version.split()[0],
    }


def _binary_version(
    package: str, pkg: Callable[[str], str], argv: list[str], ok_codes: tuple[int, ...]
) -> str:
    """The PyPI wheels ship the binaries beside our interpreter: their package version is the
    binary's and costs no subprocess. A tool found elsewhere on PATH is asked instead
    (`dcm2niix -v` exits 3 by design; its last line is the bare version)."""
    own = Path(sys.executable).parent / argv[0]
    if which(argv[0]) == str(own) and pkg(package) != "missing":
        return ("v" if package == "dcm2niix" else "") + pkg(package)
    answer = _strip_ansi(_first_line(argv, ok_codes=ok_codes))
    return answer.split()[-1] if answer.split() else "unknown"


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
