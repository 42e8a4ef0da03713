"""Backpressure experiment: fan-out to fast clients and one that never reads.

:func:`run_fanout` publishes a stream of messages from a WebSocket server to
``fast_clients`` clients that read everything and to one slow client that
never reads (a :func:`~rtkit.faults.stalled_client`). It does so once per
fan-out strategy:

``"broadcast"``
    websockets' :func:`~websockets.asyncio.server.broadcast`: each message is
    written to every connection's buffer without waiting. Fast clients are
    never delayed, but the slow client's write buffer grows with every
    message, so the server's memory grows without bound.
``"queues"``
    one bounded :class:`asyncio.Queue` and one sender task per client. When a
    client's queue is full, its oldest message is dropped. Fast clients are
    not delayed, and the memory held for the slow client stays below its
    queue plus websockets' write limit, at the cost of the messages dropped.
``"awaited"``
    the naive loop ``for c in clients: await c.send(m)``. Once the slow
    client's buffer is full, ``send()`` waits for it to drain, which never
    happens, so the whole loop stops and the fast clients stop receiving.

Each run is bounded by a deadline, ``duration + grace`` seconds after
publishing starts. A message that a fast client has not received by then
counts with the time it had waited, so the awaited loop's latencies are lower
bounds. Results are "tidy" rows, ready for a table or for matplotlib::

    from rtkit.fanout import SUMMARY_COLUMNS, run_fanout
    from rtkit.measure import format_table

    result = await run_fanout()
    print(format_table(result.summary(), SUMMARY_COLUMNS))
    result.plot()

The experiment runs its own servers on 127.0.0.1 and a free port. Server and
clients share one event loop, so the latencies also contain the time the
clients wait for their turn on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from .faults import stalled_client
from .measure import percentile

__all__ = [
    "STRATEGIES",
    "SUMMARY_COLUMNS",
    "FanoutResult",
    "StrategyResult",
    "run_fanout",
]

logger = logging.getLogger("rtkit.fanout")

STRATEGIES = ("broadcast", "queues", "awaited")
"""The fan-out strategies :func:`run_fanout` compares."""
SUMMARY_COLUMNS = [
    "strategy",
    "fast_latency_median_ms",
    "fast_latency_p99_ms",
    "delivered_share",
    "slow_max_buffered",
    "slow_dropped",
]
"""The columns of :meth:`FanoutResult.summary` worth printing first."""


@dataclass
class StrategyResult:
    """The measurements of one strategy's run."""

    strategy: str
    fast_clients: int
    scheduled: int
    """Messages due during the publishing time."""
    published: int
    """Messages handed to the strategy before the deadline. The awaited loop
    hands over fewer than ``scheduled``."""
    latencies_ms: list[float]
    """One latency per fast client and scheduled message, from the time the
    message was due to its arrival. A message not received by the deadline
    counts with the time it had waited then."""
    undelivered: int
    """How many of ``latencies_ms`` are such lower bounds."""
    slow_max_buffered: int
    """The maximum bytes buffered in the server's memory for the slow client,
    in its write buffer and, with ``"queues"``, in its queue."""
    slow_dropped: int
    """Messages dropped from the slow client's queue (``"queues"`` only)."""
    series: list[dict[str, Any]] = field(default_factory=list)
    """Samples over time: ``t`` (seconds since publishing started),
    ``slow_buffered`` (bytes), ``fast_received`` (messages per fast client)
    and ``published``."""

    def summary(self) -> dict[str, Any]:
        """Return one row of the comparison table."""
        latencies = self.latencies_ms
        expected = self.scheduled * self.fast_clients
        delivered = expected - self.undelivered
        return {
            "strategy": self.strategy,
            "scheduled": self.scheduled,
            "published": self.published,
            "fast_latency_median_ms": (
                statistics.median(latencies) if latencies else None
            ),
            "fast_latency_p99_ms": percentile(latencies, 99),
            "delivered_share": delivered / expected if expected else None,
            "slow_max_buffered": self.slow_max_buffered,
            "slow_dropped": self.slow_dropped,
        }


@dataclass
class FanoutResult:
    """The results of :func:`run_fanout`, one :class:`StrategyResult` each."""

    results: dict[str, StrategyResult]
    settings: dict[str, Any]
    """The arguments of the run."""

    def summary(self) -> list[dict[str, Any]]:
        """Return one table row per strategy."""
        return [result.summary() for result in self.results.values()]

    def series(self) -> list[dict[str, Any]]:
        """Return every sample over time, with a ``strategy`` column."""
        return [
            {"strategy": name, **sample}
            for name, result in self.results.items()
            for sample in result.series
        ]

    def plot(self) -> Any:
        """Plot the slow client's buffer and the fast clients' progress.

        Returns:
            The matplotlib figure, with two panels sharing the time axis.
        """
        import matplotlib.pyplot as plt

        figure, (memory, progress) = plt.subplots(1, 2, figsize=(10, 3.5))
        for name, result in self.results.items():
            times = [sample["t"] for sample in result.series]
            buffered = [sample["slow_buffered"] / 1024 for sample in result.series]
            received = [sample["fast_received"] for sample in result.series]
            memory.plot(times, buffered, label=name)
            progress.plot(times, received, label=name)
        memory.set(
            title="held in memory for the slow client",
            xlabel="time (s)",
            ylabel="KiB",
        )
        progress.set(
            title="messages received per fast client",
            xlabel="time (s)",
            ylabel="messages",
        )
        memory.legend()
        figure.tight_layout()
        return figure


def _is_number(value: object) -> bool:
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    return valid and math.isfinite(value)  # type: ignore[arg-type]


def _check_settings(settings: dict[str, Any], strategies: Sequence[str]) -> None:
    """Raise ValueError naming the first setting out of range."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(
            f"invalid strategies: {list(strategies)!r}; choose from {STRATEGIES}"
        )
    for name in ("fast_clients", "queue_size", "rcvbuf", "sndbuf", "message_size"):
        value = settings[name]
        if name == "sndbuf" and value is None:
            continue
        smallest = 0 if name == "message_size" else 1
        valid = isinstance(value, int) and not isinstance(value, bool)
        if not valid or value < smallest:
            raise ValueError(
                f"invalid {name}: {value!r}; pass an integer >= {smallest}"
            )
    for name in ("rate", "duration", "sample_interval"):
        value = settings[name]
        if not _is_number(value) or value <= 0:
            raise ValueError(f"invalid {name}: {value!r}; pass a number above 0")
    grace = settings["grace"]
    if not _is_number(grace) or grace < 0:
        raise ValueError(f"invalid grace: {grace!r}; pass a number of seconds >= 0")


async def run_fanout(
    strategies: Sequence[str] = STRATEGIES,
    *,
    fast_clients: int = 5,
    rate: float = 250.0,
    duration: float = 1.0,
    grace: float = 0.25,
    message_size: int = 2048,
    queue_size: int = 32,
    sndbuf: int | None = 16384,
    rcvbuf: int = 4096,
    sample_interval: float = 0.05,
) -> FanoutResult:
    """Run the backpressure experiment once per strategy and return the results.

    With the defaults, the three strategies took 3.8 s together on a shared
    2-core Linux machine.

    Args:
        strategies: which of :data:`STRATEGIES` to run, in order.
        fast_clients: clients that read every message as soon as it arrives.
        rate: messages published per second.
        duration: seconds of publishing.
        grace: seconds after publishing during which messages may still
            arrive; the run of each strategy ends then.
        message_size: bytes of payload per message.
        queue_size: the capacity of each client's queue with ``"queues"``,
            in messages.
        sndbuf: the server's kernel send buffer (``SO_SNDBUF``) per
            connection, in bytes. Without a cap, Linux lets it grow to 4 MiB
            (``net.ipv4.tcp_wmem``), which would hide the pile-up of a short
            run in the kernel. ``None`` keeps the system's default.
        rcvbuf: the slow client's receive buffer (``SO_RCVBUF``), in bytes.
        sample_interval: seconds between samples of :attr:`StrategyResult.series`.

    Raises:
        ValueError: if a setting is out of range.
    """
    settings = {
        "fast_clients": fast_clients,
        "rate": rate,
        "duration": duration,
        "grace": grace,
        "message_size": message_size,
        "queue_size": queue_size,
        "sndbuf": sndbuf,
        "rcvbuf": rcvbuf,
    }
    _check_settings({**settings, "sample_interval": sample_interval}, strategies)
    results = {}
    for strategy in strategies:
        run = _Run(strategy, **settings)
        results[strategy] = await run.run(sample_interval)
        logger.info("fan-out with %s: %s", strategy, results[strategy].summary())
    return FanoutResult(results, settings)


class _Run:
    """One strategy's run: a server, the clients, a publisher, a sampler."""

    def __init__(
        self,
        strategy: str,
        *,
        fast_clients: int,
        rate: float,
        duration: float,
        grace: float,
        message_size: int,
        queue_size: int,
        sndbuf: int | None,
        rcvbuf: int,
    ) -> None:
        self.strategy = strategy
        self.fast_count = fast_clients
        self.rate = rate
        self.duration = duration
        self.grace = grace
        self.padding = "x" * message_size
        self.queue_size = queue_size
        self.sndbuf = sndbuf
        self.rcvbuf = rcvbuf
        self.connections: list[ServerConnection] = []
        """Server side of every connection, in order of arrival."""
        self.scheduled = int(duration * rate)
        self.published = 0
        self.received: list[dict[int, float]] = [{} for _ in range(fast_clients)]
        """Arrival time of each message, by seq, per fast client."""
        self.queues: dict[ServerConnection, asyncio.Queue[str]] = {}
        self.slow_side: ServerConnection | None = None
        """Server side of the slow client's connection."""
        self.slow_dropped = 0
        self.started = 0.0

    async def _serve(self, connection: ServerConnection) -> None:
        if self.sndbuf is not None:
            sock = connection.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        self.connections.append(connection)
        await connection.wait_closed()

    async def run(self, sample_interval: float) -> StrategyResult:
        async with contextlib.AsyncExitStack() as stack:
            server = await serve(
                self._serve,
                "127.0.0.1",
                0,
                compression=None,
                ping_interval=None,
                logger=logging.getLogger("rtkit.fanout.websockets"),
            )
            stack.push_async_callback(self._stop_server, server)
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/"
            clients = []
            for _ in range(self.fast_count):
                client = await connect(url, compression=None, open_timeout=5)
                stack.push_async_callback(_close_client, client)
                clients.append(client)
            # The slow client connects last, so the awaited loop sends each
            # message to every fast client before it blocks on the slow one.
            slow = await stack.enter_async_context(
                stalled_client(url, rcvbuf=self.rcvbuf, open_timeout=5)
            )
            slow_port = slow.sock.getsockname()[1]
            async with asyncio.timeout(5):
                while len(self.connections) < self.fast_count + 1:
                    await asyncio.sleep(0.01)
            self.slow_side = next(
                c for c in self.connections if c.remote_address[1] == slow_port
            )
            result = await self._measure(clients, self.slow_side, sample_interval)
        return result

    async def _measure(
        self,
        clients: list[ClientConnection],
        slow_side: ServerConnection,
        sample_interval: float,
    ) -> StrategyResult:
        self.started = time.perf_counter()
        deadline = self.started + self.duration + self.grace
        tasks = [
            asyncio.create_task(self._read(client, received))
            for client, received in zip(clients, self.received, strict=True)
        ]
        if self.strategy == "queues":
            tasks += [
                asyncio.create_task(self._send_from_queue(connection))
                for connection in self._start_queues()
            ]
        publisher = asyncio.create_task(self._publish())
        series = []
        max_buffered = 0
        try:
            while (now := time.perf_counter()) < deadline:
                buffered = self._buffered_for(slow_side)
                max_buffered = max(max_buffered, buffered)
                series.append(self._sample(now, buffered))
                await asyncio.sleep(min(sample_interval, deadline - now))
            buffered = self._buffered_for(slow_side)
            series.append(self._sample(time.perf_counter(), buffered))
        finally:
            for task in [publisher, *tasks]:
                task.cancel()
            await asyncio.gather(publisher, *tasks, return_exceptions=True)
        latencies, undelivered = self._latencies(deadline)
        return StrategyResult(
            strategy=self.strategy,
            fast_clients=self.fast_count,
            scheduled=self.scheduled,
            published=self.published,
            latencies_ms=latencies,
            undelivered=undelivered,
            slow_max_buffered=max_buffered,
            slow_dropped=self.slow_dropped if self.strategy == "queues" else 0,
            series=series,
        )

    def _sample(self, now: float, buffered: int) -> dict[str, Any]:
        received = sum(len(r) for r in self.received) / self.fast_count
        return {
            "t": round(now - self.started, 4),
            "slow_buffered": buffered,
            "fast_received": received,
            "published": self.published,
        }

    def _buffered_for(self, connection: ServerConnection) -> int:
        """Return the bytes buffered in memory for ``connection``."""
        buffered = connection.transport.get_write_buffer_size()
        queue = self.queues.get(connection)
        if queue is not None:
            # NOTE: reads the queue's internal deque, because asyncio.Queue
            # has no public way to look at its items.
            items = queue._queue  # type: ignore[attr-defined]
            buffered += sum(len(item) for item in items)
        return buffered

    def _latencies(self, deadline: float) -> tuple[list[float], int]:
        latencies = []
        undelivered = 0
        for received in self.received:
            for seq in range(self.scheduled):
                due = self.started + seq / self.rate
                arrived = received.get(seq)
                if arrived is None:
                    undelivered += 1
                    arrived = deadline
                latencies.append((arrived - due) * 1000)
        return latencies, undelivered

    # Publishing

    async def _publish(self) -> None:
        loop_send = {
            "broadcast": self._broadcast,
            "queues": self._enqueue,
            "awaited": self._awaited,
        }[self.strategy]
        for seq in range(self.scheduled):
            due = self.started + seq / self.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            message = json.dumps({"seq": seq, "data": self.padding})
            await loop_send(message)
            self.published += 1

    async def _broadcast(self, message: str) -> None:
        broadcast(self.connections, message)

    async def _awaited(self, message: str) -> None:
        for connection in self.connections:
            await connection.send(message)

    def _start_queues(self) -> list[ServerConnection]:
        for connection in self.connections:
            self.queues[connection] = asyncio.Queue(self.queue_size)
        return list(self.queues)

    async def _enqueue(self, message: str) -> None:
        for connection, queue in self.queues.items():
            if queue.full():
                queue.get_nowait()
                if connection is self.slow_side:
                    self.slow_dropped += 1
            queue.put_nowait(message)

    async def _send_from_queue(self, connection: ServerConnection) -> None:
        queue = self.queues[connection]
        with contextlib.suppress(ConnectionClosed):
            while True:
                await connection.send(await queue.get())

    # Receiving and cleaning up

    async def _read(self, client: ClientConnection, received: dict[int, float]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in client:
                received[json.loads(message)["seq"]] = time.perf_counter()

    async def _stop_server(self, server: Any) -> None:
        # The slow client's connection cannot close cleanly, because its close
        # frame would wait behind data that the client never reads.
        for connection in self.connections:
            connection.transport.abort()
        server.close()
        async with asyncio.timeout(5):
            await server.wait_closed()


async def _close_client(client: ClientConnection) -> None:
    async with asyncio.timeout(5):
        await client.close()
