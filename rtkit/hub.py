"""One event stream for every transport: sequence numbers, history, wake-ups.

Short polls, long polls and WebSocket subscribers all read from one
:class:`Hub`. Each published :class:`Event` gets the next sequence number
(``seq``, starting at 1) and the server's wall-clock time. The hub keeps the last
``history_size`` events, so a client that reconnects or polls again requests
"everything after the last ``seq`` I saw" and receives exactly the events it
missed, or learns how many fell out of the history.

The hub's ``epoch`` is a random token chosen when the hub is created or reset
(every server start). Sequence numbers are only comparable within one epoch, so
a client that sees a new epoch knows the server restarted and starts over.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_HISTORY_SIZE",
    "Event",
    "EventsAfter",
    "Hub",
]

DEFAULT_CHANNEL = "events"
DEFAULT_HISTORY_SIZE = 1000


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


@dataclass
class Hub:
    """Sequence numbers, a bounded history and wake-ups for one event stream.

    Args:
        history_size: how many recent events are kept for pollers and for
            clients that resume; at least 1.

    Raises:
        ValueError: if ``history_size`` is not a positive integer.
    """

    history_size: int = DEFAULT_HISTORY_SIZE
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    latest: int = 0
    history: deque[Event] = field(init=False)
    closed: bool = field(default=False, init=False)
    _changed: asyncio.Future[None] | None = field(default=None, init=False)
    _subscribers: list[Callable[[Event], None]] = field(
        default_factory=list, init=False
    )

    def __post_init__(self) -> None:
        size = self.history_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"invalid history_size: {size!r}; pass a positive integer, "
                f"e.g. {DEFAULT_HISTORY_SIZE}"
            )
        self.history = deque(maxlen=size)

    def reset(self, epoch: str | None = None) -> None:
        """Start a new epoch: clear the history and count from 1 again."""
        self.epoch = epoch or secrets.token_hex(4)
        self.latest = 0
        self.history.clear()
        self.closed = False
        self.wake_all()

    def close(self) -> None:
        """Release every waiting long poll and make new ones return at once."""
        self.closed = True
        self.wake_all()

    def publish(self, data: Any, channel: str = DEFAULT_CHANNEL) -> Event:
        """Append an event, wake every waiting long poll, notify subscribers.

        Subscribers are called synchronously and in order, so they must not
        block; a WebSocket subscriber writes with ``broadcast()``.
        """
        self.latest += 1
        event = Event(self.latest, data, time.time(), channel)
        self.history.append(event)
        self.wake_all()
        for subscriber in list(self._subscribers):
            subscriber(event)
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

    async def wait_for_events(self, since: int, wait: float) -> EventsAfter:
        """Return the events after ``since``, waiting up to ``wait`` seconds.

        Returns at once when events are already there, or when ``since`` is
        beyond the latest ``seq`` (a client from before a restart must learn
        the new epoch now, not after the wait). Otherwise waits for the next
        publish, :meth:`reset` or :meth:`wake_all`, without polling.
        """
        deadline = time.monotonic() + wait
        while True:
            result = self.events_after(since)
            if result.events or result.missed or since > self.latest or self.closed:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not math.isfinite(remaining):
                return result
            if self._changed is None or self._changed.done():
                self._changed = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.shield(self._changed)
            except TimeoutError:
                return self.events_after(since)

    def wake_all(self) -> None:
        """Wake every waiting long poll so it checks for events again."""
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` with each new event; return a function that stops it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe
