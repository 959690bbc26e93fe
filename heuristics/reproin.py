"""ReproIn: names series from ReproIn-style protocol names (heudiconv's own heuristic).

Delegates to `heudiconv.heuristics.reproin`; only works for exams whose protocols were named
the ReproIn way at the scanner (e.g. `anat-T1w`, `func-bold_task-rest`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from heudiconv.heuristics import reproin as _reproin
from heudiconv.utils import SeqInfo

create_key = _reproin.create_key
filter_files = _reproin.filter_files
filter_dicom = _reproin.filter_dicom
POPULATE_INTENDED_FOR_OPTS = _reproin.POPULATE_INTENDED_FOR_OPTS

# Glob patterns (relative to sub-<label>/) that must each match a converted file; ReproIn
# names whatever the protocol says, so it expects nothing in particular.
EXPECTED_FILES: tuple[str, ...] = ()


def _described(seqinfos: Iterable[SeqInfo]) -> list[SeqInfo]:
    # ReproIn asserts a StudyDescription, which GE exports do not carry; it only feeds the
    # study "locator", which bidsapp overrides (heudiconv -l ""), so an empty one is faithful.
    return [s._replace(study_description=s.study_description or "") for s in seqinfos]


def infotodict(seqinfo: Iterable[SeqInfo]) -> Any:
    """ReproIn's naming, tolerant of exports without a StudyDescription."""
    return _reproin.infotodict(_described(seqinfo))


def infotoids(seqinfos: Iterable[SeqInfo], outdir: str) -> dict[str, str | None]:
    """ReproIn's session and subject deduction, tolerant of a missing StudyDescription."""
    return _reproin.infotoids(_described(seqinfos), outdir)
