"""Seconds per step of one job, kept in its status record and shown in its report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    """Named steps ('stage', 'convert/heudiconv', …) and the seconds they took, summed."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {} if seconds is None else seconds

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - t0
            self.seconds[name] = round(self.seconds.get(name, 0.0) + spent, 3)
