"""Which process a job's work folder and status record belong to, and whether it is gone.

A job killed by SIGKILL (or a node crash) cannot clean up: its work folder keeps raw DICOMs and
its status record says `started` forever. The owner written beside them lets a later job sweep
the folder and `status` say the process is gone. Only the host that ran a process can tell:
the host name, the boot (a reboot reuses process ids) and the process's start time (so does a
long uptime) must all match a running process.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OWNER_FILE = "owner.json"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """When a process started (clock ticks after boot); None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _alive_without_proc(pid)
    # the command name may hold spaces and parentheses: fields count from the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive_without_proc(pid: int) -> int | None:
    """Without a readable /proc: 0 (start unknown) while the process exists, else None."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0  # it exists, owned by someone else
    return 0


@dataclass(frozen=True)
class Owner:
    """A process, as written by itself into its work folder and status record."""

    host: str
    pid: int
    boot_id: str
    started: int

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _boot_id(), _start_ticks(os.getpid()) or 0)

    @classmethod
    def from_json(cls, data: Any) -> Owner | None:
        try:
            return cls(
                str(data["host"]), int(data["pid"]), str(data["boot_id"]), int(data["started"])
            )
        except (KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def gone(self) -> bool | None:
        """True when the process has ended, False while it runs, None when this host cannot
        tell (another host ran it)."""
        if self.host != socket.gethostname():
            return None
        if self.boot_id != _boot_id():
            return True  # the machine rebooted since
        started = _start_ticks(self.pid)
        if started is None:
            return True
        return bool(self.started and started and started != self.started)  # 0: unknown


def write_owner(folder: Path) -> None:
    """Record this process as the owner of a work folder (before anything else goes in)."""
    (folder / OWNER_FILE).write_text(json.dumps(Owner.this_process().to_json()) + "\n")


def abandoned(folder: Path) -> bool:
    """Whether a work folder's owner is known to be gone (no owner file: not ours to judge)."""
    try:
        owner = Owner.from_json(json.loads((folder / OWNER_FILE).read_text()))
    except (OSError, ValueError):
        return False
    return owner is not None and owner.gone() is True
