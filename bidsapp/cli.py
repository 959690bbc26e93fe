"""The BIDS-App command line and helper commands: the only place exceptions become exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from loguru import logger

from bidsapp import __version__, logs
from bidsapp.deid_profiles import profile
from bidsapp.errors import EXIT_CODES, BidsAppError, UnknownAnalysisLevel, UsageError
from bidsapp.settings import DEFAULT_HEURISTIC, Settings, env
from bidsapp.subjects import clean_label

LEVELS = ("participant", "group")


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as exit code 64 in one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _label(text: str) -> str:
    try:
        return clean_label(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _fields(text: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in fields if f not in ("age", "sex")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown participant field(s): {', '.join(unknown)}")
    return fields


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    return f"exit codes:\n{codes}\n\nhelper commands: bidsapp {{{','.join(COMMANDS)}}} --help"


def bids_app_parser() -> Parser:
    parser = Parser(
        prog="bidsapp",
        description="Convert DICOM exams, one subject per job, into a validated BIDS dataset.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="folder holding one exam folder per patient")
    parser.add_argument("output", help="the BIDS dataset to publish into")
    parser.add_argument("analysis_level", help="'participant' or 'group'")
    parser.add_argument("--version", action="version", version=f"bidsapp {__version__}")
    sel = parser.add_argument_group("subjects")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        dest="labels",
        nargs="+",
        type=_label,
        default=[],
        metavar="LABEL",
        help="labels with or without 'sub-' (default: every subject)",
    )
    sel.add_argument(
        "--subject-map", type=Path, metavar="TSV", help="source/participant/session map"
    )
    conv = parser.add_argument_group("conversion")
    conv.add_argument(
        "--heuristic",
        default=env("HEURISTIC", DEFAULT_HEURISTIC),
        help=f"heuristic name from heuristics/ or a path (default: {DEFAULT_HEURISTIC})",
    )
    conv.add_argument("--force", action="store_true", help="reconvert even if nothing changed")
    conv.add_argument("--dry-run", action="store_true", help="read listings only; write nothing")
    conv.add_argument(
        "--participant-fields",
        type=_fields,
        default=(),
        metavar="age,sex",
        help="demographics to record in participants.tsv (off by default)",
    )
    deid = parser.add_argument_group("de-identification")
    deid.add_argument(
        "--deid",
        default="basic",
        metavar="PROFILE",
        help="de-identification profile for sidecars and TSVs: basic (default) or none",
    )
    deid.add_argument(
        "--dates",
        choices=("keep", "shift", "drop"),
        default="shift",
        help="acquisition dates: shifted by a per-subject offset (default), kept or dropped",
    )
    deid.add_argument(
        "--date-secret",
        type=Path,
        help="the secret behind date shifts (default: beside the subject map, MAP.secret)",
    )
    deid.add_argument(
        "--sourcedata", action="store_true", help="also publish de-identified DICOM copies"
    )
    deid.add_argument(
        "--deface-cmd",
        default="",
        metavar="CMD",
        help="defacing command with {in} and {out}, e.g. 'pydeface {in} --outfile {out}'",
    )
    work = parser.add_argument_group("work dir")
    work.add_argument("-w", "--work-dir", type=Path, help="where DICOMs are staged (0700)")
    work.add_argument("--keep-work", action="store_true", help="keep the work dir afterwards")
    grp = parser.add_argument_group("group level")
    grp.add_argument("--init", action="store_true", help="create the shared folders only")
    out = parser.add_argument_group("logging")
    out.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"), help="console log level")
    return parser


def run_bids_app(argv: Sequence[str]) -> int:
    from bidsapp.group import run_group
    from bidsapp.pipeline import run_participant

    args = bids_app_parser().parse_args(argv)
    if args.analysis_level not in LEVELS:
        raise UnknownAnalysisLevel(f"unknown analysis level {args.analysis_level!r}")
    if args.init and args.analysis_level != "group":
        raise UsageError("--init belongs to the group level")
    logs.setup_console(args.log_level)
    kwargs: dict[str, Any] = {"work_dir": args.work_dir.absolute()} if args.work_dir else {}
    if args.date_secret:
        kwargs["date_secret"] = args.date_secret.absolute()
    elif args.subject_map:  # the secret lives beside the map it belongs to
        kwargs["date_secret"] = args.subject_map.absolute().with_suffix(".secret")
    if args.deid != "none":
        profile(args.deid)  # an unknown profile is a usage error before any work
    settings = Settings(
        source=args.source,
        output=args.output,
        level=args.analysis_level,
        labels=tuple(dict.fromkeys(args.labels)),
        subject_map=args.subject_map,
        heuristic=args.heuristic,
        force=args.force,
        dry_run=args.dry_run,
        participant_fields=args.participant_fields,
        deid_profile=args.deid,
        dates=args.dates,
        sourcedata=args.sourcedata,
        deface_cmd=args.deface_cmd,
        keep_work=args.keep_work,
        init_only=args.init,
        log_level=args.log_level,
        argv=tuple(sys.argv),
        **kwargs,
    )
    if settings.level == "group":
        return run_group(settings)
    return run_participant(settings)


def cmd_subjects(argv: Sequence[str]) -> int:
    """List the exam folders of SOURCE and write or extend the subject map."""
    from bidsapp.stores import open_store
    from bidsapp.subjects import extend_map, read_map, write_map

    parser = Parser(prog="bidsapp subjects", description=cmd_subjects.__doc__)
    parser.add_argument("source")
    parser.add_argument("--subject-map", type=Path, required=True, metavar="TSV")
    args = parser.parse_args(argv)
    store = open_store(args.source)
    existing = read_map(args.subject_map) if args.subject_map.exists() else []
    subjects, added = extend_map(existing, store)
    write_map(args.subject_map, subjects)
    # The map's source column is PHI: report labels only.
    labels = ", ".join(f"sub-{s.label}" for s in subjects) or "none"
    print(f"{args.subject_map}: {len(subjects)} exam folders ({added} new): {labels}")
    return 0


def cmd_status(argv: Sequence[str]) -> int:
    """Print every job's last state from OUTPUT/.bidsapp/status."""
    from bidsapp.publish import Target, published_manifest
    from bidsapp.status import read_all
    from bidsapp.stores import open_store

    parser = Parser(prog="bidsapp status", description=cmd_status.__doc__)
    parser.add_argument("output")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    store = open_store(args.output)
    rows = []
    for rec in sorted(read_all(store), key=lambda r: (r["label"], r["session"])):
        complete = published_manifest(store, Target(rec["label"], rec["session"])) is not None
        state = rec["state"]
        if state in ("published", "skipped") and not complete:
            state = "incomplete"
        rows.append({**rec, "state": state, "published": complete})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            ses = f"ses-{r['session']}" if r["session"] else "-"
            print(f"sub-{r['label']}\t{ses}\t{r['state']}\t{r['exit_code']}\t{r['error_class']}")
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    """Make synthetic exams, convert, gate and publish them locally, and print the dataset."""
    from bidsapp.demo import run_demo

    parser = Parser(prog="bidsapp demo", description=cmd_demo.__doc__)
    parser.add_argument("--dir", type=Path, default=Path("bidsapp-demo"), help="where to put it")
    args = parser.parse_args(argv)
    return run_demo(args.dir)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "subjects": cmd_subjects,
    "status": cmd_status,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `bidsapp SOURCE OUTPUT LEVEL …` or `bidsapp COMMAND …`."""
    args = list(sys.argv[1:] if argv is None else argv)
    logs.setup_console(env("LOG_LEVEL", "INFO"))
    try:
        if args and args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:])
        return run_bids_app(args)
    except BidsAppError as exc:
        logger.error(logs.redactor(exc.one_line()))
        return exc.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as exc:  # a bug: keep the traceback out of the console, redacted
        logger.debug(logs.redactor(traceback.format_exc()))
        logger.error(logs.redactor(f"unexpected error: {type(exc).__name__}: {exc}"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
