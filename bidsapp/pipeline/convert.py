"""Convert: heudiconv (dcm2niix inside) over the staged studies → the subject's BIDS tree.

heudiconv's bookkeeping (`.heudiconv/`, which keeps patient IDs) and the sourcedata tarballs some
heuristics make stay in the work dir; only `sub-<label>` comes out.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.errors import BadInputData, UsageError
from bidsapp.heuristic.classify import Decision, output_names
from bidsapp.heuristic.dcm2niix_shim import environment as dcm2niix_shim_env
from bidsapp.heuristic.finish import PLAN_ENV, PlanEntry, finish, full_stem, read_plan
from bidsapp.heuristic.headers import inventory
from bidsapp.heuristic.overrides import ENV as OVERRIDES_ENV
from bidsapp.heuristic.overrides import dump as dump_overrides
from bidsapp.heuristic.overrides import load as load_overrides
from bidsapp.pipeline.stage import StagedExam
from bidsapp.pipeline.subjects import Subject
from bidsapp.tools import ToolFailed, run, tool_env, which

HEURISTICS_DIR = Path(__file__).parents[1] / "heuristics"
_REPO_HEURISTICS = Path(__file__).resolve().parents[2] / "heuristics"


@dataclass(frozen=True)
class Heuristic:
    """A heudiconv heuristic file, resolved and checked once."""

    name: str
    path: Path
    sha256: str
    expected: tuple[str, ...] = ()  # glob patterns under sub-<L>/ that must each match a file
    overrides: Path | None = None  # the study's validated overrides file (--overrides)


@dataclass
class SeriesRow:
    """One source series and what became of it."""

    session: str
    series_id: str
    description: str
    image_type: str
    dims: str
    tr: str
    te: str
    files: int
    outputs: list[str] = field(default_factory=list)
    reason: str = ""
    note: str = ""  # what else happened to a converted series (e.g. a side product removed)


@dataclass
class Converted:
    """The converted subject tree and the series table behind it."""

    root: Path  # holds sub-<label>/
    files: list[str]
    series: list[SeriesRow]
    sessions: list[str]


def heuristic_dirs() -> list[Path]:
    """Where named heuristics are found: the installed package, then a source checkout."""
    return [d for d in (HEURISTICS_DIR, _REPO_HEURISTICS) if d.is_dir()]


def load_heuristic(spec: str, overrides: Path | None = None) -> Heuristic:
    """Resolve `--heuristic` (a name from heuristics/ or a path) and check it loads.

    The overrides file is checked here too, before any work, and counts in the digest: a
    changed override reconverts like a changed heuristic.
    """
    path = Path(spec).expanduser()
    if not (spec.endswith(".py") or "/" in spec):
        found = [d / f"{spec}.py" for d in heuristic_dirs() if (d / f"{spec}.py").is_file()]
        if not found:
            names = sorted({p.stem for d in heuristic_dirs() for p in d.glob("[!_]*.py")})
            raise UsageError(
                f"no heuristic named {spec!r}", hint=f"choose one of {', '.join(names)}"
            )
        path = found[0]
    if not path.is_file():
        raise UsageError(f"heuristic file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"bidsapp_heuristic_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"heuristic {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a user's file can fail in any way; it is still a usage error
        raise UsageError(
            f"heuristic {path.name} does not load: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(module, "infotodict", None)):
        raise UsageError(f"heuristic {path.name} defines no infotodict(seqinfo)")
    expected = tuple(getattr(module, "EXPECTED_FILES", ()) or ())
    digest = hashlib.sha256(path.read_bytes())
    if overrides is not None:
        load_overrides(overrides)
        digest.update(b"\0overrides\0" + overrides.read_bytes())
        overrides = overrides.absolute()
    return Heuristic(path.stem, path.resolve(), digest.hexdigest(), expected, overrides)


def conversion_units(staged: StagedExam, subject: Subject) -> list[tuple[list[Path], str]]:
    """What each heudiconv run converts, and into which session.

    The map's session takes every study of the exam folder; without one, several studies
    become sessions 1, 2… in acquisition order, and a single study no session at all.
    """
    folders = [study.folder for study in staged.studies]
    if subject.session:
        return [(folders, subject.session)]
    if len(folders) > 1:
        return [([folder], str(k)) for k, folder in enumerate(folders, start=1)]
    return [(folders, "")]


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


def convert(staged: StagedExam, subject: Subject, heuristic: Heuristic, work: Path) -> Converted:
    """Run heudiconv once per study, finish the sidecars, and collect the subject tree."""
    out = work / "heudiconv"
    env: dict[str, str] = {}
    real_dcm2niix = which("dcm2niix")
    if real_dcm2niix:  # see dcm2niix_shim: nipype misses outputs after some dcm2niix warnings
        env.update(dcm2niix_shim_env(real_dcm2niix, tool_env()["PATH"]))
    if heuristic.overrides is not None:
        normalized = work / "overrides.json"
        dump_overrides(load_overrides(heuristic.overrides), normalized)
        env[OVERRIDES_ENV] = str(normalized)
    plans: list[tuple[str, list[Path], Path]] = []
    for k, (folders, session) in enumerate(conversion_units(staged, subject), start=1):
        argv = heudiconv_argv(folders, subject.label, session, heuristic.path, out)
        plan_file = work / f"plan-{k}.json"
        plans.append((session, folders, plan_file))
        try:
            run(argv, cwd=work, env={**env, PLAN_ENV: str(plan_file)})
        except ToolFailed as exc:
            raise BadInputData(
                f"heudiconv could not convert this exam with heuristic {heuristic.name!r}: "
                f"{exc.tail.splitlines()[-1] if exc.tail else exc.code}",
                hint="try another --heuristic, or run 'bidsapp inspect' on the exam",
            ) from exc
    subject_dir = out / f"sub-{subject.label}"
    bids = work / "bids"
    if bids.exists():
        shutil.rmtree(bids)
    bids.mkdir()
    if subject_dir.is_dir():
        shutil.copytree(subject_dir, bids / subject_dir.name, symlinks=False)
    series: list[SeriesRow] = []
    for session, folders, plan_file in plans:
        if plan_file.is_file():
            entries = read_plan(plan_file)
            notes = finish(bids, subject.label, session, entries)
            rows = plan_table(entries, folders, subject.label, session, bids)
            for row in rows:
                row.note = notes.get(row.series_id, "")
            series += rows
    files: list[str] = []
    if (bids / subject_dir.name).is_dir():
        files = sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*") if p.is_file())
    if not plans or not all(p.is_file() for _, _, p in plans):
        series = _series_table(out, subject.label)
    found_sessions = sorted(p.name[4:] for p in (bids / subject_dir.name).glob("ses-*"))
    return Converted(bids, files, series, found_sessions)


def plan_table(
    entries: list[PlanEntry],
    folders: list[Path],
    label: str,
    session: str,
    bids: Path | None,
) -> list[SeriesRow]:
    """The series table from the heuristic's decisions, plus series heudiconv never listed.

    With `bids` (after conversion) a predicted file that is absent is reported, so the table
    says what was really written; without it (inspect) the table is the prediction.
    """
    rows: list[SeriesRow] = []
    seen: set[tuple[int, str]] = set()
    for decision, h in entries:
        seen.add((h.number, h.description))
        stems = [full_stem(n, label, session) for n in output_names(decision, h)]
        reason = decision.reason
        if bids is not None and stems:
            missing = [s for s in stems if not (bids / f"{s}.nii.gz").is_file()]
            if missing:
                reason = "heudiconv/dcm2niix wrote no image for " + ", ".join(
                    Path(s).name for s in missing
                )
                stems = [s for s in stems if s not in missing]
        rows.append(_row(session, decision, h, stems, reason))
    staged = sum(1 for folder in folders for f in folder.rglob("*") if f.is_file())
    if staged == sum(h.files for _, h in entries):
        return rows  # heudiconv listed every file: no series is left to find
    for folder in folders:
        for inv in inventory(folder):
            if (inv.number, inv.description) in seen:
                continue
            seen.add((inv.number, inv.description))
            rows.append(
                SeriesRow(
                    session,
                    str(inv.number),
                    inv.description,
                    inv.image_type,
                    "",
                    "",
                    "",
                    inv.files,
                    [],
                    f"non-image series ({inv.sop_class or 'no pixel data'}): not convertible",
                )
            )
    return rows


def _row(session: str, d: Decision, h: Any, stems: list[str], reason: str) -> SeriesRow:
    return SeriesRow(
        session,
        d.series_id,
        h.description,
        "\\".join(h.image_type),
        "x".join(str(v) for v in h.dims),
        f"{h.tr:g}" if h.tr else "",
        f"{h.te:g}" if h.te else "",
        h.files,
        stems,
        "" if stems else reason,
    )


def _series_table(out: Path, label: str) -> list[SeriesRow]:
    """Every series heudiconv saw, with the BIDS name it got or why it got none."""
    rows: list[SeriesRow] = []
    info_root = out / ".heudiconv" / label
    for info in sorted(info_root.glob("**/info")):
        session = info.parent.name[4:] if info.parent.name.startswith("ses-") else ""
        named: dict[str, list[str]] = {}
        for auto in info.glob("*.auto.txt"):
            mapping: dict[Any, list[str]] = ast.literal_eval(auto.read_text())
            for key, series_ids in mapping.items():
                template, outtypes = key[0], key[1]
                if "nii.gz" not in outtypes and "nii" not in outtypes:
                    continue
                prefix = f"sub-{label}" + (f"_ses-{session}" if session else "")
                folder = f"sub-{label}" + (f"/ses-{session}" if session else "")
                name = template.format(
                    bids_subject_session_dir=folder,
                    bids_subject_session_prefix=prefix,
                    subject=label,
                    session=f"ses-{session}" if session else "",
                    item="{item}",
                )
                for sid in series_ids:
                    named.setdefault(sid, []).append(name)
        for tsv in info.glob("dicominfo*.tsv"):
            with tsv.open(newline="") as fh:
                for rec in csv.DictReader(fh, delimiter="\t"):
                    sid = rec["series_id"]
                    dims = "x".join(rec[f"dim{i}"] for i in range(1, 5))
                    rows.append(
                        SeriesRow(
                            session,
                            sid,
                            rec.get("series_description", ""),
                            rec.get("image_type", ""),
                            dims,
                            rec.get("TR", ""),
                            rec.get("TE", ""),
                            int(rec.get("series_files") or 0),
                            named.get(sid, []),
                            "" if sid in named else "not selected by the heuristic",
                        )
                    )
    return rows


def survey(
    staged: StagedExam, subject: Subject, heuristic: Heuristic, work: Path
) -> list[SeriesRow]:
    """What `convert` would make of the exam, without converting (heudiconv -c none)."""
    out = work / "survey"
    env: dict[str, str] = {}
    if heuristic.overrides is not None:
        normalized = work / "overrides.json"
        dump_overrides(load_overrides(heuristic.overrides), normalized)
        env[OVERRIDES_ENV] = str(normalized)
    rows: list[SeriesRow] = []
    for k, (folders, session) in enumerate(conversion_units(staged, subject), start=1):
        argv = heudiconv_argv(folders, subject.label, session, heuristic.path, out)
        argv[argv.index("dcm2niix")] = "none"
        plan_file = work / f"survey-plan-{k}.json"
        try:
            run(argv, cwd=work, env={**env, PLAN_ENV: str(plan_file)})
        except ToolFailed as exc:
            raise BadInputData(
                f"heudiconv could not read this exam with heuristic {heuristic.name!r}: "
                f"{exc.tail.splitlines()[-1] if exc.tail else exc.code}"
            ) from exc
        if plan_file.is_file():
            rows += plan_table(read_plan(plan_file), folders, subject.label, session, None)
    return rows if rows else _series_table(out, subject.label)
