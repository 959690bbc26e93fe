"""The error taxonomy: each error carries its exit code and a one-line hint.

Only ``cli.py`` turns these into exit codes. Like pybids, each class also inherits the built-in
it most resembles so callers can catch either.
"""

from __future__ import annotations


class BidsAppError(Exception):
    """Base class: a user-facing failure with an exit code and what to do about it."""

    exit_code = 1
    hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        """The console line: what is wrong, then what to do."""
        text = str(self)
        return f"{text} ({self.hint})" if self.hint else text


class ValidationFailed(BidsAppError):
    """The produced BIDS failed the validator (the BIDS execution spec's code)."""

    exit_code = 16
    hint = "read the validation report"


class GateFailed(BidsAppError):
    """A subject failed its gate: 16 for validation, 65 for nothing converted or PHI."""

    def __init__(self, message: str, exit_code: int, hint: str) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


class UnknownAnalysisLevel(BidsAppError, ValueError):
    exit_code = 17
    hint = "use 'participant' or 'group'"


class NoSubjectSelected(BidsAppError, LookupError):
    exit_code = 18
    hint = "run 'bidsapp subjects SOURCE --subject-map MAP' to list the labels"


class NothingPublished(NoSubjectSelected):
    """`group` on an OUTPUT where no subject is published: it writes nothing."""

    hint = "run the participant level first; 'bidsapp status OUTPUT' shows how each job ended"


class JobsUnfinished(BidsAppError):
    """`group` found jobs of its batch failed or never finished: the first failure's code."""

    hint = "see 'bidsapp status OUTPUT'; 'bidsapp slurm resubmit' reruns exactly those"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(BidsAppError, ValueError):
    exit_code = 64
    hint = "see 'bidsapp --help'"


class BadInputData(BidsAppError, ValueError):
    """No DICOM, nothing converted, only corrupt files, PHI left after de-identification."""

    exit_code = 65


class LocationNotFound(BidsAppError, FileNotFoundError):
    exit_code = 66
    hint = "check the path (on Drive: that it exists and is shared with the identity in use)"
    creatable = False
    """An OUTPUT that does not exist but whose parent folder does: a writing run creates it."""


class OutputNotWritable(BidsAppError, PermissionError):
    exit_code = 73
    hint = "choose an OUTPUT you can write to"


class LocalIOError(BidsAppError, OSError):
    exit_code = 74
    hint = "check free space and permissions of the work dir"


class TemporaryFailure(BidsAppError):
    """Quota, rate limit, network: a rerun is expected to succeed."""

    exit_code = 75
    hint = "rerun later"


class CredentialsError(BidsAppError, PermissionError):
    exit_code = 77
    hint = "run 'bidsapp auth login' or pass --credentials"


EXIT_CODES: dict[int, str] = {
    0: "done, or nothing to do",
    1: "unexpected error (a bug: traceback in the log file)",
    16: "the produced BIDS failed validation",
    17: "unknown analysis level",
    18: "no subject selected",
    64: "usage error",
    65: "bad input data (no DICOM, nothing converted, corrupt files, PHI left)",
    66: "SOURCE/OUTPUT not found or not shared with this identity",
    73: "output cannot be created or written",
    74: "local I/O error",
    75: "temporary failure: a rerun is expected to succeed",
    77: "credentials missing, invalid, expired or without the needed scope",
}
