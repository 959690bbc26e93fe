"""auto: bidsapp's default, cross-vendor heuristic: names series from what their headers say.

Each series is summarised from evidence every vendor gives: what dcm2niix makes of it (b-values,
echoes, magnitude/phase, a field map in Hz, its sidecar and BidsGuess) and its headers (image
type, sequence, timing, phase-encoding direction; description and protocol name as hints). It
is named T1w/T2w/FLAIR/PDw/T2starw, bold/sbref, dwi, fmap magnitude/phasediff/phase/fieldmap/
epi or perf asl. Field maps are assembled into complete sets by acquisition; repeats get
rec-/dir-/acq- where the headers show how they differ, else run- in acquisition order.
Scanner-derived images, localizers and non-image series are skipped; bidsapp's report lists
each with its reason.

Works as a plain heudiconv heuristic (`heudiconv -f auto.py …`, with bidsapp installed).
Inside bidsapp the summaries and the exam's overrides come from bidsapp, which also calls
`plan` itself to name every image after conversion.
"""

from __future__ import annotations

from bidsapp.heuristic.base import infotodict_with, planner
from bidsapp.heuristic.prepass import custom_seqinfo

__all__ = ["EXPECTED_FILES", "custom_seqinfo", "infotodict", "plan"]


# An exam may hold anything: nothing in particular is expected (the gate still needs one image).
EXPECTED_FILES: tuple[str, ...] = ()

plan = planner()
infotodict = infotodict_with(plan)
