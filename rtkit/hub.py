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

At most ``max_channels`` streams exist at once. To create one more, the hub
evicts the least recently used idle channel: one without WebSocket subscribers,
chat members or waiting long polls, other than :data:`DEFAULT_CHANNEL`. The
events of an evicted channel are gone, but the hub records its last ``seq``
(for the last :data:`MAX_RETIRED_CHANNELS` evicted channels), and a re-created
stream continues after it, so a ``seq`` is not reused within an epoch. A client
that resumes after such a gap receives the count of events it ``missed``.

A ``since`` above the channel's latest ``seq`` cannot belong to this epoch's
stream. Either the channel's record was forgotten and it restarted at 1, or the
client is wrong about its position. The hub treats it like a new epoch for that
channel. It returns the events from the first one kept, and sets ``reset``, so
that the client starts over from ``seq`` 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_MAX_CHANNELS",
    "MAX_RETIRED_CHANNELS",
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
MAX_RETIRED_CHANNELS = 4096
"""Maximum number of evicted channels whose last ``seq`` the hub records. The
oldest record is dropped first. With 64-character names, 4096 records took
about 0.9 MB (tracemalloc, CPython 3.11)."""
EVICTION_LOG_INTERVAL = 10.0
"""Minimum seconds between two log lines about evicted channels. Each line
counts the evictions since the previous one."""
CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

logger = logging.getLogger("rtkit.hub")


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
    reset: bool = False
    """Whether ``since`` was above ``latest``, so that ``events`` and ``missed``
    count from ``seq`` 0 instead, as for a new epoch."""

    def to_json(self, epoch: str) -> dict[str, Any]:
        """Return the ``/poll`` response body.

        ``reset`` is in the body only when it is true, so the usual body keeps
        its four fields.
        """
        body = {
            "epoch": epoch,
            "seq": self.latest,
            "missed": self.missed,
            "events": [event.envelope(epoch) for event in self.events],
        }
        if self.reset:
            body["reset"] = True
        return body


class Stream:
    """One channel's sequence numbers, bounded history and long-poll wake-ups.

    Args:
        channel: the channel name.
        history_size: how many recent events are kept.
        latest: the ``seq`` that the first event follows, which is 0 for a
            new channel and the last ``seq`` of an evicted one that is
            re-created.
    """

    def __init__(self, channel: str, history_size: int, latest: int = 0) -> None:
        self.channel = channel
        self.latest = latest
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
        the history, or were evicted with the channel, so the caller can tell
        the client about the gap. A ``since`` above ``latest`` counts as 0,
        with ``reset`` set.
        """
        return _events_after(self.history, self.latest, since)

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


def _events_after(history: deque[Event], latest: int, since: int) -> EventsAfter:
    """Return the events after ``since``; see :meth:`Stream.events_after`."""
    reset = since > latest
    if reset:
        since = 0
    # Without history, the first event that could still be kept is the next one.
    oldest = history[0].seq if history else latest + 1
    missed = max(0, oldest - since - 1)
    start = max(0, since + 1 - oldest)
    events = [history[i] for i in range(start, len(history))]
    return EventsAfter(events, latest, missed, reset)


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
            Creating one more evicts the least recently used idle channel.

    Raises:
        ValueError: if ``history_size`` or ``max_channels`` is not a positive
            integer.
    """

    history_size: int = DEFAULT_HISTORY_SIZE
    max_channels: int = DEFAULT_MAX_CHANNELS
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    closed: bool = field(default=False, init=False)
    streams: OrderedDict[str, Stream] = field(default_factory=OrderedDict, init=False)
    """The stream of each channel, least recently used first."""
    evictions: int = field(default=0, init=False)
    """Channels evicted to make room for new ones, since the hub was created."""
    _subscribers: list[Callable[[Event], None]] = field(
        default_factory=list, init=False
    )
    _created: asyncio.Future[None] | None = field(default=None, init=False)
    _retired: OrderedDict[str, int] = field(default_factory=OrderedDict, init=False)
    """The last ``seq`` of evicted channels in this epoch, oldest eviction first."""
    _forgotten: int = field(default=0, init=False)
    """Records dropped from ``_retired`` in this epoch."""
    _waiting: Counter[str] = field(default_factory=Counter, init=False)
    """Long polls waiting in :meth:`wait_for_events`, by channel."""
    _in_use_checks: list[Callable[[str], bool]] = field(
        default_factory=list, init=False
    )
    _unlogged_evictions: int = field(default=0, init=False)
    _eviction_logged_at: float = field(default=-math.inf, init=False)

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

        With ``max_channels`` streams already there, creating one evicts the
        least recently used idle channel first (see :meth:`is_idle`). A
        re-created channel continues after the last ``seq`` recorded for it.

        Raises:
            ValueError: if the name is invalid, or ``max_channels`` streams
                exist and none of them is idle.
        """
        stream = self.streams.get(channel)
        if stream is not None:
            self.streams.move_to_end(channel)
            return stream
        check_channel(channel)
        while len(self.streams) >= self.max_channels:
            idle = self._least_recently_used_idle()
            if idle is None:
                raise ValueError(
                    f"too many channels: {len(self.streams)} exist, the maximum "
                    "(max_channels), and each has subscribers, members or "
                    "waiting polls or is the default channel; retry once one "
                    f"is idle, or raise max_channels (for {channel!r})"
                )
            self._evict(idle, channel)
        latest = self._retired.pop(channel, 0)
        stream = self.streams[channel] = Stream(channel, self.history_size, latest)
        self._wake_channel_waiters()
        return stream

    def is_idle(self, channel: str) -> bool:
        """Return whether ``channel`` may be evicted.

        A channel is idle unless it is :data:`DEFAULT_CHANNEL`, a long poll
        waits on it, or a check added with :meth:`add_in_use_check` returns
        true for it (WebSocket subscribers and chat members).
        """
        if channel == DEFAULT_CHANNEL or self._waiting[channel]:
            return False
        return not any(check(channel) for check in self._in_use_checks)

    def add_in_use_check(self, check: Callable[[str], bool]) -> Callable[[], None]:
        """Keep each channel for which ``check(channel)`` is true from eviction.

        ``check`` runs only when a channel must be evicted, so it must be fast.
        Return a function that removes the check.
        """
        self._in_use_checks.append(check)

        def remove() -> None:
            if check in self._in_use_checks:
                self._in_use_checks.remove(check)

        return remove

    def _least_recently_used_idle(self) -> str | None:
        for channel in self.streams:
            if self.is_idle(channel):
                return channel
        return None

    def _evict(self, channel: str, for_channel: str) -> None:
        """Remove the stream of ``channel`` and record its last ``seq``."""
        stream = self.streams.pop(channel)
        stream.wake_all()
        # A channel without events needs no record, because no client can have
        # received a seq of it.
        if stream.latest:
            self._retired[channel] = stream.latest
            if len(self._retired) > MAX_RETIRED_CHANNELS:
                self._forget_oldest_record()
        self.evictions += 1
        self._unlogged_evictions += 1
        now = time.monotonic()
        if now - self._eviction_logged_at < EVICTION_LOG_INTERVAL:
            return
        logger.info(
            "evicted idle channel %r (last seq %d) to create %r, because "
            "max_channels (%d) channels existed; %d channels evicted since the "
            "last message like this one, %d in total",
            channel,
            stream.latest,
            for_channel,
            self.max_channels,
            self._unlogged_evictions,
            self.evictions,
        )
        self._unlogged_evictions = 0
        self._eviction_logged_at = now

    def _forget_oldest_record(self) -> None:
        # NOTE: once a channel's record is gone, a client whose since is at or
        # below the re-created channel's latest seq is not detected. It gets
        # the new events after its since as if they followed its own.
        channel, latest = self._retired.popitem(last=False)
        self._forgotten += 1
        if self._forgotten == 1:
            # Logged once per epoch, because after the first, every further
            # eviction of a channel with events drops one more record.
            logger.info(
                "forgot the last seq (%d) of evicted channel %r, because the "
                "last %d evicted channels are recorded; re-created, it starts "
                "at seq 1 again, and clients resuming above its latest seq "
                "start over",
                latest,
                channel,
                MAX_RETIRED_CHANNELS,
            )

    @property
    def latest(self) -> int:
        """The latest ``seq`` of the default channel (0 before it exists)."""
        # Reading it must not create the channel, because that could evict
        # another one.
        stream = self.streams.get(DEFAULT_CHANNEL)
        return stream.latest if stream is not None else 0

    @property
    def history(self) -> deque[Event]:
        """The kept events of the default channel."""
        return self.stream().history

    def reset(self, epoch: str | None = None) -> None:
        """Start a new epoch: forget every channel, count from 1 again."""
        self.epoch = epoch or secrets.token_hex(4)
        self.closed = False
        streams, self.streams = self.streams, OrderedDict()
        self._retired.clear()
        self._forgotten = 0
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
            # An evicted channel's events are gone, but its seq went on.
            latest = self._retired.get(channel, 0)
            return _events_after(deque(), latest, since)
        self.streams.move_to_end(channel)
        return stream.events_after(since)

    async def wait_for_events(
        self, since: int, wait: float, channel: str = DEFAULT_CHANNEL
    ) -> EventsAfter:
        """Return the events after ``since``, waiting up to ``wait`` seconds.

        Returns at once when events are already there, or when ``since`` is
        beyond the latest ``seq`` (``reset``: a client from before a restart
        must learn the new epoch now, not after the wait). Otherwise waits for
        the next publish on ``channel``, :meth:`reset` or :meth:`close`,
        without polling. While it waits, ``channel`` is not evicted.

        Raises:
            ValueError: if ``channel`` is invalid.
        """
        check_channel(channel)
        deadline = time.monotonic() + wait
        self._waiting[channel] += 1
        try:
            while True:
                result = self.events_after(since, channel)
                if result.events or result.missed or result.reset or self.closed:
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
        finally:
            self._waiting[channel] -= 1
            if not self._waiting[channel]:
                del self._waiting[channel]

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
