"""`bidsapp inspect`: each series of one exam and the BIDS name it gets, or why it is skipped.

Runs the same staging and the same heuristic (heudiconv without conversion) as a participant
job, so its rows match what a job publishes. Descriptions go through the job's redaction: the
table holds no patient data.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from bidsapp.errors import LocalIOError
from bidsapp.heuristic.loader import load_heuristic
from bidsapp.pipeline.convert import survey
from bidsapp.pipeline.series import SeriesRow
from bidsapp.pipeline.stage import stage
from bidsapp.pipeline.subjects import from_folder_names, read_map, select
from bidsapp.privacy.phi import Identifiers
from bidsapp.settings import Settings
from bidsapp.stores import open_store

COLUMNS = ("session", "series", "description", "image_type", "dims", "tr", "te", "files", "bids")


def run_inspect(
    source: str,
    label: str,
    *,
    subject_map: Path | None,
    heuristic_spec: str,
    overrides: Path | None,
    fmt: str,
    work_dir: Path | None,
    settings: Settings | None = None,
) -> int:
    """Print each series of one exam and the BIDS name it gets, or why it is skipped
    (`settings`: the Drive credentials and rate, when not the defaults)."""
    heuristic = load_heuristic(heuristic_spec, overrides)
    store = open_store(source, settings=settings)
    subjects = read_map(subject_map) if subject_map else from_folder_names(store)
    records: list[dict[str, object]] = []
    root = (work_dir or Path(tempfile.gettempdir()) / "bidsapp").absolute()
    for subject in select(subjects, (label,), "SOURCE"):
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f"inspect-{subject.job_name}-", dir=root))
        except OSError as exc:
            raise LocalIOError(f"cannot create a work dir in {root}: {exc.strerror}") from exc
        try:
            staged = stage(store, subject.source, work, one_person=subject.one_person)
            exam_name = store.folder_name(subject.source)  # `id:` rows hide it; PHI
            ids = Identifiers.collect(staged.headers, exam_name, subject.label)
            rows = survey(staged, subject, heuristic, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        records += [_record(row, ids, subject.session) for row in rows]
    print(render(records, fmt), end="")
    return 0


def _record(row: SeriesRow, ids: Identifiers, session: str) -> dict[str, object]:
    data = asdict(row)
    data["session"] = row.session or session
    data["description"] = ids.redact(row.description)
    data["series_id"] = ids.redact(row.series_id)
    return data


def render(records: list[dict[str, object]], fmt: str) -> str:
    """The rows as an aligned table, TSV, or JSON."""
    if fmt == "json":
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    lines = [
        [
            str(r["session"]),
            str(r["series_id"]).split("-", 1)[0],
            str(r["description"]),
            str(r["image_type"]),
            str(r["dims"]),
            str(r["tr"]),
            str(r["te"]),
            str(r["files"]),
            ", ".join(Path(str(o)).name for o in r["outputs"]) or f"skipped: {r['reason']}",  # type: ignore[attr-defined]
        ]
        for r in records
    ]
    if fmt == "tsv":
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(lines)
        return buf.getvalue()
    head = list(COLUMNS)
    if not any(r["session"] for r in records):
        head, lines = head[1:], [ln[1:] for ln in lines]
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=False)]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [head, *lines]
    ]
    return "\n".join(out) + "\n"
