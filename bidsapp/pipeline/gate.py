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
from bidsapp.pipeline.vocabulary import own_words_among
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
    dataset: str = ""  # '' for the dataset itself, '/derivatives/x/' for a derivative in it
    sub_code: str = ""  # what the code is about, e.g. the key of JSON_KEY_RECOMMENDED
    meaning: str = ""  # the validator's text for the code (its codeMessages)


@dataclass
class Validation:
    """Everything one validator run said: every finding of the dataset and of each derivative
    in it (with -r), its summary, and its exit code (16 when it found errors)."""

    findings: list[Finding]
    summary: dict[str, Any]
    exit_code: int

    @property
    def errors(self) -> list[Finding]:
        found = [f for f in self.findings if f.severity == "error"]
        if self.exit_code and not found:  # never trust a report that contradicts the exit code
            found = [Finding("VALIDATOR_EXIT", "error", "", f"exited {self.exit_code}")]
        return found

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]


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


def validate(dataset: Path, report_path: Path, *, recursive: bool = False) -> Validation:
    """Run the BIDS validator on a dataset (`recursive`: derivatives too, as `-r`): the one
    place its output is read, so nobody counts the top level and misses a derivative.

    An absent or crashing validator raises ToolFailed.
    """
    done = run(
        ["bids-validator-deno", str(dataset), "--format", "json", "-o", str(report_path)]
        + (["-r"] if recursive else []),
        ok_codes=(0, 16),
        timeout=1800,
    )
    data = json.loads(report_path.read_text())
    return Validation(_findings(data, ""), data.get("summary", {}), done.returncode)


def _findings(data: dict[str, Any], dataset: str) -> list[Finding]:
    """The issues of one report and, depth first, of every derivative summary in it."""
    issues = data.get("issues", {})
    meanings = issues.get("codeMessages") or {}
    found = [
        Finding(
            str(issue.get("code", "")),
            str(issue.get("severity", "")),
            str(issue.get("location", "")),
            str(issue.get("issueMessage", "") or ""),
            dataset,
            str(issue.get("subCode", "") or ""),
            str(meanings.get(issue.get("code"), "") or "").strip(),
        )
        for issue in issues.get("issues", [])
    ]
    for name, nested in (data.get("derivativesSummary") or {}).items():
        found += _findings(nested, f"{dataset.rstrip('/')}{name}")
    return found


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
        own = own_words_among(ids.name_words())
        if derivatives.is_dir():
            hits += scan_tree(derivatives, ids.except_words(own))
    report.phi = {
        **ids.to_json(),
        "name_words_also_bidsapp_words": ids.name_words_in(own),
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
        result = validate(dataset, work / "gate" / "validator.json")
    except (ToolFailed, json.JSONDecodeError, OSError) as exc:
        report.findings = []
        report.validator = {"errors": None, "crashed": str(exc)[:500]}
        return
    report.findings = [*result.findings, *(e for e in result.errors if e.code == "VALIDATOR_EXIT")]
    report.validator = {
        "errors": len(result.errors),
        "warnings": len(result.warnings),
        "summary": result.summary,
    }


def recheck(report: GateReport, derivatives: Path, ids: Identifiers) -> None:
    """Scan what was written after the gate (the visual report) with the same rules: a name
    word that is also a word of bidsapp's own text is no hit there (copied values in it were
    redacted with every identifier)."""
    hits = scan_tree(derivatives, ids.except_words(own_words_among(ids.name_words())))
    if hits:
        report.phi["hits"] = [*report.phi.get("hits", []), *(asdict(h) for h in hits)]
        report.failure, report.exit_code, report.passed = "patient data found", 65, False
