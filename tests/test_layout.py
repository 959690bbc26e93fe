"""The package's shape: subpackages in layers, imports only downwards, no import circles.

The layers, lowest first; a module may import from its own layer and the ones below it:

    base       bidsapp/{__init__,errors,settings,logs,tools,timing,files,bids}.py
    stores     where data lives (local folders, Google Drive) and the pacer
    privacy    identifiers, de-identification, the PHI scan
    heuristic  header summaries, the classifier, overrides, finishing sidecars
    heuristics the heuristic files users pick by name (heuristics/)
    report     the subject report page and the dataset index
    pipeline   one job's stages (stage, convert, gate, publish), group, status, inspect, pull
    batch      many jobs: --jobs and SLURM
    cli        parses and dispatches

The runtime never imports the sandbox (the Drive emulator, synthetic exams, the demo), which is
a distribution of its own (sandbox/) that tests and the demo install beside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("base", "stores", "privacy", "heuristic", "heuristics", "report", "pipeline", "batch")
BASE = {
    "bidsapp",
    "bidsapp.errors",
    "bidsapp.settings",
    "bidsapp.logs",
    "bidsapp.tools",
    "bidsapp.timing",
    "bidsapp.files",
    "bidsapp.bids",
}


def runtime_modules() -> dict[str, Path]:
    """The runtime's modules by dotted name (heuristics/ installs as bidsapp.heuristics)."""
    found = {}
    for path in sorted((REPO / "bidsapp").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((REPO / "heuristics").glob("*.py")):
        name = "bidsapp.heuristics" + ("" if path.stem == "__init__" else f".{path.stem}")
        found[name] = path
    return found


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The bidsapp modules a file imports, anywhere in it (function-level imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from bidsapp.pipeline import preempt` imports the module bidsapp.pipeline.preempt
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        out.update(n for n in names if n.split(".")[0] in ("bidsapp", "bidsapp_sandbox"))
    return out


def layer(module: str) -> int:
    if module in BASE:
        return 0
    if module == "bidsapp.cli":
        return len(LAYERS)
    part = module.split(".")[1]
    assert part in LAYERS, f"{module} is in no layer: add its subpackage to LAYERS"
    return LAYERS.index(part)


def graph() -> dict[str, set[str]]:
    modules = runtime_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def test_every_subpackage_says_what_it_holds() -> None:
    for init in [
        *(REPO / "bidsapp").glob("*/__init__.py"),
        REPO / "sandbox/bidsapp_sandbox/__init__.py",
    ]:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and doc.splitlines()[0].endswith("."), f"{init}: a first line says what it holds"


def test_imports_go_only_downwards_and_never_into_the_sandbox() -> None:
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if target.startswith("bidsapp_sandbox"):
                wrong.append(f"{module} imports the sandbox ({target})")
            elif layer(target) > layer(module):
                wrong.append(f"{module} imports {target} from a layer above it")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    # The checker itself: a stage importing the command line is both an upward import and, with
    # cli importing the stage, a circle.
    fake = tmp_path / "stage.py"
    fake.write_text("from bidsapp.cli import main\nfrom bidsapp_sandbox import exams\n")
    found = imports(fake, runtime_modules())
    assert found == {"bidsapp.cli", "bidsapp_sandbox"}
    assert layer("bidsapp.cli") > layer("bidsapp.pipeline.stage")
