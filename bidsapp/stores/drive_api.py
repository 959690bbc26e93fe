"""The Drive v3 client under the store: one authorized Http per thread, every request paced.

Every request goes through the process's pacer (bidsapp.stores.pacer) with `classify` deciding
what is worth retrying, and leaves as one of bidsapp's errors (exit codes) when it finally fails.
The client library's own retries are off (`num_retries=0`, httplib2.RETRIES = 1): one retry layer.
"""

from __future__ import annotations

import errno
import functools
import http.client
import json
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

import google_auth_httplib2
import httplib2
from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.discovery import Resource, build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseDownload, MediaIoBaseUpload
from loguru import logger

from bidsapp.errors import (
    BidsAppError,
    CredentialsError,
    LocationNotFound,
    OutputNotWritable,
    TemporaryFailure,
)
from bidsapp.stores.drive_auth import Identity, refresh_failure
from bidsapp.stores.pacer import Pacer, RetriesExhausted, Retry

T = TypeVar("T")
FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
FILE_FIELDS = (
    "id,name,mimeType,size,md5Checksum,createdTime,modifiedTime,parents,driveId,trashed,"
    "shortcutDetails"
)
LIST_FIELDS = f"nextPageToken,files({FILE_FIELDS})"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
DAILY_REASONS = {"dailyLimitExceeded", "uploadLimitExceeded", "quotaExceeded"}
SCOPE_REASONS = {"insufficientPermissions", "insufficientScopes", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT}
SA_STORAGE_HINT = (
    "a service account has no Drive storage of its own, so it cannot own files in a person's "
    "My Drive: publish into a shared drive where it is a Content manager, or sign in as a "
    "person with 'bidsapp auth login'"
)

# httplib2 re-sends a failed request by itself; the pacer must be the only retry layer.
httplib2.RETRIES = 1


class RestartUpload(Exception):
    """The resumable session is gone (404/410): the upload starts again from byte 0."""


class DriveNotFound(LocationNotFound):
    """Drive answered 404: missing, or not shared with the identity in use."""


def error_reason(exc: HttpError) -> str:
    """The first `errors[].reason` of a Google JSON error ('' when absent)."""
    try:
        data = json.loads(exc.content.decode("utf-8", "replace"))
        return str(data["error"]["errors"][0].get("reason", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def error_message(exc: HttpError) -> str:
    try:
        data = json.loads(exc.content.decode("utf-8", "replace"))
        return str(data["error"].get("message", ""))[:200]
    except (ValueError, KeyError, TypeError, AttributeError):
        return str(exc.resp.status)


def _retry_after(exc: HttpError) -> float:
    try:
        return max(0.0, float(exc.resp.get("retry-after", 0)))
    except (TypeError, ValueError):
        return 0.0


def classify(exc: BaseException) -> Retry | None:
    """Whether a failed Drive request is worth another try (and how politely)."""
    if isinstance(exc, RestartUpload):
        return Retry()
    if isinstance(exc, HttpError):
        status = exc.resp.status
        if (status == 403 and error_reason(exc) in RATE_REASONS) or status == 429:
            return Retry(after=_retry_after(exc), slow_down=True)
        if status in RETRY_STATUSES:
            return Retry(after=_retry_after(exc))
        return None
    if isinstance(exc, RefreshError):
        return Retry() if getattr(exc, "retryable", False) else None
    if isinstance(exc, TransportError | ConnectionError | TimeoutError | http.client.HTTPException):
        return Retry()
    if isinstance(exc, httplib2.HttpLib2Error):
        return Retry()
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return Retry()
    return None


@functools.cache
def _discovery(root_url: str) -> dict[str, Any]:
    doc = get_static_doc("drive", "v3")
    if doc is None:  # pragma: no cover - the document ships inside google-api-python-client
        raise RuntimeError("google-api-python-client lacks its drive v3 discovery document")
    data: dict[str, Any] = json.loads(doc)
    if root_url:
        # api_endpoint would not move upload URLs: replace the root the whole document uses.
        data["rootUrl"] = root_url.rstrip("/") + "/"
        data["mtlsRootUrl"] = data["rootUrl"]
        data["baseUrl"] = data["rootUrl"] + data["servicePath"]
    return data


class DriveClient:
    """Drive v3 for one identity; safe to share between threads."""

    def __init__(
        self, identity: Identity, pacer: Pacer, *, url: str = "", timeout: float = 60.0
    ) -> None:
        self.identity, self.pacer = identity, pacer
        self.url = url
        self.timeout = timeout
        self._local = threading.local()
        self._email_lock = threading.Lock()

    # -- per-thread transport
    @property
    def http(self) -> google_auth_httplib2.AuthorizedHttp:
        """This thread's authorized Http (httplib2 is not thread-safe)."""
        if getattr(self._local, "http", None) is None:
            raw = httplib2.Http(timeout=self.timeout)
            # A resumable upload's 308 means "resume incomplete", not a redirect.
            raw.redirect_codes = raw.redirect_codes - {308}
            self._local.http = google_auth_httplib2.AuthorizedHttp(
                self.identity.credentials, http=raw
            )
            self._local.service = None
        return self._local.http

    @property
    def service(self) -> Resource:
        http = self.http
        if getattr(self._local, "service", None) is None:
            self._local.service = build_from_document(_discovery(self.url), http=http)
        return self._local.service

    def _drop_connections(self) -> None:
        http = getattr(self._local, "http", None)
        if http is not None:
            for conn in list(http.http.connections.values()):
                conn.close()
            http.http.connections.clear()

    # -- running requests
    def run(self, fn: Callable[[], T], what: str, *, creates: bool = False) -> T:
        """Run `fn` (one request) under the pacer; failures leave as bidsapp errors."""

        def guarded() -> T:
            try:
                return fn()
            except Exception as exc:
                if not isinstance(exc, HttpError) and classify(exc) is not None:
                    self._drop_connections()  # never reuse a connection that broke mid-answer
                raise

        try:
            return self.pacer.call(guarded, classify, budgets=("creates",) if creates else ())
        except RetriesExhausted as exc:
            last = exc.last
            if isinstance(last, HttpError) and classify(last) and classify(last).slow_down:  # type: ignore[union-attr]
                hint = "Drive kept rate-limiting: rerun later, or lower --drive-rps"
            else:
                hint = "rerun later; a rerun resumes where this one stopped"
            raise TemporaryFailure(
                f"Google Drive failed while {what}, {exc.attempts} attempts: {_describe(last)}",
                hint=hint,
            ) from exc
        except BidsAppError:
            raise
        except Exception as exc:
            raise self.translate(exc, what) from exc

    def execute(self, build: Callable[[Resource], Any], what: str, *, creates: bool = False) -> Any:
        """Build a request with this thread's service and execute it under the pacer."""
        return self.run(
            lambda: build(self.service).execute(http=self.http, num_retries=0),
            what,
            creates=creates,
        )

    def translate(self, exc: BaseException, what: str) -> BidsAppError | BaseException:
        """A non-retryable failure as bidsapp's error (its exit code and advice)."""
        if isinstance(exc, RefreshError):
            return refresh_failure(exc, self.identity)
        if not isinstance(exc, HttpError):
            return exc
        status, reason = exc.resp.status, error_reason(exc)
        if status == 404:
            return DriveNotFound(f"not found while {what}")
        if status == 401:
            return CredentialsError(
                f"Google Drive rejected the credentials of the {self.describe_identity()}"
            )
        if status == 403 and reason == "storageQuotaExceeded":
            return OutputNotWritable(
                f"Google Drive refused to store a file for the {self.describe_identity()} "
                "(storageQuotaExceeded)",
                hint=SA_STORAGE_HINT
                if self.identity.kind == "service account"
                else "free space in the account's Drive, or publish into a shared drive",
            )
        if status == 403 and reason in DAILY_REASONS:
            return TemporaryFailure(
                f"Google Drive's daily limit was reached while {what} ({reason})",
                hint="rerun tomorrow; a rerun resumes where this one stopped",
            )
        if status == 403 and reason in SCOPE_REASONS:
            return CredentialsError(
                f"the token of the {self.describe_identity()} lacks the Drive scope needed "
                f"for {what}",
                hint="run 'bidsapp auth login' again (without --readonly to publish)",
            )
        if status == 403:
            return OutputNotWritable(
                f"Google Drive refused {what} for the {self.describe_identity()}: "
                f"{error_message(exc)} ({reason or status})",
                hint="give this identity write access (Content manager on a shared drive)",
            )
        return BidsAppError(f"Google Drive answered {status} while {what}: {error_message(exc)}")

    # -- identity
    def email(self) -> str:
        """The identity's email (asked from Drive once for a user token); '' if unknown."""
        with self._email_lock:
            if not self.identity.email:
                try:
                    about = self.service.about().get(fields="user(emailAddress)")
                    data = about.execute(http=self.http, num_retries=0)
                    self.identity.email = str(data.get("user", {}).get("emailAddress", ""))
                except Exception as exc:  # best effort: only used to word an error
                    logger.debug("could not ask Drive who we are: {}", type(exc).__name__)
            return self.identity.email

    def describe_identity(self) -> str:
        self.email()
        return self.identity.describe()

    # -- metadata
    def get(self, file_id: str, what: str = "reading file details") -> dict[str, Any]:
        result: dict[str, Any] = self.execute(
            lambda s: s.files().get(fileId=file_id, fields=FILE_FIELDS, supportsAllDrives=True),
            what,
        )
        return result

    def children(
        self, folder_id: str, *, drive_id: str = "", name: str | None = None
    ) -> list[dict[str, Any]]:
        """Every child (following nextPageToken), or only those with `name`; oldest first."""
        q = f"'{quote(folder_id)}' in parents and trashed = false"
        if name is not None:
            q += f" and name = '{quote(name)}'"
        scope: dict[str, Any] = {"corpora": "drive", "driveId": drive_id} if drive_id else {}
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page_token = token
            page = self.execute(
                lambda s, t=page_token: s.files().list(  # type: ignore[misc]
                    q=q,
                    fields=LIST_FIELDS,
                    pageSize=1000,
                    pageToken=t,
                    supportsAllDrives=True,
                    includeItemsFromAllDrives=True,
                    **scope,
                ),
                "listing a folder",
            )
            found.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                break
        return sorted(found, key=age)

    # -- media
    def download(self, file_id: str, dest: BinaryIO, chunk: int) -> None:
        """Fetch a file into `dest`, resuming with Range after resets and truncated bodies."""
        request = self.service.files().get_media(fileId=file_id, supportsAllDrives=True)
        downloader = MediaIoBaseDownload(dest, request, chunksize=chunk)

        def step() -> bool:
            request.http = self.http  # the Http of whichever thread runs this attempt
            try:
                _, done = downloader.next_chunk(num_retries=0)
            except http.client.IncompleteRead as exc:
                # Keep what arrived: the next attempt asks for the rest with Range.
                dest.write(exc.partial)
                downloader._progress += len(exc.partial)
                raise
            return bool(done)

        while not self.run(step, "downloading a file"):
            pass

    def read_range(self, file_id: str, start: int, end: int) -> bytes:
        """Bytes start..end (inclusive) of a file in one Range request."""

        def fetch() -> bytes:
            request = self.service.files().get_media(fileId=file_id, supportsAllDrives=True)
            request.headers["range"] = f"bytes={start}-{end}"
            data: bytes = request.execute(http=self.http, num_retries=0)
            return data

        return self.run(fetch, "reading the start of a file")

    def upload(
        self,
        stream: BinaryIO,
        *,
        size: int,
        parent_id: str = "",
        name: str = "",
        file_id: str = "",
        resumable_above: int,
        chunk: int,
        find: Callable[[], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """Create (or, with `file_id`, replace) a file's content; returns id, size and md5.

        Small files go in one multipart request; larger ones in a resumable session whose
        chunks are retried by calling next_chunk() again. A create whose answer was lost is
        looked up with `find` before it is sent again, so a retry never makes a duplicate.
        """
        resumable = size > resumable_above
        fields = "id,name,size,md5Checksum,createdTime"

        def new_request() -> Any:
            stream.seek(0)
            media = MediaIoBaseUpload(
                stream,
                mimetype="application/octet-stream",
                chunksize=chunk if resumable else -1,
                resumable=resumable,
            )
            files = self.service.files()
            if file_id:
                return files.update(
                    fileId=file_id, media_body=media, fields=fields, supportsAllDrives=True
                )
            return files.create(
                body={"name": name, "parents": [parent_id]},
                media_body=media,
                fields=fields,
                supportsAllDrives=True,
            )

        state: dict[str, Any] = {"request": None, "sent": False}

        def step() -> dict[str, Any] | None:
            if state["sent"] and find is not None and not resumable:
                found = find()
                if found is not None:
                    return found
            if state["request"] is None:
                state["request"] = new_request()
            request = state["request"]
            state["sent"] = True
            if not resumable:
                result: dict[str, Any] = request.execute(http=self.http, num_retries=0)
                return result
            try:
                _, body = request.next_chunk(http=self.http, num_retries=0)
            except HttpError as exc:
                if exc.resp.status in (404, 410) and request.resumable_uri:
                    state["request"] = None
                    raise RestartUpload() from exc
                raise
            return body  # type: ignore[no-any-return]

        while True:
            done = self.run(step, "uploading a file", creates=not file_id)
            if done is not None:
                return done


def age(meta: dict[str, Any]) -> tuple[str, str]:
    """Sort key: oldest first, ties broken by id (every process picks the same one)."""
    return (str(meta.get("createdTime", "")), str(meta.get("id", "")))


def quote(text: str) -> str:
    """A string for a Drive `q` literal: backslashes and single quotes escaped."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HttpError):
        reason = error_reason(exc)
        return f"HTTP {exc.resp.status}" + (f" {reason}" if reason else "")
    return type(exc).__name__


def drive_url() -> str:
    """BIDSAPP_DRIVE_URL: where Drive is (an emulator in tests and the demo); '' for Google."""
    return os.environ.get("BIDSAPP_DRIVE_URL", "").strip()
