"""The words of bidsapp's own text: what a generated file (report, gate verdict, log) may say
whoever the patient is.

A patient's name word that is also one of these ("dcm2niix", "Roboto" from the report's style
sheet) is the patient's in text copied from DICOM, and bidsapp's own in text it writes itself.
The words are read from the package's string constants (docstrings left out), so they follow
the templates, messages and tool names as they change.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import bidsapp
from bidsapp.privacy.phi import tokenize


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def words_of(source: str) -> set[str]:
    """Tokens of every string constant in Python source, docstrings excepted."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return {
        token
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        for token in tokenize(node.value)
    }


@lru_cache(maxsize=1)
def own_words() -> frozenset[str]:
    """Every word of the string constants of the bidsapp package."""
    words: set[str] = set()
    for path in sorted(Path(bidsapp.__file__).parent.rglob("*.py")):
        words |= words_of(path.read_text(encoding="utf-8"))
    return frozenset(words)
