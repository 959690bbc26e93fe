"""The dcm2niix shim heudiconv runs: "Convert …" starts a line, and nothing else changes.

The whole-pipeline case (a Philips GR/SP series in `philips_tfe`, which failed the exam before
the shim) is in test_synthetic_sessions.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bidsapp_sandbox.exams import EXAMS, write_session
from nipype.interfaces.dcm2nii import Dcm2niix

from bidsapp.heuristic.dcm2niix_shim import SHIM_DIR, environment

DCM2NIIX = str(Path(sys.executable).parent / "dcm2niix")
WARNING = b"Warning: Unable to distinguish Philips fieldmaps: phase difference, two phase/magnitude, direct fieldmapping."  # noqa: E501


@pytest.mark.parametrize(
    ("line", "mended"),
    [
        # dcm2niix v1.0.20260724 on a Philips GR/SP series, as nipype received it
        (WARNING + b"Convert 8 DICOM as /o/x_heudiconv1 (16x16x8x1)\n",
         WARNING + b"\nConvert 8 DICOM as /o/x_heudiconv1 (16x16x8x1)\n"),
        (b"Convert 8 DICOM as /o/x (16x16x8x1)\n", b"Convert 8 DICOM as /o/x (16x16x8x1)\n"),
        (b"Found 8 DICOM file(s)\n", b"Found 8 DICOM file(s)\n"),
        (b"Warning: a.Convert 2 DICOM as /o/a (1x1x2x1)Convert 3 DICOM as /o/b (1x1x3x1)",
         b"Warning: a.\nConvert 2 DICOM as /o/a (1x1x2x1)\nConvert 3 DICOM as /o/b (1x1x3x1)"),
        # only dcm2niix's message, not any text that happens to hold the word
        (b"Warning: Convert images with care.\n", b"Warning: Convert images with care.\n"),
        (b"Compress: pigz /o/Convert 2 DICOM.nii\n", b"Compress: pigz /o/Convert 2 DICOM.nii\n"),
    ],
)  # fmt: skip
def test_the_shim_starts_each_convert_message_on_its_own_line(
    tmp_path: Path, line: bytes, mended: bytes
) -> None:
    # a stand-in "dcm2niix" that prints the line as the real one did
    (tmp_path / "said").write_bytes(line)
    fake = tmp_path / "fake-dcm2niix"
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'said'}\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, **environment(str(fake), os.environ["PATH"])}
    done = subprocess.run([SHIM_DIR / "dcm2niix", "-x"], env=env, capture_output=True)
    assert done.stdout == mended and done.returncode == 3


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_shim_runs_the_real_dcm2niix_and_changes_only_its_line_breaks(tmp_path: Path) -> None:
    ffe = [s for s in EXAMS["philips_tfe"].series if s.kind == "philips_ffe"]
    write_session(tmp_path / "in", series=ffe, vendor="philips")
    env = {**os.environ, **environment(DCM2NIIX, os.environ["PATH"])}
    runs = {}
    for name, exe in (("real", DCM2NIIX), ("shim", str(SHIM_DIR / "dcm2niix"))):
        (tmp_path / name).mkdir()
        argv = [exe, "-z", "y", "-b", "y", "-f", "%s_%p", "-o", str(tmp_path / name)]
        runs[name] = subprocess.run([*argv, str(tmp_path / "in")], env=env, capture_output=True)
    real, shim = runs["real"], runs["shim"]
    assert real.returncode == shim.returncode == 0
    assert WARNING + b"Convert 8 DICOM as " in real.stdout, "dcm2niix fixed: drop the shim?"
    # what heudiconv gets from nipype: nothing from dcm2niix itself, the file from the shim
    parse = Dcm2niix()._parse_stdout
    assert parse(real.stdout.decode()) == []
    assert parse(shim.stdout.decode()) == [str(tmp_path / "shim" / "1_T2_W_FFE_tra")]
    strip = [b"Convert", b"Conversion required"]  # output paths, timings
    assert [ln for ln in real.stdout.replace(WARNING, WARNING + b"\n").splitlines()
            if not any(ln.startswith(s) for s in strip)] == [
        ln for ln in shim.stdout.splitlines() if not any(ln.startswith(s) for s in strip)
    ]  # fmt: skip
    assert real.stderr == shim.stderr
    assert _digests(tmp_path / "real") == _digests(tmp_path / "shim")  # the files are untouched
    # exit codes pass through: `-v` exits 3 by design, a missing input folder 5
    for argv, code in ((["-v"], 3), ([str(tmp_path / "absent")], 5)):
        done = subprocess.run([SHIM_DIR / "dcm2niix", *argv], env=env, capture_output=True)
        assert done.returncode == code, done
