"""Replacing a file whole: a new file renamed over the old one, keeping its mode."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def rewrite(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, keeping its mode: heudiconv leaves its outputs
    read-only, and a staged file may be a hard link to a user's file, never to be written
    through."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
