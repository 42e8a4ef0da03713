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
missed events, the ``epoch`` that reveals a restarted server, and readable
``notices`` about restarts and gaps.

Every client takes a ``token`` for a server that requires one, and an ``ssl``
context for ``https`` and ``wss``. Pollers send the token as
``Authorization: Bearer``. The subscriber sends it in the URL's query, in
its first message or in a session cookie, as the server expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from ssl import SSLCertVerificationError, SSLContext, create_default_context
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import MultipleValuesError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from .auth import (
    AUTH_METHODS,
    SESSION_COOKIE,
    AuthenticationFailed,
    is_session_cookie,
)
from .hub import short_repr
from .server import describe_close

__all__ = [
    "Backoff",
    "ByteCounter",
    "Delivery",
    "Follower",
    "HTTPResponse",
    "LongPoller",
    "Outage",
    "ShortPoller",
    "StreamClient",
    "WebSocketSubscriber",
    "http_get",
    "http_request",
]

logger = logging.getLogger("rtkit.clients")

HISTORY_GAP = "no longer in the server's history"
MAX_NOTICES = 100
"""Notices a :class:`Follower` keeps; older ones are dropped (they stay in the log)."""
TOKEN_PATTERN = re.compile(r"[!-~]+")
"""Printable ASCII without spaces, safe in a header, a cookie and a query."""


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
    epoch: str | None = None
    """The server's epoch the event belongs to; ``seq`` counts within it."""

    @property
    def latency(self) -> float:
        """Seconds from publishing to receipt."""
        return self.received - self.published


class HTTPResponse(NamedTuple):
    """A response as :func:`http_request` read it."""

    status: int
    headers: list[tuple[str, str]]
    """Header names and values in the order received."""
    body: bytes


async def http_request(
    host: str,
    port: int,
    target: str,
    counter: ByteCounter,
    timeout: float,
    *,
    headers: Mapping[str, str] | None = None,
    ssl: SSLContext | None = None,
) -> HTTPResponse:
    """Send one HTTP/1.1 GET on a new connection and read the whole response.

    The rtkit server closes the connection after each response, so reading
    until end of stream yields the whole response.

    Args:
        host: the server's host name or address.
        port: the server's port.
        target: the request target, e.g. ``/poll?since=3``.
        counter: counts the bytes sent and received (before TLS encryption).
        timeout: seconds for connecting, sending and reading together.
        headers: extra request headers, e.g. ``Authorization``.
        ssl: a TLS context to speak HTTPS; ``None`` for plain HTTP.

    Raises:
        TimeoutError: if no complete response arrives within ``timeout`` seconds.
        ConnectionError: if the connection fails or the response is malformed.
    """
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {authority}",
        "User-Agent: rtkit-poller",
        "Accept: application/json",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        try:
            writer.write(request)
            counter.sent += len(request)
            raw = await reader.read()
        finally:
            writer.close()
    counter.received += len(raw)
    head, separator, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if not separator or len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(
            f"malformed HTTP response from {authority}: {head[:80]!r}"
        )
    response_headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        response_headers.append((name.strip(), value.strip()))
    return HTTPResponse(int(parts[1]), response_headers, body)


async def http_get(
    host: str,
    port: int,
    target: str,
    counter: ByteCounter,
    timeout: float,
    *,
    headers: Mapping[str, str] | None = None,
    ssl: SSLContext | None = None,
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 GET on a new connection; return status and body.

    See :func:`http_request` for the arguments.

    Raises:
        TimeoutError: if no complete response arrives within ``timeout`` seconds.
        ConnectionError: if the connection fails or the response is malformed.
    """
    response = await http_request(
        host, port, target, counter, timeout, headers=headers, ssl=ssl
    )
    return response.status, response.body


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
    notices: list[str] = field(default_factory=list)
    """Readable notes on server restarts, gaps and errors, oldest first; the
    last :data:`MAX_NOTICES` of them."""

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

    def notice(self, text: str, level: int = logging.INFO) -> None:
        """Add ``text`` to :attr:`notices` and log it."""
        self.notices.append(text)
        del self.notices[:-MAX_NOTICES]
        logger.log(level, "%s: %s", self.name, text)

    def accept_epoch(self, epoch: str) -> None:
        """Start over from seq 0 when the server's epoch changed."""
        if self.epoch is not None and epoch != self.epoch:
            self.notice(
                f"server restarted: epoch {self.epoch} -> {epoch}; "
                "following the new epoch from its first event"
            )
            self.restarts += 1
            self.since = 0
        self.epoch = epoch

    def skip(self, count: int, reason: str) -> None:
        """Count the ``count`` events after ``since`` as missed and move past them."""
        first, last = self.since + 1, self.since + count
        self.missed += count
        self.since = last
        events = "1 event" if count == 1 else f"{count} events"
        seqs = f"seq {first}" if count == 1 else f"seq {first}-{last}"
        self.notice(f"missed {events} ({seqs}): {reason}")

    def accept_event(self, event: dict[str, Any], received: float) -> None:
        """Record one event envelope, skipping duplicates and counting gaps."""
        seq = int(event["seq"])
        if seq <= self.since:
            self.duplicates += 1
            return
        if seq > self.since + 1:
            self.skip(seq - self.since - 1, "the server did not send them")
        self.since = seq
        self.deliveries.append(Delivery(seq, float(event["ts"]), received, self.epoch))

    def accept_poll(self, body: dict[str, Any], received: float) -> None:
        """Record one ``/poll`` response body."""
        self.accept_epoch(body["epoch"])
        self.accept_reset(body)
        # Events the server dropped from its history are counted once, here,
        # and the since pointer jumps over them so the gap is not counted again.
        events = body.get("events", [])
        if body.get("missed"):
            self.skip(body["missed"], HISTORY_GAP)
            if events:
                self.since = int(events[0]["seq"]) - 1
        if not events:
            self.empty_responses += 1
        for event in events:
            self.accept_event(event, received)

    def accept_subscribed(self, message: dict[str, Any]) -> None:
        """Record a WebSocket ``subscribed`` confirmation.

        The replay that follows it starts after the gap of ``missed`` events
        that left the server's history, so the gap is counted once, here.
        """
        self.accept_epoch(message["epoch"])
        self.accept_reset(message)
        if message.get("missed"):
            self.skip(message["missed"], HISTORY_GAP)

    def accept_reset(self, body: dict[str, Any]) -> None:
        """Start over from seq 0 when the server marks its reply ``reset``.

        The server does so when ``since`` is above the channel's latest seq,
        which happens when the channel was evicted and created again: the
        position no longer belongs to its stream, so the replay starts from
        the first event kept.
        """
        if body.get("reset") is True:
            self.notice(
                f"position reset: seq {self.since} is past the channel's latest "
                "event (the server evicted and re-created it); following it "
                "from its first event"
            )
            self.since = 0


def _check_token(token: str | None) -> str | None:
    """Return ``token`` if it is ``None`` or usable in a header and a URL.

    Raises:
        ValueError: if ``token`` is empty, not a string, or contains spaces
            or characters other than printable ASCII.
    """
    if token is None:
        return None
    if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
        # The value is left out on purpose: it may be a secret.
        raise ValueError(
            "invalid token: pass the server's token as a non-empty string of "
            "printable ASCII characters without spaces, or None for no token"
        )
    return token


class StreamClient:
    """A client that follows the event stream in a task until :meth:`stop`.

    Args:
        url: the server's URL, e.g. ``server.url``.
        name: label in results and logs.
        token: the token of a server that requires one; ``None`` sends none.
        ssl: a TLS context, e.g. ``LocalCA.client_context()``; the client then
            speaks ``https`` and ``wss``. An ``https`` or ``wss`` URL without
            it gets Python's default context, which trusts the system's CAs.

    Raises:
        ValueError: if ``url`` is not an http(s) or ws(s) URL with a host, or
            ``token`` is invalid.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        token: str | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise ValueError(
                f"invalid server URL: {url!r}; pass e.g. server.url "
                "(http://127.0.0.1:8765/)"
            )
        if ssl is None and parts.scheme in ("https", "wss"):
            ssl = create_default_context()
        self.ssl = ssl
        self.host = parts.hostname
        self.port = parts.port or (443 if ssl is not None else 80)
        self.prefix = parts.path.rstrip("/")
        self.token = _check_token(token)
        self.follower = Follower(name)
        self._task: asyncio.Task[None] | None = None

    @property
    def authority(self) -> str:
        """The ``host:port`` part of the server's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

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

    async def _get(self, target: str, timeout: float) -> tuple[int, bytes]:
        """Send a GET for ``target`` under the URL's path, with the token."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return await http_get(
            self.host,
            self.port,
            self.prefix + target,
            self.follower.bytes,
            timeout,
            headers=headers,
            ssl=self.ssl,
        )

    async def _run(self) -> None:
        raise NotImplementedError


class ShortPoller(StreamClient):
    """Ask for new events every ``interval`` seconds.

    Args:
        url: the server's URL, e.g. ``server.url``.
        interval: seconds between the starts of two requests.
        name: label in results and logs.
        token: sent as ``Authorization: Bearer``; see :class:`StreamClient`.
        ssl: a TLS context for ``https``; see :class:`StreamClient`.
    """

    def __init__(
        self,
        url: str,
        interval: float,
        name: str = "short poll",
        *,
        token: str | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"invalid interval: {interval!r}; pass seconds > 0")
        super().__init__(url, name, token=token, ssl=ssl)
        self.interval = interval

    async def _run(self) -> None:
        follower = self.follower
        deadline = time.monotonic()
        while True:
            try:
                status, body = await self._get(f"/poll?{follower.query()}", 10)
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
        token: sent as ``Authorization: Bearer``; see :class:`StreamClient`.
        ssl: a TLS context for ``https``; see :class:`StreamClient`.
    """

    def __init__(
        self,
        url: str,
        wait: float = 25,
        name: str = "long poll",
        *,
        token: str | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        if not 0 < wait <= 30:
            raise ValueError(f"invalid wait: {wait!r}; pass seconds from 0 to 30")
        super().__init__(url, name, token=token, ssl=ssl)
        self.wait = wait

    async def _run(self) -> None:
        follower = self.follower
        while True:
            target = f"/poll?{follower.query()}&wait={self.wait:g}"
            try:
                status, body = await self._get(target, self.wait + 10)
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
    so they do not all come back at once. With ``jitter=False`` every attempt
    waits the whole ``min(cap, base * 2**n)``, so clients that lost their
    connection together also come back together. :meth:`reset` starts over;
    :class:`WebSocketSubscriber` calls it after a connection that stayed up
    for ``stable_after`` seconds, so a connection that keeps failing right
    after it opens still backs off.

    Raises:
        ValueError: if ``base`` or ``cap`` is not positive, ``cap`` is below
            ``base``, or ``stable_after`` is negative.
    """

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError(f"invalid base: {self.base!r}; pass seconds > 0")
        if not self.cap >= self.base:
            raise ValueError(
                f"invalid cap: {self.cap!r}; pass seconds >= base ({self.base!r})"
            )
        if not self.stable_after >= 0:
            raise ValueError(
                f"invalid stable_after: {self.stable_after!r}; pass seconds >= 0"
            )

    def next_delay(self) -> float:
        """Return the next delay in seconds and count the attempt."""
        ceiling = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(0, ceiling) if self.jitter else ceiling

    def reset(self) -> None:
        """Start over from the shortest delays."""
        self.attempt = 0


@dataclass
class Outage:
    """One lost connection of a :class:`WebSocketSubscriber`, until it was back."""

    lost_at: float
    """When the connection was lost, in seconds since the Unix epoch. When the
    client closed it, this is the end of the closing handshake, which waits up
    to the subscriber's ``close_timeout`` for the server's close frame."""
    code: int
    """The close code: the server's close frame, the client's own (1011 when
    its keepalive ping timed out), or 1006 when no close frame was sent."""
    reason: str = ""
    """The close reason that came with ``code``."""
    closed_by: str | None = None
    """The side that sent the first close frame, ``"server"`` or ``"client"``,
    or ``None`` when the connection dropped without one."""
    back_at: float | None = None
    """When the server confirmed the subscription again, in seconds since the
    Unix epoch; ``None`` while the client is still disconnected."""
    attempts: int = 0
    """Connection attempts since the loss, the successful one included."""

    @property
    def time_to_reconnect(self) -> float | None:
        """Seconds from the loss to the confirmed subscription, or ``None``."""
        return None if self.back_at is None else self.back_at - self.lost_at

    def describe(self) -> str:
        """Return the outage as one line, e.g. for a notebook."""
        lost = time.strftime("%H:%M:%S", time.localtime(self.lost_at))
        closing = f"{self.closed_by} closed with " if self.closed_by else ""
        text = f"lost at {lost}: {closing}{describe_close(self.code, self.reason)}"
        if self.time_to_reconnect is None:
            return f"{text}; not back yet after {self.attempts} attempts"
        return (
            f"{text}; back after {self.time_to_reconnect:.2f} s "
            f"({self.attempts} attempts)"
        )


def _close_frames(connection: ClientConnection) -> tuple[int, str, str | None]:
    """Return the close code, reason and closing side of a closed ``connection``."""
    protocol = connection.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if received is not None and (sent is None or protocol.close_rcvd_then_sent):
        return received.code, received.reason, "server"
    if sent is not None:
        return sent.code, sent.reason, "client"
    return 1006, "", None


def _is_fatal(error: Exception) -> bool:
    """Return whether retrying with the same settings cannot help after ``error``."""
    if isinstance(error, AuthenticationFailed | SSLCertVerificationError):
        return True
    if isinstance(error, InvalidStatus):
        status = error.response.status_code
        # 408 and 429 ask the client to try again later; 503 (server full)
        # and other 5xx are temporary too.
        return 400 <= status < 500 and status not in (408, 429)
    return False


MAX_RETRY_AFTER = 600.0
"""The longest ``Retry-After`` a subscriber waits, in seconds."""


def retry_after(error: Exception) -> float:
    """Return the wait in seconds that a 503 or 429 response's ``Retry-After`` requests.

    Returns 0 for other errors, and for a missing value or an HTTP date, which
    rtkit never sends. The wait is capped at :data:`MAX_RETRY_AFTER`.
    """
    if not isinstance(error, InvalidStatus):
        return 0.0
    if error.response.status_code not in (429, 503):
        return 0.0
    try:
        seconds = float(error.response.headers.get("Retry-After", ""))
    except (ValueError, MultipleValuesError):
        return 0.0
    if not 0 <= seconds < math.inf:
        return 0.0
    return min(seconds, MAX_RETRY_AFTER)


def _describe_error(error: Exception) -> str:
    if isinstance(error, InvalidStatus):
        body = error.response.body.decode("utf-8", "replace").strip()
        return f"{error}: {short_repr(body, 160)}" if body else str(error)
    if isinstance(error, ConnectionClosed):
        return f"connection closed: {error}"
    if isinstance(error, SSLCertVerificationError):
        return (
            f"{error}; pass ssl= a context that trusts the server's CA, "
            "e.g. LocalCA.client_context()"
        )
    return str(error) or type(error).__name__


class WebSocketSubscriber(StreamClient):
    """Subscribe over WebSocket and receive every event as the server pushes it.

    With ``reconnect``, a lost connection is opened again after a delay from
    ``backoff``, and the subscription resumes after the last ``seq`` received,
    in the same epoch, so events still in the server's history arrive once
    each. Events that already left the history are counted in
    ``follower.missed`` and named in ``follower.notices``. A new epoch (the
    server restarted and lost its history) is counted in ``follower.restarts``
    and followed from its first event. Each loss is recorded in
    :attr:`outages`, with the close code and the time to reconnect.

    Errors that a retry cannot fix stop the subscriber and are kept in
    :attr:`failure`: a rejected token, an HTTP 4xx response to the upgrade
    (except 408 and 429), and a certificate that fails verification. Without
    ``reconnect`` any error stops it.

    Args:
        url: the server's URL, e.g. ``server.url`` (``/ws`` is appended).
        name: label in results and logs.
        compression: ``"deflate"`` to negotiate permessage-deflate; the default
            ``None`` sends frames as they are, like the uncompressed polls.
        reconnect: open the connection again when it is lost.
        backoff: the delays between attempts; a default :class:`Backoff`.
        token: the token of a server that requires one; ``None`` sends none.
        auth: how to send ``token``, as the server expects it: ``"query"``
            appends ``?token=`` to the URL (where server logs and proxies see
            it), ``"message"`` sends ``{"type": "auth", "token": ...}`` first
            and waits for ``{"type": "authenticated"}``, ``"cookie"`` sends
            ``GET /login`` with ``Authorization: Bearer`` before each
            connection and then the ``rtkit_session_PORT`` cookie it returns.
        ssl: a TLS context, e.g. ``LocalCA.client_context()``, to use ``wss``.
        ping_interval: seconds between the client's keepalive pings; ``None``
            disables them.
        ping_timeout: seconds to wait for a pong before closing with 1011;
            ``None`` waits forever.
        open_timeout: seconds for each connection attempt, from TCP connect
            to the welcome message (authentication included).
        close_timeout: seconds to wait for the server's close frame after the
            client started closing, for example when its keepalive ping timed
            out. The outage is recorded when the closing ends.

    Raises:
        ValueError: if an argument is invalid; the message names it.
    """

    def __init__(
        self,
        url: str,
        name: str = "WebSocket",
        compression: str | None = None,
        *,
        reconnect: bool = False,
        backoff: Backoff | None = None,
        token: str | None = None,
        auth: str = "query",
        ssl: SSLContext | None = None,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        open_timeout: float = 10,
        close_timeout: float = 10,
    ) -> None:
        if auth not in AUTH_METHODS:
            raise ValueError(
                f"invalid auth: {auth!r}; pass 'query', 'message' or 'cookie', "
                "as the server's TokenAuth(via=...) expects"
            )
        for option, value in (
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
        ):
            if value is not None and not value > 0:
                raise ValueError(
                    f"invalid {option}: {value!r}; pass seconds > 0, or None "
                    "to disable it"
                )
        for option, value in (
            ("open_timeout", open_timeout),
            ("close_timeout", close_timeout),
        ):
            if not value > 0:
                raise ValueError(f"invalid {option}: {value!r}; pass seconds > 0")
        super().__init__(url, name, token=token, ssl=ssl)
        self.compression = compression
        self.connected = asyncio.Event()
        """Set while the subscription is confirmed, cleared when it is lost."""
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.auth = auth
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.reconnects = 0
        """Connections opened again after a loss."""
        self.outages: list[Outage] = []
        """Every lost connection, oldest first; the last may still be open."""
        self.failure: Exception | None = None
        """The error that stopped the subscriber, if one did."""
        self._connection: ClientConnection | None = None
        self._up_since: float | None = None
        """``time.monotonic()`` when the current subscription was confirmed."""

    @property
    def ws_url(self) -> str:
        """The WebSocket URL this subscriber connects to, without the token."""
        scheme = "ws" if self.ssl is None else "wss"
        return f"{scheme}://{self.authority}{self.prefix}/ws"

    @property
    def latency(self) -> float | None:
        """The keepalive round trip of the current connection, in seconds.

        ``None`` while disconnected. websockets reports 0.0 until the first
        pong arrives, ``ping_interval`` seconds after connecting.
        """
        connection = self._connection
        if connection is None or connection.state is not State.OPEN:
            return None
        return connection.latency

    async def stop(self) -> Follower:
        """Stop the subscriber, close its connection and return what it recorded."""
        follower = await super().stop()
        self.connected.clear()
        self._connection = None
        self._up_since = None
        return follower

    async def _run(self) -> None:
        while True:
            error: Exception | None = None
            try:
                await self._follow()
            except (
                OSError,
                TimeoutError,
                ConnectionClosed,
                InvalidHandshake,
                AuthenticationFailed,
            ) as exc:
                error = exc
            stable = self._connection_ended(error)
            if error is not None and (not self.reconnect or _is_fatal(error)):
                self._give_up(error)
                return
            if not self.reconnect:
                return
            if stable:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            if error is not None:
                # The server's Retry-After comes first; the jittered delay on
                # top keeps the clients it turned away from returning at once.
                delay += retry_after(error)
            await asyncio.sleep(delay)

    def _connection_ended(self, error: Exception | None) -> bool:
        """Record a lost connection or a failed attempt.

        Returns whether the lost connection had stayed up ``stable_after``.
        """
        connection, self._connection = self._connection, None
        up_since, self._up_since = self._up_since, None
        self.connected.clear()
        if up_since is None or connection is None:
            if error is not None:
                self.follower.errors += 1
                logger.debug("%s: connection failed: %s", self.follower.name, error)
            return False
        code, reason, closed_by = _close_frames(connection)
        outage = Outage(time.time(), code, reason, closed_by)
        self.outages.append(outage)
        logger.info("%s: connection %s", self.follower.name, outage.describe())
        return time.monotonic() - up_since >= self.backoff.stable_after

    def _give_up(self, error: Exception) -> None:
        self.failure = error
        self.follower.notice(f"stopped: {_describe_error(error)}", logging.WARNING)

    def _subscription_confirmed(self) -> None:
        if self._up_since is None:
            self._up_since = time.monotonic()
        outage = self.outages[-1] if self.outages else None
        if outage is not None and outage.back_at is None:
            outage.back_at = time.time()
            self.reconnects += 1
            logger.info(
                "%s: reconnected after %.2f s (%d attempts)",
                self.follower.name,
                outage.time_to_reconnect,
                outage.attempts,
            )
        self.connected.set()

    async def _follow(self) -> None:
        """Open one connection, subscribe and receive until it closes."""
        if self.outages and self.outages[-1].back_at is None:
            self.outages[-1].attempts += 1
        connection = await self._open()
        self._connection = connection
        try:
            if self.token is not None and self.auth == "message":
                await self._authenticate(connection)
            async with asyncio.timeout(self.open_timeout):
                await connection.recv()  # the welcome message
            await connection.send(json.dumps(self.follower.subscription()))
            await self._receive(connection)
        finally:
            # Close with 1000 also when stop() cancels this task; the
            # connection's own context manager would send 1011.
            await connection.close()

    async def _open(self) -> ClientConnection:
        """Open the WebSocket connection, with the token in the URL or a cookie."""
        url = self.ws_url
        headers: dict[str, str] = {}
        if self.token is not None and self.auth == "query":
            url += "?" + urlencode({"token": self.token})
        elif self.token is not None and self.auth == "cookie":
            headers["Cookie"] = await self._log_in()
        options: dict[str, Any] = {}
        if self.ssl is not None:
            options["ssl"] = self.ssl
        connection = await connect(
            url,
            compression=self.compression,
            create_connection=_counting_connection(self.follower.bytes),
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            additional_headers=headers or None,
            **options,
        )
        self.follower.requests += 1
        return connection

    async def _log_in(self) -> str:
        """Send ``GET /login`` with the token; return the cookie as ``name=value``.

        Raises:
            AuthenticationFailed: if the server rejects the token or sets no
                session cookie.
            ConnectionError: if the server fails with a 5xx status.
        """
        response = await http_request(
            self.host,
            self.port,
            f"{self.prefix}/login",
            self.follower.bytes,
            self.open_timeout,
            headers={"Authorization": f"Bearer {self.token}"},
            ssl=self.ssl,
        )
        self.follower.requests += 1
        body = short_repr(response.body.decode("utf-8", "replace").strip(), 160)
        if response.status >= 500:
            raise ConnectionError(f"GET /login failed: HTTP {response.status}: {body}")
        if response.status not in (200, 204):
            raise AuthenticationFailed(
                f"GET /login rejected the token: HTTP {response.status}: {body}; "
                "check the token, and that the server uses TokenAuth(via='cookie')"
            )
        session = _session_cookie(response.headers)
        if session is None:
            raise AuthenticationFailed(
                f"GET /login returned HTTP {response.status} without a "
                f"{SESSION_COOKIE}_PORT cookie; check that the server uses "
                "TokenAuth(via='cookie')"
            )
        return session

    async def _authenticate(self, connection: ClientConnection) -> None:
        """Send the token in the first message and wait for the confirmation.

        Raises:
            AuthenticationFailed: if the server closes the connection with
                1008 or replies with anything but ``authenticated``.
        """
        await connection.send(json.dumps({"type": "auth", "token": self.token}))
        try:
            async with asyncio.timeout(self.open_timeout):
                reply = await connection.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 1008:
                raise AuthenticationFailed(
                    "server rejected the auth message: "
                    + describe_close(exc.rcvd.code, exc.rcvd.reason)
                ) from exc
            raise
        try:
            message = json.loads(reply)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "authenticated":
            raise AuthenticationFailed(
                "expected {'type': 'authenticated'} in reply to the auth "
                f"message, got {short_repr(reply, 80)}; check that the server "
                "uses TokenAuth(via='message')"
            )

    async def _receive(self, connection: ClientConnection) -> None:
        """Record each pushed event until the connection closes."""
        follower = self.follower
        async for message in connection:
            received = time.time()
            try:
                envelope = json.loads(message)
                kind = envelope.get("type")
            except (ValueError, AttributeError):
                kind = None
            if kind == "event":
                follower.accept_event(envelope, received)
            elif kind == "subscribed":
                follower.accept_subscribed(envelope)
                self._subscription_confirmed()
            else:
                logger.warning(
                    "%s: unexpected message: %s", follower.name, short_repr(message, 80)
                )


def _session_cookie(headers: list[tuple[str, str]]) -> str | None:
    """Return the session cookie among ``Set-Cookie`` headers, as ``name=value``.

    The name ends with the server's port, which can differ from the URL's
    port behind a proxy, so any ``rtkit_session_PORT`` name is accepted.
    """
    for name, value in headers:
        if name.lower() != "set-cookie":
            continue
        cookie = SimpleCookie()
        try:
            cookie.load(value)
        except CookieError:
            continue
        for cookie_name, morsel in cookie.items():
            if is_session_cookie(cookie_name):
                return f"{cookie_name}={morsel.value}"
    return None
