"""Header summary → BIDS name, or why a series is skipped: pure functions, no conversion.

`classify` looks at one series (image type, sequence, timing, b-values, phase encoding, and the
description as a hint in several vendors' vocabularies); `plan` looks at the whole session:
overrides, SBRef pairing, and repeats told apart by `rec-`, `dir-`, `acq-` where the headers
show how they differ, else `run-` in acquisition order. Nothing here is ever `__dup`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bidsapp.heuristic.headers import SeriesHeader

# BIDS filename entity order (the subset a converter sets).
ENTITY_ORDER = ("task", "acq", "ce", "rec", "dir", "run", "echo", "part")
DATATYPES = ("anat", "func", "dwi", "fmap", "perf")
SUFFIXES = {
    "anat": ("T1w", "T2w", "FLAIR", "PDw", "T2starw"),
    "func": ("bold", "sbref"),
    "dwi": ("dwi", "sbref"),
    "fmap": ("magnitude1", "magnitude2", "magnitude", "phasediff", "phase1", "phase2", "epi"),
    "perf": ("asl", "m0scan"),
}
ASL_REQUIRED = (
    "ArterialSpinLabelingType",
    "PostLabelingDelay",
    "BackgroundSuppression",
    "M0Type",
    "TotalAcquiredPairs",
    "RepetitionTimePreparation",
)

_LOCALIZER = re.compile(
    r"locali[sz]er|scout|survey|(^|[^a-z])loc($|[^a-z])|3[-_ ]?plane|tri[-_ ]?pilot|aahead|"
    r"calibration|cal[-_]?scan|asset[-_ ]?cal|coil[-_ ]?sens",
    re.I,
)
_NON_IMAGE_SOP = (
    "SR ",
    "SR Storage",
    "Raw Data",
    "Presentation State",
    "Encapsulated",
    "Spectroscopy",
)
_DERIVED_WORDS = {
    "ADC": "scanner-derived ADC map",
    "FA": "scanner-derived FA map",
    "TRACEW": "scanner-derived trace-weighted image",
    "TRACE": "scanner-derived trace-weighted image",
    "ISO": "scanner-derived isotropic image",
    "TENSOR_B0": "scanner-derived tensor b0 image",
    "TENSOR": "scanner-derived tensor image",
    "EXP": "scanner-derived exponential ADC map",
    "SUBTRACTION": "scanner-derived perfusion-weighted map",
    "PERFUSION": "scanner-derived perfusion map",
    "RCBF": "scanner-derived relative CBF map",
    "CBF": "scanner-derived CBF map",
    "MNIP": "scanner-made minimum intensity projection (mIP)",
    "MIP": "scanner-made maximum intensity projection (MIP)",
    "MPR": "MPR reformat",
    "REFORMATTED": "reformatted image",
    "PROJECTION IMAGE": "projection image",
    "MOCO": "motion-corrected copy",
    "SWI": "scanner-processed SWI image",
    "T1 MAP": "scanner-derived T1 map",
    "T2 MAP": "scanner-derived T2 map",
}
_GENERIC_WORDS = {
    "fmri", "bold", "func", "epi", "ep2d", "cmrr", "mbep2d", "run", "task", "mosaic", "sbref",
}  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """What becomes of one series: a BIDS name (datatype, entities, suffix) or a skip reason."""

    series_id: str
    datatype: str = ""
    suffix: str = ""
    entities: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    sidecar: tuple[tuple[str, Any], ...] = ()  # fields to set after conversion
    aslcontext: tuple[str, ...] = ()

    @property
    def skipped(self) -> bool:
        return not self.suffix

    def entity(self, key: str) -> str:
        return dict(self.entities).get(key, "")

    def with_entity(self, key: str, value: str) -> Decision:
        ents = dict(self.entities)
        if value:
            ents[key] = value
        else:
            ents.pop(key, None)
        ordered = tuple((k, ents[k]) for k in ENTITY_ORDER if k in ents)
        return replace(self, entities=ordered)

    def name(self) -> str:
        """`datatype/<entities>_suffix`, without the subject and session."""
        ents = "".join(f"_{k}-{v}" for k, v in self.entities)
        return f"{self.datatype}/{ents.lstrip('_')}{'_' if ents else ''}{self.suffix}"

    def template(self, outputs: int = 1) -> str:
        """The heudiconv template; heudiconv numbers a two-echo magnitude series itself."""
        ents = "".join(f"_{k}-{v}" for k, v in self.entities)
        suffix = "magnitude1" if self.suffix == "magnitude" and outputs <= 1 else self.suffix
        return (
            f"{{bids_subject_session_dir}}/{self.datatype}/"
            f"{{bids_subject_session_prefix}}{ents}_{suffix}"
        )


def skip(h: SeriesHeader, reason: str) -> Decision:
    return Decision(h.series_id, reason=reason)


def label(text: str) -> str:
    """A BIDS label (letters and digits) from free text."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def _hints(h: SeriesHeader) -> str:
    return f" {h.description} {h.protocol} ".lower()


def _reproin(h: SeriesHeader, key: str) -> str:
    """A `key-value` token in a ReproIn-style description or protocol name."""
    for text in (h.protocol, h.description):
        m = re.search(rf"(?:^|[_ ]){key}-([A-Za-z0-9]+)", text)
        if m:
            return m.group(1)
    return ""


def pe_label(h: SeriesHeader) -> str:
    """The `dir-` label (e.g. AP: encoded from anterior to posterior) from the image axes.

    dcm2niix flips DICOM rows, so NIfTI +i runs along the DICOM row direction and +j against
    the column direction; the label names the anatomical direction the encoding runs towards.
    """
    pe, iop = h.pe_direction, h.orientation
    if pe not in ("i", "i-", "j", "j-") or len(iop) != 6:
        return ""
    axis = list(iop[:3]) if pe[0] == "i" else [-v for v in iop[3:]]
    if pe.endswith("-"):
        axis = [-v for v in axis]
    k = max(range(3), key=lambda n: abs(axis[n]))
    positive = axis[k] > 0  # LPS: +x left, +y posterior, +z superior
    return (("RL", "LR"), ("AP", "PA"), ("IS", "SI"))[k][0 if positive else 1]


def _words(h: SeriesHeader) -> set[str]:
    return {w.upper() for w in (*h.image_type, *h.image_type_text)}


def _is_epi(h: SeriesHeader) -> bool:
    seq = f"{h.scanning_sequence} {h.sequence_name} {h.pulse_sequence}".lower()
    return "ep" in h.scanning_sequence.upper().split("\\") or bool(
        re.search(r"epfid|epse|ep2d|ep_|epi|ep3d|mbep|fmri|bold|diff", seq)
    )


def _is_spin_echo(h: SeriesHeader) -> bool:
    seq = f"{h.scanning_sequence}".upper()
    return "SE" in seq.replace("\\", " ").split() or "epse" in h.sequence_name.lower()


def _derived_reason(h: SeriesHeader) -> str:
    words = _words(h)
    desc = h.description.upper()
    if "COLFA" in desc.replace("_", ""):
        return "scanner-derived colour FA map"
    for word, reason in _DERIVED_WORDS.items():
        if word in words or word in set(re.split(r"[^A-Z0-9]+", desc)):
            return reason
    return "scanner-derived image"


def is_localizer(h: SeriesHeader) -> bool:
    orientations = {o.orientation for o in h.outputs if o.orientation}
    return bool(_LOCALIZER.search(_hints(h))) or len(orientations) > 1 or "LOCALIZER" in _words(h)


def anat_suffix(h: SeriesHeader) -> str:
    """T1w, T2w, FLAIR, PDw or T2starw from physics, with the description as a tie-breaker."""
    text = _hints(h)
    ir = "IR" in h.scanning_sequence.upper() or h.ti > 0.05
    hint = ""
    if re.search(r"flair|dark[-_ ]?fluid|tirm", text):
        hint = "FLAIR"
    elif re.search(r"t2\*|t2star|t2_star|swi|swan|gre_?hemo|hemo|medic|merge|susc", text):
        hint = "T2starw"
    elif re.search(r"mp-?rage|mprage|tfl|bravo|tfe|spgr|t1|mpr(?!\w)", text):
        hint = "T1w"
    elif re.search(r"(^|[^a-z])pd|proton", text):
        hint = "PDw"
    elif re.search(r"t2|space|cube|vista|tse|frfse", text):
        hint = "T2w"
    physics = ""
    if ir and h.ti > 1.2 and h.te > 0.05:
        physics = "FLAIR"
    elif ir and 0.2 < h.ti <= 1.3 and 0 < h.te < 0.015:
        physics = "T1w"
    elif not ir and h.te > 0.06 and h.tr > 1.5:
        physics = "T2w"
    elif "GR" in h.scanning_sequence.upper() and h.te > 0.015 and not _is_epi(h):
        physics = "T2starw"
    elif 0 < h.te < 0.015 and 0 < h.tr < 1.0 and h.acquisition_type == "3D":
        physics = "T1w"
    elif not ir and 0 < h.te < 0.04 and h.tr > 1.5 and not _is_epi(h):
        physics = "PDw"
    # physics decides where it is unambiguous (inversion recovery); the name breaks other ties
    if physics in ("FLAIR", "T1w") and ir:
        return physics
    return hint or physics


def classify(h: SeriesHeader) -> Decision:
    """One series on its own: its datatype, suffix and hint entities, or why it is skipped."""
    words = _words(h)
    text = _hints(h)
    if any(s in h.sop_class for s in _NON_IMAGE_SOP) or h.dims[:2] == (0, 0):
        what = "Siemens Phoenix protocol report" if "PHOENIX" in text.upper() else h.sop_class
        return skip(h, f"non-image series ({what or 'no pixel data'})")
    if "Secondary Capture" in h.sop_class:
        return skip(h, "secondary capture (a screenshot, not an acquisition)")
    if not h.outputs:
        return skip(h, "dcm2niix writes no image for this series")
    if is_localizer(h):
        return skip(h, "localizer")
    asl = "ASL" in words or any(k == "ArterialSpinLabelingType" for k, _ in h.asl)
    if "DERIVED" in words or words & {"MPR", "PROJECTION IMAGE", "MNIP", "MIP", "MOCO"}:
        return skip(h, _derived_reason(h))
    swi = bool(re.search(r"swi|swan", text)) or "SWI" in words or "swi" in h.sequence_name.lower()
    if swi and re.search(r"(^|[^a-z])(swi_images|mip|minip|mnip)", text):
        return skip(h, _derived_reason(h))
    acq = label(_reproin(h, "acq"))
    base = Decision(h.series_id, entities=(("acq", acq),) if acq else ())
    bmax = max(h.bvalues, default=0.0)
    if asl or re.search(r"(^|[^a-z])p?c?asl", text):
        return replace(base, datatype="perf", suffix="asl")
    dwi_hint = bool(re.search(r"dwi|dti|diff|tensor|hardi|dsi|(^|[^a-z])b\d{3,4}", text))
    if (bmax >= 50 and (h.volumes > 1 or dwi_hint)) or ("DIFFUSION" in words and h.volumes > 1):
        if h.volumes == 1:
            return skip(h, "single diffusion-weighted volume (trace or isotropic image)")
        return replace(base, datatype="dwi", suffix="dwi").with_entity("dir", pe_label(h))
    fmap_hint = bool(
        re.search(r"field[-_ ]?map|fieldmap|b0[-_ ]?map|fmap|(^|[^a-z])fm($|[^a-z])", text)
    )
    gre_fmap = re.search(r"fm2d|fm3d|field_mapping", h.sequence_name + h.pulse_sequence.lower())
    if (gre_fmap or fmap_hint) and not _is_epi(h):
        phase = [o for o in h.outputs if "P" in o.image_type or o.postfix.endswith("ph")]
        if phase:
            suffix = "phasediff" if len(phase) == 1 else "phase"
            return replace(base, datatype="fmap", suffix=suffix)
        return replace(base, datatype="fmap", suffix="magnitude")
    if _is_epi(h):
        if "sbref" in text:
            return replace(base, datatype="func", suffix="sbref", entities=())
        sefm = re.search(
            r"se[-_]?epi|spin[-_ ]?echo|sefm|topup|pepolar|fmap|field|distortion|b0", text
        )
        if (_is_spin_echo(h) or sefm) and h.volumes <= 10 and bmax < 50 and (sefm or fmap_hint):
            return replace(base, datatype="fmap", suffix="epi").with_entity("dir", pe_label(h))
        if h.volumes > 1 or "FMRI" in words:
            return replace(base, datatype="func", suffix="bold").with_entity("task", task_label(h))
        return skip(h, "single-volume EPI that is neither BOLD nor a field map")
    suffix = anat_suffix(h)
    if not suffix:
        return skip(h, "unrecognised contrast: name it with --overrides")
    decision = replace(base, datatype="anat", suffix=suffix)
    if swi or (suffix == "T2starw" and ("P" in words or "M" in words)):
        part = "phase" if "P" in words or "PHASE" in words else "mag"
        decision = decision.with_entity("part", part)
    return decision


def task_label(h: SeriesHeader) -> str:
    """`rest` when the description says so, a ReproIn task, else a label from the description."""
    reproin = label(_reproin(h, "task"))
    if reproin:
        return reproin
    text = h.description or h.protocol
    if re.search(r"rest|rsfmri|rs[-_]?fmri", text, re.I):
        return "rest"
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w and w.lower() not in _GENERIC_WORDS]
    return label("".join(words)) or "unknown"


def accel_label(h: SeriesHeader) -> str:
    """`R2`, `R1p5`, `R2MB2`: in-plane and multiband acceleration as an `acq-` label."""
    if not h.parallel_factor and not h.multiband_factor:
        return ""
    r = f"{h.parallel_factor:g}".replace(".", "p") if h.parallel_factor else "1"
    mb = f"MB{h.multiband_factor:g}" if h.multiband_factor > 1 else ""
    return f"R{r}{mb}"


# -- the session -------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """One validated entry of an overrides file."""

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
            d = Decision(h.series_id, reason=f"skipped by overrides: {o.skip}")
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
    by_id = {h.series_id: h for h in items}
    decisions = _skip_norm_copies(items, [classify(h) for h in items])
    decisions = _magnitude_alone(decisions)
    decisions = [_apply_override(h, d, overrides) for h, d in zip(items, decisions, strict=True)]
    decisions = [_asl(by_id[d.series_id], d) if d.suffix == "asl" else d for d in decisions]
    decisions = _pair_sbrefs(items, decisions)
    decisions = _disambiguate(decisions, by_id)
    return _follow_sbrefs(items, decisions)


def _twin_key(h: SeriesHeader) -> tuple[object, ...]:
    """What one acquisition's reconstructions share: time, geometry, timing, image type."""
    return (
        h.acquired,
        h.dims,
        h.orientation,
        h.tr,
        h.te,
        h.ti,
        frozenset(_words(h) - {"NORM"}),
    )


def _skip_norm_copies(items: list[SeriesHeader], decisions: list[Decision]) -> list[Decision]:
    """A prescan-normalised copy of an acquisition whose original is also kept is skipped.

    Siemens can save one acquisition twice, without and with prescan normalisation (NORM in
    ImageType, or in ImageTypeText on XA): published side by side, preprocessing would average
    the same acquisition twice. The original stays; a series saved only normalised is kept.
    """
    originals = {
        _twin_key(h): h
        for h, d in zip(items, decisions, strict=True)
        if not d.skipped and h.acquired and "NORM" not in _words(h)
    }
    out = list(decisions)
    for k, (h, d) in enumerate(zip(items, decisions, strict=True)):
        twin = originals.get(_twin_key(h))
        if not d.skipped and "NORM" in _words(h) and twin is not None:
            out[k] = skip(h, f"prescan-normalised copy of series {twin.number} (same acquisition)")
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
    fields: dict[str, Any] = {k: _json(v) for k, v in h.asl}
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
            d.series_id,
            reason=f"ASL: aslcontext has {len(context)} entries for {h.volumes} volumes",
        )
    if missing:
        return Decision(
            d.series_id,
            reason=f"ASL without {', '.join(missing)} in the headers: supply them in --overrides",
        )
    return replace(d, aslcontext=tuple(context), sidecar=tuple(sorted(fields.items())))


def _json(text: str) -> Any:
    import json

    return json.loads(text)


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


def _disambiguate(decisions: list[Decision], by_id: dict[str, SeriesHeader]) -> list[Decision]:
    """Series that would share a name: rec-, dir-, acq- where the headers differ, else run-."""
    out = list(decisions)
    # a field map's magnitude and phase series are one acquisition: number them as pairs
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
                refine(out, members, by_id)
    return out


def _key(d: Decision) -> str:
    # magnitude/phase(diff) of one GRE field map share their numbering
    suffix = "fmapgre" if d.suffix in ("magnitude", "phasediff", "phase") else d.suffix
    return f"{d.datatype}/{dict(d.entities)}/{suffix}"


def _distinct(values: list[str]) -> bool:
    return len(set(values)) == len(values) and all(values)


def _by_norm(out: list[Decision], members: list[int], by_id: dict[str, SeriesHeader]) -> None:
    # two acquisitions that differ in normalisation (a copy of one acquisition is skipped)
    norm = ["NORM" in _words(by_id[out[k].series_id]) for k in members]
    if any(norm) and not all(norm):
        for k, n in zip(members, norm, strict=True):
            out[k] = out[k].with_entity("rec", "norm" if n else "orig")


def _by_direction(out: list[Decision], members: list[int], by_id: dict[str, SeriesHeader]) -> None:
    if any(out[k].entity("dir") for k in members):
        return
    dirs = [pe_label(by_id[out[k].series_id]) for k in members]
    if len(set(dirs)) > 1 and all(dirs):
        for k, d in zip(members, dirs, strict=True):
            out[k] = out[k].with_entity("dir", d)


def _by_acceleration(
    out: list[Decision], members: list[int], by_id: dict[str, SeriesHeader]
) -> None:
    labels = [accel_label(by_id[out[k].series_id]) for k in members]
    if _distinct(labels):
        for k, a in zip(members, labels, strict=True):
            out[k] = out[k].with_entity("acq", out[k].entity("acq") + a)


def _by_run(out: list[Decision], members: list[int], by_id: dict[str, SeriesHeader]) -> None:
    if out[members[0]].suffix in ("magnitude", "phasediff", "phase"):
        # count acquisitions: each magnitude series starts one, its phase series follows it
        runs: list[int] = []
        run = 0
        for k in members:
            if out[k].suffix == "magnitude" or run == 0:
                run += 1
            elif any(
                out[j].suffix != "magnitude" and r == run
                for j, r in zip(members, runs, strict=False)
            ):
                run += 1  # a second phase series without its own magnitude
            runs.append(run)
        if run > 1:
            for k, r in zip(members, runs, strict=True):
                out[k] = out[k].with_entity("run", str(r))
        return
    for run, k in enumerate(members, start=1):
        out[k] = out[k].with_entity("run", str(run))


# -- what conversion makes of a decision -----------------------------------------------------


def output_names(d: Decision, h: SeriesHeader) -> list[str]:
    """The `datatype/<name>` stems heudiconv writes for a decision (mirrors its renaming)."""
    if d.skipped:
        return []
    base = d.name()
    outs = h.outputs or ()
    if d.suffix == "magnitude":
        if len(outs) <= 1:
            return [base[: -len("magnitude")] + "magnitude1"]
        return [f"{base}{n}" for n in range(1, len(outs) + 1)]
    if d.suffix == "phase":
        return [f"{base}{n}" for n in range(1, len(outs) + 1)]
    if len(outs) <= 1:
        return [base]
    echoes = {o.echo_time for o in outs if o.echo_time}
    types = {t for o in outs for t in o.image_type}
    names = []
    for n, o in enumerate(sorted(outs, key=lambda o: o.postfix), start=1):
        name = base
        if len(echoes) > 1:
            name = _insert(name, "echo", str(o.echo_number or n))
        if "M" in types and "P" in types:
            name = _insert(name, "part", "phase" if "P" in o.image_type else "mag")
        names.append(name if name != base else f"{base}{n}")
    return names


def _insert(name: str, key: str, value: str) -> str:
    folder, _, stem = name.rpartition("/")
    parts = stem.split("_")
    suffix = parts.pop()
    ents = dict(p.split("-", 1) for p in parts)
    ents[key] = value
    order = [*ENTITY_ORDER]
    ordered = [f"{k}-{ents[k]}" for k in order if k in ents]
    return f"{folder}/{'_'.join([*ordered, suffix])}"
