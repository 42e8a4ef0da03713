"""One event stream for every transport: sequence numbers, history, wake-ups.

Short polls, long polls and WebSocket subscribers all read from one
:class:`Hub`, which keeps one :class:`Stream` per channel. Each published
:class:`Event` gets the next sequence number of its channel (``seq``, starting
at 1) and the server's wall-clock time. The hub keeps the last
``history_size`` events, so a client that reconnects or polls again requests
"everything after the last ``seq`` I saw" and receives exactly the events it
missed, or learns how many fell out of the history.

The hub's ``epoch`` is a random token chosen when the hub is created or reset
(every server start). Sequence numbers are only comparable within one epoch, so
a client that sees a new epoch learns that the server restarted and starts over.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_MAX_CHANNELS",
    "Event",
    "EventsAfter",
    "Hub",
    "Stream",
    "check_channel",
    "short_repr",
]

DEFAULT_CHANNEL = "events"
DEFAULT_HISTORY_SIZE = 1000
DEFAULT_MAX_CHANNELS = 256
CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def short_repr(value: object, limit: int = 60) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name.

    A name is 1 to 64 characters: letters, digits and ``_ . : -``, starting
    with a letter or digit.

    Raises:
        ValueError: naming the invalid value and the allowed form.
    """
    if not isinstance(channel, str) or not CHANNEL_PATTERN.fullmatch(channel):
        raise ValueError(
            f"invalid channel: {short_repr(channel)}; use 1 to 64 letters, digits and "
            "_ . : -, starting with a letter or digit, e.g. 'lobby'"
        )
    return channel


@dataclass(frozen=True, slots=True)
class Event:
    """One published event."""

    seq: int
    """Sequence number, 1 for the first event of an epoch."""
    data: Any
    """The payload: any JSON-serializable value."""
    ts: float
    """Server time of publishing, in seconds since the Unix epoch."""
    channel: str = DEFAULT_CHANNEL
    """The channel the event was published to."""

    def envelope(self, epoch: str) -> dict[str, Any]:
        """Return the event in rtkit's JSON message envelope."""
        return {
            "type": "event",
            "seq": self.seq,
            "epoch": epoch,
            "channel": self.channel,
            "data": self.data,
            "ts": self.ts,
        }


@dataclass(frozen=True, slots=True)
class EventsAfter:
    """The events after a given ``since``, with the gap before them."""

    events: list[Event]
    """Events with ``seq`` greater than ``since``, oldest first."""
    latest: int
    """The latest ``seq`` published in this epoch (0 before the first event)."""
    missed: int = 0
    """Events after ``since`` that are no longer in the history."""

    def to_json(self, epoch: str) -> dict[str, Any]:
        """Return the ``/poll`` response body."""
        return {
            "epoch": epoch,
            "seq": self.latest,
            "missed": self.missed,
            "events": [event.envelope(epoch) for event in self.events],
        }


class Stream:
    """One channel's sequence numbers, bounded history and long-poll wake-ups.

    Args:
        channel: the channel name.
        history_size: how many recent events are kept.
    """

    def __init__(self, channel: str, history_size: int) -> None:
        self.channel = channel
        self.latest = 0
        """The latest ``seq`` published (0 before the first event)."""
        self.history: deque[Event] = deque(maxlen=history_size)
        self._changed: asyncio.Future[None] | None = None

    def append(self, data: Any) -> Event:
        """Append an event with the next ``seq`` and wake every waiter."""
        self.latest += 1
        event = Event(self.latest, data, time.time(), self.channel)
        self.history.append(event)
        self.wake_all()
        return event

    def events_after(self, since: int) -> EventsAfter:
        """Return the events after ``since`` that are still in the history.

        ``missed`` counts the events after ``since`` that already fell out of
        the history, so the caller can tell the client about the gap.
        """
        if not self.history or since >= self.latest:
            return EventsAfter([], self.latest)
        oldest = self.history[0].seq
        missed = max(0, oldest - since - 1)
        start = max(0, since + 1 - oldest)
        events = [self.history[i] for i in range(start, len(self.history))]
        return EventsAfter(events, self.latest, missed)

    def changed(self) -> asyncio.Future[None]:
        """Return a future that completes at the next append or wake-up."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def wake_all(self) -> None:
        """Wake every waiting long poll so it checks for events again."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None


@dataclass
class Hub:
    """The event streams of one server, one :class:`Stream` per channel.

    Sequence numbers count per channel. ``epoch`` is shared by all channels
    and changes on :meth:`reset`.

    Args:
        history_size: how many recent events each channel keeps for pollers
            and for clients that resume; at least 1.
        max_channels: how many channels may exist at once, so that clients
            cannot grow the server's memory without bound by naming new ones.

    Raises:
        ValueError: if ``history_size`` or ``max_channels`` is not a positive
            integer.
    """

    history_size: int = DEFAULT_HISTORY_SIZE
    max_channels: int = DEFAULT_MAX_CHANNELS
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    closed: bool = field(default=False, init=False)
    streams: dict[str, Stream] = field(default_factory=dict, init=False)
    _subscribers: list[Callable[[Event], None]] = field(
        default_factory=list, init=False
    )
    _created: asyncio.Future[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for name, default in (
            ("history_size", DEFAULT_HISTORY_SIZE),
            ("max_channels", DEFAULT_MAX_CHANNELS),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"invalid {name}: {value!r}; pass a positive integer, "
                    f"e.g. {default}"
                )

    def stream(self, channel: str = DEFAULT_CHANNEL) -> Stream:
        """Return the stream of ``channel``, creating it on first use.

        Raises:
            ValueError: if the name is invalid or ``max_channels`` streams
                exist already.
        """
        stream = self.streams.get(channel)
        if stream is None:
            check_channel(channel)
            if len(self.streams) >= self.max_channels:
                raise ValueError(
                    f"too many channels: {len(self.streams)} exist, the maximum; "
                    f"reuse a channel or raise max_channels (for {channel!r})"
                )
            stream = self.streams[channel] = Stream(channel, self.history_size)
            self._wake_channel_waiters()
        return stream

    @property
    def latest(self) -> int:
        """The latest ``seq`` of the default channel."""
        return self.stream().latest

    @property
    def history(self) -> deque[Event]:
        """The kept events of the default channel."""
        return self.stream().history

    def reset(self, epoch: str | None = None) -> None:
        """Start a new epoch: forget every channel, count from 1 again."""
        self.epoch = epoch or secrets.token_hex(4)
        self.closed = False
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.wake_all()
        self._wake_channel_waiters()

    def close(self) -> None:
        """Release every waiting long poll and make new ones return at once."""
        self.closed = True
        for stream in self.streams.values():
            stream.wake_all()
        self._wake_channel_waiters()

    def publish(self, data: Any, channel: str = DEFAULT_CHANNEL) -> Event:
        """Append an event, wake every waiting long poll, notify subscribers.

        Subscribers are called synchronously and in order, so they must not
        block; a WebSocket subscriber writes with ``broadcast()``.

        Raises:
            ValueError: if ``channel`` is invalid or one too many.
        """
        event = self.stream(channel).append(data)
        for subscriber in list(self._subscribers):
            subscriber(event)
        return event

    def events_after(self, since: int, channel: str = DEFAULT_CHANNEL) -> EventsAfter:
        """Return the events of ``channel`` after ``since``; see :class:`Stream`."""
        stream = self.streams.get(channel)
        if stream is None:
            check_channel(channel)
            return EventsAfter([], 0)
        return stream.events_after(since)

    async def wait_for_events(
        self, since: int, wait: float, channel: str = DEFAULT_CHANNEL
    ) -> EventsAfter:
        """Return the events after ``since``, waiting up to ``wait`` seconds.

        Returns at once when events are already there, or when ``since`` is
        beyond the latest ``seq`` (a client from before a restart must learn
        the new epoch now, not after the wait). Otherwise waits for the next
        publish on ``channel``, :meth:`reset` or :meth:`close`, without polling.

        Raises:
            ValueError: if ``channel`` is invalid or one too many.
        """
        check_channel(channel)
        deadline = time.monotonic() + wait
        while True:
            result = self.events_after(since, channel)
            if result.events or result.missed or since > result.latest or self.closed:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not math.isfinite(remaining):
                return result
            # A poll must not create a channel, or pollers could use up
            # max_channels; until the first publish it waits on the hub.
            stream = self.streams.get(channel)
            changed = stream.changed() if stream else self._channel_created()
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.shield(changed)
            except TimeoutError:
                return self.events_after(since, channel)

    def _channel_created(self) -> asyncio.Future[None]:
        if self._created is None or self._created.done():
            self._created = asyncio.get_running_loop().create_future()
        return self._created

    def _wake_channel_waiters(self) -> None:
        if self._created is not None and not self._created.done():
            self._created.set_result(None)
        self._created = None

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` with each new event; return a function that stops it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe
