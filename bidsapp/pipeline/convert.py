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
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from bidsapp.errors import BadInputData
from bidsapp.heuristic.base import PLAN_ENV
from bidsapp.heuristic.classify import Decision
from bidsapp.heuristic.dcm2niix_shim import environment as dcm2niix_shim_env
from bidsapp.heuristic.finish import finish
from bidsapp.heuristic.headers import SeriesHeader, summaries, write_summaries
from bidsapp.heuristic.loader import Heuristic
from bidsapp.heuristic.overrides import ENV as OVERRIDES_ENV
from bidsapp.heuristic.overrides import dump as dump_overrides
from bidsapp.heuristic.prepass import HEADERS_ENV, convert_folder
from bidsapp.heuristic.settle import settle
from bidsapp.pipeline.series import SeriesRow, heudiconv_table, plan_table
from bidsapp.pipeline.stage import StagedExam, Study
from bidsapp.pipeline.subjects import Subject
from bidsapp.tools import ToolFailed, run, tool_env, which

HEUDICONV_TIMEOUT = 6 * 3600.0


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
    files: dict[str, list[Path]] = field(default_factory=dict)  # series key → staged files


def gather(unit: Unit, work: Path, k: int) -> Evidence:
    """The dcm2niix pass over each study of the unit, folded with the staged headers."""
    prepass = work / "prepass" / f"unit-{k}"
    outputs = {}
    records = []
    files: dict[str, list[Path]] = {}
    for study in unit.studies:
        outputs.update(convert_folder(study.folder, prepass))
        paths = sorted(p for p in study.folder.iterdir() if p.is_file())
        records += study.records
        for path, rec in zip(paths, study.records, strict=True):
            files.setdefault(rec.series_uid, []).append(path)
    return Evidence(summaries(records, outputs), prepass, files)


def _environment(heuristic: Heuristic, work: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    real_dcm2niix = which("dcm2niix")
    if real_dcm2niix:  # see dcm2niix_shim: nipype misses outputs after some dcm2niix warnings
        env.update(dcm2niix_shim_env(real_dcm2niix, tool_env()["PATH"]))
    if heuristic.overrides is not None:
        normalized = work / "overrides.json"
        dump_overrides(heuristic.rules, normalized)
        env[OVERRIDES_ENV] = str(normalized)
    return env


def convert(staged: StagedExam, subject: Subject, heuristic: Heuristic, work: Path) -> Converted:
    """Convert every unit, name and finish its images, and collect the subject tree."""
    bids = work / "bids"
    if bids.exists():
        shutil.rmtree(bids)
    bids.mkdir()
    env = _environment(heuristic, work)
    series: list[SeriesRow] = []
    planned = heuristic.plan is not None
    for k, unit in enumerate(conversion_units(staged, subject), start=1):
        evidence = gather(unit, work, k)
        headers_file = work / f"headers-{k}.json"
        write_summaries(headers_file, evidence.headers)
        plan_file = work / f"plan-{k}.json"
        unit_env = {**env, HEADERS_ENV: str(headers_file), PLAN_ENV: str(plan_file)}
        out = work / "heudiconv" / f"unit-{k}"
        failures = _heudiconv(unit, subject, heuristic, evidence, out, unit_env, plan_file)
        # heudiconv converted into its own tree; its images move to the subject's tree
        _merge(out / f"sub-{subject.label}", bids / f"sub-{subject.label}", unit.session)
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
    if (bids / f"sub-{subject.label}").is_dir():
        files = sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*") if p.is_file())
    found_sessions = sorted(p.name[4:] for p in (bids / f"sub-{subject.label}").glob("ses-*"))
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


def _culprit(output: str, record: list[dict[str, object]], label: str, session: str) -> str:
    """The heudiconv series it was converting when it failed ('' when it failed before)."""
    converting = re.findall(r"Converting (\S+) \(\d+ DICOMs\)", output)
    if not converting:
        return ""
    stem = Path(converting[-1]).name
    prefix = f"sub-{label}" + (f"_ses-{session}" if session else "")
    for r in record:
        template = str(r["template"])
        if template.rsplit("/", 1)[-1].replace("{bids_subject_session_prefix}", prefix) == stem:
            return str(r["series_id"])
    return ""


def _unreadable_by_nibabel(evidence: Evidence) -> dict[str, str]:
    """Multi-frame series nibabel cannot shape (heudiconv's scan would abort on them)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel warns on import that dicomwrappers are beta
        from nibabel.nicom import dicomwrappers

    found: dict[str, str] = {}
    for h in evidence.headers:
        paths = evidence.files.get(h.key, [])
        if not paths or not h.outputs or "Enhanced" not in h.sop_class:
            continue
        try:
            wrapper = dicomwrappers.wrapper_from_data(  # type: ignore[no-untyped-call]
                pydicom.dcmread(paths[0], stop_before_pixels=True)
            )
            _ = wrapper.image_shape  # what heudiconv's scan asks of each series
        except Exception as exc:  # nibabel raises many kinds; any of them stops heudiconv
            found[h.key] = f"nibabel cannot read it ({type(exc).__name__}: {exc})"
    return found


def _heudiconv(
    unit: Unit,
    subject: Subject,
    heuristic: Heuristic,
    evidence: Evidence,
    out: Path,
    env: dict[str, str],
    plan_file: Path,
) -> dict[str, str]:
    """heudiconv over the unit, leaving out any series that makes it fail; returns the left-out
    series (by key) with why. Without a plan (another heuristic) a failure fails the exam."""
    planned = heuristic.plan is not None
    failures = _unreadable_by_nibabel(evidence) if planned else {}
    by_series_id: dict[str, list[str]] = {}
    for h in evidence.headers:
        by_series_id.setdefault(h.series_id, []).append(h.key)
    while True:
        files = (
            [path for key, paths in evidence.files.items() if key not in failures for path in paths]
            if planned
            else [p for folder in unit.folders for p in sorted(folder.iterdir())]
        )
        if not files:
            return failures
        argv = heudiconv_argv(sorted(files), subject.label, unit.session, heuristic.path, out)
        # each attempt from scratch: heudiconv reuses the plan it recorded in `.heudiconv/`
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        try:
            run(argv, cwd=out.parent, env=env, timeout=HEUDICONV_TIMEOUT)
            return failures
        except ToolFailed as exc:
            error = exc.tail.splitlines()[-1] if exc.tail else f"exit {exc.code}"
            if _disk_full(exc.output):
                from bidsapp.errors import LocalIOError

                raise LocalIOError("the work dir filled up during conversion") from exc
            if not planned:
                raise BadInputData(
                    f"heudiconv could not convert this exam with heuristic {heuristic.name!r}: "
                    f"{error}",
                    hint="try another --heuristic, or run 'bidsapp inspect' on the exam",
                ) from exc
            record = _read_record(plan_file)
            culprit = _culprit(exc.output, record, subject.label, unit.session)
            keys = by_series_id.get(culprit, []) if culprit else []
            if not keys or all(k in failures for k in keys):
                # it failed where no series can be blamed: dcm2niix alone converts them all
                for h in evidence.headers:
                    failures.setdefault(h.key, f"heudiconv could not read this exam ({error})")
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
    env = _environment(heuristic, work)
    for k, unit in enumerate(conversion_units(staged, subject), start=1):
        evidence = gather(unit, work, k)
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
