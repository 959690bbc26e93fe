"""One dcm2niix conversion of a whole study before naming: what dcm2niix makes of each series.

Every output's file-name postfix (echoes, `_ph`, `_fieldmaphz`, `_ADC`, …), sidecar, image
shape and b-values are the evidence every vendor gives; the images themselves (uncompressed)
are the conversion of any series heudiconv cannot convert. dcm2niix runs with the options
heudiconv gives it (`-m 0 -x n -t n`, anonymised sidecars), so each output here is the file
heudiconv will write, and its sidecar can be matched to it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from bidsapp.heuristic.headers import Output, number, record, summarize, words
from bidsapp.tools import ToolFailed, run

# Where bidsapp puts the summaries for the heuristic inside heudiconv (see base.py).
HEADERS_ENV = "BIDSAPP_HEADERS"
# `-f %j_%s`: the series UID names each output, so outputs map back to their series.
ARGV = ("dcm2niix", "-b", "y", "-ba", "y", "-z", "n", "-m", "0", "-x", "n", "-t", "n")
TIMEOUT = 3600.0
_STEM = re.compile(r"^(?P<uid>[0-9.]+)_(?P<rest>.+)$")


def convert_folder(src: Path, out: Path) -> dict[str, list[tuple[Output, dict[str, Any]]]]:
    """dcm2niix over a folder of one study: every output by series UID (empty when it fails)."""
    out.mkdir(parents=True, exist_ok=True)
    # what it wrote before failing is still evidence; the rest converts without it
    with contextlib.suppress(ToolFailed):
        run([*ARGV, "-f", "%j_%s", "-o", str(out), str(src)], timeout=TIMEOUT)
    return read_outputs(out)


def read_outputs(folder: Path) -> dict[str, list[tuple[Output, dict[str, Any]]]]:
    """The outputs of a dcm2niix pass in `folder`, by series UID, sorted by file name."""
    found: dict[str, list[tuple[Output, dict[str, Any]]]] = {}
    for image in sorted(folder.glob("*.nii")):
        match = _STEM.match(image.stem)
        sidecar_path = image.with_suffix(".json")
        if match is None:
            continue
        sidecar: dict[str, Any] = {}
        # dcm2niix writes no sidecar for some derived extras (Philips' _ADC)
        if sidecar_path.is_file():
            try:
                sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
        uid, rest = match["uid"], match["rest"]
        leading = re.match(r"\d+", rest)
        series = str(int(number(sidecar.get("SeriesNumber")))) if sidecar else ""
        series = series or (leading[0] if leading else "0")
        postfix = rest[len(series) :].lstrip("_") if rest.startswith(series) else rest
        bval = sidecar_path.with_suffix(".bval")
        output = Output(
            file=image.stem,
            postfix=postfix,
            series_number=int(series),
            image_type=words(sidecar.get("ImageType")),
            echo_number=int(number(sidecar.get("EchoNumber"))),
            echo_time=number(sidecar.get("EchoTime")),
            orientation=tuple(
                round(number(v), 4) for v in sidecar.get("ImageOrientationPatientDICOM") or ()
            ),
            shape=nifti_shape(image),
            bvalues=tuple(number(b) for b in bval.read_text().split()) if bval.is_file() else (),
            acquired=str(sidecar.get("AcquisitionTime") or "").replace(":", ""),
            bidsguess=words(sidecar.get("BidsGuess")),
        )
        found.setdefault(uid, []).append((output, sidecar))
    return found


def nifti_shape(path: Path) -> tuple[int, ...]:
    """The image dimensions from a NIfTI-1 or -2 header (the first 548 bytes are enough)."""
    with path.open("rb") as fh:
        head = fh.read(548)
    for endian in ("<", ">"):
        (size,) = struct.unpack(f"{endian}i", head[:4])
        if size == 348:
            dim = struct.unpack(f"{endian}8h", head[40:56])
            return tuple(int(d) for d in dim[1 : dim[0] + 1])
        if size == 540:
            dim = struct.unpack(f"{endian}8q", head[16:80])
            return tuple(int(d) for d in dim[1 : dim[0] + 1])
    return ()


# -- outside bidsapp: heudiconv's custom_seqinfo hook -----------------------------------------


def _read_full(path: str) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
        return None


def custom_seqinfo(wrapper: Any, series_files: list[str]) -> tuple[tuple[str, str], ...]:
    """heudiconv's hook: the summary as sorted (key, JSON) pairs, which heudiconv can hash.

    Inside bidsapp the summaries come from staging and one exam-wide dcm2niix pass
    (BIDSAPP_HEADERS), so this hook does nothing there; a plain heudiconv run reads the series'
    files and converts them once with dcm2niix into a temporary folder.
    """
    if os.environ.get(HEADERS_ENV):
        return ()
    records = [record(ds) for f in series_files if (ds := _read_full(f)) is not None]
    if not records:
        return ()
    with tempfile.TemporaryDirectory(prefix="bidsapp-series-") as tmp:
        src = Path(tmp, "in")
        src.mkdir()
        for k, f in enumerate(series_files):
            os.symlink(os.path.abspath(f), src / f"{k:06d}.dcm")
        outputs = convert_folder(src, Path(tmp, "out"))
    summary = summarize(records, outputs.get(records[0].series_uid, []))
    return tuple(sorted((k, json.dumps(v)) for k, v in summary.to_json().items()))
