"""A built-in event source that publishes at a chosen rate, for experiments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from .hub import DEFAULT_CHANNEL, Hub

__all__ = ["EventSource"]

logger = logging.getLogger("rtkit.source")


class EventSource:
    """Publish events to a hub at ``rate`` events per second.

    With ``poisson=False`` the gaps between events are exactly ``1 / rate``
    seconds. With ``poisson=True`` they are drawn from an exponential
    distribution with that mean, so events arrive as a Poisson process, the
    usual model of independent user actions. Each event's data is
    ``{"n": <count from 1>, "value": <random float in [0, 1)>}``.

    Args:
        hub: where events are published.
        rate: events per second, greater than 0 and at most 1000.
        poisson: draw random gaps instead of fixed ones.
        channel: the channel of the published events.
        seed: seed of the random generator, for repeatable experiments.

    Raises:
        ValueError: if ``rate`` is out of range.
    """

    MAX_RATE = 1000.0

    def __init__(
        self,
        hub: Hub,
        rate: float,
        *,
        poisson: bool = False,
        channel: str = DEFAULT_CHANNEL,
        seed: int | None = None,
    ) -> None:
        valid_type = isinstance(rate, int | float) and not isinstance(rate, bool)
        if not (valid_type and 0 < rate <= self.MAX_RATE):
            raise ValueError(
                f"invalid rate: {rate!r}; pass events per second, "
                f"greater than 0 and at most {self.MAX_RATE:g}"
            )
        self.hub = hub
        self.rate = float(rate)
        self.poisson = poisson
        self.channel = channel
        self.random = random.Random(seed)
        self.published = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the source is publishing."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start publishing on the running event loop; do nothing if running."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run())
            kind = "Poisson" if self.poisson else "fixed-rate"
            logger.info("%s event source started at %g events/s", kind, self.rate)

    def cancel(self) -> None:
        """Stop publishing without waiting for the task to end."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Stop publishing and wait until the task has ended."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.info("event source stopped after %d events", self.published)

    def next_gap(self) -> float:
        """Return the seconds until the next event."""
        if self.poisson:
            return self.random.expovariate(self.rate)
        return 1.0 / self.rate

    async def _run(self) -> None:
        # Scheduling against a deadline keeps the long-run rate exact even
        # when the loop wakes late; late events go out at once.
        deadline = time.monotonic()
        while True:
            deadline += self.next_gap()
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.published += 1
            value = self.random.random()
            self.hub.publish({"n": self.published, "value": value}, self.channel)
