"""The subject map: which exam folder is which participant (and session).

The map is PHI (folder names are often patient names): it stays with the user, is never uploaded,
and nothing prints its `source` column.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bidsapp.bids import SubjectSession
from bidsapp.errors import NoSubjectSelected, UsageError
from bidsapp.stores import Store

HEADER = ("source", "participant", "session")
ONE_PERSON = "one_person"
"""Optional fourth column: `yes` when the exam's studies carry different patient IDs (or names)
but are one person (a changed record number, an anonymised export with per-study IDs)."""
YES = ("yes", "y", "true", "1")
LABEL = re.compile(r"[A-Za-z0-9]+")


def clean_label(text: str, what: str = "participant label") -> str:
    """'sub-01' or '01' → '01'; anything but letters and digits is a usage error."""
    prefix = "sub-" if what == "participant label" else "ses-"
    label = text[len(prefix) :] if text.startswith(prefix) else text
    if not LABEL.fullmatch(label):
        raise UsageError(
            f"invalid {what} {text!r}: BIDS labels are letters and digits only",
            hint=f"use e.g. {prefix}01",
        )
    return label


@dataclass(frozen=True)
class Subject:
    """One job's worth of input: an exam folder and the labels it gets."""

    source: str  # path relative to SOURCE (PHI: never printed)
    label: str
    session: str = ""
    one_person: bool = False
    """The map says the exam's studies are one person even if their patient IDs differ."""

    @property
    def job(self) -> SubjectSession:
        """The (subject, session) this row's job converts."""
        return SubjectSession(self.label, self.session)

    @property
    def job_name(self) -> str:
        """A PHI-free name for the job: sub-01 or sub-01_ses-2."""
        return self.job.job_name

    @property
    def exam_folder_name(self) -> str:
        """The exam folder's own name (an identifier unless it is the label itself)."""
        return self.source.rstrip("/").split("/")[-1]

    @property
    def source_parts(self) -> list[str]:
        """Every component of the source path: any of them can name the patient."""
        return [part for part in self.source.split("/") if part]


def read_map(path: Path) -> list[Subject]:
    """Read and check a subject map."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise UsageError(
            f"subject map {path} does not exist", hint="create it with 'bidsapp subjects'"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UsageError(
            f"cannot read the subject map {path}: {reason}",
            hint="check the path and that you may read it",
        ) from exc
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows or tuple(c.strip() for c in rows[0][:3]) != HEADER:
        raise UsageError(
            f"subject map {path} must start with the header 'source<TAB>participant<TAB>session'"
        )
    one_person = len(rows[0]) > 3 and rows[0][3].strip() == ONE_PERSON
    subjects: list[Subject] = []
    lines: dict[tuple[str, str], int] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise UsageError(f"subject map {path} line {n}: expected source, participant, session")
        label = clean_label(row[1].strip())
        session = (
            clean_label(row[2].strip(), "session label") if len(row) > 2 and row[2].strip() else ""
        )
        if (label, session) in lines:
            raise UsageError(
                f"subject map {path} line {n}: sub-{label} session {session or '-'} twice"
            )
        _check_source(path, n, row[0].strip())
        lines[(label, session)] = n
        same = one_person and len(row) > 3 and row[3].strip().lower() in YES
        subjects.append(Subject(row[0].strip(), label, session, same))
    _check_sessions(path, lines)
    return subjects


def _check_source(path: Path, line: int, source: str) -> None:
    """An empty source would stage all of SOURCE; `..` or `/` would leave it (never printed)."""
    where = f"subject map {path} line {line}"
    if not source:
        raise UsageError(
            f"{where}: the source cell is empty",
            hint="write the exam folder's path relative to SOURCE",
        )
    parts = PurePosixPath(source).parts
    if source.startswith("/") or ".." in parts:
        raise UsageError(
            f"{where}: the source must be a path inside SOURCE (no '..', no leading '/')",
            hint="write the exam folder's path relative to SOURCE",
        )


def _check_sessions(path: Path, lines: dict[tuple[str, str], int]) -> None:
    """One label is either session-less or has sessions: a session-less publish would replace
    every session of the subject."""
    for (label, session), n in sorted(lines.items(), key=lambda item: item[1]):
        if session:
            continue
        with_sessions = sorted(m for (lab, ses), m in lines.items() if lab == label and ses)
        if with_sessions:
            raise UsageError(
                f"subject map {path}: sub-{label} has a row without a session (line {n}) and "
                f"rows with one (line {', '.join(map(str, with_sessions))})",
                hint="give every row of that participant a session, or none of them",
            )


def write_map(path: Path, subjects: list[Subject]) -> None:
    """Write the map, header first, in the given order: 0600 (it holds patients' folder names)
    and atomically, so a failure never leaves a truncated map behind."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    one_person = any(s.one_person for s in subjects)
    writer.writerow((*HEADER, ONE_PERSON) if one_person else HEADER)
    for s in subjects:
        row = (s.source, s.label, s.session)
        writer.writerow((*row, "yes" if s.one_person else "") if one_person else row)
    data = buf.getvalue().encode("utf-8")  # before anything is written: a bad name changes nothing
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp creates it 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def from_folder_names(store: Store) -> list[Subject]:
    """Without a map: folders whose names are already valid labels ('01', 'sub-01')."""
    subjects = []
    for entry in store.list(""):
        if not entry.is_dir or entry.name.startswith("."):
            continue
        name = entry.name[4:] if entry.name.startswith("sub-") else entry.name
        if LABEL.fullmatch(name):
            subjects.append(Subject(entry.name, name))
    labels = [s.label for s in subjects]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UsageError(
            f"two exam folders are named for sub-{twice[0]} ('{twice[0]}' and 'sub-{twice[0]}')",
            hint="rename one or use --subject-map",
        )
    return subjects


def extend_map(existing: list[Subject], store: Store) -> tuple[list[Subject], int]:
    """Existing rows untouched; every new exam folder gets the next free numeric label."""
    known = {s.source for s in existing}
    used = {s.label for s in existing}
    width = max((len(s.label) for s in existing if s.label.isdigit()), default=2)
    next_number = max((int(s.label) for s in existing if s.label.isdigit()), default=0) + 1
    added: list[Subject] = []
    folders = [e for e in store.list("") if e.is_dir and not e.name.startswith(".")]
    undecodable = [e for e in folders if not _is_text(e.name)]
    if undecodable:
        raise UsageError(
            f"{len(undecodable)} exam folder(s) in SOURCE have names that are not valid UTF-8 "
            "(e.g. Latin-1 from an old share); the subject map was not changed",
            hint="rename them to UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest SOURCE)",
        )
    names = [e.name for e in folders]
    for entry in folders:
        # Drive names repeat: such folders are mapped by id (the store's `ref`) instead.
        source = entry.ref if names.count(entry.name) > 1 and entry.ref else entry.name
        if source in known or entry.name in known:
            continue
        while f"{next_number:0{width}d}" in used:
            next_number += 1
        label = f"{next_number:0{width}d}"
        used.add(label)
        known.add(source)
        added.append(Subject(source, label))
    return existing + added, len(added)


def _is_text(name: str) -> bool:
    """False for a file name that was not valid UTF-8 (Python keeps its bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def select(subjects: list[Subject], labels: tuple[str, ...], where: str) -> list[Subject]:
    """The subjects (all their sessions) for the requested labels, in map order."""
    if not labels:
        if not subjects:
            raise NoSubjectSelected(
                f"no exam folder with a valid label in {where} and no subject map"
            )
        return subjects
    by_label = {s.label for s in subjects}
    missing = [label for label in labels if label not in by_label]
    if missing:
        names = ", ".join(f"sub-{m}" for m in missing)
        raise NoSubjectSelected(f"{names} is in neither the subject map nor {where}")
    wanted = set(labels)
    return [s for s in subjects if s.label in wanted]


def select_sessions(subjects: list[Subject], sessions: tuple[str, ...]) -> list[Subject]:
    """Narrow to the requested sessions (all when none are asked for)."""
    if not sessions:
        return subjects
    chosen = [s for s in subjects if s.session in sessions]
    if not chosen:
        names = ", ".join(f"ses-{s}" for s in sessions)
        raise NoSubjectSelected(f"{names} is not a session of the selected subjects in the map")
    return chosen


def update_map(store: Store, subject_map: Path) -> int:
    """`bidsapp subjects`: write or extend the map with SOURCE's exam folders; print the labels."""
    existing = read_map(subject_map) if subject_map.exists() else []
    subjects, added = extend_map(existing, store)
    write_map(subject_map, subjects)
    # The map's source column is PHI: report labels only.
    labels = ", ".join(f"sub-{s.label}" for s in subjects) or "none"
    print(f"{subject_map}: {len(subjects)} exam folders ({added} new): {labels}")
    by_id = [s for s in subjects[len(existing) :] if s.source.startswith("id:")]
    if by_id:
        print(
            f"{len(by_id)} exam folders share their names with others and are mapped by Drive "
            f"id: {', '.join(f'sub-{s.label}' for s in by_id)}"
        )
    return 0
