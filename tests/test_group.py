"""group's merge rules over a fake OUTPUT: small subject trees published with the real publish
protocol (no DICOM conversion), then `run_group` with the real validator.

Most checks read one curated dataset built once per module (`curated`): a person has written
dataset_description.json, participants.tsv, a sessions file, .bidsignore, README.md and CHANGES,
and group ran twice over it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from loguru import logger

from bidsapp.errors import JobsUnfinished, NothingPublished, ValidationFailed
from bidsapp.pipeline.group import BIDSIGNORE_LINES, run_group
from bidsapp.pipeline.publish import SHARED_FOLDERS, Target, publish, published_manifest
from bidsapp.pipeline.status import StatusRecord
from bidsapp.settings import Settings
from bidsapp.stores.local import LocalStore
from bidsapp.tools import which
from tests.conftest import need

RUN_ID = "20240101T000000abcdef"

# what the curator of the `curated` dataset wrote before group first ran
DESCRIPTION = {
    "Name": "Memory clinic MRI",
    "Authors": ["A. Curator", "B. Curator"],
    "License": "CC0",
    "GeneratedBy": [
        {"Name": "dcm-curator", "Version": "2.1"},
        {"Name": "bidsapp", "Version": "0.0.1"},  # a stale entry from an older bidsapp
    ],
}
PARTICIPANTS = (
    "participant_id\tgroup\tage\n"
    "sub-01\tpatient\tn/a\n"  # age left for bidsapp to fill
    "sub-02\tcontrol\t31\n"  # the curator's age wins over the scanner's
    "sub-05\tcontrol\t40\n"  # never published: set aside, not lost
)
ADDED_ROW = "sub-06\tpatient\t66\n"  # a second unpublished row, added between the two runs
SESSIONS = "session_id\tscanner_notes\nses-1\tcoil-swap\nses-3\tmoved-to-site-b\n"
USER_IGNORES = ("notes/", "*.xlsx")
EDITED_README = "# Memory clinic MRI\n\nWritten by a person.\n"
EDITED_CHANGES = "1.0.1 2024-03-01\n  - Curated by hand.\n"


@pytest.fixture(autouse=True, scope="module")
def _validator() -> None:
    need(which("bids-validator-deno") is not None, "bids-validator-deno is not installed")


def _nifti(path: Path, shape: tuple[int, ...], *, empty: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if empty:
        path.write_bytes(b"")
        return
    img = nib.Nifti1Image(np.zeros(shape, dtype=np.int16), np.eye(4))
    img.header.set_zooms((1.0, 1.0, 1.0, 2.0)[: len(shape)])
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def _publish(
    out: Path,
    tmp: Path,
    label: str,
    session: str = "",
    *,
    gate: dict[str, Any] | None = None,
    demographics: dict[str, str] | None = None,
    empty_nifti: bool = False,
) -> Target:
    """Publish a small valid-looking subject (T1w + rest BOLD) and its derivatives."""
    target = Target(label, session)
    stem = f"sub-{label}" + (f"_ses-{session}" if session else "")
    data, deriv = tmp / f"local-{target.tag}" / "data", tmp / f"local-{target.tag}" / "deriv"
    _nifti(data / "anat" / f"{stem}_T1w.nii.gz", (4, 4, 4), empty=empty_nifti)
    (data / "anat" / f"{stem}_T1w.json").write_text(json.dumps({"Manufacturer": "Fake"}) + "\n")
    _nifti(data / "func" / f"{stem}_task-rest_bold.nii.gz", (4, 4, 4, 3))
    (data / "func" / f"{stem}_task-rest_bold.json").write_text(
        json.dumps({"TaskName": "rest", "RepetitionTime": 2.0}) + "\n"
    )
    deriv.mkdir(parents=True)
    if gate is None:
        gate = {"subject": label, "session": session, "passed": True}
    (deriv / "gate.json").write_text(json.dumps(gate) + "\n")
    (deriv / "report.html").write_text(f"<p>report of {target.data}</p>\n")
    if demographics is not None:
        (deriv / "demographics.json").write_text(json.dumps(demographics) + "\n")
    publish(
        LocalStore(out),
        target,
        {"data": data, "deriv": deriv},
        {"run_id": RUN_ID, "label": label, "session": session},
    )
    return target


def _group(tmp: Path, out: Path, **kwargs: Any) -> int:
    settings = Settings(
        source=str(tmp), output=str(out), level="group", work_dir=tmp / "work", **kwargs
    )
    return run_group(settings)


def _tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t")
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _new_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


# ---------------------------------------------------------------------------------------------
# the curated dataset


@dataclass(frozen=True)
class Curated:
    out: Path
    targets: list[Target]
    codes: list[int]
    created_readme: str
    created_changes: str


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> Curated:
    tmp = tmp_path_factory.mktemp("group")
    out = _new_output(tmp)
    targets = [
        _publish(out, tmp, "01", demographics={"age": "054Y", "sex": "F"}),
        # a gate.json that does not name its subject: the index still must
        _publish(out, tmp, "02", gate={}, demographics={"age": "030Y", "sex": "M"}),
        _publish(out, tmp, "03", "1", demographics={"age": "061Y", "sex": "F"}),
        _publish(out, tmp, "03", "2", demographics={"age": "061Y", "sex": "F"}),
    ]
    (out / "dataset_description.json").write_text(json.dumps(DESCRIPTION, indent=2) + "\n")
    (out / "participants.tsv").write_text(PARTICIPANTS)
    (out / "sub-03" / "sub-03_sessions.tsv").write_text(SESSIONS)
    (out / ".bidsignore").write_text("".join(f"{line}\n" for line in USER_IGNORES))
    codes = [_group(tmp, out, participant_fields=("age", "sex"))]
    created_readme = (out / "README.md").read_text()
    created_changes = (out / "CHANGES").read_text()
    # the curator edits between the runs
    (out / "README.md").write_text(EDITED_README)
    (out / "CHANGES").write_text(EDITED_CHANGES)
    with (out / "participants.tsv").open("a") as fh:
        fh.write(ADDED_ROW)
    codes.append(_group(tmp, out, participant_fields=("age", "sex")))
    return Curated(out, targets, codes, created_readme, created_changes)


def test_group_passes_validation_twice(curated: Curated) -> None:
    assert curated.codes == [0, 0]
    assert (curated.out / ".bidsapp" / "group-validation.json").is_file()


def test_group_leaves_published_subjects_intact(curated: Curated) -> None:
    store = LocalStore(curated.out)
    for target in curated.targets:
        assert published_manifest(store, target) is not None, target


def test_dataset_description_keeps_curated_keys(curated: Curated) -> None:
    data = json.loads((curated.out / "dataset_description.json").read_text())
    assert data["Name"] == DESCRIPTION["Name"]
    assert data["Authors"] == DESCRIPTION["Authors"]
    assert data["License"] == "CC0"
    assert data["BIDSVersion"]  # set, since the curator left it out
    names = [g["Name"] for g in data["GeneratedBy"]]
    assert names.count("bidsapp") == 1  # after two runs, and a stale entry replaced
    assert {"Name": "dcm-curator", "Version": "2.1"} in data["GeneratedBy"]
    ours = next(g for g in data["GeneratedBy"] if g["Name"] == "bidsapp")
    assert ours["Version"] != "0.0.1"


def test_participants_lists_exactly_the_published_subjects(curated: Curated) -> None:
    columns, rows = _tsv(curated.out / "participants.tsv")
    assert columns[0] == "participant_id"
    assert [r["participant_id"] for r in rows] == ["sub-01", "sub-02", "sub-03"]
    assert "group" in columns  # the curated column and its values
    assert [r["group"] for r in rows[:2]] == ["patient", "control"]
    assert rows[2]["group"] == "n/a"


def test_participant_fields_fill_but_never_overwrite(curated: Curated) -> None:
    columns, rows = _tsv(curated.out / "participants.tsv")
    assert {"age", "sex"} <= set(columns)
    by_id = {r["participant_id"]: r for r in rows}
    assert by_id["sub-01"]["age"] == "54"  # '054Y' from the scanner, filled in
    assert by_id["sub-01"]["sex"] == "F"
    assert by_id["sub-02"]["age"] == "31"  # the curator's value, not the scanner's 30
    assert by_id["sub-02"]["sex"] == "M"
    sidecar = json.loads((curated.out / "participants.json").read_text())
    assert {"age", "sex"} <= set(sidecar)


def test_participant_fields_for_a_subject_published_by_session(curated: Curated) -> None:
    """A session job writes derivatives/bidsapp/sub-03/ses-1/.log/demographics.json."""
    _, rows = _tsv(curated.out / "participants.tsv")
    by_id = {r["participant_id"]: r for r in rows}
    assert by_id["sub-03"]["age"] == "61"
    assert by_id["sub-03"]["sex"] == "F"


def test_unpublished_participant_rows_are_set_aside_not_lost(curated: Curated) -> None:
    """sub-05 was set aside by the first run, sub-06 by the second: both are kept."""
    aside = curated.out / ".bidsapp" / "unpublished" / "participants.tsv"
    _, rows = _tsv(aside)
    by_id = {r["participant_id"]: r for r in rows}
    assert by_id.get("sub-06", {}).get("age") == "66"
    assert by_id.get("sub-05", {}).get("age") == "40"
    assert by_id["sub-05"]["group"] == "control"


def test_readme_and_changes_are_created_once_then_left_alone(curated: Curated) -> None:
    assert curated.created_readme.strip()
    assert "1.0.0" in curated.created_changes
    assert (curated.out / "README.md").read_text() == EDITED_README
    assert (curated.out / "CHANGES").read_text() == EDITED_CHANGES
    assert not (curated.out / "README").exists()


def test_bidsignore_keeps_the_users_lines(curated: Curated) -> None:
    lines = (curated.out / ".bidsignore").read_text().splitlines()
    assert lines[: len(USER_IGNORES)] == list(USER_IGNORES)
    for line in BIDSIGNORE_LINES:
        assert lines.count(line) == 1  # added once, even after two runs


def test_sessions_file_lists_both_sessions_and_keeps_curated_column(curated: Curated) -> None:
    columns, rows = _tsv(curated.out / "sub-03" / "sub-03_sessions.tsv")
    assert columns == ["session_id", "scanner_notes"]
    published = {r["session_id"]: r for r in rows if r["session_id"] in ("ses-1", "ses-2")}
    assert sorted(published) == ["ses-1", "ses-2"]
    assert published["ses-1"]["scanner_notes"] == "coil-swap"
    assert published["ses-2"]["scanner_notes"] == "n/a"
    assert not (curated.out / "sub-01" / "sub-01_sessions.tsv").exists()


def test_curated_row_of_an_unpublished_session_is_not_lost(curated: Curated) -> None:
    """The curator's note on ses-3 (not published) must survive somewhere in OUTPUT."""
    kept = [
        p
        for p in curated.out.rglob("*.tsv")
        if "moved-to-site-b" in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert kept, "the curated sessions.tsv row for ses-3 was dropped"


def test_task_sidecar(curated: Curated) -> None:
    data = json.loads((curated.out / "task-rest_bold.json").read_text())
    assert data["TaskName"] == "rest"


def test_derivative_description(curated: Curated) -> None:
    data = json.loads(
        (curated.out / "derivatives" / "bidsapp" / "dataset_description.json").read_text()
    )
    assert data["DatasetType"] == "derivative"
    assert [g["Name"] for g in data["GeneratedBy"]] == ["bidsapp"]


def _index_links(out: Path) -> dict[str, str]:
    html = (out / "derivatives" / "bidsapp" / ".log" / "index.html").read_text()
    return {
        unescape(href): unescape(text)
        for href, text in re.findall(r'<a href="([^"]*)">([^<]*)</a>', html)
    }


def test_index_links_every_published_report(curated: Curated) -> None:
    links = _index_links(curated.out)
    index_dir = curated.out / "derivatives" / "bidsapp" / ".log"
    for target in curated.targets:
        href = f"../{target.data}/.log/report.html"
        assert href in links, target
        assert (index_dir / href).is_file()
    assert links["../sub-01/.log/report.html"] == "sub-01"
    assert links["../sub-03/ses-1/.log/report.html"] == "sub-03 ses-1"
    assert links["../sub-03/ses-2/.log/report.html"] == "sub-03 ses-2"


def test_index_names_a_subject_whose_gate_report_does_not(curated: Curated) -> None:
    """The index row's label comes from the published target, not only from gate.json."""
    assert _index_links(curated.out)["../sub-02/.log/report.html"] == "sub-02"


# ---------------------------------------------------------------------------------------------
# datasets of their own


def test_folder_without_manifest_is_not_a_participant(tmp_path: Path) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    _nifti(out / "sub-99" / "anat" / "sub-99_T1w.nii.gz", (4, 4, 4))  # made by hand
    (out / "README").write_text("Curated README without an extension.\n")
    # the validator may well object to a subject missing from participants.tsv: not the point
    with contextlib.suppress(ValidationFailed):
        _group(tmp_path, out)
    _, rows = _tsv(out / "participants.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-01"]
    assert (out / "README").read_text() == "Curated README without an extension.\n"
    assert not (out / "README.md").exists()


def test_participants_tsv_saved_with_a_bom_keeps_its_rows(tmp_path: Path) -> None:
    """Spreadsheet programs save TSVs with a UTF-8 byte order mark."""
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    curated = "participant_id\tgroup\nsub-01\tpatient\nsub-05\tcontrol\n"
    (out / "participants.tsv").write_bytes(b"\xef\xbb\xbf" + curated.encode())
    with contextlib.suppress(ValidationFailed):  # what is checked is the merge
        _group(tmp_path, out)
    text = (out / "participants.tsv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "participant_id\tgroup"  # one header, no BOM inside it
    _, rows = _tsv(out / "participants.tsv")
    assert rows == [{"participant_id": "sub-01", "group": "patient"}]
    _, aside = _tsv(out / ".bidsapp" / "unpublished" / "participants.tsv")
    assert [r["participant_id"] for r in aside] == ["sub-05"]


def test_failed_validation_raises_and_keeps_the_report(tmp_path: Path) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01", empty_nifti=True)  # a zero-byte T1w
    with pytest.raises(ValidationFailed) as info:
        _group(tmp_path, out)
    assert info.value.exit_code == 16
    report = out / ".bidsapp" / "group-validation.json"
    assert report.is_file()
    assert json.loads(report.read_text())["issues"]


def test_init_creates_the_shared_folders_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"  # not there yet: group --init creates it
    assert _group(tmp_path, out, init_only=True) == 0
    found = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert all((out / p).is_dir() for p in found), "group --init wrote files"
    expected = {
        ".bidsapp/incoming",
        ".bidsapp/replaced",
        ".bidsapp/status",
        ".bidsapp/locks",
        "derivatives/bidsapp",
    }
    assert expected <= found
    parents = {p.rsplit("/", 1)[0] for p in SHARED_FOLDERS if "/" in p}
    assert found <= set(SHARED_FOLDERS) | parents
    # running it again changes nothing
    assert _group(tmp_path, out, init_only=True) == 0
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} == found


@pytest.mark.parametrize(
    ("curated", "problem"),
    [
        (b"participant_id,group\nsub-01,patient\nsub-05,control\n", "comma-separated"),
        (
            b"\xef\xbb\xbfParticipant_ID\tgroup\r\nsub-01\tpatient\r\nsub-05\tcontrol\r\n",
            "'Participant_ID'",
        ),
        (b"participant_id\tgroup\nsub-01\tpatient\nsub-01\tcontrol\n", "sub-01 twice"),
        (b"participant_id\tgroup\nsub-01\tpatient\textra\n", "3 cells for 2 columns"),
        (b"participant_id\tgroup\nsub-01\tpaciente \xe9\n", "not UTF-8"),
    ],
    ids=["csv", "header-case", "duplicate", "ragged", "latin-1"],
)
def test_d2_a_participants_file_that_cannot_be_merged_is_kept_aside_and_left_alone(
    tmp_path: Path, curated: bytes, problem: str
) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    (out / "participants.tsv").write_bytes(curated)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        with contextlib.suppress(ValidationFailed):  # what is checked is the merge
            _group(tmp_path, out)
    finally:
        logger.remove(sink)
    assert (out / "participants.tsv").read_bytes() == curated, "never rewritten lossy"
    assert (out / ".bidsapp/invalid/participants.tsv").read_bytes() == curated
    named = [w for w in warnings if "participants.tsv" in w]
    assert len(named) == 1 and problem in named[0], warnings


def test_d2_crlf_and_a_repeated_identical_row_merge_exactly(tmp_path: Path) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    curated = "participant_id\tgroup\r\nsub-01\tpatient\r\nsub-01\tpatient\r\n"
    (out / "participants.tsv").write_bytes(curated.encode())
    with contextlib.suppress(ValidationFailed):
        _group(tmp_path, out)
    _, rows = _tsv(out / "participants.tsv")
    assert rows == [{"participant_id": "sub-01", "group": "patient"}]
    assert not (out / ".bidsapp/invalid/participants.tsv").exists()


# ---------------------------------------------------------------------------------------------
# what group says about the jobs, and the dataset's own fields


def test_nothing_published_writes_nothing_and_says_so(tmp_path: Path) -> None:
    """A batch whose every task failed: group must not 'succeed' on zero subjects, nor create
    a dataset (not even OUTPUT itself)."""
    missing = tmp_path / "never-made"
    with pytest.raises(NothingPublished) as gone:
        _group(tmp_path, missing)
    assert gone.value.exit_code == 18 and "nothing is published" in str(gone.value)
    assert not missing.exists()

    out = _new_output(tmp_path)
    (out / ".bidsapp" / "status").mkdir(parents=True)
    failed = StatusRecord("01", "", RUN_ID)
    failed.exit_code, failed.error_class = 66, "LocationNotFound"
    failed.save(LocalStore(out), "failed")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(NothingPublished) as none:
        _group(tmp_path, out)
    assert "no subject is published" in str(none.value)
    assert "sub-01 failed (exit 66)" in str(none.value)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_failed_and_never_run_jobs_make_group_fail_after_writing(tmp_path: Path) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    record = StatusRecord("02", "", RUN_ID)
    record.exit_code, record.error_class = 65, "BadInputData"
    record.save(LocalStore(out), "failed")
    batch = (("01", ""), ("02", ""), ("03", ""))  # a SLURM batch's task list
    with pytest.raises(JobsUnfinished) as info:
        _group(tmp_path, out, expected=batch, dataset_fields={"Authors": ["A. B."]})
    message = info.value.one_line()
    assert info.value.exit_code == 65  # the first failed job's own code
    assert "2 jobs not published: sub-02 failed (exit 65), sub-03 never ran" in message
    assert "bidsapp status" in message
    # the published subject still gets its dataset files
    _, rows = _tsv(out / "participants.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-01"]
    assert (out / "dataset_description.json").is_file()

    # a batch of the published subject alone: nothing to say, exit 0
    assert _group(tmp_path, out, expected=(("01", ""),)) == 0
    # without a task list, every job that left a record counts: sub-02's failure
    with pytest.raises(JobsUnfinished):
        _group(tmp_path, out)


def test_name_authors_and_license_the_first_time_then_the_curator_wins(tmp_path: Path) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    _group(tmp_path, out)  # no fields given: a placeholder Name, and the validator warns
    first = json.loads((out / "dataset_description.json").read_text())
    assert first["Name"] == "bidsapp dataset" and "Authors" not in first
    report = json.loads((out / ".bidsapp" / "group-validation.json").read_text())
    codes = {i["code"] for i in report["issues"]["issues"]}
    assert {"NO_AUTHORS"} <= codes or {"TOO_FEW_AUTHORS"} <= codes, codes

    fields = {"Name": "Memory clinic", "Authors": ["A. One", "B. Two"], "License": "CC0"}
    assert _group(tmp_path, out, dataset_fields=fields) == 0
    data = json.loads((out / "dataset_description.json").read_text())
    assert {k: data[k] for k in fields} == fields  # the placeholder Name gave way
    report = json.loads((out / ".bidsapp" / "group-validation.json").read_text())
    codes = {i["code"] for i in report["issues"]["issues"]}
    assert not codes & {"NO_AUTHORS", "TOO_FEW_AUTHORS"}, codes

    data["Name"], data["Authors"] = "Curated name", ["C. Curator"]
    (out / "dataset_description.json").write_text(json.dumps(data))
    _group(tmp_path, out, dataset_fields={"Name": "Flag", "Authors": ["Flag"], "Funding": ["F"]})
    kept = json.loads((out / "dataset_description.json").read_text())
    assert kept["Name"] == "Curated name" and kept["Authors"] == ["C. Curator"]
    assert kept["Funding"] == ["F"]  # a field nobody set yet is filled


def test_index_lists_the_datasets_validator_findings_grouped(tmp_path: Path) -> None:
    out = _new_output(tmp_path)
    _publish(out, tmp_path, "01")
    _publish(out, tmp_path, "02")
    _group(tmp_path, out)
    report = json.loads((out / ".bidsapp" / "group-validation.json").read_text())
    warnings = [i for i in report["issues"]["issues"] if i["severity"] == "warning"]
    kinds = {i["code"] + (f" ({i['subCode']})" if i.get("subCode") else "") for i in warnings}
    assert len(warnings) > len(kinds), "the fake dataset is expected to repeat warnings"
    rows = {(kind, "/") for kind in kinds}
    for name, nested in report.get("derivativesSummary", {}).items():
        for i in nested["issues"]["issues"]:
            rows.add((i["code"] + (f" ({i['subCode']})" if i.get("subCode") else ""), name))
    page = unescape((out / "derivatives/bidsapp/.log/index.html").read_text())
    section = page.split("Dataset validation", 1)[1]
    for kind in kinds:  # grouped: one row per code and dataset, however many files
        assert section.count(f"<code>{kind}</code>") == sum(k == kind for k, _ in rows), kind
    assert section.count("<tr>") == len(rows) + 1  # the rows, and the header
