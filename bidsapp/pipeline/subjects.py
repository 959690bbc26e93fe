"""The subject map: which exam folder is which participant (and session).

The map is PHI (folder names are often patient names): it stays with the user, is never uploaded,
and nothing prints its `source` column.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from bidsapp.errors import NoSubjectSelected, UsageError
from bidsapp.stores import Store

HEADER = ("source", "participant", "session")
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

    @property
    def job_name(self) -> str:
        """A PHI-free name for the job: sub-01 or sub-01_ses-2."""
        return f"sub-{self.label}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def exam_folder_name(self) -> str:
        """The exam folder's own name (an identifier unless it is the label itself)."""
        return self.source.rstrip("/").split("/")[-1]


def read_map(path: Path) -> list[Subject]:
    """Read and check a subject map."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise UsageError(
            f"subject map {path} does not exist", hint="create it with 'bidsapp subjects'"
        ) from exc
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows or tuple(c.strip() for c in rows[0][:3]) != HEADER:
        raise UsageError(
            f"subject map {path} must start with the header 'source<TAB>participant<TAB>session'"
        )
    subjects: list[Subject] = []
    seen: set[tuple[str, str]] = set()
    for n, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise UsageError(f"subject map {path} line {n}: expected source, participant, session")
        label = clean_label(row[1].strip())
        session = (
            clean_label(row[2].strip(), "session label") if len(row) > 2 and row[2].strip() else ""
        )
        if (label, session) in seen:
            raise UsageError(
                f"subject map {path} line {n}: sub-{label} session {session or '-'} twice"
            )
        seen.add((label, session))
        subjects.append(Subject(row[0].strip(), label, session))
    return subjects


def write_map(path: Path, subjects: list[Subject]) -> None:
    """Write the map, header first, in the given order."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(HEADER)
    for s in subjects:
        writer.writerow((s.source, s.label, s.session))
    path.write_text(buf.getvalue(), encoding="utf-8")


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
