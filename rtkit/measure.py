"""Run the three transports side by side on one event stream and measure them.

:func:`compare_transports` starts a short poller, a long poller and a WebSocket
subscriber against one server and lets the server's event source publish for
a while. It returns a :class:`Comparison` with, per transport, every event's
delivery latency, the requests made, empty responses, bytes on the wire both
ways, and events missed or duplicated. :func:`measure_poll_load` counts the requests a
group of short pollers puts on the server, to compare with the formula
``clients / interval``.

Results are plain lists of dictionaries ("tidy" rows), ready for a table or
for matplotlib, so the notebooks need no data-frame library.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .clients import (
    Delivery,
    Follower,
    LongPoller,
    ShortPoller,
    StreamClient,
    WebSocketSubscriber,
)
from .server import Server

__all__ = [
    "Comparison",
    "LoadResult",
    "TransportResult",
    "compare_transports",
    "format_table",
    "measure_poll_load",
]


@dataclass
class TransportResult:
    """The deliveries and traffic of one transport during a run."""

    transport: str
    published: int
    """Events published during the run."""
    deliveries: list[Delivery]
    requests: int
    """HTTP requests, or 1 for the WebSocket's opening handshake."""
    empty_responses: int
    bytes_sent: int
    bytes_received: int
    missed: int
    duplicates: int
    errors: int

    @classmethod
    def from_follower(cls, follower: Follower, published: int) -> TransportResult:
        """Summarize what ``follower`` recorded."""
        return cls(
            follower.name,
            published,
            list(follower.deliveries),
            follower.requests,
            follower.empty_responses,
            follower.bytes.sent,
            follower.bytes.received,
            follower.missed,
            follower.duplicates,
            follower.errors,
        )

    @property
    def latencies_ms(self) -> list[float]:
        """Delivery latency of each event, in milliseconds."""
        return [delivery.latency * 1000 for delivery in self.deliveries]

    @property
    def bytes_total(self) -> int:
        """Bytes sent plus bytes received."""
        return self.bytes_sent + self.bytes_received

    def summary(self) -> dict[str, Any]:
        """Return one row of the comparison table."""
        latencies = self.latencies_ms
        delivered = len(self.deliveries)
        return {
            "transport": self.transport,
            "published": self.published,
            "delivered": delivered,
            "missed": self.missed,
            "duplicates": self.duplicates,
            "requests": self.requests,
            "empty_responses": self.empty_responses,
            "latency_mean_ms": statistics.fmean(latencies) if latencies else None,
            "latency_median_ms": statistics.median(latencies) if latencies else None,
            "latency_p95_ms": _percentile(latencies, 95),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "requests_per_event": self.requests / delivered if delivered else None,
            "bytes_per_event": self.bytes_total / delivered if delivered else None,
        }


def _percentile(values: Sequence[float], percent: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1]


@dataclass
class Comparison:
    """The results of one side-by-side run."""

    settings: dict[str, Any]
    results: list[TransportResult] = field(default_factory=list)

    def __getitem__(self, transport: str) -> TransportResult:
        for result in self.results:
            if result.transport == transport:
                return result
        names = ", ".join(repr(result.transport) for result in self.results)
        raise KeyError(f"no transport {transport!r}; this run has {names}")

    def summary_rows(self) -> list[dict[str, Any]]:
        """Return one summary row per transport."""
        return [result.summary() for result in self.results]

    def latency_rows(self) -> list[dict[str, Any]]:
        """Return one row per delivered event: transport, seq, latency_ms."""
        return [
            {"transport": r.transport, "seq": d.seq, "latency_ms": d.latency * 1000}
            for r in self.results
            for d in r.deliveries
        ]

    def table(self) -> str:
        """Return the summary as a fixed-width text table."""
        columns = [
            "transport",
            "delivered",
            "missed",
            "requests",
            "empty_responses",
            "latency_mean_ms",
            "latency_p95_ms",
            "bytes_per_event",
        ]
        return format_table(self.summary_rows(), columns)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Format ``rows`` as a text table; floats get one decimal."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)

    cells = [[cell(row[column]) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells))
        for i, column in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    for line in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(lines)


async def _wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def compare_transports(
    server: Server,
    *,
    duration: float = 3.0,
    rate: float = 10.0,
    poisson: bool = True,
    interval: float = 0.5,
    wait: float = 25.0,
    seed: int | None = None,
) -> Comparison:
    """Follow one event stream by short poll, long poll and WebSocket at once.

    The server's event source publishes for ``duration`` seconds while the
    three clients follow it. Then the source stops, and the clients get up to
    ``interval + 2`` seconds to catch up before they are stopped. Only events
    published during the run count.

    Args:
        server: a running rtkit server; its event source is replaced for the run.
        duration: seconds of publishing.
        rate: events per second.
        poisson: random gaps between events (a Poisson process) instead of
            fixed ones.
        interval: the short poller's interval in seconds.
        wait: the long poller's maximum wait in seconds.
        seed: seed of the source's random gaps and values.

    Raises:
        RuntimeError: if ``server`` is not running.
    """
    if not server.is_serving:
        raise RuntimeError(
            f"server {server.url} is not running; start it with "
            "`await server.start()` first"
        )
    clients: list[StreamClient] = [
        ShortPoller(server.url, interval),
        LongPoller(server.url, wait),
        WebSocketSubscriber(server.url),
    ]
    await server.stop_source()
    first = last = server.hub.latest
    for client in clients:
        client.follower.since = first
        client.follower.epoch = server.epoch
        client.start()
    subscriber = clients[2]
    assert isinstance(subscriber, WebSocketSubscriber)
    try:
        await asyncio.wait_for(subscriber.connected.wait(), 10)
        server.start_source(rate, poisson=poisson, seed=seed)
        await asyncio.sleep(duration)
        await server.stop_source()
        last = server.hub.latest
        await _wait_until(
            lambda: all(c.follower.since >= last for c in clients), interval + 2
        )
    finally:
        followers = [await client.stop() for client in clients]
    published = last - first
    settings = {
        "duration": duration,
        "rate": rate,
        "poisson": poisson,
        "interval": interval,
        "wait": wait,
        "seed": seed,
    }
    results = [TransportResult.from_follower(f, published) for f in followers]
    return Comparison(settings, results)


@dataclass(frozen=True)
class LoadResult:
    """Requests that ``clients`` short pollers put on a server."""

    clients: int
    interval: float
    duration: float
    requests: int
    """Poll requests the server received during the run."""

    @property
    def expected_per_second(self) -> float:
        """The formula's requests per second: ``clients / interval``."""
        return self.clients / self.interval

    @property
    def measured_per_second(self) -> float:
        """The requests per second the server received."""
        return self.requests / self.duration


async def measure_poll_load(
    server: Server, clients: int, interval: float, duration: float = 2.0
) -> LoadResult:
    """Run ``clients`` short pollers and count their requests for ``duration`` s.

    The count comes from the server's own request counter, so it measures
    what the server had to handle, not what the clients meant to send. It
    starts half an interval after the pollers, when they are in steady state.
    """
    if clients < 1:
        raise ValueError(f"invalid clients: {clients!r}; pass at least 1")
    pollers = [
        ShortPoller(server.url, interval, name=f"poller {i}") for i in range(clients)
    ]
    for poller in pollers:
        poller.start()
    try:
        # Every poller sends its first request at once. Counting starts half an
        # interval later, so that burst does not inflate a short run's rate.
        await asyncio.sleep(interval / 2)
        before = server.request_counts["poll"]
        started = time.monotonic()
        await asyncio.sleep(duration)
        requests = server.request_counts["poll"] - before
        elapsed = time.monotonic() - started
    finally:
        for poller in pollers:
            await poller.stop()
    return LoadResult(clients, interval, elapsed, requests)
