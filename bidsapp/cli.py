"""The BIDS-App command line and helper commands: the only place exceptions become exit codes."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from loguru import logger

from bidsapp import __version__, logs
from bidsapp.errors import EXIT_CODES, BidsAppError, UnknownAnalysisLevel, UsageError
from bidsapp.pipeline.subjects import clean_label
from bidsapp.privacy.profiles import profile
from bidsapp.settings import DEFAULT_HEURISTIC, Settings, env
from bidsapp.stores import is_remote

LEVELS = ("participant", "group")


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as exit code 64 in one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _file(text: str) -> Path:
    """A file the scripts and child jobs may read from another directory: absolute, `~` expanded."""
    return Path(text).expanduser().absolute()


def date_secret(given: Path | None, subject_map: Path | None) -> Path | None:
    """--date-secret, else the secret beside the map it belongs to (MAP.secret), else None."""
    if given:
        return given.absolute()
    return subject_map.absolute().with_suffix(".secret") if subject_map else None


def resolve_dates(deid: str, dates: str | None) -> str:
    """What --dates means under --deid: `none` keeps every header value, dates included, so a
    shift or drop asked for with it is refused rather than silently not done."""
    if deid != "none":
        return dates or "shift"
    if dates not in (None, "keep"):
        raise UsageError(
            f"--dates {dates} needs de-identification, and --deid none turns it off",
            hint="drop --deid none, or --dates",
        )
    return "keep"


def _label(text: str) -> str:
    try:
        return clean_label(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _session(text: str) -> str:
    try:
        return clean_label(text, "session label")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
        return value

    return parse


def _log_level(text: str) -> str:
    if not logs.known_level(text):
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}: use DEBUG, INFO, WARNING")
    return text.upper()


def _fields(text: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in fields if f not in ("age", "sex")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown participant field(s): {', '.join(unknown)}")
    return fields


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    helpers = ",".join([*COMMANDS, *SANDBOX_COMMANDS])
    return f"exit codes:\n{codes}\n\nhelper commands: bidsapp {{{helpers}}} --help"


def _labels_option(group: Any, help_text: str) -> None:
    """`--participant-label L …` (and the BIDS-Apps spelling with '_'), into `labels`."""
    group.add_argument(
        "--participant-label",
        "--participant_label",
        dest="labels",
        nargs="+",
        type=_label,
        default=[],
        metavar="LABEL",
        help=help_text,
    )


def _drive_rps_option(group: Any, help_text: str) -> None:
    group.add_argument("--drive-rps", type=_positive(float), metavar="R", help=help_text)


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
    _labels_option(sel, "labels with or without 'sub-' (default: every subject)")
    sel.add_argument(
        "--session-label",
        "--session_label",
        dest="sessions",
        nargs="+",
        type=_session,
        default=[],
        metavar="SESSION",
        help="only these sessions (with or without 'ses-') of the selected subjects",
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
    conv.add_argument(
        "--overrides",
        type=Path,
        metavar="FILE",
        help="TOML/JSON file that skips or renames series and patches sidecar fields",
    )
    conv.add_argument("--force", action="store_true", help="reconvert even if nothing changed")
    conv.add_argument("--dry-run", action="store_true", help="read listings only; write nothing")
    conv.add_argument(
        "--verify",
        action="store_true",
        help="read every published file back (md5) before calling a subject up to date",
    )
    conv.add_argument(
        "--strict",
        action="store_true",
        help="fail a subject when any series fails BIDS validation (default: publish the rest "
        "and list the series set aside)",
    )
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
        help="acquisition dates: shifted by a per-subject offset (default), kept or dropped "
        "(with --deid none: kept)",
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
    scale = parser.add_argument_group("many subjects")
    scale.add_argument(
        "--jobs",
        type=_positive(int),
        default=1,
        metavar="N",
        help="run up to N subjects (or sessions) at once, each in its own process",
    )
    _drive_rps_option(
        scale,
        "Drive requests per second for this run, split between its jobs "
        "(default: BIDSAPP_DRIVE_RPS or 10)",
    )
    scale.add_argument(
        "--task-list",
        type=Path,
        metavar="TSV",
        help="a frozen task list from 'bidsapp slurm write' (with --task-index)",
    )
    scale.add_argument(
        "--task-index", type=int, metavar="I", help="the task list line to run (1 = first)"
    )
    drive = parser.add_argument_group("google drive")
    drive.add_argument(
        "--credentials",
        type=_file,
        metavar="JSON",
        help="service-account key or user token (default: GOOGLE_APPLICATION_CREDENTIALS, "
        "then the token of 'bidsapp auth login', then application default credentials)",
    )
    grp = parser.add_argument_group("group level")
    grp.add_argument("--init", action="store_true", help="create the shared folders only")
    grp.add_argument("--dataset-name", metavar="NAME", help="the dataset's Name")
    grp.add_argument(
        "--author",
        dest="authors",
        action="append",
        default=[],
        metavar="NAME",
        help="one of the dataset's Authors (repeat for each, in order)",
    )
    grp.add_argument("--license", metavar="ID", help="the dataset's License, e.g. CC0 or PDDL")
    grp.add_argument(
        "--dataset-description",
        type=_file,
        metavar="JSON",
        help="dataset_description.json fields to start a new dataset with (Name, Authors, "
        "License, Acknowledgements, Funding, ...); the flags above win over it, and fields "
        "already in OUTPUT's dataset_description.json are never replaced",
    )
    out = parser.add_argument_group("logging")
    out.add_argument(
        "--log-level",
        type=_log_level,
        default=env("LOG_LEVEL", "INFO"),
        help="console log level: DEBUG, INFO (default), WARNING, ERROR",
    )
    return parser


def run_bids_app(argv: Sequence[str]) -> int:
    from bidsapp.batch.run import run_participant_level
    from bidsapp.pipeline.group import run_group

    args = bids_app_parser().parse_args(argv)
    if args.analysis_level not in LEVELS:
        raise UnknownAnalysisLevel(f"unknown analysis level {args.analysis_level!r}")
    if args.init and args.analysis_level != "group":
        raise UsageError("--init belongs to the group level")
    logs.setup_console(args.log_level)
    kwargs: dict[str, Any] = {"work_dir": args.work_dir.absolute()} if args.work_dir else {}
    secret = date_secret(args.date_secret, args.subject_map)
    if secret is not None:
        kwargs["date_secret"] = secret
    if args.deid != "none":
        profile(args.deid)  # an unknown profile is a usage error before any work
    dates = resolve_dates(args.deid, args.dates)
    if args.deface_cmd:
        from bidsapp.privacy.deid import deface_template

        deface_template(args.deface_cmd)  # checked before any work, not after conversion
    labels, sessions = tuple(dict.fromkeys(args.labels)), tuple(dict.fromkeys(args.sessions))
    if args.analysis_level == "group":
        if args.task_index is not None:
            raise UsageError(
                "--task-index belongs to the participant level",
                hint="the group level takes --task-list alone: the batch's jobs to account for",
            )
        if args.task_list is not None:
            from bidsapp.batch.slurm import read_tasks

            tasks = read_tasks(args.task_list)  # a bad list is a usage error before any work
            kwargs["expected"] = tuple((t.label, t.session) for t in tasks)
        kwargs["dataset_fields"] = _dataset_fields(args)
    elif args.task_list is not None or args.task_index is not None:
        from bidsapp.batch.slurm import read_task

        if args.task_list is None or args.task_index is None:
            raise UsageError("--task-list and --task-index go together")
        if labels or sessions:
            raise UsageError("--task-list replaces --participant-label and --session-label")
        task = read_task(args.task_list, args.task_index)
        labels, sessions = (task.label,), ((task.session,) if task.session else ())
    if args.drive_rps is not None:
        kwargs["drive_rps"] = args.drive_rps
    if args.credentials is not None:
        kwargs["credentials"] = args.credentials
    settings = Settings(
        source=args.source,
        output=args.output,
        level=args.analysis_level,
        labels=labels,
        sessions=sessions,
        jobs=args.jobs,
        subject_map=args.subject_map,
        heuristic=args.heuristic,
        overrides=args.overrides.absolute() if args.overrides else None,
        force=args.force,
        dry_run=args.dry_run,
        strict=args.strict,
        verify=args.verify,
        participant_fields=args.participant_fields,
        deid_profile=args.deid,
        dates=dates,
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
    return run_participant_level(settings)


def _dataset_fields(args: argparse.Namespace) -> dict[str, Any]:
    """dataset_description.json fields from --dataset-description, then the flags."""
    fields: dict[str, Any] = {}
    if args.dataset_description is not None:
        try:
            fields = json.loads(args.dataset_description.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"--dataset-description {args.dataset_description} is not readable JSON: {exc}"
            ) from None
        if not isinstance(fields, dict):
            raise UsageError(
                f"--dataset-description {args.dataset_description} is not a JSON object",
                hint='write e.g. {"Name": "...", "Authors": ["..."], "License": "CC0"}',
            )
        for key in ("BIDSVersion", "DatasetType", "GeneratedBy"):
            fields.pop(key, None)  # bidsapp's to write
    if args.dataset_name:
        fields["Name"] = args.dataset_name
    if args.authors:
        fields["Authors"] = list(args.authors)
    if args.license:
        fields["License"] = args.license
    return fields


def _credentials_settings(source: str, output: str, credentials: Path | None) -> Settings | None:
    """Settings for a helper command that only opens a store (None: the defaults serve)."""
    if credentials is None:
        return None
    return Settings(source=source, output=output, level="", credentials=credentials)


def cmd_subjects(argv: Sequence[str]) -> int:
    """List the exam folders of SOURCE and write or extend the subject map."""
    from bidsapp.pipeline.subjects import update_map
    from bidsapp.stores import open_store

    parser = Parser(prog="bidsapp subjects", description=cmd_subjects.__doc__)
    parser.add_argument("source")
    parser.add_argument("--subject-map", type=Path, required=True, metavar="TSV")
    parser.add_argument("--credentials", type=_file, metavar="JSON", help="Google credentials")
    args = parser.parse_args(argv)
    settings = _credentials_settings(args.source, "", args.credentials)
    return update_map(open_store(args.source, settings=settings), args.subject_map)


def cmd_status(argv: Sequence[str]) -> int:
    """Print every job's last state from OUTPUT/.bidsapp/status (with a map: never-run ones too)."""
    from bidsapp.pipeline.status import print_status
    from bidsapp.stores import open_store

    parser = Parser(prog="bidsapp status", description=cmd_status.__doc__)
    parser.add_argument("output")
    parser.add_argument(
        "--subject-map", type=Path, metavar="TSV", help="also list subjects that never ran"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--verify", action="store_true", help="read every published file back (md5)"
    )
    parser.add_argument("--credentials", type=_file, metavar="JSON", help="for a Drive OUTPUT")
    args = parser.parse_args(argv)
    settings = _credentials_settings("", args.output, args.credentials)
    store = open_store(args.output, role="OUTPUT", settings=settings)
    with _reader_may_leave():
        return print_status(store, args.subject_map, as_json=args.json, deep=args.verify)
    return 0  # the reader closed the pipe (`bidsapp status --json | head`)


@contextmanager
def _reader_may_leave() -> Iterator[None]:
    """A reader may stop reading early (`… | head`): printing then ends quietly, without a
    BrokenPipeError, and Python's own flush at exit finds nothing to complain about."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# Settings the scripts give every task themselves (by dest): options after '--' may not change
# them. Compared as parsed values, so abbreviations (`--work`) and `-w/path` cannot slip past.
SLURM_RESERVED = (
    "labels",
    "sessions",
    "subject_map",
    "jobs",
    "work_dir",
    "drive_rps",
    "credentials",
    "task_list",
    "task_index",
    "init",
)


def cmd_slurm(argv: Sequence[str]) -> int:
    """Write, submit or resubmit a SLURM array (one task per subject or session) and its group job.

    Options after `--` go to every bidsapp call in the scripts (e.g. -- --heuristic reproin).
    """
    from bidsapp.batch import slurm

    args_in = list(argv)
    extra = args_in[args_in.index("--") + 1 :] if "--" in args_in else []
    args_in = args_in[: args_in.index("--")] if "--" in args_in else args_in
    parser = Parser(
        prog="bidsapp slurm",
        description=cmd_slurm.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("write", "submit", "resubmit"))
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--subject-map", type=Path, required=True, metavar="TSV")
    parser.add_argument("--runtime", choices=slurm.RUNTIMES, default="none")
    parser.add_argument("--image", default="", help="container image (SIF file or Docker tag)")
    parser.add_argument(
        "--array-limit", type=_positive(int), default=50, metavar="N", help="tasks at once"
    )
    parser.add_argument("--partition", default="")
    parser.add_argument("--time", default="", help="per task, e.g. 02:00:00")
    parser.add_argument("--mem", default="", help="per task, e.g. 8G")
    parser.add_argument("--cpus", type=_positive(int), default=1, help="per task")
    _drive_rps_option(parser, "Drive budget for the whole array; each task gets R / array limit")
    parser.add_argument("--credentials", type=_file, metavar="JSON", help="by file path only")
    parser.add_argument(
        "--bidsapp-cmd",
        metavar="CMD",
        help="how jobs start bidsapp with --runtime none (default: this installation's)",
    )
    parser.add_argument("--slurm-dir", type=Path, default=Path("bidsapp-slurm"), metavar="DIR")
    args = parser.parse_args(args_in)
    if args.runtime != "none" and not args.image:
        raise UsageError(f"--runtime {args.runtime} needs --image")
    app = bids_app_parser()
    level = [args.source, args.output, "participant"]
    defaults, passed = app.parse_args(level), app.parse_args([*level, *extra])
    for dest in SLURM_RESERVED:
        if getattr(passed, dest) != getattr(defaults, dest):
            flag = next(a.option_strings[0] for a in app._actions if a.dest == dest)
            raise UsageError(f"{flag} is set by the scripts; it cannot follow '--'")
    subject_map = args.subject_map.absolute()
    shift = resolve_dates(passed.deid, passed.dates) == "shift"
    secret = date_secret(passed.date_secret, subject_map) if shift else None

    def where(location: str) -> str:
        return location if is_remote(location) else str(Path(location).absolute())

    plan = slurm.Plan(
        source=where(args.source),
        output=where(args.output),
        subject_map=subject_map,
        slurm_dir=args.slurm_dir.absolute(),
        runtime=args.runtime,
        image=(
            str(Path(args.image).absolute())
            if args.runtime in ("apptainer", "singularity") and "://" not in args.image
            else args.image
        ),
        array_limit=args.array_limit,
        partition=args.partition,
        time=args.time,
        mem=args.mem,
        cpus=args.cpus,
        drive_rps=args.drive_rps or Settings(source="", output="", level="").drive_rps,
        credentials=args.credentials,
        extra=tuple(extra),
    )
    if args.bidsapp_cmd:
        plan = replace(plan, bidsapp_cmd=tuple(shlex.split(args.bidsapp_cmd)))
    return slurm.run_action(args.action, plan, date_secret=secret)


def cmd_auth(argv: Sequence[str]) -> int:
    """Google sign-in for Drive: 'login' makes a user token once; 'whoami' shows the identity."""
    from bidsapp.stores import drive_auth

    parser = Parser(prog="bidsapp auth", description=cmd_auth.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    login = sub.add_parser("login", help="sign in as a person (installed-app OAuth flow)")
    login.add_argument(
        "--client-secrets",
        type=Path,
        required=True,
        metavar="JSON",
        help="your OAuth client (Desktop app) downloaded from Google Cloud",
    )
    login.add_argument("--no-browser", action="store_true", help="print the URL instead")
    login.add_argument("--port", type=int, default=8765, help="local redirect port (ssh -L)")
    login.add_argument("--readonly", action="store_true", help="only read Drive (no publishing)")
    login.add_argument("--token", type=Path, help="where to keep the token (0600)")
    who = sub.add_parser("whoami", help="the identity bidsapp would use for Drive")
    who.add_argument("--credentials", type=_file, metavar="JSON")
    args = parser.parse_args(argv)
    if args.action == "login":
        token = args.token or drive_auth.default_token_path()
        drive_auth.login(
            args.client_secrets,
            token,
            browser=not args.no_browser,
            port=args.port,
            readonly=args.readonly,
        )
        print(f"signed in; token saved to {token} (readable by you only)")
        return 0
    from bidsapp.stores.drive import whoami

    print(whoami(args.credentials))
    return 0


def cmd_inspect(argv: Sequence[str]) -> int:
    """Print each series of one exam and the BIDS name it gets, or why it is skipped."""
    from bidsapp.pipeline.inspection import run_inspect

    parser = Parser(prog="bidsapp inspect", description=cmd_inspect.__doc__)
    parser.add_argument("source", help="folder holding the exam folders")
    parser.add_argument("--participant-label", "--participant_label", required=True, type=_label)
    parser.add_argument("--subject-map", type=Path, metavar="TSV")
    parser.add_argument("--heuristic", default=env("HEURISTIC", DEFAULT_HEURISTIC))
    parser.add_argument("--overrides", type=Path, metavar="FILE")
    parser.add_argument("--format", choices=("table", "tsv", "json"), default="table")
    parser.add_argument("-w", "--work-dir", type=Path, help="where the exam is staged (0700)")
    parser.add_argument("--credentials", type=_file, metavar="JSON", help="for a Drive SOURCE")
    args = parser.parse_args(argv)
    with _reader_may_leave():
        return run_inspect(
            args.source,
            args.participant_label,
            subject_map=args.subject_map,
            heuristic_spec=args.heuristic,
            overrides=args.overrides,
            fmt=args.format,
            work_dir=args.work_dir,
            settings=_credentials_settings(args.source, "", args.credentials),
        )
    return 0  # the reader closed the pipe (`bidsapp inspect … | head`)


def cmd_pull(argv: Sequence[str]) -> int:
    """Copy a published dataset (or some subjects, or only the reports) into a local folder,
    every file verified by md5; a rerun fetches only what changed."""
    from bidsapp.pipeline.pull import pull
    from bidsapp.stores import open_store

    parser = Parser(prog="bidsapp pull", description=cmd_pull.__doc__)
    parser.add_argument("output", help="the published dataset (gdrive:… or a folder)")
    parser.add_argument("dest", type=Path, help="the local folder to mirror it into")
    _labels_option(parser, "only these subjects (and the dataset-level files)")
    parser.add_argument(
        "--only-reports",
        action="store_true",
        help="only derivatives/bidsapp (reports, gate verdicts, manifests, logs) and the "
        "failed jobs' gate reports",
    )
    parser.add_argument("--credentials", type=_file, metavar="JSON", help="for a Drive OUTPUT")
    _drive_rps_option(parser, "Drive requests per second (default: BIDSAPP_DRIVE_RPS or 10)")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"credentials": args.credentials} if args.credentials else {}
    if args.drive_rps is not None:
        kwargs["drive_rps"] = args.drive_rps
    settings = Settings(source="", output=args.output, level="", **kwargs)
    store = open_store(args.output, role="OUTPUT", settings=settings)
    done = pull(store, args.dest, labels=args.labels, only_reports=args.only_reports)
    print(
        f"{args.dest}: {done.fetched} files fetched ({done.fetched_bytes / 1e6:.1f} MB), "
        f"{done.unchanged} already there, {len(done.removed)} removed"
    )
    if done.kept:
        logger.warning(
            "{} files OUTPUT no longer has were changed in DEST and kept: {}",
            len(done.kept),
            ", ".join(done.kept[:5]) + (" …" if len(done.kept) > 5 else ""),
        )
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "subjects": cmd_subjects,
    "inspect": cmd_inspect,
    "status": cmd_status,
    "pull": cmd_pull,
    "slurm": cmd_slurm,
    "auth": cmd_auth,
}
# Helper commands of the sandbox distribution (sandbox/): found by entry point when installed.
SANDBOX_COMMANDS = ("demo", "emulator")


def sandbox_command(name: str) -> Callable[[Sequence[str]], int]:
    """The sandbox's command `name`, or a usage error saying how to install the sandbox."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="bidsapp.commands", name=name):
        command: Callable[[Sequence[str]], int] = entry.load()
        return command
    raise UsageError(
        f"'bidsapp {name}' comes with bidsapp's sandbox, which is not installed",
        hint="in a bidsapp checkout: pip install ./sandbox",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `bidsapp SOURCE OUTPUT LEVEL …` or `bidsapp COMMAND …`."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            logs.setup_console(env("LOG_LEVEL", "INFO"))
        except ValueError as exc:
            raise UsageError(
                f"BIDSAPP_LOG_LEVEL: {exc}", hint="use DEBUG, INFO or WARNING"
            ) from None
        if args and args[0] in COMMANDS:
            return COMMANDS[args[0]](args[1:])
        if args and args[0] in SANDBOX_COMMANDS:
            return sandbox_command(args[0])(args[1:])
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
