"""What knowing "is it published?" costs: `bidsapp status` and a rerun with nothing to do.

Publishes N synthetic subjects (a T1w and a short BOLD run each) into a local dataset with one
bidsapp installation, then times `bidsapp status OUTPUT` and a no-op `participant` rerun over all
of them, and counts the bytes each read (the process's `rchar`: every read() it made, cache hits
included). Pass another installation's interpreter (`--python`, e.g. an older checkout's venv) to
compare: before, both re-hashed every published byte; now they compare each file's size and
modification time with the manifest, and only `--verify` reads the files.

    .venv/bin/python benchmarks/status.py [--subjects 200] [--python OTHER/.venv/bin/python]

A report, not a test: it exits 0 and CI never runs it. Building the dataset takes minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bidsapp_sandbox.exams import Patient, Series, write_session

# Runs bidsapp's command line in the given interpreter and reports the bytes it read at exit.
LAUNCH = """
import atexit, sys
def report():
    io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    sys.stderr.write("\\nRCHAR %s\\n" % io["rchar"])
atexit.register(report)
from bidsapp.cli import main
sys.exit(main(sys.argv[1:]))
"""
SERIES = (Series("anat-T1w", "t1w"), Series("func-bold_task-rest", "bold"))


def bidsapp(python: str, *args: str | Path) -> tuple[float, int, int]:
    """Seconds, bytes read, exit code of one bidsapp command."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [python, "-c", LAUNCH, *map(str, args)], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    rchar = [int(ln.split()[1]) for ln in done.stderr.splitlines() if ln.startswith("RCHAR ")]
    return wall, rchar[-1] if rchar else -1, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--python", default=sys.executable, help="the installation to measure")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as name:
        tmp = Path(name)
        source, output, work = tmp / "exams", tmp / "bids", tmp / "work"
        for n in range(1, args.subjects + 1):
            patient = Patient(name="Synthetic^Volunteer", patient_id=f"QZ{n:05d}X")
            write_session(source / f"{n:03d}", patient=patient, series=SERIES, seed=n)
        common = ("--work-dir", work, "--date-secret", tmp / "secret")
        t0 = time.perf_counter()
        built = bidsapp(args.python, source, output, "participant", "--jobs", args.jobs, *common)
        print(f"published {args.subjects} subjects in {time.perf_counter() - t0:.0f} s "
              f"(exit {built[2]}) with {args.python}")  # fmt: skip
        published = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
        print(f"dataset: {published / 1e6:.1f} MB\n")
        print("| command | s | MB read | exit |\n|---|---:|---:|---:|")
        runs = {
            "status": ("status", output),
            "status --verify": ("status", output, "--verify"),
            "no-op participant rerun": (source, output, "participant", *common),
        }
        for label, argv in runs.items():
            wall, read, code = bidsapp(args.python, *argv)
            print(f"| {label} | {wall:.2f} | {read / 1e6:.1f} | {code} |")
        states = json.loads(
            subprocess.run([args.python, "-m", "bidsapp.cli", "status", output, "--json"],
                           capture_output=True, text=True, check=False).stdout or "[]"
        )  # fmt: skip
        print(f"\n{sum(r['published'] for r in states)} of {len(states)} reported published")
    return 0


if __name__ == "__main__":
    sys.exit(main())
