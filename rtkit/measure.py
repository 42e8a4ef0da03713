"""Run the three transports side by side on one event stream and measure them.

:func:`compare_transports` starts a short poller, a long poller and a WebSocket
subscriber against one server and lets the server's event source publish for
a while. It returns a :class:`Comparison` with, per transport, every event's
delivery latency, the requests made, empty responses, bytes on the wire both
ways, and events missed or duplicated. :func:`measure_poll_load` counts the requests a
group of short pollers puts on the server, to compare with the formula
``clients / interval``.

:func:`measure_reconnect_storm` kills the server under many reconnecting
WebSocket subscribers and restarts it, then reports how long each took to
come back and how the reconnections spread over time, with or without
jitter in their backoff. :func:`follow_through_restart` does the same for one
subscriber of a fast stream and reports events lost, duplicated or out of
order, with and without the server keeping its history.

Results are plain lists of dictionaries ("tidy" rows), ready for a table or
for matplotlib, so the notebooks need no data-frame library.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .clients import (
    Backoff,
    Delivery,
    Follower,
    LongPoller,
    Outage,
    ShortPoller,
    StreamClient,
    WebSocketSubscriber,
)
from .server import Server

__all__ = [
    "Comparison",
    "LoadResult",
    "ReconnectResult",
    "RestartRun",
    "TransportResult",
    "compare_transports",
    "follow_through_restart",
    "format_table",
    "measure_poll_load",
    "measure_reconnect_storm",
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
            "latency_p95_ms": percentile(latencies, 95),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "requests_per_event": self.requests / delivered if delivered else None,
            "bytes_per_event": self.bytes_total / delivered if delivered else None,
        }


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Return the ``percent`` percentile of ``values``, or ``None`` when empty.

    ``percent`` is used as a whole number from 1 to 99. statistics.quantiles
    (inclusive method) interpolates between at least two data points, so a
    single value is returned for every percentile.
    """
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


def _require_running(server: Server) -> None:
    if not server.is_serving:
        raise RuntimeError(
            f"server {server.url} is not running; start it with "
            "`await server.start()` first"
        )


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
    _require_running(server)
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


@dataclass(frozen=True)
class ReconnectResult:
    """The events and the outage of one subscriber through a server kill and restart."""

    name: str
    published: int
    """Events published during the run; with a new epoch, in both epochs."""
    delivered: int
    """Events of the run received, each counted once."""
    lost: int
    """Events of the run never received: ``published - delivered``."""
    duplicates: int
    """Events received more than once (only the first copy is kept)."""
    missed: int
    """Events the client learned it missed, because the server reported them
    gone from its history or their ``seq`` was skipped."""
    in_order: bool
    """Whether each epoch's events arrived in ``seq`` order, none twice."""
    restarts: int
    """New epochs the client saw: 1 when the restart lost the history."""
    notices: tuple[str, ...]
    """The client's notices: restarts and gaps, in words."""
    outage: Outage | None
    """The connection loss the kill caused, ``None`` if the client saw none."""
    restarted_at: float
    """When the server listened again, in seconds since the Unix epoch."""

    @property
    def time_to_reconnect(self) -> float | None:
        """Seconds from the loss to the confirmed subscription, or ``None``."""
        return None if self.outage is None else self.outage.time_to_reconnect

    @property
    def back_after_restart(self) -> float | None:
        """Seconds from the restart to the confirmed subscription, or ``None``."""
        if self.outage is None or self.outage.back_at is None:
            return None
        return self.outage.back_at - self.restarted_at

    def row(self) -> dict[str, Any]:
        """Return this client as one tidy row."""
        outage = self.outage
        return {
            "client": self.name,
            "time_to_reconnect_s": self.time_to_reconnect,
            "back_after_restart_s": self.back_after_restart,
            "attempts": outage.attempts if outage else None,
            "close_code": outage.code if outage else None,
            "published": self.published,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "missed": self.missed,
            "in_order": self.in_order,
            "restarts": self.restarts,
        }


@dataclass
class RestartRun:
    """Subscribers following a stream while the server was killed and restarted."""

    settings: dict[str, Any]
    killed_at: float
    """When the server was killed, in seconds since the Unix epoch."""
    restarted_at: float
    """When the server listened again, in seconds since the Unix epoch."""
    clients: list[ReconnectResult] = field(default_factory=list)

    def reconnect_times(self) -> list[float]:
        """Return each reconnected client's time to reconnect, in seconds, sorted."""
        times = (client.time_to_reconnect for client in self.clients)
        return sorted(t for t in times if t is not None)

    def spread(self) -> dict[str, float | None]:
        """Return the min, median, 90th percentile and max time to reconnect."""
        times = self.reconnect_times()
        return {
            "min": times[0] if times else None,
            "median": statistics.median(times) if times else None,
            "p90": percentile(times, 90),
            "max": times[-1] if times else None,
        }

    def peak(self, window: float = 0.1) -> int:
        """Return the most reconnections that landed within ``window`` seconds.

        A thundering herd shows as a peak close to the number of clients;
        jitter lowers it.
        """
        backs = sorted(
            c.outage.back_at
            for c in self.clients
            if c.outage is not None and c.outage.back_at is not None
        )
        peak = start = 0
        for end, back in enumerate(backs):
            while back - backs[start] > window:
                start += 1
            peak = max(peak, end - start + 1)
        return peak

    @property
    def not_back(self) -> int:
        """Clients that had not reconnected when the run ended."""
        return sum(1 for c in self.clients if c.time_to_reconnect is None)

    def summary(self) -> dict[str, Any]:
        """Return the run as one row: settings, spread, peak, losses."""
        spread = self.spread()
        return {
            "clients": len(self.clients),
            "jitter": self.settings.get("jitter"),
            "keep_history": self.settings.get("keep_history"),
            "not_back": self.not_back,
            "min_s": spread["min"],
            "median_s": spread["median"],
            "p90_s": spread["p90"],
            "max_s": spread["max"],
            "peak_per_100ms": self.peak(0.1),
            "lost": sum(c.lost for c in self.clients),
            "duplicates": sum(c.duplicates for c in self.clients),
            "missed": sum(c.missed for c in self.clients),
        }

    def rows(self) -> list[dict[str, Any]]:
        """Return one tidy row per client."""
        return [client.row() for client in self.clients]

    def table(self) -> str:
        """Return :meth:`summary` as a fixed-width text table."""
        summary = self.summary()
        return format_table([summary], list(summary))


async def _wait_all_connected(
    subscribers: list[WebSocketSubscriber], timeout: float
) -> None:
    connected = await _wait_until(
        lambda: all(s.connected.is_set() for s in subscribers), timeout
    )
    if not connected:
        ready = sum(1 for s in subscribers if s.connected.is_set())
        raise TimeoutError(
            f"only {ready} of {len(subscribers)} subscribers connected within "
            f"{timeout:g} s; is the server overloaded? try fewer clients"
        )


def _result(
    subscriber: WebSocketSubscriber,
    windows: dict[str, tuple[int, int]],
    restarted_at: float,
) -> ReconnectResult:
    """Compare what ``subscriber`` received with the ``(after, last)`` seq
    ranges published in each epoch."""
    follower = subscriber.follower
    published = delivered = 0
    in_order = follower.duplicates == 0
    for epoch, (after, last) in windows.items():
        seqs = [
            d.seq
            for d in follower.deliveries
            if d.epoch == epoch and after < d.seq <= last
        ]
        published += last - after
        delivered += len(set(seqs))
        in_order = in_order and seqs == sorted(set(seqs))
    return ReconnectResult(
        name=follower.name,
        published=published,
        delivered=delivered,
        lost=published - delivered,
        duplicates=follower.duplicates,
        missed=follower.missed,
        in_order=in_order,
        restarts=follower.restarts,
        notices=tuple(follower.notices),
        outage=subscriber.outages[0] if subscriber.outages else None,
        restarted_at=restarted_at,
    )


async def _kill_and_restart(
    server: Server,
    subscribers: list[WebSocketSubscriber],
    *,
    keep_history: bool,
    publish_while_down: bool,
    rate: float,
    before: float,
    downtime: float,
    after: float,
    timeout: float,
    seed: int | None,
) -> RestartRun:
    """Run ``subscribers`` through a kill and restart of ``server``.

    The subscribers start at the server's latest ``seq``, so only events
    published during the run count.
    """
    _require_running(server)
    await server.stop_source()
    first, old_epoch = server.hub.latest, server.epoch
    for subscriber in subscribers:
        subscriber.follower.since = first
        subscriber.follower.epoch = old_epoch
        subscriber.start()
    killed = False
    try:
        await _wait_all_connected(subscribers, timeout)
        server.start_source(rate, seed=seed)
        await asyncio.sleep(before)

        killed_at = time.time()
        killed = True
        await server.kill()
        if publish_while_down:
            # kill() stopped the source. The hub stays in memory and acts as
            # a durable event log that producers keep writing to while the
            # WebSocket server is down.
            server.start_source(rate, seed=seed)
        await asyncio.sleep(downtime)
        await server.stop_source()
        last_old = server.hub.latest
        await server.start(keep_history=keep_history)
        restarted_at = time.time()
        server.start_source(rate, seed=seed)

        await _wait_until(
            lambda: all(s.outages and s.connected.is_set() for s in subscribers),
            timeout,
        )
        await asyncio.sleep(after)
        await server.stop_source()
        last, epoch = server.hub.latest, server.epoch
        await _wait_until(
            lambda: all(
                s.follower.since >= last and s.follower.epoch == epoch
                for s in subscribers
                if s.connected.is_set()
            ),
            2.0,
        )
    finally:
        for subscriber in subscribers:
            await subscriber.stop()
        if killed and not server.is_serving:
            # Interrupted while the server was down: leave it running.
            with contextlib.suppress(OSError):
                await server.start(keep_history=keep_history)

    if epoch == old_epoch:
        windows = {old_epoch: (first, last)}
    else:
        windows = {old_epoch: (first, last_old), epoch: (0, last)}
    settings = {
        "clients": len(subscribers),
        "keep_history": keep_history,
        "publish_while_down": publish_while_down,
        "rate": rate,
        "before": before,
        "downtime": downtime,
        "after": after,
        "seed": seed,
    }
    run = RestartRun(settings, killed_at, restarted_at)
    run.clients = [_result(s, windows, restarted_at) for s in subscribers]
    return run


async def measure_reconnect_storm(
    server: Server,
    clients: int = 50,
    *,
    jitter: bool = True,
    base: float = 1.0,
    cap: float = 30.0,
    keep_history: bool = True,
    publish_while_down: bool = True,
    downtime: float = 0.5,
    rate: float = 20.0,
    before: float = 0.5,
    after: float = 0.5,
    timeout: float = 30.0,
    seed: int | None = None,
) -> RestartRun:
    """Kill the server under ``clients`` subscribers, restart it, time the return.

    Each subscriber reconnects with its own :class:`~rtkit.clients.Backoff`.
    The server's event source publishes ``rate`` events per second for
    ``before`` seconds. Then the server is killed, so every connection drops
    with 1006. It stays down for ``downtime`` seconds and starts again on the
    same port. While it is down, the source keeps publishing into the hub
    (unless ``publish_while_down`` is false), as producers would keep writing
    to a durable event log behind a crashed server. The run waits up to
    ``timeout`` seconds for every subscriber to be back, publishes for
    ``after`` more seconds, and stops the subscribers. The server is
    running again when this returns.

    Args:
        server: a running rtkit server; its event source is replaced for the run.
        clients: how many subscribers to run.
        jitter: full jitter in the backoff; ``False`` makes every subscriber
            wait the same delays, the thundering herd.
        base: the backoff's first delay ceiling, in seconds.
        cap: the backoff's maximum delay, in seconds.
        keep_history: restart with the hub's epoch and history, so clients
            resume without loss. ``False`` starts a new epoch, which loses the
            events published while the server was down.
        publish_while_down: keep publishing while the server is down.
        downtime: seconds between the kill and the restart.
        rate: events per second during the run.
        before: seconds of publishing before the kill.
        after: seconds of publishing after every subscriber is back.
        timeout: the longest wait for the subscribers to connect, and again
            for them to reconnect, in seconds.
        seed: seeds the backoff of subscriber ``i`` with ``seed + i`` and the
            event source with ``seed``, for repeatable runs.

    Returns:
        the run, with one :class:`ReconnectResult` per subscriber.

    Raises:
        RuntimeError: if ``server`` is not running.
        TimeoutError: if the subscribers do not all connect before the kill.
        ValueError: if ``clients`` is below 1 or a backoff setting is invalid.
    """
    if clients < 1:
        raise ValueError(f"invalid clients: {clients!r}; pass at least 1")
    subscribers = []
    for i in range(clients):
        rng = random.Random(None if seed is None else seed + i)
        backoff = Backoff(base=base, cap=cap, rng=rng, jitter=jitter)
        subscribers.append(
            WebSocketSubscriber(
                server.url, name=f"subscriber {i}", reconnect=True, backoff=backoff
            )
        )
    run = await _kill_and_restart(
        server,
        subscribers,
        keep_history=keep_history,
        publish_while_down=publish_while_down,
        rate=rate,
        before=before,
        downtime=downtime,
        after=after,
        timeout=timeout,
        seed=seed,
    )
    run.settings.update(jitter=jitter, base=base, cap=cap)
    return run


async def follow_through_restart(
    server: Server,
    *,
    keep_history: bool = True,
    publish_while_down: bool = True,
    rate: float = 200.0,
    before: float = 0.5,
    downtime: float = 0.5,
    after: float = 0.5,
    base: float = 0.1,
    timeout: float = 10.0,
) -> ReconnectResult:
    """Follow a fast stream with one subscriber while the server is killed.

    The server's source publishes ``rate`` events per second. After
    ``before`` seconds the server is killed, and it starts again after
    ``downtime`` seconds. The source keeps publishing into the hub meanwhile.
    With
    ``keep_history`` the subscriber resumes after the last ``seq`` it
    received and loses nothing, unless more events than the server's
    ``history_size`` were published in between: then ``missed`` counts them
    and a notice names them. Without it the server begins a new epoch, and
    the events published while it was down are lost without a notice of
    the loss: the client only learns of the restart. See
    :func:`measure_reconnect_storm` for the arguments.

    Returns:
        the subscriber's result: published, delivered, lost, duplicates,
        order and notices.

    Raises:
        RuntimeError: if ``server`` is not running.
        TimeoutError: if the subscriber does not connect within ``timeout``.
    """
    subscriber = WebSocketSubscriber(
        server.url, name="subscriber", reconnect=True, backoff=Backoff(base=base)
    )
    run = await _kill_and_restart(
        server,
        [subscriber],
        keep_history=keep_history,
        publish_while_down=publish_while_down,
        rate=rate,
        before=before,
        downtime=downtime,
        after=after,
        timeout=timeout,
        seed=None,
    )
    return run.clients[0]
