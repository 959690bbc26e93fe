"""A `tree`-like listing of a local dataset (bookkeeping folders hidden)."""

from __future__ import annotations

from pathlib import Path


def print_tree(root: Path, hide: tuple[str, ...] = (".bidsapp",)) -> None:
    """Print every file under root, indented by depth."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in hide:
            continue
        indent = "    " * (len(rel.parts) - 1)
        print(f"{indent}{rel.name}{'/' if path.is_dir() else ''}")
