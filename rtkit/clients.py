"""Python clients of the three transports, instrumented for measurement.

Each client follows one event stream from a :class:`~rtkit.server.Server` and
records, per event, the delay from publishing (the event's server timestamp)
to receipt, plus the HTTP requests it made and the bytes it sent and received.

Bytes are counted at the socket. For HTTP that is every request line, header
and body byte. For WebSocket it is the opening handshake, then each frame's
header (2 to 14 bytes, with the 4-byte mask on client frames) and payload.
TCP/IP headers (about 40 bytes per packet) and TLS are not counted.

* :class:`ShortPoller` sends ``GET /poll?since=SEQ`` every ``interval`` seconds.
* :class:`LongPoller` sends ``GET /poll?since=SEQ&wait=W`` and sends the next
  request as soon as each response arrives.
* :class:`WebSocketSubscriber` subscribes once and receives pushed events.

All three share :class:`Follower`: the bookkeeping of ``seq``, duplicates and
missed events, and the ``epoch`` that reveals a restarted server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

__all__ = [
    "Backoff",
    "ByteCounter",
    "Delivery",
    "Follower",
    "LongPoller",
    "ShortPoller",
    "StreamClient",
    "WebSocketSubscriber",
    "http_get",
]

logger = logging.getLogger("rtkit.clients")


@dataclass
class ByteCounter:
    """Bytes written to and read from sockets."""

    sent: int = 0
    received: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event as a client received it."""

    seq: int
    published: float
    """Server time of publishing, in seconds since the Unix epoch."""
    received: float
    """Client time of receipt, on the same clock."""

    @property
    def latency(self) -> float:
        """Seconds from publishing to receipt."""
        return self.received - self.published


async def http_get(
    host: str, port: int, target: str, counter: ByteCounter, timeout: float
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 GET on a new connection; return status and body.

    The rtkit server closes the connection after each response, so reading
    until end of stream yields the whole response.

    Raises:
        TimeoutError: if no complete response arrives within ``timeout`` seconds.
        ConnectionError: if the connection fails or the response is malformed.
    """
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "User-Agent: rtkit-poller\r\nAccept: application/json\r\n\r\n"
    ).encode()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            counter.sent += len(request)
            raw = await reader.read()
        finally:
            writer.close()
    counter.received += len(raw)
    head, separator, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not separator or len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(
            f"malformed HTTP response from {host}:{port}: {head[:80]!r}"
        )
    return int(parts[1]), body


@dataclass
class Follower:
    """Bookkeeping for one client following the event stream.

    Attributes are public so a notebook can inspect them while a client runs.
    """

    name: str
    since: int = 0
    """The last ``seq`` received; the next request is for the events after it."""
    epoch: str | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    duplicates: int = 0
    missed: int = 0
    """Events reported missing by the server or skipped in ``seq``."""
    restarts: int = 0
    """How often a new ``epoch`` showed that the server had restarted."""
    requests: int = 0
    empty_responses: int = 0
    errors: int = 0
    bytes: ByteCounter = field(default_factory=ByteCounter)

    def query(self) -> str:
        """Return the ``/poll`` query for the events after ``since``."""
        query = f"since={self.since}"
        return f"{query}&epoch={self.epoch}" if self.epoch else query

    def subscription(self) -> dict[str, Any]:
        """Return the WebSocket ``subscribe`` message for the events after ``since``."""
        message: dict[str, Any] = {"type": "subscribe", "since": self.since}
        if self.epoch:
            message["epoch"] = self.epoch
        return message

    def accept_epoch(self, epoch: str) -> None:
        """Start over from seq 0 when the server's epoch changed."""
        if self.epoch is not None and epoch != self.epoch:
            logger.info("%s: server restarted (epoch %s)", self.name, epoch)
            self.restarts += 1
            self.since = 0
        self.epoch = epoch

    def accept_event(self, event: dict[str, Any], received: float) -> None:
        """Record one event envelope, skipping duplicates and counting gaps."""
        seq = int(event["seq"])
        if seq <= self.since:
            self.duplicates += 1
            return
        self.missed += seq - self.since - 1
        self.since = seq
        self.deliveries.append(Delivery(seq, float(event["ts"]), received))

    def accept_poll(self, body: dict[str, Any], received: float) -> None:
        """Record one ``/poll`` response body."""
        self.accept_epoch(body["epoch"])
        # Events the server dropped from its history are counted once, here,
        # and the since pointer jumps over them so the gap is not counted again.
        self.missed += body.get("missed", 0)
        events = body.get("events", [])
        if events and body.get("missed"):
            self.since = int(events[0]["seq"]) - 1
        if not events:
            self.empty_responses += 1
        for event in events:
            self.accept_event(event, received)


class StreamClient:
    """A client that follows the event stream in a task until :meth:`stop`.

    Args:
        url: the server's URL, e.g. ``server.url``.
        name: label in results and logs.

    Raises:
        ValueError: if ``url`` is not an http or ws URL with a host.
    """

    def __init__(self, url: str, name: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws") or not parts.hostname:
            raise ValueError(
                f"invalid server URL: {url!r}; pass e.g. server.url "
                "(http://127.0.0.1:8765/)"
            )
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.follower = Follower(name)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following the stream on the running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> Follower:
        """Stop the client and return what it recorded."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return self.follower

    async def _run(self) -> None:
        raise NotImplementedError


class ShortPoller(StreamClient):
    """Ask for new events every ``interval`` seconds.

    Args:
        url: the server's URL, e.g. ``server.url``.
        interval: seconds between the starts of two requests.
        name: label in results and logs.
    """

    def __init__(self, url: str, interval: float, name: str = "short poll") -> None:
        if not interval > 0:
            raise ValueError(f"invalid interval: {interval!r}; pass seconds > 0")
        super().__init__(url, name)
        self.interval = interval

    async def _run(self) -> None:
        follower = self.follower
        deadline = time.monotonic()
        while True:
            target = f"{self.prefix}/poll?{follower.query()}"
            try:
                status, body = await http_get(
                    self.host, self.port, target, follower.bytes, timeout=10
                )
                follower.requests += 1
                if status == 200:
                    follower.accept_poll(json.loads(body), time.time())
                else:
                    follower.errors += 1
            except (OSError, TimeoutError, ValueError) as exc:
                follower.errors += 1
                logger.warning("%s: request failed: %s", follower.name, exc)
            # A fixed schedule, like setInterval: the request time does not
            # stretch the interval unless a request takes longer than it.
            deadline = max(deadline + self.interval, time.monotonic())
            await asyncio.sleep(deadline - time.monotonic())


class LongPoller(StreamClient):
    """Poll with requests that the server keeps open until an event arrives.

    Args:
        url: the server's URL, e.g. ``server.url``.
        wait: the maximum time the server keeps each request open, in seconds.
        name: label in results and logs.
    """

    def __init__(self, url: str, wait: float = 25, name: str = "long poll") -> None:
        if not 0 < wait <= 30:
            raise ValueError(f"invalid wait: {wait!r}; pass seconds from 0 to 30")
        super().__init__(url, name)
        self.wait = wait

    async def _run(self) -> None:
        follower = self.follower
        while True:
            target = f"{self.prefix}/poll?{follower.query()}&wait={self.wait:g}"
            try:
                status, body = await http_get(
                    self.host, self.port, target, follower.bytes, self.wait + 10
                )
                follower.requests += 1
                if status == 200:
                    follower.accept_poll(json.loads(body), time.time())
                else:
                    follower.errors += 1
                    await asyncio.sleep(1)
            except (OSError, TimeoutError, ValueError) as exc:
                follower.errors += 1
                logger.warning("%s: request failed: %s", follower.name, exc)
                await asyncio.sleep(1)


def _counting_connection(counter: ByteCounter) -> type[ClientConnection]:
    """Return a ClientConnection class that counts the bytes of its socket."""

    class CountingTransport:
        def __init__(self, transport: asyncio.Transport) -> None:
            self._transport = transport

        def write(self, data: bytes | bytearray | memoryview) -> None:
            counter.sent += len(data)
            self._transport.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

    class CountingConnection(ClientConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(CountingTransport(transport))  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            counter.received += len(data)
            super().data_received(data)

    return CountingConnection


@dataclass
class Backoff:
    """Delays between reconnection attempts: exponential, capped, full jitter.

    Attempt ``n`` (from 0) waits a random time between 0 and
    ``min(cap, base * 2**n)`` seconds. The randomness spreads out clients that
    lost their connection at the same moment, for example in a server restart,
    so they do not all come back at once. :meth:`reset` starts over after a
    connection that stayed up for ``stable_after`` seconds.
    """

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Return the next delay in seconds and count the attempt."""
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Start over from the shortest delays."""
        self.attempt = 0


class WebSocketSubscriber(StreamClient):
    """Subscribe over WebSocket and receive every event as the server pushes it.

    With ``reconnect``, a lost connection is opened again after a delay from
    ``backoff``, and the subscription resumes after the last ``seq`` received,
    in the same epoch, so events still in the server's history arrive once
    each. A new epoch (the server restarted) is counted in
    ``follower.restarts`` and followed from its first event.

    Args:
        url: the server's URL, e.g. ``server.url`` (``/ws`` is appended).
        name: label in results and logs.
        compression: ``"deflate"`` to negotiate permessage-deflate; the default
            ``None`` sends frames as they are, like the uncompressed polls.
        reconnect: open the connection again when it is lost.
        backoff: the delays between attempts; a default :class:`Backoff`.
    """

    def __init__(
        self,
        url: str,
        name: str = "WebSocket",
        compression: str | None = None,
        *,
        reconnect: bool = False,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(url, name)
        self.compression = compression
        self.connected = asyncio.Event()
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.reconnects = 0
        """Connections opened again after a loss."""

    @property
    def ws_url(self) -> str:
        """The WebSocket URL this subscriber connects to."""
        return f"ws://{self.host}:{self.port}{self.prefix}/ws"

    async def _run(self) -> None:
        while True:
            opened = time.monotonic()
            try:
                await self._follow()
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                if not self.reconnect:
                    raise
                logger.info("%s: connection lost: %s", self.follower.name, exc)
            else:
                if not self.reconnect:
                    return
            self.connected.clear()
            if time.monotonic() - opened >= self.backoff.stable_after:
                self.backoff.reset()
            await asyncio.sleep(self.backoff.next_delay())
            self.reconnects += 1

    async def _follow(self) -> None:
        follower = self.follower
        async with connect(
            self.ws_url,
            compression=self.compression,
            create_connection=_counting_connection(follower.bytes),
            open_timeout=10,
        ) as connection:
            follower.requests += 1
            await connection.recv()
            await connection.send(json.dumps(follower.subscription()))
            async for message in connection:
                received = time.time()
                envelope = json.loads(message)
                kind = envelope.get("type")
                if kind == "event":
                    follower.accept_event(envelope, received)
                elif kind == "subscribed":
                    follower.accept_epoch(envelope["epoch"])
                    # The replay starts after the gap: count it once, here.
                    follower.missed += envelope["missed"]
                    follower.since += envelope["missed"]
                    self.connected.set()
                else:
                    logger.warning(
                        "%s: unexpected message: %.80s", follower.name, message
                    )
