"""The orchestrating function: stage → convert → de-identify → gate → publish, per subject.

The stages never import each other; they meet here. Each job has its own work dir (0700), its
own JSON log (redacted, published PHI-free) and its own status record.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import re
import secrets
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from bidsapp import logs
from bidsapp.errors import BidsAppError, GateFailed, LocalIOError
from bidsapp.heuristic.loader import Heuristic
from bidsapp.pipeline import preempt
from bidsapp.pipeline.convert import convert
from bidsapp.pipeline.gate import GateReport, recheck, run_gate
from bidsapp.pipeline.owner import abandoned, write_owner
from bidsapp.pipeline.publish import (
    Target,
    check_layout,
    publish,
    published_manifest,
    repair,
)
from bidsapp.pipeline.stage import StagedExam, stage
from bidsapp.pipeline.status import StatusRecord
from bidsapp.pipeline.subjects import Subject, from_folder_names, read_map, select, select_sessions
from bidsapp.privacy.deid import deface, deidentify, deidentify_dicoms
from bidsapp.privacy.phi import Identifiers
from bidsapp.privacy.profiles import date_offset, dicom_seed, load_secret
from bidsapp.report.subject import write_subject_report
from bidsapp.settings import Settings
from bidsapp.stores import Store, is_remote
from bidsapp.timing import Timings
from bidsapp.tools import versions

T = TypeVar("T")


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
    return select_sessions(select(subjects, settings.labels, "SOURCE"), settings.sessions)


def fingerprint(source: Store, subject: Subject, heuristic: Heuristic) -> str:
    """What the output depends on: the exam's listing, the labels and the heuristic."""
    digest = hashlib.sha256()
    for rel, entry in source.walk(subject.source):
        # an ordinary file hashes as it always did, so published subjects stay up to date
        line = f"{rel}\0{entry.key}" + (f"\0{entry.skipped}" if entry.skipped else "") + "\n"
        # surrogateescape: a file name that is not UTF-8 still counts, byte for byte
        digest.update(line.encode("utf-8", "surrogateescape"))
    digest.update(f"{subject.label}\0{subject.session}\0{heuristic.sha256}".encode())
    return digest.hexdigest()


def _make_work_dir(settings: Settings, subject: Subject, run_id: str) -> Path:
    try:
        settings.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sweep_abandoned(settings.work_dir)
        work = settings.work_dir / f"{subject.job_name}-{run_id}"
        work.mkdir(mode=0o700)
        work.chmod(0o700)  # mkdir's mode is filtered by the umask
        write_owner(work)  # so that a later job can sweep it if this one is killed
    except OSError as exc:
        raise LocalIOError(
            f"cannot create the work dir in {settings.work_dir}: {exc.strerror}"
        ) from exc
    return work


_WORK_FOLDER = re.compile(r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?-\d{8}T\d{6}[0-9a-f]{6}$")


def sweep_abandoned(work_dir: Path) -> list[str]:
    """Remove the work folders of jobs whose process is gone (killed, or the node rebooted):
    they hold raw DICOMs. Folders of live jobs, of other hosts, or without an owner record are
    left alone. Returns the names removed."""
    removed = []
    for folder in sorted(work_dir.iterdir()):
        if _WORK_FOLDER.match(folder.name) and folder.is_dir() and abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
            logger.warning("removed the work folder {} of a job that is gone", folder.name)
    return removed


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


def run_job(
    settings: Settings, source: Store, output: Store, heuristic: Heuristic, subject: Subject
) -> JobResult:
    """One subject (or subject/session) from exam folder to published BIDS."""
    return Job(settings, source, output, heuristic, subject).run()


class Job:
    """One participant job: its work dir, log, status record and the identifiers it learns."""

    def __init__(
        self,
        settings: Settings,
        source: Store,
        output: Store,
        heuristic: Heuristic,
        subject: Subject,
    ) -> None:
        self.settings, self.source, self.output = settings, source, output
        self.heuristic, self.subject = heuristic, subject
        self.run_id = new_run_id()
        self.target = Target(subject.label, subject.session)
        self.status = StatusRecord(subject.label, subject.session, self.run_id)
        self.timings = Timings(self.status.timings)
        self.log = logs.bound(
            subject.label + (f" ses-{subject.session}" if subject.session else "")
        )
        logs.redactor.reset()
        self.ids = Identifiers()
        for part in subject.source_parts:  # any folder on the way can be named for the patient
            self.ids = self.ids.merge(Identifiers.collect([], part, subject.label))
        logs.redactor.add_identifiers(self.ids)
        self.work: Path | None = None
        self.json_log: logs.JsonLog | None = None

    def run(self) -> JobResult:
        """Run every step; failures become a JobResult, the work dir is cleaned up."""
        name = self.subject.job_name
        try:
            self.work = _make_work_dir(self.settings, self.subject, self.run_id)
            try:
                self.json_log = logs.JsonLog(self.work / "log.jsonl")
            except OSError as exc:
                raise LocalIOError(f"cannot write the job's log: {exc.strerror}") from exc
            state = self._steps(self.work)
            return JobResult(name, state, 0)
        except BidsAppError as exc:
            return self._failure(exc)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                return self._bug(exc)
            return self._failure(LocalIOError(f"cannot write in the work dir: {exc.strerror}"))
        except Exception as exc:  # a bug: traceback to the log file, one line to the console
            return self._bug(exc)
        finally:
            # The work dir holds raw patient data: it goes whatever else failed here.
            try:
                if self.json_log is not None:
                    self.json_log.close()
            finally:
                self._remove_work()

    def _failure(self, exc: BidsAppError) -> JobResult:
        if preempt.requested() and not isinstance(exc, preempt.Preempted):
            exc = preempt.Preempted(f"stopped by SIGTERM while it failed: {exc}")
        message = logs.redactor(exc.one_line())
        self.log.error(message)
        self._failed(exc.exit_code, type(exc).__name__, retryable=exc.exit_code == 75)
        return JobResult(self.subject.job_name, "failed", exc.exit_code, message)

    def _bug(self, exc: Exception) -> JobResult:
        self.log.debug(logs.redactor(traceback.format_exc()))
        if preempt.requested():  # a tool killed by the same SIGTERM, not a bug
            return self._failure(preempt.Preempted("stopped by SIGTERM"))
        message = logs.redactor(f"unexpected error: {type(exc).__name__}: {exc}")
        self.log.error(message)
        self._failed(1, type(exc).__name__, retryable=False)
        return JobResult(self.subject.job_name, "failed", 1, message)

    def _remove_work(self) -> None:
        if self.work is None:
            return
        if self.settings.keep_work:
            logger.info("work dir kept: {}", self.work)
            return
        shutil.rmtree(self.work, ignore_errors=True)
        if self.work.exists():  # e.g. a file a tool made read-only in a read-only folder
            logger.warning("the work dir could not be removed completely: {}", self.work)

    def _steps(self, work: Path) -> str:
        settings, subject, log, status = self.settings, self.subject, self.log, self.status
        started = time.monotonic()
        # An `id:<Drive id>` map row hides the exam folder's own name, an identifier all the same.
        exam_name = self.source.folder_name(subject.source)
        self.ids = self.ids.merge(Identifiers.collect([], exam_name, subject.label))
        logs.redactor.add_identifiers(self.ids)
        log.info(
            "bidsapp job {} started",
            subject.job_name,
            argv=[logs.redactor(a) for a in settings.argv],
            versions=versions(),
            heuristic=self.heuristic.name,
            heuristic_sha256=self.heuristic.sha256,
            settings=settings.to_json(),
        )
        fingerprint_ = fingerprint(self.source, subject, self.heuristic)
        if self._up_to_date(fingerprint_):
            return "skipped"
        if settings.dry_run:
            log.info("dry run: would be converted and published")
            return "dry-run"
        check_layout(self.output, self.target)  # before any work; publish checks it again
        status.save(self.output, "started")

        staged = self._timed(
            "stage",
            lambda: stage(
                self.source, subject.source, work, self.timings, one_person=subject.one_person
            ),
        )
        self.ids = self.ids.merge(Identifiers.collect(staged.headers, exam_name, subject.label))
        logs.redactor.add_identifiers(self.ids)
        log.info(
            "staged {} DICOM files in {} stud{} ({} skipped, {} corrupt, {} with dates repaired)",
            staged.files,
            len(staged.studies),
            "y" if len(staged.studies) == 1 else "ies",
            len(staged.skipped),
            len(staged.corrupt),
            staged.repaired_dates,
        )
        for source_name, reason in staged.skipped + staged.corrupt:
            log.warning("not converted: {} ({})", source_name, reason)
        status.save(self.output, "staged")

        converted = self._timed(
            "convert", lambda: convert(staged, subject, self.heuristic, work, self.timings)
        )
        log.info("converted {} files", len(converted.files))
        deid = self._timed("deidentify", lambda: self._deidentify(staged, converted.root, work))
        status.save(self.output, "converted")

        local = {
            "data": converted.root / self.target.data,
            "deriv": work / "derivatives" / self.target.data,
        }
        if (work / "sourcedata").is_dir():
            local["source"] = work / "sourcedata" / self.target.data
        local["deriv"].mkdir(parents=True)
        if settings.participant_fields:
            demo = {
                k: v for k, v in staged.demographics.items() if k in settings.participant_fields
            }
            (local["deriv"] / "demographics.json").write_text(json.dumps(demo) + "\n")

        report = GateReport(subject.label, subject.session, deid=deid)
        report.converted_files = converted.files
        report.series = [asdict(row) for row in converted.series]
        report.skipped_files = [
            {"file": self.ids.redact(name), "reason": reason}
            for name, reason in staged.skipped + staged.corrupt
        ]
        self._timed("gate", lambda: self._gate(report, converted.root, work))
        status.save(self.output, "gated")
        if self.json_log is not None and self.json_log.error is not None:
            raise LocalIOError(f"cannot write the job's log: {self.json_log.error.strerror}")
        (local["deriv"] / "log.jsonl").write_text(
            _redacted_log(work / "log.jsonl", self.ids, local_paths(settings)), encoding="utf-8"
        )

        manifest = {
            "label": subject.label,
            "session": subject.session,
            "run_id": self.run_id,
            "input_fingerprint": fingerprint_,
            "heuristic": self.heuristic.name,
            "heuristic_sha256": self.heuristic.sha256,
            "versions": versions(),
            "options": _options(settings),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "set_aside": [s["series_id"] for s in report.set_aside],
        }
        with self.output.lock(self.target.subject.prefix):
            repair(self.output, self.target)
            published = self._timed(
                "publish", lambda: publish(self.output, self.target, local, manifest)
            )
        status.timings["total"] = round(time.monotonic() - started, 3)
        status.exit_code = 0
        status.save(self.output, "published")
        log.info("published ({} files)", len(published["files"]))
        return "published"

    def _timed(self, step: str, action: Callable[[], T]) -> T:
        with self.timings.step(step):
            return action()

    def _up_to_date(self, fingerprint_: str) -> bool:
        """Repair what an interrupted run left, then ask the manifest whether work remains."""
        if not self.settings.dry_run:
            with self.output.lock(self.target.subject.prefix):
                for action in repair(self.output, self.target):
                    self.log.warning("repaired OUTPUT: {}", action)
        manifest = published_manifest(self.output, self.target, deep=self.settings.verify)
        if not manifest or self.settings.force or not _same(manifest, fingerprint_, self.settings):
            return False
        self.log.info("published and up to date: nothing to do")
        if not self.settings.dry_run and self.status.load(self.output).get("state") != "published":
            # the subject is published: a record left 'failed' or 'started' by a later run
            # that stopped early would say otherwise (a record already right is not rewritten)
            self.status.exit_code = 0
            self.status.set_aside = len(manifest.get("set_aside") or [])
            self.status.save(self.output, "published")
        return True

    def _deidentify(self, staged: StagedExam, bids_root: Path, work: Path) -> dict[str, Any]:
        """The de-identification profile over the converted tree (and sourcedata when asked)."""
        settings, label = self.settings, self.subject.label
        secret = load_secret(settings.date_secret) if settings.dates == "shift" else b""
        offset = date_offset(label, secret) if secret else 0
        report: dict[str, Any] = {"profile": "none", "dates": settings.dates}
        if settings.deid_profile != "none":
            result = deidentify(
                bids_root / self.target.subject.folder,
                self.ids,
                profile_name=settings.deid_profile,
                dates=settings.dates,
                offset_days=offset,
            )
            report = result.to_json()
        if settings.deface_cmd:  # faces are not header text: defaced whatever the profile
            report["defaced"] = deface(bids_root / self.target.subject.folder, settings.deface_cmd)
        if settings.sourcedata:
            dest = work / "sourcedata" / self.target.data
            seed = dicom_seed(label, secret or load_secret(settings.date_secret))
            report["sourcedata_files"] = sum(
                deidentify_dicoms(
                    study.folder,
                    dest / f"study-{k}",
                    offset_days=offset,
                    dates=settings.dates,
                    seed=seed,
                    ids=self.ids,
                )
                for k, study in enumerate(staged.studies, start=1)
            )
        return report

    def _gate(self, report: GateReport, bids_root: Path, work: Path) -> None:
        """Validator, expectations and PHI scan; then the visual report, scanned in turn."""
        deriv = work / "derivatives"
        run_gate(
            report,
            bids_root=bids_root,
            derivatives=deriv,
            sourcedata=work / "sourcedata",
            ids=self.ids,
            expected=self.heuristic.expected,
            work=work,
            strict=self.settings.strict,
            timings=self.timings,
        )
        if report.set_aside:
            self.status.set_aside = len(report.set_aside)
            names = ", ".join(
                f"{s['series_id']} ({', '.join(s['codes'])})" for s in report.set_aside
            )
            self.log.warning(
                "{} series set aside, not published: {} fail BIDS validation (see gate.json)",
                len(report.set_aside),
                self.ids.redact(names),
            )
        dest = deriv / self.target.data
        if report.passed:
            with self.timings.step("gate/report"):
                write_subject_report(
                    dest,
                    bids_dir=bids_root,
                    label=self.subject.label,
                    session=self.subject.session,
                    gate=json.loads(report.to_json(self.ids)),
                    heuristic=self.heuristic.name,
                    versions=versions(),
                    timings=dict(self.status.timings),
                )
            recheck(report, deriv, self.ids)
        (dest / "gate.json").write_text(report.to_json(self.ids) + "\n")
        if not report.passed:
            where = _save_failure(self.output, self.subject, self.ids, report)
            raise GateFailed(
                f"failed its gate: {report.failure}; nothing was published",
                report.exit_code,
                hint=f"see {where}",
            )

    def _failed(self, code: int, error_class: str, *, retryable: bool) -> None:
        status = self.status
        status.exit_code, status.error_class, status.retryable = code, error_class, retryable
        status.save(self.output, "failed")
        if self.work is not None and not self.settings.dry_run:
            _save_failed_log(self.output, self.subject, self.work, self.ids, self.settings)


def _same(manifest: dict[str, Any], fp: str, settings: Settings) -> bool:
    return (
        manifest.get("input_fingerprint") == fp
        and manifest.get("versions") == versions()
        and manifest.get("options") == _options(settings)
    )


def _options(settings: Settings) -> dict[str, Any]:
    """The settings that change what a job publishes."""
    return {
        "participant_fields": sorted(settings.participant_fields),
        "deid_profile": settings.deid_profile,
        "dates": settings.dates,
        "sourcedata": settings.sourcedata,
        "deface_cmd": bool(settings.deface_cmd),
    }


def _redacted_log(src: Path, ids: Identifiers, paths: logs.LocalPaths) -> str:
    """The job's log so far, redacted again with every identifier now known, and without
    this machine's paths (it is published)."""
    lines = src.read_text(encoding="utf-8").splitlines() if src.exists() else []
    return "".join(paths(ids.redact(line)) + "\n" for line in lines)


def local_paths(settings: Settings) -> logs.LocalPaths:
    """What a published log says instead of this machine's SOURCE, OUTPUT and work dir."""
    named = {str(settings.work_dir): "WORK_DIR"}
    for location, name in ((settings.source, "SOURCE"), (settings.output, "OUTPUT")):
        if location and not is_remote(location):
            named[str(Path(location).expanduser().absolute())] = name
    return logs.LocalPaths(named)


def _save_failure(output: Store, subject: Subject, ids: Identifiers, report: GateReport) -> str:
    """Keep the failed GateReport in OUTPUT/.bidsapp/failed/ (never in the dataset)."""
    path = f".bidsapp/failed/{subject.job_name}/gate.json"
    output.write_bytes(path, (report.to_json(ids) + "\n").encode())
    return f"{output.describe()}/{path}"


def _save_failed_log(
    output: Store, subject: Subject, work: Path, ids: Identifiers, settings: Settings
) -> None:
    """The failed job's redacted log beside its GateReport, best effort."""
    with contextlib.suppress(BidsAppError, OSError):
        text = _redacted_log(work / "log.jsonl", ids, local_paths(settings))
        output.write_bytes(f".bidsapp/failed/{subject.job_name}/log.jsonl", text.encode())
