"""One bidsapp participant job per exam against what a user runs without it, side by side.

For every case folder (one exam each) of `--cases` (the shared DICOM cases, or a folder of the
15-session corpus that `../shared/corpus/` rebuilds), measure wall time and peak RSS of:

1. ``bidsapp SOURCE OUTPUT participant`` for that case mapped to sub-01, local → local, with
   everything a job does (stage, dcm2niix pass, heudiconv, de-identify, validator, PHI scan,
   report, publish);
2. ``heudiconv --files CASE -s 01 -f convertall -c dcm2niix --bids notop --minmeta -g all``:
   what a user runs without bidsapp's heuristic;
3. ``dcm2niix -z y -b y`` on the case folder, for scale.

Target per case: bidsapp ≤ 1.3 x heudiconv-with-convertall + 2 s, and peak RSS ≤ 500 MB. The
job's own per-step timings (its status record) follow each table: where the time goes.

Peak RSS is ``ru_maxrss`` from ``os.wait4`` on the child: the largest resident set of the child
or of any descendant it waited for (not a sum). Linux starts a child's peak at the resident set of
the process that forked it (the peak survives exec), so this script imports nothing heavy.
With ``--repeat N`` the best wall time is kept, and the largest peak.

This is a report, not a test: it always exits 0 (except for a usage error) and CI never runs it.

    .venv/bin/python benchmarks/convert.py [--cases DIR] [--only a,b] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = REPO.parent / "shared" / "dicom"
BIN = Path(sys.executable).parent
QUIET_ENV = {"NO_ET": "1", "NIPYPE_NO_ET": "1"}
TOOLS = ("bidsapp", "convertall", "dcm2niix")
FACTOR, SLACK_S, PEAK_MB = 1.3, 2.0, 500.0  # bidsapp ≤ FACTOR x convertall + SLACK_S


@dataclass
class Measure:
    """The runs of one command on one case: best wall, largest peak, last exit code."""

    wall_s: float = float("inf")
    peak_mb: float = 0.0
    code: int | None = None
    steps: dict[str, float] = field(default_factory=dict)
    images: int = 0  # NIfTI files it wrote
    error: str = ""  # the last error line of a run that failed

    def add(self, wall: float, peak: float, code: int) -> None:
        self.wall_s = min(self.wall_s, wall)
        self.peak_mb = max(self.peak_mb, peak)
        self.code = code


def run_measured(argv: Sequence[str], *, cwd: Path, log: Path) -> tuple[float, float, int]:
    """Run argv to completion: wall seconds, peak RSS (MB) of it and its descendants, code."""
    env = {**os.environ, **QUIET_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return wall, kib / 1024, proc.returncode


def argv_for(tool: str, cases: Path, case: str, tmp: Path) -> list[str]:
    if tool == "bidsapp":
        subject_map = tmp / "map.tsv"
        subject_map.write_text(f"source\tparticipant\tsession\n{case}\t01\t\n")
        return [str(BIN / "bidsapp"), str(cases), str(tmp / "output"), "participant",
                "--subject-map", str(subject_map), "--work-dir", str(tmp / "work"),
                "--date-secret", str(tmp / "secret"), "--participant-label", "01"]  # fmt: skip
    if tool == "convertall":
        return [str(BIN / "heudiconv"), "--files", str(cases / case), "-s", "01", "-f",
                "convertall", "-c", "dcm2niix", "--bids", "notop", "--minmeta", "-o",
                str(tmp / "heudiconv"), "-g", "all"]  # fmt: skip
    (tmp / "dcm2niix").mkdir()
    return [str(BIN / "dcm2niix"), "-z", "y", "-b", "y", "-o", str(tmp / "dcm2niix"),
            str(cases / case)]  # fmt: skip


def bench_case(cases: Path, case: str, repeat: int) -> dict[str, Measure]:
    results = {tool: Measure() for tool in TOOLS}
    for n in range(1, repeat + 1):
        for tool in TOOLS:
            print(f"  {case}: {tool} run {n}/{repeat}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix=f"bench-{tool}-") as name:
                tmp = Path(name)
                wall, peak, code = run_measured(
                    argv_for(tool, cases, case, tmp), cwd=tmp, log=tmp / "log.txt"
                )
                m = results[tool]
                m.images = sum(1 for _ in tmp.rglob("*.nii*"))
                if code:
                    m.error = _last_error(tmp / "log.txt")
                if tool == "bidsapp" and wall < m.wall_s:
                    status = tmp / "output" / ".bidsapp" / "status" / "sub-01.json"
                    if status.is_file():
                        m.steps = json.loads(status.read_text()).get("timings", {})
                m.add(wall, peak, code)
    return results


def _last_error(log: Path) -> str:
    """The last line of a failed run's output that names an error (heudiconv's traceback)."""
    lines = log.read_text(errors="replace").splitlines()
    found = [ln.strip() for ln in lines if re.search(r"Error|error:|Exception", ln)]
    return (found or lines or ["?"])[-1][:160]


def report_case(case: str, files: int, res: dict[str, Measure]) -> bool | None:
    """Print one case's table; True when bidsapp met both targets, None when there is no
    baseline (convertall stops before it converts anything)."""
    b, h = res["bidsapp"], res["convertall"]
    allowed = FACTOR * h.wall_s + SLACK_S
    met = b.wall_s <= allowed and b.peak_mb <= PEAK_MB and b.code == 0
    print(f"### {case} ({files} files)\n")
    print("| run | wall s | peak MB | exit | images |\n|---|---:|---:|---:|---:|")
    for tool in TOOLS:
        m = res[tool]
        print(f"| {tool} | {m.wall_s:.2f} | {m.peak_mb:.0f} | {m.code} | {m.images} |")
    for tool in TOOLS:
        if res[tool].error:
            print(f"\n{tool} failed: `{res[tool].error}`")
    ratio = b.wall_s / h.wall_s if h.wall_s else float("nan")
    verdict = "PASS" if met else "FAIL"
    if h.code and not h.images:
        verdict, met = "NO BASELINE (convertall converts nothing)", None
    print(
        f"\nbidsapp / convertall = {ratio:.2f}x; allowed {FACTOR} x {h.wall_s:.2f} + {SLACK_S:g}"
        f" = {allowed:.2f} s; peak {b.peak_mb:.0f} MB (≤ {PEAK_MB:.0f}) → **{verdict}**"
    )
    if b.steps:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in b.steps.items())
        print(f"\nbidsapp steps (s): {steps}\n")
    return met


def machine_line() -> str:
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (
        f"machine: nproc {len(os.sched_getaffinity(0))}, {platform.machine()} "
        f"{platform.system()} {platform.release()}, python {platform.python_version()}; "
        f"peak-RSS floor {floor:.0f} MB"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        type=Path,
        default=DEFAULT_CASES,
        help=f"a folder of exam folders: the shared cases (default: {DEFAULT_CASES}) or a corpus",
    )
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per command; best wall kept")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.cases = args.cases.resolve()
    if not args.cases.is_dir():
        parser.error(f"no folder of cases at {args.cases}")
    found = sorted(p.name for p in args.cases.iterdir() if p.is_dir() and p.name[0] != ".")
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in found]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(found)}")
    args.case_list = wanted or found
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"## bidsapp vs heudiconv + convertall vs dcm2niix ({args.cases}, best of {args.repeat})\n"
    )
    verdicts = []
    for case in args.case_list:
        files = sum(1 for p in (args.cases / case).rglob("*") if p.is_file())
        verdicts.append(report_case(case, files, bench_case(args.cases, case, args.repeat)))
    print(machine_line())
    compared = [v for v in verdicts if v is not None]
    print(
        f"\ntargets met on {sum(compared)}/{len(compared)} cases with a baseline "
        f"({len(verdicts) - len(compared)} without: convertall converts nothing there)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
