"""The HTTP side: routes Drive v3 and token requests, injects faults, throttles responses."""

from __future__ import annotations

import json
import re
import socket
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bidsapp_sandbox.emulator import errors
from bidsapp_sandbox.emulator import fields as fieldmask
from bidsapp_sandbox.emulator.errors import ApiError, OAuthError
from bidsapp_sandbox.emulator.faults import Fault, FaultSchedule
from bidsapp_sandbox.emulator.files_api import Content, DriveApi, flag
from bidsapp_sandbox.emulator.metering import Meter
from bidsapp_sandbox.emulator.tokens import TokenAuthority
from bidsapp_sandbox.emulator.uploads import Sessions, json_body, parse_multipart, receive

_FILE = re.compile(r"^/(upload/)?drive/v3/files(?:/([^/]+))?$")
_DRIVES = re.compile(r"^/drive/v3/drives(?:/([^/]+))?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CONSENT = "/o/oauth2/auth"
WRITES = ("create", "update", "delete", "upload")
_STATUS_FAULTS = {
    "rate403": (403, "rateLimitExceeded"),
    "userRate403": (403, "userRateLimitExceeded"),
    "daily403": (403, "dailyLimitExceeded"),
    "429": (429, "rateLimitExceeded"),
}


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps(value).encode()
    return Reply(
        status, body, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
    )


@dataclass
class Context:
    """Everything the request handlers share; owned by the Emulator."""

    api: DriveApi
    tokens: TokenAuthority
    faults: FaultSchedule
    meter: Meter
    sessions: Sessions
    latency: float = 0.0
    bandwidth: float | None = None
    base_url: str = ""


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: Context) -> None:
        self.context = context
        super().__init__(address, Handler)


def operation(method: str, path: str, params: dict[str, str]) -> str:
    """The operation name faults and statistics use for a request."""
    if path in ("/token", CONSENT):  # the OAuth server, counted apart from Drive requests
        return "token"
    if path.startswith("/upload/"):
        return "upload"
    if _DRIVES.match(path):
        return "drives"
    if path == "/drive/v3/about":
        return "about"
    match = _FILE.match(path)
    if match is None:
        return "other"
    if match.group(2) is None:
        return "list" if method == "GET" else "create"
    if method == "GET":
        return "media" if params.get("alt") == "media" else "get"
    return {"PATCH": "update", "PUT": "update", "DELETE": "delete"}.get(method, "other")


def _unimplemented(method: str, path: str) -> ApiError:
    return ApiError(404, "notFound", f"The emulator does not implement {method} {path}.")


def _select(value: dict[str, Any], fields: str | None) -> Any:
    return fieldmask.apply(value, fieldmask.parse_fields(fields)) if fields else value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bidsapp-drive-emulator"
    timeout = 120  # an idle keep-alive connection frees its thread eventually
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the client's
    # delayed ACK add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the demo read stats(), not an access log."""

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PATCH(self) -> None:
        self.dispatch("PATCH")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    # --- one request --------------------------------------------------------------------------
    def dispatch(self, method: str) -> None:
        ctx = self.server.context
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self.read_body()
        if body is None:  # the client went away mid-request
            self.close_connection = True
            return
        op = operation(method, url.path, params)
        ctx.meter.arrive(op)
        session_put = method == "PUT" and "upload_id" in params
        delay, fault = ctx.faults.pick(op, authenticated=op != "token" and not session_put)
        if ctx.latency + delay > 0:
            time.sleep(ctx.latency + delay)
        try:
            self.inject_status_fault(fault, op)
            reply = self.route(method, url.path, params, body, op)
        except ApiError as exc:
            reply = json_reply(exc.status, exc.body())
        except OAuthError as exc:
            reply = json_reply(exc.status, exc.body())
        except Exception as exc:  # an emulator bug: say so loudly, answer like a Google 500
            traceback.print_exc(file=sys.stderr)
            reply = json_reply(500, errors.server_error(500).body())
            sys.stderr.write(f"drive emulator: {method} {url.path} failed: {exc!r}\n")
        ctx.meter.answered(
            reply.status,
            op=op,
            method=method,
            path=url.path,
            range=self.headers.get("Range"),
            bytes=len(reply.body),
        )
        self.send(reply, fault)

    def read_body(self) -> bytes | None:
        """The request body, or None if the client stopped sending it."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self.read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
        except OSError:
            return None
        return data if len(data) == length else None

    def read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def inject_status_fault(self, fault: Fault | None, op: str) -> None:
        """Raise the error an injected status fault answers with instead of doing the request."""
        if fault is None or fault.kind in ("reset", "truncate"):
            return
        if fault.kind == "token_expiry":
            caller = self.server.context.tokens.caller(self.headers.get("Authorization"))
            if caller is not None:
                self.server.context.tokens.expire(caller[1])
            raise errors.unauthenticated()
        if op == "token":
            status = int(fault.kind) if fault.kind.isdigit() else 503
            raise OAuthError(status, "temporarily_unavailable", "Injected token endpoint fault")
        if fault.kind in _STATUS_FAULTS:
            status, reason = _STATUS_FAULTS[fault.kind]
            raise errors.rate_limited(status, reason)
        raise errors.server_error(int(fault.kind))

    def caller(self, op: str = "") -> tuple[str, str]:
        tokens = self.server.context.tokens
        found = tokens.caller(self.headers.get("Authorization"))
        if found is None:
            raise errors.unauthenticated()
        if self.server.context.meter.over_quota(found[1]):
            raise errors.rate_limited(403, "rateLimitExceeded")
        if op in WRITES and not tokens.can_write(found[1]):
            raise errors.insufficient_scopes()
        return found

    def route(self, method: str, path: str, params: dict[str, str], body: bytes, op: str) -> Reply:
        ctx = self.server.context
        if op == "token" and path == CONSENT:
            # The consent screen of a test identity: signed in and allowed at once.
            return Reply(302, b"", {"Location": ctx.tokens.consent(params)})
        if op == "token":
            if method != "POST":
                raise OAuthError(405, "invalid_request", "Use POST.")
            form = dict(parse_qsl(body.decode("utf-8", "replace")))
            auth = self.headers.get("Authorization")
            return json_reply(200, ctx.tokens.grant(form, f"{ctx.base_url}/token", auth))
        if op == "upload" and "upload_id" in params and method == "PUT":
            return self.resumable_put(params["upload_id"], body)
        email, _ = self.caller(op)
        if op == "drives" and method == "GET":
            match = _DRIVES.match(path)
            assert match is not None
            drive_id = match.group(1)
            with ctx.api.lock:
                value = (
                    ctx.api.drive_resource(email, drive_id)
                    if drive_id
                    else ctx.api.list_drives(email)
                )
            return json_reply(200, _select(value, params.get("fields")))
        if op == "about" and method == "GET":
            with ctx.api.lock:
                return json_reply(200, _select(ctx.api.about(email), params.get("fields")))
        match = _FILE.match(path)
        if match is None:
            raise _unimplemented(method, path)
        file_id = match.group(2)
        if op == "upload":
            return self.upload(email, method, file_id, params, body)
        if op == "list":
            return self.files_list(email, params)
        if op == "create":
            return self.store(email, None, params, json_body(body), None)
        if file_id is None:
            raise _unimplemented(method, path)
        if op == "get":
            return self.files_get(email, file_id, params)
        if op == "media":
            return self.files_media(email, file_id, params)
        if op == "update":
            return self.store(email, file_id, params, json_body(body), None)
        if op == "delete":
            return self.files_delete(email, file_id, params)
        raise _unimplemented(method, path)

    # --- files --------------------------------------------------------------------------------
    def files_list(self, email: str, params: dict[str, str]) -> Reply:
        api = self.server.context.api
        with api.lock:
            return json_reply(200, api.list_files(email, params))

    def files_get(self, email: str, file_id: str, params: dict[str, str]) -> Reply:
        api = self.server.context.api
        with api.lock:
            rec, _ = api.visible(email, file_id, flag(params, "supportsAllDrives"))
            return json_reply(200, api.render(rec, email, params.get("fields")))

    def files_media(self, email: str, file_id: str, params: dict[str, str]) -> Reply:
        api = self.server.context.api
        with api.lock:
            rec, data = api.media(email, file_id, flag(params, "supportsAllDrives"))
            headers = {"Content-Type": rec.mime, "Accept-Ranges": "bytes"}
        spec = self.headers.get("Range")
        if not spec:
            return Reply(200, data, headers)
        match = _RANGE.match(spec.strip())
        size = len(data)
        if match is None or match.group(1) == match.group(2) == "":
            return Reply(416, b"", {"Content-Range": f"bytes */{size}"})
        if match.group(1) == "":
            first, last = max(0, size - int(match.group(2))), size - 1
        else:
            first = int(match.group(1))
            last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        if first >= size or last < first:
            return Reply(416, b"", {"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return Reply(206, data[first : last + 1], headers)

    def store(
        self,
        email: str,
        file_id: str | None,
        params: dict[str, str],
        meta: dict[str, Any],
        content: Content | None,
    ) -> Reply:
        api = self.server.context.api
        with api.lock:
            if file_id is None:
                rec = api.create(email, meta, content, flag(params, "supportsAllDrives"))
            else:
                rec = api.update(email, file_id, meta, params, content)
            return json_reply(200, api.render(rec, email, params.get("fields")))

    def files_delete(self, email: str, file_id: str, params: dict[str, str]) -> Reply:
        api = self.server.context.api
        with api.lock:
            api.delete(email, file_id, flag(params, "supportsAllDrives"))
        return Reply(204)

    # --- uploads ------------------------------------------------------------------------------
    def upload(
        self, email: str, method: str, file_id: str | None, params: dict[str, str], body: bytes
    ) -> Reply:
        if (file_id is None) != (method == "POST"):
            raise errors.bad_request(f"{method} is not an upload method for this path.")
        kind = params.get("uploadType", "")
        content_type = self.headers.get("Content-Type", "")
        if kind == "media":
            return self.store(email, file_id, params, {}, Content(body, content_type or None))
        if kind == "multipart":
            meta, content = parse_multipart(body, content_type)
            return self.store(email, file_id, params, meta, content)
        if kind == "resumable":
            return self.resumable_start(email, file_id, params, json_body(body))
        raise errors.bad_request(
            f"Invalid uploadType {kind!r}: use media, multipart or resumable.",
            location="uploadType",
        )

    def resumable_start(
        self, email: str, file_id: str | None, params: dict[str, str], meta: dict[str, Any]
    ) -> Reply:
        ctx = self.server.context
        headers = {k.lower(): v for k, v in self.headers.items()}
        with ctx.api.lock:
            all_drives = flag(params, "supportsAllDrives")
            if file_id is None:
                ctx.api.check_create(
                    email, meta, headers.get("x-upload-content-type"), True, all_drives
                )
            else:
                ctx.api.visible(email, file_id, all_drives)
        session = ctx.sessions.open(email, meta, params, file_id, headers)
        target = f"/{file_id}" if file_id else ""
        # The session URL uses the host the client reached us by (it may not be 127.0.0.1).
        host = self.headers.get("Host")
        base = f"http://{host}" if host else ctx.base_url
        location = (
            f"{base}/upload/drive/v3/files{target}?uploadType=resumable&upload_id={session.id}"
        )
        return Reply(200, b"", {"Location": location, "X-GUploader-UploadID": session.id})

    def resumable_put(self, upload_id: str, body: bytes) -> Reply:
        ctx = self.server.context
        session = ctx.sessions.get(upload_id)
        with ctx.api.lock:  # one session's chunks are applied one at a time
            if not receive(session, self.headers.get("Content-Range"), body):
                headers = {}
                if session.data:
                    headers["Range"] = f"bytes=0-{len(session.data) - 1}"
                return Reply(308, b"", headers)
            if session.result is None:
                content = Content(bytes(session.data), session.mime)
                reply = self.store(
                    session.caller, session.file_id, session.params, session.meta, content
                )
                session.result = json.loads(reply.body)
                session.data = bytearray()
            return json_reply(200, session.result)

    # --- the response -------------------------------------------------------------------------
    def send(self, reply: Reply, fault: Fault | None) -> None:
        kind = fault.kind if fault else None
        if kind == "reset":
            self.reset_connection()
            return
        body = reply.body
        # A truncated reply announces its whole body (at least one byte) and sends half.
        announced = max(len(body), 1) if kind == "truncate" else len(body)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(announced))
        if kind == "truncate":
            self.send_header("Connection", "close")
            self.close_connection = True
            body = body[: len(body) // 2]
        self.end_headers()
        self.write(body)

    def reset_connection(self) -> None:
        # Half a status line, then RST (SO_LINGER 0): the client sees ConnectionResetError, not a
        # clean end of stream that httplib2 would silently retry.
        try:
            self.wfile.write(b"HTTP/1.1 200")
            self.wfile.flush()
        except OSError:
            pass
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def write(self, data: bytes) -> None:
        rate = self.server.context.bandwidth
        if not rate or not data:
            self.wfile.write(data)
            return
        piece = max(1024, int(rate / 20))
        started = time.monotonic()
        for offset in range(0, len(data), piece):
            self.wfile.write(data[offset : offset + piece])
            due = started + (offset + piece) / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
