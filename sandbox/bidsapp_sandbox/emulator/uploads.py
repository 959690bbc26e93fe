"""Upload bodies: multipart/related parsing and resumable sessions (308 + Range protocol)."""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bidsapp_sandbox.emulator.errors import ApiError, bad_request
from bidsapp_sandbox.emulator.files_api import Content

CHUNK_GRANULARITY = 256 * 1024  # non-final resumable chunks must be multiples of this
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")
_QUERY = re.compile(r"bytes \*/(\d+|\*)$")


def _headers(block: bytes, sep: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.split(sep):
        if b":" in line:
            name, value = line.split(b":", 1)
            out[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return out


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], Content]:
    """Split a multipart/related upload into its JSON metadata and its media bytes.

    Binary-safe: the media part ends at the *last* closing delimiter, so media bytes that happen
    to look like a boundary line are kept as they are.
    """
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/related") or not match:
        raise bad_request("Multipart upload needs Content-Type multipart/related with a boundary.")
    delim = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise bad_request("Multipart body has no boundary line.")
    after = start + len(delim)
    sep = b"\r\n" if body.startswith(b"\r\n", after) else b"\n"
    close = body.rfind(sep + delim + b"--")
    if close < 0:
        raise bad_request("Multipart body has no closing boundary.")
    inner = body[after + len(sep) : close]
    split = inner.find(sep + delim + sep)
    if split < 0:
        raise bad_request("Multipart upload needs two parts: metadata, then media.")
    parts = [inner[:split], inner[split + len(sep + delim + sep) :]]
    parsed: list[tuple[dict[str, str], bytes]] = []
    for part in parts:
        head_end = part.find(sep + sep)
        if head_end < 0:
            # A part with headers only and an empty body.
            parsed.append((_headers(part, sep), b""))
        else:
            parsed.append((_headers(part[:head_end], sep), part[head_end + 2 * len(sep) :]))
    (meta_headers, meta_bytes), (media_headers, media) = parsed
    if "json" not in meta_headers.get("content-type", "application/json"):
        raise bad_request("The first multipart part must be the JSON metadata.")
    return _json_object(meta_bytes), Content(media, media_headers.get("content-type"))


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"Invalid JSON metadata: {exc}", reason="parseError") from exc
    if not isinstance(value, dict):
        raise bad_request("Metadata must be a JSON object.", reason="parseError")
    return value


def json_body(raw: bytes) -> dict[str, Any]:
    return _json_object(raw)


@dataclass
class Session:
    """One resumable upload: what it will create or update, and the bytes received so far."""

    id: str
    caller: str
    meta: dict[str, Any]
    params: dict[str, str]
    file_id: str | None  # set for an update of existing content
    mime: str | None
    total: int | None
    data: bytearray = field(default_factory=bytearray)
    result: dict[str, Any] | None = None  # the response body once complete


class Sessions:
    """Open resumable uploads, keyed by upload_id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def open(
        self,
        caller: str,
        meta: dict[str, Any],
        params: Mapping[str, str],
        file_id: str | None,
        headers: Mapping[str, str],
    ) -> Session:
        total_text = headers.get("x-upload-content-length")
        try:
            total = int(total_text) if total_text else None
        except ValueError as exc:
            raise bad_request("Invalid X-Upload-Content-Length.") from exc
        session = Session(
            id=secrets.token_urlsafe(24),
            caller=caller,
            meta=meta,
            params={k: v for k, v in params.items() if k != "uploadType"},
            file_id=file_id,
            mime=headers.get("x-upload-content-type"),
            total=total,
        )
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, upload_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None:
            raise ApiError(404, "notFound", "No such upload session (it may have expired).")
        return session

    def close(self, upload_id: str) -> None:
        with self._lock:
            self._sessions.pop(upload_id, None)


def receive(session: Session, content_range: str | None, body: bytes) -> bool:
    """Apply one PUT to the session; True when all bytes are in (the upload can be finished).

    Chunks may overlap what was already received (a client resending after a lost reply); a
    chunk that starts past the received bytes is ignored and the 308 tells where to resume.
    """
    if session.result is not None:
        return True
    if content_range is None:
        # A single PUT with the whole content (or an empty file).
        session.data[:] = body
        session.total = len(body)
        return True
    content_range = content_range.strip()
    if query := _QUERY.match(content_range):
        if query.group(1) != "*":
            _set_total(session, int(query.group(1)))
        return session.total is not None and len(session.data) == session.total
    match = _RANGE.match(content_range)
    if not match:
        raise bad_request(f"Invalid Content-Range: {content_range!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if match.group(3) != "*":
        _set_total(session, int(match.group(3)))
    if last - first + 1 != len(body):
        raise bad_request("Content-Range does not match the number of bytes sent.")
    received = len(session.data)
    if first > received:
        return False
    session.data.extend(body[received - first :])
    final = session.total is not None and last + 1 >= session.total
    if not final and (last + 1) % CHUNK_GRANULARITY:
        del session.data[received:]
        raise bad_request(
            f"Non-final chunks must be a multiple of {CHUNK_GRANULARITY} bytes "
            f"(this one ends at byte {last + 1})."
        )
    if session.total is not None and len(session.data) > session.total:
        raise bad_request("More bytes were sent than the upload's declared size.")
    return session.total is not None and len(session.data) == session.total


def _set_total(session: Session, total: int) -> None:
    if session.total is not None and session.total != total:
        raise bad_request(
            f"Upload size changed from {session.total} to {total} bytes within one session."
        )
    session.total = total
