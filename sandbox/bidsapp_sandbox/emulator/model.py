"""Drive's data model: files, shared drives, My Drive roots, and who holds which role on what."""

from __future__ import annotations

import dataclasses
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
GOOGLE_APPS = "application/vnd.google-apps."

# Drive's roles, weakest first; "owner" exists only in My Drive, "organizer" only in shared drives.
ROLE_RANK = {
    "reader": 1,
    "commenter": 2,
    "writer": 3,
    "fileOrganizer": 4,
    "organizer": 5,
    "owner": 6,
}
DRIVE_ROLES = ("organizer", "fileOrganizer", "writer", "commenter", "reader")
_ID_CHARS = string.ascii_letters + string.digits + "-_"


def is_service_account(email: str) -> bool:
    return email.endswith(".gserviceaccount.com")


def at_least(role: str | None, needed: str) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def new_id(length: int = 33, prefix: str = "1") -> str:
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(length - len(prefix)))


@dataclass
class FileRec:
    """One Drive item. Drive v3 gives every item but a root exactly one parent."""

    id: str
    name: str
    mime: str
    parent: str | None
    owner: str | None  # None inside shared drives: the drive owns its items
    drive_id: str | None
    created: str
    modified: str
    seq: int
    blob: str | None = None  # md5 of the content, which keys the blob store
    size: int | None = None
    trashed: bool = False  # explicitly trashed; descendants of a trashed folder are trashed too
    shortcut_target: str | None = None
    shares: dict[str, str] = field(default_factory=dict)  # email → role, inherited downwards
    description: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    app_properties: dict[str, str] = field(default_factory=dict)
    version: int = 1
    is_root: bool = False

    @property
    def is_folder(self) -> bool:
        return self.mime == FOLDER


@dataclass
class SharedDrive:
    id: str
    name: str
    created: str
    members: dict[str, str] = field(default_factory=dict)  # email → one of DRIVE_ROLES


class Clock:
    """RFC 3339 timestamps that strictly increase, so "oldest" is never a tie."""

    def __init__(self) -> None:
        self._last = datetime(1970, 1, 1, tzinfo=UTC)

    def now(self) -> str:
        now = datetime.now(UTC)
        stamp = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if stamp <= self._last:
            stamp = self._last + timedelta(milliseconds=1)
        self._last = stamp
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"

    def observe(self, stamp: str) -> None:
        seen = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        self._last = max(self._last, seen)


class State:
    """Every file and shared drive; callers hold `lock` (see DriveApi) while using it."""

    def __init__(self) -> None:
        self.files: dict[str, FileRec] = {}
        self.drives: dict[str, SharedDrive] = {}
        self.roots: dict[str, str] = {}  # email → id of that identity's My Drive root
        self.clock = Clock()
        self._seq = 0
        self._kids: dict[str, dict[str, None]] = {}  # parent id → child ids, in creation order

    # --- construction -------------------------------------------------------------------------
    def add_file(self, **kwargs: Any) -> FileRec:
        self._seq += 1
        now = self.clock.now()
        kwargs.setdefault("created", now)
        kwargs.setdefault("modified", kwargs["created"])
        rec = FileRec(id=kwargs.pop("id", None) or new_id(), seq=self._seq, **kwargs)
        self._index(rec)
        return rec

    def _index(self, rec: FileRec) -> None:
        self.files[rec.id] = rec
        if rec.parent is not None:
            self._kids.setdefault(rec.parent, {})[rec.id] = None

    def set_parent(self, rec: FileRec, parent: str) -> None:
        if rec.parent is not None:
            self._kids.get(rec.parent, {}).pop(rec.id, None)
        rec.parent = parent
        self._kids.setdefault(parent, {})[rec.id] = None

    def remove(self, rec: FileRec) -> None:
        self.files.pop(rec.id, None)
        self._kids.pop(rec.id, None)
        if rec.parent is not None:
            self._kids.get(rec.parent, {}).pop(rec.id, None)

    def root_of(self, email: str) -> FileRec:
        if email not in self.roots:
            rec = self.add_file(
                id=new_id(19, "0A"),
                name="My Drive",
                mime=FOLDER,
                parent=None,
                owner=email,
                drive_id=None,
                is_root=True,
            )
            self.roots[email] = rec.id
        return self.files[self.roots[email]]

    def add_drive(self, name: str, members: dict[str, str]) -> SharedDrive:
        bad = [r for r in members.values() if r not in DRIVE_ROLES]
        if bad:
            raise ValueError(f"unknown shared drive role {bad[0]!r}; use one of {DRIVE_ROLES}")
        drive = SharedDrive(id=new_id(19, "0A"), name=name, created=self.clock.now())
        drive.members.update(members)
        self.drives[drive.id] = drive
        # A shared drive's root folder has the drive's id, as on Drive.
        self.add_file(
            id=drive.id,
            name=name,
            mime=FOLDER,
            parent=None,
            owner=None,
            drive_id=drive.id,
            is_root=True,
        )
        return drive

    # --- structure ----------------------------------------------------------------------------
    def ancestors(self, rec: FileRec) -> list[FileRec]:
        """`rec` and its ancestors, nearest first."""
        chain = [rec]
        while chain[-1].parent is not None and chain[-1].parent in self.files:
            chain.append(self.files[chain[-1].parent])
        return chain

    def children(self, parent_id: str) -> list[FileRec]:
        return [self.files[i] for i in self._kids.get(parent_id, {})]

    def descendants(self, rec: FileRec) -> list[FileRec]:
        out: list[FileRec] = []
        stack = [rec]
        while stack:
            node = stack.pop()
            for child in self.children(node.id):
                out.append(child)
                stack.append(child)
        return out

    def is_trashed(self, rec: FileRec) -> bool:
        return any(f.trashed for f in self.ancestors(rec))

    # --- access -------------------------------------------------------------------------------
    def role(self, email: str, rec: FileRec) -> str | None:
        """The strongest role `email` holds on `rec` (None: the item is invisible to them)."""
        best: str | None = None
        if rec.drive_id is not None:
            drive = self.drives.get(rec.drive_id)
            best = drive.members.get(email) if drive else None
        elif rec.owner == email:
            return "owner"
        for node in self.ancestors(rec):
            shared = node.shares.get(email)
            if shared and (best is None or ROLE_RANK[shared] > ROLE_RANK[best]):
                best = shared
        return best

    def holders(self, rec: FileRec) -> dict[str, str]:
        """Everyone with a role on `rec` and their strongest role."""
        out: dict[str, str] = {}
        if rec.drive_id and rec.drive_id in self.drives:
            out.update(self.drives[rec.drive_id].members)
        elif rec.owner:
            out[rec.owner] = "owner"
        for node in self.ancestors(rec):
            for email, role in node.shares.items():
                if email not in out or ROLE_RANK[role] > ROLE_RANK[out[email]]:
                    out[email] = role
        return out

    # --- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "files": [dataclasses.asdict(f) for f in self.files.values()],
            "drives": [dataclasses.asdict(d) for d in self.drives.values()],
            "roots": self.roots,
            "seq": self._seq,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        state = cls()
        for item in data.get("files", []):
            rec = FileRec(**item)
            state._index(rec)
            state.clock.observe(rec.created)
            state.clock.observe(rec.modified)
        for item in data.get("drives", []):
            drive = SharedDrive(**item)
            state.drives[drive.id] = drive
        state.roots = dict(data.get("roots", {}))
        state._seq = int(data.get("seq", len(state.files)))
        return state
