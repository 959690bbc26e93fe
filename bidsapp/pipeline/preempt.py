"""SIGTERM (SLURM preemption, a time limit, scancel, a parent stopping its jobs) as an error.

SLURM sends SIGTERM, waits KillWait seconds, then SIGKILL. Raising at the point the signal lands
turns it into a retryable failure (exit 75) with a status record; whatever the publish protocol
had not finished is rolled forward or dropped by the next run's repair, so nothing is ever
half-published either way.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from bidsapp.errors import TemporaryFailure


class Preempted(TemporaryFailure):
    """The job was asked to stop (SIGTERM) before it finished."""

    hint = "resubmit it: nothing was half-published and a rerun finishes the job"


_requested = False


def requested() -> bool:
    """Whether this process has been asked to stop."""
    return _requested


def _raise(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _requested:
        return  # a second SIGTERM must not interrupt the cleanup the first one started
    _requested = True
    raise Preempted(f"stopped by {signal.Signals(signum).name} (preempted, timed out or cancelled)")


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, the first SIGTERM raises Preempted where the program is."""
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
