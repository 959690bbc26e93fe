"""Which field-map correction fMRIPrep 25 plans for the BOLD runs of a dataset bidsapp published.

    .venv/bin/python benchmarks/fmriprep_plan.py --fmriprep /work/fmriprep-venv
        [--xa30] [--dicom EXAM ...] [--synthetic NAME[+bold] ...] [--bids DIR ...]

Each dataset (a BIDS dir; an exam folder, e.g. the real Siemens XA30 exam, or a synthetic exam of
`bidsapp_sandbox.exams.EXAMS`, converted with bidsapp `participant` + `group` into a temporary
dir) goes through `fmriprep --boilerplate-only`, which builds the whole workflow and writes
`logs/CITATION.md` without processing an image. Without a dataset argument: the XA30 exam and
every synthetic exam with field maps, `+bold` (a BOLD run appended, acquired last) for those
that have no BOLD run for fMRIPrep to plan. Per BOLD run the table shows whether the built
workflow corrects susceptibility distortion (fMRIPrep's "Stage 3" log line for that run), the
estimator fMRIPrep maps to the run (its own `map_fieldmap_estimation`, i.e. sdcflows'
`find_estimators` plus `B0FieldSource`/`IntendedFor`, run with fMRIPrep's interpreter), the
run's phase-encoding direction and total readout time as fMRIPrep reads them when it unwarps
(sdcflows' `get_trt`), and the boilerplate's sentences on B0 field maps. When no estimator is
found, sdcflows' debug messages say why.

A run planned with SDC but lacking `PhaseEncodingDirection` or a readout time is flagged: the
boilerplate still says it was corrected, but fMRIPrep's `DistortionParameters` then leaves
both unset and `ResampleSeries` shifts voxels by zero (fmriprep/interfaces/resampling.py), so
the run is silently not corrected (`--fallback-total-readout-time` supplies only the time).

Install fMRIPrep in its own venv (never into bidsapp's; bidsapp does not depend on it):

    python3 -m venv /work/fmriprep-venv
    /work/fmriprep-venv/bin/pip install 'fmriprep>=25,<26'

and run this script with bidsapp's venv (it imports the sandbox for the synthetic exams).

Stand-ins (only for this script's fMRIPrep runs, in --cache, default /tmp/fmriprep-plan-cache):
- TEMPLATEFLOW_HOME: TemplateFlow's own skeleton (empty files) in which the few templates the
  workflow builder opens are 2x2x2 zero NIfTIs; TEMPLATEFLOW_AUTOUPDATE=0. Any other template it
  asks for (a "with url: /tpl-..." download error) is stood in the same way and the run retried.
- FreeSurfer license: a dummy text file; `--fs-no-reconall`.
- External tools (ANTs, FSL, AFNI, FreeSurfer): fMRIPrep checks that `mri_convert` runs and that
  every command its workflow uses is on PATH before it writes the boilerplate; stub executables
  that exit 0 are put first on PATH. None runs: `--boilerplate-only` exits before execution.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

SHARED_DICOM = Path(
    os.environ.get("BIDSAPP_SHARED_DICOM", Path(__file__).resolve().parents[2] / "shared/dicom")
)
XA30 = SHARED_DICOM / "siemens_xa30_enh"  # ../shared/dicom beside the checkout, as the tests
SUBJECT = "01"
# every field-map form bidsapp writes; `+bold` where the exam has no BOLD run of its own
DEFAULT_SYNTHETIC = (
    "siemens_two_gre_sets", "philips_fieldmaps", "ge_b0map_dwi+bold",
    "siemens_pepolar_singles", "siemens_bold_se_epi",
)  # fmt: skip
# what fMRIPrep 25.2 asks of TemplateFlow while building the default workflow
TEMPLATES = {
    "MNI152NLin2009cAsym": (
        "res-01_T1w", "res-01_desc-brain_mask", "res-01_T2w", "res-01_label-brain_probseg",
        "res-01_desc-carpet_dseg", "res-02_desc-fMRIPrep_boldref", "res-02_desc-brain_mask",
    ),
    "OASIS30ANTs": (
        "res-01_T1w", "res-01_label-brain_probseg", "res-01_desc-BrainCerebellumExtraction_mask",
        "res-01_label-WM_probseg", "res-01_label-BS_probseg",
    ),
}  # fmt: skip
# the commands fMRIPrep 25.2 checks for on PATH (mri_convert: its FreeSurfer license check)
TOOLS = (
    "3dAutomask", "3dTshift", "3dUnifize", "Atropos", "DenoiseImage", "ImageMath",
    "MultiplyImages", "N4BiasFieldCorrection", "ThresholdImage", "antsAI", "antsApplyTransforms",
    "antsRegistration", "bet", "fast", "flirt", "fslmaths", "lta_convert", "mcflirt",
    "mri_convert", "mri_coreg", "mri_robust_template", "prelude", "topup",
)  # fmt: skip
# run inside fMRIPrep's interpreter: the estimator fMRIPrep maps to each BOLD run, and why not
PLANNER = """
import json, logging, sys
from bids import BIDSLayout
from niworkflows.utils.bids import collect_data
from fmriprep.workflows.base import map_fieldmap_estimation
from sdcflows.fieldmaps import clear_registry
from sdcflows.utils.epimanip import get_trt
from sdcflows.utils.wrangler import find_estimators
root, subject = sys.argv[1:]
messages = []
handler = logging.Handler()
handler.emit = lambda record: messages.append(record.getMessage())
logger = logging.getLogger("fmriprep_plan")  # sdcflows' own logger drops its debug messages
logger.addHandler(handler)
logger.setLevel(logging.DEBUG)
layout = BIDSLayout(root, validate=False)
estimators = find_estimators(layout=layout, subject=subject, fmapless=False, logger=logger)
found = [[e.bids_id, e.method.name, [s.path.name for s in e.sources]] for e in estimators]
clear_registry()
bold = [run if isinstance(run, list) else [run]
        for run in collect_data(layout, subject, bids_validate=False)[0]["bold"]]
# as fMRIPrep calls it by default: field maps not ignored, no fieldmap-less (SyN) estimation
estimators, mapping = map_fieldmap_estimation(
    layout, subject, None, bold, False, False, False, None)
methods = {e.bids_id: e.method.name for e in estimators}
plan = {run[0]: mapping.get(run[0]) for run in bold}
def unwarp(path):  # what fMRIPrep's DistortionParameters reads (default: no fallback time)
    meta = layout.get_metadata(path)
    times = []
    for estimate in (False, True):  # True: with --fallback-total-readout-time estimated
        try:
            times.append(get_trt(meta, path, use_estimate=estimate))
        except (KeyError, ValueError):
            times.append(None)
    return [meta.get("PhaseEncodingDirection"), *times]
plan = {b: f and [f, methods[f], *unwarp(b)] for b, f in plan.items()}
print(json.dumps({"plan": plan, "found": found, "why": messages}))
"""


def stand_ins(cache: Path, fmriprep: Path) -> dict[str, str]:
    """The environment of an fMRIPrep run: stand-in TemplateFlow home, stub tools on PATH."""
    home, stubs = cache / "templateflow", cache / "bin"
    env = {**os.environ, "TEMPLATEFLOW_HOME": str(home), "TEMPLATEFLOW_AUTOUPDATE": "0"}
    env["PATH"] = f"{stubs}{os.pathsep}{env['PATH']}"
    if not home.is_dir():  # TemplateFlow writes its skeleton when first imported
        python = str(fmriprep.parent / "python")
        subprocess.run([python, "-c", "import templateflow.api"], env=env, check=True)
    for template, names in TEMPLATES.items():
        for name in names:
            stand_in(home / f"tpl-{template}/tpl-{template}_{name}.nii.gz")
    stubs.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        stub(stubs / tool)
    (cache / "license.txt").write_text("stand-in FreeSurfer license\n")
    return env


def stand_in(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        image = nb.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))  # type: ignore[no-untyped-call]
        image.to_filename(path)


def stub(path: Path) -> None:
    path.write_text("#!/bin/sh\n# fmriprep_plan.py stand-in: fMRIPrep only checks it runs\n")
    path.chmod(0o755)


def convert(source: Path, out: Path) -> Path:
    """bidsapp participant + group of SOURCE/01 into OUT/bids; return the dataset."""
    secret = out / "date.secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    env = {**os.environ, "BIDSAPP_DATE_SECRET": str(secret)}
    bids = out / "bids"
    for level in (["participant", "--participant-label", SUBJECT], ["group"]):
        cmd = [sys.executable, "-m", "bidsapp.cli", str(source), str(bids), *level]
        done = subprocess.run([*cmd, "-w", str(out / "work")], env=env, capture_output=True,
                              text=True, check=False)  # fmt: skip
        if done.returncode:
            sys.exit(f"bidsapp {level[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return bids


def synthetic(name: str, out: Path) -> Path:
    """Write EXAMS[NAME] (NAME+bold: with a BOLD run of the vendor appended) and convert it."""
    from bidsapp_sandbox.exams import EXAMS, Series, write_session

    exam_name, plus_bold = name.removesuffix("+bold"), name.endswith("+bold")
    if exam_name not in EXAMS:
        sys.exit(f"unknown synthetic exam {exam_name!r}; expected one of {', '.join(EXAMS)}")
    exam = EXAMS[exam_name]
    kind = "siemens_bold" if exam.vendor == "siemens" else "bold"
    bold = (Series("fMRI_rest", kind, phase_positive=True),) if plus_bold else ()
    write_session(out / "source" / SUBJECT, series=(*exam.series, *bold), vendor=exam.vendor)
    return convert(out / "source", out)


def exam(folder: Path, out: Path) -> Path:
    (out / "source").mkdir()
    (out / "source" / SUBJECT).symlink_to(folder.resolve())
    return convert(out / "source", out)


def fmriprep_boilerplate(fmriprep: Path, bids: Path, out: Path, cache: Path) -> str:
    """Run `fmriprep --boilerplate-only`; learn any further stand-in it asks for and retry."""
    env = stand_ins(cache, fmriprep)
    cmd = [
        str(fmriprep), str(bids), str(out / "fmriprep"), "participant",
        "--participant-label", SUBJECT, "--boilerplate-only", "--notrack",
        "--fs-license-file", str(cache / "license.txt"), "--fs-no-reconall",
        "--skip-bids-validation", "--nprocs", "1", "-w", str(out / "fmriprep-work"),
    ]  # fmt: skip
    for _ in range(20):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        log = done.stdout + done.stderr
        (out / "fmriprep.log").write_text(log)
        if done.returncode == 0:
            return log
        templates = re.findall(r"with url: /(tpl-\S+)", log)
        tools = re.findall(r"^\s*\* (\S+) \(Interface: ", log, re.MULTILINE)
        if not templates and not tools:
            return log
        for path in templates:
            stand_in(Path(env["TEMPLATEFLOW_HOME"]) / path)
        for tool in tools:
            stub(cache / "bin" / tool)
    return log


def built_runs(log: str) -> dict[str, bool]:
    """Per BOLD run, whether fMRIPrep's built workflow has the field-map stage (Stage 3)."""
    runs: dict[str, bool] = {}
    current = ""
    for line in log.splitlines():
        if m := re.search(r"(?:reference|file\(s\)) found for (\S+_bold\.nii(?:\.gz)?)", line):
            current = m[1]
        elif m := re.search(r"Using single-band reference file\(s\) (\S+?)\.$", line):
            current = m[1].split(",")[0].replace("_sbref.", "_bold.")
        elif "Stage 3: Adding fieldmap reconstruction" in line:
            runs[current] = True
        elif "No fieldmap correction - skipping Stage 3" in line:
            runs[current] = False
    return runs


def boilerplate_sdc(out: Path) -> str:
    """The boilerplate's sentences about B0 field maps (empty when it has none)."""
    citation = out / "fmriprep/logs/CITATION.md"
    if not citation.exists():
        return ""
    text = re.sub(r"\s+", " ", citation.read_text()).replace("<sub>0</sub>", "0")
    sentences = re.split(r"(?<=\.) (?=[A-Z*])", text)
    keep = [s for s in sentences if re.search(r"fieldmap|B\*?0\b|phase-encoding|PEPOLAR", s)]
    return " ".join(keep).replace("Preprocessing of B0 inhomogeneity mappings : ", "")


def plan(fmriprep: Path, bids: Path) -> dict[str, Any]:
    """fMRIPrep's estimator per BOLD run, every estimator sdcflows finds, sdcflows' messages."""
    python = str(fmriprep.parent / "python")
    done = subprocess.run([python, "-c", PLANNER, str(bids), SUBJECT], capture_output=True,
                          text=True, check=True)  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def failure(log: str) -> str:
    """fMRIPrep's own last word when it could not build the workflow."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(\w+Error|ERROR|CRITICAL)\b", line)]
    return (errors or lines or ["(no output)"])[-1]


def report(name: str, fmriprep: Path, bids: Path, out: Path, cache: Path) -> None:
    log = fmriprep_boilerplate(fmriprep, bids, out, cache)
    built = built_runs(log)
    planned = plan(fmriprep, bids)
    mapping: dict[str, list[str] | None] = planned["plan"]
    sdc = boilerplate_sdc(out)
    if not mapping:
        print(f"{name}\t(no BOLD run)\t-\t-\t-")
    for path, estimator in mapping.items():
        # the built workflow's Stage 3 for this run; absent when fMRIPrep could not build it
        workflow = {True: "SDC", False: "no SDC", None: "not built"}[built.get(Path(path).name)]
        planned_id, inputs = "none", "-"
        if estimator:
            key, method, pe_dir, readout, estimated = estimator
            planned_id = f"{key} ({method})"
            missing = [f for f, v in (("PhaseEncodingDirection", pe_dir), ("readout time",
                                      readout)) if v is None]  # fmt: skip
            inputs = f"{pe_dir} {readout:.4f} s" if not missing else (
                f"MISSING {' and '.join(missing)}: not corrected at run time")  # fmt: skip
            if readout is None and estimated is not None:
                inputs += f" (--fallback-total-readout-time estimated: {estimated:.4f} s)"
        print(f"{name}\t{Path(path).relative_to(bids)}\t{workflow}\t{planned_id}\t{inputs}")
    print(f"  boilerplate: {sdc or '(nothing on field maps)'}")
    if not built:
        print(f"  fMRIPrep did not build the workflow: {failure(log)}")
    found = [f"{key} ({method}: {', '.join(files)})" for key, method, files in planned["found"]]
    print(f"  sdcflows finds: {'; '.join(found) or 'no estimator'}")
    if not mapping or not all(mapping.values()):
        for message in dict.fromkeys(planned["why"]):
            print(f"  sdcflows: {' '.join(message.replace('- ', '').split())}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fmriprep",
        type=Path,
        default=Path("/work/fmriprep-venv"),
        help="fMRIPrep's venv, or the fmriprep script in it (the venv's python runs the planner)",
    )
    parser.add_argument("--bids", type=Path, nargs="*", default=[], help="published datasets")
    parser.add_argument("--dicom", type=Path, nargs="*", default=[], help="exam folders")
    parser.add_argument("--synthetic", nargs="*", default=[], help="EXAMS names, [+bold]")
    parser.add_argument("--xa30", action="store_true", help=f"the real exam {XA30}")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fmriprep-plan-cache"))
    parser.add_argument("--work", type=Path, help="kept: datasets, logs (default: new temp dir)")
    args = parser.parse_args(argv)
    if args.fmriprep.is_dir():
        args.fmriprep = args.fmriprep / "bin" / "fmriprep"
    if not args.fmriprep.is_file():
        parser.error(f"no fMRIPrep at {args.fmriprep}: install it (see this script's docstring)")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="fmriprep-plan-"))
    if not (args.bids or args.dicom or args.synthetic or args.xa30):
        args.xa30, args.synthetic = True, list(DEFAULT_SYNTHETIC)
    args.dicom = [XA30] * args.xa30 + args.dicom
    jobs: list[tuple[str, Path | str]] = [(str(b), b) for b in args.bids]
    jobs += [(f"dicom:{d.name}", d) for d in args.dicom] + [(n, n) for n in args.synthetic]
    print("dataset\tBOLD run\tfMRIPrep workflow\testimator (B0FieldIdentifier)"
          "\tunwarp inputs (PE direction, readout time)")  # fmt: skip
    for index, (name, what) in enumerate(jobs):
        out = work / f"{index}-{Path(name).name.replace(':', '-')}"
        out.mkdir(parents=True)
        if isinstance(what, str):
            bids = synthetic(what, out)
        else:
            bids = exam(what, out) if name.startswith("dicom:") else what.resolve()
        report(name, args.fmriprep, bids, out, args.cache)
    print(f"(datasets and fMRIPrep logs kept in {work})")


if __name__ == "__main__":
    main()
