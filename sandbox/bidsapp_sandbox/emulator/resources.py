"""How a file looks through the API: its JSON resource and the row `q` is evaluated on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from bidsapp_sandbox.emulator.model import ROLE_RANK, FileRec, State, at_least

FILE_FIELDS = frozenset(  # every files#resource field name, from the discovery document
    """kind id name mimeType parents size md5Checksum createdTime modifiedTime trashed
    explicitlyTrashed starred driveId teamDriveId shortcutDetails owners ownedByMe description
    properties appProperties capabilities version quotaBytesUsed webViewLink webContentLink
    headRevisionId sha1Checksum sha256Checksum fileExtension fullFileExtension originalFilename
    permissions permissionIds spaces trashedTime lastModifyingUser sharingUser shared viewedByMe
    viewedByMeTime modifiedByMe modifiedByMeTime sharedWithMeTime iconLink thumbnailLink
    hasThumbnail resourceKey exportLinks contentHints imageMediaMetadata videoMediaMetadata
    folderColorRgb copyRequiresWriterPermission writersCanShare isAppAuthorized
    hasAugmentedPermissions linkShareMetadata labelInfo thumbnailVersion viewersCanCopyContent
    contentRestrictions inheritedPermissionsDisabled downloadRestrictions""".split()  # noqa: SIM905 - a word list reads better here
)
LIST_FIELDS = frozenset({"kind", "nextPageToken", "incompleteSearch", "files"})
DEFAULT_FILE_FIELDS = "kind,id,name,mimeType"
DEFAULT_LIST_FIELDS = "kind,nextPageToken,incompleteSearch,files(kind,id,name,mimeType)"


def _user(email: str, caller: str) -> dict[str, Any]:
    return {
        "kind": "drive#user",
        "displayName": email.split("@")[0],
        "emailAddress": email,
        "me": email == caller,
        "permissionId": hashlib.md5(email.encode(), usedforsecurity=False).hexdigest()[:20],
    }


def file_resource(state: State, rec: FileRec, caller: str) -> dict[str, Any]:
    """The full files#resource of `rec` as `caller` sees it."""
    role = state.role(caller, rec)
    trashed = state.is_trashed(rec)
    out: dict[str, Any] = {
        "kind": "drive#file",
        "id": rec.id,
        "name": rec.name,
        "mimeType": rec.mime,
        "starred": False,
        "trashed": trashed,
        "explicitlyTrashed": rec.trashed,
        "createdTime": rec.created,
        "modifiedTime": rec.modified,
        "version": str(rec.version),
        "spaces": ["drive"],
        "webViewLink": f"https://drive.google.com/file/d/{rec.id}/view",
        "capabilities": _capabilities(state, rec, role),
    }
    if rec.parent is not None:
        out["parents"] = [rec.parent]
    if rec.drive_id is not None:
        out["driveId"] = rec.drive_id
        out["teamDriveId"] = rec.drive_id
    elif rec.owner is not None:
        out["owners"] = [_user(rec.owner, caller)]
        out["ownedByMe"] = rec.owner == caller
    if rec.blob is not None:
        out["size"] = str(rec.size)
        out["md5Checksum"] = rec.blob
        out["quotaBytesUsed"] = str(rec.size)
        out["headRevisionId"] = f"{rec.blob[:12]}{rec.version}"
        out["originalFilename"] = rec.name
        if "." in rec.name.strip("."):
            out["fullFileExtension"] = rec.name.split(".", 1)[1]
            out["fileExtension"] = rec.name.rsplit(".", 1)[1]
    if rec.shortcut_target is not None:
        target = state.files.get(rec.shortcut_target)
        details = {"targetId": rec.shortcut_target}
        if target is not None:
            details["targetMimeType"] = target.mime
        out["shortcutDetails"] = details
    if rec.description is not None:
        out["description"] = rec.description
    if rec.properties:
        out["properties"] = dict(rec.properties)
    if rec.app_properties:
        out["appProperties"] = dict(rec.app_properties)
    out["shared"] = bool(rec.shares) or rec.drive_id is not None
    return out


def _capabilities(state: State, rec: FileRec, role: str | None) -> dict[str, bool]:
    in_drive = rec.drive_id is not None
    organize = "fileOrganizer" if in_drive else "writer"
    return {
        "canEdit": at_least(role, "writer"),
        "canAddChildren": rec.is_folder and at_least(role, "writer"),
        "canDownload": role is not None,
        "canRename": at_least(role, "writer"),
        "canTrash": at_least(role, "fileOrganizer" if in_drive else "owner"),
        "canDelete": at_least(role, "organizer" if in_drive else "owner"),
        "canMoveItemWithinDrive": at_least(role, organize),
        "canListChildren": rec.is_folder and role is not None,
    }


class QueryRow(Mapping[str, Any]):
    """The fields `q` can test, computed only when a clause asks for them."""

    _KEYS = (
        "name",
        "mimeType",
        "trashed",
        "starred",
        "hidden",
        "sharedWithMe",
        "parents",
        "owners",
        "writers",
        "readers",
        "createdTime",
        "modifiedTime",
        "properties",
        "appProperties",
    )

    def __init__(self, state: State, rec: FileRec, caller: str) -> None:
        self._state, self._rec, self._caller = state, rec, caller

    def __getitem__(self, key: str) -> Any:
        rec, state = self._rec, self._state
        match key:
            case "name":
                return rec.name
            case "mimeType":
                return rec.mime
            case "trashed":
                return state.is_trashed(rec)
            case "starred" | "hidden":
                return False
            case "sharedWithMe":
                return (
                    rec.drive_id is None
                    and rec.owner != self._caller
                    and any(self._caller in n.shares for n in state.ancestors(rec))
                )
            case "parents":
                return [rec.parent] if rec.parent else []
            case "owners":
                return [rec.owner] if rec.owner and rec.drive_id is None else []
            case "writers":
                held = state.holders(rec)
                return [e for e, r in held.items() if ROLE_RANK[r] >= ROLE_RANK["writer"]]
            case "readers":
                return list(state.holders(rec))
            case "createdTime":
                return rec.created
            case "modifiedTime":
                return rec.modified
            case "properties":
                return rec.properties
            case "appProperties":
                return rec.app_properties
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)
