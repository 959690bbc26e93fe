"""The Google Drive store: `gdrive://FOLDER_ID[/path]` or `gdrive:/path/in/My Drive`.

Drive names are untrusted and not unique. Store paths are made of names with '%', '/' and control
characters percent-escaped, so every listed name round-trips and none can split a path; staging
never turns them into local paths anyway. Where a name repeats, the oldest item wins (every
process picks the same one), duplicates are reported, and in OUTPUT duplicate folders are merged
into the oldest. Nothing is created without looking first, and a create whose answer was lost
is looked up again before it is retried, so reruns never duplicate files or folders.

What the store created itself it need not look up: a folder it just made (and found to be the
only one of its name) is empty, so its children are known until the store moves or removes
something there, or takes or releases a lock (others may have written meanwhile). Uploads into
a fresh `.bidsapp/incoming/<run>/` folder therefore cost one request per file, and go in
parallel (one Http per worker thread, every request paced).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import io
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from loguru import logger

from bidsapp.errors import (
    LocalIOError,
    LocationNotFound,
    OutputNotWritable,
    TemporaryFailure,
    UsageError,
)
from bidsapp.settings import env_number
from bidsapp.stores.base import Entry, Store, md5_of
from bidsapp.stores.drive_api import (
    EMPTY_MD5,
    FILE_FIELDS,
    FOLDER,
    SA_STORAGE_HINT,
    SHORTCUT,
    DriveClient,
    DriveNotFound,
    age,
    drive_url,
)
from bidsapp.stores.drive_auth import load_identity
from bidsapp.stores.pacer import Backoff, Pacer, shared_pacer
from bidsapp.stores.progress import Progress

if TYPE_CHECKING:
    from bidsapp.settings import Settings

DEFAULT_RPS = 10.0
SHARED_DRIVES = "Shared drives"  # gdrive:/Shared drives/NAME/path, as Drive's web UI shows it
CREATE_SHARE = 0.3  # file creation is throttled by Drive at a few per second: 3/s at the default
NOT_FOLLOWED = "Drive shortcut (not followed)"
_ESCAPE = re.compile(r"[%/\x00-\x1f\x7f]")
_LOCK = re.compile(r"^(?P<name>.+)\.(?P<token>[0-9a-f]{32})\.lock$")


@dataclass(frozen=True)
class DriveOptions:
    """What the Drive store takes from settings (or the environment for helper commands)."""

    credentials: Path | None = None
    rps: float = DEFAULT_RPS
    backoff: Backoff = field(default_factory=Backoff)
    workers: int = 16
    lock_stale: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings | None) -> DriveOptions:
        env = os.environ.get
        creds = getattr(settings, "credentials", None) or env("BIDSAPP_CREDENTIALS") or None
        rps = getattr(settings, "drive_rps", None) or env_number("DRIVE_RPS", DEFAULT_RPS)
        return cls(
            credentials=Path(creds) if creds else None,
            rps=float(rps),
            backoff=Backoff.parse(env("BIDSAPP_DRIVE_BACKOFF", "")),
            workers=max(1, int(env_number("DRIVE_WORKERS", 16))),
            lock_stale=env_number("DRIVE_LOCK_STALE", 600),
        )


def escape(name: str) -> str:
    """A Drive name as one store path component."""
    return _ESCAPE.sub(lambda m: f"%{ord(m.group()):02X}", name)


def parse_location(location: str) -> tuple[str, str]:
    """(root folder id, path below it) of gdrive://ID[/path] or gdrive:/path."""
    if location.startswith("gdrive://"):
        root, _, rest = location[len("gdrive://") :].partition("/")
        if root:
            return root, rest.strip("/")
    elif location.startswith("gdrive:/"):
        return "root", location[len("gdrive:/") :].strip("/")
    raise UsageError(
        f"cannot read the Drive location {location!r}",
        hint="write gdrive://FOLDER_ID[/path] (the ID from the folder's URL; shared drives "
        "too), gdrive:/path/from/My Drive or gdrive:/Shared drives/NAME/path",
    )


def open_drive(
    location: str,
    *,
    for_output: bool,
    role: str = "",
    create: bool = True,
    settings: Settings | None,
) -> DriveStore:
    """The store for a gdrive: SOURCE (read-only scope) or OUTPUT."""
    options = DriveOptions.from_settings(settings)
    root, path = parse_location(location)
    identity = load_identity(options.credentials, write=for_output)
    budgets = {"creates": max(0.5, options.rps * CREATE_SHARE)}
    pacer = shared_pacer(options.rps, options.backoff, budgets)
    client = DriveClient(identity, pacer, url=drive_url())
    if root == "root" and path.split("/")[0].casefold() == SHARED_DRIVES.casefold():
        root, path = shared_drive_root(client, location, path)
    return DriveStore(
        client,
        location,
        root,
        path,
        for_output=for_output,
        role=role,
        create=create,
        options=options,
    )


def shared_drive_root(client: DriveClient, location: str, path: str) -> tuple[str, str]:
    """(drive id, path inside it) for `gdrive:/Shared drives/NAME/path`, by drives.list."""
    _, _, rest = path.partition("/")
    name, _, inside = rest.partition("/")
    if not name:
        raise UsageError(
            f"{location} names no shared drive", hint="write gdrive:/Shared drives/NAME/path"
        )
    found: builtins.list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = client.execute(
            lambda s, t=token: s.drives().list(  # type: ignore[misc]
                pageSize=100, pageToken=t, fields="nextPageToken,drives(id,name)"
            ),
            "listing shared drives",
        )
        found += [d for d in page.get("drives", []) if d.get("name") == name]
        token = page.get("nextPageToken")
        if not token:
            break
    if not found:
        raise LocationNotFound(
            f"no shared drive named {name!r} is visible to the {client.describe_identity()}",
            hint="check the name, and add that identity to the shared drive as a member",
        )
    if len(found) > 1:
        raise UsageError(
            f"{len(found)} shared drives are named {name!r}; the name does not say which",
            hint="use gdrive://DRIVE_ID/path (the ID is in the shared drive's URL), or rename one",
        )
    return str(found[0]["id"]), inside.strip("/")


def _is_folder(meta: dict[str, Any]) -> bool:
    return meta.get("mimeType") == FOLDER


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


class DriveStore:
    """A folder on Google Drive; paths are relative to it."""

    chunk = 8 << 20  # download Range and resumable upload chunk (a multiple of 256 KiB)
    resumable_above = 5 << 20

    def __init__(
        self,
        client: DriveClient,
        location: str,
        root_id: str,
        path: str = "",
        *,
        for_output: bool = False,
        role: str = "",
        create: bool = True,
        options: DriveOptions | None = None,
    ) -> None:
        self.client, self.location = client, location
        self.options = options or DriveOptions()
        self.writable = for_output
        self._role = role or ("OUTPUT" if for_output else "SOURCE")
        self._lock = threading.Lock()
        self._dirs: dict[str, str] = {}
        self._files: dict[str, dict[str, Any]] = {}
        # folder id → name → what this store created there: every child, for folders it made
        self._owned: dict[str, dict[str, dict[str, Any]]] = {}
        self._warned: set[str] = set()
        self._may_delete: bool | None = None  # known after the first purge
        try:
            root = client.get(root_id, "opening the folder")
        except DriveNotFound as exc:
            raise self._not_found(location) from exc
        if not _is_folder(root):
            raise LocationNotFound(f"{self._role} {location} is not a folder")
        self.drive_id = str(root.get("driveId", ""))
        if for_output and not self.drive_id and client.identity.kind == "service account":
            # it could not own a single file there: say so now, not after converting
            raise OutputNotWritable(
                f"OUTPUT {location} is in a My Drive, where the {client.describe_identity()} "
                "cannot create files",
                hint=SA_STORAGE_HINT,
            )
        self._dirs[""] = root["id"]
        self.root_id = self._open_root(location, path, create=create and for_output)
        self._dirs = {"": self.root_id}

    def _open_root(self, location: str, path: str, *, create: bool) -> str:
        """The folder at `path`. A missing OUTPUT is made only when its parent exists (a
        mistyped path fails instead of growing a new tree), and the job says so."""
        try:
            return self._folder(path)
        except DriveNotFound as exc:
            parts = self._split(path)
            if self._role != "OUTPUT" or not parts:
                raise self._not_found(location) from exc
            try:
                self._folder("/".join(parts[:-1]))
            except DriveNotFound:
                missing = self._not_found(location)
                missing.hint = (
                    f"bidsapp creates OUTPUT's last folder only ({parts[-1]!r}), in a folder that "
                    "exists: check the path for a typo, or create the folders above it"
                )
                raise missing from exc
            if not create:
                missing = LocationNotFound(f"OUTPUT {location} does not exist yet")
                missing.creatable = True
                raise missing from exc
        made = self._folder(path, create=True)
        logger.info("OUTPUT {} did not exist: created it in its parent folder", location)
        return made

    def _not_found(self, where: str) -> LocationNotFound:
        return LocationNotFound(
            f"{self._role} {where} was not found, or is not shared with the "
            f"{self.client.describe_identity()} (Drive answers 404 for both)",
            hint="check the folder ID or path, and share the folder with that identity",
        )

    def describe(self) -> str:
        return self.location

    def prefetch(self, path: str) -> None:
        """One listing per folder below `path`: every file's metadata (md5 included) is then
        in the cache, so checking a manifest's files asks Drive nothing more."""
        with contextlib.suppress(LocationNotFound):
            for _ in self.walk(path):
                pass

    def folder_name(self, path: str) -> str:
        """The item's own name; for an `id:` path, asked from Drive (metadata only). PHI."""
        parts = self._split(path)
        if not parts:
            return ""
        if len(parts) == 1 and parts[0].startswith("id:"):
            return str(self.client.get(parts[0][3:], "reading an exam folder's name")["name"])
        return unquote(parts[-1])

    # -- paths and lookups
    def _split(self, path: str) -> list[str]:
        # '..' is an ordinary Drive name here: store paths are looked up name by name on Drive
        # and never touch the local file system.
        return [p for p in path.split("/") if p]

    def _forget(self, path: str) -> None:
        with self._lock:
            for cache in (self._dirs, self._files):
                for key in [k for k in cache if k == path or k.startswith(f"{path}/")]:
                    if key:
                        del cache[key]

    def _named(self, parent_id: str, name: str) -> list[dict[str, Any]]:
        """Children called `name` (shortcuts replaced by their targets), oldest first."""
        found = []
        for meta in self.client.children(parent_id, drive_id=self.drive_id, name=name):
            target = self._follow(meta)
            if target is not None:
                found.append(target)
        return found

    def _follow(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        if meta.get("mimeType") != SHORTCUT:
            return meta
        target_id = (meta.get("shortcutDetails") or {}).get("targetId", "")
        try:
            target = self.client.get(target_id, "following a shortcut")
        except DriveNotFound:
            self._warn_once("shortcut", "a shortcut's target is missing or not shared: skipped")
            return None
        return {**target, "name": meta["name"], "createdTime": meta.get("createdTime", "")}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("{} ({})", message, self.location)

    def _folder(self, path: str, *, create: bool = False) -> str:
        """The id of the folder at `path`; created (with its parents) when asked."""
        current, prefix = self._dirs[""], ""
        for raw in self._split(path):
            prefix = f"{prefix}/{raw}" if prefix else raw
            with self._lock:
                cached = self._dirs.get(prefix)
            if cached is not None:
                current = cached
                continue
            if raw.startswith("id:") and prefix == raw:
                meta = self.client.get(raw[3:], "opening a folder by id")
                if not _is_folder(meta):
                    raise DriveNotFound("that id is not a folder")
                current = meta["id"]
            else:
                current = self._child_folder(current, unquote(raw), create=create)
            with self._lock:
                self._dirs[prefix] = current
        return current

    def _child_folder(self, parent_id: str, name: str, *, create: bool) -> str:
        known = self._known(parent_id)
        if known is not None:  # a folder this store made: its children are known
            mine = known.get(name)
            if mine is not None and not _is_folder(mine):
                raise OutputNotWritable(f"a file in {self.location} is in the way of a folder")
            if mine is not None:
                return str(mine["id"])
            if not create:
                raise DriveNotFound("no such folder")
            made = self._create_folder(parent_id, name)
            if made is not None:
                self._adopt(parent_id, made, fresh=True)
                return str(made["id"])
        named = self._named(parent_id, name)
        folders = [m for m in named if _is_folder(m)]
        if not folders and named and create:
            raise OutputNotWritable(f"a file in {self.location} is in the way of a folder")
        if not folders:
            if not create:
                raise DriveNotFound("no such folder")
            made = self._create_folder(parent_id, name)
            folders = [m for m in self._named(parent_id, name) if _is_folder(m)]
            if not folders:
                raise TemporaryFailure("a folder Drive just created is not listed yet")
            if made is not None and [m["id"] for m in folders] == [made["id"]]:
                self._adopt(parent_id, made, fresh=True)  # ours alone: empty, known
                return str(made["id"])
        if known is not None:
            self._adopt(parent_id, folders[0])
        if len(folders) > 1:
            if self.writable:
                self._merge(folders)
            else:
                self._warn_once(
                    "dup-folder",
                    f"{len(folders)} folders share one name; the oldest is used (list them "
                    "with 'bidsapp subjects', which maps duplicates by id:)",
                )
        return str(folders[0]["id"])

    def _create_folder(self, parent_id: str, name: str) -> dict[str, Any] | None:
        """Create a folder; its metadata, or None when a lost answer made us find it instead."""
        body = {"name": name, "mimeType": FOLDER, "parents": [parent_id]}
        sent = False

        def step() -> dict[str, Any] | None:
            nonlocal sent
            if sent and any(_is_folder(m) for m in self._named(parent_id, name)):
                return None  # the lost answer was a success
            sent = True
            request = self.client.service.files().create(
                body=body, fields=FILE_FIELDS, supportsAllDrives=True
            )
            made: dict[str, Any] = request.execute(http=self.client.http, num_retries=0)
            return made

        return self.client.run(step, "creating a folder", creates=True)

    # -- what this store created (no lookups needed there)
    def _known(self, folder_id: str) -> dict[str, dict[str, Any]] | None:
        """The children of a folder this store made, or None when others may have written."""
        with self._lock:
            known = self._owned.get(folder_id)
            return None if known is None else dict(known)

    def _adopt(self, parent_id: str, meta: dict[str, Any], *, fresh: bool = False) -> None:
        """Note an item this store just created (a `fresh` folder is known to be empty)."""
        with self._lock:
            if parent_id in self._owned:
                self._owned[parent_id][str(meta["name"])] = meta
            if fresh:
                self._owned[str(meta["id"])] = {}

    def _disown(self, *folder_ids: str) -> None:
        """Children of these folders are no longer known (moved, trashed, merged)."""
        with self._lock:
            for folder_id in folder_ids:
                self._owned.pop(folder_id, None)
            for known in self._owned.values():
                for name in [n for n, m in known.items() if m["id"] in folder_ids]:
                    del known[name]

    def _merge(self, folders: list[dict[str, Any]]) -> None:
        """Two jobs created one folder at once: move the younger copies' contents to the oldest."""
        oldest = folders[0]
        for younger in folders[1:]:
            logger.warning("merging a duplicate folder into the oldest copy ({})", self.location)
            kids = {
                m["name"]: m for m in self.client.children(oldest["id"], drive_id=self.drive_id)
            }
            left = 0
            for child in self.client.children(younger["id"], drive_id=self.drive_id):
                twin = kids.get(child["name"])
                if twin is None:
                    self._reparent(child["id"], younger["id"], oldest["id"])
                elif _is_folder(twin) and _is_folder(child):
                    self._merge([twin, child])
                else:
                    left += 1
            if left == 0:
                self._trash(younger["id"])

    def _resolve(self, path: str) -> dict[str, Any]:
        """Metadata of the file or folder at `path` (DriveNotFound when missing)."""
        with self._lock:
            known = self._files.get(path)
        if known is not None:
            return known
        parts = self._split(path)
        if not parts:
            return {"id": self._dirs[""], "mimeType": FOLDER, "name": ""}
        parent = self._folder("/".join(parts[:-1]))
        raw = parts[-1]
        if raw.startswith("id:") and len(parts) == 1:
            return self.client.get(raw[3:], "opening an item by id")
        named = self._named(parent, unquote(raw))
        if not named:
            raise DriveNotFound("no such file")
        if len(named) > 1 and not self.writable:
            self._warn_once("dup-file", f"{len(named)} items share one name; the oldest is used")
        return named[0]

    # -- reading
    def list(self, path: str) -> list[Entry]:
        try:
            folder = self._folder(path)
        except DriveNotFound as exc:
            raise LocationNotFound(f"{path or '.'} is not a folder in {self.location}") from exc
        entries = []
        names = [e for _, e, _ in self._entries(folder, path)]
        counts: dict[str, int] = {}
        for e in names:
            counts[e.name] = counts.get(e.name, 0) + 1
        if any(n > 1 for n in counts.values()):
            self._warn_once("dup-list", "some items in one folder share a name")
        entries = sorted(names, key=lambda e: (e.name, e.ref))
        return entries

    def _entries(
        self, folder_id: str, path: str, *, follow: bool = True
    ) -> builtins.list[tuple[str, Entry, dict[str, Any]]]:
        """(store path, entry, metadata) of a folder's children; Google Docs are left out.

        Without `follow`, a shortcut is an entry marked skipped: inside an exam folder it could
        lead to another patient's files (and one to a file of the exam only repeats it).
        """
        out = []
        skipped = 0
        for meta in self.client.children(folder_id, drive_id=self.drive_id):
            if not follow and meta.get("mimeType") == SHORTCUT:
                name = escape(str(meta["name"]))
                shortcut = Entry(name, False, ref=f"id:{meta['id']}", skipped=NOT_FOLLOWED)
                out.append((f"{path}/{name}" if path else name, shortcut, meta))
                continue
            target = self._follow(meta)
            if target is None:
                continue
            mime = str(target.get("mimeType", ""))
            if mime.startswith("application/vnd.google-apps.") and mime != FOLDER:
                skipped += 1
                continue
            name = escape(str(target["name"]))
            child = f"{path}/{name}" if path else name
            is_dir = mime == FOLDER
            size = int(target.get("size") or 0)
            key = "" if is_dir else str(target.get("md5Checksum") or target.get("modifiedTime"))
            out.append((child, Entry(name, is_dir, size, key, f"id:{target['id']}"), target))
        if skipped:
            self._warn_once("docs", f"{skipped} Google Docs/Sheets files have no bytes: skipped")
        return out

    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        try:
            base = self._folder(path)
        except DriveNotFound as exc:
            raise LocationNotFound(f"{path or '.'} is not a folder in {self.location}") from exc
        yield from self._walk(base, path, "", {base})

    def _walk(
        self, folder_id: str, path: str, rel: str, seen: set[str]
    ) -> Iterator[tuple[str, Entry]]:
        children: builtins.list[tuple[str, Entry, dict[str, Any]]] = sorted(
            self._entries(folder_id, path, follow=False), key=lambda c: (c[1].name, age(c[2]))
        )
        taken: set[str] = set()
        folders: builtins.list[tuple[str, str, dict[str, Any]]] = []
        for full, entry, meta in children:
            name = entry.name
            if name in taken:  # a second item of the same name: give it a path of its own
                name = f"{name}%00{meta['id']}"
                full = f"{path}/{name}" if path else name
            taken.add(name)
            if entry.is_dir:
                folders.append((full, name, meta))
                continue
            if not entry.skipped:
                with self._lock:
                    self._files[full] = meta
            yield (f"{rel}{name}", dataclasses.replace(entry, name=name))
        for full, name, meta in folders:
            if meta["id"] in seen:
                self._warn_once("cycle", "a shortcut loops back into its own folder: skipped")
                continue
            yield from self._walk(meta["id"], full, f"{rel}{name}/", seen | {meta["id"]})

    def exists(self, path: str) -> bool:
        try:
            self._resolve(path)
        except LocationNotFound:
            return False
        return True

    def md5(self, path: str) -> str:
        meta = self._resolve(path)
        if _is_folder(meta) or not meta.get("md5Checksum"):
            raise IsADirectoryError(f"{path} has no md5 on Drive")
        return str(meta["md5Checksum"])

    def key(self, path: str) -> str:
        return self.md5(path)

    def read_bytes(self, path: str) -> bytes:
        meta = self._resolve(path)
        buf = io.BytesIO()
        self._fetch(meta, buf)
        return buf.getvalue()

    def read_head(self, path: str, size: int) -> bytes:
        meta = self._resolve(path)
        length = min(size, int(meta.get("size") or 0))
        if length == 0:
            return b""  # a Range on an empty file is unsatisfiable (416)
        return self.client.read_range(str(meta["id"]), 0, length - 1)

    def download(self, path: str, dest: Path) -> str:
        return self.download_many([(path, dest)])[0]

    def download_many(
        self,
        items: Sequence[tuple[str, Path]],
        *,
        progress: Progress | None = None,
        copy: bool = True,
    ) -> builtins.list[str]:
        """Download in parallel (one Http per worker thread), each verified against its md5
        (always a copy of its own, whatever `copy` says)."""
        metas = [self._resolve(path) for path, _ in items]
        total = sum(int(m.get("size") or 0) for m in metas)
        with contextlib.ExitStack() as stack:
            if progress is None:
                progress = stack.enter_context(Progress("staging", len(items), total))
            return self._in_parallel(
                [
                    partial(self._fetch_file, meta, dest, progress)
                    for meta, (_, dest) in zip(metas, items, strict=True)
                ]
            )

    def _in_parallel(self, tasks: Sequence[Callable[[], str]]) -> builtins.list[str]:
        """Run transfers on the worker threads; the first failure cancels what has not started."""
        pool = ThreadPoolExecutor(max_workers=self.options.workers)
        try:
            futures = [pool.submit(task) for task in tasks]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_file(self, meta: dict[str, Any], dest: Path, progress: Progress) -> str:
        try:
            with dest.open("w+b") as fh:
                md5 = self._fetch(meta, fh)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise LocalIOError(f"cannot stage into {dest.parent}: {exc.strerror}") from exc
            raise
        progress.advance(int(meta.get("size") or 0))
        return md5

    def _fetch(self, meta: dict[str, Any], fh: Any) -> str:
        """Download into an open file, verify the md5 (twice more on a mismatch)."""
        expected = meta.get("md5Checksum")
        if int(meta.get("size") or 0) == 0 and expected in (None, EMPTY_MD5):
            return EMPTY_MD5
        for _ in range(3):
            fh.seek(0)
            fh.truncate()
            self.client.download(str(meta["id"]), fh, self.chunk)
            got = md5_of(fh)
            if not expected or got == expected:
                return got
            logger.warning("a downloaded file does not match Drive's md5: fetching it again")
        raise TemporaryFailure(
            f"a file from {self.location} kept arriving with another md5 than Drive lists"
        )

    # -- writing
    def write_bytes(self, path: str, data: bytes) -> None:
        self._put(path, io.BytesIO(data), len(data))

    def upload(self, src: Path, path: str) -> str:
        with src.open("rb") as fh:
            return self._put(path, fh, src.stat().st_size)

    def upload_many(self, items: Sequence[tuple[Path, str]]) -> builtins.list[str]:
        """Upload in parallel (one Http per worker thread), each verified against its md5."""
        # Folders first, one at a time: parallel uploads must never race to create one.
        for folder in sorted({"/".join(self._split(path)[:-1]) for _, path in items}):
            self._folder(folder, create=True)
        total = sum(src.stat().st_size for src, _ in items)
        with Progress("publishing", len(items), total) as progress:
            return self._in_parallel(
                [partial(self._upload_one, src, path, progress) for src, path in items]
            )

    def _upload_one(self, src: Path, path: str, progress: Progress) -> str:
        md5 = self.upload(src, path)
        progress.advance(src.stat().st_size)
        return md5

    def _put(self, path: str, stream: Any, size: int) -> str:
        parts = self._split(path)
        parent_id = self._folder("/".join(parts[:-1]), create=True)
        name = unquote(parts[-1])
        local = md5_of(stream)
        known = self._known(parent_id)
        if known is not None:  # a folder this store made: no need to look
            existing = [known[name]] if name in known else []
        else:
            existing = self._named(parent_id, name)
        if any(_is_folder(m) for m in existing):
            raise OutputNotWritable(f"a folder is in the way of {path} in {self.location}")
        for duplicate in existing[1:]:
            self._trash(duplicate["id"])

        def find() -> dict[str, Any] | None:
            named = [m for m in self._named(parent_id, name) if not _is_folder(m)]
            return named[0] if named else None

        file_id = existing[0]["id"] if existing else ""
        for _ in range(2):
            meta = self.client.upload(
                stream,
                size=size,
                parent_id=parent_id,
                name=name,
                file_id=file_id,
                resumable_above=self.resumable_above,
                chunk=self.chunk,
                find=find,
            )
            if meta.get("md5Checksum") == local:
                self._forget(path)
                if known is not None:
                    self._adopt(parent_id, {**meta, "name": name})
                return local
            logger.warning("an uploaded file's md5 differs from the local file: sending it again")
            file_id = str(meta["id"])
        raise TemporaryFailure(f"an upload to {self.location} kept arriving with another md5")

    def make_folder(self, path: str) -> None:
        self._folder(path, create=True)

    def move(self, src: str, dst: str) -> None:
        meta = self._resolve(src)
        if self.exists(dst):
            raise FileExistsError(f"{dst} exists")
        parts = self._split(dst)
        parent_id = self._folder("/".join(parts[:-1]))
        name = unquote(parts[-1])
        old = [p for p in meta.get("parents", []) if p != parent_id]
        sent = False

        def step() -> None:
            nonlocal sent
            if sent:
                now = self.client.get(str(meta["id"]), "checking a move")
                if now.get("parents") == [parent_id] and now.get("name") == name:
                    return  # the lost answer was a success
            sent = True
            self.client.service.files().update(
                fileId=meta["id"],
                body={"name": name} if name != meta.get("name") else {},
                addParents=parent_id,
                removeParents=",".join(old) or None,
                fields="id",
                supportsAllDrives=True,
            ).execute(http=self.client.http, num_retries=0)

        self.client.run(step, "moving an item")
        self._disown(parent_id, *old)
        self._forget(src)
        self._forget(dst)

    def _reparent(self, file_id: str, old: str, new: str) -> None:
        self._disown(old, new)
        self.client.execute(
            lambda s: s.files().update(
                fileId=file_id, addParents=new, removeParents=old, supportsAllDrives=True
            ),
            "merging a duplicate folder",
        )

    def remove(self, path: str, *, purge: bool = False) -> None:
        try:
            meta = self._resolve(path)
        except LocationNotFound:
            return
        (self._purge if purge else self._trash)(str(meta["id"]))
        self._forget(path)

    def _purge(self, file_id: str) -> None:
        """Delete outright (bookkeeping: left in the trash, it piles up, two lock files and an
        upload folder per job). Only a shared drive's Managers, or a file's owner in a My
        Drive, may: the first refusal makes this store trash from then on (Content managers
        may trash, nothing more)."""
        if self._may_delete is not False:
            self._disown(file_id)
            try:
                self.client.execute(
                    lambda s: s.files().delete(fileId=file_id, supportsAllDrives=True),
                    "deleting bookkeeping",
                )
                self._may_delete = True
                return
            except DriveNotFound:
                return
            except OutputNotWritable:
                self._may_delete = False
                logger.debug("this identity may trash but not delete: bookkeeping goes to trash")
        self._trash(file_id)

    def _trash(self, file_id: str) -> None:
        # Trash, not delete: 30 days to undo (a replaced publication), and all Content
        # managers of a shared drive may do.
        self._disown(file_id)
        with contextlib.suppress(DriveNotFound):
            self.client.execute(
                lambda s: s.files().update(
                    fileId=file_id, body={"trashed": True}, supportsAllDrives=True
                ),
                "removing an item",
            )

    # -- locks
    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Mutual exclusion between jobs: lock files in .bidsapp/locks, the oldest live one wins.

        Each contender creates its own `<name>.<token>.lock` and waits until it is the oldest;
        a holder rewrites its file every stale/4 seconds, and a lock file not rewritten for
        `stale` seconds (judged against the waiter's own, so clocks never matter) is dropped.
        """
        folder = self._folder(".bidsapp/locks", create=True)
        mine_name = f"{name}.{uuid.uuid4().hex}.lock"
        stale = self.options.lock_stale
        stop = threading.Event()
        mine = self._touch(folder, mine_name, "")
        beat = threading.Thread(
            target=self._heartbeat, args=(folder, mine_name, stop, stale / 4), daemon=True
        )
        beat.start()
        told = ""
        try:
            while True:
                live = [
                    m
                    for m in self.client.children(folder, drive_id=self.drive_id)
                    if (match := _LOCK.match(str(m.get("name", ""))))
                    and match.group("name") == name
                ]
                me = next((m for m in live if m["id"] == mine), None)
                if me is None:  # someone judged us stale: queue again
                    mine = self._touch(folder, mine_name, "")
                    continue
                cutoff = _time(me["modifiedTime"]).timestamp() - stale
                for other in live:
                    if other is not me and _time(other["modifiedTime"]).timestamp() < cutoff:
                        logger.warning("removing a stale lock left by a job that died")
                        self._purge(other["id"])
                live = [
                    m for m in live if m is me or _time(m["modifiedTime"]).timestamp() >= cutoff
                ]
                holder = min(live, key=age)
                if holder["id"] == mine:
                    break
                if holder["id"] != told:  # once per holder: say what is awaited, and how long
                    told = holder["id"]
                    _say_waiting(name, holder, me, stale)
                stop.wait(min(5.0, max(0.2, stale / 20)))
            with self._lock:
                self._dirs = {"": self.root_id}  # others may have moved things meanwhile
                self._owned.clear()
            yield
        finally:
            stop.set()
            beat.join(timeout=30)
            with contextlib.suppress(Exception):
                self._purge(mine)
            with self._lock:
                self._dirs = {"": self.root_id}
                self._owned.clear()

    def _touch(self, folder: str, name: str, file_id: str) -> str:
        """Create (or rewrite, which bumps modifiedTime) a small lock file; returns its id."""
        data = io.BytesIO(f"{os.getpid()} {datetime.now().isoformat()}\n".encode())

        def find() -> dict[str, Any] | None:
            named = self.client.children(folder, drive_id=self.drive_id, name=name)
            return named[0] if named else None

        meta = self.client.upload(
            data,
            size=len(data.getvalue()),
            parent_id=folder,
            name=name,
            file_id=file_id,
            resumable_above=self.resumable_above,
            chunk=self.chunk,
            find=find,
        )
        return str(meta["id"])

    def _heartbeat(self, folder: str, name: str, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):
                found = self.client.children(folder, drive_id=self.drive_id, name=name)
                if found:
                    self._touch(folder, name, str(found[0]["id"]))


def _say_waiting(name: str, holder: dict[str, Any], me: dict[str, Any], stale: float) -> None:
    """Another job holds the lock: until when this job may wait, on this machine's clock (the
    holder's lock goes stale `stale` seconds after its last refresh, as Drive's clock says)."""
    left = _time(holder["modifiedTime"]).timestamp() + stale - _time(me["modifiedTime"]).timestamp()
    until = datetime.now() + timedelta(seconds=max(left, 0.0))
    logger.warning(
        "waiting for the lock on {} held by another job (.bidsapp/locks/{}): until it is "
        "released, or at the latest {} if that job is gone and its lock goes stale",
        name,
        holder.get("name", "?"),
        until.strftime("%H:%M:%S"),
    )


_CHECK: Store = DriveStore.__new__(DriveStore)  # mypy proves DriveStore implements Store


def whoami(credentials: Path | None) -> str:
    """`bidsapp auth whoami`: the identity bidsapp would use for Drive, checked with one call."""
    identity = load_identity(credentials, write=False)
    DriveClient(identity, Pacer(5, backoff=Backoff(0.5, 4, 3)), url=drive_url()).email()
    return identity.describe()
