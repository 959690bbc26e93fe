"""Transfer progress: a bar (files and bytes) on a terminal, a log line now and then otherwise.

Counts only: file names can be patient names and never appear here.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType

from loguru import logger
from tqdm import tqdm

LOG_EVERY = 10.0  # seconds between log lines when stderr is not a terminal


class Progress:
    """Thread-safe progress of a batch of transfers."""

    def __init__(self, verb: str, files: int, total_bytes: int, *, tty: bool | None = None) -> None:
        self.verb, self.files, self.total_bytes = verb, files, total_bytes
        self.done_files = 0
        self.done_bytes = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._logged = self._started
        self._bar: tqdm[None] | None = None
        if sys.stderr.isatty() if tty is None else tty:
            self._bar = tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=verb,
                leave=False,
                file=sys.stderr,
            )

    def advance(self, nbytes: int) -> None:
        """One more file of `nbytes` finished."""
        with self._lock:
            self.done_files += 1
            self.done_bytes += nbytes
            if self._bar is not None:
                self._bar.update(nbytes)
                self._bar.set_postfix_str(f"{self.done_files}/{self.files} files", refresh=False)
                return
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY:
                self._logged = now
                logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return (
            f"{self.verb}: {self.done_files}/{self.files} files, "
            f"{self.done_bytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB "
            f"({self.done_files / elapsed:.1f} files/s, {self.done_bytes / 1e6 / elapsed:.1f} MB/s)"
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        if exc_type is None and self.files:
            logger.debug(self.line())
