"""What a job leaves behind when it cannot finish: owners of work folders, the sweep of
abandoned ones, and a job log on a full disk (issue 16: P5, T1)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from loguru import logger

from bidsapp import logs
from bidsapp.pipeline.owner import OWNER_FILE, Owner, abandoned, write_owner
from bidsapp.pipeline.participant import sweep_abandoned

RUN = "20240101T000000abcdef"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_p5_owner_gone_only_when_this_host_knows() -> None:
    me = Owner.this_process()
    assert me.gone() is False
    assert replace(me, pid=_dead_pid()).gone() is True
    assert replace(me, started=me.started + 1).gone() is True, "a reused process id"
    assert replace(me, boot_id="another boot").gone() is True
    assert replace(me, host=socket.gethostname() + "-other", pid=_dead_pid()).gone() is None
    assert Owner.from_json({"pid": "x"}) is None


def test_p5_sweep_removes_only_folders_of_jobs_that_are_gone(tmp_path: Path) -> None:
    def folder(name: str, owner: Owner | None) -> Path:
        path = tmp_path / name
        (path / "dicom").mkdir(parents=True)
        (path / "dicom" / "000001.dcm").write_bytes(b"raw patient data")
        if owner is not None:
            (path / OWNER_FILE).write_text(json.dumps(owner.to_json()))
        return path

    me = Owner.this_process()
    dead = folder(f"sub-01-{RUN}", replace(me, pid=_dead_pid()))
    dead_session = folder(f"sub-02_ses-1-{RUN}", replace(me, boot_id="before a reboot"))
    live = folder(f"sub-03-{RUN}", me)
    elsewhere = folder(f"sub-04-{RUN}", replace(me, host="node7", pid=_dead_pid()))
    unowned = folder(f"sub-05-{RUN}", None)
    not_ours = folder("sub-06-notes", replace(me, pid=_dead_pid()))

    removed = sweep_abandoned(tmp_path)

    assert removed == [dead.name, dead_session.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, elsewhere, unowned, not_ours)
    )
    write_owner(unowned)
    assert not abandoned(unowned)


def test_t1_a_job_log_on_a_full_disk_never_raises_nor_prints(tmp_path: Path) -> None:
    printed: list[str] = []
    console = logger.add(printed.append, level="DEBUG")
    log = logs.JsonLog(Path("/dev/full"))  # every write: ENOSPC
    try:
        logger.info("a record that cannot be written")
        logger.error("and another")
    finally:
        log.close()
        logger.remove(console)
    assert log.error is not None and log.error.errno == 28
    assert len(printed) == 2 and not any("Traceback" in p or "Logging error" in p for p in printed)
