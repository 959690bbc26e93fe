"""The participant level: every selected subject (or session), one after another or --jobs at once.

One job is `bidsapp.pipeline.participant.run_job`; this module only decides how many run at a time
and what the whole run exits with.
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from loguru import logger

from bidsapp.batch.fanout import run_many
from bidsapp.errors import BidsAppError, LocationNotFound
from bidsapp.heuristic.loader import load_heuristic
from bidsapp.pipeline import preempt
from bidsapp.pipeline.participant import JobResult, load_subjects, new_run_id, run_job
from bidsapp.pipeline.publish import init_shared
from bidsapp.pipeline.status import StatusRecord
from bidsapp.settings import Settings
from bidsapp.stores import Store, open_store
from bidsapp.stores.local import LocalStore


def run_participant_level(settings: Settings) -> int:
    """Every selected subject in map order; the exit code of the first failure, else 0."""
    with ExitStack() as stack:
        output: Store | None = None
        try:
            source = open_store(settings.source, settings=settings)
            output = _open_output(settings, stack)
            heuristic = load_heuristic(settings.heuristic, settings.overrides)
            subjects = load_subjects(settings, source)
        except BidsAppError as exc:
            _record_failure(settings, output, exc)
            raise
        if not settings.dry_run:
            init_shared(output)
        if settings.jobs > 1 and len(subjects) > 1 and not settings.dry_run:
            results = run_many(settings, subjects)
        else:
            results = []
            with preempt.sigterm_raises():
                for subject in subjects:
                    results.append(run_job(settings, source, output, heuristic, subject))
                    if preempt.requested():
                        break  # the scheduler wants the node back: the rest waits for a rerun
    if len(results) > 1:
        print_summary(results)
    failed = [r for r in results if r.exit_code]
    return failed[0].exit_code if failed else 0


def _open_output(settings: Settings, stack: ExitStack) -> Store:
    """OUTPUT, to publish into; a dry run only reads it, and one that does not exist yet (but
    would be created) reads as empty."""
    if not settings.dry_run:
        return open_store(settings.output, for_output=True, settings=settings)
    try:
        return open_store(settings.output, role="OUTPUT", settings=settings)
    except LocationNotFound as exc:
        if not exc.creatable:
            raise
        logger.info("{}: a real run creates it in its parent folder", exc)
        return LocalStore(Path(stack.enter_context(tempfile.TemporaryDirectory())))


def _record_failure(settings: Settings, output: Store | None, exc: BidsAppError) -> None:
    """A job that fails before its subject is known (SOURCE missing, a bad heuristic, a label
    not in the map) still leaves `failed <code>` where `status` and `group` read it: for the
    labels it was asked to run (a SLURM task names its own), in an OUTPUT that exists (never
    made for this), best effort."""
    if settings.dry_run or not settings.labels:
        return
    if output is None:
        try:
            output = open_store(settings.output, for_output=True, create=False, settings=settings)
        except BidsAppError:
            return
    sessions = settings.sessions or ("",)
    for label in settings.labels:
        for session in sessions:
            record = StatusRecord(label, session, new_run_id())
            record.exit_code, record.error_class = exc.exit_code, type(exc).__name__
            record.retryable = exc.exit_code == 75
            record.save(output, "failed")


def print_summary(results: list[JobResult]) -> None:
    """One line per job: state and exit code."""
    width = max(len(r.job) for r in results)
    lines = [
        f"{'job':<{width}}  {'state':<10} exit",
        *(f"{r.job:<{width}}  {r.state:<10} {r.exit_code}" for r in results),
    ]
    print("\n".join(lines), file=sys.stderr)
