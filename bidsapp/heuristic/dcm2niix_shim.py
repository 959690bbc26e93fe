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
we do expect some files since it was called". So `convert` puts `shim/dcm2niix` (a two-line sh
script calling this module) first on heudiconv's PATH: the real dcm2niix runs with the same
arguments, its stdout is passed on with the line break put back, its stderr goes straight
through, its exit code is kept, and the files it writes are not touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

SHIM_DIR = Path(__file__).with_name("shim")
PYTHON_ENV = "BIDSAPP_PYTHON"  # the interpreter the sh script runs this module with
REAL_ENV = "BIDSAPP_DCM2NIIX"  # the dcm2niix it wraps

# a "Convert N DICOM as" message that does not start its line
_JOINED_CONVERT = re.compile(rb"(?<=.)(?=Convert \d+ DICOM as )")


def mend(line: bytes) -> bytes:
    """Start every "Convert N DICOM as …" message in `line` on a line of its own."""
    return _JOINED_CONVERT.sub(b"\n", line)


def environment(real_dcm2niix: str, path: str) -> dict[str, str]:
    """What heudiconv's environment needs so that its `dcm2niix` is this shim around
    `real_dcm2niix`; `path` is the PATH it would have had."""
    return {
        "PATH": f"{SHIM_DIR}{os.pathsep}{path}",
        PYTHON_ENV: sys.executable,
        REAL_ENV: real_dcm2niix,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the real dcm2niix with `argv`, streaming its stdout line by line, mended."""
    args = sys.argv[1:] if argv is None else argv
    real = os.environ.get(REAL_ENV, "")
    if not real:
        print(f"dcm2niix shim: {REAL_ENV} names no dcm2niix to run", file=sys.stderr)
        return 127
    try:
        proc = subprocess.Popen([real, *args], stdout=subprocess.PIPE)
    except OSError as exc:
        print(f"dcm2niix shim: cannot run {real}: {exc.strerror}", file=sys.stderr)
        return 127
    # a job being stopped stops dcm2niix too, rather than leaving it running
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    assert proc.stdout is not None
    out = sys.stdout.buffer
    for line in proc.stdout:
        out.write(mend(line))
        out.flush()
    code = proc.wait()
    if code < 0:  # killed by a signal: end the same way, so the caller sees what dcm2niix saw
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
