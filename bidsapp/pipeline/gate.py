"""Gate: validator + expectations + PHI scan over everything that would be published.

Gates fail closed: a missing or crashing validator is a failed gate, and nothing publishes a
subject whose gate failed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.pipeline.setaside import owners, set_aside
from bidsapp.pipeline.vocabulary import own_words
from bidsapp.privacy.phi import Identifiers, scan_tree
from bidsapp.timing import Timings
from bidsapp.tools import ToolFailed, run

BIDS_VERSION = "1.10.0"


@dataclass
class Finding:
    """One validator issue, as the validator words it."""

    code: str
    severity: str
    location: str
    message: str = ""


@dataclass
class GateReport:
    """The verdict on one subject (or session), published with it, PHI-free."""

    subject: str
    session: str
    passed: bool = False
    failure: str = ""  # 'validation', 'nothing converted', 'expectations', 'phi'
    exit_code: int = 0
    converted_files: list[str] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    validator: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    missing_expected: list[str] = field(default_factory=list)
    deid: dict[str, Any] = field(default_factory=dict)
    phi: dict[str, Any] = field(default_factory=dict)
    set_aside: list[dict[str, Any]] = field(default_factory=list)  # series taken out, and why

    def to_json(self, ids: Identifiers | None) -> str:
        """The report as JSON, passed once more through redaction (descriptions can hold PHI)."""
        text = json.dumps(asdict(self), indent=2, ensure_ascii=False)
        return ids.redact(text) if ids is not None else text


def validate(
    dataset: Path, report_path: Path, *, recursive: bool = False
) -> tuple[list[Finding], dict[str, Any]]:
    """Run the BIDS validator on a dataset (`recursive`: derivatives too, as `-r`).

    An absent or crashing validator raises ToolFailed.
    """
    run(
        ["bids-validator-deno", str(dataset), "--format", "json", "-o", str(report_path)]
        + (["-r"] if recursive else []),
        ok_codes=(0, 16),
        timeout=1800,
    )
    data = json.loads(report_path.read_text())
    findings = []
    for issue in data.get("issues", {}).get("issues", []):
        findings.append(
            Finding(
                str(issue.get("code", "")),
                str(issue.get("severity", "")),
                str(issue.get("location", "")),
                str(issue.get("issueMessage", "") or ""),
            )
        )
    return findings, data.get("summary", {})


def wrap_subject(bids_root: Path, label: str, into: Path) -> Path:
    """A minimal dataset around the subject (symlinked) for the validator."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    (into / "dataset_description.json").write_text(
        json.dumps({"Name": "bidsapp gate", "BIDSVersion": BIDS_VERSION}) + "\n"
    )
    os.symlink(bids_root / f"sub-{label}", into / f"sub-{label}", target_is_directory=True)
    return into


def run_gate(
    report: GateReport,
    *,
    bids_root: Path,
    derivatives: Path,
    sourcedata: Path,
    ids: Identifiers,
    expected: tuple[str, ...],
    work: Path,
    strict: bool = False,
    timings: Timings | None = None,
) -> GateReport:
    """Fill in the report and decide; the caller publishes only when `passed`.

    Unless `strict`, a series the validator finds errors in is set aside (setaside.py) and the
    rest is validated again; the subject fails only when nothing valid remains.
    """
    timings = timings or Timings()
    subject_dir = bids_root / f"sub-{report.subject}"
    if subject_dir.is_dir():
        with timings.step("gate/validator"):
            _validate_subject(report, bids_root, work)
        errors = [(f.code, f.location) for f in report.findings if f.severity == "error"]
        if errors and not strict and report.validator.get("errors"):
            against, orphans = owners(report.series, errors)
            if against and not orphans:
                taken = set_aside(bids_root, report.subject, report.series, against)
                report.set_aside = [asdict(s) for s in taken]
                report.converted_files = sorted(
                    p.relative_to(bids_root).as_posix() for p in bids_root.rglob("*") if p.is_file()
                )
                with timings.step("gate/validator"):
                    _validate_subject(report, bids_root, work)
    if report.validator.get("crashed"):
        report.failure, report.exit_code = "validator could not run", 16
    elif report.validator.get("errors"):
        report.failure, report.exit_code = "validation", 16
    nifti = [f for f in report.converted_files if f.endswith((".nii", ".nii.gz"))]
    if not nifti and report.set_aside:
        report.failure, report.exit_code = "every converted series fails validation", 16
    elif not nifti:
        report.failure, report.exit_code = "nothing converted", 65
    for pattern in expected:
        if not any(
            fnmatch.fnmatch(f, f"sub-{report.subject}/{pattern}") for f in report.converted_files
        ):
            report.missing_expected.append(pattern)
    if report.missing_expected and report.failure in ("", "validation"):
        report.failure, report.exit_code = "expected series missing", 65

    # The converted tree and sourcedata are copied from DICOM: every identifier counts there.
    # derivatives/ is bidsapp's own text (report, verdict), where copied values arrive redacted.
    copied = [root for root in (bids_root, sourcedata) if root.is_dir()]
    with timings.step("gate/phi scan"):
        hits = [hit for root in copied for hit in scan_tree(root, ids)]
        if derivatives.is_dir():
            hits += scan_tree(derivatives, ids.except_words(own_words()))
    report.phi = {
        **ids.to_json(),
        "name_words_also_bidsapp_words": ids.name_words_in(own_words()),
        "hits": [asdict(h) for h in hits],
    }
    if hits:  # named above any other failure: it is the one that must never be missed
        report.failure, report.exit_code = "patient data found", 65
    report.passed = not report.failure
    return report


def _validate_subject(report: GateReport, bids_root: Path, work: Path) -> None:
    """The validator on the subject alone (wrapped in a minimal dataset)."""
    dataset = wrap_subject(bids_root, report.subject, work / "gate" / "dataset")
    try:
        findings, summary = validate(dataset, work / "gate" / "validator.json")
    except (ToolFailed, json.JSONDecodeError, OSError) as exc:
        report.findings = []
        report.validator = {"errors": None, "crashed": str(exc)[:500]}
        return
    report.findings = findings
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    report.validator = {"errors": errors, "warnings": warnings, "summary": summary}


def recheck(report: GateReport, derivatives: Path, ids: Identifiers) -> None:
    """Scan what was written after the gate (the visual report) with the same rules: a name
    word that is also a word of bidsapp's own text is no hit there (copied values in it were
    redacted with every identifier)."""
    hits = scan_tree(derivatives, ids.except_words(own_words()))
    if hits:
        report.phi["hits"] = [*report.phi.get("hits", []), *(asdict(h) for h in hits)]
        report.failure, report.exit_code, report.passed = "patient data found", 65, False
