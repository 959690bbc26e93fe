"""Loguru sinks (human console, a JSON file per job) and the PHI redaction of every record."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record


class Redacts(Protocol):
    """What the redactor needs of an identifier set (bidsapp.privacy.phi.Identifiers)."""

    def merge(self, other: Any) -> Any: ...

    def redact(self, text: str) -> str: ...


class Redactor:
    """Replaces every known identifier in log messages.

    Identifiers become known during a job (the exam folder's name first, DICOM header values
    once staging has read them), so the set grows; it is reset for each job.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: Redacts | None = None

    def reset(self) -> None:
        with self._lock:
            self._ids = None

    def add_identifiers(self, ids: Redacts) -> None:
        with self._lock:
            self._ids = ids if self._ids is None else self._ids.merge(ids)

    def __call__(self, text: str) -> str:
        with self._lock:
            ids = self._ids
        return ids.redact(text) if ids is not None else text


redactor = Redactor()

_ABSOLUTE = re.compile(r"(?<![\w.~$-])/(?:[^\s\"'/\\,;:()\[\]{}<>]+/)*[^\s\"'/\\,;:()\[\]{}<>]*")


class LocalPaths:
    """Takes this machine's absolute paths out of text that leaves it (a published log):
    they name users, home folders, where a key or the date secret lives. The given roots
    (SOURCE, OUTPUT, the work dir) become their names; any other path whose top folder
    exists here keeps only its last component. Dataset paths ('/sub-01/anat/…', as the
    validator writes them) and URLs are left as they are."""

    def __init__(self, named: dict[str, str]) -> None:
        roots = [(path.rstrip("/"), name) for path, name in named.items()]
        self._named = sorted(
            ((path, name) for path, name in roots if path.startswith("/") and path),
            key=lambda item: -len(item[0]),
        )

    def __call__(self, text: str) -> str:
        for path, name in self._named:
            text = text.replace(path, name)
        return _ABSOLUTE.sub(_last_component, text)


def _last_component(match: re.Match[str]) -> str:
    path = match.group(0)
    top = path.split("/")[1]
    if not top or not os.path.isdir(f"/{top}"):
        return path
    return ".../" + path.rsplit("/", 1)[-1]


def _patch(record: Record) -> None:
    record["message"] = redactor(record["message"])
    record["extra"].setdefault("subject", "-")


def _console_format(record: Record) -> str:
    subject = record["extra"].get("subject", "-")
    prefix = "" if subject == "-" else f"sub-{subject} "
    return "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> " + prefix + "{message}\n"


def known_level(level: str) -> bool:
    """Whether loguru has a level of that name (any case)."""
    try:
        logger.level(level.upper())
    except ValueError:
        return False
    return True


def setup_console(level: str = "INFO") -> None:
    """Replace loguru's default sink with the redacted human console sink.

    An unknown level leaves an INFO console in place before it raises ValueError, so the error
    can still be printed.
    """
    logger.remove()
    JsonLog.sink = None
    logger.configure(patcher=_patch)
    known = known_level(level)
    logger.add(sys.stderr, level=level.upper() if known else "INFO", format=_console_format)
    if not known:
        raise ValueError(f"unknown log level {level!r}")


class JsonLog:
    """A job's JSON-lines log file, every record flushed as it comes.

    A write that fails (a full work disk) stops the log and is kept in `error`: it is never
    raised into the logging call, printed as a handler traceback (which would show the record),
    or raised by `close`, so the job still ends with its one-line error and its cleanup.
    """

    # One loguru sink feeds every open job log of the process: adding a sink costs ~6 ms
    # (loguru's exception formatter asks sysconfig for ~36 paths), a no-op rerun's whole job.
    sink: ClassVar[int | None] = None
    opened: ClassVar[list[JsonLog]] = []

    def __init__(self, path: Path) -> None:
        self.error: OSError | None = None
        self._file = path.open("a", encoding="utf-8", errors="backslashreplace")
        if JsonLog.sink is None:
            JsonLog.sink = logger.add(JsonLog._dispatch, level="DEBUG", serialize=True, catch=False)
        JsonLog.opened.append(self)

    @staticmethod
    def _dispatch(message: str) -> None:
        for log in list(JsonLog.opened):
            log._write(message)

    def _write(self, message: str) -> None:
        if self.error is not None:
            return
        try:
            self._file.write(message)
            self._file.flush()
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        """Stop logging into the file and close it; never raises."""
        with contextlib.suppress(ValueError):  # already closed
            JsonLog.opened.remove(self)
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or exc


def bound(subject: str) -> Any:
    """A logger with the subject bound to every record."""
    return logger.bind(subject=subject)
