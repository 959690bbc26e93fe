"""`bidsapp pull`: a verified local mirror of a published dataset (or part of it).

What a reviewer needs to look at a dataset that lives on Drive: the reports, the gate verdicts,
and a copy `bids-validator-deno -r` can read. Every file arrives under a temporary name and is
renamed once its md5 matches Drive's; a rerun fetches only what changed or never arrived (a file
already there counts when its md5 matches, so even an interrupted first pull resumes), and
removes what it pulled before that OUTPUT no longer has. Files a person added to DEST are left
alone. Requests go through the store's pacer: the same budget as every other command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from loguru import logger

from bidsapp.errors import LocalIOError, LocationNotFound, OutputNotWritable
from bidsapp.stores import Entry, Store
from bidsapp.stores.local import file_md5
from bidsapp.stores.progress import Progress

STATE = ".bidsapp/pull.json"
"""What DEST got from where, so a rerun can tell a pulled file from a person's, unread."""
TRANSIENT = (".bidsapp/incoming/", ".bidsapp/replaced/", ".bidsapp/locks/")
"""Bookkeeping of publications in progress: nothing a reader of the dataset needs."""
REPORTS = ("derivatives/bidsapp/", ".bidsapp/failed/", ".bidsapp/status/")
REPORT_FILES = (".bidsapp/group-validation.json",)
BATCH_BYTES = 256 << 20  # files move in batches of about this size; the state is saved after each
PART = ".bidsapp-part"


@dataclass
class Pulled:
    """What one pull did."""

    fetched: int = 0
    fetched_bytes: int = 0
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Files pulled earlier that OUTPUT no longer has but that changed in DEST: left alone."""


def wanted(rel: str, labels: Sequence[str], only_reports: bool) -> bool:
    """Whether a dataset file is pulled: no publication bookkeeping; with labels, the files of
    those subjects (a path with a `sub-X` folder or a `sub-X_…` name) and every file of no
    subject (dataset_description.json, participants.tsv, the index); with only_reports, the
    derivative reports and gate verdicts only."""
    if rel.startswith(TRANSIENT) or rel == STATE:
        return False
    if only_reports and not (rel.startswith(REPORTS) or rel in REPORT_FILES):
        return False
    owner = _subject_of(rel)
    return not labels or owner is None or owner in labels


def _subject_of(rel: str) -> str | None:
    for part in PurePosixPath(rel).parts:
        if part.startswith("sub-"):
            return part[4:].split("_", 1)[0].split(".", 1)[0]
    return None


def pull(
    store: Store, dest: Path, *, labels: Sequence[str] = (), only_reports: bool = False
) -> Pulled:
    """Mirror the wanted files of `store` into `dest` (created when its parent exists)."""
    dest = _destination(dest)
    for part in dest.rglob(f"*{PART}"):  # left by a pull that was killed mid-transfer
        part.unlink()
    state = _load_state(dest, store.describe())
    remote = [
        (rel, entry)
        for rel, entry in store.walk("")
        if not entry.skipped and wanted(rel, labels, only_reports)
    ]
    if labels and not any(_subject_of(rel) in labels for rel, _ in remote):
        raise LocationNotFound(
            f"OUTPUT {store.describe()} holds nothing of "
            + ", ".join(f"sub-{label}" for label in labels),
            hint="'bidsapp status OUTPUT' lists the subjects it holds",
        )
    result = Pulled()
    todo: list[tuple[str, Entry, Path]] = []
    for rel, entry in remote:
        local = _inside(dest, rel)
        if _current(local, entry, state["files"].get(rel)):
            result.unchanged += 1
            state["files"][rel] = _record(local, entry)
        else:
            todo.append((rel, entry, local))
    total = sum(entry.size for _, entry, _ in todo)
    with Progress("pulling", len(todo), total) as progress:
        for batch in _batches(todo):
            _fetch(store, batch, progress)
            for rel, entry, local in batch:
                state["files"][rel] = _record(local, entry)
            result.fetched += len(batch)
            result.fetched_bytes += sum(entry.size for _, entry, _ in batch)
            _save_state(dest, state)
    _forget_gone(dest, state, {rel for rel, _ in remote}, labels, only_reports, result)
    _save_state(dest, state)
    return result


def _destination(dest: Path) -> Path:
    dest = dest.expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise LocationNotFound(f"DEST {dest} is not a folder")
    if not dest.exists():
        if not dest.parent.is_dir():
            raise LocationNotFound(
                f"DEST {dest} was not found, nor its parent folder",
                hint="pull creates DEST's last folder only: check the path for a typo",
            )
        try:
            dest.mkdir()
        except OSError as exc:
            raise OutputNotWritable(f"cannot create DEST {dest}: {exc.strerror}") from exc
    return dest


def _inside(dest: Path, rel: str) -> Path:
    local = dest.joinpath(*PurePosixPath(rel).parts)
    if dest not in local.parents or ".." in PurePosixPath(rel).parts:
        raise ValueError("OUTPUT lists a name that would leave DEST")  # never a path: PHI-free
    return local


def _current(local: Path, entry: Entry, pulled: dict[str, Any] | None) -> bool:
    """Whether DEST already holds this file as OUTPUT has it. Unread when the state says DEST
    got this very content and nobody touched it since; else, with Drive's md5 to compare, by
    reading it (an interrupted pull's files, a copy made by hand)."""
    try:
        st = local.stat()
    except OSError:
        return False
    if st.st_size != entry.size:
        return False
    if pulled and pulled.get("key") == entry.key and pulled.get("local") == _stamp(st):
        return True
    return _is_md5(entry.key) and file_md5(local) == entry.key


def _is_md5(key: str) -> bool:
    return len(key) == 32 and all(c in "0123456789abcdef" for c in key)


def _stamp(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


def _record(local: Path, entry: Entry) -> dict[str, Any]:
    return {"key": entry.key, "local": _stamp(local.stat())}


def _batches(todo: list[tuple[str, Entry, Path]]) -> Iterator[list[tuple[str, Entry, Path]]]:
    batch: list[tuple[str, Entry, Path]] = []
    size = 0
    for item in todo:
        batch.append(item)
        size += item[1].size
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _fetch(store: Store, batch: list[tuple[str, Entry, Path]], progress: Progress) -> None:
    """Download under temporary names, verified, then rename each into place."""
    parts = [(rel, local.with_name(local.name + PART)) for rel, _, local in batch]
    try:
        for _, part in parts:
            part.parent.mkdir(parents=True, exist_ok=True)
        store.download_many(parts, progress=progress, copy=True)
        for (_, part), (_, _, local) in zip(parts, batch, strict=True):
            os.replace(part, local)
    except OSError as exc:
        raise LocalIOError(f"cannot write into DEST: {exc.strerror}") from exc
    finally:
        for _, part in parts:
            part.unlink(missing_ok=True)


def _forget_gone(
    dest: Path,
    state: dict[str, Any],
    present: set[str],
    labels: Sequence[str],
    only_reports: bool,
    result: Pulled,
) -> None:
    """Files pulled before that OUTPUT no longer has (a subject republished with fewer
    series): removed when DEST still holds them as pulled, else kept and named."""
    for rel in sorted(state["files"]):
        if rel in present or not wanted(rel, labels, only_reports):
            continue
        local = _inside(dest, rel)
        pulled = state["files"].pop(rel)
        try:
            st = local.stat()
        except OSError:
            continue
        if pulled.get("local") == _stamp(st):
            local.unlink()
            result.removed.append(rel)
        else:
            result.kept.append(rel)


def _load_state(dest: Path, source: str) -> dict[str, Any]:
    path = dest / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"source": source, "files": {}}
    if not isinstance(state, dict) or state.get("source") != source:
        if isinstance(state, dict) and state.get("source"):
            logger.warning("DEST was pulled from another OUTPUT before: every file is checked")
        return {"source": source, "files": {}}
    state.setdefault("files", {})
    return state


def _save_state(dest: Path, state: dict[str, Any]) -> None:
    path = dest / STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PART)
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
