"""Every real DICOM session in ../shared/dicom through `participant` then `group`.

The expected outcome of each case is stated exactly. The default heuristic is still ReproIn,
which only names series whose protocols were named the ReproIn way at the scanner; the cases it
cannot name must fail their gate (65: nothing converted or heudiconv gave up; 16: invalid
names) and publish nothing. The cross-vendor heuristic issue turns them green.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from bidsapp.deid_profiles import profile
from bidsapp.phi import Identifiers, scan_tree
from tests.conftest import SHARED_DICOM, RunCli, need, published_files, shared_cases

# case → (participant exit code, files published under sub-01/, or why it fails)
EXPECTED: dict[str, tuple[int, list[str] | str]] = {
    "siemens_e11_reproin_phantom": (
        0,
        [
            "sub-01/ses-localizer/fmap/sub-01_ses-localizer_acq-3mm_phasediff.json",
            "sub-01/ses-localizer/fmap/sub-01_ses-localizer_acq-3mm_phasediff.nii.gz",
            "sub-01/ses-localizer/sub-01_ses-localizer_scans.tsv",
            "sub-01/sub-01_sessions.tsv",  # written by group
        ],
    ),
    # GE exports lack a StudyDescription (our ReproIn wrapper tolerates it) and ReproIn names.
    "ge_mr29_dwi_t1": (65, "nothing converted"),
    # No ReproIn protocol names: heudiconv converts nothing.
    "philips_r53_dti": (65, "nothing converted"),
    "siemens_b17_trio_mosaic": (65, "nothing converted"),
    # Two T1w series with one protocol name: ReproIn's `__dup-01` is not valid BIDS.
    "siemens_xa30_enh": (16, "validation"),
}
DATASET_FILES = [
    ".bidsignore",
    "CHANGES",
    "README.md",
    "dataset_description.json",
    "derivatives/bidsapp/.bidsignore",
    "derivatives/bidsapp/dataset_description.json",
    "derivatives/bidsapp/index.html",
]


def case_identifiers(case: Path) -> Identifiers:
    """The patient identifiers of a case, read from every header, plus its folder name."""
    headers = []
    seen = set()
    for f in sorted(case.rglob("*")):
        if not f.is_file():
            continue
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        values = {
            k: ds.get(k)
            for k in (
                "PatientName",
                "PatientID",
                "OtherPatientIDs",
                "PatientBirthDate",
                "AccessionNumber",
            )
        }
        key = tuple(str(v) for v in values.values())
        if key not in seen:
            seen.add(key)
            headers.append(values)
    return Identifiers.collect(headers, case.name, "01")


def test_shared_dicom_present(shared_dicom: Path) -> None:
    assert set(shared_cases()) == set(EXPECTED), "update EXPECTED for the cases in ../shared/dicom"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_case_participant_then_group(case: str, tmp_path: Path, bidsapp: RunCli) -> None:
    need(bool(shared_cases()), f"{SHARED_DICOM} (real DICOM sessions) is not present")

    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(f"source\tparticipant\tsession\n{case}\t01\t\n")
    output = tmp_path / "out"
    code, expected = EXPECTED[case]

    part = bidsapp(SHARED_DICOM, output, "participant", "--subject-map", subject_map)
    assert part.returncode == code, part.stderr[-3000:]
    assert "Traceback" not in part.stderr
    group = bidsapp(SHARED_DICOM, output, "group")
    assert group.returncode == 0, group.stderr[-3000:]

    files = published_files(output)
    data = [f for f in files if f.startswith("sub-")]
    report = json.loads((output / ".bidsapp/group-validation.json").read_text())
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
    if code == 0:
        assert isinstance(expected, list)
        assert data == expected
        derivs = [f for f in files if f.startswith("derivatives/bidsapp/sub-01/")]
        assert derivs == [
            f"derivatives/bidsapp/sub-01/{n}"
            for n in (
                "figures/sub-01_ses-localizer_acq-3mm_phasediff.png",
                "gate.json",
                "log.jsonl",
                "manifest.json",
                "report.html",
            )
        ]
        sidecars = [output / f for f in data if f.endswith(".json")]
        removed = {r.field for r in profile("basic") if r.action == "remove" and "*" not in r.field}
        for sidecar in sidecars:
            assert removed.isdisjoint(json.loads(sidecar.read_text())), sidecar.name
        assert sorted(set(files) - set(data) - set(derivs)) == sorted(
            [*DATASET_FILES, "participants.json", "participants.tsv"]
        )
    else:
        assert isinstance(expected, str)
        assert data == [] and files == sorted(DATASET_FILES)
        line = [ln for ln in part.stderr.splitlines() if " ERROR " in ln]
        assert len(line) == 1 and expected in line[0]
        assert (output / ".bidsapp/failed/sub-01/log.jsonl").is_file()
        gate = json.loads((output / ".bidsapp/failed/sub-01/gate.json").read_text())
        assert gate["failure"] == expected and gate["passed"] is False
        # Placeholder values (GE's PatientName/PatientID "dicom") identify no one: listed as
        # such, and no case fails for patient data.
        assert gate["phi"]["hits"] == []
        if case == "ge_mr29_dwi_t1":
            fields = {i["field"] for i in gate["phi"]["not_treated_as_identifiers"]}
            assert {"PatientName", "PatientID"} <= fields

    # Nothing identifying anywhere: the published tree, the bookkeeping, and the console.
    ids = case_identifiers(SHARED_DICOM / case)
    assert ids.identifiers, "every case has at least its folder name as an identifier"
    assert scan_tree(output, ids) == []
    for stream in (part.stdout, part.stderr, group.stdout, group.stderr):
        assert ids.find(stream) == []
