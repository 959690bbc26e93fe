"""Convert: heudiconv (dcm2niix inside) over the staged studies → the subject's BIDS tree.

For each study (or the map's session), one dcm2niix pass over the whole study gives the evidence
every vendor gives; with the staged headers it makes the series summaries the heuristic names
series from. heudiconv then converts with the heuristic. A series heudiconv or nibabel cannot
read never sinks the exam: it is left out of heudiconv's run and takes dcm2niix's own image, and
only a series dcm2niix cannot convert either is set aside, with its error. With a header-based
heuristic every image is then named by the plan (heuristic/settle.py) and its sidecar finished.

heudiconv's bookkeeping (`.heudiconv/`, which keeps patient IDs) and the sourcedata tarballs some
heuristics make stay in the work dir; only `sub-<label>` comes out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bidsapp.bids import SubjectSession
from bidsapp.errors import BadInputData, LocalIOError
from bidsapp.heuristic.base import PLAN_ENV
from bidsapp.heuristic.classify import Decision
from bidsapp.heuristic.dcm2niix_shim import environment as dcm2niix_shim_env
from bidsapp.heuristic.finish import finish
from bidsapp.heuristic.headers import (
    SeriesHeader,
    series_id,
    series_key,
    summaries,
    write_summaries,
)
from bidsapp.heuristic.loader import Heuristic
from bidsapp.heuristic.overrides import ENV as OVERRIDES_ENV
from bidsapp.heuristic.overrides import dump as dump_overrides
from bidsapp.heuristic.prepass import HEADERS_ENV, convert_folder
from bidsapp.heuristic.settle import settle
from bidsapp.pipeline.series import SeriesRow, heudiconv_table, plan_table
from bidsapp.pipeline.stage import StagedExam, Study
from bidsapp.pipeline.subjects import Subject
from bidsapp.timing import Timings
from bidsapp.tools import ToolFailed, run, tool_env, which

HEUDICONV_TIMEOUT = 6 * 3600.0
# heudiconv's work on a unit, in header reads: it reads each file's header (~1.3 ms here) and
# converts one series at a time (~0.13 s each, most of it per series, not per file)
SERIES_COST = 100
SPLIT_FROM = 800  # work (~1 s) from which a second heudiconv run repays its start-up (~0.6 s)
MAX_PARTS = 2
T = TypeVar("T")


@dataclass
class Converted:
    """The converted subject tree and the series table behind it."""

    root: Path  # holds sub-<label>/
    files: list[str]
    series: list[SeriesRow]
    sessions: list[str]


@dataclass
class Unit:
    """What one heudiconv run converts, into which session."""

    studies: list[Study]
    session: str

    @property
    def folders(self) -> list[Path]:
        return [s.folder for s in self.studies]


def conversion_units(staged: StagedExam, subject: Subject) -> list[Unit]:
    """The map's session takes every study of the exam folder; without one, several studies
    become sessions 1, 2… in acquisition order, and a single study no session at all."""
    if subject.session:
        return [Unit(staged.studies, subject.session)]
    if len(staged.studies) > 1:
        return [Unit([study], str(k)) for k, study in enumerate(staged.studies, start=1)]
    return [Unit(staged.studies, "")]


def heudiconv_argv(
    files: list[Path], label: str, session: str, heuristic: Path, out: Path
) -> list[str]:
    """The one heudiconv command line bidsapp runs (also what benchmarks compare against)."""
    argv = ["heudiconv", "--files", *map(str, files), "-s", label, "-f", str(heuristic)]
    # -l "": output straight into `out` instead of a locator made from the study description;
    # -g all: the staged folder is one study (or one session) by construction.
    argv += ["-c", "dcm2niix", "--bids", "notop", "--minmeta", "-o", str(out), "-l", ""]
    argv += ["-g", "all", "--overwrite"]
    return argv + (["--ses", session] if session else [])


@dataclass
class Evidence:
    """One unit's series summaries and where the dcm2niix pass wrote its images."""

    headers: list[SeriesHeader]
    prepass: Path


def series_files(unit: Unit) -> dict[str, list[Path]]:
    """The staged files of each series of the unit, by series key (known from staging)."""
    files: dict[str, list[Path]] = {}
    for study in unit.studies:
        paths = sorted(p for p in study.folder.iterdir() if p.is_file())
        for path, rec in zip(paths, study.records, strict=True):
            files.setdefault(series_key(rec), []).append(path)
    return files


def gather(unit: Unit, work: Path, k: int) -> Evidence:
    """The dcm2niix pass over each study of the unit, folded with the staged headers."""
    prepass = work / "prepass" / f"unit-{k}"
    outputs = {}
    for study in unit.studies:
        outputs.update(convert_folder(study.folder, prepass))
    records = [r for study in unit.studies for r in study.records]
    return Evidence(summaries(records, outputs), prepass)


def _environment(heuristic: Heuristic, work: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    real_dcm2niix = which("dcm2niix")
    # see dcm2niix_shim: nipype misses outputs after some dcm2niix warnings (Philips GR/SP)
    if real_dcm2niix:
        env.update(dcm2niix_shim_env(real_dcm2niix, tool_env()["PATH"]))
    if heuristic.overrides is not None:
        normalized = work / "overrides.json"
        dump_overrides(heuristic.rules, normalized)
        env[OVERRIDES_ENV] = str(normalized)
    return env


def convert(
    staged: StagedExam,
    subject: Subject,
    heuristic: Heuristic,
    work: Path,
    timings: Timings | None = None,
) -> Converted:
    """Convert every unit, name and finish its images, and collect the subject tree."""
    timings = timings or Timings()
    bids = work / "bids"
    if bids.exists():
        shutil.rmtree(bids)
    bids.mkdir()
    series: list[SeriesRow] = []
    planned = heuristic.plan is not None
    for k, unit in enumerate(conversion_units(staged, subject), start=1):
        headers_file, plan_file = work / f"headers-{k}.json", work / f"plan-{k}.json"
        headers_file.unlink(missing_ok=True)
        env = {**_environment(heuristic, work), HEADERS_ENV: str(headers_file)}
        out = work / "heudiconv" / f"unit-{k}"
        env[PLAN_ENV] = str(plan_file)
        heudiconv = Run(unit, subject, heuristic, series_files(unit), out, env)
        # heudiconv scans every file before it asks the heuristic anything: the dcm2niix pass
        # runs meanwhile, and the heuristic waits for the summaries it makes
        with ThreadPoolExecutor(max_workers=1) as pool:
            converting = pool.submit(
                _timed, timings, "convert/heudiconv", heudiconv.convert_split, plan_file
            )
            evidence = Evidence([], work)
            try:
                with timings.step("convert/dcm2niix pass"):
                    evidence = gather(unit, work, k)
            finally:  # an empty list rather than none: heudiconv must never wait for nothing
                write_summaries(headers_file, evidence.headers)
            failures = converting.result()
        # heudiconv converted into its own tree; its images move to the subject's tree
        folder = SubjectSession(subject.label).folder
        _merge(out / folder, bids / folder, unit.session)
        if not planned:
            series += heudiconv_table(out, subject.label, unit.session)
            continue
        assert heuristic.plan is not None
        decisions = heuristic.plan(evidence.headers, heuristic.rules)
        entries = _entries(decisions, evidence.headers)
        record = _read_record(plan_file)
        by_dcm2niix = {key for key in failures} | _unrecorded(entries, record)
        settled = settle(
            bids, subject.label, unit.session, entries, record, evidence.prepass, by_dcm2niix
        )
        notes = finish(bids, subject.label, unit.session, entries)
        series += plan_table(entries, unit.session, subject.label, bids, settled, notes, failures)
    files: list[str] = []
    subject_dir = bids / SubjectSession(subject.label).folder
    if subject_dir.is_dir():
        files = sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*") if p.is_file())
    found_sessions = sorted(p.name[4:] for p in subject_dir.glob("ses-*"))
    return Converted(bids, files, series, found_sessions)


def _entries(
    decisions: list[Decision], headers: list[SeriesHeader]
) -> list[tuple[Decision, SeriesHeader]]:
    by_key = {h.key: h for h in headers}
    return [(d, by_key[d.key]) for d in decisions]


def _read_record(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else []


def _unrecorded(
    entries: list[tuple[Decision, SeriesHeader]], record: list[dict[str, object]]
) -> set[str]:
    """Planned series heudiconv never got (it failed before naming them): dcm2niix's then."""
    seen = {str(k) for r in record for k in r.get("members", [])}  # type: ignore[attr-defined]
    return {d.key for d, _ in entries if not d.skipped and d.key not in seen}


def _merge(src: Path, dest: Path, session: str) -> None:
    """One unit's heudiconv output into the subject tree (each unit writes its own session)."""
    part = src / f"ses-{session}" if session else src
    if not part.is_dir():
        return
    target = dest / f"ses-{session}" if session else dest
    shutil.copytree(part, target, dirs_exist_ok=True)


def _join_tree(src: Path, dest: Path) -> None:
    """One part's heudiconv tree into the unit's: files side by side, the scans.tsv of each
    subject (and session) folder one table of every part's rows."""
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith("_scans.tsv") and target.exists():
            header, *rows = target.read_text(encoding="utf-8").splitlines()
            rows += path.read_text(encoding="utf-8").splitlines()[1:]
            target.write_text("\n".join([header, *sorted(set(rows))]) + "\n", encoding="utf-8")
        else:
            shutil.copy2(path, target)


def _culprit(output: str, record: list[dict[str, object]], label: str, session: str) -> str:
    """The heudiconv series it was converting when it failed ('' when it failed before)."""
    converting = re.findall(r"Converting (\S+) \(\d+ DICOMs\)", output)
    if not converting:
        return ""
    stem = Path(converting[-1]).name
    prefix = SubjectSession(label, session).prefix
    for r in record:
        template = str(r["template"])
        if template.rsplit("/", 1)[-1].replace("{bids_subject_session_prefix}", prefix) == stem:
            return str(r["series_id"])
    return ""


def _timed(timings: Timings, step: str, action: Callable[[Path], T], arg: Path) -> T:
    with timings.step(step):
        return action(arg)


@dataclass
class Run:
    """heudiconv over one unit, leaving out any series that makes it (or nibabel) fail."""

    unit: Unit
    subject: Subject
    heuristic: Heuristic
    files: dict[str, list[Path]]  # by series key
    out: Path
    env: dict[str, str]

    def series_ids(self) -> dict[str, list[str]]:
        """heudiconv's series ids, each with the series keys it groups."""
        found: dict[str, set[str]] = {}
        for study in self.unit.studies:
            for rec in study.records:
                found.setdefault(series_id(rec), set()).add(series_key(rec))
        return {sid: sorted(keys) for sid, keys in found.items()}

    def unreadable_by_nibabel(self) -> dict[str, str]:
        """Multi-frame series of this run nibabel cannot shape (heudiconv's scan would abort
        on them)."""
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel warns on import that dicomwrappers are beta
            from nibabel.nicom import dicomwrappers

        enhanced = {
            series_key(r)
            for study in self.unit.studies
            for r in study.records
            if "Enhanced" in r.sop_class and series_key(r) in self.files  # a part: its own
        }
        found: dict[str, str] = {}
        for key in sorted(enhanced):
            try:
                wrapper = dicomwrappers.wrapper_from_data(  # type: ignore[no-untyped-call]
                    pydicom.dcmread(self.files[key][0], stop_before_pixels=True)
                )
                _ = wrapper.image_shape  # what heudiconv's scan asks of each series
            except Exception as exc:  # nibabel raises many kinds; any of them stops heudiconv
                found[key] = f"nibabel cannot read it ({type(exc).__name__}: {exc})"
        return found

    def parts(self) -> list[Run]:
        """The unit's series in as many heudiconv runs as there are cores (two here), balanced
        by work: heudiconv reads every header of its files in one Python process and converts
        one series at a time, so one run leaves a core idle. Only under a plan (names come
        from the plan, whoever converts) and for units with enough work to repay a second
        start-up."""
        workers = min(os.cpu_count() or 1, MAX_PARTS)
        groups = [[k for k in keys if k in self.files] for keys in self.series_ids().values()]
        cost = {tuple(keys): sum(len(self.files[k]) + SERIES_COST for k in keys) for keys in groups}
        if self.heuristic.plan is None or workers < 2 or sum(cost.values()) < SPLIT_FROM:
            return [self]
        bins: list[dict[str, list[Path]]] = [{} for _ in range(workers)]
        load = [0] * workers
        for keys, work in sorted(cost.items(), key=lambda item: -item[1]):
            lightest = load.index(min(load))  # the costliest series first, each to the lightest
            bins[lightest].update({k: self.files[k] for k in keys})
            load[lightest] += work
        return [
            Run(
                self.unit,
                self.subject,
                self.heuristic,
                files,
                self.out.with_name(f"{self.out.name}-part{j}"),
                self.env,
            )
            for j, files in enumerate(bins, start=1)
            if files
        ]

    def convert_split(self, plan_file: Path) -> dict[str, str]:
        """`convert` over each of `parts` at once; their trees and plan records joined into
        this run's, as one run would have left them."""
        parts = self.parts()
        if len(parts) == 1:
            return self.convert(plan_file)
        plans = [plan_file.with_name(f"{plan_file.stem}-part{j}.json") for j in range(len(parts))]
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            results = list(pool.map(Run.convert, parts, plans))
        records = [r for plan in plans for r in _read_record(plan)]
        plan_file.write_text(json.dumps(records, indent=1), encoding="utf-8")
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        for part in parts:
            _join_tree(part.out, self.out)
            shutil.rmtree(part.out, ignore_errors=True)
        return {key: why for result in results for key, why in result.items()}

    def convert(self, plan_file: Path) -> dict[str, str]:
        """Run heudiconv until it succeeds; returns the series left out (by key) with why.
        Without a plan (another heuristic) a failure fails the exam."""
        planned = self.heuristic.plan is not None
        failures = self.unreadable_by_nibabel() if planned else {}
        ids = self.series_ids()
        while True:
            files = [p for key, paths in self.files.items() if key not in failures for p in paths]
            if not files:
                return failures
            argv = heudiconv_argv(
                sorted(files), self.subject.label, self.unit.session, self.heuristic.path, self.out
            )
            env = {**self.env, PLAN_ENV: str(plan_file)}
            # each attempt from scratch: heudiconv reuses the plan it recorded in `.heudiconv/`
            shutil.rmtree(self.out, ignore_errors=True)
            self.out.mkdir(parents=True)
            try:
                run(argv, cwd=self.out.parent, env=env, timeout=HEUDICONV_TIMEOUT)
                return failures
            except ToolFailed as exc:
                error = exc.tail.splitlines()[-1] if exc.tail else f"exit {exc.code}"
                if _disk_full(exc.output):
                    raise LocalIOError("the work dir filled up during conversion") from exc
                if not planned:
                    raise BadInputData(
                        f"heudiconv could not convert this exam with heuristic "
                        f"{self.heuristic.name!r}: {error}",
                        hint="try another --heuristic, or run 'bidsapp inspect' on the exam",
                    ) from exc
                record = _read_record(plan_file)
                culprit = _culprit(exc.output, record, self.subject.label, self.unit.session)
                keys = ids.get(culprit, []) if culprit else []
                if not keys or all(k in failures for k in keys):
                    # it failed where no series can be blamed: dcm2niix alone converts them all
                    for key in self.files:
                        failures.setdefault(key, f"heudiconv could not read this exam ({error})")
                    return failures
                for key in keys:
                    failures[key] = f"heudiconv failed on it ({error})"


def _disk_full(output: str) -> bool:
    return "No space left on device" in output or "Disk quota exceeded" in output


def survey(
    staged: StagedExam, subject: Subject, heuristic: Heuristic, work: Path
) -> list[SeriesRow]:
    """What `convert` would make of the exam, without converting: the plan for a header-based
    heuristic, else heudiconv's own series table (`-c none`)."""
    rows: list[SeriesRow] = []
    for k, unit in enumerate(conversion_units(staged, subject), start=1):
        evidence = gather(unit, work, k)
        env = _environment(heuristic, work)
        if heuristic.plan is not None:
            entries = _entries(heuristic.plan(evidence.headers, heuristic.rules), evidence.headers)
            rows += plan_table(entries, unit.session, subject.label, None, None, {}, {})
            continue
        out = work / "survey"
        argv = heudiconv_argv(
            [p for f in unit.folders for p in sorted(f.iterdir())],
            subject.label,
            unit.session,
            heuristic.path,
            out,
        )
        argv[argv.index("dcm2niix")] = "none"
        try:
            run(argv, cwd=work, env=env, timeout=HEUDICONV_TIMEOUT)
        except ToolFailed as exc:
            raise BadInputData(
                f"heudiconv could not read this exam with heuristic {heuristic.name!r}: "
                f"{exc.tail.splitlines()[-1] if exc.tail else exc.code}"
            ) from exc
        rows += heudiconv_table(out, subject.label, unit.session)
    return rows
