"""The orchestrating function: stage → convert → gate → publish for each selected subject.

The stages never import each other; they meet here. Each job has its own work dir (0700), its
own JSON log (redacted, published PHI-free) and its own status record.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from bidsapp import logs
from bidsapp.convert import Heuristic, convert, load_heuristic
from bidsapp.errors import BidsAppError, GateFailed, LocalIOError
from bidsapp.gate import GateReport, run_gate
from bidsapp.phi import Identifiers
from bidsapp.publish import Target, init_shared, publish, published_manifest, repair
from bidsapp.settings import Settings
from bidsapp.stage import stage
from bidsapp.status import StatusRecord
from bidsapp.stores import Store, open_store
from bidsapp.subjects import Subject, from_folder_names, read_map, select
from bidsapp.tools import versions


@dataclass
class JobResult:
    """How one subject's job ended."""

    job: str
    state: str
    exit_code: int
    message: str = ""


def new_run_id() -> str:
    """Sortable and without '-', so it never collides with label-session tags."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + secrets.token_hex(3)


def load_subjects(settings: Settings, source: Store) -> list[Subject]:
    """The map's subjects, or folders already named as labels; narrowed to the labels asked for."""
    subjects = read_map(settings.subject_map) if settings.subject_map else from_folder_names(source)
    return select(subjects, settings.labels, "SOURCE")


def fingerprint(source: Store, subject: Subject, heuristic: Heuristic) -> str:
    """What the output depends on: the exam's listing, the labels and the heuristic."""
    digest = hashlib.sha256()
    for rel, entry in source.walk(subject.source):
        digest.update(f"{rel}\0{entry.key}\n".encode())
    digest.update(f"{subject.label}\0{subject.session}\0{heuristic.sha256}".encode())
    return digest.hexdigest()


def run_participant(settings: Settings) -> int:
    """Every selected subject in map order; the exit code of the first failure, else 0."""
    source = open_store(settings.source)
    output = open_store(settings.output, for_output=not settings.dry_run)
    heuristic = load_heuristic(settings.heuristic)
    subjects = load_subjects(settings, source)
    if not settings.dry_run:
        init_shared(output)
    results = [run_job(settings, source, output, heuristic, s) for s in subjects]
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


def _make_work_dir(settings: Settings, subject: Subject, run_id: str) -> Path:
    try:
        settings.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = settings.work_dir / f"{subject.job_name}-{run_id}"
        work.mkdir(mode=0o700)
        work.chmod(0o700)  # mkdir's mode is filtered by the umask
    except OSError as exc:
        raise LocalIOError(
            f"cannot create the work dir in {settings.work_dir}: {exc.strerror}"
        ) from exc
    return work


def run_job(
    settings: Settings, source: Store, output: Store, heuristic: Heuristic, subject: Subject
) -> JobResult:
    """One subject (or subject/session) from exam folder to published BIDS."""
    run_id = new_run_id()
    logs.redactor.reset()
    ids = Identifiers.collect([], subject.exam_folder_name, subject.label)
    logs.redactor.add_identifiers(ids)
    log = logs.bound(subject.label + (f" ses-{subject.session}" if subject.session else ""))
    status = StatusRecord(subject.label, subject.session, run_id)
    target = Target(subject.label, subject.session)
    work: Path | None = None
    close_log = None
    started = time.monotonic()
    try:
        work = _make_work_dir(settings, subject, run_id)
        close_log = logs.add_json_log(work / "log.jsonl")
        log.info(
            "bidsapp job {} started",
            subject.job_name,
            argv=[logs.redactor(a) for a in settings.argv],
            versions=versions(),
            heuristic=heuristic.name,
            heuristic_sha256=heuristic.sha256,
        )
        fp = fingerprint(source, subject, heuristic)
        if not settings.dry_run:
            with output.lock(f"sub-{subject.label}"):
                for action in repair(output, target):
                    log.warning("repaired OUTPUT: {}", action)
        manifest = published_manifest(output, target)
        if manifest and not settings.force and _up_to_date(manifest, fp, settings):
            log.info("published and up to date: nothing to do")
            if not settings.dry_run:
                status.exit_code = 0
                status.save(output, "skipped")
            return JobResult(subject.job_name, "skipped", 0)
        if settings.dry_run:
            log.info("dry run: would be converted and published")
            return JobResult(subject.job_name, "dry-run", 0)
        status.save(output, "started")

        t0 = time.monotonic()
        staged = stage(source, subject.source, work)
        status.timings["stage"] = round(time.monotonic() - t0, 3)
        ids = ids.merge(
            Identifiers.collect(staged.headers, subject.exam_folder_name, subject.label)
        )
        logs.redactor.add_identifiers(ids)
        log.info(
            "staged {} DICOM files in {} stud{} ({} skipped, {} corrupt, {} with dates repaired)",
            staged.files,
            len(staged.studies),
            "y" if len(staged.studies) == 1 else "ies",
            len(staged.skipped),
            len(staged.corrupt),
            staged.repaired_dates,
        )
        for name, reason in staged.skipped + staged.corrupt:
            log.warning("not converted: {} ({})", name, reason)
        status.save(output, "staged")

        t0 = time.monotonic()
        converted = convert(staged, subject, heuristic, work)
        status.timings["convert"] = round(time.monotonic() - t0, 3)
        log.info("converted {} files", len(converted.files))
        status.save(output, "converted")

        data_dir = converted.root / target.data
        deriv_dir = work / "derivatives" / target.data
        deriv_dir.mkdir(parents=True)
        if settings.participant_fields:
            demo = {
                k: v for k, v in staged.demographics.items() if k in settings.participant_fields
            }
            (deriv_dir / "demographics.json").write_text(json.dumps(demo) + "\n")

        t0 = time.monotonic()
        report = GateReport(subject.label, subject.session)
        report.converted_files = converted.files
        report.series = [asdict(row) for row in converted.series]
        report.skipped_files = [
            {"file": ids.redact(name), "reason": reason}
            for name, reason in staged.skipped + staged.corrupt
        ]
        (deriv_dir / "gate.json").write_text("{}\n")  # scanned by the gate like the final one
        run_gate(
            report,
            bids_root=converted.root,
            derivatives=work / "derivatives",
            ids=ids,
            expected=heuristic.expected,
            work=work,
        )
        status.timings["gate"] = round(time.monotonic() - t0, 3)
        (deriv_dir / "gate.json").write_text(report.to_json(ids) + "\n")
        if not report.passed:
            where = _save_failure(output, subject, ids, report)
            raise GateFailed(
                f"failed its gate: {report.failure}; nothing was published",
                report.exit_code,
                hint=f"see {where}",
            )
        status.save(output, "gated")
        _snapshot_log(work / "log.jsonl", deriv_dir / "log.jsonl", ids)

        t0 = time.monotonic()
        manifest_base = {
            "label": subject.label,
            "session": subject.session,
            "run_id": run_id,
            "input_fingerprint": fp,
            "heuristic": heuristic.name,
            "heuristic_sha256": heuristic.sha256,
            "versions": versions(),
            "options": _options(settings),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with output.lock(f"sub-{subject.label}"):
            repair(output, target)
            published = publish(output, target, data_dir, deriv_dir, manifest_base)
        status.timings["publish"] = round(time.monotonic() - t0, 3)
        status.timings["total"] = round(time.monotonic() - started, 3)
        status.exit_code = 0
        status.save(output, "published")
        log.info("published ({} files)", len(published["files"]))
        return JobResult(subject.job_name, "published", 0)
    except BidsAppError as exc:
        message = logs.redactor(exc.one_line())
        log.error(message)
        _record_failure(output, status, exc.exit_code, type(exc).__name__, exc.exit_code == 75)
        if work is not None and not settings.dry_run:
            _save_failed_log(output, subject, work, ids)
        return JobResult(subject.job_name, "failed", exc.exit_code, message)
    except Exception as exc:  # a bug: traceback to the log file, one line to the console
        log.opt(depth=0).debug(logs.redactor(traceback.format_exc()))
        message = logs.redactor(f"unexpected error: {type(exc).__name__}: {exc}")
        log.error(
            message + (f" (details in {work / 'log.jsonl'})" if work and settings.keep_work else "")
        )
        _record_failure(output, status, 1, type(exc).__name__, False)
        if work is not None and not settings.dry_run:
            _save_failed_log(output, subject, work, ids)
        return JobResult(subject.job_name, "failed", 1, message)
    finally:
        if close_log is not None:
            close_log()
        if work is not None and not settings.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        elif work is not None:
            logger.info("work dir kept: {}", work)


def _up_to_date(manifest: dict[str, Any], fp: str, settings: Settings) -> bool:
    return (
        manifest.get("input_fingerprint") == fp
        and manifest.get("versions") == versions()
        and manifest.get("options") == _options(settings)
    )


def _options(settings: Settings) -> dict[str, Any]:
    """The settings that change what a job publishes."""
    return {"participant_fields": sorted(settings.participant_fields)}


def _record_failure(output: Store, status: StatusRecord, code: int, cls: str, retry: bool) -> None:
    status.exit_code, status.error_class, status.retryable = code, cls, retry
    status.save(output, "failed")


def _snapshot_log(src: Path, dest: Path, ids: Identifiers) -> None:
    """The job's log so far, redacted again with every identifier now known."""
    lines = src.read_text(encoding="utf-8").splitlines() if src.exists() else []
    dest.write_text("".join(ids.redact(line) + "\n" for line in lines), encoding="utf-8")


def _save_failure(output: Store, subject: Subject, ids: Identifiers, report: GateReport) -> str:
    """Keep the failed GateReport in OUTPUT/.bidsapp/failed/ (never in the dataset)."""
    path = f".bidsapp/failed/{subject.job_name}/gate.json"
    output.write_bytes(path, (report.to_json(ids) + "\n").encode())
    return f"{output.describe()}/{path}"


def _save_failed_log(output: Store, subject: Subject, work: Path, ids: Identifiers) -> None:
    """The failed job's redacted log beside its GateReport, best effort."""
    try:
        _snapshot_log(work / "log.jsonl", work / "failed-log.jsonl", ids)
        output.write_bytes(
            f".bidsapp/failed/{subject.job_name}/log.jsonl",
            (work / "failed-log.jsonl").read_bytes(),
        )
    except (BidsAppError, OSError):
        pass
