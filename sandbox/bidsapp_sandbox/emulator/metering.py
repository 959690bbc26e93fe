"""Request accounting: totals, the busiest one-second window, and per-token quotas."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

LOG_SIZE = 20_000  # requests kept for request_log(); older ones drop off


class Meter:
    """Counts Drive API requests (the token endpoint is counted apart) and enforces quotas."""

    def __init__(self, quota_per_token: tuple[int, float] | None = None) -> None:
        self._lock = threading.Lock()
        self.quota_per_token = quota_per_token
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests = 0
            self._by_kind: Counter[str] = Counter()
            self._by_status: Counter[int] = Counter()
            self._window: deque[float] = deque()
            self._max_rps = 0
            self._token_requests = 0
            self._quota_rejections = 0
            self._quota_windows: dict[str, deque[float]] = {}
            self._log: deque[dict[str, Any]] = deque(maxlen=LOG_SIZE)

    def arrive(self, operation: str) -> None:
        now = time.monotonic()
        with self._lock:
            if operation == "token":
                self._token_requests += 1
                self._by_kind[operation] += 1
                return
            self._requests += 1
            self._by_kind[operation] += 1
            # Requests in the last second, ending at this one: the busiest such window is the
            # figure a client's pacer must keep under its budget.
            window = self._window
            window.append(now)
            while window[0] <= now - 1.0:
                window.popleft()
            self._max_rps = max(self._max_rps, len(window))

    def over_quota(self, token: str) -> bool:
        """True (and the request is refused) when `token` used up its requests per period."""
        if self.quota_per_token is None:
            return False
        limit, period = self.quota_per_token
        now = time.monotonic()
        with self._lock:
            window = self._quota_windows.setdefault(token, deque())
            while window and window[0] <= now - period:
                window.popleft()
            if len(window) >= limit:
                self._quota_rejections += 1
                return True
            window.append(now)
            return False

    def answered(self, status: int, **details: Any) -> None:
        """Count a reply's status; `details` (op, method, path, range, bytes) go to the log."""
        with self._lock:
            self._by_status[status] += 1
            if details:
                self._log.append({**details, "status": status})

    def log(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log)

    def snapshot(self, faults_injected: int) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self._requests,
                "by_kind": dict(self._by_kind),
                "by_status": dict(self._by_status),
                "max_rps_1s": float(self._max_rps),
                "faults_injected": faults_injected,
                "quota_rejections": self._quota_rejections,
                "token_requests": self._token_requests,
            }
