"""The pacer on a fake clock: token bucket shape, backoff, Retry-After, giving up."""

from __future__ import annotations

import random
import threading

import pytest

from bidsapp.errors import TemporaryFailure, UsageError
from bidsapp.stores.pacer import Backoff, Pacer, RetriesExhausted, Retry, TokenBucket


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def go_times(bucket: TokenBucket, clock: FakeClock, n: int) -> list[float]:
    """When each of n back-to-back requests is let through (each caller sleeps its own wait)."""
    times = []
    for _ in range(n):
        start = clock.now
        wait = bucket.reserve()
        times.append(start + wait)
    return times


@pytest.mark.parametrize(
    ("rate", "burst", "n"),
    [(10, 5, 60), (50, 25, 300), (2, 1, 10), (1.5, 1, 8), (10, 10, 50)],
)
def test_no_one_second_window_exceeds_rate_plus_burst(rate: float, burst: float, n: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)
    times = go_times(bucket, clock, n)
    assert times[: int(burst)] == pytest.approx([0.0] * int(burst)), "the burst goes at once"
    for start in times:
        in_window = sum(start <= t < start + 1 - 1e-9 for t in times)
        assert in_window <= rate + burst
    # After the burst, requests are spaced by exactly 1/rate.
    gaps = [b - a for a, b in zip(times[int(burst) :], times[int(burst) + 1 :], strict=False)]
    assert all(gap == pytest.approx(1 / rate) for gap in gaps)


def test_burst_is_never_larger_than_the_rate() -> None:
    assert TokenBucket(4, 100).burst == 4
    assert TokenBucket(0.5).burst == 1  # at least one request can always go
    with pytest.raises(UsageError):
        TokenBucket(0)


def test_an_idle_bucket_refills_only_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 3, clock=clock, sleep=clock.sleep)
    go_times(bucket, clock, 3)
    clock.now = 100.0
    assert go_times(bucket, clock, 5) == pytest.approx([100, 100, 100, 100.1, 100.2])


def test_pause_holds_everyone_and_empties_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock=clock, sleep=clock.sleep)
    bucket.pause(2.0)
    waits = [bucket.reserve() for _ in range(3)]
    assert waits == pytest.approx([2.0, 2.1, 2.2])


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def classify(exc: BaseException) -> Retry | None:
    if isinstance(exc, Flaky):
        return Retry(after=float(exc.args[0]) if exc.args else 0.0, slow_down="rate" in str(exc))
    return None


def make_pacer(clock: FakeClock, backoff: Backoff) -> Pacer:
    return Pacer(1000, backoff=backoff, clock=clock, sleep=clock.sleep, rng=random.Random(1))


def failing(times: int, exc: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return "ok"

    return calls, fn


def test_temporary_failures_are_retried_with_growing_waits() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, Backoff(initial=1, maximum=5, attempts=6))
    calls, fn = failing(4, Flaky())
    assert pacer.call(fn, classify) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 5
    waits = [s for s in clock.sleeps if s >= 0.5]
    # 1, 2, 4, then capped at 5, each plus < 1 s of jitter.
    for wait, base in zip(waits, (1, 2, 4, 5), strict=True):
        assert base <= wait < base + 1


def test_retry_after_is_honoured_up_to_the_maximum() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, Backoff(initial=0.01, maximum=7, attempts=3))
    _, fn = failing(2, Flaky(30))
    pacer.call(fn, classify)  # type: ignore[arg-type]
    assert [round(s) for s in clock.sleeps if s > 1] == [7, 7]


def test_a_rate_limit_slows_the_whole_process() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, Backoff(initial=3, maximum=3, attempts=2))
    _, fn = failing(1, Flaky(0, "rate"))
    pacer.call(fn, classify)  # type: ignore[arg-type]
    # Another request right after the retry must wait for the pause too.
    assert pacer.buckets["requests"].reserve() > 0


def test_non_retryable_errors_pass_through_at_once() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, Backoff(initial=1, maximum=1, attempts=5))
    calls, fn = failing(3, Fatal("no"))
    with pytest.raises(Fatal):
        pacer.call(fn, classify)  # type: ignore[arg-type]
    assert len(calls) == 1 and clock.sleeps == []


def test_gives_up_after_the_attempts_as_a_temporary_failure() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, Backoff(initial=0.5, maximum=1, attempts=4))
    calls, fn = failing(100, Flaky())
    with pytest.raises(RetriesExhausted) as info:
        pacer.call(fn, classify)  # type: ignore[arg-type]
    assert len(calls) == 4
    assert isinstance(info.value, TemporaryFailure) and info.value.exit_code == 75
    assert isinstance(info.value.last, Flaky) and "4 attempts" in str(info.value)


def test_every_attempt_spends_from_each_named_budget() -> None:
    clock = FakeClock()
    pacer = Pacer(
        100, budgets={"creates": 2}, backoff=Backoff(0.01, 0.01, 2), clock=clock, sleep=clock.sleep
    )
    for _ in range(5):
        pacer.call(lambda: None, classify, budgets=("creates",))
    # Two creates a second with a burst of one: the fifth goes at t=2.0.
    assert clock.now == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Backoff()),
        ("0.01,0.1,5", Backoff(0.01, 0.1, 5)),
        ("1,30,8,120", Backoff(1, 30, 8, 120)),
    ],
)
def test_backoff_parse(text: str, expected: Backoff) -> None:
    assert Backoff.parse(text) == expected


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "1,2,0", "1,2,3,4,5"])
def test_backoff_parse_rejects_nonsense(text: str) -> None:
    with pytest.raises(UsageError):
        Backoff.parse(text)
