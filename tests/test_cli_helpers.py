"""The helper commands `subjects` and `status`, and --version/--help, through the real CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import unicodedata
from pathlib import Path

from bidsapp import __version__
from bidsapp.errors import EXIT_CODES
from bidsapp.pipeline.publish import Target, publish
from bidsapp.pipeline.status import StatusRecord
from bidsapp.stores.local import LocalStore
from tests.conftest import RunCli

NAMES = ("Maria Souza", "João Lima")
RUN_ID = "20240101T000000abcdef"


def _normalise(text: str) -> str:
    """Case- and accent-insensitive text, as the PHI matching rules compare."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _no_names(proc: subprocess.CompletedProcess[str], names: tuple[str, ...]) -> None:
    """Neither the folder names nor any part of them appear in stdout or stderr."""
    for stream in (proc.stdout, proc.stderr):
        plain = _normalise(stream)
        for name in names:
            assert name not in stream
            for token in _normalise(name).split():
                assert not re.search(rf"\b{re.escape(token)}\b", plain), (token, stream)


def _map_rows(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "source\tparticipant\tsession"
    return [line.split("\t") for line in lines[1:] if line]


def test_subjects_writes_and_extends_the_map(bidsapp: RunCli, tmp_path: Path) -> None:
    source = tmp_path / "source"
    for name in NAMES:
        (source / name).mkdir(parents=True)
    (source / "notes.txt").write_text("not an exam\n")
    (source / ".hidden").mkdir()
    subject_map = tmp_path / "map.tsv"

    proc = bidsapp("subjects", source, "--subject-map", subject_map)
    assert proc.returncode == 0, proc.stderr
    rows = _map_rows(subject_map)
    assert rows == [["João Lima", "01", ""], ["Maria Souza", "02", ""]]  # sorted order
    assert "sub-01" in proc.stdout and "sub-02" in proc.stdout
    _no_names(proc, NAMES)
    first = subject_map.read_text(encoding="utf-8")

    # a folder added later: existing rows untouched, the newcomer gets the next label
    (source / "Ana Costa").mkdir()
    proc = bidsapp("subjects", source, "--subject-map", subject_map)
    assert proc.returncode == 0, proc.stderr
    assert subject_map.read_text(encoding="utf-8").startswith(first)
    assert _map_rows(subject_map)[2] == ["Ana Costa", "03", ""]
    assert "sub-03" in proc.stdout
    _no_names(proc, (*NAMES, "Ana Costa"))

    # a hand-edited label: the next new folder goes after it
    text = subject_map.read_text(encoding="utf-8").replace("Ana Costa\t03", "Ana Costa\t07")
    subject_map.write_text(text, encoding="utf-8")
    (source / "Pedro Alves").mkdir()
    proc = bidsapp("subjects", source, "--subject-map", subject_map)
    assert proc.returncode == 0, proc.stderr
    rows = _map_rows(subject_map)
    assert rows[:3] == [
        ["João Lima", "01", ""],
        ["Maria Souza", "02", ""],
        ["Ana Costa", "07", ""],
    ]
    assert rows[3] == ["Pedro Alves", "08", ""]
    assert len(rows) == 4
    _no_names(proc, (*NAMES, "Ana Costa", "Pedro Alves"))


def test_d1_subjects_keeps_the_map_on_an_undecodable_folder_name(
    bidsapp: RunCli, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    (source / "Maria Souza").mkdir(parents=True)
    os.mkdir(bytes(source) + b"/Jo\xe3o Lima")  # Latin-1, as an old share writes it
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\nAna Costa\t01\t\n", encoding="utf-8")
    before = subject_map.read_bytes()

    proc = bidsapp("subjects", source, "--subject-map", subject_map)

    assert proc.returncode == 64, proc.stderr
    assert "Traceback" not in proc.stderr and "not valid UTF-8" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "ERROR" in line]) == 1
    assert subject_map.read_bytes() == before
    assert list(tmp_path.glob(".map.tsv*")) == []
    _no_names(proc, ("Maria Souza", "Ana Costa", "Lima"))


def test_d1_subjects_writes_the_map_0600(bidsapp: RunCli, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "Maria Souza").mkdir(parents=True)
    subject_map = tmp_path / "map.tsv"
    assert bidsapp("subjects", source, "--subject-map", subject_map).returncode == 0
    assert subject_map.stat().st_mode & 0o777 == 0o600
    subject_map.chmod(0o644)  # written by an older version, or by hand
    (source / "Ana Costa").mkdir()
    assert bidsapp("subjects", source, "--subject-map", subject_map).returncode == 0
    assert subject_map.stat().st_mode & 0o777 == 0o600
    assert len(_map_rows(subject_map)) == 2


def _published(out: Path, tmp: Path, label: str) -> None:
    data, deriv = tmp / f"local-{label}" / "data", tmp / f"local-{label}" / "deriv"
    (data / "anat").mkdir(parents=True)
    (data / "anat" / f"sub-{label}_T1w.nii.gz").write_bytes(b"fake image " + label.encode())
    deriv.mkdir(parents=True)
    (deriv / "gate.json").write_text("{}\n")
    publish(LocalStore(out), Target(label), {"data": data, "deriv": deriv}, {"run_id": RUN_ID})


def test_status(bidsapp: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    store = LocalStore(out)
    _published(out, tmp_path, "01")
    _published(out, tmp_path, "02")
    (out / Target("01").manifest).unlink()  # said published, but the manifest is gone
    StatusRecord("01", "", RUN_ID).save(store, "published")
    StatusRecord("02", "", RUN_ID).save(store, "published")
    StatusRecord("03", "", RUN_ID, exit_code=65, error_class="BadInputData", retryable=False).save(
        store, "failed"
    )

    proc = bidsapp("status", out)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("\t")[0]: line.split("\t") for line in proc.stdout.splitlines() if line}
    assert lines["sub-01"][2] == "incomplete"
    assert lines["sub-02"][2] == "published"
    assert lines["sub-03"][2:] == ["failed", "65", "BadInputData"]

    proc = bidsapp("status", out, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["label"]: r for r in json.loads(proc.stdout)}
    assert sorted(rows) == ["01", "02", "03"]
    assert rows["01"]["state"] == "incomplete"
    assert rows["01"]["published"] is False
    assert rows["02"]["state"] == "published"
    assert rows["02"]["published"] is True
    assert rows["03"]["state"] == "failed"
    assert rows["03"]["exit_code"] == 65
    assert rows["03"]["error_class"] == "BadInputData"
    assert rows["03"]["published"] is False


def test_version(bidsapp: RunCli) -> None:
    proc = bidsapp("--version")
    assert proc.returncode == 0, proc.stderr
    assert __version__ in proc.stdout


def test_help_lists_exit_codes(bidsapp: RunCli) -> None:
    proc = bidsapp("--help")
    assert proc.returncode == 0, proc.stderr
    assert "exit codes" in proc.stdout
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s", proc.stdout, re.MULTILINE), code
