"""Scale figures: `--jobs`, the SLURM scripts' Drive rates, and many jobs against one quota.

1. `participant --jobs 1` vs `--jobs 4` over the same small synthetic subjects (local → local):
   wall times and their ratio on this machine.
2. For 1,000 subjects and array limits 10/50/200: the `--drive-rps` each task gets from the
   scripts `bidsapp slurm write` generates (read back from the script), and the aggregate when
   the array runs at its limit, against the budget.
3. 20 participant jobs at once (`--jobs 20`) against one Drive emulator that refuses requests
   beyond a per-token quota: how many jobs failed for rate limits, the quota rejections the
   emulator counted, and its busiest one-second window.

A report, not a test: CI never runs it.

    .venv/bin/python benchmarks/scale.py [--subjects 8] [--repeat 2]
        [--drive-jobs 20] [--only jobs|array|drive]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bidsapp_sandbox.exams import Series, write_session

BIDSAPP = [sys.executable, "-m", "bidsapp.cli"]
T1 = (Series("anat-T1w", "t1w"),)


def run(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    proc = subprocess.run([*BIDSAPP, *argv], capture_output=True, text=True, env=env, check=False)
    return time.monotonic() - t0, proc


def exams(folder: Path, n: int) -> Path:
    for k in range(1, n + 1):
        write_session(folder / f"{k:02d}", series=T1, seed=k)
    return folder


def jobs_ratio(tmp: Path, subjects: int, repeat: int, env: dict[str, str]) -> None:
    source = exams(tmp / "source", subjects)
    print(f"## --jobs 1 vs --jobs 4 ({subjects} synthetic T1w subjects, local → local)\n")
    print(f"best of {repeat}, runs interleaved (the machine may be shared)\n")
    print("| jobs | wall s (each run) | best | exit |\n|---:|---|---:|---:|")
    walls: dict[int, list[float]] = {1: [], 2: [], 4: []}
    codes: dict[int, int] = {}
    for n in range(repeat):
        for jobs in (1, 2, 4) if n % 2 == 0 else (4, 2, 1):
            out = tmp / f"out-{jobs}-{n}"
            wall, proc = run(
                [str(source), str(out), "participant", "--jobs", str(jobs),
                 "--work-dir", str(tmp / "work")],
                env,
            )  # fmt: skip
            walls[jobs].append(wall)
            codes[jobs] = proc.returncode
    for jobs, times in walls.items():
        each = ", ".join(f"{t:.1f}" for t in times)
        print(f"| {jobs} | {each} | {min(times):.1f} | {codes[jobs]} |")
    ratio = min(walls[1]) / min(walls[4])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nratio jobs1/jobs4 = {ratio:.2f} on {os.cpu_count()} CPUs (load now {load})\n")


def array_rates(tmp: Path, env: dict[str, str], budget: float = 10.0) -> None:
    subject_map = tmp / "map-1000.tsv"
    rows = "".join(f"exam-{k:04d}\t{k:04d}\t\n" for k in range(1, 1001))
    subject_map.write_text("source\tparticipant\tsession\n" + rows)
    (tmp / "empty").mkdir()
    print(f"## SLURM: 1,000 subjects, Drive budget {budget:g} requests/s\n")
    print("| array limit | --array | per-task rps | aggregate at the limit | of budget |")
    print("|---:|---|---:|---:|---:|")
    for limit in (10, 50, 200):
        _, proc = run(
            ["slurm", "write", str(tmp / "empty"), str(tmp / "array-out"), "--subject-map",
             str(subject_map), "--array-limit", str(limit), "--drive-rps", f"{budget:g}",
             "--slurm-dir", str(tmp / f"slurm-{limit}")],
            env,
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"| {limit} | slurm write failed: {proc.stderr.strip()[-200:]} |")
            continue
        script = (tmp / f"slurm-{limit}/batch-001/participant.sbatch").read_text()
        array = re.search(r"#SBATCH --array=(\S+)", script)
        rate = re.search(r"--drive-rps (\S+)", script)
        assert array and rate
        per_task = float(rate.group(1))
        at_once = int(array.group(1).split("%")[1])
        aggregate = per_task * at_once
        print(
            f"| {limit} | {array.group(1)} | {per_task:g} | {aggregate:g} | "
            f"{aggregate / budget:.0%} |"
        )
    print()


def drive_quota(tmp: Path, jobs: int, env: dict[str, str]) -> None:
    from bidsapp_sandbox.emulator import Emulator

    budget, quota = 2.0 * jobs, (5, 1.0)
    print(
        f"## {jobs} participant jobs at once against one emulator "
        f"(quota {quota[0]} requests per {quota[1]:g} s per token, budget {budget:g} rps)\n"
    )
    source = exams(tmp / "drive-source", jobs)
    sa = "bidsapp@bench.iam.gserviceaccount.com"
    with Emulator(quota_per_token=quota) as emu:
        key = emu.service_account(sa, dest=tmp / "keys/sa.json")
        drive = emu.shared_drive("bench", members={sa: "organizer"})
        src = emu.folder("exams", parent=drive)
        emu.upload_tree(source, parent=src)
        out = emu.folder("bids", parent=drive)
        emu.meter.reset()
        wall, proc = run(
            [f"gdrive://{src}", f"gdrive://{out}", "participant", "--jobs", str(jobs),
             "--drive-rps", f"{budget:g}", "--credentials", str(key),
             "--work-dir", str(tmp / "drive-work")],
            {**env, "BIDSAPP_DRIVE_URL": emu.url},
        )  # fmt: skip
        stats = emu.stats()
        status = subprocess.run(
            [*BIDSAPP, "status", f"gdrive://{out}", "--json", "--credentials", str(key)],
            capture_output=True, text=True, env={**env, "BIDSAPP_DRIVE_URL": emu.url},
            check=False,
        )  # fmt: skip
    rows = json.loads(status.stdout) if status.returncode == 0 else []
    rate_failures = [r for r in rows if r["exit_code"] == 75]
    print("| figure | value |\n|---|---:|")
    print(f"| wall s | {wall:.1f} |")
    print(f"| exit code of the run | {proc.returncode} |")
    print(f"| jobs published | {sum(r['published'] for r in rows)} of {jobs} |")
    print(f"| jobs failed for rate limits (exit 75) | {len(rate_failures)} |")
    print(f"| Drive requests | {stats['requests']} |")
    print(f"| quota rejections (403/429 sent) | {stats.get('quota_rejections', 'n/a')} |")
    print(f"| busiest 1 s window, all jobs | {stats['max_rps_1s']:g} requests |")
    print(f"| per-job rate set | {budget / jobs:g} rps |\n")
    if proc.returncode != 0:
        print("stderr tail:\n```\n" + "\n".join(proc.stderr.splitlines()[-15:]) + "\n```\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=8, help="for the --jobs ratio")
    parser.add_argument("--repeat", type=int, default=2, help="runs per --jobs value")
    parser.add_argument("--only", choices=("jobs", "array", "drive"), help="one part only")
    parser.add_argument("--drive-jobs", type=int, default=20, help="jobs against the emulator")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bidsapp-scale-") as name:
        tmp = Path(name)
        env = {
            **os.environ,
            "BIDSAPP_DATE_SECRET": str(tmp / "date-shift.secret"),
            "BIDSAPP_LOG_LEVEL": "WARNING",
        }
        print(f"# bidsapp scale benchmark — {platform.node()}, {os.cpu_count()} CPUs\n")
        if args.only in (None, "jobs"):
            jobs_ratio(tmp, args.subjects, args.repeat, env)
        if args.only in (None, "array"):
            array_rates(tmp, env)
        if args.only in (None, "drive"):
            drive_quota(tmp, args.drive_jobs, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
