"""One series' summary → a BIDS name, or why it is skipped: pure functions, no conversion.

Evidence is weighed in this order: what dcm2niix made of the series (its outputs: b-values,
`_fieldmaphz`, echoes, magnitude/phase), the physics in the headers (image type, sequence,
timing, phase encoding), dcm2niix's own guess (BidsGuess), and last the description in several
vendors' vocabularies. The whole session is looked at in `plan.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from bidsapp import bids
from bidsapp.heuristic.headers import Output, SeriesHeader

# A PEPOLAR field map is a short b=0 EPI series: one to a few volumes (HCP acquires three).
PEPOLAR_MAX_VOLUMES = 10
DIFFUSION_B = 50.0  # s/mm²: below this a volume counts as b=0

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
_ASL_TEXT = re.compile(r"pcasl|pasl|(^|[^a-z])asl($|[^a-z])")
_DWI_TEXT = re.compile(r"dwi|dti|diff|tensor|hardi|dsi|(^|[^a-z])b\d{3,4}")
_FMAP_TEXT = re.compile(r"field[-_ ]?map|fieldmap|b0[-_ ]?map|fmap|(^|[^a-z])fm($|[^a-z])")
SEFM_TEXT = re.compile(r"se[-_]?epi|spin[-_ ]?echo|sefm|topup|pepolar|fmap|field|distortion|b0")


@dataclass(frozen=True)
class Decision:
    """What becomes of one series: a BIDS name (datatype, entities, suffix) or a skip reason."""

    key: str  # the series' key (SeriesHeader.key)
    datatype: str = ""
    suffix: str = ""
    entities: tuple[tuple[str, str], ...] = ()
    reason: str = ""
    sidecar: tuple[tuple[str, Any], ...] = ()  # fields to set after conversion
    aslcontext: tuple[str, ...] = ()
    fieldmap: str = ""  # B0FieldIdentifier of the complete field-map set this series is part of
    note: str = ""  # what a curator should know (e.g. an incomplete field map)

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
        return replace(self, entities=bids.ordered(ents))

    def name(self, suffix: str | None = None) -> str:
        """`datatype/<entities>_suffix`, without the subject and session."""
        ents = "".join(f"_{k}-{v}" for k, v in self.entities)
        return f"{self.datatype}/{ents.lstrip('_')}{'_' if ents else ''}{suffix or self.suffix}"


def skip(h: SeriesHeader, reason: str) -> Decision:
    return Decision(h.key, reason=reason)


def label(text: str) -> str:
    """A BIDS label (letters and digits) from free text."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def _hints(h: SeriesHeader) -> str:
    return f" {h.description} {h.protocol} ".lower()


def reproin(h: SeriesHeader, key: str) -> str:
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


def image_words(h: SeriesHeader) -> set[str]:
    return {w.upper() for w in (*h.image_type, *h.image_type_text)}


def is_epi(h: SeriesHeader) -> bool:
    seq = f"{h.scanning_sequence} {h.sequence_name} {h.pulse_sequence}".lower()
    return "ep" in h.scanning_sequence.upper().split("\\") or bool(
        re.search(r"epfid|epse|ep2d|ep_|epi|ep3d|mbep|fmri|bold|diff", seq)
    )


def _is_spin_echo(h: SeriesHeader) -> bool:
    seq = f"{h.scanning_sequence}".upper()
    return "SE" in seq.replace("\\", " ").split() or "epse" in h.sequence_name.lower()


def _guess(h: SeriesHeader) -> tuple[str, str]:
    """dcm2niix's BidsGuess as (datatype, suffix); ('', '') when it has none."""
    if len(h.bidsguess) < 2:
        return "", ""
    return h.bidsguess[0], h.bidsguess[1].rsplit("_", 1)[-1]


def _derived_reason(h: SeriesHeader) -> str:
    found = image_words(h)
    desc = h.description.upper()
    if "COLFA" in desc.replace("_", ""):
        return "scanner-derived colour FA map"
    for word, reason in _DERIVED_WORDS.items():
        if word in found or word in set(re.split(r"[^A-Z0-9]+", desc)):
            return reason
    return "scanner-derived image"


def is_localizer(h: SeriesHeader) -> bool:
    orientations = {o.orientation for o in h.outputs if o.orientation}
    return (
        bool(_LOCALIZER.search(_hints(h)))
        or len(orientations) > 1
        or "LOCALIZER" in image_words(h)
        or _guess(h) == ("discard", "localizer")
    )


def images(h: SeriesHeader) -> list[Output]:
    """The outputs that are images of this acquisition (not dcm2niix's derived extras)."""
    return [o for o in h.outputs if not o.is_side_product]


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
    elif "GR" in h.scanning_sequence.upper() and h.te > 0.015 and not is_epi(h):
        physics = "T2starw"
    elif 0 < h.te < 0.015 and 0 < h.tr < 1.0 and h.acquisition_type == "3D":
        physics = "T1w"
    elif not ir and 0 < h.te < 0.04 and h.tr > 1.5 and not is_epi(h):
        physics = "PDw"
    # physics decides where it is unambiguous (inversion recovery); the name breaks other ties
    if physics in ("FLAIR", "T1w") and ir:
        return physics
    return hint or physics


def is_pepolar_candidate(h: SeriesHeader) -> bool:
    """A short b=0 EPI series that is not a reference image: a PEPOLAR field map when the
    session holds its opposite-phase-encoding partner (plan.py looks for it)."""
    return (
        is_epi(h)
        and 0 < h.volumes <= PEPOLAR_MAX_VOLUMES
        and max(h.bvalues, default=0.0) < DIFFUSION_B
        and "FMRI" not in image_words(h)
        and "sbref" not in _hints(h)
        and bool(pe_label(h))
    )


def classify(h: SeriesHeader) -> Decision:
    """One series on its own: its datatype, suffix and hint entities, or why it is skipped."""
    found = image_words(h)
    text = _hints(h)
    if any(s in h.sop_class for s in _NON_IMAGE_SOP) or (h.dims[:2] == (0, 0) and not h.outputs):
        what = "Siemens Phoenix protocol report" if "PHOENIX" in text.upper() else h.sop_class
        return skip(h, f"non-image series ({what or 'no pixel data'})")
    if "Secondary Capture" in h.sop_class:
        return skip(h, "secondary capture (a screenshot, not an acquisition)")
    if not images(h):
        return skip(h, "dcm2niix writes no image for this series")
    if is_localizer(h):
        return skip(h, "localizer")
    guess = _guess(h)
    asl = (
        "ASL" in found
        or any(k == "ArterialSpinLabelingType" for k, _ in h.asl)
        or guess[0] == "perf"
        or bool(_ASL_TEXT.search(text))
    )
    acq = label(reproin(h, "acq"))
    base = Decision(h.key, entities=(("acq", acq),) if acq else ())
    if any(o.is_fieldmap_hz for o in h.outputs):
        # GE and Philips B0 maps: dcm2niix writes the magnitude and the field in Hz (which GE
        # marks DERIVED: computed by the scanner, yet the field map itself)
        return replace(base, datatype="fmap", suffix="fieldmap")
    derived = "DERIVED" in found or bool(found & {"MPR", "PROJECTION IMAGE", "MNIP", "MIP"})
    if derived or "MOCO" in found:
        return skip(h, _derived_reason(h))
    swi = bool(re.search(r"swi|swan", text)) or "SWI" in found or "swi" in h.sequence_name.lower()
    if swi and re.search(r"(^|[^a-z])(swi_images|mip|minip|mnip)", text):
        return skip(h, _derived_reason(h))
    if asl:
        return replace(base, datatype="perf", suffix="asl")
    bmax = max(h.bvalues, default=0.0)
    volumes = h.volumes
    # b-values are what every vendor's DWI gives (dcm2niix writes them): a series with
    # diffusion weighting and several volumes is DWI, whatever its name or image type says
    if (bmax >= DIFFUSION_B and (volumes > 1 or _DWI_TEXT.search(text))) or (
        "DIFFUSION" in found and volumes > 1
    ):
        if volumes == 1:
            return skip(h, "single diffusion-weighted volume (trace or isotropic image)")
        return replace(base, datatype="dwi", suffix="dwi").with_entity("dir", pe_label(h))
    fmap_hint = bool(_FMAP_TEXT.search(text))
    gre_fmap = re.search(r"fm2d|fm3d|field_mapping", h.sequence_name + h.pulse_sequence.lower())
    # (not BidsGuess: dcm2niix guesses a field map for every spoiled Philips GRE series)
    if (gre_fmap or fmap_hint) and not is_epi(h):
        phases = [o for o in images(h) if o.is_phase]
        if phases:
            # one phase image: the scanner's phase difference; several: phase per echo
            suffix = "phasediff" if len(phases) == 1 else "phase"
            return replace(base, datatype="fmap", suffix=suffix)
        return replace(base, datatype="fmap", suffix="magnitude")
    if is_epi(h):
        if "sbref" in text:
            return replace(base, datatype="func", suffix="sbref", entities=())
        if is_pepolar_candidate(h) and (SEFM_TEXT.search(text) or fmap_hint or _is_spin_echo(h)):
            # plan.py keeps it only beside its opposite-direction partner or with a fmap name
            return replace(base, datatype="fmap", suffix="epi").with_entity("dir", pe_label(h))
        if volumes > 1 or "FMRI" in found or guess == ("func", "bold"):
            return replace(base, datatype="func", suffix="bold").with_entity("task", task_label(h))
        if is_pepolar_candidate(h):
            return replace(base, datatype="fmap", suffix="epi").with_entity("dir", pe_label(h))
        return skip(h, "single-volume EPI that is neither BOLD nor a field map")
    suffix = anat_suffix(h)
    if not suffix:
        return skip(h, "unrecognised contrast: name it with --overrides")
    decision = replace(base, datatype="anat", suffix=suffix)
    if swi or (suffix == "T2starw" and ("P" in found or "M" in found)):
        part = "phase" if "P" in found or "PHASE" in found else "mag"
        decision = decision.with_entity("part", part)
    return decision


def task_label(h: SeriesHeader) -> str:
    """`rest` when the description says so, a ReproIn task, else a label from the description."""
    from_reproin = label(reproin(h, "task"))
    if from_reproin:
        return from_reproin
    text = h.description or h.protocol
    if re.search(r"rest|rsfmri|rs[-_]?fmri", text, re.I):
        return "rest"
    kept = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w and w.lower() not in _GENERIC_WORDS]
    return label("".join(kept)) or "unknown"


def accel_label(h: SeriesHeader) -> str:
    """`R2`, `R1p5`, `R2MB2`: in-plane and multiband acceleration as an `acq-` label."""
    if not h.parallel_factor and not h.multiband_factor:
        return ""
    r = f"{h.parallel_factor:g}".replace(".", "p") if h.parallel_factor else "1"
    mb = f"MB{h.multiband_factor:g}" if h.multiband_factor > 1 else ""
    return f"R{r}{mb}"


def guess_disagrees(d: Decision, h: SeriesHeader) -> str:
    """What dcm2niix's BidsGuess says when it differs from the decision ('' when they agree)."""
    datatype, suffix = _guess(h)
    if not datatype:
        return ""
    ours = (d.datatype, d.suffix) if not d.skipped else ("discard", "")
    theirs_skip = datatype in ("discard", "derived")
    if (d.skipped and theirs_skip) or (ours[0] == datatype and suffix.startswith(d.suffix[:5])):
        return ""
    return f"dcm2niix guesses {datatype}/{suffix}"
