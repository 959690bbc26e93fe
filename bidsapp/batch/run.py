"""The participant level: every selected subject (or session), one after another or --jobs at once.

One job is `bidsapp.pipeline.participant.run_job`; this module only decides how many run at a time
and what the whole run exits with.
"""

from __future__ import annotations

import sys

from bidsapp.batch.fanout import run_many
from bidsapp.heuristic.loader import load_heuristic
from bidsapp.pipeline import preempt
from bidsapp.pipeline.participant import JobResult, load_subjects, run_job
from bidsapp.pipeline.publish import init_shared
from bidsapp.settings import Settings
from bidsapp.stores import open_store


def run_participant_level(settings: Settings) -> int:
    """Every selected subject in map order; the exit code of the first failure, else 0."""
    source = open_store(settings.source, settings=settings)
    output = open_store(settings.output, for_output=not settings.dry_run, settings=settings)
    heuristic = load_heuristic(settings.heuristic, settings.overrides)
    subjects = load_subjects(settings, source)
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


def print_summary(results: list[JobResult]) -> None:
    """One line per job: state and exit code."""
    width = max(len(r.job) for r in results)
    lines = [
        f"{'job':<{width}}  {'state':<10} exit",
        *(f"{r.job:<{width}}  {r.state:<10} {r.exit_code}" for r in results),
    ]
    print("\n".join(lines), file=sys.stderr)
