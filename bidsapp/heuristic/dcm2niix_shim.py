"""The `dcm2niix` heudiconv runs: the real one, with every "Convert …" message on its own line.

nipype's Dcm2niix interface, through which heudiconv converts, learns which files dcm2niix wrote
only from stdout lines that *start* with "Convert " (`Dcm2niix._parse_stdout` in
nipype/interfaces/dcm2nii.py, nipype 1.11.0). dcm2niix ends some warnings without a newline: for
every Philips GR/SP series that is not a localizer (a spoiled FFE, a B0 field map) its BIDS
guess (`setBidsPhilips`, console/nii_dicom_batch.cpp, still so in v1.0.20260724, the newest on
PyPI) prints

    Warning: Unable to distinguish Philips fieldmaps: phase difference, two phase/magnitude,
    direct fieldmapping.Convert 8 DICOM as /…/x_heudiconv123 (16x16x8x1)

as one line. nipype then finds no output and heudiconv stops the whole exam with "AssertionError:
we do expect some files since it was called". So `convert` puts `shim/dcm2niix` first on
heudiconv's PATH: a bash script that execs the real dcm2niix with the same arguments and pipes
its stdout through `sed` to put the line break back. Its stderr, exit code, signals and the files
it writes are the real dcm2niix's; it costs a few milliseconds per series (a Python wrapper cost
a tenth of a second, which added up on exams of many series).
"""

from __future__ import annotations

import os
from pathlib import Path

SHIM_DIR = Path(__file__).with_name("shim")
REAL_ENV = "BIDSAPP_DCM2NIIX"  # the dcm2niix it wraps


def environment(real_dcm2niix: str, path: str) -> dict[str, str]:
    """What heudiconv's environment needs so that its `dcm2niix` is this shim around
    `real_dcm2niix`; `path` is the PATH it would have had."""
    return {"PATH": f"{SHIM_DIR}{os.pathsep}{path}", REAL_ENV: real_dcm2niix}
