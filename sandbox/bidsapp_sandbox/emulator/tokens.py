"""The OAuth side: the token endpoint (JWT assertions, refresh tokens, authorization codes)
and a consent endpoint that signs a test identity in at once.

Keys are real: `service_account()` makes an RSA key pair, hands the private half to the client in
a service-account JSON and keeps the public half to verify the client's signed assertions.
Access tokens carry the scopes they were granted; Drive writes need `drive` or `drive.file`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt as google_jwt

from bidsapp_sandbox.emulator.errors import OAuthError

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs assertions for Google's own endpoint whatever token_uri says; Google accepts
# these audiences, and so do we (plus our own URL).
GOOGLE_AUDIENCES = (
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
    "https://accounts.google.com/o/oauth2/token",
)
TOKEN_LIFETIME = 3600
MAX_ASSERTION_LIFETIME = 3600
CODE_LIFETIME = 600
DRIVE = "https://www.googleapis.com/auth/drive"
# What a granted scope covers besides itself (`drive` includes the narrower Drive scopes).
IMPLIES = {
    DRIVE: {f"{DRIVE}.readonly", f"{DRIVE}.file", f"{DRIVE}.metadata.readonly"},
    f"{DRIVE}.readonly": {f"{DRIVE}.metadata.readonly"},
}
WRITE_SCOPES = frozenset({DRIVE, f"{DRIVE}.file"})
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass
class AccessToken:
    email: str
    expires: float
    scopes: frozenset[str] = frozenset()  # empty: not scoped (a self-signed JWT for the API)


@dataclass
class Code:
    """An authorization code, waiting to be exchanged once."""

    client_id: str
    redirect_uri: str
    email: str
    scopes: tuple[str, ...]
    challenge: str = ""
    method: str = ""
    expires: float = field(default_factory=lambda: time.time() + CODE_LIFETIME)


def covered(granted: Iterable[str]) -> set[str]:
    """Every scope the granted ones allow."""
    out = set(granted)
    for scope in list(out):
        out |= IMPLIES.get(scope, set())
    return out


def _decode(token: str, **kwargs: Any) -> dict[str, Any]:
    """google.auth.jwt.decode (untyped upstream): the claims, or ValueError."""
    claims = google_jwt.decode(token, **kwargs)  # type: ignore[no-untyped-call]
    if not isinstance(claims, dict):
        raise ValueError("JWT claims are not an object")
    return claims


class TokenAuthority:
    """Identities, their keys and secrets, and the access tokens issued to them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.public_keys: dict[str, str] = {}  # service-account email → public key PEM
        self.clients: dict[str, str] = {}  # OAuth client id → secret
        self.consenting: dict[str, str] = {}  # OAuth client id → who signs in at its consent
        self.refresh_tokens: dict[str, str] = {}  # refresh token → email
        self.refresh_scopes: dict[str, list[str]] = {}  # refresh token → scopes consented to
        self.codes: dict[str, Code] = {}
        self.revoked: set[str] = set()
        self.access: dict[str, AccessToken] = {}
        self.issued = 0

    # --- identities ---------------------------------------------------------------------------
    def service_account(self, email: str, token_uri: str) -> dict[str, Any]:
        """A service-account key file's content with a fresh RSA key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        with self.lock:
            self.public_keys[email] = public_pem
            self.revoked.discard(email)
        return {
            "type": "service_account",
            "project_id": email.split("@")[1].split(".")[0] if "@" in email else "emulator",
            "private_key_id": secrets.token_hex(20),
            "private_key": private_pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**21)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def user_token(
        self, email: str, token_uri: str, scopes: Sequence[str] = (DRIVE,)
    ) -> dict[str, Any]:
        """An authorized-user file's content (what an OAuth consent flow leaves behind), its
        refresh token granted `scopes`."""
        client_id = f"{secrets.token_hex(6)}.apps.googleusercontent.com"
        secret = secrets.token_urlsafe(18)
        refresh = "1//emu-" + secrets.token_urlsafe(32)
        with self.lock:
            self.clients[client_id] = secret
            self.refresh_tokens[refresh] = email
            self.refresh_scopes[refresh] = list(scopes)
            self.revoked.discard(email)
        return {
            "type": "authorized_user",
            "client_id": client_id,
            "client_secret": secret,
            "refresh_token": refresh,
            "token_uri": token_uri,
            "account": email,
            "universe_domain": "googleapis.com",
        }

    def oauth_client(self, email: str, base_url: str) -> dict[str, Any]:
        """An OAuth client file ("Desktop app") whose consent screen signs `email` in at once."""
        client_id = f"{secrets.token_hex(6)}.apps.googleusercontent.com"
        secret = "GOCSPX-" + secrets.token_urlsafe(18)
        with self.lock:
            self.clients[client_id] = secret
            self.consenting[client_id] = email
        return {
            "installed": {
                "client_id": client_id,
                "project_id": "emulator",
                "auth_uri": f"{base_url}/o/oauth2/auth",
                "token_uri": f"{base_url}/token",
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_secret": secret,
                "redirect_uris": ["http://localhost"],
            }
        }

    def consent(self, params: Mapping[str, str]) -> str:
        """The address the consent screen sends the browser back to (code and state)."""
        client_id = params.get("client_id", "")
        with self.lock:
            email = self.consenting.get(client_id)
        if email is None:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        redirect = params.get("redirect_uri", "")
        parts = urlsplit(redirect)
        # Desktop clients may redirect to any port of the loopback interface, over plain http.
        if parts.scheme != "http" or parts.hostname not in LOOPBACK:
            raise OAuthError(400, "redirect_uri_mismatch", "The redirect_uri is not allowed.")
        if params.get("response_type") != "code":
            raise OAuthError(400, "unsupported_response_type", "Use response_type=code.")
        scopes = tuple(unquote(params.get("scope", "")).split())
        if not scopes:
            raise OAuthError(400, "invalid_scope", "Missing required parameter: scope")
        method = params.get("code_challenge_method", "plain" if "code_challenge" in params else "")
        if method not in ("", "plain", "S256"):
            raise OAuthError(400, "invalid_request", "Unsupported code_challenge_method.")
        code = "4/emu-" + secrets.token_urlsafe(32)
        with self.lock:
            self.codes[code] = Code(
                client_id, redirect, email, scopes, params.get("code_challenge", ""), method
            )
        answer = {"code": code, "scope": " ".join(scopes)}
        if "state" in params:
            answer = {"state": params["state"], **answer}
        return f"{redirect}{'&' if parts.query else '?'}{urlencode(answer)}"

    def revoke(self, email: str) -> None:
        with self.lock:
            self.revoked.add(email)
            self.access = {t: a for t, a in self.access.items() if a.email != email}

    def expire_all(self) -> None:
        with self.lock:
            self.access.clear()

    def expire(self, token: str) -> None:
        with self.lock:
            self.access.pop(token, None)

    # --- the endpoint -------------------------------------------------------------------------
    def grant(
        self, form: Mapping[str, str], token_uri: str, authorization: str | None = None
    ) -> dict[str, Any]:
        """Answer a POST to the token endpoint, or raise OAuthError."""
        form = {**_basic_client(authorization), **form}  # client_secret_basic or in the body
        grant_type = form.get("grant_type", "")
        extra: dict[str, Any] = {}
        if grant_type == JWT_GRANT:
            email, scopes = self._verify_assertion(form.get("assertion", ""), token_uri)
        elif grant_type == "refresh_token":
            email, scopes = self._verify_refresh(form)
        elif grant_type == "authorization_code":
            email, scopes, refresh = self._redeem_code(form)
            extra = {"refresh_token": refresh}
        else:
            raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        token = "ya29.emu-" + secrets.token_urlsafe(32)
        with self.lock:
            self.access[token] = AccessToken(email, time.time() + TOKEN_LIFETIME, frozenset(scopes))
            self.issued += 1
        answer = {"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "Bearer"}
        if scopes:
            answer["scope"] = " ".join(scopes)
        return {**answer, **extra}

    def _client(self, form: Mapping[str, str]) -> str:
        client_id = form.get("client_id", "")
        with self.lock:
            secret = self.clients.get(client_id)
        if secret is None or secrets.compare_digest(secret, form.get("client_secret", "")) is False:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        return client_id

    def _redeem_code(self, form: Mapping[str, str]) -> tuple[str, list[str], str]:
        client_id = self._client(form)
        with self.lock:
            code = self.codes.pop(form.get("code", ""), None)  # one use only
        if code is None or code.client_id != client_id or code.expires < time.time():
            raise OAuthError(400, "invalid_grant", "Malformed auth code.")
        if form.get("redirect_uri", "") != code.redirect_uri:
            raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
        if code.challenge:
            verifier = form.get("code_verifier", "")
            if code.method == "S256":
                digest = hashlib.sha256(verifier.encode()).digest()
                verifier = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            if not secrets.compare_digest(verifier, code.challenge):
                raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
        refresh = "1//emu-" + secrets.token_urlsafe(32)
        with self.lock:
            if code.email in self.revoked:
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            self.refresh_tokens[refresh] = code.email
            self.refresh_scopes[refresh] = list(code.scopes)
        return code.email, list(code.scopes), refresh

    def _verify_assertion(self, assertion: str, token_uri: str) -> tuple[str, list[str]]:
        try:
            claims = _decode(assertion, verify=False)
        except ValueError as exc:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: malformed assertion.") from exc
        email = str(claims.get("iss", ""))
        with self.lock:
            public_pem = self.public_keys.get(email)
            revoked = email in self.revoked
        if public_pem is None:
            raise OAuthError(400, "invalid_grant", "Invalid grant: account not found")
        if revoked:
            raise OAuthError(400, "invalid_grant", "Invalid grant: account disabled or key revoked")
        try:
            claims = _decode(
                assertion,
                certs=public_pem,
                audience=[*GOOGLE_AUDIENCES, token_uri],
                clock_skew_in_seconds=10,
            )
        except ValueError as exc:
            raise OAuthError(
                400, "invalid_grant", f"Invalid JWT signature or claims: {exc}"
            ) from exc
        if float(claims["exp"]) - float(claims["iat"]) > MAX_ASSERTION_LIFETIME:
            raise OAuthError(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe.",
            )
        return email, str(claims.get("scope", "")).split()

    def _verify_refresh(self, form: Mapping[str, str]) -> tuple[str, list[str]]:
        self._client(form)
        refresh = form.get("refresh_token", "")
        with self.lock:
            email = self.refresh_tokens.get(refresh)
            granted = self.refresh_scopes.get(refresh, [DRIVE])
            revoked = email in self.revoked
        if email is None or revoked:
            raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
        # A refresh may ask for fewer scopes than were consented to, never for more.
        asked = form.get("scope", "").split() or granted
        if not set(asked) <= covered(granted):
            raise OAuthError(400, "invalid_scope", "The scope asked for was not granted.")
        return email, asked

    def can_write(self, token: str) -> bool:
        """Whether an access token's scopes allow changing Drive (unscoped tokens may)."""
        with self.lock:
            entry = self.access.get(token)
        return entry is None or not entry.scopes or bool(entry.scopes & WRITE_SCOPES)

    def scopes(self, token: str) -> frozenset[str]:
        with self.lock:
            entry = self.access.get(token)
        return entry.scopes if entry is not None else frozenset()

    # --- callers ------------------------------------------------------------------------------
    def caller(self, authorization: str | None) -> tuple[str, str] | None:
        """(email, token) for an `Authorization: Bearer …` header, or None if it is not valid."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        token = authorization[len("Bearer ") :].strip()
        with self.lock:
            entry = self.access.get(token)
        if entry is not None:
            if entry.expires > time.time():
                return entry.email, token
            return None
        return self._self_signed(token)

    def _self_signed(self, token: str) -> tuple[str, str] | None:
        # google-auth may sign its own short-lived JWT and send it as the access token.
        if token.count(".") != 2:
            return None
        try:
            claims = _decode(token, verify=False)
            email = str(claims.get("iss", ""))
            with self.lock:
                public_pem = self.public_keys.get(email)
                revoked = email in self.revoked
            if public_pem is None or revoked:
                return None
            _decode(token, certs=public_pem, verify=True, clock_skew_in_seconds=10)
        except ValueError:
            return None
        return email, token

    # --- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "public_keys": dict(self.public_keys),
                "clients": dict(self.clients),
                "consenting": dict(self.consenting),
                "refresh_tokens": dict(self.refresh_tokens),
                "refresh_scopes": dict(self.refresh_scopes),
                "revoked": sorted(self.revoked),
                "access": {
                    t: [a.email, a.expires, sorted(a.scopes)] for t, a in self.access.items()
                },
            }

    def load(self, data: Mapping[str, Any]) -> None:
        with self.lock:
            self.public_keys.update(data.get("public_keys", {}))
            self.clients.update(data.get("clients", {}))
            self.consenting.update(data.get("consenting", {}))
            self.refresh_tokens.update(data.get("refresh_tokens", {}))
            self.refresh_scopes.update(data.get("refresh_scopes", {}))
            self.revoked.update(data.get("revoked", []))
            for token, (email, expires, *scopes) in data.get("access", {}).items():
                granted = frozenset(scopes[0]) if scopes else frozenset()
                self.access[token] = AccessToken(email, float(expires), granted)


def _basic_client(authorization: str | None) -> dict[str, str]:
    """client_id and client_secret from an `Authorization: Basic …` header (RFC 6749 2.3.1)."""
    if not authorization or not authorization.startswith("Basic "):
        return {}
    try:
        text = base64.b64decode(authorization[len("Basic ") :].strip()).decode()
    except ValueError:
        return {}
    client_id, _, secret = text.partition(":")
    return {"client_id": unquote(client_id), "client_secret": unquote(secret)}
