"""De-identification through the real pipeline: adversarial exams, dates, the gate behind it."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from bidsapp_sandbox.exams import Patient, Series

from bidsapp.privacy.phi import Identifier, Identifiers, scan_tree
from bidsapp.privacy.profiles import date_offset, load_secret, profile
from tests.conftest import MakeExam, RunCli, published_files

pytestmark = pytest.mark.slow

PATIENT = Patient(
    name="Conceição^Zélia^Maria",
    patient_id="HX99812",
    birth_date="19640229",
    accession="ACC77123",
)
FOLDER = "Conceição Zélia 2024"
# Every identifier, raw and normalised, and as dcm2niix garbles UTF-8 (Latin-1 mojibake).
NEEDLES = [
    "Conceição",
    "conceicao",
    "Zélia",
    "zelia",
    "HX99812",
    "hx99812",
    "19640229",
    "1964-02-29",
    "ACC77123",
    "Conceição^Zélia",
    "ConceiÃ§Ã£o",
    "ZÃ©lia",
]


def adversarial_exam(make_exam: MakeExam) -> Path:
    """The patient's name and ID in every free-text field, the folder and the file names."""
    return make_exam(
        FOLDER,
        patient=PATIENT,
        series=(
            Series(
                "anat-T1w__Conceição Zélia HX99812",  # ReproIn ignores what follows "__"
                "t1w",
                description="T1 Conceição^Zélia HX99812",
                image_comments="paciente Conceição Zélia, prontuário HX99812",
            ),
        ),
        study_description="Exame Conceição^Zélia HX99812",
        file_names="{patient}_{series:02d}_{instance:04d}.IMA",
    )


def write_map(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = tmp_path / "map.tsv"
    lines = ["source\tparticipant\tsession", *("\t".join(r) for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def everything_text(root: Path) -> str:
    """Every name and every readable byte under root (NIfTI/DICOM headers via the PHI scan)."""
    parts = []
    for path in sorted(root.rglob("*")):
        parts.append(path.name)
        if path.is_file() and not path.name.endswith((".nii.gz", ".png", ".dcm")):
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_adversarial_exam_publishes_clean(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    exam = adversarial_exam(make_exam)
    subject_map = write_map(tmp_path, [(FOLDER, "01", "")])
    output = tmp_path / "out"
    part = bidsapp(
        tmp_path / "source", output, "participant", "--subject-map", subject_map, "--sourcedata"
    )
    assert part.returncode == 0, part.stderr
    group = bidsapp(tmp_path / "source", output, "group")
    assert group.returncode == 0, group.stderr

    assert "sub-01/anat/sub-01_T1w.nii.gz" in published_files(output)
    assert any(f.startswith("sourcedata/sub-01/") for f in published_files(output))
    text = everything_text(output) + part.stdout + part.stderr + group.stdout + group.stderr
    for needle in NEEDLES:
        assert needle.lower() not in text.lower(), f"an identifier ({len(needle)} chars) leaked"
    ids = Identifiers.collect(
        [
            {
                "PatientName": PATIENT.name,
                "PatientID": PATIENT.patient_id,
                "PatientBirthDate": PATIENT.birth_date,
                "AccessionNumber": PATIENT.accession,
            }
        ],
        FOLDER,
        "01",
    )
    assert scan_tree(output, ids) == []  # NIfTI header fields and DICOM copies included
    sidecar = json.loads((output / "sub-01/anat/sub-01_T1w.json").read_text())
    removed = {r.field for r in profile("basic") if r.action == "remove" and "*" not in r.field}
    assert removed.isdisjoint(sidecar)
    gate = json.loads((output / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    assert gate["deid"]["blanked"], "free-text fields holding the name were blanked"
    assert exam.is_dir() and any(exam.iterdir()), "the source is untouched"


def test_without_deidentification_the_gate_fails_closed(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    adversarial_exam(make_exam)
    subject_map = write_map(tmp_path, [(FOLDER, "01", "")])
    output = tmp_path / "out"
    result = bidsapp(
        tmp_path / "source", output, "participant", "--subject-map", subject_map, "--deid", "none"
    )
    assert result.returncode == 65, result.stderr
    assert "patient data found" in result.stderr
    assert [f for f in published_files(output) if "sub-01" in f] == []
    gate_text = (output / ".bidsapp/failed/sub-01/gate.json").read_text()
    hits = json.loads(gate_text)["phi"]["hits"]
    assert {h["field"] for h in hits} >= {"PatientName", "PatientID"}
    for needle in NEEDLES:
        assert needle.lower() not in (gate_text + result.stderr).lower()


def acq_times(output: Path, session: str) -> list[str]:
    rows = (output / f"sub-01/ses-{session}/sub-01_ses-{session}_scans.tsv").read_text()
    return [line.split("\t")[1] for line in rows.splitlines()[1:]]


def test_shifted_dates_keep_intervals_and_hold_across_reruns_and_machines(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli
) -> None:
    make_exam("exam-a", seed=1, study_date="20240102")
    make_exam("exam-b", seed=2, study_date="20240301")
    subject_map = write_map(tmp_path, [("exam-a", "01", "pre"), ("exam-b", "01", "post")])
    output = tmp_path / "out"
    assert (
        bidsapp(tmp_path / "source", output, "participant", "--subject-map", subject_map).returncode
        == 0
    )
    pre, post = acq_times(output, "pre")[0], acq_times(output, "post")[0]
    assert pre[:4] <= "1925" and post[:4] <= "1925"
    from datetime import datetime

    gap = datetime.fromisoformat(post) - datetime.fromisoformat(pre)
    assert gap.days == 59 and gap.seconds == 0, "2024-01-02 10:15 to 2024-03-01 10:15"

    # A rerun (forced) and another machine (a copy of the map and its secret) agree.
    assert (
        bidsapp(
            tmp_path / "source", output, "participant", "--subject-map", subject_map, "--force"
        ).returncode
        == 0
    )
    assert acq_times(output, "pre")[0] == pre
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("map.tsv", "map.secret"):
        shutil.copy(tmp_path / name, elsewhere / name)
    other = tmp_path / "out2"
    assert (
        bidsapp(
            tmp_path / "source", other, "participant", "--subject-map", elsewhere / "map.tsv"
        ).returncode
        == 0
    )
    assert acq_times(other, "post")[0] == post

    offset = date_offset("01", load_secret(tmp_path / "map.secret"))
    text = everything_text(output)
    assert str(abs(offset)) not in text, "the offset itself is never published"
    assert (tmp_path / "map.secret").stat().st_mode & 0o777 == 0o600


def test_a_name_word_that_is_also_a_word_of_bidsapp_s_own_text(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path
) -> None:
    """Issue 12 item 5: `Xq7^dcm2niix` publishes. The word is the patient's in copied text
    (a series description, sidecars: removed) and bidsapp's own in the report's versions
    table (kept); the whole name and the ID still count everywhere."""
    patient = Patient(name="Xq7^dcm2niix", patient_id="QZ5521", birth_date="19580611")
    make_exam(
        "01",
        patient=patient,
        series=(Series("anat-T1w", "t1w", description="T1 mprage dcm2niix"),),
    )
    out = tmp_path / "out"

    result = bidsapp(tmp_path / "source", out, "participant")

    assert result.returncode == 0, result.stderr
    copied = [p for p in (out / "sub-01").rglob("*") if p.is_file()]
    assert copied
    words = Identifiers([Identifier("PatientName", ("dcm2niix",))])
    assert scan_tree(out / "sub-01", words) == []  # sidecars, TSVs, NIfTI headers, names
    gate = json.loads((out / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    descriptions = [s.get("description", "") for s in gate["series"]]
    assert descriptions and not any("dcm2niix" in d.lower() for d in descriptions)
    report = (out / "derivatives/bidsapp/sub-01/.log/report.html").read_text()
    assert "T1 mprage" not in report or "T1 mprage dcm2niix" not in report
    assert re.search(r"<td>dcm2niix</td>", report), "the versions table names dcm2niix"
    whole = Identifiers.collect([{"PatientName": patient.name, "PatientID": "QZ5521"}], None)
    assert scan_tree(out, whole.except_words(frozenset({"dcm2niix"}))) == []


@pytest.mark.parametrize("dates", ["shift", "drop"])
def test_p1_deid_none_refuses_a_date_shift_or_drop(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path, dates: str
) -> None:
    make_exam("01")
    out = tmp_path / "out"
    result = bidsapp(tmp_path / "source", out, "participant", "--deid", "none", "--dates", dates)
    assert result.returncode == 64, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"--dates {dates}" in errors[0]
    assert not out.exists() or published_files(out) == []


# stands in for pydeface: zeroes the last 40 bytes of the image (stdlib only, for speed)
FAKE_DEFACE = """
import gzip, sys
data = gzip.decompress(open(sys.argv[1], "rb").read())
open(sys.argv[2], "wb").write(gzip.compress(data[:-40] + bytes(40)))
"""


def test_p1_deid_none_still_defaces_and_the_manifest_says_what_was_done(
    bidsapp: RunCli, make_exam: MakeExam, tmp_path: Path
) -> None:
    make_exam("01")
    script = tmp_path / "fake_deface.py"
    script.write_text(FAKE_DEFACE)
    out = tmp_path / "out"
    deface_cmd = f"{sys.executable} {script} {{in}} {{out}}"

    result = bidsapp(
        tmp_path / "source", out, "participant", "--deid", "none", "--deface-cmd", deface_cmd
    )

    assert result.returncode == 0, result.stderr
    t1w = out / "sub-01/anat/sub-01_T1w.nii.gz"
    assert gzip.decompress(t1w.read_bytes())[-40:] == bytes(40), "the T1w was defaced"
    log = out / "derivatives/bidsapp/sub-01/.log"
    manifest = json.loads((log / "manifest.json").read_text())
    assert manifest["options"] == {
        "participant_fields": [],
        "deid_profile": "none",
        "dates": "keep",
        "sourcedata": False,
        "deface_cmd": True,
    }
    gate = json.loads((log / "gate.json").read_text())
    assert gate["deid"]["defaced"] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert gate["deid"]["dates"] == "keep"
