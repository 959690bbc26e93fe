"""One frozen settings object, built once in cli.py and passed explicitly.

Precedence: command-line flags, then BIDSAPP_* environment variables, then the defaults here.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.errors import UsageError

DEFAULT_HEURISTIC = "auto"


def env(name: str, default: str) -> str:
    """A BIDSAPP_* environment variable, or the default."""
    return os.environ.get(f"BIDSAPP_{name}", default)


def env_number(name: str, default: float) -> float:
    """A positive number from a BIDSAPP_* environment variable; a usage error otherwise."""
    text = env(name, str(default))
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also NaN
        raise UsageError(f"BIDSAPP_{name}={text!r} is not a positive number")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything one run of bidsapp needs to know."""

    # -- what to run
    source: str
    """Where the exam folders are: a folder (or, with the Drive store, gdrive://…)."""
    output: str
    """The BIDS dataset to publish into."""
    level: str
    """'participant' or 'group'."""
    labels: tuple[str, ...] = ()
    """Participant labels without 'sub-'; empty means every subject in the map."""
    sessions: tuple[str, ...] = ()
    """Session labels without 'ses-'; empty means every session of the selected subjects."""
    subject_map: Path | None = None
    """TSV mapping exam folders to labels (PHI: it stays with the user)."""

    # -- conversion
    heuristic: str = field(default_factory=lambda: env("HEURISTIC", DEFAULT_HEURISTIC))
    """A heuristic name from heuristics/ or a path to a heudiconv heuristic file."""
    overrides: Path | None = None
    """Per-study overrides (TOML/JSON): skip or rename series, patch sidecar fields."""
    force: bool = False
    """Reconvert even when the published manifest says nothing changed."""
    dry_run: bool = False
    """Read listings (and at most DICOM headers); write nothing."""
    verify: bool = False
    """Check every published file's md5 before deciding a subject is up to date (default: its
    size and modification time, or Drive's md5, without reading it)."""
    strict: bool = False
    """Fail the subject when any series fails validation (default: set that series aside)."""
    participant_fields: tuple[str, ...] = ()
    """Demographic fields the user opts into for participants.tsv (age, sex)."""

    # -- de-identification
    deid_profile: str = "basic"
    """De-identification profile for sidecars and TSVs ('none' turns it off; the gate stays)."""
    dates: str = "shift"
    """keep, shift (by a per-label offset derived from the secret) or drop."""
    date_secret: Path = field(
        default_factory=lambda: Path(
            env("DATE_SECRET", "~/.config/bidsapp/date-shift.secret")
        ).expanduser()
    )
    """The date-shift secret: beside the subject map when there is one."""
    sourcedata: bool = False
    """Publish de-identified DICOM copies under sourcedata/ (off by default)."""
    deface_cmd: str = ""
    """A defacing command template with {in} and {out}, run on anatomical images."""

    # -- work dir
    work_dir: Path = field(
        default_factory=lambda: Path(
            env("WORK_DIR", str(Path(tempfile.gettempdir()) / "bidsapp"))
        ).absolute()
    )
    """Where raw patient data is staged (0700); node-local scratch on a cluster."""
    keep_work: bool = False
    """Keep the work dir after the job (it is deleted otherwise, even after a failure)."""

    # -- scale
    jobs: int = 1
    """Subjects (or subject/sessions) run at once, each in its own process."""
    drive_rps: float = field(default_factory=lambda: env_number("DRIVE_RPS", 10))
    """Drive requests per second for this process (a parent running N jobs gives each 1/N)."""
    credentials: Path | None = field(
        default_factory=lambda: (
            Path(env("CREDENTIALS", "")).absolute() if env("CREDENTIALS", "") else None
        )
    )
    """Google credentials file (service-account key or user token); never logged or uploaded."""

    # -- group
    init_only: bool = False
    """group --init: create the shared folders only."""
    expected: tuple[tuple[str, str], ...] | None = None
    """group: the (label, session) jobs to account for (a SLURM batch's task list), so the
    group names any that failed or never ran."""
    dataset_fields: dict[str, Any] = field(default_factory=dict)
    """group: dataset_description.json fields (Name, Authors, License, ...) for a new dataset;
    fields a curator already set are left alone."""

    # -- logging
    log_level: str = field(default_factory=lambda: env("LOG_LEVEL", "INFO"))
    """Console log level; the JSON log always records DEBUG."""
    argv: tuple[str, ...] = ()
    """The command line as given (logged redacted)."""

    def to_json(self) -> dict[str, Any]:
        """Settings for a job's log (paths as strings)."""
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
