"""The Emulator object: start/stop, identities, direct seeding and inspection, faults, stats."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bidsapp_sandbox.emulator.blobs import BlobStore
from bidsapp_sandbox.emulator.faults import Fault, FaultSchedule
from bidsapp_sandbox.emulator.files_api import DriveApi
from bidsapp_sandbox.emulator.metering import Meter
from bidsapp_sandbox.emulator.model import FOLDER, SHORTCUT, FileRec, State
from bidsapp_sandbox.emulator.resources import file_resource
from bidsapp_sandbox.emulator.server import Context, EmulatorHTTPServer
from bidsapp_sandbox.emulator.tokens import DRIVE as DRIVE_SCOPE
from bidsapp_sandbox.emulator.tokens import TokenAuthority
from bidsapp_sandbox.emulator.uploads import Sessions

STATE_FILE = "state.json"
SAVE_INTERVAL = 1.0  # seconds between snapshots of a persistent emulator's metadata


class Emulator:
    """A Google Drive v3 service on 127.0.0.1, reached by the real client over HTTP.

    The direct methods (folder, file, share, tree, …) seed and inspect the state without HTTP and
    without permission checks: they are the test's hands, not a client's.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        latency: float = 0.0,
        seed: int = 0,
        bandwidth: float | None = None,
        quota_per_token: tuple[int, float] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.tokens = TokenAuthority()
        state = State()
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            saved = self.state_dir / STATE_FILE
            if saved.exists():
                data = json.loads(saved.read_text())
                state = State.from_json(data["drive"])
                self.tokens.load(data["tokens"])
        blobs = BlobStore(self.state_dir / "blobs" if self.state_dir is not None else None)
        self.api = DriveApi(state, blobs)
        self.faults = FaultSchedule()
        self.faults.set([], seed)
        self._seed = seed
        self.meter = Meter(quota_per_token)
        self.context = Context(
            api=self.api,
            tokens=self.tokens,
            faults=self.faults,
            meter=self.meter,
            sessions=Sessions(),
            latency=latency,
            bandwidth=bandwidth,
        )
        self._address = (host, port)
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop_saving = threading.Event()
        self._saver: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Emulator:
        server = EmulatorHTTPServer(self._address, self.context)
        host, port = server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        self.context.base_url = f"http://{host_text}:{port}"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name="drive-emulator",
        )
        self._thread.start()
        if self.state_dir is not None:
            self._stop_saving.clear()
            self._saver = threading.Thread(target=self._save_loop, daemon=True)
            self._saver.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._saver is not None:
            self._stop_saving.set()
            self._saver.join()
            self._saver = None
        self.save()

    def __enter__(self) -> Emulator:
        return self.start() if self._server is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if not self.context.base_url:
            raise RuntimeError("the emulator is not started")
        return self.context.base_url

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    @property
    def latency(self) -> float:
        return self.context.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.context.latency = seconds

    @property
    def bandwidth(self) -> float | None:
        return self.context.bandwidth

    @bandwidth.setter
    def bandwidth(self, bytes_per_second: float | None) -> None:
        self.context.bandwidth = bytes_per_second

    def save(self) -> None:
        """Write the metadata (blobs are already on disk) if the emulator has a state_dir."""
        if self.state_dir is None:
            return
        with self.api.lock:
            data = {"drive": self.api.state.to_json(), "tokens": self.tokens.to_json()}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.state_dir / STATE_FILE)

    def _save_loop(self) -> None:
        while not self._stop_saving.wait(SAVE_INTERVAL):
            self.save()

    # --- identities ---------------------------------------------------------------------------
    def service_account(
        self, email: str = "bidsapp@proj.iam.gserviceaccount.com", dest: Path | None = None
    ) -> Path:
        """Write a service-account key file whose token_uri is this emulator; return its path."""
        content = self.tokens.service_account(email, self.token_uri)
        with self.api.lock:
            self.api.state.root_of(email)
        return _write_secret(dest or self._default_path(email, "sa"), content)

    def user_token(
        self,
        email: str = "lab@example.org",
        dest: Path | None = None,
        scopes: Sequence[str] = (DRIVE_SCOPE,),
    ) -> Path:
        """Write an authorized-user token file (refresh token, client id/secret, token_uri)
        whose consent granted `scopes` (e.g. drive.readonly, as `auth login --readonly`)."""
        content = self.tokens.user_token(email, self.token_uri, scopes)
        with self.api.lock:
            self.api.state.root_of(email)
        return _write_secret(dest or self._default_path(email, "user"), content)

    def oauth_client(self, email: str = "lab@example.org", dest: Path | None = None) -> Path:
        """Write an OAuth client file (Desktop app) whose auth_uri and token_uri are this
        emulator; its consent screen signs `email` in and allows at once."""
        content = self.tokens.oauth_client(email, self.url)
        with self.api.lock:
            self.api.state.root_of(email)
        return _write_secret(dest or self._default_path(email, "client"), content)

    def _default_path(self, email: str, kind: str) -> Path:
        if self.state_dir is None:
            raise ValueError("pass dest= (the emulator has no state_dir to put the file in)")
        return self.state_dir / f"{kind}-{email.replace('@', '_at_')}.json"

    def revoke(self, email: str) -> None:
        """Refresh tokens and assertions of `email` now get invalid_grant; its tokens stop."""
        self.tokens.revoke(email)

    def expire_tokens(self) -> None:
        """Every access token issued so far now answers 401 (clients must refresh)."""
        self.tokens.expire_all()

    # --- seeding ------------------------------------------------------------------------------
    def my_drive(self, email: str) -> str:
        with self.api.lock:
            return self.api.state.root_of(email).id

    def shared_drive(self, name: str, members: dict[str, str] | None = None) -> str:
        with self.api.lock:
            return self.api.state.add_drive(name, dict(members or {})).id

    def _parent(self, parent: str | None, owner: str | None) -> FileRec:
        state = self.api.state
        if parent is None:
            if owner is None:
                raise ValueError("give parent= or owner= (whose My Drive root)")
            return state.root_of(owner)
        if parent not in state.files:
            raise KeyError(f"no such parent id {parent!r}")
        return state.files[parent]

    def _add(
        self, name: str, mime: str, parent: str | None, owner: str | None, **extra: Any
    ) -> str:
        with self.api.lock:
            folder = self._parent(parent, owner)
            rec = self.api.state.add_file(
                name=name,
                mime=mime,
                parent=folder.id,
                owner=None if folder.drive_id else (owner or folder.owner),
                drive_id=folder.drive_id,
                **extra,
            )
            return rec.id

    def folder(self, name: str, parent: str | None = None, owner: str | None = None) -> str:
        return self._add(name, FOLDER, parent, owner)

    def file(
        self,
        name: str,
        data: bytes,
        parent: str | None = None,
        owner: str | None = None,
        mime: str = "application/octet-stream",
    ) -> str:
        fid = self._add(name, mime, parent, owner)
        if not mime.startswith("application/vnd.google-apps."):
            with self.api.lock:
                rec = self.api.state.files[fid]
                rec.blob, rec.size = self.api.blobs.put(data), len(data)
        return fid

    def shortcut(
        self, name: str, target: str, parent: str | None = None, owner: str | None = None
    ) -> str:
        return self._add(name, SHORTCUT, parent, owner, shortcut_target=target)

    def upload_tree(
        self, local_dir: Path, parent: str | None = None, owner: str | None = None
    ) -> dict[str, str]:
        """Copy a local folder under `parent`; returns relative POSIX path → id (folders too)."""
        local_dir = Path(local_dir)
        ids: dict[str, str] = {}
        top = self._parent(parent, owner).id
        for path in sorted(local_dir.rglob("*")):
            rel = path.relative_to(local_dir)
            above = ids[rel.parent.as_posix()] if rel.parent != Path(".") else top
            if path.is_dir():
                ids[rel.as_posix()] = self.folder(path.name, above, owner)
            elif path.is_file():
                ids[rel.as_posix()] = self.file(path.name, path.read_bytes(), above, owner)
        return ids

    def share(self, file_id: str, email: str, role: str = "reader") -> None:
        if role not in ("reader", "commenter", "writer", "fileOrganizer", "organizer"):
            raise ValueError(f"unknown role {role!r}")
        with self.api.lock:
            self.api.state.files[file_id].shares[email] = role

    # --- inspection ---------------------------------------------------------------------------
    def tree(self, parent: str) -> dict[str, bytes]:
        """Relative path → content of every non-trashed file below `parent` (for assertions)."""
        out: dict[str, bytes] = {}
        with self.api.lock:
            state = self.api.state
            stack = [(parent, "")]
            while stack:
                folder, prefix = stack.pop()
                for child in state.children(folder):
                    if child.trashed:
                        continue
                    rel = f"{prefix}{child.name}"
                    if child.is_folder:
                        stack.append((child.id, rel + "/"))
                    elif child.blob is not None:
                        if rel in out:
                            raise ValueError(f"two files at {rel!r}: use listing() to see both")
                        out[rel] = self.api.blobs.get(child.blob)
        return out

    def listing(self, parent: str) -> list[dict[str, Any]]:
        """Full metadata of the direct children of `parent`, duplicates and trashed included."""
        with self.api.lock:
            state = self.api.state
            return [
                file_resource(state, child, child.owner or "") for child in state.children(parent)
            ]

    def metadata(self, file_id: str) -> dict[str, Any]:
        with self.api.lock:
            rec = self.api.state.files[file_id]
            return file_resource(self.api.state, rec, rec.owner or "")

    def content(self, file_id: str) -> bytes:
        with self.api.lock:
            blob = self.api.state.files[file_id].blob
        if blob is None:
            raise ValueError(f"{file_id} has no content (folder, shortcut or Google Doc)")
        return self.api.blobs.get(blob)

    # --- faults and statistics ----------------------------------------------------------------
    def set_faults(self, faults: Sequence[Fault], seed: int | None = None) -> None:
        self.faults.set(faults, self._seed if seed is None else seed)

    def stats(self) -> dict[str, Any]:
        return self.meter.snapshot(self.faults.injected)

    def request_log(self) -> list[dict[str, Any]]:
        """The latest requests (OAuth ones included), oldest first: op, method, path, range
        (the Range header or None), bytes (of the reply body) and status."""
        return self.meter.log()

    def reset_stats(self) -> None:
        self.meter.reset()
        self.faults.injected = 0


def _write_secret(path: Path, content: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(content, fh, indent=2)
    return path
