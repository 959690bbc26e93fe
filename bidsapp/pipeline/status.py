"""Status records: one small JSON per job in OUTPUT/.bidsapp/status/, the last state it reached."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bidsapp.bids import SubjectSession
from bidsapp.errors import BidsAppError
from bidsapp.pipeline.owner import Owner
from bidsapp.pipeline.publish import Target, published_manifest
from bidsapp.pipeline.subjects import read_map
from bidsapp.stores import Store

STATES = ("started", "staged", "converted", "gated", "published", "skipped", "failed")
RUNNING = STATES[:4]


@dataclass
class StatusRecord:
    """What `bidsapp status` reads; written at every state change, best effort."""

    label: str
    session: str
    run_id: str
    state: str = "started"
    exit_code: int | None = None
    error_class: str = ""
    retryable: bool = False
    set_aside: int = 0  # series left out of the publication for failing validation
    timings: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0
    owner: dict[str, Any] = field(default_factory=lambda: Owner.this_process().to_json())
    """The process that writes this record: `status` can tell when it is gone."""

    @property
    def path(self) -> str:
        return f".bidsapp/status/{SubjectSession(self.label, self.session).job_name}.json"

    def load(self, store: Store) -> dict[str, Any]:
        """The record this job's subject has in `store` now ({} when none or unreadable)."""
        try:
            data = json.loads(store.read_bytes(self.path)) if store.exists(self.path) else {}
        except (BidsAppError, OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, store: Store, state: str | None = None) -> None:
        """Record a state; a status that cannot be written never fails the job by itself."""
        if state is not None:
            self.state = state
        self.updated = time.time()
        with contextlib.suppress(BidsAppError, OSError):
            store.write_bytes(self.path, json.dumps(asdict(self), indent=2).encode() + b"\n")


def read_all(store: Store) -> list[dict[str, Any]]:
    """Every status record in OUTPUT."""
    if not store.exists(".bidsapp/status"):
        return []
    records = []
    for entry in store.list(".bidsapp/status"):
        if entry.name.endswith(".json"):
            try:
                records.append(json.loads(store.read_bytes(f".bidsapp/status/{entry.name}")))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return records


def job_states(
    store: Store, expected: list[tuple[str, str]] | None = None, *, deep: bool = False
) -> list[dict[str, Any]]:
    """Every job's last state, sorted by label and session.

    `published` is true only when the job's manifest is present and matches its files. With
    `expected` (label, session) pairs (from a subject map), jobs that never ran are 'missing'.
    """
    records = {(r["label"], r["session"]): r for r in read_all(store)}
    rows = []
    for key in sorted(set(records) | set(expected or ())):
        record = records.get(key)
        complete = published_manifest(store, Target(*key), deep=deep) is not None
        if record is None:
            record = {"label": key[0], "session": key[1], "run_id": "", "exit_code": None}
            record |= {"error_class": "", "retryable": False, "timings": {}, "updated": 0.0}
            state = "published" if complete else "missing"
        else:
            state = record["state"]
            if state in ("published", "skipped") and not complete:
                state = "incomplete"
        rows.append({**record, "state": state, "published": complete, **_gone(record, state)})
    return rows


def _gone(record: dict[str, Any], state: str) -> dict[str, bool]:
    """`process_gone` for a record still in a running state whose process has ended (known
    only on the host that ran it)."""
    if state not in RUNNING:
        return {}
    owner = Owner.from_json(record.get("owner"))
    return {"process_gone": True} if owner is not None and owner.gone() else {}


def print_status(
    store: Store, subject_map: Path | None, *, as_json: bool, deep: bool = False
) -> int:
    """`bidsapp status`: every job's last state, one line each (or JSON)."""
    expected = [(s.label, s.session) for s in read_map(subject_map)] if subject_map else None
    rows = job_states(store, expected, deep=deep)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print("participant\tsession\tstate\texit\tnote")
    for r in rows:
        job = SubjectSession(r["label"], r["session"])
        code = "-" if r["exit_code"] is None else r["exit_code"]
        error = r["error_class"] + (" (retryable)" if r["retryable"] else "")
        if r.get("set_aside"):
            error = f"{r['set_aside']} series set aside (validation)"
        state = r["state"] + (" (process gone)" if r.get("process_gone") else "")
        session = f"ses-{job.session}" if job.session else "-"
        print(f"sub-{job.label}\t{session}\t{state}\t{code}\t{error}")
    return 0
