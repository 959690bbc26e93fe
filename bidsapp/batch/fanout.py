"""`participant --jobs N`: up to N jobs at once on one machine, each in a process of its own.

Each child is a fresh interpreter (spawn, not fork: no inherited HTTP connections, locks or log
sinks) running one subject (or subject/session) with its own work dir, JSON log, status record
and redaction set, and 1/N of the Drive budget. A child that fails, crashes or is killed never
stops the others. SIGTERM to the parent is passed on to the running children (each stops as a
retryable failure) and no new child starts.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from loguru import logger

from bidsapp import logs
from bidsapp.errors import BidsAppError
from bidsapp.pipeline import preempt
from bidsapp.pipeline.participant import JobResult, run_job
from bidsapp.pipeline.subjects import Subject
from bidsapp.settings import Settings


def child_settings(settings: Settings, subject: Subject, jobs: int) -> Settings:
    """One child's settings: this subject/session only, its share of the Drive budget."""
    return replace(
        settings,
        labels=(subject.label,),
        sessions=(subject.session,) if subject.session else (),
        jobs=1,
        drive_rps=settings.drive_rps / jobs,
    )


def _child(settings: Settings, subject: Subject, conn: Connection) -> None:
    """Runs in the child process: one job, its JobResult back to the parent, its exit code."""
    from bidsapp.heuristic.loader import load_heuristic
    from bidsapp.stores import open_store

    logs.setup_console(settings.log_level)
    code = 1
    try:
        with preempt.sigterm_raises():
            try:
                source = open_store(settings.source, settings=settings)
                output = open_store(settings.output, for_output=True, settings=settings)
                heuristic = load_heuristic(settings.heuristic, settings.overrides)
                result = run_job(settings, source, output, heuristic, subject)
            except BidsAppError as exc:  # opening a store failed, or a SIGTERM came early
                message = logs.redactor(exc.one_line())
                logger.error(message)
                result = JobResult(subject.job_name, "failed", exc.exit_code, message)
        conn.send(result)
        code = result.exit_code
    finally:
        conn.close()
    sys.exit(code)


class _Running:
    def __init__(self, subject: Subject, process: BaseProcess, conn: Connection) -> None:
        self.subject, self.process, self.conn = subject, process, conn


def run_many(settings: Settings, subjects: list[Subject]) -> list[JobResult]:
    """Every subject in its own process, at most settings.jobs at once; results in map order."""
    jobs = min(settings.jobs, len(subjects))
    logger.info(
        "{} jobs, {} at once, {:.3g} Drive requests/s each",
        len(subjects),
        jobs,
        settings.drive_rps / jobs,
    )
    ctx = multiprocessing.get_context("spawn")
    pending = list(subjects)
    running: list[_Running] = []
    results: dict[str, JobResult] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for job in running:
            # SIGTERM: the child stops as a retryable failure; publish leaves nothing half-done.
            job.process.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            while pending and len(running) < jobs and not stopping:
                subject = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_child,
                    args=(child_settings(settings, subject, jobs), subject, send),
                    name=subject.job_name,
                )
                process.start()
                send.close()  # the child holds the only writing end: EOF means it is gone
                running.append(_Running(subject, process, receive))
            if not running:
                break
            ready = wait([job.process.sentinel for job in running])
            for job in [j for j in running if j.process.sentinel in ready]:
                job.process.join()
                results[job.subject.job_name] = _result(job)
                running.remove(job)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for subject in pending:
        results[subject.job_name] = JobResult(
            subject.job_name, "not run", 75, "stopped by SIGTERM before it started"
        )
    return [results[s.job_name] for s in subjects]


def _result(job: _Running) -> JobResult:
    """What the child sent, or what its death says when it sent nothing."""
    name, code = job.subject.job_name, job.process.exitcode
    try:
        if job.conn.poll():
            result: JobResult = job.conn.recv()
            return result
    except (EOFError, OSError):
        pass
    finally:
        job.conn.close()
    if code is not None and code < 0:
        message = f"its process was killed by {signal.Signals(-code).name}"
        logger.error("{}: {}", name, message)
        return JobResult(name, "killed", 1, message)
    return JobResult(name, "failed", code or 1, "its process ended without a result")
