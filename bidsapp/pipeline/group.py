"""Group: dataset-level files from what the subjects published, then whole-dataset validation.

Merges with what a curator already wrote (extra participants.tsv columns, README text): it never
throws a person's edits away.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from bidsapp.bids import SubjectSession
from bidsapp.errors import (
    JobsUnfinished,
    LocationNotFound,
    NothingPublished,
    TemporaryFailure,
    ValidationFailed,
)
from bidsapp.pipeline.gate import BIDS_VERSION, Validation, validate
from bidsapp.pipeline.publish import (
    DERIVATIVE,
    INDEX,
    Target,
    init_shared,
    published_manifest,
    repair,
)
from bidsapp.pipeline.status import read_all
from bidsapp.pipeline.subjects import read_map
from bidsapp.report.index import index_entry, render_index
from bidsapp.settings import Settings
from bidsapp.stores import Store, open_store
from bidsapp.stores.local import LocalStore
from bidsapp.tools import ToolFailed, versions

FIELD_DOCS = {
    "participant_id": {"Description": "Unique participant identifier"},
    "age": {"Description": "Age of the participant at the first exam", "Units": "year"},
    "sex": {
        "Description": "Sex of the participant as recorded by the scanner",
        "Levels": {"M": "male", "F": "female", "O": "other"},
    },
}
README_TEXT = """# BIDS dataset

Converted from DICOM by bidsapp. Subjects are de-identified; derivatives/bidsapp/.log/index.html
links each subject's conversion report, gate report and provenance.
"""
BIDSIGNORE_LINES = ("extra_data", "**/extra_data/**")


def published_targets(store: Store) -> list[tuple[Target, dict[str, Any]]]:
    """Every subject (or session) whose manifest is present and matches its files."""
    found: list[tuple[Target, dict[str, Any]]] = []
    root = "derivatives/bidsapp"
    if not store.exists(root):
        return found
    for sub in store.list(root):
        if not (sub.is_dir and sub.name.startswith("sub-")):
            continue
        label = sub.name[4:]
        candidates = [Target(label)] + [
            Target(label, e.name[4:])
            for e in store.list(f"{root}/{sub.name}")
            if e.is_dir and e.name.startswith("ses-")
        ]
        for target in candidates:
            manifest = published_manifest(store, target)
            if manifest is not None:
                found.append((target, manifest))
    return found


def run_group(settings: Settings) -> int:
    """Write the dataset-level files and validate the dataset (16 when it fails).

    Exits non-zero, after writing what the published subjects need, when a job of the batch
    failed or never finished; when nothing at all is published, writes nothing (18).
    """
    if settings.init_only:
        store = open_store(settings.output, for_output=True, settings=settings)
        init_shared(store)
        logger.info("shared folders ready in {}", store.describe())
        return 0
    try:
        seen = open_store(settings.output, role="OUTPUT", settings=settings)
    except LocationNotFound as exc:
        raise NothingPublished(f"{exc}: nothing is published there") from exc
    unfinished = unfinished_jobs(seen, published_targets(seen), expected_jobs(settings))
    if not published_targets(seen) and not seen.exists(".bidsapp/incoming"):
        raise NothingPublished(
            f"no subject is published in OUTPUT {seen.describe()}"
            + (f": {describe(unfinished)}" if unfinished else ""),
        )
    store = open_store(settings.output, for_output=True, settings=settings)
    init_shared(store)
    _finish_interrupted(store)
    targets = published_targets(store)
    labels = sorted({t.label for t, _ in targets})
    logger.info("{} published subjects", len(labels))
    _dataset_description(store, settings.dataset_fields)
    _participants(store, labels, settings.participant_fields)
    if not store.exists("README") and not store.exists("README.md"):
        store.write_bytes("README.md", README_TEXT.encode())
    if not store.exists("CHANGES"):
        today = datetime.now(UTC).date().isoformat()
        store.write_bytes(
            "CHANGES", f"1.0.0 {today}\n  - Initial conversion by bidsapp.\n".encode()
        )
    _bidsignore(store)
    _sessions(store, targets)
    _task_files(store, targets)
    _derivative_description(store)
    validation, where = _validate(store, settings.work_dir)
    _index(store, targets, validation)
    errors = validation.errors
    logger.info("dataset validation: {} errors, {} warnings", len(errors), len(validation.warnings))
    unfinished = unfinished_jobs(store, targets, expected_jobs(settings))
    if unfinished:
        logger.error("{}", describe(unfinished))
    if errors:
        codes = sorted({f.code for f in errors})
        raise ValidationFailed(
            f"the dataset fails BIDS validation ({len(errors)} errors: {', '.join(codes)})",
            hint=f"see {where}",
        )
    if unfinished:
        failed = [u.exit_code for u in unfinished if u.exit_code]
        raise JobsUnfinished(
            f"the dataset files are written for {len(labels)} published subjects, but "
            + describe(unfinished),
            exit_code=failed[0] if failed else TemporaryFailure.exit_code,
        )
    return 0


@dataclass(frozen=True)
class Unfinished:
    """A job of the batch that has nothing (new) published: failed, stopped or never ran."""

    job: SubjectSession
    state: str  # 'failed', a running state it stopped in, or 'never ran'
    exit_code: int | None


def expected_jobs(settings: Settings) -> list[SubjectSession] | None:
    """The jobs the group should find: a SLURM batch's task list, else the subject map's rows;
    None when neither is given (only the jobs that left a record count)."""
    if settings.expected is not None:
        return [SubjectSession(label, session) for label, session in settings.expected]
    if settings.subject_map is not None:
        return [SubjectSession(s.label, s.session) for s in read_map(settings.subject_map)]
    return None


def unfinished_jobs(
    store: Store,
    targets: list[tuple[Target, dict[str, Any]]],
    expected: list[SubjectSession] | None,
) -> list[Unfinished]:
    """Jobs whose last run failed (whatever an earlier run published), and expected jobs with
    nothing published: stopped mid-way (a record in a running state) or never ran."""
    published = {(t.label, t.session) for t, _ in targets}
    whole = {t.label for t, _ in targets if not t.session}
    records = {(str(r.get("label")), str(r.get("session") or "")): r for r in read_all(store)}
    keys = sorted(records) if expected is None else sorted({(j.label, j.session) for j in expected})
    found = []
    for label, session in keys:
        record = records.get((label, session), {})
        state = str(record.get("state") or "never ran")
        if state == "failed":
            found.append(Unfinished(SubjectSession(label, session), state, record.get("exit_code")))
        elif (label, session) not in published and label not in whole:
            found.append(Unfinished(SubjectSession(label, session), state, None))
    return found


def describe(unfinished: list[Unfinished]) -> str:
    """One sentence naming every unfinished job and how it ended."""
    parts = [
        f"{u.job.job_name} {u.state}" + (f" (exit {u.exit_code})" if u.exit_code else "")
        for u in unfinished
    ]
    shown = ", ".join(parts[:10]) + (f" and {len(parts) - 10} more" if len(parts) > 10 else "")
    return f"{len(parts)} job{'s' if len(parts) != 1 else ''} not published: {shown}"


def _finish_interrupted(store: Store) -> None:
    """Finish publishes that stopped after their upload was verified (e.g. the manifest could
    not be written on a full OUTPUT disk), as the subject's next job would; under its lock."""
    if not store.exists(".bidsapp/incoming"):
        return
    tags = {e.name.rsplit("-", 1)[0] for e in store.list(".bidsapp/incoming") if e.is_dir}
    for tag in sorted(tags):
        label, _, session = tag.partition("-")
        target = Target(label, session)
        with store.lock(target.subject.prefix):
            for action in repair(store, target):
                logger.warning("{}: {}", target.data, action)


def _read_json(store: Store, path: str) -> dict[str, Any]:
    if not store.exists(path):
        return {}
    try:
        data = json.loads(store.read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        # A person's broken edit is kept out of the dataset but never thrown away.
        keep = f".bidsapp/invalid/{path}"
        logger.warning("{} is not valid JSON; a copy is kept as {}", path, keep)
        store.write_bytes(keep, store.read_bytes(path))
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(store: Store, path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if not store.exists(path) or store.read_bytes(path) != text.encode():
        store.write_bytes(path, text.encode())


def _generated_by() -> dict[str, Any]:
    v = versions()
    return {
        "Name": "bidsapp",
        "Version": v["bidsapp"],
        "Description": (
            f"heudiconv {v['heudiconv']}, dcm2niix {v['dcm2niix']}, "
            f"bids-validator {v['bids-validator']}"
        ),
    }


PLACEHOLDER_NAME = "bidsapp dataset"


def _dataset_description(store: Store, fields: dict[str, Any]) -> None:
    """dataset_description.json: what the flags or --dataset-description give (Name, Authors,
    License, ...) fills fields that are missing or still our placeholder; a curator's values
    always win."""
    data = _read_json(store, "dataset_description.json")
    for key, value in fields.items():
        if key not in data or (key == "Name" and data[key] == PLACEHOLDER_NAME):
            data[key] = value
    data.setdefault("Name", PLACEHOLDER_NAME)
    data.setdefault("BIDSVersion", BIDS_VERSION)
    data.setdefault("DatasetType", "raw")
    others = [g for g in data.get("GeneratedBy", []) if g.get("Name") != "bidsapp"]
    data["GeneratedBy"] = [*others, _generated_by()]
    _write_json(store, "dataset_description.json", data)


def _derivative_description(store: Store) -> None:
    path = "derivatives/bidsapp/dataset_description.json"
    data = _read_json(store, path)
    data.setdefault("Name", "bidsapp conversion reports")
    data.setdefault("BIDSVersion", BIDS_VERSION)
    data["DatasetType"] = "derivative"
    data["GeneratedBy"] = [_generated_by()]
    _write_json(store, path, data)


def _participants(store: Store, labels: list[str], fields: tuple[str, ...]) -> None:
    try:
        columns, rows = _read_tsv(store, "participants.tsv", "participant_id")
    except Unmergeable as exc:
        _leave_as_is(store, exc)
        return
    for name in fields:
        if name not in columns:
            columns.append(name)
    published = {f"sub-{label}" for label in labels}
    if not published and not rows:
        return  # an empty participants.tsv fails validation; nothing to list yet
    orphans = {pid: row for pid, row in rows.items() if pid not in published}
    _set_aside(store, ".bidsapp/unpublished/participants.tsv", "participant_id", columns, orphans)
    out = []
    for pid in sorted(published):
        row = dict(rows.get(pid, {}))
        row["participant_id"] = pid
        demo = _demographics(store, pid) if fields else {}
        for name in fields:
            if row.get(name, "n/a") in ("", "n/a") and demo.get(name):
                row[name] = _demographic(name, demo[name])
        out.append(row)
    _write_tsv(store, "participants.tsv", columns, out)
    sidecar = _read_json(store, "participants.json")
    for name in columns:
        if name in FIELD_DOCS and name != "participant_id":
            sidecar.setdefault(name, FIELD_DOCS[name])
    _write_json(store, "participants.json", sidecar)


class Unmergeable(ValueError):
    """A curated TSV that cannot be merged without losing something a person wrote."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path


def _read_tsv(store: Store, path: str, key: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Columns and rows (by `key`) of a TSV a person may have saved from a spreadsheet (a
    byte-order mark, CRLF line ends); Unmergeable when any row or cell would be lost."""
    if not store.exists(path):
        return [key], {}
    try:
        text = store.read_bytes(path).decode("utf-8-sig")  # spreadsheets add a byte-order mark
    except UnicodeDecodeError:
        raise Unmergeable(path, "is not UTF-8 text") from None
    lines = [r for r in csv.reader(io.StringIO(text), delimiter="\t") if any(c.strip() for c in r)]
    columns = lines[0] if lines else [key]
    if key not in columns:
        raise Unmergeable(path, _missing_key(columns, key))
    if len(set(columns)) < len(columns):
        raise Unmergeable(path, "has two columns of the same name")
    rows: dict[str, dict[str, str]] = {}
    first: dict[str, int] = {}
    for n, cells in enumerate(lines[1:], start=2):
        if len(cells) > len(columns):  # a short row only leaves cells empty (n/a)
            raise Unmergeable(path, f"row {n} has {len(cells)} cells for {len(columns)} columns")
        row = dict(zip(columns, cells + [""] * (len(columns) - len(cells)), strict=True))
        if not row[key]:
            raise Unmergeable(path, f"row {n} has an empty {key}")
        if row[key] in rows and rows[row[key]] != row:
            raise Unmergeable(
                path, f"lists {row[key]} twice, differently (rows {first[row[key]]} and {n})"
            )
        rows.setdefault(row[key], row)
        first.setdefault(row[key], n)
    return columns, rows


def _missing_key(columns: list[str], key: str) -> str:
    near = [c for c in columns if re.sub(r"[\s_-]+", "_", c.strip().lower()) == key]
    if near:
        return f"names its {key} column {near[0]!r} (BIDS: {key!r})"
    if len(columns) == 1 and "," in columns[0]:
        return "is comma-separated (BIDS TSV files are tab-separated)"
    return f"has no {key} column"


def _leave_as_is(store: Store, problem: Unmergeable) -> None:
    """A curated file that cannot be merged exactly: a copy goes to .bidsapp/invalid/ first,
    the file itself is left as it is (never rewritten lossy), and the problem named."""
    keep = f".bidsapp/invalid/{problem.path}"
    store.write_bytes(keep, store.read_bytes(problem.path))
    logger.warning("{}: left as it is, a copy kept in {}; fix it and rerun group", problem, keep)


def _set_aside(
    store: Store, path: str, key: str, columns: list[str], rows: dict[str, dict[str, str]]
) -> None:
    """Curated rows whose subject or session is not published: kept, merged with earlier ones."""
    if not rows:
        return
    try:
        kept_columns, kept = _read_tsv(store, path, key)
    except Unmergeable as exc:  # our own file, edited by hand: kept aside, then started anew
        _leave_as_is(store, exc)
        kept_columns, kept = [key], {}
    merged = {**kept, **rows}
    all_columns = list(dict.fromkeys([*kept_columns, *columns]))
    logger.warning("{} curated rows have nothing published; kept in {}", len(rows), path)
    _write_tsv(store, path, all_columns, [merged[k] for k in sorted(merged)])


def _demographics(store: Store, pid: str) -> dict[str, Any]:
    """What the subject's job recorded (a session job records it per session)."""
    label = pid.removeprefix("sub-")
    found = _read_json(store, f"{Target(label).deriv}/demographics.json")
    folder = f"{DERIVATIVE}/{pid}"
    if not found and store.exists(folder):
        for entry in store.list(folder):
            if entry.is_dir and entry.name.startswith("ses-"):
                session = entry.name.removeprefix("ses-")
                found = found or _read_json(
                    store, f"{Target(label, session).deriv}/demographics.json"
                )
    return found


def _demographic(name: str, value: str) -> str:
    if name == "age":
        match = re.match(r"^(\d{3})Y$", value)
        return str(int(match.group(1))) if match else "n/a"
    return value or "n/a"


def _write_tsv(store: Store, path: str, columns: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c) or "n/a" for c in columns])
    data = buf.getvalue().encode()
    if not store.exists(path) or store.read_bytes(path) != data:
        store.write_bytes(path, data)


def _bidsignore(store: Store) -> None:
    exists = store.exists(".bidsignore")
    text = store.read_bytes(".bidsignore").decode("utf-8-sig") if exists else ""
    lines = text.splitlines()
    missing = [line for line in BIDSIGNORE_LINES if line not in lines]
    if missing or not store.exists(".bidsignore"):
        store.write_bytes(".bidsignore", ("\n".join([*lines, *missing]) + "\n").encode())


def _sessions(store: Store, targets: list[tuple[Target, dict[str, Any]]]) -> None:
    by_label: dict[str, set[str]] = {}
    for target, _ in targets:
        if target.session:
            by_label.setdefault(target.label, set()).add(target.session)
        elif store.exists(target.data):
            found = {
                e.name[4:]
                for e in store.list(target.data)
                if e.is_dir and e.name.startswith("ses-")
            }
            if found:
                by_label.setdefault(target.label, set()).update(found)
    for label, sessions in by_label.items():
        path = f"sub-{label}/sub-{label}_sessions.tsv"
        try:
            columns, rows = _read_tsv(store, path, "session_id")
        except Unmergeable as exc:
            _leave_as_is(store, exc)
            continue
        published = {f"ses-{s}" for s in sessions}
        orphans = {sid: row for sid, row in rows.items() if sid not in published}
        aside = f".bidsapp/unpublished/sub-{label}_sessions.tsv"
        _set_aside(store, aside, "session_id", columns, orphans)
        keep = [{**rows.get(sid, {}), "session_id": sid} for sid in sorted(published)]
        _write_tsv(store, path, columns, keep)


def _task_files(store: Store, targets: list[tuple[Target, dict[str, Any]]]) -> None:
    names: dict[str, set[str]] = {}
    for _, manifest in targets:
        for item in manifest.get("files", []):
            path = item["path"]
            match = re.search(r"_task-([A-Za-z0-9]+)_.*bold\.json$", path)
            if match and not path.startswith("derivatives/"):
                sidecar = json.loads(store.read_bytes(path))
                names.setdefault(match.group(1), set()).add(
                    str(sidecar.get("TaskName", match.group(1)))
                )
    for task, values in sorted(names.items()):
        _write_json(
            store,
            f"task-{task}_bold.json",
            {"TaskName": values.pop() if len(values) == 1 else task},
        )


def _index(
    store: Store, targets: list[tuple[Target, dict[str, Any]]], validation: Validation
) -> None:
    """derivatives/bidsapp/.log/index.html: every job's state and report, what differs, and
    what the dataset's validation found."""
    entries = []
    published = {(t.label, t.session) for t, _ in targets}
    for target, manifest in targets:
        gate = {
            **_read_json(store, f"{target.deriv}/gate.json"),
            "subject": target.label,
            "session": target.session,
        }
        sidecars = {
            item["path"]: _read_json(store, item["path"])
            for item in manifest["files"]
            if item["path"].endswith(".json") and item["path"].startswith("sub-")
        }
        href = posixpath.relpath(f"{target.deriv}/report.html", posixpath.dirname(INDEX))
        entries.append(index_entry(gate, sidecars, "published", href))
    for record in read_all(store):
        key = (record.get("label", ""), record.get("session", ""))
        if key in published:
            continue
        job = SubjectSession(*key).job_name
        gate = _read_json(store, f".bidsapp/failed/{job}/gate.json")
        gate = gate or {"subject": key[0], "session": key[1], "failure": record.get("error_class")}
        entries.append(index_entry(gate, {}, str(record.get("state", "unknown")), ""))
    entries.sort(key=lambda e: (str(e["label"]), str(e["session"])))
    store.write_bytes(INDEX, render_index(entries, validation.findings).encode())


NIFTI_HEAD = 64 * 1024  # the validator reads NIfTI headers only; a cut .nii.gz validates


def _mirror(store: Store, dest: Path) -> None:
    """A remote dataset as the validator needs it: NIfTI files as their first 64 KB (Range),
    everything else whole; dot-folders (bookkeeping and records, which validators skip) left
    out."""
    heads: list[tuple[str, Path]] = []
    whole: list[tuple[str, Path]] = []
    for n, (rel, entry) in enumerate(store.walk("")):
        if any(part.startswith(".") for part in rel.split("/")[:-1]) or entry.skipped:
            continue
        local = dest / rel
        if dest not in local.parents:  # the store's own names; never let one climb out
            raise ValueError(f"unexpected name in OUTPUT: file {n}")
        local.parent.mkdir(parents=True, exist_ok=True)
        (heads if rel.endswith((".nii", ".nii.gz")) else whole).append((rel, local))
    store.download_many(whole)
    for rel, local in heads:
        local.write_bytes(store.read_head(rel, NIFTI_HEAD))


def _validate(store: Store, work_dir: Path) -> tuple[Validation, str]:
    """The validator on the whole dataset, derivatives included (-r), and where its report is."""
    if isinstance(store, LocalStore):
        return _validate_folder(Path(store.root), Path(store.root) / ".bidsapp", store)
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="group-", dir=work_dir) as tmp:
        dataset = Path(tmp) / "dataset"
        dataset.mkdir()
        _mirror(store, dataset)
        return _validate_folder(dataset, Path(tmp), store)


def _validate_folder(dataset: Path, report_dir: Path, store: Store) -> tuple[Validation, str]:
    report = report_dir / "group-validation.json"
    try:
        result = validate(dataset, report, recursive=True)
    except (ToolFailed, ValueError, OSError) as exc:
        # Gates fail closed: a validator that cannot run is a failed validation.
        raise ValidationFailed(f"the BIDS validator could not run: {exc}") from exc
    where = str(report)
    if not isinstance(store, LocalStore):
        store.write_bytes(".bidsapp/group-validation.json", report.read_bytes())
        where = f"{store.describe()}/.bidsapp/group-validation.json"
    return result, where
