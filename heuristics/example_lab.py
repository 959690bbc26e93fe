"""example_lab: a lab-specific heuristic built on auto — copy it, rename it, edit the rules.

Use it with `--heuristic path/to/my_lab.py`. It keeps everything the default does (header-based
classification, skipped series with reasons, run/rec/acq numbering, field-map links) and adds
two kinds of rules a lab typically needs:

1. `RENAME`: series descriptions (glob patterns, case-insensitive) → a BIDS name, for protocols
   whose headers cannot say what they are (e.g. a task's name).
2. `SKIP`: descriptions never to convert, with the reason shown in the report.

Both are plain data, the same as an `--overrides` file; a heuristic is the place for rules
that hold for every exam of a study, an overrides file for one exam's exceptions.
`EXPECTED_FILES` makes the gate fail when a series the study needs is missing.
"""

from __future__ import annotations

from bidsapp.heuristic.base import infotodict_with, planner
from bidsapp.heuristic.plan import Override
from bidsapp.heuristic.prepass import custom_seqinfo

__all__ = ["EXPECTED_FILES", "custom_seqinfo", "infotodict", "plan"]

RENAME = {
    "*nback*": "func/task-nback_bold",
    "*resting*": "func/task-rest_bold",
}
SKIP = {
    "*test*": "test acquisition",
}
# Every subject of this (example) study must have a T1w image.
EXPECTED_FILES: tuple[str, ...] = ("**/anat/*_T1w.nii.gz",)

LAB_RULES = tuple(
    [Override(description=p, bids=name) for p, name in RENAME.items()]
    + [Override(description=p, skip=reason) for p, reason in SKIP.items()]
)

# The default classification with this lab's rules (and the exam's overrides) on top.
plan = planner(LAB_RULES)
infotodict = infotodict_with(plan)
