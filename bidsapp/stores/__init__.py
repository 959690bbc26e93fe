"""Where data lives: one small protocol, implemented by the local (and Drive) stores.

Paths are POSIX strings relative to the store's root ('' is the root itself). A store is the only
thing that knows whether data is on Drive or on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bidsapp.stores.base import Entry, Store, md5_of

if TYPE_CHECKING:
    from bidsapp.settings import Settings

__all__ = ["REMOTE_PREFIX", "Entry", "Store", "is_remote", "md5_of", "open_store"]

REMOTE_PREFIX = "gdrive:"


def is_remote(location: str) -> bool:
    """Whether a command-line location is on Google Drive rather than a local folder."""
    return location.startswith(REMOTE_PREFIX)


def open_store(
    location: str,
    *,
    for_output: bool = False,
    role: str = "",
    create: bool = True,
    settings: Settings | None = None,
) -> Store:
    """The store for a SOURCE or OUTPUT location given on the command line.

    `for_output` opens OUTPUT to write (a missing last folder is created unless not `create`);
    anything else is
    opened read-only (on Drive: with the read-only scope). `role` names the location in
    messages: "OUTPUT" for an OUTPUT only read (status, --dry-run, pull), else from `for_output`.
    """
    from bidsapp.stores.local import LocalStore

    role = role or ("OUTPUT" if for_output else "SOURCE")
    if is_remote(location):
        from bidsapp.stores.drive import open_drive

        return open_drive(
            location, for_output=for_output, role=role, create=create, settings=settings
        )
    return LocalStore(Path(location), create=for_output and create, role=role)
