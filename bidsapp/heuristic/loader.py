"""`--heuristic`: a heudiconv heuristic file (a name from heuristics/ or a path), resolved,
loaded and checked once, with the study's overrides file."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidsapp.errors import UsageError
from bidsapp.heuristic.classify import Decision
from bidsapp.heuristic.headers import SeriesHeader
from bidsapp.heuristic.overrides import load as load_overrides
from bidsapp.heuristic.plan import Override

HEURISTICS_DIR = Path(__file__).parents[1] / "heuristics"
_REPO_HEURISTICS = Path(__file__).resolve().parents[2] / "heuristics"
Planner = Callable[[Sequence[SeriesHeader], Sequence[Override]], list[Decision]]


@dataclass(frozen=True)
class Heuristic:
    """A heudiconv heuristic file, resolved and checked once."""

    name: str
    path: Path
    sha256: str
    expected: tuple[str, ...] = ()  # glob patterns under sub-<L>/ that must each match a file
    overrides: Path | None = None  # the study's validated overrides file (--overrides)
    rules: tuple[Override, ...] = ()  # what that file says
    # A header-based heuristic's `plan` (heuristic/base.py): bidsapp names every image with it.
    # None for other heuristics (reproin, a lab's own): heudiconv's names are kept as they are.
    plan: Planner | None = None


def heuristic_dirs() -> list[Path]:
    """Where named heuristics are found: the installed package, then a source checkout."""
    return [d for d in (HEURISTICS_DIR, _REPO_HEURISTICS) if d.is_dir()]


def load_heuristic(spec: str, overrides: Path | None = None) -> Heuristic:
    """Resolve `--heuristic` (a name from heuristics/ or a path) and check it loads.

    The overrides file is checked here too, before any work, and counts in the digest: a
    changed override reconverts like a changed heuristic.
    """
    path = Path(spec).expanduser()
    if not (spec.endswith(".py") or "/" in spec):
        found = [d / f"{spec}.py" for d in heuristic_dirs() if (d / f"{spec}.py").is_file()]
        if not found:
            names = sorted({p.stem for d in heuristic_dirs() for p in d.glob("[!_]*.py")})
            raise UsageError(
                f"no heuristic named {spec!r}", hint=f"choose one of {', '.join(names)}"
            )
        path = found[0]
    if not path.is_file():
        raise UsageError(f"heuristic file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"bidsapp_heuristic_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"heuristic {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a user's file can fail in any way; it is still a usage error
        raise UsageError(
            f"heuristic {path.name} does not load: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(module, "infotodict", None)):
        raise UsageError(f"heuristic {path.name} defines no infotodict(seqinfo)")
    expected = tuple(getattr(module, "EXPECTED_FILES", ()) or ())
    digest = hashlib.sha256(path.read_bytes())
    rules: tuple[Override, ...] = ()
    if overrides is not None:
        rules = load_overrides(overrides)
        digest.update(b"\0overrides\0" + overrides.read_bytes())
        overrides = overrides.absolute()
    planner = getattr(module, "plan", None)
    return Heuristic(
        path.stem,
        path.resolve(),
        digest.hexdigest(),
        expected,
        overrides,
        rules,
        planner if callable(planner) else None,
    )
