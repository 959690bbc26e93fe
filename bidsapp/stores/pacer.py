"""Rate budget and retry with backoff; knows nothing of Drive.

One `Pacer` per process holds the request budget: a token bucket (GCRA form) that lets at most
`burst` requests go at once and `rate` per second after that, so no one-second window sees more
than rate + burst. `Pacer.call` runs one request under that budget and retries it with
exponential backoff and jitter (tenacity) while the caller's `classify` says the failure is
temporary; a rate-limit verdict slows every thread of the process, not only the one that was
refused. What is retryable is the caller's business: the Drive store supplies `classify`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import tenacity
from loguru import logger

from bidsapp.errors import TemporaryFailure, UsageError

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Retry:
    """A classifier's verdict that a failure is temporary."""

    after: float = 0.0
    """The wait the server asked for (Retry-After), if any."""
    slow_down: bool = False
    """A rate limit: the whole process pauses, not only this request."""


Classify = Callable[[BaseException], Retry | None]


@dataclass(frozen=True)
class Backoff:
    """How long to keep trying one request."""

    initial: float = 1.0
    """First wait in seconds; each further wait doubles, plus up to `initial` of jitter."""
    maximum: float = 32.0
    """No single wait is longer."""
    attempts: int = 8
    """Tries per request, the first included."""
    deadline: float = 600.0
    """Seconds one request may spend trying, waits included."""

    @classmethod
    def parse(cls, text: str) -> Backoff:
        """'initial,maximum,attempts[,deadline]' (e.g. from BIDSAPP_DRIVE_BACKOFF)."""
        if not text.strip():
            return cls()
        try:
            parts = [float(p) for p in text.split(",")]
            if len(parts) not in (3, 4) or min(parts) <= 0:
                raise ValueError(text)
        except ValueError as exc:
            raise UsageError(
                f"invalid backoff {text!r}",
                hint="write initial,maximum,attempts[,deadline] in seconds, e.g. 1,32,8",
            ) from exc
        deadline = parts[3] if len(parts) == 4 else cls.deadline
        return cls(parts[0], parts[1], int(parts[2]), deadline)


class RetriesExhausted(TemporaryFailure):
    """A request kept failing with temporary errors until the backoff gave up."""

    def __init__(self, last: BaseException, attempts: int) -> None:
        super().__init__(f"still failing after {attempts} attempts: {_summary(last)}")
        self.last = last
        self.attempts = attempts


class TokenBucket:
    """`rate` per second with bursts of at most `burst`; thread-safe, waits are reserved.

    Each caller reserves the next free slot under the lock and sleeps outside it, so waiting
    threads never spin and the order of reservation is the order of service.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if rate <= 0:
            raise UsageError(f"a request rate must be positive, not {rate}")
        self.rate = rate
        self.burst = max(1.0, min(rate, burst if burst is not None else rate / 2))
        self._interval = 1.0 / rate
        self._tolerance = (self.burst - 1) * self._interval
        self._tat = -float("inf")  # theoretical arrival time of the next request
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def reserve(self) -> float:
        """Reserve the next slot; returns how long the caller must wait for it."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            go = max(now, tat - self._tolerance)
            self._tat = tat + self._interval
            return go - now

    def acquire(self) -> float:
        """Wait for a slot; returns the time waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Nobody gets a slot for `seconds`, and the burst starts empty after it."""
        with self._lock:
            self._tat = max(self._tat, self._clock() + seconds + self._tolerance)


class Pacer:
    """A process's request budget plus the retry loop every request goes through."""

    def __init__(
        self,
        rate: float,
        *,
        backoff: Backoff | None = None,
        budgets: dict[str, float] | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self.buckets = {"requests": TokenBucket(rate, clock=clock, sleep=sleep)}
        for name, budget in (budgets or {}).items():
            self.buckets[name] = TokenBucket(budget, clock=clock, sleep=sleep)
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    @property
    def rate(self) -> float:
        return self.buckets["requests"].rate

    def call(self, fn: Callable[[], T], classify: Classify, *, budgets: Iterable[str] = ()) -> T:
        """Run `fn` under the budget; retry temporary failures; RetriesExhausted at the end."""
        spend = ["requests", *budgets]
        backoff = self.backoff

        def attempt() -> T:
            for name in spend:
                self.buckets[name].acquire()
            return fn()

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            verdict = classify(exc) if exc is not None else None
            exponent = min(state.attempt_number - 1, 30)
            delay = float(min(backoff.maximum, backoff.initial * 2**exponent))
            delay += self._rng.uniform(0, backoff.initial)
            if verdict is not None and verdict.after:
                delay = max(delay, min(verdict.after, backoff.maximum))
            if verdict is not None and verdict.slow_down:
                self.buckets["requests"].pause(delay)
            logger.debug("retry {} in {:.2f}s after {}", state.attempt_number, delay, _summary(exc))
            return delay

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(backoff.attempts)
            | tenacity.stop_after_delay(backoff.deadline),
            wait=wait,
            retry=tenacity.retry_if_exception(lambda e: classify(e) is not None),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Exception as exc:
            if classify(exc) is None:
                raise
            attempts = retrying.statistics.get("attempt_number", backoff.attempts)
            raise RetriesExhausted(exc, attempts) from exc


def _summary(exc: BaseException | None) -> str:
    if exc is None:
        return "nothing"
    text = str(exc).strip().splitlines()
    first = text[0][:160] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


_shared: dict[tuple[float, Backoff], Pacer] = {}
_shared_lock = threading.Lock()


def shared_pacer(rate: float, backoff: Backoff, budgets: dict[str, float]) -> Pacer:
    """The process's pacer for this budget: every store of one run draws from the same one."""
    with _shared_lock:
        key = (rate, backoff)
        if key not in _shared:
            _shared[key] = Pacer(rate, backoff=backoff, budgets=budgets)
        return _shared[key]
