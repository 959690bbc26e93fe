"""The session: every series' decision, and the name of each image dcm2niix writes for it.

On top of each series' own classification: the study's rules and overrides; prescan-normalised
copies; field maps assembled into complete sets by acquisition (magnitude and phase series of
one GRE acquisition, opposite-direction EPI pairs); SBRefs beside their runs; repeats told
apart by `rec-`, `acq-`, `dir-` where the headers show how they differ, else `run-` in
acquisition order. Nothing here is ever `__dup`, and nothing touches a file.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bidsapp import bids
from bidsapp.heuristic.classify import (
    SEFM_TEXT,
    Decision,
    classify,
    image_words,
    images,
    is_epi,
    pe_label,
    skip,
    task_label,
)
from bidsapp.heuristic.classify import accel_label as _accel_label
from bidsapp.heuristic.headers import Output, SeriesHeader

ASL_REQUIRED = (
    "ArterialSpinLabelingType",
    "PostLabelingDelay",
    "BackgroundSuppression",
    "M0Type",
    "TotalAcquiredPairs",
    "RepetitionTimePreparation",
)
_GRE_FMAP = ("magnitude", "phasediff", "phase")
_GRE_SETS = (*_GRE_FMAP, "fieldmap")


@dataclass(frozen=True)
class Override:
    """One validated entry of an overrides file (or a heuristic's rules)."""

    number: int | None = None
    description: str = ""  # glob, case-insensitive
    skip: str = ""  # the reason; empty: not skipped
    bids: str = ""  # datatype/entities_suffix
    sidecar: tuple[tuple[str, Any], ...] = ()
    aslcontext: tuple[str, ...] = ()

    def matches(self, h: SeriesHeader) -> bool:
        if self.number is not None and h.number != self.number:
            return False
        return not self.description or fnmatch.fnmatch(
            h.description.lower(), self.description.lower()
        )


def parse_bids_name(text: str) -> tuple[str, tuple[tuple[str, str], ...], str]:
    """'func/task-motor_run-1_bold' → ('func', (('task','motor'),('run','1')), 'bold')."""
    datatype, _, rest = text.partition("/")
    parts = rest.split("_")
    entities = tuple(tuple(p.split("-", 1)) for p in parts[:-1])
    return datatype, entities, parts[-1]  # type: ignore[return-value]


def _apply_override(h: SeriesHeader, d: Decision, overrides: Sequence[Override]) -> Decision:
    for o in overrides:
        if not o.matches(h):
            continue
        if o.skip:
            d = Decision(h.key, reason=f"skipped by overrides: {o.skip}")
        if o.bids:
            datatype, entities, suffix = parse_bids_name(o.bids)
            d = replace(d, datatype=datatype, suffix=suffix, reason="", entities=())
            for k, v in entities:
                d = d.with_entity(k, v)
        if o.sidecar:
            d = replace(d, sidecar=(*d.sidecar, *o.sidecar))
        if o.aslcontext:
            d = replace(d, aslcontext=o.aslcontext)
    return d


def _order(h: SeriesHeader) -> tuple[bool, str, int]:
    return (not h.acquired, h.acquired, h.number)  # series without a time (reports) last


def plan(headers: Iterable[SeriesHeader], overrides: Sequence[Override] = ()) -> list[Decision]:
    """Every series of one session: its decision, in acquisition order."""
    items = sorted(headers, key=_order)
    by_key = {h.key: h for h in items}
    decisions = _skip_norm_copies(items, [classify(h) for h in items])
    decisions = _confirm_pepolar(items, decisions)
    decisions = _magnitude_alone(decisions)
    decisions = [_apply_override(h, d, overrides) for h, d in zip(items, decisions, strict=True)]
    decisions = [_asl(by_key[d.key], d) if d.suffix == "asl" else d for d in decisions]
    decisions = _pair_sbrefs(items, decisions)
    decisions = _gre_sets(items, decisions)
    decisions = _disambiguate(decisions, by_key)
    decisions = _follow_sbrefs(items, decisions)
    return _pepolar_sets(items, decisions)


def _twin_key(h: SeriesHeader) -> tuple[object, ...]:
    """What one acquisition's reconstructions share: time, geometry, timing, image type."""
    kind = frozenset(image_words(h) - {"NORM"})
    return (h.acquired, h.dims, h.orientation, h.tr, h.te, h.ti, kind)


def _skip_norm_copies(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    """A prescan-normalised copy of an acquisition whose original is also kept is skipped.

    Siemens can save one acquisition twice, without and with prescan normalisation (NORM in
    ImageType, or in ImageTypeText on XA): published side by side, preprocessing would average
    the same acquisition twice. The original stays; a series saved only normalised is kept.
    """
    originals = {
        _twin_key(h): h
        for h, d in zip(items, decisions, strict=True)
        if not d.skipped and h.acquired and "NORM" not in image_words(h)
    }
    out = list(decisions)
    for k, (h, d) in enumerate(zip(items, decisions, strict=True)):
        twin = originals.get(_twin_key(h))
        if not d.skipped and "NORM" in image_words(h) and twin is not None:
            out[k] = skip(h, f"prescan-normalised copy of series {twin.number} (same acquisition)")
    return out


def _geometry(h: SeriesHeader) -> tuple[object, ...]:
    return (h.dims[:3], tuple(round(v, 2) for v in h.orientation))


def _opposite(a: SeriesHeader, b: SeriesHeader) -> bool:
    """Phase encoded along the same axis in opposite directions, on the same grid."""
    pa, pb = a.pe_direction, b.pe_direction
    return bool(pa and pb) and pa[0] == pb[0] and pa != pb and _geometry(a) == _geometry(b)


def _confirm_pepolar(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    """A short b=0 EPI is a PEPOLAR field map beside an EPI encoded the opposite way on the same
    grid (another such map, or a run it can correct) or when its name says field map; else it
    is a short BOLD run, or skipped."""
    out = list(decisions)
    epis = [h for h, d in zip(items, decisions, strict=True) if not d.skipped and is_epi(h)]
    for k, (h, d) in enumerate(zip(items, decisions, strict=True)):
        if d.suffix != "epi":
            continue
        partner = any(_opposite(h, other) for other in epis if other is not h)
        if partner or SEFM_TEXT.search(h.description.lower()):
            continue
        if h.volumes > 1:
            out[k] = replace(d, datatype="func", suffix="bold", entities=()).with_entity(
                "task", task_label(h)
            )
        else:
            out[k] = skip(
                h,
                "single-volume EPI with no partner encoded in the opposite direction: neither "
                "BOLD nor a usable field map",
            )
    return out


def _magnitude_alone(decisions: list[Decision]) -> list[Decision]:
    """`part-mag` only beside a phase image: a magnitude-only T2* series is plain `T2starw`."""
    phases = {d.suffix for d in decisions if not d.skipped and d.entity("part") == "phase"}
    return [
        d.with_entity("part", "") if d.entity("part") == "mag" and d.suffix not in phases else d
        for d in decisions
    ]


def _asl(h: SeriesHeader, d: Decision) -> Decision:
    """ASL converts only with aslcontext and every required field; else it is skipped."""
    context = d.aslcontext or h.asl_context
    fields: dict[str, Any] = {k: json.loads(v) for k, v in h.asl}
    fields.update(dict(d.sidecar))
    if context:
        fields.setdefault("M0Type", "Included" if "m0scan" in context else "Absent")
        fields.setdefault("TotalAcquiredPairs", sum(1 for c in context if c == "label"))
    if h.tr:
        fields.setdefault("RepetitionTimePreparation", h.tr)
    missing = [k for k in ASL_REQUIRED if k not in fields]
    if (
        fields.get("ArterialSpinLabelingType") in ("PCASL", "CASL")
        and "LabelingDuration" not in fields
    ):
        missing.append("LabelingDuration")
    if not context:
        missing.insert(0, "aslcontext (volume types)")
    if len(context) not in (0, h.volumes) and h.volumes:
        return Decision(
            d.key,
            reason=f"ASL: aslcontext has {len(context)} entries for {h.volumes} volumes",
        )
    if missing:
        return Decision(
            d.key,
            reason=f"ASL without {', '.join(missing)} in the headers: supply them in --overrides",
        )
    return replace(d, aslcontext=tuple(context), sidecar=tuple(sorted(fields.items())))


def _pair_sbrefs(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    """An SBRef series takes the datatype of the BOLD or DWI series it precedes."""
    out = list(decisions)
    for k, d in enumerate(out):
        if d.suffix != "sbref":
            continue
        partner = _sbref_partner(items, out, k)
        if partner is None:
            out[k] = replace(d, datatype="func").with_entity("task", task_label(items[k]))
        else:
            out[k] = replace(d, datatype=out[partner].datatype)
    return out


def _sbref_partner(items: list[SeriesHeader], decisions: list[Decision], k: int) -> int | None:
    stem = re.sub(r"[-_ ]?sbref", "", items[k].description, flags=re.I).lower()
    for j in range(k + 1, len(items)):
        if decisions[j].suffix in ("bold", "dwi") and (
            items[j].description.lower() == stem or items[j].protocol.lower() == stem
        ):
            return j
    for j in range(k + 1, min(k + 2, len(items))):
        if decisions[j].suffix in ("bold", "dwi"):
            return j
    return None


def _follow_sbrefs(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    out = list(decisions)
    for k, d in enumerate(out):
        if d.suffix == "sbref":
            partner = _sbref_partner(items, out, k)
            if partner is not None:
                out[k] = replace(d, entities=out[partner].entities, datatype=out[partner].datatype)
    return out


# -- field-map sets ----------------------------------------------------------------------------


def _echo_times(h: SeriesHeader) -> set[float]:
    return {round(o.echo_time, 4) for o in images(h) if o.echo_time}


def _gre_sets(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    """GRE field maps as complete sets, paired by acquisition, never by series order.

    A set is one series holding everything (phase per echo with magnitudes, or a magnitude
    with its field in Hz) or a magnitude series with the phase(-difference) series of the same
    acquisition: same grid, the phase's echo among the magnitude's, acquired closest in time.
    Each set gets an identifier (B0FieldIdentifier) and, when there are several, a run number;
    a part without its partner is published as acquired, without an identifier and with a note,
    so no tool takes it for a usable field map.
    """
    out = list(decisions)
    index = {d.key: k for k, d in enumerate(out)}
    gre = [(h, out[index[h.key]]) for h in items if out[index[h.key]].suffix in _GRE_SETS]
    sets: list[list[str]] = []
    phases = [h for h, d in gre if d.suffix == "phasediff"]
    used: set[str] = set()
    for h, d in gre:
        if d.suffix in ("phase", "fieldmap"):
            sets.append([h.key])  # a complete set in one series
        elif d.suffix == "magnitude":
            partners = [
                p
                for p in phases
                if p.key not in used
                and _geometry(p) == _geometry(h)
                and (_echo_times(p) <= _echo_times(h) or not _echo_times(p))
            ]
            if partners:
                best = min(partners, key=lambda p: abs(_seconds(p.acquired) - _seconds(h.acquired)))
                used.add(best.key)
                sets.append([h.key, best.key])
    complete = {key for s in sets for key in s}
    runs = len(sets) > 1
    for n, members in enumerate(sets, start=1):
        kind = "fieldmap" if out[index[members[0]]].suffix == "fieldmap" else "phasediff"
        for key in members:
            d = out[index[key]]
            d = d.with_entity("run", str(n)) if runs else d
            out[index[key]] = replace(d, fieldmap=f"{kind}{d.entity('acq')}{n}")
    for h, d in gre:
        if h.key not in complete:
            missing = "magnitude images" if d.suffix == "phasediff" else "phase images"
            out[index[h.key]] = replace(
                d,
                note=f"field map without its {missing} in this session: published as acquired, "
                "not linked to any image (no B0FieldIdentifier)",
            )
    return out


def _seconds(hhmmss: str) -> float:
    digits = re.sub(r"[^0-9.]", "", hhmmss)
    try:
        return int(digits[:2]) * 3600 + int(digits[2:4]) * 60 + float(digits[4:] or 0)
    except ValueError:
        return 0.0


def _pepolar_sets(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    """Opposite-direction EPI field maps, one set per pair (in acquisition order); a set of
    one is an EPI encoded against the runs it corrects."""
    out = list(decisions)
    index = {d.key: k for k, d in enumerate(out)}
    epis = [h for h in items if out[index[h.key]].suffix == "epi"]
    used: set[str] = set()
    sets: list[list[SeriesHeader]] = []
    for h in epis:
        if h.key in used:
            continue
        used.add(h.key)
        partner = next((p for p in epis if p.key not in used and _opposite(h, p)), None)
        if partner is not None:
            used.add(partner.key)
        sets.append([h] if partner is None else [h, partner])
    for n, members in enumerate(sets, start=1):
        for h in members:
            d = out[index[h.key]]
            out[index[h.key]] = replace(d, fieldmap=f"pepolar{d.entity('acq')}{n}")
    return out


# -- telling repeats apart ---------------------------------------------------------------------


def _disambiguate(decisions: list[Decision], by_key: dict[str, SeriesHeader]) -> list[Decision]:
    """Series that would share a name: rec-, acq-, dir- where the headers differ, else run-."""
    out = list(decisions)
    # rec- and acq- compare series whatever their direction (a DWI pair AP/PA stays one
    # acquisition scheme); dir- and run- compare full names
    for refine, with_dir in (
        (_by_norm, False),
        (_by_acceleration, False),
        (_by_direction, True),
        (_by_run, True),
    ):
        groups: dict[str, list[int]] = {}
        for k, d in enumerate(out):
            if not d.skipped and d.suffix != "sbref":
                groups.setdefault(_key(d if with_dir else d.with_entity("dir", "")), []).append(k)
        for members in groups.values():
            if len(members) > 1:
                refine(out, members, by_key)
    return out


def _key(d: Decision) -> str:
    # the series of one GRE field-map set share their numbering (set in _gre_sets)
    suffix = "fmapgre" if d.suffix in _GRE_FMAP else d.suffix
    return f"{d.datatype}/{dict(d.entities)}/{suffix}"


def _distinct(values: list[str]) -> bool:
    return len(set(values)) == len(values) and all(values)


def _by_norm(out: list[Decision], members: list[int], by_key: dict[str, SeriesHeader]) -> None:
    # two acquisitions that differ in normalisation (a copy of one acquisition is skipped)
    norm = ["NORM" in image_words(by_key[out[k].key]) for k in members]
    if any(norm) and not all(norm):
        for k, n in zip(members, norm, strict=True):
            out[k] = out[k].with_entity("rec", "norm" if n else "orig")


def _by_direction(out: list[Decision], members: list[int], by_key: dict[str, SeriesHeader]) -> None:
    if any(out[k].entity("dir") for k in members):
        return
    dirs = [pe_label(by_key[out[k].key]) for k in members]
    if len(set(dirs)) > 1 and all(dirs):
        for k, d in zip(members, dirs, strict=True):
            out[k] = out[k].with_entity("dir", d)


def _by_acceleration(
    out: list[Decision], members: list[int], by_key: dict[str, SeriesHeader]
) -> None:
    labels = [_accel_label(by_key[out[k].key]) for k in members]
    if _distinct(labels):
        for k, a in zip(members, labels, strict=True):
            out[k] = out[k].with_entity("acq", out[k].entity("acq") + a)


def _by_run(out: list[Decision], members: list[int], by_key: dict[str, SeriesHeader]) -> None:
    if out[members[0]].suffix in _GRE_FMAP:
        # complete sets are numbered as sets (_gre_sets); parts without a partner after them
        lone = [k for k in members if not out[k].fieldmap]
        sets = len({d.fieldmap for d in out if d.fieldmap and d.suffix != "epi"})
        if len(members) > 1:
            for run, k in enumerate(lone, start=sets + 1):
                out[k] = out[k].with_entity("run", str(run))
        return
    for run, k in enumerate(members, start=1):
        out[k] = out[k].with_entity("run", str(run))


# -- what conversion makes of a decision -----------------------------------------------------


def output_plan(d: Decision, h: SeriesHeader) -> list[tuple[Output, str, str]]:
    """Each image dcm2niix writes for the series: (output, `datatype/<name>` or '', why not).

    Derived extras (Philips' ADC volume) and a partial volume of an interrupted acquisition
    (dcm2niix gives it a series number of its own, with fewer slices) are not published.
    """
    if d.skipped:
        return [(o, "", d.reason) for o in h.outputs]
    kept, rows = _published(h)
    base = d.name()
    if d.suffix in ("magnitude", "phase", "fieldmap"):
        names = _fieldmap_names(d, kept)
    elif len(kept) == 1:
        names = {kept[0].file or kept[0].postfix: base}
    else:
        names = _multi_names(base, kept)
    return [(o, names.get(o.file or o.postfix, ""), reason) for o, reason in rows]


def output_names(d: Decision, h: SeriesHeader) -> list[str]:
    """The `datatype/<name>` stems published for a decision, in dcm2niix's output order."""
    return [name for _, name, _ in output_plan(d, h) if name]


def _published(h: SeriesHeader) -> tuple[list[Output], list[tuple[Output, str]]]:
    kept = images(h)
    main = [o for o in kept if o.series_number in (0, h.number)] or kept
    most = max((o.shape[2] for o in main if len(o.shape) > 2), default=0)
    rows: list[tuple[Output, str]] = []
    for o in h.outputs:
        if o.is_side_product:
            rows.append((o, "scanner-derived"))
        elif o not in main and len(o.shape) > 2 and o.shape[2] < most:
            rows.append((o, f"partial volume of series {h.number} (an interrupted acquisition)"))
        else:
            rows.append((o, ""))
    return [o for o, why in rows if not why], rows


def _rank(outputs: list[Output]) -> dict[str, int]:
    """Echo order (1 = shortest echo time) of each output."""
    times = sorted({o.echo_time for o in outputs})
    return {o.file or o.postfix: times.index(o.echo_time) + 1 for o in outputs}


def _fieldmap_names(d: Decision, outputs: list[Output]) -> dict[str, str]:
    """magnitude1/2 by echo, phase1/2 beside them, or magnitude + fieldmap (Hz)."""
    rank = _rank(outputs)
    names: dict[str, str] = {}
    mags = [o for o in outputs if not o.is_phase and not o.is_fieldmap_hz]
    for o in outputs:
        key = o.file or o.postfix
        if o.is_fieldmap_hz:
            names[key] = d.name("fieldmap")
        elif d.suffix == "fieldmap":
            names[key] = d.name("magnitude")
        elif o.is_phase:
            names[key] = d.name(f"phase{rank[key]}" if d.suffix == "phase" else "phasediff")
        else:
            n = rank[key] if len(mags) > 1 else 1
            names[key] = d.name(f"magnitude{n}")
    return names


def _multi_names(base: str, outputs: list[Output]) -> dict[str, str]:
    """Echoes and magnitude/phase parts of one series, named as heudiconv would name them."""
    echoes = {o.echo_time for o in outputs if o.echo_time}
    rank = _rank(outputs)
    complex_ = any(o.is_phase for o in outputs) and any(not o.is_phase for o in outputs)
    names: dict[str, str] = {}
    for n, o in enumerate(outputs, start=1):
        key = o.file or o.postfix
        name = base
        if len(echoes) > 1:
            name = insert_entity(name, "echo", str(o.echo_number or rank[key]))
        if complex_:
            name = insert_entity(name, "part", "phase" if o.is_phase else "mag")
        names[key] = name if name != base else insert_entity(base, "run", str(n))
    return names


def insert_entity(name: str, key: str, value: str) -> str:
    """'anat/acq-x_T1w' with an entity added in its BIDS place."""
    folder, _, stem = name.rpartition("/")
    parts = stem.split("_")
    suffix = parts.pop()
    ents = dict(p.split("-", 1) for p in parts)
    ents[key] = value
    return f"{folder}/{bids.stem(ents, suffix)}"
