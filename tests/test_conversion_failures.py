"""One bad series never sinks a subject: what heudiconv cannot convert, dcm2niix does alone.

heudiconv refuses any sidecar in which the word "Date" appears (its `tuneup_bids_json_files`
raises "There must be no dates in .json sidecar"), and dcm2niix copies the series description
into the sidecar: a series described "T2 Date check" stops heudiconv's whole run. dcm2niix
converts it without complaint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bidsapp_sandbox.exams import Series, write_session

from tests.conftest import published_files, run_bidsapp

S = "sub-01"


def status(output: Path) -> str:
    argv = [sys.executable, "-m", "bidsapp.cli", "status", str(output)]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


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
    gate = json.loads((output / f"derivatives/bidsapp/{S}/.log/gate.json").read_text())
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


def _one_volume_bold_exam(root: Path) -> Path:
    """A T1w and a BOLD run stopped after one volume, named the ReproIn way: reproin names the
    3D image `bold`, which the validator refuses (BOLD_NOT_4D)."""
    series = [
        Series("anat-T1w", "siemens_mprage"),
        Series("func-bold_task-rest", "siemens_bold", stacks=((),)),
    ]
    write_session(root / "source" / "01", series=series, vendor="siemens")
    return root / "source"


def test_a_series_failing_validation_is_set_aside_and_the_rest_published(
    tmp_path: Path,
) -> None:
    source, output = _one_volume_bold_exam(tmp_path), tmp_path / "out"
    result = run_bidsapp(
        source, output, "participant", "--heuristic", "reproin", work=tmp_path / "work"
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert warnings == [
        warnings[0].split(" WARNING ")[0] + " WARNING sub-01 1 series set aside, not published: "
        "2-func-bold_task-rest (BOLD_NOT_4D) fail BIDS validation (see gate.json)"
    ]
    data = [f for f in published_files(output) if f.startswith(f"{S}/")]
    assert data == [f"{S}/anat/{S}_T1w.json", f"{S}/anat/{S}_T1w.nii.gz", f"{S}/{S}_scans.tsv"]
    assert "func/" not in (output / S / f"{S}_scans.tsv").read_text()
    gate = json.loads((output / f"derivatives/bidsapp/{S}/.log/gate.json").read_text())
    assert gate["passed"] is True and gate["validator"]["errors"] == 0
    assert gate["set_aside"] == [
        {
            "series_id": "2-func-bold_task-rest",
            "files": [f"{S}/func/{S}_task-rest_bold.json", f"{S}/func/{S}_task-rest_bold.nii.gz"],
            "codes": ["BOLD_NOT_4D"],
        }
    ]
    [row] = [r for r in gate["series"] if r["series_id"] == "2-func-bold_task-rest"]
    assert (
        row["outputs"] == [] and row["reason"] == "set aside: fails BIDS validation (BOLD_NOT_4D)"
    )
    assert "\tpublished\t0\t1 series set aside (validation)" in status(output)
    # a rerun with nothing to do still says so
    again = run_bidsapp(
        source, output, "participant", "--heuristic", "reproin", work=tmp_path / "work"
    )
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert "\t0\t1 series set aside (validation)" in status(output)


def test_strict_fails_the_subject_when_a_series_fails_validation(tmp_path: Path) -> None:
    source, output = _one_volume_bold_exam(tmp_path), tmp_path / "out"
    result = run_bidsapp(
        source, output, "participant", "--heuristic", "reproin", "--strict", work=tmp_path / "work"
    )
    assert result.returncode == 16, result.stderr
    assert "failed its gate: validation; nothing was published" in result.stderr
    assert not [f for f in published_files(output) if f.startswith(f"{S}/")]


def _tree(root: Path) -> list[dict[str, object]]:
    """A subject with a GRE field map set and the two runs it corrects (sidecars only)."""
    sub = root / S
    for stem, fields in (
        ("fmap/sub-01_magnitude1", {"B0FieldIdentifier": "phasediff1"}),
        ("fmap/sub-01_phasediff", {"B0FieldIdentifier": "phasediff1"}),
        ("func/sub-01_task-a_bold", {"B0FieldSource": "phasediff1"}),
        ("func/sub-01_task-b_bold", {"B0FieldSource": "phasediff1"}),
    ):
        targets = [f"bids::{S}/func/sub-01_task-{t}_bold.nii.gz" for t in "ab"]
        if stem.startswith("fmap"):
            fields = {**fields, "IntendedFor": targets}
        (sub / stem).parent.mkdir(parents=True, exist_ok=True)
        (sub / f"{stem}.json").write_text(json.dumps(fields))
        (sub / f"{stem}.nii.gz").write_bytes(b"")
    rows = "filename\tacq_time\n" + "".join(
        f"{s}.nii.gz\tn/a\n" for s in ("func/sub-01_task-a_bold", "func/sub-01_task-b_bold")
    )
    (sub / f"{S}_scans.tsv").write_text(rows)
    return [
        {"series_id": "1", "outputs": [f"{S}/fmap/sub-01_magnitude1"]},
        {"series_id": "2", "outputs": [f"{S}/fmap/sub-01_phasediff"]},
        {"series_id": "3", "outputs": [f"{S}/func/sub-01_task-a_bold"]},
        {"series_id": "4", "outputs": [f"{S}/func/sub-01_task-b_bold"]},
    ]


def test_setting_a_series_aside_leaves_no_link_to_it(tmp_path: Path) -> None:
    from bidsapp.pipeline.setaside import owners, set_aside

    series = _tree(tmp_path)
    errors = [("BOLD_NOT_4D", f"/{S}/func/sub-01_task-a_bold.nii.gz"), ("X", "/README")]
    against, orphans = owners(series, errors)
    assert against == {2: {"BOLD_NOT_4D"}} and orphans == [("X", "/README")]
    set_aside(tmp_path, "01", series, against)
    magnitude = json.loads((tmp_path / S / "fmap/sub-01_magnitude1.json").read_text())
    assert magnitude["IntendedFor"] == [f"bids::{S}/func/sub-01_task-b_bold.nii.gz"]
    scans = (tmp_path / S / f"{S}_scans.tsv").read_text()
    assert "task-a" not in scans and "task-b" in scans
    # a field map that lost its phase difference estimates nothing: every link to it goes
    set_aside(tmp_path, "01", series, {1: {"SOME_ERROR"}})
    for stem in ("fmap/sub-01_magnitude1", "func/sub-01_task-b_bold"):
        sidecar = json.loads((tmp_path / S / f"{stem}.json").read_text())
        assert {"B0FieldIdentifier", "B0FieldSource", "IntendedFor"}.isdisjoint(sidecar), stem
    assert not (tmp_path / S / "fmap/sub-01_phasediff.json").exists()
