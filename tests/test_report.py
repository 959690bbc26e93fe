"""Subject report and dataset index: content, escaping, thumbnails and their orientation labels.

The orientation tests use a real dcm2niix conversion of the synthetic exam, whose marker sits on
the subject's left-anterior-superior side, so the labels are checked against a real affine (the
T1w comes out of dcm2niix stored RAS, the BOLD stored LAS, so a missing flip shows).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from bidsapp_sandbox.exams import write_session
from PIL import Image

from bidsapp.report.index import index_entry, render_index, series_kind
from bidsapp.report.subject import Panel, dwi_shells, render_slices, write_subject_report

DCM2NIIX = Path(sys.executable).parent / "dcm2niix"
EVIL = '<script>alert("x")</script> T1 & "more"'
BVALS = [0, 5, 995, 1000, 1010, 2000, 1985]  # shells 0 x2, 1000 x3, 2000 x2


@dataclass(frozen=True)
class Built:
    """A converted subject and its report."""

    bids: Path
    dest: Path
    html: Path
    gate: dict[str, Any]
    seconds: float


def _dcm2niix(series_dir: Path, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [DCM2NIIX, "-z", "y", "-b", "y", "-f", name, "-o", out, series_dir],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _fake_dwi(folder: Path) -> None:
    """A small 4D volume with a bright blob, and the .bval/.bvec/.json of a two-shell scan."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 22, 12)), indexing="ij"))
    head = (np.sqrt((grid**2).sum(axis=0)) < 0.8) * (300.0 + 150.0 * grid[1])
    data = np.stack([head * np.exp(-b / 3000) + 10 for b in BVALS], axis=-1).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(data, affine), folder / "sub-01_dwi.nii.gz")
    (folder / "sub-01_dwi.bval").write_text(" ".join(map(str, BVALS)) + "\n")
    (folder / "sub-01_dwi.bvec").write_text("\n".join(" ".join(["0"] * len(BVALS)) for _ in "xyz"))
    (folder / "sub-01_dwi.json").write_text(json.dumps({"RepetitionTime": 3.2, "EchoTime": 0.08}))


NOTE = "dcm2niix also wrote an image it calls ADC (scanner-derived): <not> published"


def make_gate(bids: Path, label: str = "01") -> dict[str, Any]:
    """A GateReport dict as the pipeline would pass it, with user data worth escaping."""
    files = sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*") if p.is_file())
    row = {"session": "", "image_type": "('ORIGINAL', 'PRIMARY', 'M', 'ND')", "te": "2.98"}
    return {
        "subject": label,
        "session": "",
        "passed": True,
        "failure": "",
        "converted_files": files,
        "series": [
            {**row, "series_id": "1-localizer", "description": EVIL, "dims": "64x64x3x1"}
            | {
                "tr": "0.0086",
                "files": 3,
                "outputs": [],
                "reason": "not selected by the heuristic",
            },
            {**row, "series_id": "2-anat-T1w", "description": "anat-T1w", "dims": "48x48x32x1"}
            | {"tr": "2.3", "files": 32, "outputs": [f"sub-{label}/anat/sub-{label}_T1w"]}
            | {"note": NOTE},
            {**row, "series_id": "3-func-bold", "description": "func-bold_task-rest"}
            | {"dims": "32x32x12x6", "tr": "2.0", "files": 72}
            | {"outputs": [f"sub-{label}/func/sub-{label}_task-rest_bold"]}
            | {"guess": "dcm2niix guesses dwi/FA"},
        ],
        "skipped_files": [{"file": "01/broken.dcm", "reason": "not DICOM"}],
        "validator": {"errors": 0, "warnings": 3},
        "findings": [
            {"code": "SIDECAR_KEY_RECOMMENDED", "severity": "warning", "location": f"/sub-{label}/"}
            | {"message": "A recommended key is missing."},
            {"code": "SIDECAR_KEY_RECOMMENDED", "severity": "warning", "location": "/x/y.json"}
            | {"message": "A recommended key is missing."},
            {"code": "README_FILE_MISSING", "severity": "warning", "location": "", "message": ""},
        ],
        "phi": {"identifiers": [{"field": "PatientID", "count_of_tokens": 1}], "hits": []},
    }


def build_report(root: Path) -> Built:
    """Synthetic exam -> dcm2niix -> tiny BIDS subject (+ a fake DWI) -> report."""
    dicom, bids = root / "dicom", root / "bids"
    write_session(dicom)  # default series: 01 localizer, 02 T1w, 03 BOLD
    _dcm2niix(dicom / "02", bids / "sub-01" / "anat", "sub-01_T1w")
    _dcm2niix(dicom / "03", bids / "sub-01" / "func", "sub-01_task-rest_bold")
    _fake_dwi(bids / "sub-01" / "dwi")
    gate = make_gate(bids)
    dest = root / "derivatives" / "bidsapp" / "sub-01"
    started = time.monotonic()
    html = write_subject_report(
        dest,
        bids_dir=bids,
        label="01",
        session="",
        gate=gate,
        heuristic="reproin",
        versions={"bidsapp": "0.1.0", "dcm2niix": "v1.0.20240202"},
        timings={"stage": 1.2, "convert": 8.5, "gate": 3.1, "total": 12.8},
    )
    return Built(bids, dest, html, gate, time.monotonic() - started)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_report(tmp_path_factory.mktemp("report"))


def test_report_references_every_png_and_nothing_outside(built: Built) -> None:
    text = built.html.read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', text)
    pngs = sorted(p.relative_to(built.dest).as_posix() for p in built.dest.rglob("*.png"))
    assert sorted(srcs) == pngs
    assert pngs == [
        "figures/sub-01_T1w.png",
        "figures/sub-01_dwi.png",
        "figures/sub-01_task-rest_bold.png",
    ]
    for link in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert link.startswith(("#", "figures/", "data:")), link
    print(f"report rendered in {built.seconds:.2f} s")


def test_thumbnails_are_not_blank(built: Built) -> None:
    for png in sorted((built.dest / "figures").glob("*.png")):
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        for third in np.array_split(pixels, 3, axis=1):  # every view, not just one
            assert third.std() > 15, f"{png.name} has a blank view"


def _marker_mm(nifti: Path) -> np.ndarray:
    """The marker's scanner (RAS mm) position: the brightest voxel of the first volume."""
    img: Any = nib.load(nifti)
    data = np.asarray(img.dataobj)
    data = data[..., 0] if data.ndim == 4 else data
    ijk = np.unravel_index(int(np.argmax(data)), data.shape)
    return (img.affine @ [*ijk, 1.0])[:3]


def _sides(panel: Panel, pixels: np.ndarray) -> set[str]:
    """The labels of the picture halves the panel's brightest blob lies in."""
    x0, y0, x1, y1 = panel.box
    crop = pixels[y0:y1, x0:x1]
    ys, xs = np.nonzero(crop >= 0.9 * crop.max())
    cx, cy = xs.mean(), ys.mean()
    assert 0 < len(xs) < crop.size / 10, "the marker is a small blob"
    return {
        panel.left if cx < crop.shape[1] / 2 else panel.right,
        panel.top if cy < crop.shape[0] / 2 else panel.bottom,
    }


@pytest.mark.parametrize("nifti", ["anat/sub-01_T1w.nii.gz", "func/sub-01_task-rest_bold.nii.gz"])
def test_marker_lies_on_the_side_labelled_left(built: Built, nifti: str, tmp_path: Path) -> None:
    path = built.bids / "sub-01" / nifti
    marker = _marker_mm(path)
    # the phantom's claim, in scanner space: RAS+ puts the subject's left at negative x
    assert marker[0] < 0 and marker[1] > 0 and marker[2] > 0
    thumb = render_slices(path, tmp_path / "cut.png", cut_mm=marker)
    pixels = np.asarray(Image.open(thumb.path).convert("L"), dtype=float)
    panels = {p.view: p for p in thumb.panels}
    assert panels["axial"].left == panels["coronal"].left == "L"  # neurological convention
    assert _sides(panels["axial"], pixels) == {"L", "A"}
    assert _sides(panels["coronal"], pixels) == {"L", "S"}
    assert _sides(panels["sagittal"], pixels) == {"A", "S"}


def test_labels_follow_the_affine_not_the_storage_order(built: Built, tmp_path: Path) -> None:
    # the same T1w stored with its x axis reversed: the data differ, the anatomy does not
    img: Any = nib.load(built.bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1
    flipped = nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ flip)
    nib.save(flipped, tmp_path / "las.nii.gz")
    assert nib.aff2axcodes(flipped.affine)[0] == "L"
    thumb = render_slices(
        tmp_path / "las.nii.gz", tmp_path / "las.png", cut_mm=_marker_mm(tmp_path / "las.nii.gz")
    )
    pixels = np.asarray(Image.open(thumb.path).convert("L"), dtype=float)
    axial = thumb.panels[2]
    assert (axial.view, axial.left) == ("axial", "L")  # still neurological
    assert _sides(axial, pixels) == {"L", "A"}


def test_dwi_shells_are_listed(built: Built) -> None:
    assert dwi_shells(built.bids / "sub-01" / "dwi" / "sub-01_dwi.bval") == [
        (0, 2),
        (1000, 3),
        (2000, 2),
    ]
    text = built.html.read_text(encoding="utf-8")
    assert "b=0 ×2, b=1000 ×3, b=2000 ×2" in text  # noqa: RUF001


def test_user_data_is_escaped(built: Built) -> None:
    text = built.html.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; T1 &amp; &quot;more&quot;" in text


def test_series_table_findings_and_timings(built: Built) -> None:
    text = built.html.read_text(encoding="utf-8")
    assert "not selected by the heuristic" in text
    # a converted series' note sits under its BIDS file, escaped
    note = html_escape(NOTE)
    assert f'sub-01_T1w</code></a><br><span class="muted">{note}</span>' in text
    assert 'href="#img-sub-01_T1w"' in text and 'id="img-sub-01_T1w"' in text
    # a name dcm2niix guesses otherwise is listed before the table, and under its file
    first = "Check these first: named otherwise than dcm2niix guesses: 3-func-bold"
    assert text.index(first) < text.index("not selected by the heuristic")
    assert 'bold</code></a><br><span class="reason">dcm2niix guesses dwi/FA</span>' in text
    assert "01/broken.dcm" in text and "not DICOM" in text
    # grouped: one row per code, with its count and the first location as the example
    assert text.count("<code>SIDECAR_KEY_RECOMMENDED</code>") == 1
    row = re.search(r"<code>SIDECAR_KEY_RECOMMENDED</code></td><td[^>]*>(\d+)</td>", text)
    assert row and row.group(1) == "2"
    assert "<code>/sub-01/</code>" in text
    assert "8.5 s" in text and "12.8 s" in text
    assert "reproin" in text and "v1.0.20240202" in text
    assert "<th>TR</th><td>2 s</td>" in text and "<th>volumes</th><td>6</td>" in text


def test_a_broken_image_does_not_break_the_report(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    (bids / "sub-02" / "anat").mkdir(parents=True)
    (bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz").write_bytes(b"not a nifti")
    gate = make_gate(bids, "02") | {"passed": False, "failure": "validation"}
    gate["validator"] = {"errors": None, "crashed": "deno: not found"}
    html = write_subject_report(
        tmp_path / "out",
        bids_dir=bids,
        label="02",
        session="",
        gate=gate,
        heuristic="reproin",
        versions={},
        timings={},
    )
    text = html.read_text(encoding="utf-8")
    assert "could not be drawn" in text and "deno: not found" in text
    assert "<img" not in text and "failed</span> validation" in text


def sample_entry(label: str, tr: float, state: str = "published") -> dict[str, Any]:
    gate = make_gate(Path("/nonexistent"), label)
    gate["converted_files"] = [
        f"sub-{label}/anat/sub-{label}_T1w.nii.gz",
        f"sub-{label}/anat/sub-{label}_T1w.json",
        f"sub-{label}/func/sub-{label}_task-rest_bold.nii.gz",
        f"sub-{label}/func/sub-{label}_task-rest_bold.json",
    ]
    sidecars = {
        f"sub-{label}/anat/sub-{label}_T1w.json": {"RepetitionTime": 2.3, "EchoTime": 0.00298},
        f"sub-{label}/func/sub-{label}_task-rest_bold.json": {
            "RepetitionTime": tr,
            "EchoTime": 0.03,
        },
    }
    return index_entry(gate, sidecars, state, f"sub-{label}/report.html")


def test_index_entry_counts() -> None:
    entry = sample_entry("01", 2.0)
    assert entry["label"] == "01" and entry["session"] == "" and entry["state"] == "published"
    assert entry["series"] == 2 and entry["skipped"] == 1 and entry["skipped_files"] == 1
    assert entry["warnings"] == 3 and entry["errors"] == 0
    assert entry["modalities"] == {"T1w": 1, "bold": 1}
    assert entry["params"]["task-rest_bold"] == {
        "RepetitionTime": 2.0,
        "EchoTime": 0.03,
        "dims": "32x32x12x6",
    }
    assert series_kind("sub-01/ses-2/func/sub-01_ses-2_task-rest_run-2_bold.nii.gz") == (
        "task-rest_bold"
    )


def test_index_lists_subjects_and_flags_a_different_tr() -> None:
    entries = [sample_entry("01", 2.0), sample_entry("02", 2.0), sample_entry("03", 3.0, "failed")]
    entries[2]["report"] = "javascript:alert(1)"
    text = render_index(entries)
    assert '<a href="sub-01/report.html">sub-01</a>' in text
    assert '<a href="sub-02/report.html">sub-02</a>' in text
    assert "javascript:" not in text and ">sub-03<" in text
    diffs = text.split("Parameters that differ")[1]
    row = re.search(r"<code>task-rest_bold</code></td><td>RepetitionTime</td><td>(.*?)</td>", diffs)
    assert row, diffs
    assert re.search(r"<b>2 s</b>.*sub-01, sub-02<br><b>3 s</b>.*sub-03", row.group(1))
    assert "T1w" not in diffs.split("<tbody>")[1]  # the same everywhere: not listed
    assert "differs: task-rest_bold RepetitionTime" in text.split("sub-03")[1].split("</tr>")[0]
    assert "<script" not in text
