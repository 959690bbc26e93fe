"""Drive v3 semantics over the model: files.list/get/create/update/delete, drives, about.

Every method takes the caller's email and enforces Drive's rules: items a caller holds no role on
answer 404, shared-drive items need `supportsAllDrives` (and `includeItemsFromAllDrives` to be
listed), a service account owns no storage, moves in shared drives need Content manager.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bidsapp_sandbox.emulator import fields as fieldmask
from bidsapp_sandbox.emulator.blobs import BlobStore
from bidsapp_sandbox.emulator.errors import (
    ApiError,
    bad_request,
    forbidden,
    insufficient_permissions,
    not_found,
)
from bidsapp_sandbox.emulator.model import (
    FOLDER,
    GOOGLE_APPS,
    SHORTCUT,
    FileRec,
    State,
    at_least,
    is_service_account,
)
from bidsapp_sandbox.emulator.paging import (
    decode_page_token,
    encode_page_token,
    int_param,
    order_key,
)
from bidsapp_sandbox.emulator.query import compile_query
from bidsapp_sandbox.emulator.resources import (
    DEFAULT_FILE_FIELDS,
    DEFAULT_LIST_FIELDS,
    FILE_FIELDS,
    LIST_FIELDS,
    QueryRow,
    file_resource,
)

_WRITABLE = {
    "name",
    "mimeType",
    "description",
    "properties",
    "appProperties",
    "trashed",
    "modifiedTime",
    "createdTime",
    "parents",
    "shortcutDetails",
    "starred",
    "originalFilename",
    "contentHints",
    "kind",
    "id",
    "folderColorRgb",
    "writersCanShare",
    "copyRequiresWriterPermission",
}


def flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "false").lower() == "true"


@dataclass(frozen=True)
class Content:
    """An upload's bytes and the Content-Type they came with."""

    data: bytes
    mime: str | None


class DriveApi:
    """The Drive semantics; thread-safe (one lock around the whole state)."""

    def __init__(self, state: State, blobs: BlobStore) -> None:
        self.state = state
        self.blobs = blobs
        self.lock = threading.RLock()

    # --- lookups ------------------------------------------------------------------------------
    def resolve(self, caller: str, file_id: str) -> str:
        return self.state.root_of(caller).id if file_id == "root" else file_id

    def visible(self, caller: str, file_id: str, all_drives: bool) -> tuple[FileRec, str]:
        """The item and the caller's role on it; 404 if they cannot see it."""
        rec = self.state.files.get(self.resolve(caller, file_id))
        if rec is None or (rec.drive_id is not None and not all_drives):
            raise not_found(file_id)
        role = self.state.role(caller, rec)
        if role is None:
            raise not_found(file_id)
        return rec, role

    def render(self, rec: FileRec, caller: str, fields: str | None) -> dict[str, Any]:
        text = fields or DEFAULT_FILE_FIELDS
        mask = fieldmask.parse_fields(text)
        fieldmask.check(text, mask, FILE_FIELDS)
        return dict(fieldmask.apply(file_resource(self.state, rec, caller), mask))

    # --- files.list ---------------------------------------------------------------------------
    def list_files(self, caller: str, params: Mapping[str, str]) -> dict[str, Any]:
        text = params.get("fields") or DEFAULT_LIST_FIELDS
        mask = fieldmask.parse_fields(text)
        fieldmask.check(text, mask, LIST_FIELDS)
        sub = mask.get("files") if "*" not in mask else None
        if sub is not None:
            fieldmask.check(text, sub, FILE_FIELDS)
        page_size = int_param(params, "pageSize", 100, 1, 1000)
        corpora = params.get("corpora", "user")
        drive_id = params.get("driveId")
        all_drives = flag(params, "includeItemsFromAllDrives")
        if all_drives and not flag(params, "supportsAllDrives"):
            raise bad_request(
                "The includeItemsFromAllDrives parameter can only be set to true when "
                "supportsAllDrives is also true.",
                reason="invalidParameter",
                location="includeItemsFromAllDrives",
            )
        if corpora == "drive" and (not drive_id or not all_drives):
            raise bad_request(
                "corpora=drive needs driveId and includeItemsFromAllDrives=true.",
                reason="invalidParameter",
                location="corpora",
            )
        if drive_id and corpora != "drive":
            raise bad_request("driveId needs corpora=drive.", reason="invalidParameter")
        if drive_id and drive_id not in self.state.drives:
            raise ApiError(404, "notFound", f"Shared drive not found: {drive_id}")
        query = params.get("q", "")
        predicate, parents = compile_query(query, {"root": self.state.root_of(caller).id})
        order = order_key(params.get("orderBy", ""))
        key = hashlib.sha256(
            json.dumps([caller, query, params.get("orderBy"), corpora, drive_id]).encode()
        ).hexdigest()[:16]
        offset = decode_page_token(params.get("pageToken"), key)
        matches = [
            rec
            for rec in self._candidates(parents)
            if not rec.is_root
            and _in_corpus(rec, all_drives, drive_id)
            and self.state.role(caller, rec) is not None
            and predicate(QueryRow(self.state, rec, caller))
        ]
        matches.sort(key=order)
        page = matches[offset : offset + page_size]
        body: dict[str, Any] = {
            "kind": "drive#fileList",
            "incompleteSearch": False,
            "files": [file_resource(self.state, rec, caller) for rec in page],
        }
        if offset + page_size < len(matches):
            body["nextPageToken"] = encode_page_token(offset + page_size, key)
        return dict(fieldmask.apply(body, mask))

    def _candidates(self, parents: frozenset[str]) -> Iterable[FileRec]:
        if parents:
            return self.state.children(min(parents))  # any one required parent will do
        return list(self.state.files.values())

    # --- files.create -------------------------------------------------------------------------
    def create(
        self, caller: str, meta: Mapping[str, Any], content: Content | None, all_drives: bool
    ) -> FileRec:
        mime_hint = content.mime if content else None
        fields = self.check_create(caller, meta, mime_hint, content is not None, all_drives)
        rec = self.state.add_file(**fields)
        takes_storage = rec.mime not in (FOLDER, SHORTCUT) and not rec.mime.startswith(GOOGLE_APPS)
        if content is not None or takes_storage:
            data = content.data if content is not None else b""
            rec.blob, rec.size = self.blobs.put(data), len(data)
        return rec

    def check_create(
        self,
        caller: str,
        meta: Mapping[str, Any],
        mime_hint: str | None,
        has_content: bool,
        all_drives: bool,
    ) -> dict[str, Any]:
        """Everything files.create checks, without creating: the new record's fields."""
        _check_writable(meta)
        parents = meta.get("parents") or ["root"]
        if not isinstance(parents, list) or len(parents) != 1:
            raise forbidden(
                "cannotAddParent", "A file must have exactly one parent (Drive v3 single parent)."
            )
        parent, role = self.visible(caller, str(parents[0]), all_drives)
        if not parent.is_folder:
            raise bad_request("The parent is not a folder.", reason="invalidParent")
        if not at_least(role, "writer"):
            raise insufficient_permissions("adding children to this folder")
        mime = str(meta.get("mimeType") or mime_hint or "application/octet-stream")
        target: str | None = None
        if mime == SHORTCUT:
            target_id = (meta.get("shortcutDetails") or {}).get("targetId")
            if not target_id:
                raise bad_request("A shortcut needs shortcutDetails.targetId.", reason="required")
            target = self.visible(caller, str(target_id), True)[0].id
        if has_content and mime in (FOLDER, SHORTCUT):
            raise bad_request(f"An item of type {mime} cannot have content.")
        takes_storage = mime not in (FOLDER, SHORTCUT) and not mime.startswith(GOOGLE_APPS)
        if parent.drive_id is None and takes_storage and is_service_account(caller):
            raise forbidden(
                "storageQuotaExceeded",
                "Service Accounts do not have storage quota. Leverage shared drives, or use "
                "OAuth delegation instead.",
            )
        fields: dict[str, Any] = {
            "name": str(meta.get("name") or "Untitled"),
            "mime": mime,
            "parent": parent.id,
            "owner": None if parent.drive_id else caller,
            "drive_id": parent.drive_id,
            "shortcut_target": target,
            "description": meta.get("description"),
            "properties": _clean_map(meta.get("properties")),
            "app_properties": _clean_map(meta.get("appProperties")),
        }
        if meta.get("createdTime"):
            fields["created"] = str(meta["createdTime"])
        if meta.get("modifiedTime"):
            fields["modified"] = str(meta["modifiedTime"])
        return fields

    # --- files.update -------------------------------------------------------------------------
    def update(
        self,
        caller: str,
        file_id: str,
        meta: Mapping[str, Any],
        params: Mapping[str, str],
        content: Content | None,
    ) -> FileRec:
        all_drives = flag(params, "supportsAllDrives")
        rec, role = self.visible(caller, file_id, all_drives)
        _check_writable(meta)
        if "parents" in meta:
            raise forbidden(
                "fieldNotWritable",
                "The parents field is not directly writable in update requests. Use the "
                "addParents and removeParents parameters instead.",
            )
        if rec.is_root:
            raise insufficient_permissions("changing a root folder")
        changes = {k for k in meta if k not in ("kind", "id")}
        if (changes - {"trashed"} or content is not None) and not at_least(role, "writer"):
            raise insufficient_permissions("this file")
        if "trashed" in meta:
            needed = "fileOrganizer" if rec.drive_id else "owner"
            if not at_least(role, needed):
                raise insufficient_permissions("trashing this file (only its owner may)")
        add = [p for p in params.get("addParents", "").split(",") if p]
        remove = [p for p in params.get("removeParents", "").split(",") if p]
        if add or remove:
            self._move(caller, rec, role, add, remove, all_drives)
        if content is not None:
            if rec.mime in (FOLDER, SHORTCUT):
                raise bad_request(f"An item of type {rec.mime} cannot have content.")
            rec.blob, rec.size = self.blobs.put(content.data), len(content.data)
        if meta.get("name"):
            rec.name = str(meta["name"])
        if meta.get("mimeType") and str(meta["mimeType"]) != rec.mime:
            if FOLDER in (rec.mime, meta["mimeType"]) or SHORTCUT in (rec.mime, meta["mimeType"]):
                raise bad_request("An item cannot change between folder, shortcut and file.")
            rec.mime = str(meta["mimeType"])
        if "description" in meta:
            rec.description = meta["description"]
        for key, attr in (("properties", "properties"), ("appProperties", "app_properties")):
            if key in meta:
                current: dict[str, str] = getattr(rec, attr)
                for name, value in (meta[key] or {}).items():
                    if value is None:
                        current.pop(name, None)
                    else:
                        current[name] = str(value)
        if "trashed" in meta:
            rec.trashed = bool(meta["trashed"])
        rec.version += 1
        rec.modified = str(meta.get("modifiedTime") or self.state.clock.now())
        return rec

    def _move(
        self,
        caller: str,
        rec: FileRec,
        role: str,
        add: list[str],
        remove: list[str],
        all_drives: bool,
    ) -> None:
        current = [rec.parent] if rec.parent else []
        removing = {self.resolve(caller, p) for p in remove}
        result = [p for p in current if p not in removing]
        for pid in add:
            new_parent, parent_role = self.visible(caller, pid, all_drives)
            if not new_parent.is_folder:
                raise bad_request("The parent is not a folder.", reason="invalidParent")
            if not at_least(parent_role, "writer"):
                raise insufficient_permissions("adding children to the new parent")
            if new_parent.id not in result:
                result.append(new_parent.id)
        if len(result) > 1:
            raise forbidden(
                "cannotAddParent",
                "Increasing the number of parents is not allowed (use removeParents).",
            )
        if not result:
            raise forbidden("cannotRemoveParent", "An item must keep one parent.")
        target = self.state.files[result[0]]
        if target.id == rec.parent:
            return
        if rec.id in {a.id for a in self.state.ancestors(target)}:
            raise bad_request("A folder cannot be moved into itself or its descendants.")
        if rec.drive_id is not None and not at_least(role, "fileOrganizer"):
            raise insufficient_permissions(
                "moving items in a shared drive (needs Content manager or Manager)"
            )
        if rec.drive_id is None and not at_least(role, "writer"):
            raise insufficient_permissions("moving this item")
        moved = [rec, *self.state.descendants(rec)]
        # Leaving a shared drive for My Drive makes the mover own the files: an SA cannot.
        into_my_drive = target.drive_id is None and rec.drive_id is not None
        owns_content = any(m.blob is not None for m in moved)
        if into_my_drive and owns_content and is_service_account(caller):
            raise forbidden("storageQuotaExceeded", "Service Accounts do not have storage quota.")
        if target.drive_id != rec.drive_id:
            for item in moved:
                item.drive_id = target.drive_id
                item.owner = None if target.drive_id else (item.owner or caller)
        self.state.set_parent(rec, target.id)

    # --- files.delete -------------------------------------------------------------------------
    def delete(self, caller: str, file_id: str, all_drives: bool) -> None:
        rec, role = self.visible(caller, file_id, all_drives)
        if rec.is_root:
            raise insufficient_permissions("deleting a root folder")
        needed = "organizer" if rec.drive_id else "owner"
        if not at_least(role, needed):
            raise insufficient_permissions(
                "deleting this file (in a shared drive only a Manager may delete, others may trash)"
                if rec.drive_id
                else "deleting this file (only its owner may)"
            )
        for item in [*self.state.descendants(rec), rec]:
            self.state.remove(item)

    # --- media --------------------------------------------------------------------------------
    def media(self, caller: str, file_id: str, all_drives: bool) -> tuple[FileRec, bytes]:
        rec, _ = self.visible(caller, file_id, all_drives)
        if rec.blob is None:
            raise forbidden(
                "fileNotDownloadable",
                "Only files with binary content can be downloaded. Use Export with Docs "
                "Editors files.",
            )
        return rec, self.blobs.get(rec.blob)

    # --- drives and about ---------------------------------------------------------------------
    def drive_resource(self, caller: str, drive_id: str) -> dict[str, Any]:
        drive = self.state.drives.get(drive_id)
        if drive is None or caller not in drive.members:
            raise ApiError(404, "notFound", f"Shared drive not found: {drive_id}")
        role = drive.members[caller]
        return {
            "kind": "drive#drive",
            "id": drive.id,
            "name": drive.name,
            "createdTime": drive.created,
            "hidden": False,
            "capabilities": {
                "canAddChildren": at_least(role, "writer"),
                "canManageMembers": role == "organizer",
                "canDeleteChildren": role == "organizer",
                "canTrashChildren": at_least(role, "fileOrganizer"),
                "canRenameDrive": role == "organizer",
            },
        }

    def list_drives(self, caller: str) -> dict[str, Any]:
        drives = [
            self.drive_resource(caller, d.id)
            for d in self.state.drives.values()
            if caller in d.members
        ]
        return {"kind": "drive#driveList", "drives": drives}

    def about(self, caller: str) -> dict[str, Any]:
        used = sum(
            f.size or 0 for f in self.state.files.values() if f.owner == caller and not f.drive_id
        )
        return {
            "kind": "drive#about",
            "user": {
                "kind": "drive#user",
                "displayName": caller.split("@")[0],
                "emailAddress": caller,
                "me": True,
            },
            "storageQuota": {
                "limit": "0" if is_service_account(caller) else str(15 * 2**30),
                "usage": str(used),
                "usageInDrive": str(used),
            },
        }


def _in_corpus(rec: FileRec, all_drives: bool, drive_id: str | None) -> bool:
    """Whether a listing with these flags can return `rec` (before permissions and `q`)."""
    if drive_id is not None:
        return rec.drive_id == drive_id
    return rec.drive_id is None or all_drives


def _check_writable(meta: Mapping[str, Any]) -> None:
    unknown = [k for k in meta if k not in _WRITABLE]
    if unknown:
        raise forbidden(
            "fieldNotWritable",
            f"The resource body includes fields which are not directly writable: {unknown[0]}",
        )


def _clean_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items() if v is not None}
