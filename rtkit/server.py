"""The rtkit server: one port for the browser client, plain HTTP and WebSocket.

The server is a :func:`websockets.asyncio.server.serve` server created on the
event loop that is already running, which in Jupyter is the kernel's loop. A
cell starts it with top-level ``await`` and it keeps serving while the kernel is
idle. Usage, in a notebook cell::

    server = await rtkit.start()          # http://127.0.0.1:8765/
    ...
    await server.stop()

or as an asynchronous context manager::

    async with rtkit.Server(port=0) as server:
        ...

Starting is idempotent per port: starting on a port where an earlier rtkit
server of this process listens stops that server first, so re-running a start
cell replaces the server instead of failing with "address already in use".

For reconnection experiments, ``await server.kill()`` simulates a crash: every
connection drops without a close frame. ``await server.start(keep_history=True)``
then brings the server back with its epoch and events, as if it had stored them
in a durable log, so clients can resume without losing events.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import math
import os
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import origins, routes
from .auth import TokenAuth, unauthorized
from .hub import (
    DEFAULT_CHANNEL,
    DEFAULT_HISTORY_SIZE,
    DEFAULT_MAX_CHANNELS,
    Event,
    EventsAfter,
    Hub,
    short_repr,
)
from .logs import install_log_buffer
from .origins import normalize_origin
from .push import DEFAULT_MAX_BUFFER, DEFAULT_MAX_RATE, PushHandler, remote_address
from .source import EventSource

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PORT",
    "Handler",
    "Handshake",
    "PortInUseError",
    "Server",
    "default_port",
    "describe_close",
    "running_servers",
    "start",
    "stop",
]

logger = logging.getLogger("rtkit.server")
access_logger = logging.getLogger("rtkit.access")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_CONNECTIONS = 1000
"""WebSocket connections open at once before upgrades get 503."""
RETRY_AFTER = 5
"""Seconds a client rejected by a full server should wait, sent as Retry-After."""

Handler = Callable[[ServerConnection], Awaitable[None]]
"""A WebSocket connection handler, as websockets' ``serve`` takes it."""

_registry: dict[int, Server] = {}
"""Running rtkit servers of this process, by the port they listen on."""

CLOSE_CODE_MEANINGS = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1004: "reserved",
    1005: "no status received",
    1006: "abnormal closure, no close frame",
    1007: "invalid payload data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension missing",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
    1014: "bad gateway",
    1015: "TLS handshake failed",
}
"""Close code meanings from RFC 6455 section 7.4.1 and, for 1012 to 1014, the
IANA WebSocket Close Code Number Registry; static/client.js uses the same."""


def default_port() -> int:
    """Return the port rtkit listens on by default.

    That is ``RTKIT_PORT`` from the environment when set, else 8765.

    Raises:
        ValueError: if ``RTKIT_PORT`` is not an integer from 0 to 65535.
    """
    value = os.environ.get("RTKIT_PORT")
    if value is None or value == "":
        return DEFAULT_PORT
    try:
        return _check_port(int(value))
    except ValueError:
        raise ValueError(
            f"invalid RTKIT_PORT: {value!r}; set it to a port from 0 to 65535 "
            "or unset it to use 8765"
        ) from None


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(
            f"invalid port: {port!r}; pass an integer from 0 to 65535 "
            "(0 picks a free port)"
        )
    return port


def _check_max_connections(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"invalid max_connections: {value!r}; pass a positive integer, e.g. "
            f"{DEFAULT_MAX_CONNECTIONS}, or None for no limit"
        )
    return value


MAX_WAIT_LIMIT = 3600.0
"""The largest ``max_wait`` accepted, in seconds. An unanswered request is
held for ``max_wait`` plus 10 s, so a larger cap would let idle requests
hold connections almost for good."""


def _check_max_wait(value: object) -> float:
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    if not valid or not 0 < value <= MAX_WAIT_LIMIT:  # type: ignore[operator]
        raise ValueError(
            f"invalid max_wait: {value!r}; pass the maximum long-poll wait in "
            f"seconds, above 0 and at most {MAX_WAIT_LIMIT:g}, e.g. "
            f"{routes.MAX_WAIT:g}"
        )
    return float(value)  # type: ignore[arg-type]


def _check_optional_seconds(name: str, value: object, none_means: str) -> float | None:
    if value is None:
        return None
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    if not valid or not 0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(
            f"invalid {name}: {value!r}; pass seconds above 0, or {none_means}"
        )
    return float(value)  # type: ignore[arg-type]


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}: {value!r}; pass True or False")
    return value


def _check_host(host: object) -> str:
    # An empty host makes asyncio bind every interface, IPv4 and IPv6 on
    # separate sockets, and with port 0 each socket gets its own port.
    if not isinstance(host, str) or not host.strip():
        raise ValueError(
            f"invalid host: {host!r}; pass an address of this machine, such as "
            f"{DEFAULT_HOST!r} (this machine only), or '0.0.0.0' or '::' to "
            "listen on every interface explicitly"
        )
    return host


def _check_close_timeout(value: object) -> float:
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    if not valid or not 0 < value < math.inf:  # type: ignore[operator]
        raise ValueError(
            f"invalid close_timeout: {value!r}; pass the seconds to wait for a "
            "client's close frame at shutdown, above 0, e.g. 5"
        )
    return float(value)  # type: ignore[arg-type]


def _is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine only, as opposed to a network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A DNS name may resolve to any address.
        return False


class _LoopLock:
    """An :class:`asyncio.Lock` per event loop, created on first use.

    A :class:`Server` may be created outside any loop and used from several
    loops, one after the other (each ``asyncio.run``) or at once (a server
    thread beside the notebook's loop). A single :class:`asyncio.Lock` raises
    ``RuntimeError`` when a second loop uses it, so each loop gets its own.
    NOTE: calls from two loops at once are therefore not serialized.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Lock
        ] = weakref.WeakKeyDictionary()

    def get(self) -> asyncio.Lock:
        """Return the lock of the running event loop."""
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks.setdefault(loop, asyncio.Lock())
        return lock


_bind_lock = _LoopLock()
"""Held while a server checks the registry and binds, so that two servers
starting on one port at once do not both try to bind it."""


class _RepeatFilter:
    """Let each log message through at most once per ``interval`` seconds.

    A client in a retry loop with a wrong token would otherwise add a line per
    attempt and push every other line out of the log buffer.
    """

    def __init__(
        self,
        interval: float = 1.0,
        max_messages: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_messages = max_messages
        self.clock = clock
        self._logged_at: dict[str, float] = {}
        self._held_back: Counter[str] = Counter()

    def admit(self, message: str) -> int | None:
        """Return ``None`` to hold ``message`` back, else how many were held back.

        The count is the number of repeats of ``message`` held back since it
        was last let through.
        """
        now = self.clock()
        if now - self._logged_at.get(message, -math.inf) < self.interval:
            self._held_back[message] += 1
            return None
        if message not in self._logged_at and len(self._logged_at) >= self.max_messages:
            # Forget the message logged longest ago, so memory stays bounded.
            oldest = min(self._logged_at, key=self._logged_at.__getitem__)
            del self._logged_at[oldest]
            self._held_back.pop(oldest, None)
        self._logged_at[message] = now
        return self._held_back.pop(message, 0)


class PortInUseError(OSError):
    """Raised when another program already listens on the requested port."""


@dataclass(frozen=True)
class Handshake:
    """A WebSocket opening handshake as the server saw it."""

    remote: str
    """The client's address, as ``host:port``."""
    request: Request
    """The client's upgrade request."""
    response: Response
    """The server's response: 101 when accepted, an error status otherwise."""
    at: float = field(default_factory=time.time)
    """When the response was sent, in seconds since the epoch."""

    def format(self) -> str:
        """Return the request and response heads as they appear on the wire."""
        lines = [f"{self.request.method} {self.request.path} HTTP/1.1"]
        lines += [
            f"{name}: {value}" for name, value in self.request.headers.raw_items()
        ]
        lines += [
            "",
            f"HTTP/1.1 {self.response.status_code} {self.response.reason_phrase}",
        ]
        lines += [
            f"{name}: {value}" for name, value in self.response.headers.raw_items()
        ]
        return "\n".join(lines)


def describe_close(code: int | None, reason: str = "") -> str:
    """Return a close code with its meaning, e.g. ``1009 (message too big)``.

    Codes 3000 to 3999 are registered for libraries and frameworks, 4000 to
    4999 are application-defined, and other codes without a meaning are
    unassigned.
    """
    if code is None:
        return "no close code (1006, abnormal closure)"
    meaning = CLOSE_CODE_MEANINGS.get(code)
    if meaning is None and 3000 <= code <= 3999:
        meaning = "registered for libraries and frameworks"
    elif meaning is None and 4000 <= code <= 4999:
        meaning = "application-defined"
    elif meaning is None:
        meaning = "unassigned"
    text = f"{code} ({meaning})"
    return f"{text}: {reason}" if reason else text


def _closing(connection: ServerConnection) -> str:
    """Describe who closed ``connection`` and with which close code."""
    protocol = connection.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if received is not None and (sent is None or protocol.close_rcvd_then_sent):
        return "client closed with " + describe_close(received.code, received.reason)
    if sent is not None:
        return "server closed with " + describe_close(sent.code, sent.reason)
    return "connection lost, " + describe_close(None)


class Server:
    """An rtkit server: the browser client, ``/health`` and WebSocket on one port.

    Args:
        host: the address to bind; ``127.0.0.1`` keeps the server private to this
            machine, ``0.0.0.0`` (IPv4) or ``::`` (IPv6) exposes it to the
            network and logs a warning at start. An empty string is rejected,
            because asyncio would bind every interface on two sockets.
        port: the port to bind; ``None`` means :func:`default_port`, ``0`` picks
            a free port (read it back from :attr:`port`).
        handler: the WebSocket connection handler; ``None`` means
            :class:`~rtkit.push.PushHandler`: the classic echo for plain text,
            plus event push to clients that subscribe.
        allowed_origins: extra ``Origin`` values accepted on WebSocket upgrades,
            such as ``"https://hub.example.org"`` for a page served through a
            proxy under another host, or ``"null"`` for pages opened from files.
        max_size: the largest incoming message in bytes; a larger one closes the
            connection with 1009. ``None`` disables the limit.
        ping_interval: seconds between keepalive pings; ``None`` disables them.
        ping_timeout: seconds to wait for a pong before closing with 1011.
        close_timeout: seconds to wait for a client's close frame at shutdown,
            above 0.
        static_dir: the folder served under ``/static/``.
        history_size: how many recent events the hub keeps for pollers and
            resuming clients.
        max_channels: how many channels may exist at once.
        max_buffer: the maximum bytes waiting in one client's write buffer.
            What happens to a client further behind is set by ``slow_policy``,
            so a client that stopped reading cannot grow the server's memory
            without bound.
        max_connections: WebSocket connections open at once; a further
            upgrade gets HTTP 503 with ``Retry-After: 5``. ``None`` disables
            the limit.
        max_rate: messages per second one connection may send, with bursts
            of up to one second's worth; a faster client is closed with 1008.
            ``None`` disables the limit. Applies to the default handler only.
        max_wait: the maximum long-poll ``wait`` in seconds; a request for
            more gets HTTP 400 naming this cap.
        slow_policy: what happens to a client over ``max_buffer``: ``"drop"``
            aborts its connection (it reconnects and resumes from the
            history), ``"discard"`` keeps it and skips messages for it until
            it catches up (it sees a gap in ``seq``). Default handler only.
        stall_timeout: seconds a client's write buffer may send nothing while
            data waits before the connection is aborted, under either
            ``slow_policy``. It catches a client that stopped reading on a
            quiet stream, whose keepalive ping waits behind the unsent data.
            ``None`` means ``ping_interval + ping_timeout`` (40 s by
            default). Default handler only.
        check_origin: whether to reject upgrades from pages of other origins,
            and HTTP requests whose ``Host`` is a DNS name that
            ``allowed_origins`` does not list (DNS rebinding; see
            :mod:`rtkit.origins`). ``False`` lets any web page the
            browser shows connect, which the cross-site hijacking lesson
            demonstrates; it logs a warning at start.
        auth: a token that WebSocket clients and ``/poll`` must present;
            ``None`` leaves the server open.
        ssl: serve ``https://`` and ``wss://`` with this context, for example
            :meth:`rtkit.tls.LocalCA.server_context`; ``None`` for plain
            ``http://`` and ``ws://``.
        access_log: log one INFO line per HTTP request, upgrades included,
            to the ``rtkit.access`` logger, with the full request target.

    Raises:
        ValueError: if an option is out of range, naming it and the fix.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        *,
        handler: Handler | None = None,
        allowed_origins: Iterable[str] = (),
        max_size: int | None = 2**20,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float = 5,
        static_dir: Path | str = routes.STATIC_DIR,
        history_size: int = DEFAULT_HISTORY_SIZE,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_channels: int = DEFAULT_MAX_CHANNELS,
        max_connections: int | None = DEFAULT_MAX_CONNECTIONS,
        max_rate: float | None = DEFAULT_MAX_RATE,
        max_wait: float = routes.MAX_WAIT,
        slow_policy: Literal["drop", "discard"] = "drop",
        stall_timeout: float | None = None,
        check_origin: bool = True,
        auth: TokenAuth | None = None,
        ssl: SSLContext | None = None,
        access_log: bool = False,
    ) -> None:
        self.host = _check_host(host)
        self.requested_port = default_port() if port is None else _check_port(port)
        self.max_connections = _check_max_connections(max_connections)
        self.max_wait = _check_max_wait(max_wait)
        self.check_origin = _check_flag("check_origin", check_origin)
        self.access_log = _check_flag("access_log", access_log)
        if auth is not None and not isinstance(auth, TokenAuth):
            raise ValueError(
                f"invalid auth: {auth!r}; pass rtkit.auth.TokenAuth(...) or None"
            )
        self.auth = auth
        if ssl is not None and not isinstance(ssl, SSLContext):
            raise ValueError(
                f"invalid ssl: {ssl!r}; pass an ssl.SSLContext, such as "
                "rtkit.tls.LocalCA(directory).server_context(), or None"
            )
        self.ssl = ssl
        self.hub = Hub(history_size, max_channels)
        """The event stream that polls and WebSocket subscribers read."""
        valid_buffer = isinstance(max_buffer, int) and not isinstance(max_buffer, bool)
        if not (valid_buffer and max_buffer >= 0):
            raise ValueError(
                f"invalid max_buffer: {max_buffer!r}; pass the bytes a client may "
                f"have waiting to be sent, an integer >= 0, e.g. {DEFAULT_MAX_BUFFER}"
            )
        # PushHandler raises ValueError for an invalid max_rate, slow_policy
        # or stall_timeout.
        self.push = PushHandler(
            self.hub,
            max_buffer=max_buffer,
            max_rate=max_rate,
            slow_policy=slow_policy,
            stall_timeout=stall_timeout,
        )
        self.handler: Handler = handler or self.push
        self.source: EventSource | None = None
        """The built-in event source, when :meth:`start_source` started one."""
        self.allowed_origins = frozenset(normalize_origin(o) for o in allowed_origins)
        valid_size = isinstance(max_size, int) and not isinstance(max_size, bool)
        if max_size is not None and not (valid_size and max_size >= 1):
            raise ValueError(
                f"invalid max_size: {max_size!r}; pass the largest message in "
                "bytes, at least 1 (default 1048576), or None for no limit"
            )
        self.max_size = max_size
        self.ping_interval = _check_optional_seconds(
            "ping_interval", ping_interval, "None to turn keepalive off"
        )
        self.ping_timeout = _check_optional_seconds(
            "ping_timeout", ping_timeout, "None to wait for pongs forever"
        )
        self.close_timeout = _check_close_timeout(close_timeout)
        self.static_dir = Path(static_dir)
        self.handshakes: deque[Handshake] = deque(maxlen=50)
        """The most recent WebSocket handshakes, accepted or rejected.

        They keep whole requests, so a ``?token=`` or session cookie sent with
        an upgrade is in memory here, as in the access log."""
        self.request_counts: Counter[str] = Counter()
        """Requests received since creation, by :func:`~rtkit.routes.route_name`."""
        self.started_at: float | None = None
        self._websocket_server: WebSocketServer | None = None
        self._bound_port: int | None = None
        self._tcp_connections: set[ServerConnection] = set()
        """Every TCP connection open on the port: upgraded, upgrading or HTTP."""
        self._upgraded: set[ServerConnection] = set()
        """Connections whose upgrade was accepted, counted for max_connections."""
        self.rejected_full = 0
        """Upgrades rejected with 503 because ``max_connections`` were open."""
        self._full_logged_at = -math.inf
        self.rejected_auth = 0
        """Upgrades, ``/login`` requests and first messages rejected for the token."""
        self._auth_repeats = _RepeatFilter()
        self._lifecycle_lock = _LoopLock()
        """Serializes start, stop, kill and restart of this server."""

    # Lifecycle

    async def start(self, *, keep_history: bool = False) -> Self:
        """Start listening; do nothing if this server is already running.

        An rtkit server of this process that listens on the same port is
        stopped first, so running a start cell twice replaces the server.

        Args:
            keep_history: keep the hub's epoch and history, as a server that
                stores its events in a durable log would, so clients resume
                after the last ``seq`` they saw without losing events. By
                default a start begins a new epoch with an empty history.

        Start, stop, kill and restart of one server run one at a time, so
        two quick clicks on a Start button start it once.

        Raises:
            PortInUseError: if another program (or another kernel) uses the port.
        """
        async with self._lifecycle_lock.get():
            await self._start(keep_history)
        return self

    async def _start(self, keep_history: bool) -> None:
        if self._websocket_server is not None:
            return
        install_log_buffer()
        while True:
            previous = _registry.get(self.requested_port)
            if previous is not None and previous is not self:
                # This runs outside _bind_lock, because previous.stop() waits
                # for the lifecycle lock of previous, whose holder may be
                # waiting for _bind_lock in a restart.
                logger.info("replacing the rtkit server on %s", previous.url)
                await previous.stop()
            async with _bind_lock.get():
                # Another server may have taken the port while this one
                # waited; stop that one too.
                if _registry.get(self.requested_port) not in (None, self):
                    continue
                await self._bind()
                break
        if keep_history:
            # stop() and kill() closed the hub to release waiting long polls;
            # reopen it so that new long polls wait again.
            self.hub.closed = False
        else:
            self.hub.reset()
        self.started_at = time.time()
        logger.info(
            "rtkit server listening on %s (WebSocket %s)", self.url, self.ws_url
        )
        if not _is_loopback(self.host):
            logger.warning(
                "rtkit server on %s listens on %s, so other machines on the "
                "network can connect to it; pass host='127.0.0.1' (--host "
                "127.0.0.1) to keep it on this machine",
                self.url,
                self.host,
            )
        if not self.check_origin:
            logger.warning(
                "Origin check disabled on %s: any web page open in a browser on "
                "this machine can connect to it",
                self.url,
            )
        if self.auth is not None:
            logger.info("clients must send a token (via %s)", self.auth.via)

    async def _bind(self) -> None:
        """Listen on the port, and enter the server in the registry."""
        try:
            websocket_server = await serve(
                self._handle,
                self.host,
                self.requested_port,
                process_request=self._process_request,
                process_response=self._process_response,
                max_size=self.max_size,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=self.close_timeout,
                create_connection=self._create_connection,
                # The response to a long poll is built in process_request,
                # which runs under the opening handshake's timeout.
                open_timeout=self.max_wait + 10,
                ssl=self.ssl,
                logger=logging.getLogger("rtkit.websockets"),
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise self._port_in_use() from exc
            raise
        self._websocket_server = websocket_server
        # NOTE: a name that resolves to several addresses, such as localhost
        # where /etc/hosts also lists ::1, gets one socket per address. With
        # port 0 each socket gets its own port, and port and url name the first.
        self._bound_port = websocket_server.sockets[0].getsockname()[1]
        _registry[self._bound_port] = self

    def _port_in_use(self) -> PortInUseError:
        port = self.requested_port
        return PortInUseError(
            errno.EADDRINUSE,
            f"port {port} on {self.host} is already in use by another program, "
            f"perhaps another notebook's kernel or `python -m rtkit serve`; stop "
            f"it (`ss -ltnp 'sport = :{port}'` shows which process uses it) or "
            f"start rtkit on another port: rtkit.start(port={port + 1}) in a "
            f"notebook, --port {port + 1} on the command line",
        )

    async def stop(self) -> None:
        """Close every connection with 1001 and free the port.

        Stopping a server that is not running does nothing.
        """
        async with self._lifecycle_lock.get():
            await self._stop()

    async def _stop(self) -> None:
        websocket_server = self._detach()
        if websocket_server is None:
            return
        url = self.url
        logger.info("stopping rtkit server on %s", url)
        await self.stop_source()
        self.hub.close()
        websocket_server.close()
        try:
            # websockets waits for each client's write buffer to drain before
            # its close timeout starts, so a client that stopped reading
            # would hold the shutdown forever.
            async with asyncio.timeout(self.close_timeout + 1):
                await websocket_server.wait_closed()
        except TimeoutError:
            stuck = list(websocket_server.connections)
            logger.warning(
                "aborting %d connections that did not close within %g s",
                len(stuck),
                self.close_timeout + 1,
            )
            for connection in stuck:
                connection.transport.abort()
            await websocket_server.wait_closed()
        logger.info("rtkit server on %s stopped", url)

    async def kill(self) -> None:
        """Simulate a crash: drop every connection without a close frame.

        Every TCP connection is aborted, WebSocket and plain HTTP alike, so
        clients see close code 1006 and pending long polls fail. The port is
        freed, and the built-in event source stops. The hub's epoch and
        history stay in memory, so ``start(keep_history=True)`` afterwards
        behaves like a server that recovered its events from a durable log,
        and a plain ``start()`` like one that lost them. A later start listens
        on the same port, even when the server was created with port 0, so
        clients reconnect to the same URL.

        Killing a server that is not running does nothing.
        """
        async with self._lifecycle_lock.get():
            await self._kill()

    async def _kill(self) -> None:
        port = self._bound_port
        websocket_server = self._detach()
        if websocket_server is None:
            return
        if port is not None and self.requested_port == 0:
            self.requested_port = port
        url = self.url
        logger.warning("killing rtkit server on %s (simulated crash)", url)
        await self.stop_source()
        self.hub.close()
        websocket_server.close(close_connections=False)
        aborted = 0
        for connection in list(self._tcp_connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()
                aborted += 1
        await websocket_server.wait_closed()
        logger.warning(
            "rtkit server on %s killed: %d connections aborted", url, aborted
        )

    def _detach(self) -> WebSocketServer | None:
        """Forget the running websockets server and return it, for stop or kill.

        Returns ``None`` when the server is not running, or when its event
        loop was closed and it can no longer be stopped.
        """
        websocket_server = self._websocket_server
        if websocket_server is None:
            return None
        self._websocket_server = None
        if _registry.get(self._bound_port or -1) is self:
            del _registry[self._bound_port]
        if websocket_server.get_loop().is_closed():
            # NOTE: a server whose event loop was closed without stopping it
            # cannot close its sockets any more; its port stays taken until
            # the process exits.
            logger.warning(
                "rtkit server on %s belongs to a closed event loop", self.url
            )
            return None
        return websocket_server

    async def restart(self, *, keep_history: bool = False) -> Self:
        """Stop the server, then start it again on the same port.

        The built-in event source, if one was running, runs again afterwards
        at the same rate, publishing into the new epoch (or, with
        ``keep_history``, continuing the old one).

        Args:
            keep_history: passed to :meth:`start`.
        """
        async with self._lifecycle_lock.get():
            port = self._bound_port
            source = self.source
            await self._stop()
            if port is not None and self.requested_port == 0:
                self.requested_port = port
            await self._start(keep_history)
            if source is not None:
                self.start_source(source.rate, poisson=source.poisson)
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # Events

    @property
    def epoch(self) -> str:
        """A random token, new on every start, so clients notice a restart."""
        return self.hub.epoch

    def publish(self, data: object, channel: str = DEFAULT_CHANNEL) -> Event:
        """Publish an event to pollers and WebSocket subscribers."""
        return self.hub.publish(data, channel)

    def start_source(
        self, rate: float, *, poisson: bool = False, seed: int | None = None
    ) -> EventSource:
        """Publish events at ``rate`` per second until :meth:`stop_source`.

        A running source is replaced. See :class:`~rtkit.source.EventSource`.
        """
        if self.source is not None:
            self.source.cancel()
        self.source = EventSource(self.hub, rate, poisson=poisson, seed=seed)
        self.source.start()
        return self.source

    async def stop_source(self) -> None:
        """Stop the built-in event source; do nothing if none runs."""
        source, self.source = self.source, None
        if source is not None:
            await source.stop()

    # State

    @property
    def is_serving(self) -> bool:
        """Whether the server is listening."""
        return self._websocket_server is not None

    @property
    def port(self) -> int:
        """The port the server listens on, or the requested port before start."""
        return self._bound_port if self._bound_port is not None else self.requested_port

    @property
    def url(self) -> str:
        """The URL of the browser client served by this server."""
        host = self.host
        if host == "0.0.0.0":
            host = "127.0.0.1"
        elif host == "::":
            # asyncio sets IPV6_V6ONLY, so "::" accepts no IPv4 connections.
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "http" if self.ssl is None else "https"
        return f"{scheme}://{host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL of this server."""
        return "ws" + self.url.removeprefix("http") + "ws"

    @property
    def connections(self) -> list[ServerConnection]:
        """The open WebSocket connections."""
        if self._websocket_server is None:
            return []
        return list(self._websocket_server.connections)

    def __repr__(self) -> str:
        state = "serving" if self.is_serving else "stopped"
        clients = len(self.connections)
        return f"<rtkit.Server {self.url} {state}, {clients} clients>"

    # Connection handling

    def _create_connection(self, *args: Any, **kwargs: Any) -> ServerConnection:
        """Create a connection as websockets would, and track it until it closes.

        websockets only tracks connections that completed the opening
        handshake; :meth:`kill` must also abort HTTP requests in progress,
        such as long polls.
        """
        connection = ServerConnection(*args, **kwargs)
        self._tcp_connections.add(connection)

        def forget(_: object) -> None:
            self._tcp_connections.discard(connection)
            self._upgraded.discard(connection)

        connection.connection_lost_waiter.add_done_callback(forget)
        return connection

    async def _handle(self, connection: ServerConnection) -> None:
        remote = remote_address(connection)
        logger.info("client %s connected from %s", connection.id.hex[:8], remote)
        try:
            if await self._authenticated(connection):
                await self.handler(connection)
        except ConnectionClosed:
            pass
        except Exception:
            # Logged here instead of by websockets so the traceback goes to
            # rtkit's log buffer, not into whichever notebook cell ran last.
            logger.exception("handler failed for client %s", connection.id.hex[:8])
            await connection.close(1011, "handler failed; see the server log")
        logger.info(
            "client %s disconnected: %s", connection.id.hex[:8], _closing(connection)
        )

    async def _authenticated(self, connection: ServerConnection) -> bool:
        """Check the first-message token when ``auth.via`` is ``"message"``."""
        auth = self.auth
        if auth is None or auth.via != "message":
            return True
        if await auth.authenticate(connection):
            return True
        self._log_auth_rejection(
            f"client {connection.id.hex[:8]} from {remote_address(connection)} "
            "failed to authenticate",
            _closing(connection),
        )
        return False

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        try:
            return await self._route(connection, request)
        except Exception:
            # websockets would respond "Failed to open a WebSocket connection",
            # which misleads someone who asked for a page. The query string
            # stays out of the log, because it may carry ?token=.
            logger.exception(
                "request %s from %s failed",
                short_repr(routes.request_path(request), 80),
                remote_address(connection),
            )
            return routes.text_response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "internal server error; the rtkit server log has the details",
            )

    async def _route(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = routes.request_path(request)
        upgrade = routes.is_upgrade(request)
        self.request_counts["upgrade" if upgrade else routes.route_name(path)] += 1
        head = request.method == "HEAD"
        repeated = routes.repeated_header(request, self._single_headers(path))
        if repeated is not None:
            return self._repeated_header_response(path, repeated, head)
        if upgrade:
            return self._check_upgrade(connection, request, path)
        host_problem = self._host_problem(request)
        if host_problem is not None:
            logger.warning(
                "rejected request %s from %s: %s",
                short_repr(path, 80),
                remote_address(connection),
                host_problem,
            )
            return routes.text_response(
                HTTPStatus.FORBIDDEN, f"forbidden: {host_problem}", head=head
            )
        if request.method not in ("GET", "HEAD"):
            response = routes.text_response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"method not allowed: {request.method}; rtkit serves GET and HEAD",
            )
            response.headers["Allow"] = "GET, HEAD"
            return response
        if path == "/health":
            return routes.json_response(HTTPStatus.OK, self.health(), head=head)
        if path == "/poll":
            if self.auth is not None:
                reason = self.auth.check_http(request, port=self.port)
                if reason is not None:
                    return unauthorized(reason, as_json=True)
            return await self._poll(connection, request, head)
        if path == "/login":
            return self._login(connection, request)
        if path == "/ws":
            return self._explain_ws(request, head)
        if path == "/":
            path = "/static/client.html"
        if path.startswith("/static/"):
            file = routes.resolve_static(path.removeprefix("/static/"), self.static_dir)
            if file is not None:
                return routes.static_response(file, head=head)
        return routes.text_response(
            HTTPStatus.NOT_FOUND,
            f"not found: {request.path}\nrtkit serves /, /static/<file>, /health, "
            "/poll, /login, and WebSocket upgrades on /ws and /.",
            head=head,
        )

    @staticmethod
    def _single_headers(path: str) -> tuple[str, ...]:
        """Return the headers that a request to ``path`` must not repeat.

        A repeated ``Authorization`` leaves open which token counts, and
        websockets rejects an upgrade with more than one ``Upgrade`` value,
        so both get a 400 that names the header.
        """
        if path in ("/poll", "/login"):
            return ("Upgrade", "Authorization")
        return ("Upgrade",)

    @staticmethod
    def _repeated_header_response(path: str, name: str, head: bool) -> Response:
        message = f"bad request: the request repeats its {name} header; send it once"
        if path == "/poll":
            body = {"error": "bad_request", "message": message}
            return routes.json_response(HTTPStatus.BAD_REQUEST, body, head=head)
        return routes.text_response(HTTPStatus.BAD_REQUEST, message, head=head)

    async def _poll(
        self, connection: ServerConnection, request: Request, head: bool
    ) -> Response:
        try:
            query = routes.parse_poll_query(
                urlsplit(request.path).query, max_wait=self.max_wait
            )
        except routes.InvalidParameter as exc:
            body = {"error": "invalid_parameter", "parameter": exc.parameter}
            body["message"] = str(exc)
            return routes.json_response(HTTPStatus.BAD_REQUEST, body, head=head)
        since = query.since
        if query.epoch is not None and query.epoch != self.hub.epoch:
            since = 0
        if query.wait is None:
            result = self.hub.events_after(since, query.channel)
        else:
            result = await self._wait_unless_gone(connection, query, since)
        body = result.to_json(self.hub.epoch)
        return routes.json_response(HTTPStatus.OK, body, head=head)

    async def _wait_unless_gone(
        self, connection: ServerConnection, query: routes.PollQuery, since: int
    ) -> EventsAfter:
        """Wait for events, but stop waiting when the client disconnects.

        Without this, a long poll whose client went away would keep its task
        alive until the next event or the end of the wait.
        """
        waiting = asyncio.ensure_future(
            self.hub.wait_for_events(since, query.wait or 0, query.channel)
        )
        await asyncio.wait(
            [waiting, connection.connection_lost_waiter],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not waiting.done():
            waiting.cancel()
            return self.hub.events_after(since, query.channel)
        return waiting.result()

    def _check_upgrade(
        self, connection: ServerConnection, request: Request, path: str
    ) -> Response | None:
        remote = remote_address(connection)
        if path not in routes.WEBSOCKET_PATHS:
            logger.warning(
                "rejected WebSocket upgrade from %s: no route %s", remote, path
            )
            return routes.text_response(
                HTTPStatus.NOT_FOUND,
                f"not found: {request.path}; open WebSockets on /ws or /",
            )
        reason = self._origin_problem(request)
        if reason is not None:
            logger.warning("rejected WebSocket upgrade from %s: %s", remote, reason)
            return routes.text_response(HTTPStatus.FORBIDDEN, f"forbidden: {reason}")
        response = self._refusal(request)
        if response is not None:
            if response.status_code == HTTPStatus.SERVICE_UNAVAILABLE:
                self._log_full(remote)
            else:
                self._log_auth_rejection(
                    f"rejected WebSocket upgrade from {remote}",
                    response.body.decode().strip(),
                )
            return response
        self._upgraded.add(connection)
        return None

    def _host_problem(self, request: Request) -> str | None:
        """Return why a plain HTTP request's Host is rejected, or ``None``."""
        if not self.check_origin:
            return None
        hosts = request.headers.get_all("Host")
        if len(hosts) > 1:
            return "the request repeats its Host header"
        return origins.check_host(hosts[0] if hosts else None, self.allowed_origins)

    def _origin_problem(self, request: Request) -> str | None:
        """Return why the upgrade's Origin is rejected, or ``None``."""
        if not self.check_origin:
            return None
        origin_values = request.headers.get_all("Origin")
        hosts = request.headers.get_all("Host")
        if len(origin_values) > 1 or len(hosts) > 1:
            return "the request repeats its Origin or Host header"
        return origins.check_origin(
            origin_values[0] if origin_values else None,
            hosts[0] if hosts else None,
            self.allowed_origins,
            secure=self.ssl is not None,
        )

    def _refusal(self, request: Request) -> Response | None:
        """Return the 503 or 401 an upgrade of ``request`` would get, or ``None``.

        Shared by real upgrades and by plain ``GET /ws``, which a browser page
        fetches to learn why its WebSocket failed: the browser itself reports
        only close code 1006.
        """
        if self.max_connections is not None:
            open_count = len(self._upgraded)
            if open_count >= self.max_connections:
                response = routes.text_response(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"server full: {open_count} of {self.max_connections} "
                    "connections open (max_connections); try again later",
                )
                response.headers["Retry-After"] = str(RETRY_AFTER)
                return response
        if self.auth is not None:
            reason = self.auth.check_upgrade(request, port=self.port)
            if reason is not None:
                return unauthorized(reason)
        return None

    def _log_full(self, remote: str) -> None:
        """Count a rejection for a full server and log it, at most once a second.

        The limit matters in a reconnect storm, where every client that finds
        the server full is rejected and retries.
        """
        self.rejected_full += 1
        now = time.monotonic()
        if now - self._full_logged_at < 1:
            return
        self._full_logged_at = now
        logger.warning(
            "rejected WebSocket upgrade from %s: server full, %d connections "
            "open (max_connections); %d upgrades rejected as full so far",
            remote,
            len(self._upgraded),
            self.rejected_full,
        )

    def _log_auth_rejection(self, event: str, reason: str) -> None:
        """Count a request rejected for its token, and log it unless repeated.

        ``event`` names the request and its client, ``reason`` the problem.
        Each reason is logged at most once a second, so a client retrying
        with a wrong token cannot fill the log buffer.
        """
        self.rejected_auth += 1
        held_back = self._auth_repeats.admit(reason)
        if held_back is None:
            return
        if held_back:
            logger.warning(
                "%s: %s (%d more rejected for this reason since it was last logged)",
                event,
                reason,
                held_back,
            )
        else:
            logger.warning("%s: %s", event, reason)

    def _explain_ws(self, request: Request, head: bool) -> Response:
        """Respond to a plain ``GET /ws`` with the status an upgrade would get now.

        With ``via="message"`` that is 426 even without a token, because the
        token only comes in the first message after the upgrade.
        """
        response = self._refusal(request)
        if response is None:
            text = (
                f"upgrade required: {request.path} is a WebSocket endpoint; open "
                f"a WebSocket here, e.g. new WebSocket('{self.ws_url}') in a "
                "browser"
            )
            if self.auth is not None and self.auth.via == "message":
                text += (
                    ', then send {"type": "auth", "token": TOKEN} as the first message'
                )
            response = routes.text_response(HTTPStatus.UPGRADE_REQUIRED, text)
            response.headers["Upgrade"] = "websocket"
        if head:
            response.body = b""
        return response

    def _login(self, connection: ServerConnection, request: Request) -> Response:
        if self.auth is None:
            return routes.text_response(
                HTTPStatus.NOT_FOUND,
                "not found: /login; this server requires no token, so there is "
                "nothing to log in to",
            )
        response = self.auth.login(request, port=self.port, secure=self.ssl is not None)
        if response.status_code != HTTPStatus.NO_CONTENT:
            self._log_auth_rejection(
                f"rejected GET /login from {remote_address(connection)}",
                response.body.decode().strip(),
            )
        return response

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        # websockets calls this for every parsed request, also when
        # process_request returned the response, so each request is logged
        # once. NOTE: a request that fails to parse gets websockets' own 400
        # without reaching this hook, so it has no access log line.
        if self.access_log:
            access_logger.info(
                '%s "%s %s HTTP/1.1" %d',
                remote_address(connection),
                request.method,
                request.path,
                response.status_code,
            )
        if routes.is_upgrade(request):
            self.handshakes.append(
                Handshake(remote_address(connection), request, response)
            )

    def health(self) -> dict[str, object]:
        """Return the state reported by ``GET /health``."""
        uptime = time.time() - self.started_at if self.started_at else 0.0
        return {
            "status": "ok",
            "epoch": self.epoch,
            "seq": self.hub.latest,
            "clients": len(self.connections),
            "uptime": round(uptime, 3),
            "auth": self.auth.via if self.auth is not None else None,
        }


async def start(
    host: str = DEFAULT_HOST, port: int | None = None, **options: object
) -> Server:
    """Create and start a :class:`Server`; see it for ``options``.

    Raises:
        PortInUseError: if another program uses the port.
    """
    return await Server(host, port, **options).start()  # type: ignore[arg-type]


async def stop(port: int | None = None) -> None:
    """Stop the rtkit server on ``port``, or every rtkit server when ``None``.

    Stopping a port where no rtkit server runs does nothing.
    """
    servers = list(_registry.values()) if port is None else [_registry.get(port)]
    for server in servers:
        if server is not None:
            await server.stop()


def running_servers() -> list[Server]:
    """Return the rtkit servers of this process that are listening."""
    return list(_registry.values())
