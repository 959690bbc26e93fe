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
from bidsapp.privacy.phi import normalize, tokenize


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


def _sources() -> list[Path]:
    return sorted(Path(bidsapp.__file__).parent.rglob("*.py"))


@lru_cache(maxsize=1)
def own_words() -> frozenset[str]:
    """Every word of the string constants of the bidsapp package."""
    words: set[str] = set()
    for path in _sources():
        words |= words_of(path.read_text(encoding="utf-8"))
    return frozenset(words)


@lru_cache(maxsize=1)
def _source_text() -> str:
    return normalize("\n".join(path.read_text(encoding="utf-8") for path in _sources()))


def own_words_among(words: frozenset[str]) -> frozenset[str]:
    """Those of `words` (normalized tokens) that are words of bidsapp's own text.

    Parsing the package takes a quarter of a second, a job's whole PHI scan on a small exam;
    it is needed only when one of the words occurs in the package's source at all, which
    few patients' names do. (A miss here could only make bidsapp's own word count as a hit.)
    """
    if not words or not any(word in _source_text() for word in words):
        return frozenset()
    return own_words() & words
