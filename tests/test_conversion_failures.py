"""One bad series never sinks a subject: what heudiconv cannot convert, dcm2niix does alone.

heudiconv refuses any sidecar in which the word "Date" appears (its `tuneup_bids_json_files`
raises "There must be no dates in .json sidecar"), and dcm2niix copies the series description
into the sidecar: a series described "T2 Date check" stops heudiconv's whole run. dcm2niix
converts it without complaint.
"""

from __future__ import annotations

import json
from pathlib import Path

from bidsapp_sandbox.exams import Series, write_session

from tests.conftest import published_files, run_bidsapp

S = "sub-01"


def test_a_series_heudiconv_fails_on_is_converted_by_dcm2niix_and_the_rest_by_heudiconv(
    tmp_path: Path,
) -> None:
    series = [
        Series("t1_mprage", "siemens_mprage"),
        Series("T2 Date check", "siemens_tirm"),
    ]
    write_session(tmp_path / "source" / "01", series=series, vendor="siemens")
    output = tmp_path / "out"
    result = run_bidsapp(tmp_path / "source", output, "participant", work=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    data = [f for f in published_files(output) if f.startswith(f"{S}/")]
    assert data == [
        f"{S}/anat/{S}_FLAIR.json",
        f"{S}/anat/{S}_FLAIR.nii.gz",
        f"{S}/anat/{S}_T1w.json",
        f"{S}/anat/{S}_T1w.nii.gz",
        f"{S}/{S}_scans.tsv",
    ]
    gate = json.loads((output / f"derivatives/bidsapp/{S}/log/gate.json").read_text())
    notes = {row["series_id"]: row["note"] for row in gate["series"]}
    assert notes == {
        "1-t1_mprage": "",
        "2-T2 Date check": "heudiconv failed on it (ValueError: There must be no dates in "
        ".json sidecar): converted by dcm2niix alone",
    }
    # heudiconv converted the other series itself (its version stamp is in the sidecar)
    assert "HeudiconvVersion" in json.loads((output / S / f"anat/{S}_T1w.json").read_text())
    scans = (output / S / f"{S}_scans.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in scans] == [
        "filename",
        "anat/sub-01_FLAIR.nii.gz",
        "anat/sub-01_T1w.nii.gz",
    ]
