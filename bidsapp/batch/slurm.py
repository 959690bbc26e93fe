"""SLURM arrays: a frozen task list, thin sbatch scripts, submission, status-driven resubmission.

Each `write` makes a new batch folder (batch-001, batch-002, …) that is never rewritten: its
task list names jobs by label (sorted, so the array index never depends on the subject map's row
order, and editing the map later cannot shift a queued task). The scripts hold no logic: a
scratch work dir, a cleanup trap, one bidsapp call that reads its line of the task list.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bidsapp import __version__
from bidsapp.bids import SubjectSession
from bidsapp.errors import LocationNotFound, TemporaryFailure, UsageError
from bidsapp.pipeline.publish import init_shared
from bidsapp.pipeline.status import job_states
from bidsapp.pipeline.subjects import Subject, clean_label, read_map
from bidsapp.privacy.profiles import load_secret
from bidsapp.settings import Settings
from bidsapp.stores import Store, is_remote, open_store

RUNTIMES = ("none", "apptainer", "singularity", "docker")
TASKS_HEADER = ("participant", "session")


def tasks_for(subjects: Sequence[Subject]) -> list[SubjectSession]:
    """One task per map row, sorted by label and session (never by row order)."""
    return sorted({s.job for s in subjects})


def write_tasks(path: Path, tasks: Sequence[SubjectSession]) -> None:
    lines = ["\t".join(TASKS_HEADER)] + [f"{t.label}\t{t.session}" for t in tasks]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_tasks(path: Path) -> list[SubjectSession]:
    """Every task of a task list, in array order."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read the task list {path}: {exc.strerror}") from exc
    if not lines or tuple(lines[0].split("\t")) != TASKS_HEADER:
        raise UsageError(f"{path} is not a task list written by 'bidsapp slurm write'")
    tasks = []
    for line in lines[1:]:
        label, _, session = line.partition("\t")
        tasks.append(
            SubjectSession(
                clean_label(label), clean_label(session, "session label") if session else ""
            )
        )
    return tasks


def read_task(path: Path, index: int) -> SubjectSession:
    """Line `index` (1 = the first task) of a task list."""
    tasks = read_tasks(path)
    if not 1 <= index <= len(tasks):
        raise UsageError(f"task {index} is not in {path} (it has {len(tasks)} tasks)")
    return tasks[index - 1]


def default_bidsapp_cmd() -> tuple[str, ...]:
    """This installation's bidsapp, by absolute path: batch jobs must not depend on PATH."""
    script = Path(sys.executable).with_name("bidsapp")
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "bidsapp.cli")


def per_task_rps(budget: float, array_limit: int, tasks: int) -> float:
    """Each task's Drive rate: the budget over the tasks that can run at once."""
    return budget / max(1, min(array_limit, tasks))


@dataclass(frozen=True)
class Plan:
    """Everything the scripts need; paths absolute."""

    source: str
    output: str
    subject_map: Path
    slurm_dir: Path
    runtime: str = "none"
    image: str = ""
    array_limit: int = 50
    partition: str = ""
    time: str = ""
    mem: str = ""
    cpus: int = 1
    drive_rps: float = 10.0
    """The whole array's Drive budget (requests per second)."""
    credentials: Path | None = None
    bidsapp_cmd: tuple[str, ...] = field(default_factory=default_bidsapp_cmd)
    extra: tuple[str, ...] = ()
    """Further options passed to every bidsapp call (after `--` on the command line)."""
    chdir: Path = field(default_factory=Path.cwd)

    @property
    def job_name(self) -> str:
        """Names this OUTPUT's jobs in squeue (a hash: a path can say more than it should)."""
        return "bidsapp-" + hashlib.sha256(self.output.encode()).hexdigest()[:8]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_.,:+\-\[\]]+")
_DIRECTIVE_PATH = re.compile(r"[^\s%'\"\\]+")


def check_plan(plan: Plan) -> None:
    """Refuse what a script cannot hold safely: a control character anywhere (a newline would
    end an #SBATCH directive or start a shell line), and in #SBATCH lines, which sbatch reads
    unquoted and where '%' is a file name pattern, anything but plain words and paths."""
    values: list[tuple[str, str]] = [
        ("SOURCE", plan.source),
        ("OUTPUT", plan.output),
        ("--subject-map", str(plan.subject_map)),
        ("--slurm-dir", str(plan.slurm_dir)),
        ("--image", plan.image),
        ("--partition", plan.partition),
        ("--time", plan.time),
        ("--mem", plan.mem),
        ("--credentials", str(plan.credentials or "")),
        ("the working directory", str(plan.chdir)),
        *(("--bidsapp-cmd", word) for word in plan.bidsapp_cmd),
        *(("an option after '--'", word) for word in plan.extra),
    ]
    for what, value in values:
        if _CONTROL.search(value):
            raise UsageError(f"{what} holds a control character, which a script cannot carry")
    for what, value in (
        ("--partition", plan.partition),
        ("--time", plan.time),
        ("--mem", plan.mem),
    ):
        if value and not _DIRECTIVE_VALUE.fullmatch(value):
            raise UsageError(
                f"{what} {value!r} is not a SLURM value",
                hint="e.g. --partition short --time 02:00:00 --mem 8G",
            )
    if not _DIRECTIVE_PATH.fullmatch(str(plan.slurm_dir)):
        raise UsageError(
            f"--slurm-dir {str(plan.slurm_dir)!r} holds a space, quote, backslash or '%', which "
            "#SBATCH --output cannot take",
            hint="choose a --slurm-dir without them",
        )


@dataclass(frozen=True)
class Batch:
    """One written batch: task list and the two scripts."""

    folder: Path
    tasks: tuple[SubjectSession, ...]
    participant: Path
    group: Path


def _is_local(location: str) -> bool:
    return not is_remote(location)


def _binds(plan: Plan, batch: Path) -> list[tuple[str, bool]]:
    """Host paths the container needs, each with whether it may be written."""
    binds: list[tuple[str, bool]] = [(str(batch), False), (str(plan.subject_map.parent), False)]
    if _is_local(plan.source):
        binds.append((plan.source, False))
    if _is_local(plan.output):
        binds.append((plan.output, True))
    if plan.credentials is not None:
        binds.append((str(plan.credentials.parent), False))
    seen: dict[str, bool] = {}
    for path, writable in binds:
        seen[path] = seen.get(path, False) or writable
    return list(seen.items())


def _launcher(plan: Plan, batch: Path) -> list[str]:
    """Script lines that start bidsapp in the chosen runtime (already quoted)."""
    q = shlex.quote
    if plan.runtime == "none":
        return [" ".join(q(word) for word in plan.bidsapp_cmd)]
    binds = _binds(plan, batch)
    if plan.runtime == "docker":
        lines = ['docker run --rm --user "$(id -u):$(id -g)"']
        lines += [f"--volume {q(f'{p}:{p}' + ('' if w else ':ro'))}" for p, w in binds]
        return [*lines, f'--volume "$work:$work" {q(plan.image)}']  # ENTRYPOINT is bidsapp
    lines = [f"{plan.runtime} exec --cleanenv"]
    lines += [f"--bind {q(f'{p}:{p}' + ('' if w else ':ro'))}" for p, w in binds]
    return [*lines, f'--bind "$work" {q(plan.image)} bidsapp']


def _common(plan: Plan, rps: float) -> list[str]:
    """Options of every call, one line each (as in the script)."""
    lines = ['--work-dir "$work"', f"--drive-rps {rps:.6g}"]
    if plan.credentials is not None:
        lines.append(f"--credentials {shlex.quote(str(plan.credentials))}")
    if plan.extra:
        lines.append(" ".join(shlex.quote(arg) for arg in plan.extra))
    return lines


def _script(
    plan: Plan, batch: Path, directives: list[str], scratch: str, call: list[str], what: str
) -> str:
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={plan.job_name}",
        *directives,
        f"#SBATCH --cpus-per-task={plan.cpus}",
    ]
    lines += [f"#SBATCH --partition={plan.partition}"] if plan.partition else []
    lines += [f"#SBATCH --time={plan.time}"] if plan.time else []
    lines += [f"#SBATCH --mem={plan.mem}"] if plan.mem else []
    lines += [
        f"# {what}.",
        f"# Written by bidsapp {__version__} ('bidsapp slurm write'); do not edit.",
        "set -euo pipefail",
        f"cd -- {shlex.quote(str(plan.chdir))}  # where 'slurm write' ran (quoted: any path)",
        "",
        "# Node-local scratch: raw patient data never goes to a shared file system.",
        f'work="${{SLURM_TMPDIR:-${{TMPDIR:-/tmp}}}}/{scratch}"',
        'cleanup() { rm -rf "$work"; }',
        "trap cleanup EXIT",
        "# SIGTERM (preemption, time limit): bash waits for bidsapp, which stops cleanly (exit",
        "# 75); then the EXIT trap still removes the scratch dir.",
        "trap 'echo \"bidsapp: SIGTERM received; stopping cleanly\" >&2' TERM",
        'mkdir -p "$work"',
        'chmod 700 "$work"',
        "",
        " \\\n  ".join(call),
        "",
    ]
    return "\n".join(lines)


def participant_script(plan: Plan, batch: Path, tasks: int) -> str:
    limit = max(1, min(plan.array_limit, tasks))
    rps = per_task_rps(plan.drive_rps, plan.array_limit, tasks)
    q = shlex.quote
    call = [
        *_launcher(plan, batch),
        f"{q(plan.source)} {q(plan.output)} participant",
        f"--subject-map {q(str(plan.subject_map))}",
        f'--task-list {q(str(batch / "tasks.tsv"))} --task-index "$SLURM_ARRAY_TASK_ID"',
        *_common(plan, rps),
    ]
    return _script(
        plan,
        batch,
        [f"#SBATCH --array=1-{tasks}%{limit}", f"#SBATCH --output={batch}/logs/%A_%a.log"],
        "bidsapp-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}",
        call,
        f"Participant array: task i runs line i of tasks.tsv, at most {limit} at once",
    )


def group_script(plan: Plan, batch: Path) -> str:
    q = shlex.quote
    call = [
        *_launcher(plan, batch),
        f"{q(plan.source)} {q(plan.output)} group",
        f"--task-list {q(str(batch / 'tasks.tsv'))}",
        *_common(plan, plan.drive_rps),
    ]
    return _script(
        plan,
        batch,
        [f"#SBATCH --output={batch}/logs/group-%j.log"],
        "bidsapp-group-${SLURM_JOB_ID}",
        call,
        "Group job: submit with --dependency=afterany:<array job id>",
    )


def write_batch(plan: Plan, tasks: Sequence[SubjectSession]) -> Batch:
    """A new batch folder holding the task list and both scripts."""
    if not tasks:
        raise UsageError("no tasks to write")
    check_plan(plan)
    plan.slurm_dir.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[6:]) for p in plan.slurm_dir.glob("batch-*") if p.name[6:].isdigit()]
    number = max(taken, default=0) + 1
    while True:
        folder = plan.slurm_dir / f"batch-{number:03d}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            number += 1  # another write at the same moment: take the next
    (folder / "logs").mkdir()
    write_tasks(folder / "tasks.tsv", tasks)
    participant, group = folder / "participant.sbatch", folder / "group.sbatch"
    participant.write_text(participant_script(plan, folder, len(tasks)))
    group.write_text(group_script(plan, folder))
    for script in (participant, group):
        script.chmod(0o755)
    return Batch(folder, tuple(tasks), participant, group)


def _slurm_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UsageError(
            f"{name} is not on PATH: run this on the cluster's login node",
            hint="or use 'bidsapp slurm write' and submit the scripts with sbatch yourself",
        )
    return path


def sbatch(script: Path, *options: str, env: Mapping[str, str] | None = None) -> str:
    """Submit a script with `sbatch --parsable`; returns the job id, or raises on any failure."""
    try:
        proc = subprocess.run(
            [_slurm_tool("sbatch"), "--parsable", *options, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TemporaryFailure("sbatch did not answer within 120 s") from exc
    answer = proc.stdout.strip()
    if proc.returncode == 0 and re.fullmatch(r"\d+(;\S+)?", answer):
        return answer.split(";")[0]
    reason = (proc.stderr.strip().splitlines() or [answer or f"exit {proc.returncode}"])[-1]
    if re.search(r"contact|timed out|try again|temporarily", reason, re.IGNORECASE):
        raise TemporaryFailure(f"sbatch could not reach the scheduler: {reason}")
    raise UsageError(
        f"sbatch refused {script.name}: {reason}",
        hint="check --partition, --time, --mem and --cpus against 'sinfo'",
    )


def submit(batch: Batch, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The array, then the group job that runs after it whatever the tasks' outcome."""
    array = sbatch(batch.participant, env=env)
    try:
        group = sbatch(batch.group, f"--dependency=afterany:{array}", env=env)
    except (UsageError, TemporaryFailure) as exc:
        exc.hint = (
            f"the array {array} is queued; submit the group job yourself: sbatch "
            f"--dependency=afterany:{array} {batch.group}"
        )
        raise
    return array, group


def queued_jobs(plan: Plan, env: Mapping[str, str] | None = None) -> list[str]:
    """This OUTPUT's jobs still pending or running (squeue: no accounting database needed)."""
    proc = subprocess.run(
        [_slurm_tool("squeue"), "--noheader", "--format=%i", f"--name={plan.job_name}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if proc.returncode != 0:
        raise TemporaryFailure(f"squeue failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stdout.split()


def check_sources(source: Store, subjects: Sequence[Subject]) -> None:
    """Every map row's exam folder is in SOURCE, by one listing of its top level (the first
    folder of each row's path; `id:` rows name Drive folders directly and are not listed)."""
    present = {entry.name for entry in source.list("") if entry.is_dir}
    missing = [
        s for s in subjects if not s.source.startswith("id:") and s.source_parts[0] not in present
    ]
    if missing:
        jobs = ", ".join(t.job_name for t in tasks_for(missing)[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise LocationNotFound(
            f"{len(missing)} of the {len(subjects)} exam folders in the subject map are not in "
            f"SOURCE {source.describe()} ({jobs}{more}); nothing was submitted",
            hint="check SOURCE for a typo, or the map's source column ('bidsapp subjects' "
            "lists what SOURCE holds)",
        )


def to_redo(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Status rows whose job is not done: failed, never ran, interrupted or incomplete."""
    return [r for r in rows if not (r["published"] and r["state"] in ("published", "skipped"))]


def run_action(action: str, plan: Plan, *, date_secret: Path | None) -> int:
    """`bidsapp slurm write|submit|resubmit`: a new batch from the map (resubmit: only the jobs
    that are not published), written and, unless `write`, submitted with its group job."""
    check_plan(plan)  # before anything is made or asked
    subjects = read_map(plan.subject_map)
    tasks = tasks_for(subjects)
    if date_secret is not None:  # made here, not raced for by the tasks
        load_secret(date_secret)
    if action == "resubmit":
        queued = queued_jobs(plan)
        if queued:
            raise UsageError(
                f"{len(queued)} jobs for this OUTPUT are still queued or running",
                hint=f"wait for them (squeue --name={plan.job_name}) or scancel them first",
            )
    settings = Settings(
        source=plan.source,
        output=plan.output,
        level="group",
        drive_rps=plan.drive_rps,
        credentials=plan.credentials,
    )
    # What would make every task fail alike is found here, once, before a task is queued:
    # SOURCE and the credentials (opening it signs in), the map's exam folders, then OUTPUT.
    check_sources(open_store(plan.source, settings=settings), subjects)
    store = open_store(plan.output, for_output=True, settings=settings)
    init_shared(store)  # `group --init`: shared folders exist before the tasks fan out
    if action == "resubmit":
        rows = to_redo(job_states(store, [(t.label, t.session) for t in tasks]))
        for row in rows:
            code = "" if row["exit_code"] is None else f", exit {row['exit_code']}"
            retry = ", retryable" if row["retryable"] else ""
            job = SubjectSession(row["label"], row["session"])
            print(f"{job.job_name}: {row['state']}{code}{retry}")
        if not rows:
            print("nothing to resubmit: every task is published")
            return 0
        tasks = [SubjectSession(r["label"], r["session"]) for r in rows]
    batch = write_batch(plan, tasks)
    limit = min(plan.array_limit, len(tasks))
    rate = per_task_rps(plan.drive_rps, plan.array_limit, len(tasks))
    print(
        f"{batch.folder}: {len(tasks)} tasks, at most {limit} at once, "
        f"{rate:.3g} Drive requests/s each"
    )
    if action == "write":
        print(f"submit: jid=$(sbatch --parsable {shlex.quote(str(batch.participant))})")
        print(f"        sbatch --dependency=afterany:$jid {shlex.quote(str(batch.group))}")
        return 0
    array, group = submit(batch)
    print(f"array job {array}\ngroup job {group} (after the array)")
    return 0
