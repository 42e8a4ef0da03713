"""The default WebSocket handler: the classic echo, event push, channels and chat.

Every client is greeted with :data:`~rtkit.echo.WELCOME`. Plain text messages
keep the echo of the first example (``Server received: <text>``). A text
message that is a JSON object with a ``type`` is a command:

``{"type": "subscribe", "channel": C, "since": SEQ, "epoch": EPOCH}``
    Replay the events of channel ``C`` (default ``events``) after ``SEQ`` still
    in the history, then push each new one as ``{"type": "event", "seq",
    "epoch", "channel", "data", "ts"}``. ``epoch`` is optional: when it is not
    the server's current epoch, ``SEQ`` belongs to an earlier run and the
    replay starts from the first event. The server first confirms with
    ``{"type": "subscribed", "channel", "epoch", "seq", "missed"}``, where
    ``missed`` counts events after ``SEQ`` that already left the history.
    A ``SEQ`` above the channel's latest ``seq`` cannot be trusted (for
    example, the channel was evicted and restarted at 1), so the replay
    starts from the first event and the confirmation adds ``"reset": true``:
    the client starts over from ``seq`` 0, as for a new epoch.
``{"type": "unsubscribe", "channel": C}``
    Stop pushing the events of ``C``; confirmed with ``unsubscribed``.
``{"type": "join", "channel": C, "name": NAME, "since": SEQ}``
    Subscribe to ``C`` and appear in its presence list under ``NAME``.
    Members of ``C`` receive ``{"type": "presence", "channel", "members":
    [{"id", "name"}]}`` whenever someone joins, leaves, renames or disconnects.
``{"type": "leave", "channel": C}``
    Leave ``C``: unsubscribe and disappear from its presence list.
``{"type": "message", "channel": C, "text": TEXT}``
    Publish ``{"from": {"id", "name"}, "text"}`` to ``C``, which every
    subscriber receives as an ``event``. Only members of ``C`` may send.
``{"type": "ping", "id": ID}``
    Reply ``{"type": "pong", "id": ID, "ts": SERVER_TIME}``: an
    application-level heartbeat for clients that cannot send WebSocket pings,
    such as browsers. ``ID`` is optional (``null`` in the reply when left
    out); when given, it is an integer or a string of at most 64 characters.

Text that starts with ``{`` but is not valid JSON, is not an object, has no
``type`` or an unknown one, or misses a field, gets an ``error`` message naming
what was wrong, and the connection stays open. More commands can be
added to :attr:`PushHandler.commands`.

Four limits protect the server from one client. One connection subscribes to
or joins at most 64 channels, and only channels without subscribers, members
or waiting long polls are evicted to make room for new ones (see
:class:`~rtkit.hub.Hub`). A client that sends more than ``max_rate`` messages
per second (pings and plain text included) is closed with code 1008. A client
that reads too slowly, so that more than ``max_buffer`` bytes wait in its
write buffer, is disconnected or skipped according to ``slow_policy``. A
client whose write buffer sends nothing for ``stall_timeout`` seconds is
disconnected, even when no more messages are sent to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .echo import WELCOME, binary_unsupported, echo_reply, encode, error_message
from .hub import DEFAULT_CHANNEL, Event, Hub, check_channel, short_repr
from .limits import RateLimiter, check_rate

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MAX_RATE",
    "DEFAULT_STALL_TIMEOUT",
    "Client",
    "CommandError",
    "PushHandler",
    "check_name",
    "check_slow_policy",
    "check_stall_timeout",
    "rate_limit_reason",
    "remote_address",
]

logger = logging.getLogger("rtkit.push")

DEFAULT_MAX_BUFFER = 2**20
"""Bytes a client may have waiting in its write buffer before ``slow_policy``
applies to it."""
DEFAULT_MAX_RATE = 100.0
"""Messages per second one connection may send before it is closed."""
DEFAULT_STALL_TIMEOUT = 40.0
"""Seconds a write buffer may send nothing before its client is dropped, for a
connection without keepalive: websockets' default ``ping_interval`` plus
``ping_timeout`` (20 s each)."""
CHECKS_PER_TIMEOUT = 4
"""The watchdog checks the write buffers this many times per ``stall_timeout``
or ``max_behind``, whichever is shorter."""
MIN_CHECK_INTERVAL = 0.02
"""Minimum seconds between two of the watchdog's checks."""
MAX_CHECK_INTERVAL = 1.0
"""Maximum seconds between two of the watchdog's checks."""
SLOW_POLICIES = ("drop", "discard")
"""The values of ``slow_policy``."""
MAX_NAME_LENGTH = 32
MAX_SUBSCRIPTIONS = 64
"""Channels one connection may subscribe to or join at once."""
MAX_TEXT_LENGTH = 4096
MAX_PING_ID_LENGTH = 64
MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer that a JavaScript number represents exactly."""

Command = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]
"""A command: an async function of the connection and the decoded message."""


class CommandError(ValueError):
    """Raised by a command for invalid input; sent back as an ``error``.

    Args:
        code: a short machine-readable name, such as ``"missing_field"``.
        message: a sentence naming the value and the fix.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Client:
    """The server's state for one WebSocket connection."""

    id: str
    """Short identifier: the first 8 hex digits of the connection's UUID."""
    remote: str
    """The client's address, as ``host:port``."""
    connected_at: float = field(default_factory=time.time)
    name: str = ""
    """Display name chosen with ``join``; empty until then."""
    channels: set[str] = field(default_factory=set)
    """Channels joined, with presence."""
    subscriptions: set[str] = field(default_factory=set)
    """Channels whose events are pushed to this client."""
    messages_in: int = 0
    messages_out: int = 0
    discarded: int = 0
    """Messages skipped because the client was behind, with ``slow_policy``
    ``"discard"``."""


def check_slow_policy(policy: object) -> Literal["drop", "discard"]:
    """Return ``policy`` if it is ``"drop"`` or ``"discard"``.

    Raises:
        ValueError: naming the invalid value and the valid ones.
    """
    if policy not in SLOW_POLICIES:
        raise ValueError(
            f"invalid slow_policy: {short_repr(policy)}; use 'drop' to disconnect "
            "a client that falls behind or 'discard' to skip messages for it"
        )
    return policy  # type: ignore[return-value]


def check_stall_timeout(stall_timeout: object) -> float | None:
    """Return ``stall_timeout`` as a float, or ``None``.

    Raises:
        ValueError: if it is neither ``None`` nor a finite number above 0.
    """
    if stall_timeout is None:
        return None
    valid = isinstance(stall_timeout, int | float) and not isinstance(
        stall_timeout, bool
    )
    if not (valid and math.isfinite(stall_timeout) and stall_timeout > 0):
        raise ValueError(
            f"invalid stall_timeout: {short_repr(stall_timeout)}; pass the seconds "
            "a client's write buffer may send nothing before the client is "
            "dropped, a number above 0, or None for ping_interval + ping_timeout"
        )
    return float(stall_timeout)


def rate_limit_reason(max_rate: float) -> str:
    """Return the close reason sent to a client over ``max_rate`` messages/s."""
    return f"rate limit: over {max_rate:g} messages/s (max_rate); slow down"


def check_name(name: object) -> str:
    """Return ``name`` stripped, if it is a valid display name.

    Raises:
        CommandError: if ``name`` is not a string of 1 to 32 printable
            characters.
    """
    if isinstance(name, str):
        name = name.strip()
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_NAME_LENGTH
        or not name.isprintable()
    ):
        raise CommandError(
            "invalid_name",
            f"invalid name: {short_repr(name)}; use 1 to {MAX_NAME_LENGTH} printable "
            "characters, e.g. 'ada'",
        )
    return name


def parse_command(text: str) -> dict[str, Any] | None:
    """Return ``text`` as a command, or ``None`` for plain text to echo.

    Text that starts with ``{`` is meant as a command, so it must be a JSON
    object with a ``type``.

    Raises:
        CommandError: if such text is not valid JSON, not an object, or has
            no ``type``.
    """
    if not text.lstrip().startswith("{"):
        return None
    try:
        message = json.loads(text)
    except RecursionError:
        raise CommandError(
            "invalid_json", "invalid JSON: nested too deeply; send a flat object"
        ) from None
    except ValueError as exc:
        raise CommandError(
            "invalid_json",
            f"invalid JSON: {exc}; send a JSON object such as "
            '{"type": "subscribe"}, or text not starting with { to echo it',
        ) from None
    if not isinstance(message, dict):
        raise CommandError(
            "invalid_json", f"invalid command: {text[:40]!r} is not a JSON object"
        )
    if "type" not in message:
        raise CommandError(
            "missing_field",
            "missing field 'type' in the command; send e.g. "
            '{"type": "join", "channel": "lobby", "name": "ada"}',
        )
    if not isinstance(message["type"], str):
        raise CommandError(
            "unknown_type",
            f"unknown message type: {short_repr(message['type'])}; the type "
            "must be a string such as 'subscribe'",
        )
    epoch = message.get("epoch")
    if epoch is not None and not isinstance(epoch, str):
        raise CommandError(
            "invalid_epoch",
            f"invalid epoch: {short_repr(epoch)}; send the epoch string the "
            "server sent you, or leave it out",
        )
    return message


def _since(command: dict[str, Any]) -> int:
    since = command.get("since", 0)
    valid = isinstance(since, int) and not isinstance(since, bool)
    if not valid or not 0 <= since < 2**63:
        raise CommandError(
            "invalid_since",
            f"invalid since: {short_repr(since)}; send the last seq you received, "
            "an integer >= 0 (0 for everything in the history)",
        )
    return since


def _channel(command: dict[str, Any], default: str | None = None) -> str:
    channel = command.get("channel", default)
    if channel is None:
        raise CommandError(
            "missing_field",
            f"missing field 'channel' in {command['type']!r}; "
            'send e.g. {"channel": "lobby"}',
        )
    try:
        return check_channel(channel)
    except ValueError as exc:
        raise CommandError("invalid_channel", str(exc)) from None


def _ping_id(command: dict[str, Any]) -> int | str | None:
    ping_id = command.get("id")
    if ping_id is None:
        return None
    if isinstance(ping_id, int) and not isinstance(ping_id, bool):
        if abs(ping_id) <= MAX_SAFE_INTEGER:
            return ping_id
    elif isinstance(ping_id, str) and len(ping_id) <= MAX_PING_ID_LENGTH:
        return ping_id
    raise CommandError(
        "invalid_id",
        f"invalid id: {short_repr(ping_id)}; send an integer up to "
        f"{MAX_SAFE_INTEGER} in magnitude or a string of at most "
        f"{MAX_PING_ID_LENGTH} characters, or leave it out",
    )


def check_text(text: object) -> str:
    """Return ``text`` if it is a chat message of 1 to 4096 characters.

    Raises:
        CommandError: naming the invalid value.
    """
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_TEXT_LENGTH:
        raise CommandError(
            "invalid_text",
            f"invalid text: {short_repr(text)}; send 1 to {MAX_TEXT_LENGTH} "
            "characters of text",
        )
    return text


class PushHandler:
    """Serve echo, event push, channels and chat from one :class:`Hub`.

    Args:
        hub: the event streams pushed to subscribers.
        max_buffer: bytes a client may have waiting in its write buffer before
            ``slow_policy`` applies to it.
        max_rate: messages per second one connection may send, averaged over
            one second; a connection over it is closed with code 1008.
            ``None`` turns the limit off.
        slow_policy: what happens to a client over ``max_buffer``:
            ``"drop"`` disconnects it (it can reconnect and resume from the
            history), ``"discard"`` keeps it but skips messages for it until it
            catches up (it sees a gap in ``seq``).
        max_behind: seconds a client may stay behind under ``"discard"``
            before it is disconnected after all. Behind means that its
            buffer went over ``max_buffer`` and has not drained to half of it
            since. It is checked when a message is skipped and by the
            watchdog, so it holds on a quiet stream too.
        stall_timeout: seconds a client's write buffer may hold data and send
            none of it before the client is disconnected, under either
            ``slow_policy``. websockets' keepalive cannot catch a client that
            stopped reading while data waits for it, because the ping waits
            behind the unsent data, and ``max_buffer`` cannot catch it once no
            more messages are sent to it. ``None`` means the connection's
            ``ping_interval + ping_timeout`` (40 s with websockets' defaults),
            or :data:`DEFAULT_STALL_TIMEOUT` if keepalive is off. Keep it
            well above a second, because TCP sends to a slow reader in
            bursts: pauses of up to about 0.4 s were seen on loopback with a
            4 KiB receive buffer (``tests/test_faults.py``).

    One watchdog task per handler checks the write buffers of all clients
    while any is connected. It checks four times per ``stall_timeout`` (or per
    ``max_behind`` under ``"discard"``, if that is shorter), but at least once
    a second. So a stalled client is dropped between ``stall_timeout`` and
    ``stall_timeout`` plus two check intervals after its buffer last sent
    something.

    Raises:
        ValueError: if ``max_rate`` is not a positive number or ``None``,
            ``slow_policy`` is neither ``"drop"`` nor ``"discard"``, or
            ``max_behind`` or ``stall_timeout`` is not a number above 0.
    """

    def __init__(
        self,
        hub: Hub,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        *,
        max_rate: float | None = DEFAULT_MAX_RATE,
        slow_policy: Literal["drop", "discard"] = "drop",
        max_behind: float = 30.0,
        stall_timeout: float | None = None,
    ) -> None:
        self.hub = hub
        self.max_buffer = max_buffer
        self.max_rate = check_rate(max_rate)
        """Messages per second one connection may send, read when it opens."""
        self.slow_policy = check_slow_policy(slow_policy)
        if not (isinstance(max_behind, int | float) and max_behind > 0):
            raise ValueError(
                f"invalid max_behind: {max_behind!r}; pass the seconds a client "
                "may stay behind under slow_policy 'discard', above 0 (default 30)"
            )
        self.max_behind = float(max_behind)
        self.stall_timeout = check_stall_timeout(stall_timeout)
        """Seconds a write buffer may send nothing, or ``None`` for the
        connection's ``ping_interval + ping_timeout``; see :meth:`stall_timeout_for`."""
        self.clients: dict[ServerConnection, Client] = {}
        """Every open connection and its state."""
        self.subscribers: dict[str, set[ServerConnection]] = {}
        """Connections subscribed to each channel."""
        self.member_counts: Counter[str] = Counter()
        """Connections that joined each channel; channels without members
        have no entry."""
        self.commands: dict[str, Command] = {
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "join": self.join,
            "leave": self.leave,
            "message": self.message,
            "ping": self.ping,
        }
        """Command handlers by message ``type``; add entries to extend the protocol."""
        self.totals: Counter[str] = Counter()
        """Messages since creation: received (``in``), sent (``out``) and
        skipped for clients that were behind (``discarded``)."""
        self.listeners: list[Callable[[str, Client], None]] = []
        """Called with (change, client) where change is "connect", "disconnect",
        "change" (name or channels) or "message" (a message in or out)."""
        self._behind: dict[ServerConnection, tuple[int, float]] = {}
        """Connections skipped under "discard", with their discarded count and
        the time.monotonic() at the start of the current episode."""
        self._stalls: dict[ServerConnection, _Stall] = {}
        """Connections whose write buffer was over the low-water mark at the
        watchdog's last check."""
        self._watchdog: asyncio.Task[None] | None = None
        self._unsubscribe_hub = hub.subscribe(self._push)
        self._remove_in_use_check = hub.add_in_use_check(self.is_channel_in_use)

    # Sending

    def send(
        self, connections: list[ServerConnection], message: dict[str, Any]
    ) -> None:
        """Write ``message`` to ``connections`` without waiting on any of them.

        ``broadcast()`` skips connections that are closing and never waits on
        a slow one, so one stalled client cannot delay the others. A client
        with more than ``max_buffer`` bytes still unsent is disconnected
        (``slow_policy="drop"``) or skipped (``"discard"``) first.
        """
        connections = [c for c in connections if not self._fell_behind(c)]
        if not connections:
            return
        watched = [
            (c, self._stalls[c], c.transport.get_write_buffer_size())
            for c in connections
            if c in self._stalls
        ]
        broadcast(connections, encode(message))
        for connection, stall, buffered in watched:
            # A watched buffer is not empty, so transport.write() appends to it
            # without sending anything, and the growth is this message's frame.
            stall.size += connection.transport.get_write_buffer_size() - buffered
        self.totals["out"] += len(connections)
        for connection in connections:
            client = self.clients.get(connection)
            if client is not None:
                client.messages_out += 1
                self.notify("message", client)

    def _fell_behind(self, connection: ServerConnection) -> bool:
        """Return whether to skip ``connection``, because it is closing or
        ``slow_policy`` applies to it.

        websockets' keepalive cannot catch a client that stopped reading: its
        ping waits behind the unsent data, so the connection would stay open
        and its buffer would grow with every broadcast.
        """
        # An aborted connection stays OPEN until connection_lost() runs on a
        # later loop iteration, and abort() empties its buffer. So without
        # this check, the rest of a burst would be written to a closed socket.
        if connection.transport.is_closing() or connection.state is not State.OPEN:
            return True
        buffered = connection.transport.get_write_buffer_size()
        if self.slow_policy == "discard":
            return self._discarding(connection, buffered)
        if buffered <= self.max_buffer:
            return False
        client = self.clients.get(connection)
        logger.warning(
            "dropped client %s: %d bytes waiting to be sent, over max_buffer "
            "%d; the client is not reading fast enough",
            client.id if client else "?",
            buffered,
            self.max_buffer,
        )
        connection.transport.abort()
        return True

    def _discarding(self, connection: ServerConnection, buffered: int) -> bool:
        """Count and skip a message for ``connection`` while it is behind.

        An episode starts when the buffer goes over ``max_buffer`` and ends
        once it has drained to half of that. So a client that hovers around
        the limit does not start a new episode, and log it, at every message.
        """
        client = self.clients.get(connection)
        episode = self._behind.get(connection)
        if episode is None:
            if buffered <= self.max_buffer:
                return False
            episode = (client.discarded if client else 0, time.monotonic())
            self._behind[connection] = episode
            logger.warning(
                "skipping messages for client %s: %d bytes waiting to be sent, "
                "over max_buffer %d; it will see a gap in seq",
                client.id if client else "?",
                buffered,
                self.max_buffer,
            )
        elif not self._still_behind(connection, client, episode, buffered):
            return False
        self.totals["discarded"] += 1
        if client is not None:
            client.discarded += 1
        return True

    def _still_behind(
        self,
        connection: ServerConnection,
        client: Client | None,
        episode: tuple[int, float],
        buffered: int,
    ) -> bool:
        """End the episode of ``connection`` if it caught up, or drop it after
        ``max_behind``. Return whether it is still behind."""
        if buffered <= self.max_buffer // 2:
            del self._behind[connection]
            if client is not None:
                logger.info(
                    "client %s caught up after %d discarded messages",
                    client.id,
                    client.discarded - episode[0],
                )
            return False
        if (
            time.monotonic() - episode[1] > self.max_behind
            and not connection.transport.is_closing()
        ):
            logger.warning(
                "dropped client %s: behind for more than max_behind %g s "
                "with %d bytes waiting to be sent",
                client.id if client else "?",
                self.max_behind,
                buffered,
            )
            connection.transport.abort()
        return True

    # Watchdog

    def stall_timeout_for(self, connection: ServerConnection) -> float:
        """Return the seconds the write buffer of ``connection`` may send nothing."""
        if self.stall_timeout is not None:
            return self.stall_timeout
        # websockets 17.4 keeps each connection's keepalive settings in these
        # attributes. A connection without them counts as without keepalive.
        interval = getattr(connection, "ping_interval", None)
        ping_timeout = getattr(connection, "ping_timeout", None)
        if interval is None or ping_timeout is None:
            return DEFAULT_STALL_TIMEOUT
        return interval + ping_timeout

    def _start_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._watchdog
        if task is None or task.done() or task.get_loop() is not loop:
            self._watchdog = loop.create_task(self._watch(), name="rtkit push watchdog")

    async def _watch(self) -> None:
        """Check the write buffers of all clients until none is connected."""
        while self.clients:
            try:
                interval = self._check_buffers()
            except Exception:
                logger.exception("write buffer check failed")
                interval = MAX_CHECK_INTERVAL
            await asyncio.sleep(interval)

    def _check_buffers(self) -> float:
        """Drop clients that stalled or stayed behind too long. Return the
        seconds until the next check."""
        now = time.monotonic()
        shortest = MAX_CHECK_INTERVAL * CHECKS_PER_TIMEOUT
        if self.slow_policy == "discard":
            shortest = min(shortest, self.max_behind)
        for connection, client in list(self.clients.items()):
            transport = connection.transport
            if transport.is_closing():
                continue
            buffered = transport.get_write_buffer_size()
            episode = self._behind.get(connection)
            if episode is not None:
                self._still_behind(connection, client, episode, buffered)
                if transport.is_closing():
                    continue
            stall_timeout = self.stall_timeout_for(connection)
            shortest = min(shortest, stall_timeout)
            self._check_stall(connection, client, buffered, stall_timeout, now)
        interval = shortest / CHECKS_PER_TIMEOUT
        return min(max(interval, MIN_CHECK_INTERVAL), MAX_CHECK_INTERVAL)

    def _check_stall(
        self,
        connection: ServerConnection,
        client: Client,
        buffered: int,
        stall_timeout: float,
        now: float,
    ) -> None:
        """Abort ``connection`` if its write buffer sent nothing for
        ``stall_timeout`` seconds.

        Only a buffer over the transport's low-water mark counts. Below it,
        websockets sends its keepalive pings without waiting, so keepalive, if
        it is on, catches a dead peer. Over it, once writing has paused,
        ping() waits for the buffer to drain first, so the ping timeout never
        starts.
        """
        # NOTE: with keepalive off, a client that stopped reading with at most
        # the low-water mark (8 KiB with websockets' defaults) waiting for it
        # is never dropped, like an idle one.
        transport = connection.transport
        low_water, _ = transport.get_write_buffer_limits()
        stall = self._stalls.get(connection)
        if buffered <= low_water:
            if stall is not None:
                del self._stalls[connection]
            return
        if stall is None:
            self._stalls[connection] = _Stall(since=now, size=buffered)
            return
        if buffered < stall.size:
            stall.since = now
        stall.size = buffered
        stalled_for = now - stall.since
        if stalled_for < stall_timeout:
            return
        logger.warning(
            "dropped client %s from %s: %d bytes waiting to be sent and none "
            "sent for %.1f s (stall_timeout %g s); the client stopped reading",
            client.id,
            client.remote,
            buffered,
            stalled_for,
            stall_timeout,
        )
        del self._stalls[connection]
        transport.abort()

    def _push(self, event: Event) -> None:
        # A copy, because a handler may change the set while this iterates.
        connections = list(self.subscribers.get(event.channel, ()))
        self.send(connections, event.envelope(self.hub.epoch))

    def _drop_subscriber(self, channel: str, connection: ServerConnection) -> None:
        subscribers = self.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(connection)
            if not subscribers:
                del self.subscribers[channel]

    def is_channel_in_use(self, channel: str) -> bool:
        """Return whether a connection subscribed to or joined ``channel``."""
        return channel in self.subscribers or channel in self.member_counts

    def _add_member(self, client: Client, channel: str) -> None:
        if channel not in client.channels:
            client.channels.add(channel)
            self.member_counts[channel] += 1

    def _remove_member(self, channel: str) -> None:
        self.member_counts[channel] -= 1
        if self.member_counts[channel] <= 0:
            del self.member_counts[channel]

    def members(self, channel: str) -> list[Client]:
        """Return the clients that joined ``channel``, in order of arrival."""
        return [c for c in self.clients.values() if channel in c.channels]

    def send_presence(self, channel: str) -> None:
        """Send the member list of ``channel`` to each of its members."""
        connections = [
            c for c, info in self.clients.items() if channel in info.channels
        ]
        listing = [{"id": c.id, "name": c.name} for c in self.members(channel)]
        message = {"type": "presence", "channel": channel, "members": listing}
        self.send(connections, message)

    def rename(self, connection: ServerConnection, name: str) -> None:
        """Change the display name of ``connection`` and tell its channels.

        Raises:
            CommandError: if ``name`` is not a valid display name.
        """
        client = self.clients[connection]
        client.name = check_name(name)
        for channel in client.channels:
            self.send_presence(channel)
        self.notify("change", client)

    def notify(self, change: str, client: Client) -> None:
        """Call every listener with ``change`` and ``client``; log failures."""
        for listener in list(self.listeners):
            try:
                listener(change, client)
            except Exception:
                logger.exception(
                    "listener failed on %s of client %s", change, client.id
                )

    # Connection lifecycle

    async def __call__(self, connection: ServerConnection) -> None:
        """Handle one connection until it closes."""
        client = Client(connection.id.hex[:8], remote_address(connection))
        self.clients[connection] = client
        limiter = None if self.max_rate is None else RateLimiter(self.max_rate)
        self._start_watchdog()
        self.notify("connect", client)
        try:
            await self._reply(connection, WELCOME)
            async for message in connection:
                client.messages_in += 1
                self.totals["in"] += 1
                self.notify("message", client)
                if limiter is not None and not limiter.allow():
                    await self._close_over_rate(connection, client, limiter.rate)
                    return
                await self.handle_message(connection, message)
        finally:
            del self.clients[connection]
            self._behind.pop(connection, None)
            self._stalls.pop(connection, None)
            if not self.clients and self._watchdog is not None:
                self._watchdog.cancel()
            for channel in client.subscriptions:
                self._drop_subscriber(channel, connection)
            for channel in client.channels:
                self._remove_member(channel)
                self.send_presence(channel)
            self.notify("disconnect", client)

    async def _close_over_rate(
        self, connection: ServerConnection, client: Client, max_rate: float
    ) -> None:
        """Close ``connection`` with 1008 because it sent over ``max_rate``."""
        logger.warning(
            "closing client %s from %s: sent over %g messages/s (max_rate)",
            client.id,
            client.remote,
            max_rate,
        )
        closing = asyncio.create_task(
            connection.close(1008, rate_limit_reason(max_rate))
        )
        # websockets keeps queueing data frames that arrive after its close
        # frame. Unread, they would fill the queue and pause reading from the
        # socket, so the client's close frame would wait for close_timeout.
        with contextlib.suppress(ConnectionClosed):
            async for _ in connection:
                pass
        await closing

    async def handle_message(
        self, connection: ServerConnection, message: str | bytes
    ) -> None:
        """Reply to one message from ``connection``."""
        if isinstance(message, bytes):
            await self._reply(connection, binary_unsupported(len(message)))
            return
        try:
            command = parse_command(message)
        except CommandError as exc:
            await self._reply(connection, error_message(exc.code, str(exc)))
            return
        if command is None:
            await self._reply(connection, echo_reply(message))
            return
        handler = self.commands.get(command["type"])
        if handler is None:
            known = ", ".join(repr(name) for name in self.commands)
            await self._reply(
                connection,
                error_message(
                    "unknown_type",
                    f"unknown message type: {short_repr(command['type'])}; send "
                    f"one of {known}, or plain text to echo",
                ),
            )
            return
        try:
            await handler(connection, command)
        except CommandError as exc:
            await self._reply(connection, error_message(exc.code, str(exc)))

    async def _reply(self, connection: ServerConnection, text: str) -> None:
        stall = self._stalls.get(connection)
        buffered = connection.transport.get_write_buffer_size()
        await connection.send(text)
        if stall is not None and self._stalls.get(connection) is stall:
            # Count the reply as written but not sent, as send() does. If
            # send() waited for the buffer to drain, the buffer shrank, which
            # is progress, so nothing is added.
            stall.size += max(
                0, connection.transport.get_write_buffer_size() - buffered
            )
        self.totals["out"] += 1
        client = self.clients.get(connection)
        if client is not None:
            client.messages_out += 1
            self.notify("message", client)

    # Commands

    async def subscribe(
        self, connection: ServerConnection, command: dict[str, Any]
    ) -> None:
        """Replay the events after ``since``, then add ``connection`` to the push."""
        channel = _channel(command, DEFAULT_CHANNEL)
        since = _since(command)
        self._subscribe(connection, channel, since, command.get("epoch"))

    def _subscribe(
        self, connection: ServerConnection, channel: str, since: int, epoch: Any
    ) -> None:
        """Replay the events of ``channel`` after ``since``, then push new ones."""
        hub = self.hub
        if epoch is not None and epoch != hub.epoch:
            since = 0

        client = self.clients[connection]
        # Joined channels count too, because a member that unsubscribed still
        # keeps its channel from eviction.
        subscribed_or_joined = client.subscriptions | client.channels
        if (
            channel not in subscribed_or_joined
            and len(subscribed_or_joined) >= MAX_SUBSCRIPTIONS
        ):
            raise CommandError(
                "too_many_subscriptions",
                f"too many subscriptions: {len(subscribed_or_joined)} channels "
                "subscribed or joined, the maximum per connection; unsubscribe "
                "from or leave one first",
            )
        try:
            result = hub.stream(channel).events_after(since)
        except ValueError as exc:
            raise CommandError("too_many_channels", str(exc)) from None

        confirmation: dict[str, Any] = {
            "type": "subscribed",
            "channel": channel,
            "epoch": hub.epoch,
            "seq": result.latest,
            "missed": result.missed,
        }
        if result.reset:
            confirmation["reset"] = True
        # The replay and the registration happen without an await in between,
        # so no event is published between them: none is lost or sent twice.
        self.send([connection], confirmation)
        for event in result.events:
            self.send([connection], event.envelope(hub.epoch))
        self.subscribers.setdefault(channel, set()).add(connection)
        client.subscriptions.add(channel)

        if result.reset:
            logger.info(
                "client %s resumed %s after seq %d, above its latest seq %d; "
                "replaying from the start",
                client.id,
                channel,
                since,
                result.latest,
            )
        if result.missed:
            logger.info(
                "client %s resumed %s after seq %d and missed %d events",
                client.id,
                channel,
                0 if result.reset else since,
                result.missed,
            )

    async def unsubscribe(
        self, connection: ServerConnection, command: dict[str, Any]
    ) -> None:
        """Stop pushing a channel's events to ``connection``."""
        channel = _channel(command, DEFAULT_CHANNEL)
        self._drop_subscriber(channel, connection)
        self.clients[connection].subscriptions.discard(channel)
        self.send([connection], {"type": "unsubscribed", "channel": channel})

    async def join(self, connection: ServerConnection, command: dict[str, Any]) -> None:
        """Subscribe to a channel and enter its presence list under a name."""
        channel = _channel(command)
        name = check_name(command.get("name"))
        since = _since(command)
        client = self.clients[connection]
        client.name = name
        self._subscribe(connection, channel, since, command.get("epoch"))
        self._add_member(client, channel)
        self.send_presence(channel)
        self.notify("change", client)

    def _member(self, connection: ServerConnection, channel: str, fix: str) -> Client:
        """Return the client of ``connection`` if it joined ``channel``.

        Raises:
            CommandError: ``not_joined``, ending with ``fix``.
        """
        client = self.clients[connection]
        if channel not in client.channels:
            raise CommandError("not_joined", f"not a member of {channel!r}; {fix}")
        return client

    async def leave(
        self, connection: ServerConnection, command: dict[str, Any]
    ) -> None:
        """Leave a channel: unsubscribe and leave its presence list."""
        channel = _channel(command)
        client = self._member(connection, channel, "nothing to leave")
        client.channels.discard(channel)
        self._remove_member(channel)
        await self.unsubscribe(connection, command)
        self.send_presence(channel)
        self.notify("change", client)

    async def message(
        self, connection: ServerConnection, command: dict[str, Any]
    ) -> None:
        """Publish a chat message to a channel the sender has joined."""
        channel = _channel(command)
        join = f'{{"type": "join", "channel": "{channel}", "name": ...}}'
        client = self._member(connection, channel, f"send {join} first")
        text = check_text(command.get("text"))
        sender = {"id": client.id, "name": client.name}
        self.hub.publish({"from": sender, "text": text}, channel)

    async def ping(self, connection: ServerConnection, command: dict[str, Any]) -> None:
        """Reply with a ``pong`` carrying the ping's ``id`` and the server time."""
        ping_id = _ping_id(command)
        self.send([connection], {"type": "pong", "id": ping_id, "ts": time.time()})

    # State

    def client_table(self) -> list[dict[str, Any]]:
        """Return one row per open connection, in order of arrival.

        Each row has the keys ``id``, ``name``, ``remote``, ``latency_ms``,
        ``buffered``, ``messages_in``, ``messages_out`` and ``discarded``.
        ``latency_ms`` is the round trip of the last keepalive ping, from
        websockets' ``connection.latency``; it is 0 before the first pong.
        ``buffered`` counts the bytes waiting in the connection's write
        buffer.
        """
        rows = []
        for connection, client in self.clients.items():
            rows.append(
                {
                    "id": client.id,
                    "name": client.name,
                    "remote": client.remote,
                    "latency_ms": round(connection.latency * 1000, 3),
                    "buffered": connection.transport.get_write_buffer_size(),
                    "messages_in": client.messages_in,
                    "messages_out": client.messages_out,
                    "discarded": client.discarded,
                }
            )
        return rows

    def close(self) -> None:
        """Stop receiving events from the hub, and stop the watchdog."""
        self._unsubscribe_hub()
        self._remove_in_use_check()
        self.subscribers.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()


@dataclass
class _Stall:
    """A connection's write buffer while it is over the low-water mark."""

    since: float
    """time.monotonic() when the buffer was last seen to send something."""
    size: int
    """Bytes the buffer would hold if it had sent nothing since the last
    check: its size then, plus what rtkit wrote to it since."""


def remote_address(connection: ServerConnection) -> str:
    """Return the peer of ``connection`` as ``host:port`` (``[host]:port`` for IPv6)."""
    address = connection.remote_address
    if not address:
        return "unknown"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
