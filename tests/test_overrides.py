"""Overrides files: what they accept, and one clear line (exit 64) for each kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidsapp.errors import UsageError
from bidsapp.heuristic.overrides import dump, load
from bidsapp.heuristic.plan import Override
from tests.conftest import MakeExam, RunCli, error_lines


def write(tmp_path: Path, text: str, name: str = "overrides.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_and_json_give_the_same_overrides(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        '[[series]]\nnumber = 25\nsidecar = { BackgroundSuppression = false, TaskName = "x" }\n'
        '[[series]]\ndescription = "*scout*"\nskip = true\n'
        '[[series]]\nnumber = 7\nbids = "func/task-motor_run-1_bold"\n'
        '[[series]]\nnumber = 30\naslcontext = ["control", "label"]\n',
    )
    parsed = load(toml)
    assert parsed == (
        Override(25, "", "", "", (("BackgroundSuppression", False), ("TaskName", "x"))),
        Override(None, "*scout*", "by request"),
        Override(7, "", "", "func/task-motor_run-1_bold"),
        Override(30, aslcontext=("control", "label")),
    )
    dump(parsed, tmp_path / "normalized.json")
    assert load(tmp_path / "normalized.json") == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[series]]\nnumber = 3\nrename = 'x'\n", "series entry 1: unknown key(s) rename"),
        ("[[series]]\nskip = true\n", "give a series 'number' or a 'description' pattern"),
        ("[[series]]\nnumber = '3'\n", "'number' must be a series number"),
        (
            "[[series]]\nnumber = 3\nbids = 'anat/T1'\n",
            "suffix 'T1' is not one of Chimap, FLAIR",
        ),
        ("[[series]]\nnumber = 3\nbids = 'beh/task-x_beh'\n", "datatype 'beh' is not one of"),
        ("[[series]]\nnumber = 3\nbids = 'sub-01_T1w'\n", "'bids' must look like"),
        ("[[series]]\nnumber = 3\nbids = 'anat/foo-x_T1w'\n", "entity 'foo' is not one of"),
        ("[[series]]\nnumber = 3\nskip = 'x'\nbids = 'anat/T1w'\n", "exclude each other"),
        ("[[series]]\nnumber = 3\nsidecar = { IntendedFor = [] }\n", "IntendedFor cannot be set"),
        ("[[series]]\nnumber = 3\naslcontext = ['tag']\n", "'aslcontext' must be a list of"),
        ("[series]\nnumber = 3\n", "'series' must be a list of tables"),
        ("[other]\n", "expected only a 'series' list, found other"),
        ("[[series]\n", "is not valid"),
    ],
)
def test_mistakes_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        load(write(tmp_path, text))
    line = info.value.one_line()
    assert message in line and "\n" not in line


def test_a_bad_overrides_file_stops_the_run_with_exit_64_before_any_work(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("01")
    bad = write(tmp_path, json.dumps({"series": [{"number": 2, "bids": "anat/T1"}]}), "o.json")
    result = bidsapp(tmp_path / "source", tmp_path / "out", "participant", "--overrides", bad)
    assert result.returncode == 64
    [line] = error_lines(result.stderr)
    assert "o.json: series entry 1: suffix 'T1' is not one of" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "sub-01").exists()


@pytest.mark.parametrize("name", ["anat/angio", "anat/acq-tof_run-1_angio", "anat/PDT2"])
def test_any_suffix_the_bids_schema_allows_is_accepted(tmp_path: Path, name: str) -> None:
    # the suffixes and entities come from the BIDS schema, not from a list kept here
    path = tmp_path / "o.toml"
    path.write_text(f"[[series]]\nnumber = 3\nbids = '{name}'\n")
    [override] = load(path)
    assert override.bids == name
