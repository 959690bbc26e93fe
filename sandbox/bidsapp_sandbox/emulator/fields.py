"""Partial responses: the `fields` parameter (`nextPageToken, files(id,name)`, `a/b`, `*`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bidsapp_sandbox.emulator.errors import ApiError, bad_request

# A mask maps a field name to the mask of its sub-fields, or to None for "all of it".
Mask = dict[str, "Mask | None"]


def _invalid(fields: str, why: str) -> ApiError:
    return bad_request(f"Invalid field selection {fields!r}: {why}", location="fields")


def _merge(into: Mask, name: str, sub: Mask | None) -> None:
    if name in into and into[name] is not None and sub is not None:
        existing = into[name]
        assert existing is not None
        for key, value in sub.items():
            _merge(existing, key, value)
    elif name in into and (into[name] is None or sub is None):
        into[name] = None
    else:
        into[name] = sub


def parse_fields(fields: str) -> Mask:
    """Parse a `fields` value into a mask."""
    text = fields.replace(" ", "")
    mask, end = _parse_list(fields, text, 0)
    if end != len(text):
        raise _invalid(fields, f"unexpected {text[end]!r}")
    return mask


def _parse_list(original: str, text: str, i: int) -> tuple[Mask, int]:
    mask: Mask = {}
    while True:
        path: list[str] = []
        start = i
        while i < len(text) and text[i] not in ",()/":
            i += 1
        if i == start:
            raise _invalid(original, "empty field name")
        path.append(text[start:i])
        while i < len(text) and text[i] == "/":
            start = i = i + 1
            while i < len(text) and text[i] not in ",()/":
                i += 1
            if i == start:
                raise _invalid(original, "empty field name")
            path.append(text[start:i])
        sub: Mask | None = None
        if i < len(text) and text[i] == "(":
            sub, i = _parse_list(original, text, i + 1)
            if i >= len(text) or text[i] != ")":
                raise _invalid(original, "unbalanced parentheses")
            i += 1
        for name in reversed(path[1:]):
            sub = {name: sub}
        _merge(mask, path[0], sub)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        return mask, i


def check(fields: str, mask: Mask | None, allowed: Iterable[str]) -> None:
    """Reject names a resource does not have, as Drive does (a typo is a 400, not silence)."""
    if mask is None:
        return
    known = set(allowed)
    unknown = [name for name in mask if name != "*" and name not in known]
    if unknown:
        raise _invalid(fields, f"unknown field {unknown[0]!r}")


def apply(value: Any, mask: Mask | None) -> Any:
    """The part of `value` that `mask` selects."""
    if mask is None or "*" in mask:
        return value
    if isinstance(value, list):
        return [apply(item, mask) for item in value]
    if isinstance(value, dict):
        return {k: apply(value[k], sub) for k, sub in mask.items() if k in value}
    return value
