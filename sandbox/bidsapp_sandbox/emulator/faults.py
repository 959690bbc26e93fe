"""Fault injection on a seeded schedule: which request fails, and how."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

# What a fault does to the request it hits:
#   rate403 / userRate403 / daily403: 403 with reason rateLimitExceeded / userRateLimitExceeded /
#   dailyLimitExceeded; "429", "500", "503": that status; reset: the socket is closed with a TCP
#   reset mid-response (ConnectionResetError); truncate: a Content-Length larger than the bytes
#   sent, then close (http.client.IncompleteRead); latency: sleep `seconds` first, then answer
#   normally; token_expiry: the caller's access token is dropped and the request answers 401.
KINDS = frozenset(
    {
        "rate403",
        "userRate403",
        "daily403",
        "429",
        "500",
        "503",
        "reset",
        "truncate",
        "latency",
        "token_expiry",
    }
)
# Operations a fault can target. "any" is every Drive API request (not the token endpoint).
OPERATIONS = frozenset(
    {
        "list",
        "get",
        "media",
        "create",
        "update",
        "upload",
        "delete",
        "drives",
        "about",
        "token",
        "any",
    }
)


@dataclass(frozen=True)
class Fault:
    """One rule of the schedule.

    With `every=N` it hits matching requests N, 2N, …; with `probability=p` each matching request
    with chance p (from the seeded generator); with neither, every matching request. `count` caps
    how many times it fires, `after` skips that many matching requests first.
    """

    kind: str
    on: str = "any"
    every: int | None = None
    count: int | None = None
    probability: float | None = None
    after: int = 0
    seconds: float = 1.0  # latency faults only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {sorted(KINDS)}")
        if self.on not in OPERATIONS:
            raise ValueError(f"unknown operation {self.on!r}; use one of {sorted(OPERATIONS)}")
        if self.every is not None and self.every < 1:
            raise ValueError("every must be at least 1")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")

    def matches(self, operation: str, authenticated: bool = True) -> bool:
        if self.kind == "token_expiry" and not authenticated:
            return False  # resumable session URLs carry no token that could expire
        if self.on == "any":
            return operation != "token"
        return self.on == operation


class FaultSchedule:
    """Decides, request by request, which faults fire. Deterministic for a given seed and order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._seen: list[int] = []
        self._fired: list[int] = []
        self._rng = random.Random(0)  # noqa: S311 - reproducible, not secret
        self.injected = 0

    def set(self, faults: Sequence[Fault], seed: int = 0) -> None:
        with self._lock:
            self._faults = list(faults)
            self._seen = [0] * len(self._faults)
            self._fired = [0] * len(self._faults)
            self._rng = random.Random(seed)  # noqa: S311 - reproducible, not secret

    def pick(self, operation: str, authenticated: bool = True) -> tuple[float, Fault | None]:
        """(seconds of injected latency, the failure to inject or None) for one request."""
        delay = 0.0
        failure: Fault | None = None
        with self._lock:
            for i, fault in enumerate(self._faults):
                if not fault.matches(operation, authenticated):
                    continue
                self._seen[i] += 1
                if not self._fires(i, fault):
                    continue
                if fault.kind == "latency":
                    delay += fault.seconds
                elif failure is None:
                    failure = fault
                else:
                    continue  # one failure per request; the others keep their turn
                self._fired[i] += 1
                self.injected += 1
        return delay, failure

    def _fires(self, i: int, fault: Fault) -> bool:
        nth = self._seen[i] - fault.after
        if nth <= 0 or (fault.count is not None and self._fired[i] >= fault.count):
            return False
        if fault.every is not None:
            return nth % fault.every == 0
        if fault.probability is not None:
            return self._rng.random() < fault.probability
        return True
