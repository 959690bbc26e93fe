"""`bidsapp inspect` on a synthetic exam: PHI-free rows that match what a job publishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bidsapp_sandbox.exams import DEFAULT_SERIES, Patient, Series

from tests.conftest import MakeExam, RunCli

PATIENT = Patient(name="Quaresma^Benedita", patient_id="PX20931", birth_date="19770203")


@pytest.mark.slow
def test_inspect_matches_the_published_series_and_holds_no_phi(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("Quaresma Benedita", patient=PATIENT, series=DEFAULT_SERIES)
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\nQuaresma Benedita\t01\t\n")
    source, output = tmp_path / "source", tmp_path / "out"
    args = ("--participant-label", "01", "--subject-map", subject_map)
    table = bidsapp("inspect", source, *args)
    tsv = bidsapp("inspect", source, *args, "--format", "tsv")
    js = bidsapp("inspect", source, *args, "--format", "json")
    for result in (table, tsv, js):
        assert result.returncode == 0, result.stderr
        for secret in ("Quaresma", "Benedita", "PX20931", "19770203", "1977-02-03"):
            assert secret not in result.stdout + result.stderr
    lines = tsv.stdout.splitlines()
    assert lines[0].split("\t") == [
        "session", "series", "description", "image_type", "dims", "tr", "te", "files", "bids",
    ]  # fmt: skip
    assert [ln.split("\t")[8] for ln in lines[1:]] == [
        "skipped: localizer",
        "sub-01_T1w",
        "sub-01_task-rest_bold",
    ]
    assert "sub-01_task-rest_bold" in table.stdout and "skipped: localizer" in table.stdout

    part = bidsapp(source, output, "participant", "--subject-map", subject_map)
    assert part.returncode == 0, part.stderr
    gate = json.loads((output / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    keys = ("series_id", "description", "dims", "tr", "te", "files", "outputs", "reason")
    assert [{k: r[k] for k in keys} for r in json.loads(js.stdout)] == [
        {k: s[k] for k in keys} for s in gate["series"]
    ]


def test_inspect_needs_a_participant_label(tmp_path: Path, bidsapp: RunCli) -> None:
    result = bidsapp("inspect", tmp_path)
    assert result.returncode == 64
    assert "--participant-label" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_example_lab_heuristic_applies_its_rules(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    """heuristics/example_lab.py: its RENAME and SKIP rules on top of the default naming."""
    make_exam(
        "01",
        series=(
            Series("localizer", "localizer"),
            Series("t1_mprage_sag", "t1w"),
            Series("ep2d_nback_run1", "bold"),
            Series("ep2d_test_bold", "bold"),
        ),
    )
    result = bidsapp(
        "inspect", tmp_path / "source", "--participant-label", "01",
        "--heuristic", "example_lab", "--format", "tsv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[8] for line in result.stdout.splitlines()[1:]] == [
        "skipped: localizer",
        "sub-01_T1w",
        "sub-01_task-nback_bold",
        "skipped: skipped by overrides: test acquisition",
    ]


def test_inspect_reads_a_drive_source_with_credentials(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    """`--credentials` as on every other command: the key, not the environment, signs in."""
    from bidsapp_sandbox.emulator import Emulator

    make_exam("01", series=DEFAULT_SERIES)
    sa = "bidsapp@proj.iam.gserviceaccount.com"
    with Emulator() as emu:
        key = emu.service_account(sa, dest=tmp_path / "sa.json")
        exams = emu.folder("exams", parent=emu.my_drive("lab@example.org"), owner="lab@example.org")
        emu.upload_tree(tmp_path / "source", parent=exams, owner="lab@example.org")
        emu.share(exams, sa, role="reader")
        env = {"BIDSAPP_DRIVE_URL": emu.url, "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent"}
        args = ("inspect", f"gdrive://{exams}", "--participant-label", "01", "--format", "tsv")
        without = bidsapp(*args, env=env)
        found = bidsapp(*args, "--credentials", key, env=env)
    assert without.returncode == 77, without.stderr
    assert found.returncode == 0, found.stderr
    assert [ln.split("\t")[8] for ln in found.stdout.splitlines()[1:]] == [
        "skipped: localizer",
        "sub-01_T1w",
        "sub-01_task-rest_bold",
    ]
