"""files.list paging and ordering: page size, `orderBy`, and stateless page tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from bidsapp_sandbox.emulator.errors import bad_request
from bidsapp_sandbox.emulator.model import FileRec

_ORDER_KEYS = {"createdTime", "folder", "modifiedTime", "name", "name_natural", "quotaBytesUsed"}


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise bad_request(f"Invalid value for {name}: {raw!r}", location=name) from exc
    if not low <= value <= high:
        raise bad_request(f"Invalid value for {name}: {raw} (allowed {low}-{high})", location=name)
    return value


def order_key(order_by: str) -> Any:
    terms: list[tuple[str, bool]] = []
    for part in filter(None, (p.strip() for p in order_by.split(","))):
        words = part.split()
        if words[0] not in _ORDER_KEYS or len(words) > 2 or words[1:] not in ([], ["desc"]):
            raise bad_request(f"Invalid orderBy: {part!r}", location="orderBy")
        terms.append((words[0], len(words) == 2))

    def key(rec: FileRec) -> tuple[Any, ...]:
        out: list[Any] = []
        for name, desc in terms:
            value: Any
            if name == "folder":
                value = 0 if rec.is_folder else 1
            elif name in ("name", "name_natural"):
                value = rec.name.lower()
            elif name == "quotaBytesUsed":
                value = rec.size or 0
            else:
                value = rec.created if name == "createdTime" else rec.modified
            out.append(_Desc(value) if desc else value)
        out.append(rec.seq)
        return tuple(out)

    return key


class _Desc:
    """Wraps a value so that sorting ascending orders it descending."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(self.value > other.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def encode_page_token(offset: int, key: str) -> str:
    raw = json.dumps({"o": offset, "k": key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str | None, key: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["k"] == key:
            return int(data["o"])
    except (ValueError, KeyError, TypeError):
        pass
    raise bad_request(
        "Invalid Value: pageToken does not belong to this query.", location="pageToken"
    )
