"""The classic echo handler: a greeting on connect, then every text echoed back."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.server import ServerConnection

__all__ = [
    "WELCOME",
    "binary_unsupported",
    "echo",
    "echo_reply",
    "encode",
    "error_message",
]

WELCOME = "Welcome to the WebSocket server!"
"""The first message each client receives."""


def encode(message: dict[str, Any]) -> str:
    """Serialize a protocol message as compact JSON, as every rtkit route does."""
    return json.dumps(message, separators=(",", ":"))


def echo_reply(text: str) -> str:
    """Return the echo server's reply to ``text``."""
    return f"Server received: {text}"


def error_message(code: str, message: str) -> str:
    """Return an ``error`` message in rtkit's JSON envelope.

    Args:
        code: a short machine-readable name, such as ``"binary_unsupported"``.
        message: a sentence for the person reading the client's log.
    """
    return encode({"type": "error", "code": code, "message": message})


def binary_unsupported(size: int) -> str:
    """Return the ``error`` message for a binary frame of ``size`` bytes."""
    return error_message(
        "binary_unsupported",
        f"binary frames are not supported (received {size} bytes); "
        "send text frames instead",
    )


async def echo(connection: ServerConnection) -> None:
    """Greet ``connection``, then reply to each text message with its echo.

    A binary frame gets an ``error`` message back and the connection stays
    open. Closing, including abrupt disconnects and websockets' 1009 close for
    oversized messages, ends the loop with :exc:`~websockets.ConnectionClosed`,
    which the rtkit server handles.
    """
    await connection.send(WELCOME)
    async for message in connection:
        if isinstance(message, str):
            await connection.send(echo_reply(message))
        else:
            await connection.send(binary_unsupported(len(message)))
