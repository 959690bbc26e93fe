"""The series table: every source series and what became of it (the report's and inspect's rows).

With a header-based heuristic the rows come from the plan (and, after conversion, from what was
really written); with another heuristic, from heudiconv's own records of what it saw and named.
Series dcm2niix split (a partial volume it numbers apart) get a row of their own.
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.bids import SubjectSession
from bidsapp.heuristic.classify import Decision, guess_disagrees
from bidsapp.heuristic.headers import SeriesHeader
from bidsapp.heuristic.plan import output_plan
from bidsapp.heuristic.settle import Settled, full_stem


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
    guess: str = ""  # dcm2niix's BidsGuess where it differs from the name given


def plan_table(
    entries: Sequence[tuple[Decision, SeriesHeader]],
    session: str,
    label: str,
    bids: Path | None,
    settled: Settled | None,
    notes: dict[str, str],
    failures: dict[str, str],
) -> list[SeriesRow]:
    """Rows from the plan. With `bids` (after conversion) a planned image that is absent is
    reported, so the table says what was really written; without it (inspect) it predicts."""
    rows: list[SeriesRow] = []
    for d, h in sorted(entries, key=lambda e: (e[1].number, e[1].acquired)):
        plan = output_plan(d, h)
        stems = [full_stem(name, label, session) for _, name, _ in plan if name]
        reason = d.reason
        extra = [*(settled.notes.get(d.key, []) if settled else [])]
        if d.key in failures and stems:
            extra.append(f"{failures[d.key]}: converted by dcm2niix alone")
        if bids is not None and stems:
            missing = [s for s in stems if not (bids / f"{s}.nii.gz").is_file()]
            if missing:
                why = failures.get(d.key, "heudiconv/dcm2niix wrote no image for")
                reason = f"{why}: " + ", ".join(Path(s).name for s in missing)
                stems = [s for s in stems if s not in missing]
        for text in (notes.get(d.key, ""), d.note):
            if text:
                extra.append(text)
        for output, name, why in plan:
            if not name and why and not d.skipped and output.series_number == h.number:
                extra.append(
                    f"dcm2niix also wrote an image it calls {output.postfix} ({why}): not published"
                )
        rows.append(_row(session, d, h, stems, "" if stems else reason, "; ".join(extra)))
        # an image dcm2niix numbers apart (e.g. 1006 for a partial volume of series 6)
        for output, name, why in plan:
            if output.series_number not in (0, h.number) and not name:
                rows.append(
                    SeriesRow(
                        session,
                        f"{output.series_number}-{h.protocol}",
                        h.description,
                        "\\".join(output.image_type),
                        "x".join(str(v) for v in output.shape),
                        f"{h.tr:g}" if h.tr else "",
                        f"{h.te:g}" if h.te else "",
                        0,
                        [],
                        why or d.reason,
                    )
                )
    return rows


def _row(
    session: str, d: Decision, h: SeriesHeader, stems: list[str], reason: str, note: str
) -> SeriesRow:
    return SeriesRow(
        session,
        h.series_id,
        h.description,
        "\\".join(h.image_type),
        "x".join(str(v) for v in h.dims),
        f"{h.tr:g}" if h.tr else "",
        f"{h.te:g}" if h.te else "",
        h.files,
        stems,
        reason,
        note,
        guess_disagrees(d, h),
    )


def heudiconv_table(out: Path, label: str, session: str) -> list[SeriesRow]:
    """Every series heudiconv saw, with the BIDS name it got or why it got none."""
    rows: list[SeriesRow] = []
    info_root = out / ".heudiconv" / label
    for info in sorted(info_root.glob("**/info")):
        found = info.parent.name[4:] if info.parent.name.startswith("ses-") else ""
        if found != session:
            continue
        named: dict[str, list[str]] = {}
        for auto in info.glob("*.auto.txt"):
            mapping: dict[Any, list[str]] = ast.literal_eval(auto.read_text())
            for key, series_ids in mapping.items():
                template, outtypes = key[0], key[1]
                if "nii.gz" not in outtypes and "nii" not in outtypes:
                    continue
                who = SubjectSession(label, session)
                name = template.format(
                    bids_subject_session_dir=who.folder,
                    bids_subject_session_prefix=who.prefix,
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
