"""Benchmark the PHI matcher: the gate's scan of a published subject and the log redactor.

Identifiers come from the headers of one real DICOM case (plus an exam folder name and the
case's own values), the tree scanned is that case as `bidsapp participant` published it, and
the log lines are the job's own JSON log (every record, repeated to a fixed count). Prints
milliseconds per scan of the tree and microseconds per log line for `find` and `redact`.

This is a report, not a test: CI never runs it.

    .venv/bin/python benchmarks/phi.py DICOM_CASE_FOLDER PUBLISHED_OUTPUT [--repeat N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pydicom

from bidsapp.privacy.phi import HEADER_FIELDS, Identifiers, scan_tree

LINES = 20_000


def headers(case: Path) -> list[dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for path in sorted(p for p in case.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_FIELDS))
        except Exception:  # not DICOM: nothing to collect
            continue
        values = {f: ds.get(f) for f in HEADER_FIELDS}
        found.setdefault(repr(values), values)
    return list(found.values())


def best(repeat: int, action: object) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ids = Identifiers.collect(
        [*headers(args.case), {"PatientName": "Conceição^João^da", "PatientID": "JC778899"}],
        "João da Conceição",
    )
    log = sorted(args.output.rglob("log.jsonl"))
    lines = [line for path in log for line in path.read_text().splitlines()] or ["x"]
    lines = (lines * (LINES // len(lines) + 1))[:LINES]
    scan = best(args.repeat, lambda: scan_tree(args.output, ids))
    find = best(args.repeat, lambda: [ids.find(line) for line in lines])
    redact = best(args.repeat, lambda: [ids.redact(line) for line in lines])
    print(f"{len(ids.identifiers)} identifiers; {LINES} log lines from {len(log)} log files")
    print(f"scan_tree of {args.output.name}: {scan * 1000:.1f} ms")
    print(f"find per log line: {find / LINES * 1e6:.1f} us")
    print(f"redact per log line: {redact / LINES * 1e6:.1f} us")


if __name__ == "__main__":
    main()
