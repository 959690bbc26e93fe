"""Where data lives: one small protocol, implemented by the local (and Drive) stores.

Paths are POSIX strings relative to the store's root ('' is the root itself). A store is the only
thing that knows whether data is on Drive or on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bidsapp.errors import UsageError


@dataclass(frozen=True)
class Entry:
    """One listed item; `key` identifies it for fingerprints (mtime+size on disk, md5 on Drive)."""

    name: str
    is_dir: bool
    size: int = 0
    key: str = ""


@runtime_checkable
class Store(Protocol):
    """The operations the pipeline needs from a place that holds files."""

    def describe(self) -> str:
        """A PHI-free description for messages (the root, never an exam folder)."""

    def list(self, path: str) -> list[Entry]:
        """The entries of one folder, sorted by name; LocationNotFound when it is missing."""

    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        """Every file below `path`, as (path relative to `path`, entry), in sorted order."""

    def exists(self, path: str) -> bool:
        """Whether a file or folder is there."""

    def read_bytes(self, path: str) -> bytes:
        """A whole (small) file."""

    def write_bytes(self, path: str, data: bytes) -> None:
        """Create or replace a small file, creating its folders."""

    def download(self, path: str, dest: Path) -> str:
        """Copy a file to a local path; returns its md5 (verified against the store's)."""

    def upload(self, src: Path, path: str) -> str:
        """Copy a local file into the store, creating folders; returns the verified md5."""

    def md5(self, path: str) -> str:
        """The md5 of a stored file."""

    def make_folder(self, path: str) -> None:
        """Create a folder and its parents; no error when it exists."""

    def move(self, src: str, dst: str) -> None:
        """Move a file or folder; the parent of `dst` must exist and `dst` must not."""

    def remove(self, path: str) -> None:
        """Delete a file or a whole folder; no error when it is missing."""

    def lock(self, name: str) -> AbstractContextManager[None]:
        """An exclusive lock named `name` under .bidsapp/locks, held for the block."""


def open_store(location: str, *, for_output: bool = False) -> Store:
    """The store for a SOURCE or OUTPUT location given on the command line."""
    from bidsapp.stores.local import LocalStore

    if location.startswith("gdrive:"):
        raise UsageError(
            f"{location.split('/')[0]}… locations need the Google Drive store, "
            "which this build does not include yet",
            hint="copy the exams to a local folder for now",
        )
    return LocalStore(Path(location), create=for_output)
