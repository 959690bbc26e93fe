"""Google credentials for the Drive store: service account, user token, application default.

Order: `--credentials FILE` (a service-account key or an authorized-user token), then
GOOGLE_APPLICATION_CREDENTIALS, then the user token `bidsapp auth login` wrote, then application
default credentials (gcloud). Scopes are as narrow as the job allows: read-only for a SOURCE.
Credentials and tokens are never logged, uploaded or written into the work dir.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import google.auth
from google.auth.credentials import Credentials
from google.auth.exceptions import DefaultCredentialsError, RefreshError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from bidsapp.errors import CredentialsError, UsageError

READONLY = "https://www.googleapis.com/auth/drive.readonly"
FULL = "https://www.googleapis.com/auth/drive"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - an address
TESTING_HINT = (
    "the refresh token was revoked or expired; OAuth clients left in 'Testing' publishing "
    "status issue tokens that expire after 7 days: run 'bidsapp auth login' again, or publish "
    "the OAuth consent screen ('In production')"
)


def default_token_path() -> Path:
    """Where `bidsapp auth login` keeps the user token (BIDSAPP_DRIVE_TOKEN overrides)."""
    default = Path("~/.config/bidsapp/drive-token.json")
    return Path(os.environ.get("BIDSAPP_DRIVE_TOKEN", str(default))).expanduser()


@dataclass
class Identity:
    """Credentials plus what error messages may say about them (never a secret)."""

    credentials: Credentials
    kind: str  # 'service account', 'user', 'application default credentials'
    email: str = ""  # known up front for a service account; asked from Drive for a user
    origin: str = ""  # the file it came from, for messages

    def describe(self) -> str:
        who = self.email or "an unknown account"
        return f"{self.kind} {who}" + (f" (from {self.origin})" if self.origin else "")


def load_identity(credentials: Path | None, *, write: bool) -> Identity:
    """The identity to use; CredentialsError (77) when there is none or it is unusable."""
    scopes = [FULL if write else READONLY]
    env_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if credentials is not None:
        return _from_file(credentials.expanduser(), scopes)
    if env_file:
        return _from_file(Path(env_file).expanduser(), scopes)
    token = default_token_path()
    if token.is_file():
        return _from_file(token, scopes)
    try:
        creds, _ = google.auth.default(scopes=scopes)
    except DefaultCredentialsError as exc:
        raise CredentialsError(
            "no Google credentials found",
            hint="pass --credentials SERVICE_ACCOUNT.json, set GOOGLE_APPLICATION_CREDENTIALS, "
            "or run 'bidsapp auth login' once",
        ) from exc
    email = str(getattr(creds, "service_account_email", "") or "")
    return Identity(creds, "application default credentials", email)


def _from_file(path: Path, scopes: list[str]) -> Identity:
    try:
        info: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CredentialsError(f"credentials file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"credentials file {path} is not readable JSON") from exc
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            sa = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=scopes
            )
            return Identity(sa, "service account", sa.service_account_email, str(path))
        if kind == "authorized_user":
            return Identity(_user(info, scopes), "user", "", str(path))
    except (KeyError, ValueError) as exc:
        raise CredentialsError(f"credentials file {path} is incomplete: {exc}") from exc
    raise CredentialsError(
        f"credentials file {path} is neither a service-account key nor a user token",
        hint="download a JSON key for a service account, or run 'bidsapp auth login'",
    )


def _user(info: dict[str, Any], scopes: list[str]) -> user_credentials.Credentials:
    # Built field by field: from_authorized_user_info drops a custom token_uri.
    return user_credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token=info["refresh_token"],
        token_uri=info.get("token_uri") or GOOGLE_TOKEN_URI,
        client_id=info["client_id"],
        client_secret=info["client_secret"],
        scopes=scopes,
    )


def refresh_failure(exc: RefreshError, identity: Identity) -> CredentialsError:
    """The 77 error for a token that can no longer be refreshed: one sentence (google-auth's
    own str() is a tuple of the message and the raw response)."""
    text = str(exc.args[0]) if exc.args else str(exc)
    if "invalid_scope" in text:
        asked = getattr(identity.credentials, "scopes", None) or ()
        need = "full Drive access, which publishing needs" if FULL in asked else "Drive access"
        return CredentialsError(
            f"the {identity.describe()} was not granted {need}",
            hint="run 'bidsapp auth login' again (without --readonly to publish into OUTPUT)",
        )
    if "invalid_grant" in text and identity.kind == "user":
        return CredentialsError(f"Google refused the user token in {identity.origin}", TESTING_HINT)
    if "invalid_grant" in text:
        return CredentialsError(
            f"Google refused the credentials of the {identity.describe()}",
            hint="the key was deleted or disabled: create a new key for the service account",
        )
    first = (text.splitlines() or ["no reason given"])[0][:200]
    return CredentialsError(f"cannot get a Google access token: {first}")


def write_token(path: Path, creds: user_credentials.Credentials) -> None:
    """The user token, readable by its owner only (0600 from the moment it exists)."""
    data = {
        "type": "authorized_user",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "refresh_token": creds.refresh_token,
        "token_uri": creds.token_uri,
        "scopes": list(creds.scopes or []),
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    path.chmod(0o600)


def login(
    client_secrets: Path, token: Path, *, browser: bool, port: int, readonly: bool = False
) -> Path:
    """The installed-app flow with a local redirect; writes the token file.

    Without a browser: print the consent URL; the person opens it anywhere and either pastes
    back the http://localhost… URL they were redirected to, or forwards the port with
    `ssh -L PORT:localhost:PORT` so the redirect reaches the local listener by itself.
    """
    from google_auth_oauthlib.flow import InstalledAppFlow

    if not client_secrets.is_file():
        raise UsageError(
            f"OAuth client file {client_secrets} does not exist",
            hint="create a Desktop-app OAuth client in Google Cloud and download its JSON",
        )
    scopes = [READONLY if readonly else FULL]
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(client_secrets), scopes=scopes)
    except ValueError as exc:
        raise UsageError(f"{client_secrets} is not an OAuth client file: {exc}") from exc
    _allow_loopback_http(str(flow.client_config.get("token_uri", "")))
    if browser:
        creds = flow.run_local_server(port=port, open_browser=True)
    else:
        flow.redirect_uri = f"http://localhost:{port}/"
        url, _ = flow.authorization_url(access_type="offline", prompt="consent")
        print(
            "Open this URL in a browser (any machine), sign in and allow access:\n\n"
            f"  {url}\n\n"
            f"Then paste here the http://localhost:{port}/… address the browser ends on "
            f"(or forward the port: ssh -L {port}:localhost:{port} THIS_HOST).",
            flush=True,
        )
        response = _await_redirect(port)
        # oauthlib insists on https; a loopback redirect is plain http by design (RFC 8252).
        flow.fetch_token(authorization_response=response.replace("http://", "https://", 1))
        creds = flow.credentials
    if not creds.refresh_token:
        raise CredentialsError("Google returned no refresh token", hint="run the login again")
    write_token(token, creds)
    return token


def _allow_loopback_http(token_uri: str) -> None:
    """Let oauthlib talk plain http to a token endpoint on this machine (the Drive emulator).

    oauthlib refuses any http:// token URL; a loopback one never leaves the machine, and the
    emulator serves no TLS. Any other http endpoint (even one BIDSAPP_DRIVE_URL names) is
    refused here, so no token crosses a network unencrypted; Google's https is unaffected.
    """
    parts = urlsplit(token_uri)
    if parts.scheme == "https":
        return
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise UsageError(
            f"the OAuth client's token endpoint {token_uri!r} is not https",
            hint="use the client file Google Cloud gives (https://oauth2.googleapis.com/token)",
        )
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"


def _await_redirect(port: int) -> str:
    """The redirected URL: pasted on stdin or received by a listener on the port."""
    got: queue.Queue[str] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got.put(f"http://localhost:{port}{self.path}")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"bidsapp: signed in; you can close this tab.\n")

        def log_message(self, *args: object) -> None:
            pass  # the URL carries the authorization code: never log it

    server: HTTPServer | None = None
    try:
        server = HTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.handle_request, daemon=True).start()
    except OSError:
        server = None  # port busy: pasting still works

    def read_stdin() -> None:
        line = sys.stdin.readline().strip()
        if line:
            got.put(line)

    threading.Thread(target=read_stdin, daemon=True).start()
    try:
        response = got.get()
    finally:
        if server is not None:
            server.server_close()
    if "code=" not in response:
        raise CredentialsError("that address carries no authorization code", "run the login again")
    return response
