"""ReproIn: names series from ReproIn-style protocol names (heudiconv's own heuristic).

Delegates to `heudiconv.heuristics.reproin`; only works for exams whose protocols were named
the ReproIn way at the scanner (e.g. `anat-T1w`, `func-bold_task-rest`).
"""

from heudiconv.heuristics import reproin as _reproin

infotodict = _reproin.infotodict
infotoids = _reproin.infotoids
create_key = _reproin.create_key
filter_files = _reproin.filter_files
filter_dicom = _reproin.filter_dicom
POPULATE_INTENDED_FOR_OPTS = _reproin.POPULATE_INTENDED_FOR_OPTS

# Glob patterns (relative to sub-<label>/) that must each match a converted file; ReproIn
# names whatever the protocol says, so it expects nothing in particular.
EXPECTED_FILES: tuple[str, ...] = ()
