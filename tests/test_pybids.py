"""Downstream tools read bidsapp's output through pybids: a published dataset loads in
`BIDSLayout` (validation on, derivatives/bidsapp as a derivative) with the right entities for
every file. Synthetic exams with every kind of name `auto` writes (field maps of each form, DWI,
BOLD with SBRef), in two sessions for one subject; the shared cases and the demo are checked in
their own tests (test_shared_cases.py, test_pipeline_local.py)."""

from __future__ import annotations

from pathlib import Path

from bidsapp_sandbox.exams import EXAMS, write_session

from tests.conftest import assert_loads_in_pybids, run_bidsapp


def test_a_published_dataset_loads_in_pybids_with_the_entities_its_names_give(
    tmp_path: Path,
) -> None:
    source, output, work = tmp_path / "source", tmp_path / "out", tmp_path / "work"
    subject_map = tmp_path / "map.tsv"
    rows = ["source\tparticipant\tsession"]
    for n, exam in enumerate(("siemens_bold_se_epi", "philips_fieldmaps", "ge_b0map_dwi"), 1):
        write_session(source / exam, series=EXAMS[exam].series, vendor=EXAMS[exam].vendor,
                      seed=n, study_date=f"2024010{n}")  # fmt: skip
        label, session = ("01", str(n)) if n < 3 else ("02", "")
        rows.append(f"{exam}\t{label}\t{session}")
    subject_map.write_text("\n".join(rows) + "\n")
    done = run_bidsapp(source, output, "participant", "--subject-map", subject_map, work=work)
    assert done.returncode == 0, done.stderr
    assert run_bidsapp(source, output, "group", work=work).returncode == 0
    assert assert_loads_in_pybids(output) >= 30
