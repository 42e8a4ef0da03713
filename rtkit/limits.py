"""Rate limiting with a token bucket.

A :class:`RateLimiter` holds up to ``burst`` tokens and gains ``rate`` tokens
per second. Each message takes one token, and a message that finds the
bucket empty is over the limit. A client may therefore send ``burst`` messages at
once, then ``rate`` messages per second on average, for as long as it likes.

>>> clock = FakeClock()
>>> limiter = RateLimiter(2, clock=clock)
>>> [limiter.allow() for _ in range(3)]
[True, True, False]
>>> clock.now += 0.5
>>> limiter.allow()
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["FakeClock", "RateLimiter", "check_rate"]


def check_rate(rate: object) -> float | None:
    """Return ``rate`` as a float if it is a positive number, or ``None``.

    Raises:
        ValueError: naming the invalid value and what to pass instead.
    """
    if rate is None:
        return None
    valid = isinstance(rate, int | float) and not isinstance(rate, bool)
    if not valid or not math.isfinite(rate) or rate <= 0:  # type: ignore[arg-type]
        raise ValueError(
            f"invalid max_rate: {rate!r}; use a number of messages per second "
            "above 0, such as 100, or None for no limit"
        )
    return float(rate)  # type: ignore[arg-type]


class RateLimiter:
    """A token bucket: ``rate`` messages per second, bursts up to ``burst``.

    Args:
        rate: tokens added per second, the average rate allowed.
        burst: the capacity of the bucket, the most messages allowed at once;
            by default ``max(1, rate)``, one second's worth. The bucket starts
            full.
        clock: returns the current time in seconds; :func:`time.monotonic` by
            default. Tests pass a :class:`FakeClock` to control time.

    Raises:
        ValueError: if ``rate`` is not a positive number or ``burst`` is below 1.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        checked = check_rate(rate)
        if checked is None:
            raise ValueError("invalid rate: None; use a number above 0, such as 100")
        self.rate = checked
        if burst is None:
            burst = max(1.0, self.rate)
        valid = isinstance(burst, int | float) and not isinstance(burst, bool)
        if not valid or not math.isfinite(burst) or burst < 1:
            raise ValueError(
                f"invalid burst: {burst!r}; use a number of messages >= 1, or "
                "leave it out for one second's worth"
            )
        self.burst = float(burst)
        self.clock = clock
        self.tokens = self.burst
        """Tokens in the bucket at the last update, possibly fractional."""
        self._updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self._updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self._updated = now

    def allow(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if the bucket contains them.

        Returns:
            ``True`` if the message is within the limit, ``False`` if it is
            over it (then no token is taken).
        """
        self._refill()
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def wait_time(self, cost: float = 1.0) -> float:
        """Return the seconds until ``cost`` tokens are available (0 if now)."""
        self._refill()
        missing = cost - self.tokens
        return max(0.0, missing / self.rate)

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self.rate:g}, burst={self.burst:g}, "
            f"tokens={self.tokens:.2f})"
        )


class FakeClock:
    """A clock that moves only when its ``now`` is changed, for tests and examples.

    Args:
        now: the starting time in seconds.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
