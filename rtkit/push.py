"""The default WebSocket handler: the classic echo plus event push.

Every client is greeted with :data:`~rtkit.echo.WELCOME`. Plain text messages
keep the echo of the first example (``Server received: <text>``). A text
message that is a JSON object with a ``type`` is a protocol message:

``{"type": "subscribe", "since": SEQ, "epoch": EPOCH}``
    Replay the events after ``SEQ`` still in the history, then push each new
    as ``{"type": "event", "seq", "epoch", "channel", "data", "ts"}``.
    ``epoch`` is optional: when it is not the server's current epoch, ``SEQ``
    belongs to an earlier run and the replay starts from the first event.
    The server first confirms with ``{"type": "subscribed", "epoch", "seq",
    "missed"}``, where ``missed`` counts events after ``SEQ`` that already fell
    out of the history.
``{"type": "unsubscribe"}``
    Stop pushing events; the server confirms with ``{"type": "unsubscribed"}``.

Anything else that parses as JSON with a ``type`` gets an ``error`` message
naming what was wrong, and the connection stays open.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast

from .echo import WELCOME, binary_unsupported, echo_reply, encode, error_message
from .hub import Event, Hub

__all__ = ["PushHandler"]

logger = logging.getLogger("rtkit.push")


def parse_command(text: str) -> dict[str, Any] | None:
    """Return ``text`` as a protocol message, or ``None`` for plain text."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if isinstance(message, dict) and "type" in message:
        return message
    return None


class PushHandler:
    """Serve echo and event push to WebSocket clients from one :class:`Hub`.

    Args:
        hub: the event stream pushed to subscribers.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.subscribers: set[ServerConnection] = set()
        self._unsubscribe_hub = hub.subscribe(self._push)

    def _push(self, event: Event) -> None:
        # broadcast() writes to each connection without waiting, so one slow
        # client never delays the others; the set is copied before iterating.
        if self.subscribers:
            message = encode(event.envelope(self.hub.epoch))
            broadcast(list(self.subscribers), message)

    async def __call__(self, connection: ServerConnection) -> None:
        """Handle one connection until it closes."""
        try:
            await connection.send(WELCOME)
            async for message in connection:
                await self.handle_message(connection, message)
        finally:
            self.subscribers.discard(connection)

    async def handle_message(
        self, connection: ServerConnection, message: str | bytes
    ) -> None:
        """Reply to one message from ``connection``."""
        if isinstance(message, bytes):
            await connection.send(binary_unsupported(len(message)))
            return
        command = parse_command(message)
        if command is None:
            await connection.send(echo_reply(message))
        elif command["type"] == "subscribe":
            await self.subscribe(connection, command)
        elif command["type"] == "unsubscribe":
            self.subscribers.discard(connection)
            await connection.send(encode({"type": "unsubscribed"}))
        else:
            await connection.send(
                error_message(
                    "unknown_type",
                    f"unknown message type: {command['type']!r}; "
                    "send 'subscribe' or 'unsubscribe', or plain text to echo",
                )
            )

    async def subscribe(
        self, connection: ServerConnection, command: dict[str, Any]
    ) -> None:
        """Replay the events after ``since``, then add ``connection`` to the push."""
        since = command.get("since", 0)
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            await connection.send(
                error_message(
                    "invalid_since",
                    f"invalid since: {since!r}; send the last seq you received, "
                    "an integer >= 0 (0 for everything in the history)",
                )
            )
            return
        hub = self.hub
        if command.get("epoch", hub.epoch) != hub.epoch:
            since = 0
        result = hub.events_after(since)
        confirmation = {
            "type": "subscribed",
            "epoch": hub.epoch,
            "seq": result.latest,
            "missed": result.missed,
        }
        # The replay and the registration happen without an await in between,
        # so no event is published between them: none is lost or sent twice.
        broadcast([connection], encode(confirmation))
        for event in result.events:
            broadcast([connection], encode(event.envelope(hub.epoch)))
        self.subscribers.add(connection)
        if result.missed:
            logger.info(
                "client %s resumed after seq %d and missed %d events",
                connection.id.hex[:8],
                since,
                result.missed,
            )

    def close(self) -> None:
        """Stop receiving events from the hub."""
        self._unsubscribe_hub()
        self.subscribers.clear()
