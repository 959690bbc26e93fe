"""Errors the emulator answers with, in the JSON shape Google APIs use."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A Drive API error: HTTP status, a machine-readable reason and a message."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        domain: str = "global",
        location: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain
        self.location = location

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "message": self.message,
            "domain": self.domain,
            "reason": self.reason,
        }
        if self.location:
            detail["location"] = self.location
            detail["locationType"] = "parameter"
        return {"error": {"code": self.status, "message": self.message, "errors": [detail]}}


def not_found(file_id: str) -> ApiError:
    return ApiError(404, "notFound", f"File not found: {file_id}.", location="fileId")


def bad_request(message: str, *, reason: str = "invalid", location: str | None = None) -> ApiError:
    return ApiError(400, reason, message, location=location)


def forbidden(reason: str, message: str) -> ApiError:
    return ApiError(403, reason, message)


def insufficient_permissions(what: str) -> ApiError:
    return forbidden(
        "insufficientFilePermissions",
        f"The user does not have sufficient permissions for {what}.",
    )


def insufficient_scopes() -> ApiError:
    """A token whose scopes do not allow the request (e.g. drive.readonly and a write)."""
    return forbidden("insufficientPermissions", "Request had insufficient authentication scopes.")


def rate_limited(status: int, reason: str) -> ApiError:
    messages = {
        "rateLimitExceeded": "Rate Limit Exceeded",
        "userRateLimitExceeded": "User Rate Limit Exceeded",
        "dailyLimitExceeded": "Daily Limit Exceeded",
    }
    return ApiError(status, reason, messages.get(reason, reason), domain="usageLimits")


def unauthenticated() -> ApiError:
    return ApiError(
        401,
        "authError",
        "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        location="Authorization",
    )


def server_error(status: int) -> ApiError:
    reason = "backendError"
    text = "Internal Error" if status == 500 else "Service Unavailable"
    return ApiError(status, reason, text)


class OAuthError(Exception):
    """An OAuth token-endpoint error ({"error": ..., "error_description": ...})."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
