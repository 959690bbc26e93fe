"""Publish: the subject's tree into OUTPUT, verified, idempotent, never half-written.

1. upload into .bidsapp/incoming/<tag>-<run>/ and verify every file (size and md5), then write
   the pending manifest there;
2. move the existing copy into .bidsapp/replaced/<tag>-<run>/, then the new one into place;
3. write the manifest last: a subject counts as published only when its manifest is present and
   matches its files.
A rerun first repairs what an interrupted run left (rolling it forward once its upload was
verified, dropping it otherwise), then decides from the manifest whether there is work to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from bidsapp.bids import SubjectSession
from bidsapp.errors import UsageError
from bidsapp.stores import Store

SHARED_FOLDERS = (
    ".bidsapp/incoming",
    ".bidsapp/replaced",
    ".bidsapp/status",
    ".bidsapp/locks",
    ".bidsapp/failed",
    "derivatives/bidsapp",
)
FAULT_ENV = "BIDSAPP_FAULT_AT"
FAULT_SIGNAL_ENV = "BIDSAPP_FAULT_SIGNAL"
# The points of the protocol at which a test may make the process kill itself.
FAULT_POINTS = (
    "upload",
    "uploaded",
    "pending",
    "set-aside-data",
    "set-aside",
    "moved-data",
    "moved",
    "manifest",
    "cleaned",
)
MANIFEST = "manifest.json"
DERIVATIVE = "derivatives/bidsapp"
# Reports, gate verdicts, manifests and job logs: not BIDS files, so in folders the validator
# never looks into. With -r it validates derivatives/bidsapp as a dataset of its own, reads no
# .bidsignore there and reports anything outside the schema (a `log/` folder, an .html) as an
# error; of the folders it skips in every dataset (`code/`, `sourcedata/`, `stimuli/`, and
# names starting with a dot), a dot-folder is the one that claims to be nothing BIDS defines.
RECORDS = ".log"
INDEX = f"{DERIVATIVE}/{RECORDS}/index.html"
PENDING = "pending-manifest.json"


@dataclass(frozen=True, order=True)
class Target(SubjectSession):
    """A job's (subject, session), with the places in OUTPUT its publication owns."""

    @property
    def data(self) -> str:
        return self.folder

    @property
    def deriv(self) -> str:
        return f"{DERIVATIVE}/{self.folder}/{RECORDS}"

    @property
    def manifest(self) -> str:
        return f"{self.deriv}/{MANIFEST}"

    @property
    def source(self) -> str:
        return f"sourcedata/{self.folder}"

    @property
    def parts(self) -> tuple[tuple[str, str], ...]:
        """Every place a job owns; a part missing from an upload still replaces the old one."""
        return (("data", self.data), ("deriv", self.deriv), ("source", self.source))


def fault(point: str) -> None:
    """Signal this process at a named protocol step when the test environment asks for it.

    SIGKILL by default; BIDSAPP_FAULT_SIGNAL=TERM (preemption) or STOP (freeze here, so a test
    can send a real signal from outside) picks another.
    """
    if os.environ.get(FAULT_ENV) == point:
        name = os.environ.get(FAULT_SIGNAL_ENV, "KILL")
        logger.warning("fault injection: SIG{} at '{}'", name, point)
        os.kill(os.getpid(), signal.Signals[f"SIG{name}"])


def init_shared(store: Store) -> None:
    """Create the shared folders before jobs fan out."""
    for folder in SHARED_FOLDERS:
        store.make_folder(folder)


def read_manifest(store: Store, target: Target) -> dict[str, Any] | None:
    """The manifest if present and parseable."""
    if not store.exists(target.manifest):
        return None
    try:
        data: dict[str, Any] = json.loads(store.read_bytes(target.manifest))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list) or not data["files"]:
        return None
    return data


def verify(store: Store, manifest: dict[str, Any], *, deep: bool = False) -> bool:
    """Every file the manifest lists is present, unchanged: by the key the store keeps of it
    (no byte read on disk: size and modification time), or with `deep` (--verify) by its md5."""
    try:
        for item in manifest["files"]:
            if not store.exists(item["path"]):
                return False
            if deep or "key" not in item:  # manifests written before keys: by md5
                if store.md5(item["path"]) != item["md5"]:
                    return False
            elif store.key(item["path"]) != item["key"]:
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False  # a damaged publication (a folder where a file was, a hand-edited entry)
    return True


def published_manifest(
    store: Store, target: Target, *, deep: bool = False
) -> dict[str, Any] | None:
    """The manifest of a complete publication, else None (`deep`: every md5 checked)."""
    manifest = read_manifest(store, target)
    if manifest is None:
        return None
    for _, folder in target.parts:
        store.prefetch(folder)
    return manifest if verify(store, manifest, deep=deep) else None


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _runs(store: Store, folder: str, tag: str) -> list[str]:
    if not store.exists(folder):
        return []
    prefix = f"{tag}-"
    return [
        e.name
        for e in store.list(folder)
        if e.is_dir and e.name.startswith(prefix) and "-" not in e.name[len(prefix) :]
    ]


def repair(store: Store, target: Target) -> list[str]:
    """Finish or drop whatever an interrupted publish of this target left; returns actions."""
    actions: list[str] = []
    for run in sorted(_runs(store, ".bidsapp/incoming", target.tag)):
        incoming, replaced = f".bidsapp/incoming/{run}", f".bidsapp/replaced/{run}"
        if not store.exists(f"{incoming}/{PENDING}"):
            # The upload never finished; the published copy was never touched.
            store.remove(incoming, purge=True)
            actions.append("dropped an unfinished upload")
            continue
        for part, path in target.parts:
            if not store.exists(f"{incoming}/{part}"):
                continue  # already moved into place
            if store.exists(path):
                if store.exists(f"{replaced}/{part}"):
                    store.remove(path)
                else:
                    store.make_folder(replaced)
                    store.move(path, f"{replaced}/{part}")
            store.make_folder(_parent(path))
            store.move(f"{incoming}/{part}", path)
        store.write_bytes(target.manifest, store.read_bytes(f"{incoming}/{PENDING}"))
        store.remove(replaced)
        store.remove(incoming, purge=True)
        actions.append("finished an interrupted publish")
    for run in _runs(store, ".bidsapp/replaced", target.tag):
        store.remove(f".bidsapp/replaced/{run}")
        actions.append("removed a replaced copy")
    return actions


def check_layout(store: Store, target: Target) -> None:
    """A subject is published either whole or by session, never both: a session-less publish
    would move every session of the subject aside, and a session beside session-less data
    makes a dataset no BIDS tool reads."""
    subject = SubjectSession(target.label).folder
    if not store.exists(subject):
        return
    entries = store.list(subject)
    sessions = sorted(e.name for e in entries if e.is_dir and e.name.startswith("ses-"))
    others = [e for e in entries if not e.name.startswith(("ses-", f"{subject}_sessions"))]
    if not target.session and sessions:
        raise UsageError(
            f"{subject} has sessions in OUTPUT ({', '.join(sessions)}): a job without a "
            "session would replace them all",
            hint="give this exam a session in the subject map",
        )
    if target.session and others:
        raise UsageError(
            f"{subject} is published without sessions in OUTPUT: ses-{target.session} cannot "
            "be added beside it",
            hint="give every exam of this participant a session in the subject map and "
            "republish it, or map this exam without a session",
        )


def publish(
    store: Store, target: Target, local: dict[str, Path], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Upload, verify, swap in and write the manifest; returns the manifest written.

    `local` maps parts ('data', 'deriv', optionally 'source') to the local folders to publish.
    """
    check_layout(store, target)
    run = manifest["run_id"]
    incoming, replaced = (
        f".bidsapp/incoming/{target.tag}-{run}",
        f".bidsapp/replaced/{target.tag}-{run}",
    )
    files: list[dict[str, Any]] = []
    uploads = [
        (part, f, path, f.relative_to(local[part]).as_posix())
        for part, path in target.parts
        if part in local
        for f in sorted(local[part].rglob("*"))
        if f.is_file()
    ]
    sends = [(f, f"{incoming}/{part}/{rel}") for part, f, _, rel in uploads]
    half = len(sends) // 2 + 1  # the "upload" fault point falls halfway through
    try:
        md5s = store.upload_many(sends[:half])
        if sends:
            fault("upload")
        md5s += store.upload_many(sends[half:])
        for (part, f, path, rel), md5 in zip(uploads, md5s, strict=True):
            key = store.key(f"{incoming}/{part}/{rel}")  # moves keep it (rename, reparent)
            size = f.stat().st_size
            files.append({"path": f"{path}/{rel}", "size": size, "md5": md5, "key": key})
        fault("uploaded")
        manifest = {**manifest, "files": files}
        pending = json.dumps(manifest, indent=2).encode() + b"\n"
        store.write_bytes(f"{incoming}/{PENDING}", pending)
    except Exception:
        # Nothing was swapped in yet: free what the upload took (a full OUTPUT disk must leave
        # room for the status record), best effort; a rerun's repair drops anything left.
        with contextlib.suppress(Exception):
            store.remove(incoming, purge=True)
        raise
    fault("pending")

    for n, (part, path) in enumerate(target.parts):
        if store.exists(path):
            store.make_folder(replaced)
            store.move(path, f"{replaced}/{part}")
        fault("set-aside-data" if n == 0 else "set-aside")
    for n, (part, path) in enumerate(target.parts):
        if part in local:
            store.make_folder(_parent(path))
            store.move(f"{incoming}/{part}", path)
        fault("moved-data" if n == 0 else "moved")
    store.write_bytes(target.manifest, json.dumps(manifest, indent=2).encode() + b"\n")
    fault("manifest")
    store.remove(replaced)  # the trash keeps the old version 30 days (Drive)
    store.remove(incoming, purge=True)  # by now only the pending manifest
    fault("cleaned")
    return manifest
