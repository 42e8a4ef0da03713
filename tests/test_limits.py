"""The token bucket behind the per-connection rate limit, on a fake clock."""

from __future__ import annotations

import math

import pytest

from rtkit.limits import FakeClock, RateLimiter, check_rate


def test_rate_limiter_allows_burst_then_rejects() -> None:
    limiter = RateLimiter(10, clock=FakeClock())
    allowed = [limiter.allow() for _ in range(10)]
    assert allowed == [True] * 10
    assert not limiter.allow()


def test_rate_limiter_refills_at_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock)
    while limiter.allow():
        pass
    clock.now += 0.25
    allowed = [limiter.allow() for _ in range(3)]
    assert allowed == [True, True, False]


def test_rate_limiter_refill_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5, burst=2, clock=clock)
    clock.now += 100
    assert [limiter.allow() for _ in range(3)] == [True, True, False]


def test_rate_limiter_burst_defaults_to_one_second() -> None:
    assert RateLimiter(100).burst == 100
    assert RateLimiter(0.5).burst == 1


def test_rate_limiter_slow_rate_allows_one() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.5, clock=clock)
    assert limiter.allow()
    assert not limiter.allow()
    clock.now += 1.9
    assert not limiter.allow()
    clock.now += 0.2
    assert limiter.allow()


def test_rate_limiter_rejection_takes_no_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock)
    assert limiter.allow()
    for _ in range(5):
        assert not limiter.allow()
    clock.now += 1
    assert limiter.allow()


def test_rate_limiter_wait_time() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4, clock=clock)
    assert limiter.wait_time() == 0
    for _ in range(4):
        limiter.allow()
    assert limiter.wait_time() == pytest.approx(0.25)
    clock.now += 0.1
    assert limiter.wait_time() == pytest.approx(0.15)


def test_rate_limiter_clock_going_back_adds_nothing() -> None:
    clock = FakeClock(10)
    limiter = RateLimiter(1, clock=clock)
    assert limiter.allow()
    clock.now = 5
    assert not limiter.allow()
    assert limiter.tokens == 0


@pytest.mark.parametrize(
    "rate", [0, -1, math.nan, math.inf, "10", True, [10]], ids=repr
)
def test_check_rate_invalid_raises(rate: object) -> None:
    with pytest.raises(ValueError, match="invalid max_rate") as info:
        check_rate(rate)
    assert "above 0" in str(info.value)
    assert "None for no limit" in str(info.value)


def test_check_rate_valid_values() -> None:
    assert check_rate(None) is None
    assert check_rate(100) == 100.0
    assert check_rate(0.5) == 0.5


@pytest.mark.parametrize("burst", [0, 0.5, -1, math.nan, "2"], ids=repr)
def test_rate_limiter_invalid_burst_raises(burst: object) -> None:
    with pytest.raises(ValueError, match="invalid burst"):
        RateLimiter(10, burst=burst)  # type: ignore[arg-type]


def test_rate_limiter_none_rate_raises() -> None:
    with pytest.raises(ValueError, match="invalid rate: None"):
        RateLimiter(None)  # type: ignore[arg-type]
