"""Benchmark one bidsapp participant job against heudiconv and dcm2niix run alone.

For every case folder of the shared DICOM sessions, measure wall time and peak RSS of:

1. ``bidsapp SOURCE OUTPUT participant`` for that case mapped to sub-01 (local → local);
2. ``heudiconv`` with the arguments and heuristic bidsapp itself uses;
3. ``dcm2niix -z y -b y`` on the case folder.

Peak RSS is ``ru_maxrss`` from ``os.wait4`` on the child: the largest resident set of the child
or of any descendant it waited for (not a sum). Linux starts a child's peak at the resident set of
the process that forked it (the peak survives exec), so this script keeps itself lean: bidsapp is
imported only in a short-lived helper process, and the floor this leaves is printed.
With ``--repeat N`` the best wall time is kept; the peak RSS is the largest seen over the repeats
and the exit code is the last one.

This is a report, not a test: it always exits 0 (except for a usage error) and CI never runs it.

    .venv/bin/python benchmarks/convert.py [--shared DIR] [--cases a,b] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "dicom"
BIN = Path(sys.executable).parent
QUIET_ENV = {"NO_ET": "1", "NIPYPE_NO_ET": "1"}
TOOLS = ("bidsapp", "heudiconv", "dcm2niix")
FACTOR = 1.15  # target: bidsapp ≤ FACTOR x heudiconv + SLACK_S
SLACK_S = 2.0


@dataclass
class Sample:
    """One measured run of one command."""

    wall_s: float
    peak_mb: float
    code: int


@dataclass
class Measure:
    """The runs of one command on one case, folded: best wall, largest peak, last exit code."""

    wall_s: float = float("inf")
    peak_mb: float = 0.0
    code: int | None = None

    def add(self, sample: Sample) -> None:
        self.wall_s = min(self.wall_s, sample.wall_s)
        self.peak_mb = max(self.peak_mb, sample.peak_mb)
        self.code = sample.code


def run_measured(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None, log: Path
) -> Sample:
    """Run argv to completion; wall time, peak RSS (MB) of it and its waited descendants, code."""
    full_env = dict(os.environ)
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(env or {})
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here: keep Popen from waiting for it again
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return Sample(wall, kib / 1024, code)


def run_bidsapp(shared: Path, case: str, tmp: Path) -> Sample:
    subject_map = tmp / "map.tsv"
    subject_map.write_text(f"source\tparticipant\tsession\n{case}\t01\t\n")
    argv = [
        str(BIN / "bidsapp"),
        str(shared),
        str(tmp / "output"),  # fresh every run: tmp is new
        "participant",
        "--subject-map",
        str(subject_map),
        "--work-dir",
        str(tmp / "work"),
        "--participant-label",
        "01",
    ]
    return run_measured(argv, cwd=tmp, log=tmp / "bidsapp.log")


def run_heudiconv(case_dir: Path, template: list[str], tmp: Path) -> Sample:
    """heudiconv alone, with exactly the command line bidsapp runs (bidsapp.pipeline.convert)."""
    subst = {"@FILES@": str(case_dir), "@OUT@": str(tmp / "heudiconv")}
    argv = [str(BIN / "heudiconv"), *(subst.get(a, a) for a in template[1:])]
    return run_measured(argv, cwd=tmp, env=QUIET_ENV, log=tmp / "heudiconv.log")


def run_dcm2niix(case_dir: Path, tmp: Path) -> Sample:
    out = tmp / "dcm2niix"
    out.mkdir()
    argv = [str(BIN / "dcm2niix"), "-z", "y", "-b", "y", "-o", str(out), str(case_dir)]
    return run_measured(argv, cwd=tmp, log=tmp / "dcm2niix.log")


def bench_case(shared: Path, case: str, heudiconv: list[str], repeat: int) -> dict[str, Measure]:
    results = {tool: Measure() for tool in TOOLS}
    case_dir = shared / case
    for n in range(1, repeat + 1):
        for tool in TOOLS:
            print(f"  {case}: {tool} run {n}/{repeat}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix=f"bench-{tool}-") as name:
                tmp = Path(name)
                if tool == "bidsapp":
                    sample = run_bidsapp(shared, case, tmp)
                elif tool == "heudiconv":
                    sample = run_heudiconv(case_dir, heudiconv, tmp)
                else:
                    sample = run_dcm2niix(case_dir, tmp)
            results[tool].add(sample)
    return results


def allowed_s(heudiconv_s: float) -> float:
    return FACTOR * heudiconv_s + SLACK_S


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def report_case(case: str, res: dict[str, Measure]) -> bool:
    """Print the Markdown table of one case; True when bidsapp met the target."""
    b, h, d = res["bidsapp"], res["heudiconv"], res["dcm2niix"]
    limit = allowed_s(h.wall_s)
    met = b.wall_s <= limit
    print(f"### {case}\n")
    print("| run | wall s | peak MB | exit |")
    print("|---|---:|---:|---:|")
    for tool in TOOLS:
        m = res[tool]
        print(f"| {tool} | {m.wall_s:.2f} | {m.peak_mb:.0f} | {m.code} |")
    for name, other in (("heudiconv", h), ("dcm2niix", d)):
        wall, peak = ratio(b.wall_s, other.wall_s), ratio(b.peak_mb, other.peak_mb)
        print(f"| bidsapp / {name} | {wall} | {peak} | |")
    verdict = "PASS" if met else "FAIL"
    print(
        f"\ntarget bidsapp ≤ {FACTOR} x heudiconv + {SLACK_S:g} s: "
        f"{b.wall_s:.2f} s ≤ {limit:.2f} s allowed → **{verdict}**\n"
    )
    return met


FACTS = """
import json
from pathlib import Path
from bidsapp.heuristic.loader import load_heuristic
from bidsapp.pipeline.convert import heudiconv_argv
from bidsapp.tools import versions
argv = heudiconv_argv([Path("@FILES@")], "01", "", load_heuristic("reproin").path, Path("@OUT@"))
print(json.dumps({"argv": argv, "versions": versions()}))
"""


def bidsapp_facts() -> tuple[list[str], dict[str, str]]:
    """bidsapp's heudiconv command line (default heuristic) and tool versions, from a helper.

    Importing bidsapp here would grow this process to ~50 MB, and every child would then
    report at least that as its peak RSS.
    """
    proc = subprocess.run([sys.executable, "-c", FACTS], capture_output=True, text=True, check=True)
    facts = json.loads(proc.stdout)
    return list(facts["argv"]), dict(facts["versions"])


def rss_floor_mb() -> float:
    """This process's peak RSS: the smallest peak any child measured here can report."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_line(v: Mapping[str, str]) -> str:
    tools = ", ".join(f"{k} {val}" for k, val in v.items() if k != "python")
    return (
        f"machine: nproc {len(os.sched_getaffinity(0))}, {platform.machine()} "
        f"{platform.system()} {platform.release()}, python {v['python']}; {tools}; "
        f"peak-RSS floor {rss_floor_mb():.0f} MB (a peak at the floor means 'at most this')"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared",
        type=Path,
        default=DEFAULT_SHARED,
        help=f"case folders (default: {DEFAULT_SHARED})",
    )
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per command; best wall kept")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.shared = args.shared.resolve()
    if not args.shared.is_dir():
        parser.error(f"no shared DICOM folder at {args.shared}")
    found = sorted(p.name for p in args.shared.iterdir() if p.is_dir() and p.name[0] != ".")
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in found]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(found)}")
    args.case_list = wanted or found
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    heudiconv, tool_versions = bidsapp_facts()
    print(f"## bidsapp vs heudiconv vs dcm2niix ({args.shared}, repeat {args.repeat})\n")
    met = 0
    for case in args.case_list:
        results = bench_case(args.shared, case, heudiconv, args.repeat)
        met += report_case(case, results)
    print(machine_line(tool_versions))
    print(f"\ntarget met on {met}/{len(args.case_list)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
