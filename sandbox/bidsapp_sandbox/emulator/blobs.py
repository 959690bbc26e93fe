"""Content-addressed file contents, in memory or in a folder (so a restart keeps them)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path


class BlobStore:
    """Contents keyed by their md5, which is also Drive's md5Checksum."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if self._folder is None:
            with self._lock:
                self._memory[md5] = data
            return md5
        path = self._folder / md5
        if not path.exists():
            # Write then rename: a crash never leaves a blob whose name lies about its content.
            fd, tmp = tempfile.mkstemp(dir=self._folder, prefix=".part-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return md5

    def get(self, md5: str) -> bytes:
        if self._folder is None:
            with self._lock:
                return self._memory[md5]
        return (self._folder / md5).read_bytes()
