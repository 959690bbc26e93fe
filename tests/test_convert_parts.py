"""A large unit is converted by parallel heudiconv runs: the result must be the one run's.

heudiconv reads every header of its files in one Python process and converts one series at a
time; from SPLIT_FROM (files plus a cost per series) on, bidsapp gives each core a run over
part of the series. The names come from the session's plan whoever converts, so splitting must
change no byte: same files, same images and sidecars, one scans.tsv, and a series heudiconv
fails on still converted by dcm2niix alone. The threshold is lowered here so a small exam splits.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
from bidsapp_sandbox.exams import EXAMS, Series, write_session

from bidsapp.heuristic.loader import load_heuristic
from bidsapp.pipeline import convert as convert_module
from bidsapp.pipeline.stage import stage
from bidsapp.pipeline.subjects import Subject
from bidsapp.stores.local import LocalStore
from tests.conftest import SHARED_DICOM, need

pytestmark = pytest.mark.slow


def _md5(path: Path) -> str:
    """Of the content: a .nii.gz dcm2niix compressed itself carries the time in its gzip
    header, so two conversions of one series differ there and nowhere else."""
    data = path.read_bytes()
    return hashlib.md5(gzip.decompress(data) if path.name.endswith(".gz") else data).hexdigest()


def converted(
    tmp: Path,
    exam: str,
    split_from: int,
    monkeypatch: pytest.MonkeyPatch,
    source: Path | None = None,
) -> dict:
    monkeypatch.setattr(convert_module, "SPLIT_FROM", split_from)
    monkeypatch.setattr(convert_module, "MAX_PARTS", 2)
    monkeypatch.setattr(convert_module.os, "cpu_count", lambda: 2)
    work = tmp / f"work-{split_from}"
    staged = stage(LocalStore(source or tmp / "source"), exam, work)
    result = convert_module.convert(staged, Subject(exam, "01"), load_heuristic("auto"), work)
    files = {rel: _md5(result.root / rel) for rel in result.files}
    notes = {row.series_id: (tuple(row.outputs), row.note) for row in result.series}
    return {"files": files, "notes": notes, "parts": sorted(p.name for p in work.iterdir())}


def test_parallel_heudiconv_parts_convert_exactly_as_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exam = EXAMS["philips_fieldmaps"]  # multi-image series: provisional names must not clash
    # without the exam's BOLD run, its two multi-image field-map series land in different parts,
    # where numbering by each run's own series would give both the same provisional name
    fieldmaps_t1 = [s for s in exam.series if s.kind != "bold"]
    series = (*fieldmaps_t1, Series("T2 Date check", "philips_tfe"))  # heudiconv fails on it
    write_session(tmp_path / "source" / "exam", series=series, vendor=exam.vendor)

    one = converted(tmp_path, "exam", 10**9, monkeypatch)
    split = converted(tmp_path, "exam", 1, monkeypatch)

    assert split["files"] == one["files"]
    assert split["notes"] == one["notes"]
    assert any("dcm2niix alone" in note for _, note in split["notes"].values())
    assert "sub-01/sub-01_scans.tsv" in split["files"]
    # the split really happened: the plan records of two parts were joined
    assert {"plan-1-part0.json", "plan-1-part1.json"} <= set(split["parts"])


def test_each_part_checks_only_its_own_enhanced_series_with_nibabel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real Siemens XA30 enhanced multi-frame series, which nibabel reads: a part must not
    take the other part's series for unreadable ones (they would be converted twice, the
    second time by dcm2niix alone, losing heudiconv's sidecar fields)."""
    need((SHARED_DICOM / "siemens_xa30_enh").is_dir(), f"no shared XA30 exam in {SHARED_DICOM}")
    one = converted(tmp_path, "siemens_xa30_enh", 10**9, monkeypatch, SHARED_DICOM)
    split = converted(tmp_path, "siemens_xa30_enh", 1, monkeypatch, SHARED_DICOM)

    assert {"plan-1-part0.json", "plan-1-part1.json"} <= set(split["parts"])
    assert split["files"] == one["files"]
    assert split["notes"] == one["notes"]
    assert not [n for _, n in split["notes"].values() if "nibabel cannot read" in n]
