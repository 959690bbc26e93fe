"""Every real DICOM session in ../shared/dicom through `participant`, `group` and `inspect`.

With the default heuristic (auto) every case publishes: the exact BIDS files and the exact
skipped series with their reasons are stated here. The names were checked against what the
series are (headers read with pydicom and `dcm2niix -b o`; see the issue and the report):
- siemens_xa30_enh: series 5/6 are one MPRAGE (one AcquisitionDateTime, one geometry) saved
  without and with prescan normalisation (ImageTypeText NORM): the original is the T1w and the
  copy is skipped (published too, preprocessing would average one acquisition twice); the
  BOLD task is "fa" (dcm2niix's BidsGuess calls it an FA map); DWI PA/AP from the
  phase-encoding polarity; the PCASL series lacks BackgroundSuppression in every header, so
  it is skipped unless overrides supply it.
- siemens_b17_trio_mosaic: every series is a short BOLD run; series 9 and 11 share a name.
- ge_mr29_dwi_t1: four DWI runs that differ by acceleration (acq-), the last one also in
  phase-encoding polarity; GE's BidsGuess calls them derived tensor maps.
- philips_r53_dti: one DTI series whose isotropic trace volume dcm2niix drops.
- siemens_e11_reproin_phantom: a phase-difference series without its magnitude series: published
  as acquired, but not linked as a field map (no B0FieldIdentifier), with a note.

One participant + group + inspect run per case (module-scoped), shared by the assertions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.tag import BaseTag

from bidsapp.pipeline.gate import validate
from bidsapp.privacy.phi import Identifiers, scan_tree
from bidsapp.privacy.profiles import profile
from tests.conftest import (
    SHARED_DICOM,
    assert_loads_in_pybids,
    need,
    published_files,
    run_bidsapp,
    shared_cases,
)

S = "sub-01"
XA30_SKIPPED = {
    "6": "prescan-normalised copy of series 5 (same acquisition)",
    "11": "scanner-derived ADC map",
    "12": "scanner-derived trace-weighted image",
    "13": "scanner-derived FA map",
    "14": "scanner-derived colour FA map",
    "16": "scanner-derived tensor b0 image",
    "19": "scanner-derived ADC map",
    "20": "scanner-derived trace-weighted image",
    "21": "scanner-derived FA map",
    "22": "scanner-derived colour FA map",
    "24": "scanner-derived tensor b0 image",
    "25": "ASL without BackgroundSuppression in the headers: supply them in --overrides",
    "27": "scanner-derived perfusion-weighted map",
    "28": "scanner-derived relative CBF map",
    "99": "non-image series (Siemens Phoenix protocol report)",
}
B17_TASKS = [
    *(f"{o}{s}{n}sl" for o in ("cor", "sag") for n in (35, 36) for s in ("asc", "desc", "int")),
    *(f"ax{s}35sl" for s in ("asc", "desc", "int")),
    "axdesc36sl",
    "axint36sl",
    "MBasc",
    "MBint",
]


def _files(stem: str, *exts: str) -> list[str]:
    return [f"{S}/{stem}.{e}" for e in exts]


def _image(stem: str) -> list[str]:
    return _files(stem, "json", "nii.gz")


def _dwi(stem: str) -> list[str]:
    return _files(stem, "bval", "bvec", "json", "nii.gz")


# case → (files published under sub-01/, skipped series number → reason)
EXPECTED: dict[str, tuple[list[str], dict[str, str]]] = {
    "siemens_xa30_enh": (
        [
            *_image("anat/sub-01_acq-tfl_T1w"),
            *_dwi("dwi/sub-01_dir-AP_dwi"),
            *_dwi("dwi/sub-01_dir-PA_dwi"),
            *_image("fmap/sub-01_magnitude1"),
            *_image("fmap/sub-01_magnitude2"),
            *_image("fmap/sub-01_phasediff"),
            *_image("func/sub-01_task-fa_bold"),
        ],
        XA30_SKIPPED,
    ),
    "siemens_b17_trio_mosaic": (
        [
            *(f for t in B17_TASKS for f in _image(f"func/sub-01_task-{t}_bold")),
            *_image("func/sub-01_task-axasc36sl_run-1_bold"),
            *_image("func/sub-01_task-axasc36sl_run-2_bold"),
        ],
        {},
    ),
    "siemens_e11_reproin_phantom": (
        _image("fmap/sub-01_acq-3mm_phasediff"),
        {"1": "localizer"},
    ),
    "ge_mr29_dwi_t1": (
        [
            *_image("anat/sub-01_T1w"),
            *_dwi("dwi/sub-01_acq-R1p5_dir-PA_dwi"),
            *_dwi("dwi/sub-01_acq-R2MB2_dir-AP_dwi"),
            *_dwi("dwi/sub-01_acq-R2_dir-PA_dwi"),
            *_dwi("dwi/sub-01_acq-R3_dir-PA_dwi"),
        ],
        {},
    ),
    "philips_r53_dti": (_dwi("dwi/sub-01_dwi"), {}),
}
DATASET_FILES = [
    ".bidsignore",
    "CHANGES",
    "README.md",
    "dataset_description.json",
    "derivatives/bidsapp/dataset_description.json",
    "derivatives/bidsapp/.log/index.html",
]


def _after_patient_group(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > 0x0010FFFF)


def case_identifiers(case: Path) -> Identifiers:
    """The patient identifiers of a case, read from every header, plus its folder name."""
    headers = []
    seen = set()
    for f in sorted(case.rglob("*")):
        if not f.is_file():
            continue
        with f.open("rb") as fh:  # patient tags are all in groups 0008 and 0010
            ds = pydicom.filereader.read_partial(fh, stop_when=_after_patient_group, force=True)
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


@dataclass
class Outcome:
    case: str
    output: Path
    streams: list[str]
    participant: subprocess.CompletedProcess[str]
    group: subprocess.CompletedProcess[str]
    inspect: subprocess.CompletedProcess[str]

    @property
    def gate(self) -> dict:  # type: ignore[type-arg]
        return json.loads((self.output / f"derivatives/bidsapp/{S}/.log/gate.json").read_text())


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    need(bool(shared_cases()), f"{SHARED_DICOM} (real DICOM sessions) is not present")
    case: str = request.param
    tmp = tmp_path_factory.mktemp(case)
    subject_map = tmp / "map.tsv"
    subject_map.write_text(f"source\tparticipant\tsession\n{case}\t01\t\n")
    output, work = tmp / "out", tmp / "work"
    part = run_bidsapp(SHARED_DICOM, output, "participant", "--subject-map", subject_map, work=work)
    group = run_bidsapp(SHARED_DICOM, output, "group", work=work)
    inspect = run_bidsapp(
        "inspect",
        SHARED_DICOM,
        "--participant-label",
        "01",
        "--subject-map",
        subject_map,
        "--format",
        "json",
        work=work,
    )
    streams = [s for p in (part, group, inspect) for s in (p.stdout, p.stderr)]
    return Outcome(case, output, streams, part, group, inspect)


def test_shared_dicom_present(shared_dicom: Path) -> None:
    assert set(shared_cases()) == set(EXPECTED), "update EXPECTED for the cases in ../shared/dicom"


@pytest.mark.slow
def test_case_publishes_exactly_the_expected_files(outcome: Outcome) -> None:
    case = outcome.case
    assert outcome.participant.returncode == 0, outcome.participant.stderr[-3000:]
    assert outcome.group.returncode == 0, outcome.group.stderr[-3000:]
    assert "Traceback" not in "".join(outcome.streams)
    files = published_files(outcome.output)
    data = [f for f in files if f.startswith("sub-")]
    assert data == sorted([*EXPECTED[case][0], f"{S}/{S}_scans.tsv"])
    # what a reviewer runs: `bids-validator-deno -r OUTPUT`, by exit code and every dataset's
    # report (derivatives/bidsapp included)
    checked = validate(outcome.output, outcome.output.parent / "recheck.json", recursive=True)
    assert checked.exit_code == 0 and checked.errors == [], checked.errors[:5]
    report = json.loads((outcome.output.parent / "recheck.json").read_text())
    assert list(report["derivativesSummary"]) == ["/derivatives/bidsapp/"]  # it was looked at
    assert outcome.gate["validator"]["errors"] == 0 and outcome.gate["passed"] is True
    derivs = [f for f in files if f.startswith(f"derivatives/bidsapp/{S}/")]
    log = f"derivatives/bidsapp/{S}/.log"
    assert {f"{log}/{n}" for n in ("gate.json", "log.jsonl", "manifest.json", "report.html")} < set(
        derivs
    )
    assert all(f.endswith(".png") for f in derivs if "/figures/" in f)
    # group writes one task-<label>_bold.json per task found
    tasks = {f.split("_task-")[1].split("_")[0] for f in data if "_task-" in f}
    assert sorted(set(files) - set(data) - set(derivs)) == sorted(
        [*DATASET_FILES, "participants.json", "participants.tsv"]
        + [f"task-{t}_bold.json" for t in tasks]
    )
    removed = {r.field for r in profile("basic") if r.action == "remove" and "*" not in r.field}
    for sidecar in (outcome.output / f for f in data if f.endswith(".json")):
        assert removed.isdisjoint(json.loads(sidecar.read_text())), sidecar.name


@pytest.mark.slow
def test_case_loads_in_pybids_with_the_entities_its_names_give(outcome: Outcome) -> None:
    expected = [f for f in EXPECTED[outcome.case][0] if not f.endswith(".tsv")]
    assert assert_loads_in_pybids(outcome.output) == len(expected) + 1  # + scans.tsv


@pytest.mark.slow
def test_case_lists_every_skipped_series_with_its_reason(outcome: Outcome) -> None:
    case = outcome.case
    series = outcome.gate["series"]
    skipped = {s["series_id"].split("-")[0]: s["reason"] for s in series if not s["outputs"]}
    assert skipped == EXPECTED[case][1]
    # every published image comes from exactly one listed series
    images = sorted(f[: -len(".nii.gz")] for f in EXPECTED[case][0] if f.endswith(".nii.gz"))
    assert sorted(o for s in series for o in s["outputs"]) == images
    notes = {s["series_id"].split("-")[0]: s["note"] for s in series if s["note"]}
    if case == "philips_r53_dti":  # the isotropic trace volume dcm2niix splits off
        assert notes == {
            "601": "dcm2niix also wrote an image it calls ADC (scanner-derived): not published"
        }
    elif case == "siemens_e11_reproin_phantom":  # a phase difference without its magnitudes
        assert notes == {
            "6": "field map without its magnitude images in this session: published as "
            "acquired, not linked to any image (no B0FieldIdentifier)"
        }
    else:
        assert notes == {}


@pytest.mark.slow
def test_inspect_rows_match_the_converted_output(outcome: Outcome) -> None:
    assert outcome.inspect.returncode == 0, outcome.inspect.stderr[-3000:]
    rows = json.loads(outcome.inspect.stdout)
    keys = ("series_id", "description", "image_type", "dims", "tr", "te", "files", "outputs")
    seen = [{k: r[k] for k in (*keys, "reason")} for r in rows]
    published = [{k: s[k] for k in (*keys, "reason")} for s in outcome.gate["series"]]
    assert seen == published


@pytest.mark.slow
def test_case_output_holds_no_patient_data(outcome: Outcome) -> None:
    case = outcome.case
    ids = case_identifiers(SHARED_DICOM / case)
    assert ids.identifiers, "every case has at least its folder name as an identifier"
    assert scan_tree(outcome.output, ids) == []
    for stream in outcome.streams:
        assert ids.find(stream) == []


@pytest.mark.slow
def test_field_maps_are_linked_to_what_they_correct(outcome: Outcome) -> None:
    sub = outcome.output / S
    fmaps = sorted(sub.glob("fmap/*.json"))
    if outcome.case == "siemens_e11_reproin_phantom":
        # a phase difference without its magnitudes is no usable field map: fMRIPrep would fail
        # on it, so it carries no identifier (and corrects nothing)
        [fmap] = fmaps
        assert {"B0FieldIdentifier", "IntendedFor"}.isdisjoint(json.loads(fmap.read_text()))
        return
    if outcome.case != "siemens_xa30_enh":
        assert fmaps == []
        return
    targets = ["func/sub-01_task-fa_bold", "dwi/sub-01_dir-PA_dwi", "dwi/sub-01_dir-AP_dwi"]
    for name in ("magnitude1", "magnitude2", "phasediff"):
        sidecar = json.loads((sub / f"fmap/sub-01_{name}.json").read_text())
        assert sidecar["B0FieldIdentifier"] == "phasediff1"
        assert sidecar["IntendedFor"] == [f"bids::{S}/{t}.nii.gz" for t in targets]
    for target in targets:
        assert json.loads((sub / f"{target}.json").read_text())["B0FieldSource"] == "phasediff1"


@pytest.mark.slow
def test_asl_converts_with_the_fields_overrides_supply(tmp_path: Path) -> None:
    """The XA30 PCASL series alone: aslcontext from the per-frame ASL context, the missing
    BackgroundSuppression from an overrides file; the validator accepts the result."""
    need(bool(shared_cases()), f"{SHARED_DICOM} (real DICOM sessions) is not present")
    source = tmp_path / "source"
    shutil.copytree(SHARED_DICOM / "siemens_xa30_enh" / "25_asl_2d_tra", source / "01" / "asl")
    overrides = tmp_path / "overrides.toml"
    overrides.write_text(
        '[[series]]\ndescription = "asl_2d_*"\nsidecar = { BackgroundSuppression = false }\n'
    )
    output, work = tmp_path / "out", tmp_path / "work"
    part = run_bidsapp(source, output, "participant", "--overrides", overrides, work=work)
    assert part.returncode == 0, part.stderr[-3000:]
    perf = output / "sub-01" / "perf"
    assert sorted(p.name for p in perf.iterdir()) == [
        "sub-01_asl.json",
        "sub-01_asl.nii.gz",
        "sub-01_aslcontext.tsv",
    ]
    assert (perf / "sub-01_aslcontext.tsv").read_text().split() == [
        "volume_type",
        "m0scan",
        *["label", "control"] * 3,
    ]
    sidecar = json.loads((perf / "sub-01_asl.json").read_text())
    assert sidecar["BackgroundSuppression"] is False
    assert sidecar["M0Type"] == "Included" and sidecar["TotalAcquiredPairs"] == 3
    assert sidecar["RepetitionTimePreparation"] == sidecar["RepetitionTime"]
    gate = json.loads((output / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    assert gate["validator"]["errors"] == 0
