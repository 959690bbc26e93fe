"""auto: bidsapp's default, cross-vendor heuristic: names series from what their headers say.

Each series is summarised from its headers (image type, sequence, TR/TE/TI from enhanced
functional groups too, b-values, phase-encoding direction; description and protocol name as
hints) by `custom_seqinfo`, classified by `bidsapp.heuristic.classify`, and named T1w/T2w/FLAIR/PDw/
T2starw, bold/sbref, dwi, fmap magnitude/phasediff/epi or perf asl. Repeats get rec-/dir-/acq-
where the headers show how they differ, else run- in acquisition order. Scanner-derived images,
localizers and non-image series are skipped; bidsapp's report lists each with its reason.

Works as a plain heudiconv heuristic (`heudiconv -f auto.py …`, with bidsapp installed). Inside
bidsapp it also reads the study's overrides (BIDSAPP_OVERRIDES) and writes its decisions
(BIDSAPP_PLAN), which bidsapp uses to finish sidecars (field-map links, ASL) and the report.
"""

from __future__ import annotations

from collections.abc import Iterable

from heudiconv.utils import SeqInfo

from bidsapp.heuristic.base import Key
from bidsapp.heuristic.base import infotodict as infotodict_from_headers
from bidsapp.heuristic.headers import custom_seqinfo

__all__ = ["EXPECTED_FILES", "custom_seqinfo", "infotodict"]


# An exam may hold anything: nothing in particular is expected (the gate still needs one image).
EXPECTED_FILES: tuple[str, ...] = ()


def infotodict(seqinfo: Iterable[SeqInfo]) -> dict[Key, list[str]]:
    """heudiconv's entry point: {template: [series ids]}."""
    return infotodict_from_headers(seqinfo)
