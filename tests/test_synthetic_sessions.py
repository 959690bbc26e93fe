"""Exams the shared real data lacks, in three vendors' vocabularies, end to end.

`bidsapp_sandbox.exams.EXAMS` writes them with pydicom as the scanners do (series names, image
types, sequence vocabulary, phase-encoding polarity in the vendor's private tags); conversion is
real: `participant` + `group` + `inspect` through the CLI (heudiconv, dcm2niix, the validator).
The expected names follow from what each series is, not from the code's output:
- siemens_clinical: the MPRAGE saved unnormalised (`_ND`) and prescan-normalised (NORM, same
  acquisition time and geometry): the original is the T1w, the copy is skipped; TIRM dark-fluid
  is FLAIR; SWI magnitude and phase are T2starw parts, the scanner's SWI and mIP are skipped.
- philips_tfe: a Survey localizer, a 3D T1 TFE (T1w), a T2 TSE (T2w) and a T2* FFE (GR/SP, a
  magnitude T2starw), for which dcm2niix's warning hid its output from heudiconv (dcm2niix_shim).
- ge_bravo_cube: GE writes no StudyDescription; BRAVO (IR-prepared SPGR) is T1w, CUBE FLAIR is
  FLAIR, FRFSE is T2w.
- siemens_bold_se_epi: a spin-echo EPI pair whose dir-AP/dir-PA come from the polarity in the
  CSA header, and a resting BOLD with its SBRef, which the pair corrects.
- ge_b0map_dwi: GE's B0 map, which dcm2niix writes as a magnitude and a field in Hz
  (`fieldmap` + `magnitude`); a DWI named "Ax seq 7" whose b-values only dcm2niix reads (GE
  private tags): dwi from its b-values alone.
- philips_fieldmaps: Philips' B0 map (magnitude + Hz) and a two-echo GRE field map with magnitude
  and phase per echo (magnitude1/phase1/magnitude2/phase2): two complete sets, run-1 and run-2.
- siemens_two_gre_sets: two magnitude + phase-difference pairs, each phase series numbered before
  its magnitudes, the second on a tilted grid: paired by acquisition (grid, echoes, time).
- siemens_pepolar_singles: single-volume EPIs in opposite directions with uninformative names:
  a PEPOLAR pair (dir- from the CSA polarity) that corrects the BOLD run after them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from bidsapp_sandbox.exams import EXAMS, Patient, Series, write_session

from bidsapp.heuristic.headers import FileRecord, record, summaries
from bidsapp.heuristic.prepass import convert_folder, custom_seqinfo
from bidsapp.privacy.phi import Identifiers, scan_tree
from tests.conftest import published_files, run_bidsapp

S = "sub-01"
PATIENT = Patient(name="Vasconcelos^Iolanda", patient_id="SX81734", birth_date="19690417")


def _image(*stems: str) -> list[str]:
    return [f"{S}/{stem}.{e}" for stem in stems for e in ("json", "nii.gz")]


# exam → (files published under sub-01/, skipped series number → reason)
EXPECTED: dict[str, tuple[list[str], dict[str, str]]] = {
    "siemens_clinical": (
        _image(
            "anat/sub-01_FLAIR",
            "anat/sub-01_T1w",
            "anat/sub-01_part-mag_T2starw",
            "anat/sub-01_part-phase_T2starw",
        ),
        {
            "1": "localizer",
            "3": "prescan-normalised copy of series 2 (same acquisition)",
            "7": "scanner-made minimum intensity projection (mIP)",
            "8": "scanner-processed SWI image",
        },
    ),
    "philips_tfe": (
        _image("anat/sub-01_T1w", "anat/sub-01_T2starw", "anat/sub-01_T2w"),
        {"1": "localizer"},
    ),
    "ge_bravo_cube": (
        _image("anat/sub-01_FLAIR", "anat/sub-01_T1w", "anat/sub-01_T2w"),
        {"1": "localizer"},
    ),
    "siemens_bold_se_epi": (
        _image(
            "fmap/sub-01_dir-AP_epi",
            "fmap/sub-01_dir-PA_epi",
            "func/sub-01_task-rest_bold",
            "func/sub-01_task-rest_sbref",
        ),
        {},
    ),
    "ge_b0map_dwi": (
        [
            *_image("anat/sub-01_T1w", "fmap/sub-01_fieldmap", "fmap/sub-01_magnitude"),
            *[f"{S}/dwi/sub-01_dir-AP_dwi.{e}" for e in ("bval", "bvec", "json", "nii.gz")],
        ],
        {},
    ),
    "philips_fieldmaps": (
        _image(
            "anat/sub-01_T1w",
            "fmap/sub-01_run-1_fieldmap",
            "fmap/sub-01_run-1_magnitude",
            "fmap/sub-01_run-2_magnitude1",
            "fmap/sub-01_run-2_magnitude2",
            "fmap/sub-01_run-2_phase1",
            "fmap/sub-01_run-2_phase2",
            "func/sub-01_task-rest_bold",
        ),
        {},
    ),
    "siemens_two_gre_sets": (
        _image(
            *(f"fmap/sub-01_run-{r}_{s}" for r in (1, 2) for s in ("magnitude1", "magnitude2")),
            "fmap/sub-01_run-1_phasediff",
            "fmap/sub-01_run-2_phasediff",
            "func/sub-01_task-tfMRIMOTORAP_bold",
            "func/sub-01_task-rest_bold",
        ),
        {},
    ),
    "siemens_pepolar_singles": (
        _image("fmap/sub-01_dir-AP_epi", "fmap/sub-01_dir-PA_epi", "func/sub-01_task-rest_bold"),
        {},
    ),
}


@dataclass
class Outcome:
    exam: str
    output: Path
    streams: list[str]
    returncodes: dict[str, int]
    inspect_rows: list[dict]  # type: ignore[type-arg]

    @property
    def gate(self) -> dict:  # type: ignore[type-arg]
        return json.loads((self.output / f"derivatives/bidsapp/{S}/.log/gate.json").read_text())

    def sidecar(self, stem: str) -> dict:  # type: ignore[type-arg]
        return json.loads((self.output / S / f"{stem}.json").read_text())


@pytest.fixture(scope="module", params=sorted(EXAMS))
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    name: str = request.param
    exam = EXAMS[name]
    tmp = tmp_path_factory.mktemp(name)
    source, output, work = tmp / "source", tmp / "out", tmp / "work"
    write_session(source / "Vasconcelos Iolanda", patient=PATIENT, series=exam.series,
                  vendor=exam.vendor)  # fmt: skip
    subject_map = tmp / "map.tsv"
    subject_map.write_text("source\tparticipant\tsession\nVasconcelos Iolanda\t01\t\n")
    mapped = ("--subject-map", subject_map)
    runs = {
        "participant": run_bidsapp(source, output, "participant", *mapped, work=work),
        "group": run_bidsapp(source, output, "group", work=work),
        "inspect": run_bidsapp(
            "inspect", source, "--participant-label", "01", *mapped, "--format", "json", work=work
        ),
    }
    streams = [s for r in runs.values() for s in (r.stdout, r.stderr)]
    codes = {k: r.returncode for k, r in runs.items()}
    rows = json.loads(runs["inspect"].stdout) if codes["inspect"] == 0 else []
    return Outcome(name, output, streams, codes, rows)


def test_every_exam_has_expectations() -> None:
    assert set(EXAMS) == set(EXPECTED)


def test_exams_carry_each_vendors_headers(tmp_path: Path) -> None:
    def first(exam: str, number: int) -> pydicom.Dataset:
        path = tmp_path / exam / f"{number:02d}" / "0001.dcm"
        if not path.parent.is_dir():
            write_session(tmp_path / exam, series=EXAMS[exam].series, vendor=EXAMS[exam].vendor)
        return pydicom.dcmread(path)

    ge = first("ge_bravo_cube", 2)
    assert ge.Manufacturer == "GE MEDICAL SYSTEMS" and "StudyDescription" not in ge
    assert (ge.SeriesDescription, float(ge.InversionTime)) == ("Sag BRAVO", 450)
    assert first("philips_tfe", 2).ImageType == ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]
    swi = [first("siemens_clinical", n) for n in (5, 6, 7, 8)]
    assert [ds.ImageType[:3] for ds in swi] == [
        ["ORIGINAL", "PRIMARY", "M"],
        ["ORIGINAL", "PRIMARY", "P"],
        ["DERIVED", "PRIMARY", "MNIP"],
        ["DERIVED", "PRIMARY", "M"],
    ]
    assert len({ds.AcquisitionTime for ds in swi}) == 1  # one acquisition, four series
    # the CSA image header (SV10) carries the polarity: 1 for AP, 0 for PA
    for number, polarity in ((1, b"1"), (2, b"0")):
        csa = first("siemens_bold_se_epi", number)[0x0029, 0x1010].value
        assert csa.startswith(b"SV10")
        at = csa.index(b"PhaseEncodingDirectionPositive")
        assert csa[at + 84 + 16 : at + 84 + 17] == polarity


@pytest.mark.slow
def test_exam_publishes_exactly_the_expected_files(outcome: Outcome) -> None:
    assert outcome.returncodes == {"participant": 0, "group": 0, "inspect": 0}, outcome.streams
    assert "Traceback" not in "".join(outcome.streams)
    files = published_files(outcome.output)
    data = [f for f in files if f.startswith(f"{S}/")]
    assert data == sorted([*EXPECTED[outcome.exam][0], f"{S}/{S}_scans.tsv"])
    report = json.loads((outcome.output / ".bidsapp/group-validation.json").read_text())
    assert [i for i in report["issues"]["issues"] if i["severity"] == "error"] == []
    assert outcome.gate["validator"]["errors"] == 0 and outcome.gate["passed"] is True


@pytest.mark.slow
def test_exam_lists_every_skipped_series_with_its_reason(outcome: Outcome) -> None:
    series = outcome.gate["series"]
    skipped = {s["series_id"].split("-")[0]: s["reason"] for s in series if not s["outputs"]}
    assert skipped == EXPECTED[outcome.exam][1]
    images = sorted(f[: -len(".nii.gz")] for f in EXPECTED[outcome.exam][0] if f.endswith(".gz"))
    assert sorted(o for s in series for o in s["outputs"]) == images


@pytest.mark.slow
def test_inspect_rows_match_the_converted_output(outcome: Outcome) -> None:
    keys = ("series_id", "description", "image_type", "dims", "tr", "te", "files", "outputs")
    seen = [{k: r[k] for k in (*keys, "reason")} for r in outcome.inspect_rows]
    assert seen == [{k: s[k] for k in (*keys, "reason")} for s in outcome.gate["series"]]


@pytest.mark.slow
def test_exam_output_holds_no_patient_data(outcome: Outcome) -> None:
    headers = [{"PatientName": PATIENT.name, "PatientID": PATIENT.patient_id,
                "PatientBirthDate": PATIENT.birth_date}]  # fmt: skip
    ids = Identifiers.collect(headers, "Vasconcelos Iolanda", "01")
    assert scan_tree(outcome.output, ids) == []
    for stream in outcome.streams:
        assert ids.find(stream) == []


@pytest.mark.slow
def test_sidecars_carry_what_the_headers_and_the_session_say(outcome: Outcome) -> None:
    if outcome.exam == "siemens_clinical":
        # BIDS requires Units for phase images; the scanner's values are not radians
        assert outcome.sidecar("anat/sub-01_part-phase_T2starw")["Units"] == "arbitrary"
        assert outcome.sidecar("anat/sub-01_T1w")["InversionTime"] == 0.9
        return
    if outcome.exam in FIELD_MAPS:
        FIELD_MAPS[outcome.exam](outcome)
        return
    if outcome.exam != "siemens_bold_se_epi":
        assert not (outcome.output / S / "fmap").exists()
        return
    # polarity from the CSA header: axial slices, phase encoded along the columns
    ap, pa = outcome.sidecar("fmap/sub-01_dir-AP_epi"), outcome.sidecar("fmap/sub-01_dir-PA_epi")
    assert (ap["PhaseEncodingDirection"], pa["PhaseEncodingDirection"]) == ("j-", "j")
    assert ap["TotalReadoutTime"] > 0 and pa["TotalReadoutTime"] > 0
    targets = ["func/sub-01_task-rest_sbref", "func/sub-01_task-rest_bold"]
    for fmap in (ap, pa):
        assert fmap["B0FieldIdentifier"] == "pepolar1"
        assert fmap["IntendedFor"] == [f"bids::{S}/{t}.nii.gz" for t in targets]
    for target in targets:
        sidecar = outcome.sidecar(target)
        assert sidecar["B0FieldSource"] == "pepolar1"
        assert sidecar["PhaseEncodingDirection"] == "j-" and sidecar["TaskName"] == "rest"


def _linked(outcome: Outcome, fmaps: list[str], ident: str, targets: list[str]) -> None:
    """Every image of one set carries its identifier and lists what it corrects; each of
    those names the set as its source."""
    for stem in fmaps:
        sidecar = outcome.sidecar(stem)
        assert sidecar["B0FieldIdentifier"] == ident, stem
        assert sidecar.get("IntendedFor", []) == [f"bids::{S}/{t}.nii.gz" for t in targets], stem
    for target in targets:
        assert outcome.sidecar(target)["B0FieldSource"] == ident, target


def _ge_b0map_dwi(outcome: Outcome) -> None:
    field, magnitude = (
        outcome.sidecar("fmap/sub-01_fieldmap"),
        outcome.sidecar("fmap/sub-01_magnitude"),
    )
    assert field["Units"] == "Hz" and "Units" not in magnitude
    _linked(outcome, ["fmap/sub-01_fieldmap", "fmap/sub-01_magnitude"], "fieldmap1",
            ["dwi/sub-01_dir-AP_dwi"])  # fmt: skip
    bvals = (outcome.output / S / "dwi/sub-01_dir-AP_dwi.bval").read_text().split()
    assert [float(b) for b in bvals] == [0, *[1000] * 5]
    [row] = [r for r in outcome.gate["series"] if r["series_id"].startswith("2-")]
    assert row["guess"] == "dcm2niix guesses fmap/epi"  # its guess is wrong, and says so


def _philips_fieldmaps(outcome: Outcome) -> None:
    assert outcome.sidecar("fmap/sub-01_run-1_fieldmap")["Units"] == "Hz"
    echoes = {n: outcome.sidecar(f"fmap/sub-01_run-2_{n}")["EchoTime"] for n in (
        "magnitude1", "phase1", "magnitude2", "phase2")}  # fmt: skip
    assert echoes == {"magnitude1": 0.0023, "phase1": 0.0023, "magnitude2": 0.0046,
                      "phase2": 0.0046}  # fmt: skip
    for n in ("phase1", "phase2"):
        assert outcome.sidecar(f"fmap/sub-01_run-2_{n}")["Units"] == "arbitrary"
        assert "PHASE" in outcome.sidecar(f"fmap/sub-01_run-2_{n}")["ImageType"]
    _linked(outcome, ["fmap/sub-01_run-1_fieldmap", "fmap/sub-01_run-1_magnitude"],
            "fieldmap1", [])  # fmt: skip
    run2 = [f"fmap/sub-01_run-2_{n}" for n in ("magnitude1", "magnitude2", "phase1", "phase2")]
    _linked(outcome, run2, "phasediff2", ["func/sub-01_task-rest_bold"])
    # Philips DICOM records no phase-encoding polarity: the link alone would let fMRIPrep plan
    # a correction that shifts no voxel, so the run's row says what to supply
    assert "PhaseEncodingDirection" not in outcome.sidecar("func/sub-01_task-rest_bold")
    [bold] = [r for r in outcome.gate["series"] if "task-rest_bold" in " ".join(r["outputs"])]
    note = bold["note"]
    assert "linked to field map phasediff2, but its sidecar has no PhaseEncodingDirection" in note
    assert "--overrides" in note


def _siemens_two_gre_sets(outcome: Outcome) -> None:
    targets = ("func/sub-01_task-rest_bold", "func/sub-01_task-tfMRIMOTORAP_bold")
    for run, target in enumerate(targets, start=1):
        stems = [f"fmap/sub-01_run-{run}_{n}" for n in ("magnitude1", "magnitude2", "phasediff")]
        _linked(outcome, stems, f"phasediff{run}", [target])
        phasediff = outcome.sidecar(stems[2])
        assert (phasediff["EchoTime1"], phasediff["EchoTime2"]) == (0.00492, 0.00738)
        assert outcome.sidecar(target)["PhaseEncodingDirection"] == "j-"  # Siemens records it
    assert not [r for r in outcome.gate["series"] if "cannot unwarp" in r["note"]]
    # each set is one acquisition: its magnitudes and phase share the grid and the time
    for run in (1, 2):
        grids = {
            tuple(outcome.sidecar(f"fmap/sub-01_run-{run}_{n}")["ImageOrientationPatientDICOM"])
            for n in ("magnitude1", "phasediff")
        }
        assert len(grids) == 1


def _siemens_pepolar_singles(outcome: Outcome) -> None:
    ap, pa = outcome.sidecar("fmap/sub-01_dir-AP_epi"), outcome.sidecar("fmap/sub-01_dir-PA_epi")
    assert (ap["PhaseEncodingDirection"], pa["PhaseEncodingDirection"]) == ("j-", "j")
    _linked(outcome, ["fmap/sub-01_dir-AP_epi", "fmap/sub-01_dir-PA_epi"], "pepolar1",
            ["func/sub-01_task-rest_bold"])  # fmt: skip


FIELD_MAPS = {
    "ge_b0map_dwi": _ge_b0map_dwi,
    "philips_fieldmaps": _philips_fieldmaps,
    "siemens_two_gre_sets": _siemens_two_gre_sets,
    "siemens_pepolar_singles": _siemens_pepolar_singles,
}


def test_a_plain_heudiconv_run_summarises_a_series_as_bidsapp_does(tmp_path: Path) -> None:
    # inside bidsapp: staged records + one dcm2niix pass over the study; outside (a plain
    # `heudiconv -f auto.py`): custom_seqinfo over the series' own files. Same evidence.
    exam = EXAMS["philips_fieldmaps"]
    write_session(tmp_path / "in", series=exam.series, vendor=exam.vendor)
    files = sorted(str(p) for p in (tmp_path / "in" / "02").iterdir())
    records: list[FileRecord] = [record(pydicom.dcmread(f, stop_before_pixels=True)) for f in files]
    outputs = convert_folder(tmp_path / "in", tmp_path / "pass")
    [inside] = [h for h in summaries(records, outputs) if h.number == 2]
    custom = dict(custom_seqinfo(None, files))
    outside = {k: json.loads(v) for k, v in custom.items()}
    for key in ("series_id", "image_type", "dims", "volumes", "tr", "te", "pe_direction"):
        assert outside[key] == json.loads(json.dumps(getattr(inside, key))), key
    postfixes = sorted(o["postfix"] for o in outside["outputs"])
    assert postfixes == sorted(o.postfix for o in inside.outputs) == ["e1", "e1_ph", "e2", "e2_ph"]


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_dcm2niix_reads_the_polarity_each_vendor_writes(tmp_path: Path, vendor: str) -> None:
    # Siemens: CSA PhaseEncodingDirectionPositive; GE: RectilinearPhaseEncodeReordering
    found = {}
    for positive in (True, False):
        src, out = tmp_path / f"{positive}" / "in", tmp_path / f"{positive}" / "out"
        bold = Series("Ax rsfMRI", "siemens_bold", phase_positive=positive)
        write_session(src, series=[bold], vendor=vendor)
        out.mkdir()
        dcm2niix = Path(sys.executable).parent / "dcm2niix"
        subprocess.run([dcm2niix, "-b", "o", "-f", "s", "-o", out, src], check=True,
                       capture_output=True)  # fmt: skip
        found[positive] = json.loads((out / "s.json").read_text())["PhaseEncodingDirection"]
    # axial slices, phase encoded along the columns: positive runs A→P, which NIfTI calls j-
    assert found == {True: "j-", False: "j"}
