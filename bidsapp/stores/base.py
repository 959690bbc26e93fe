"""The store protocol: what the pipeline needs from a place that holds files, and its entries.

Paths are POSIX strings relative to the store's root ('' is the root itself).
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bidsapp.stores.progress import Progress


def md5_of(stream: BinaryIO) -> str:
    """md5 of a whole binary stream (read from its start in 1 MiB blocks)."""
    digest = hashlib.md5(usedforsecurity=False)
    stream.seek(0)
    while block := stream.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """One listed item; `key` identifies it for fingerprints (mtime+size on disk, md5 on Drive)."""

    name: str
    is_dir: bool
    size: int = 0
    key: str = ""
    ref: str = ""
    """How to address this item when its name is not unique ('id:<Drive id>'; '' on disk)."""
    skipped: str = ""
    """Why `walk` lists this item without reading it (a link or shortcut is never followed out
    of the folder walked, nor is a FIFO or device read); '' for an ordinary file."""


@runtime_checkable
class Store(Protocol):
    """The operations the pipeline needs from a place that holds files."""

    def describe(self) -> str:
        """A PHI-free description for messages (the root, never an exam folder)."""

    def list(self, path: str) -> list[Entry]:
        """The entries of one folder, sorted by name; LocationNotFound when it is missing."""

    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        """Every file below `path`, as (path relative to `path`, entry), in sorted order;
        links, shortcuts and special files are listed with `skipped` set, never followed."""

    def exists(self, path: str) -> bool:
        """Whether a file or folder is there."""

    def read_bytes(self, path: str) -> bytes:
        """A whole (small) file."""

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create or replace a small file, creating its folders."""

    def download(self, path: str, dest: Path) -> str:
        """Copy a file to a local path; returns its md5 (verified against the store's)."""

    def download_many(
        self,
        items: Sequence[tuple[str, Path]],
        *,
        progress: Progress | None = None,
        copy: bool = False,
    ) -> builtins.list[str]:
        """Download many (path, local path) pairs, in parallel where the store gains by it;
        counted on `progress` when given (else a "staging" bar of their own). `copy`: bytes
        of their own, never a link to the store's file (a copy someone may edit)."""

    def read_head(self, path: str, size: int) -> bytes:
        """The first `size` bytes of a file (a NIfTI header without the image)."""

    def upload(self, src: Path, path: str) -> str:
        """Copy a local file into the store, creating folders; returns the verified md5."""

    def upload_many(self, items: Sequence[tuple[Path, str]]) -> builtins.list[str]:
        """Upload many (local file, path) pairs, in parallel where the store gains by it."""

    def folder_name(self, path: str) -> str:
        """The real name of the folder at `path` (Drive's `id:` paths: asked from Drive).

        PHI: an exam folder's name is an identifier; callers must never print it.
        """

    def md5(self, path: str) -> str:
        """The md5 of a stored file (on disk: read whole)."""

    def key(self, path: str) -> str:
        """What identifies a stored file's content without reading it: size and modification
        time on disk, the md5 Drive keeps. Publication records it; status compares it."""

    def prefetch(self, path: str) -> None:
        """Learn everything below `path` before many lookups there (no-op where lookups are
        cheap); no error when it is missing."""

    def make_folder(self, path: str) -> None:
        """Create a folder and its parents; no error when it exists."""

    def move(self, src: str, dst: str) -> None:
        """Move a file or folder; the parent of `dst` must exist and `dst` must not."""

    def remove(self, path: str, *, purge: bool = False) -> None:
        """Delete a file or a whole folder; no error when it is missing. On Drive it goes to
        the trash (30 days to undo); `purge`, for bookkeeping nobody needs back (lock files,
        a finished upload folder), deletes it outright where the identity may."""

    def lock(self, name: str) -> AbstractContextManager[None]:
        """An exclusive lock named `name` under .bidsapp/locks, held for the block."""
