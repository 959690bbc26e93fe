"""The dataset index: one row per subject, and what differs between subjects.

``group`` builds one entry per published (or failed) subject with :func:`index_entry` from the
subject's gate.json and sidecars, then writes :func:`render_index`'s page as
``derivatives/bidsapp/.log/index.html``. Differences are worth a page of their own because a subject
scanned with another protocol (a BOLD run with another TR, a T1w with another matrix) converts
and validates cleanly, and is only caught by comparing subjects.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bidsapp.report.subject import TIMES, bids_stem, esc, fmt, page, table

__all__ = ["PARAMS", "index_entry", "render_index", "series_kind"]

# sidecar fields compared between subjects: the ones a protocol change shows up in
PARAMS = (
    "RepetitionTime",
    "EchoTime",
    "FlipAngle",
    "InversionTime",
    "SliceThickness",
    "PhaseEncodingDirection",
    "MultibandAccelerationFactor",
    "ParallelReductionFactorInPlane",
    "MagneticFieldStrength",
    "Manufacturer",
    "ManufacturersModelName",
)
# BIDS sidecar units, so that "2" reads as a TR of two seconds
UNITS = {
    "RepetitionTime": " s",
    "EchoTime": " s",
    "InversionTime": " s",
    "FlipAngle": "°",
    "SliceThickness": " mm",
    "MagneticFieldStrength": " T",
}
DIMS = "dims"  # the source series' matrix and volume count, from the GateReport
_STATE_CLASS = {"published": "ok", "passed": "ok", "skipped": "ok", "failed": "bad"}


def series_kind(rel: str) -> str:
    """What a file is, whoever it belongs to: its name without sub-, ses-, run- and extension.

    ``sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz`` -> ``task-rest_bold``.
    """
    parts = bids_stem(rel).split("_")
    return "_".join(p for p in parts if not p.startswith(("sub-", "ses-", "run-")))


def _merge(into: dict[str, Any], key: str, value: Any) -> None:
    """Runs of one kind in one subject that disagree keep every value they have."""
    if key not in into or into[key] == value:
        into[key] = value
        return
    old = into[key] if isinstance(into[key], list) else [into[key]]
    into[key] = old if value in old else [*old, value]


def index_entry(
    gate: dict[str, Any], sidecars: dict[str, dict[str, Any]], state: str, report_href: str
) -> dict[str, Any]:
    """One subject's row for :func:`render_index`.

    ``gate`` is the subject's gate.json; ``sidecars`` maps BIDS paths (relative to the dataset
    root) to their JSON; ``report_href`` is the subject report's href relative to the index, or
    "" when there is none. The entry's keys:

    - ``label``, ``session`` (str, session "" when the job was the whole subject), ``state`` (str:
      "published", "failed", ...), ``report`` (str href or ""),
    - ``series`` (int: NIfTI files converted), ``skipped`` (int: source series not converted),
      ``skipped_files`` (int: DICOM files left out at staging), ``warnings`` and ``errors`` (int:
      validator findings by severity), ``failure`` (str: why the gate failed, or ""),
    - ``modalities`` ({suffix: number of NIfTI files}, e.g. {"T1w": 1, "bold": 2}),
    - ``params`` ({series kind: {parameter: value}}, kinds from :func:`series_kind`, parameters
      from :data:`PARAMS` plus ``dims`` (the source series' "x"-joined dimensions); a value is
      a list when runs of one kind disagree).
    """
    converted = [str(f) for f in gate.get("converted_files") or []]
    niftis = [f for f in converted if f.endswith((".nii", ".nii.gz"))]
    findings = gate.get("findings") or []
    params: dict[str, dict[str, Any]] = {}
    for rel, sidecar in sorted(sidecars.items()):
        if not rel.endswith(".json") or not isinstance(sidecar, dict):
            continue
        kind = params.setdefault(series_kind(rel), {})
        for name in PARAMS:
            if name in sidecar:
                _merge(kind, name, sidecar[name])
    series = gate.get("series") or []
    for row in series:
        for out in row.get("outputs") or []:
            if row.get("dims"):
                _merge(params.setdefault(series_kind(str(out)), {}), DIMS, str(row["dims"]))
    return {
        "label": str(gate.get("subject", "")),
        "session": str(gate.get("session", "") or ""),
        "state": state,
        "report": report_href,
        "series": len(niftis),
        "skipped": sum(1 for row in series if not row.get("outputs")),
        "skipped_files": len(gate.get("skipped_files") or []),
        "warnings": sum(1 for f in findings if f.get("severity") == "warning"),
        "errors": sum(1 for f in findings if f.get("severity") == "error"),
        "failure": str(gate.get("failure", "") or ""),
        "modalities": dict(Counter(bids_stem(f).rsplit("_", 1)[-1] for f in niftis)),
        "params": params,
    }


def _who(entry: dict[str, Any]) -> str:
    session = entry.get("session") or ""
    return f"sub-{entry.get('label', '')}" + (f" ses-{session}" if session else "")


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def differences(
    subjects: list[dict[str, Any]],
) -> list[tuple[str, str, list[tuple[Any, list[str]]]]]:
    """(kind, parameter, [(value, subjects with it), ...]) wherever subjects disagree.

    The most common value comes first, so the odd ones out are the later groups.
    """
    values: dict[tuple[str, str], dict[str, tuple[Any, list[str]]]] = {}
    for entry in subjects:
        for kind, params in (entry.get("params") or {}).items():
            for name, value in params.items():
                groups = values.setdefault((kind, name), {})
                groups.setdefault(_key(value), (value, []))[1].append(_who(entry))
    found = []
    for (kind, name), groups in sorted(values.items()):
        if len(groups) > 1:
            ordered = sorted(groups.values(), key=lambda g: (-len(g[1]), _key(g[0])))
            found.append((kind, name, ordered))
    return found


def _odd_ones(diffs: list[tuple[str, str, list[tuple[Any, list[str]]]]]) -> dict[str, list[str]]:
    """Per subject, the 'kind parameter' pairs where it is not in the one largest group."""
    odd: dict[str, list[str]] = {}
    for kind, name, groups in diffs:
        tied = len(groups[0][1]) == len(groups[1][1])
        for _, who in groups if tied else groups[1:]:
            for w in who:
                odd.setdefault(w, []).append(f"{kind} {name}")
    return odd


def _subjects_table(subjects: list[dict[str, Any]], odd: dict[str, list[str]]) -> str:
    rows = []
    for e in subjects:
        who = _who(e)
        href = str(e.get("report") or "")
        # only relative links: an href is data, and a scheme (javascript:, http:) has no place
        name = (
            f'<a href="{esc(href)}">{esc(who)}</a>'
            if href and ":" not in href.split("/", 1)[0]
            else esc(who)
        )
        state = str(e.get("state", ""))
        badge = f'<span class="badge {_STATE_CLASS.get(state, "warn")}">{esc(state)}</span>'
        if e.get("failure"):
            badge += f' <span class="muted">{esc(e["failure"])}</span>'
        mods = ", ".join(
            f"{m} {TIMES}{n}" if n > 1 else m
            for m, n in sorted((e.get("modalities") or {}).items())
        )
        notes = "; ".join(odd.get(who, []))
        rows.append(
            [
                name,
                badge,
                str(e.get("series", 0)),
                str(e.get("skipped", 0)),
                str(e.get("warnings", 0)),
                str(e.get("errors", 0)),
                esc(mods),
                f'<span class="reason">differs: {esc(notes)}</span>' if notes else "",
            ]
        )
    head = [
        "subject",
        "state",
        "series#",
        "skipped#",
        "warnings#",
        "errors#",
        "modalities",
        "notes",
    ]
    return table(head, rows)


def _modalities_table(subjects: list[dict[str, Any]]) -> str:
    files: Counter[str] = Counter()
    having: dict[str, set[str]] = {}
    for e in subjects:
        for suffix, n in (e.get("modalities") or {}).items():
            files[suffix] += n
            having.setdefault(suffix, set()).add(_who(e))
    everyone = {_who(e) for e in subjects}
    rows = []
    for suffix in sorted(files):
        missing = sorted(everyone - having[suffix])
        rows.append(
            [
                esc(suffix),
                str(files[suffix]),
                f"{len(having[suffix])} / {len(everyone)}",
                esc(", ".join(missing)) if missing else '<span class="muted">none</span>',
            ]
        )
    if not rows:
        return "<p>No images converted yet.</p>"
    return table(["modality", "files#", "subjects#", "missing in"], rows, cls="auto")


def _differences_table(diffs: list[tuple[str, str, list[tuple[Any, list[str]]]]]) -> str:
    if not diffs:
        return "<p>Every subject that has a series kind has the same parameters for it.</p>"
    rows = []
    for kind, name, groups in diffs:
        unit = UNITS.get(name, "")
        cells = "<br>".join(
            f"<b>{esc(fmt(value))}{esc(unit)}</b> <span class='muted'>({len(who)})</span> "
            f"{esc(', '.join(who))}"
            for value, who in groups
        )
        rows.append([f"<code>{esc(kind)}</code>", esc(name), cells])
    return table(["series kind", "parameter", "values and subjects"], rows)


EXAMPLES = 5  # locations shown per validator finding; the rest are counted


def _validation_section(findings: Sequence[Any]) -> str:
    """The dataset's own validator findings (group, with -r), one row per code: errors first,
    how many, what it means, and where (a few places, then a count)."""
    if not findings:
        return "<p>The BIDS validator found nothing to report on the whole dataset.</p>"
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for f in findings:
        code = f.code + (f" ({f.sub_code})" if f.sub_code else "")
        groups.setdefault((f.severity, code, f.dataset or "/"), []).append(f)
    rows = []
    order = {"error": 0, "warning": 1}
    for (severity, code, dataset), items in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 2), kv[0][2], kv[0][1])
    ):
        places = sorted({str(f.location) for f in items if f.location})
        shown = ", ".join(f"<code>{esc(p)}</code>" for p in places[:EXAMPLES])
        more = len(places) - EXAMPLES
        where = shown + (f' <span class="muted">and {more} more</span>' if more > 0 else "")
        cls = "bad" if severity == "error" else "warn"
        rows.append(
            [
                f'<span class="badge {cls}">{esc(severity)}</span>',
                f"<code>{esc(code)}</code>",
                esc(dataset),
                str(len(items)),
                esc(items[0].meaning or items[0].message),
                where or '<span class="muted">the dataset</span>',
            ]
        )
    return table(["severity", "code", "dataset", "findings#", "meaning", "where"], rows)


def render_index(subjects: list[dict[str, Any]], findings: Sequence[Any] = ()) -> str:
    """The dataset index page (HTML) from :func:`index_entry` dicts, in the order given, and
    the whole dataset's validator findings (:class:`bidsapp.pipeline.gate.Finding`)."""
    diffs = differences(subjects)
    states = Counter(str(e.get("state", "")) for e in subjects)
    state_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    total = sum(int(e.get("series", 0)) for e in subjects)
    body = (
        "<h1>Dataset report</h1>"
        f'<p class="muted">{len(subjects)} subjects ({esc(state_text or "none")}), '
        f"{total} images converted.</p>"
        f"<h2>Subjects</h2>{_subjects_table(subjects, _odd_ones(diffs))}"
        f"<h2>Modalities</h2>{_modalities_table(subjects)}"
        "<h2>Parameters that differ between subjects</h2>"
        '<p class="note">Compared per series kind (the file name without subject, session and '
        "run); the most common value is listed first.</p>"
        f"{_differences_table(diffs)}"
        "<h2>Dataset validation</h2>"
        '<p class="note">What the BIDS validator said about the whole dataset (derivatives '
        "included), grouped by code; each subject's own findings are in its report.</p>"
        f"{_validation_section(findings)}"
    )
    return page("bidsapp dataset report", body, "bidsapp dataset report")
