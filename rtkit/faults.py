"""Faulty clients for experiments: a peer that stops reading.

:func:`stalled_client` opens a WebSocket connection and then never reads from
it again. It sends no pongs for the server's pings, and everything the server
sends piles up: first in the client's small receive buffer, then in the
server's kernel send buffer, and finally in the server's write buffer in
memory. That is what a frozen browser tab, a suspended laptop or a client
stuck behind a dead network link looks like to a server. Use it to watch
keepalive close such a connection with 1011 when it is idle, or
``max_buffer`` drop it when the server keeps sending to it. When data waits
for it but no more is sent, ``stall_timeout`` drops it::

    from rtkit.faults import stalled_client

    async with stalled_client(server.ws_url) as stalled:
        await stalled.send('{"type": "subscribe"}')
        await asyncio.sleep(3)
        print(await stalled.closed_by_server())

The client speaks the protocol through websockets' sans-I/O
:class:`~websockets.client.ClientProtocol` on a plain TCP socket, so only
:meth:`StalledClient.read` and :meth:`StalledClient.closed_by_server` read
from the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import WebSocketURI, parse_uri

__all__ = ["ServerClosure", "StalledClient", "stalled_client"]

RECEIVE_CHUNK = 65536


@dataclass(frozen=True)
class ServerClosure:
    """The data and close frame a stalled client found once it read again."""

    closed: bool
    """Whether the server closed the TCP connection before the timeout."""
    code: int | None
    """The code of the server's close frame, or ``None`` if no close frame
    arrived, as when the server aborted the connection (the client sees 1006)."""
    reason: str
    """The reason of the server's close frame, empty without one."""
    messages: int
    """Text and binary messages received after the opening handshake."""
    bytes_received: int
    """Bytes read by :meth:`StalledClient.read` and
    :meth:`StalledClient.closed_by_server`, without those that arrived
    together with the handshake response."""


class StalledClient:
    """A WebSocket client that stopped reading, made by :func:`stalled_client`.

    It may still send: a stalled reader can subscribe first, then let the
    events pile up.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: ClientProtocol,
        response: Response,
        messages: int = 0,
    ) -> None:
        self.sock = sock
        """The client's TCP socket, non-blocking."""
        self.protocol = protocol
        """websockets' sans-I/O state of the connection."""
        self.response = response
        """The server's handshake response (status 101)."""
        self.opened_at = time.monotonic()
        """:func:`time.monotonic` when the opening handshake completed."""
        self._bytes_received = 0
        self._messages = messages

    def elapsed(self) -> float:
        """Return the seconds since the opening handshake completed."""
        return time.monotonic() - self.opened_at

    async def send(self, text: str) -> None:
        """Send ``text`` as one text message.

        Raises:
            OSError: if the connection is broken, for example after the
                server reset it.
        """
        self.protocol.send_text(text.encode())
        await self._flush()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        for data in self.protocol.data_to_send():
            if data:
                await loop.sock_sendall(self.sock, data)

    async def read(self, max_bytes: int = RECEIVE_CHUNK) -> int:
        """Read up to ``max_bytes`` once and return how many bytes arrived.

        A client that calls this now and then is a slow reader, not a stalled
        one. It waits until data arrives, so bound it with a timeout. It
        returns 0 once the server has closed the connection.
        """
        loop = asyncio.get_running_loop()
        data = await loop.sock_recv(self.sock, max_bytes)
        if data:
            self._receive(data)
        return len(data)

    def _receive(self, data: bytes) -> None:
        self._bytes_received += len(data)
        self.protocol.receive_data(data)
        self._messages += _count_messages(self.protocol.events_received())

    async def closed_by_server(self, timeout: float = 5.0) -> ServerClosure:
        """Read everything the server sent, until it closes the connection.

        This ends the stall: the client reads again, so the server's pending
        data, its close frame if it sent one, and its end of the TCP
        connection can arrive. The client does not reply to anything.

        Args:
            timeout: seconds to keep reading; the server may keep the
                connection open.

        Returns:
            What arrived, and whether the connection ended within
            ``timeout``.
        """
        loop = asyncio.get_running_loop()
        closed = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        data = await loop.sock_recv(self.sock, RECEIVE_CHUNK)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        closed = True
                        self.protocol.receive_eof()
                        break
                    self._receive(data)
        close = self.protocol.close_rcvd
        return ServerClosure(
            closed=closed,
            code=close.code if close is not None else None,
            reason=close.reason if close is not None else "",
            messages=self._messages,
            bytes_received=self._bytes_received,
        )


def _count_messages(events: list[Frame | Response]) -> int:
    """Return how many complete text or binary messages ``events`` contain."""
    data_opcodes = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
    return sum(
        1
        for event in events
        if isinstance(event, Frame) and event.opcode in data_opcodes and event.fin
    )


@contextlib.asynccontextmanager
async def stalled_client(
    ws_url: str,
    *,
    origin: str | None = None,
    rcvbuf: int = 4096,
    open_timeout: float = 10.0,
) -> AsyncIterator[StalledClient]:
    """Open a WebSocket connection to ``ws_url`` that never reads again.

    The opening handshake is done over a raw TCP socket with a small receive
    buffer, so the server's data backs up quickly. Whatever the server sends
    after the handshake stays unread: its messages, its keepalive pings and
    its close frame. The socket is closed when the block exits.

    Args:
        ws_url: a ``ws://`` URL, such as ``server.ws_url``.
        origin: the ``Origin`` header to send; ``None`` sends none, as a
            non-browser client does.
        rcvbuf: the socket's receive buffer (``SO_RCVBUF``) in bytes. The
            kernel may round it up; Linux doubles it.
        open_timeout: seconds allowed for connecting and the handshake.

    Raises:
        ValueError: if ``ws_url`` is not a ``ws://`` URL.
        websockets.exceptions.InvalidHandshake: if the server rejects the
            handshake, for example with 403 for a foreign ``Origin``.
        TimeoutError: if the handshake takes longer than ``open_timeout``.
        OSError: if the connection fails.
    """
    uri = parse_uri(ws_url)
    if uri.secure:
        raise ValueError(
            f"invalid URL: {ws_url!r}; stalled_client speaks plain TCP, so use a "
            "ws:// URL"
        )
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        # Set before connecting, because the receive window is negotiated then.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        async with asyncio.timeout(open_timeout):
            await loop.sock_connect(sock, address)
            stalled = await _handshake(sock, uri, origin, ws_url)
        yield stalled
    finally:
        sock.close()


async def _handshake(
    sock: socket.socket, uri: WebSocketURI, origin: str | None, ws_url: str
) -> StalledClient:
    """Send the opening handshake and read the response, nothing more."""
    loop = asyncio.get_running_loop()
    protocol = ClientProtocol(
        uri,
        origin=Origin(origin) if origin is not None else None,
        max_size=None,
    )
    protocol.send_request(protocol.connect())
    for data in protocol.data_to_send():
        await loop.sock_sendall(sock, data)
    response: Response | None = None
    messages = 0
    while response is None:
        data = await loop.sock_recv(sock, RECEIVE_CHUNK)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        # A greeting may arrive in the same read as the response.
        messages += _count_messages(events)
        response = next((e for e in events if isinstance(e, Response)), None)
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        if not data and response is None:
            raise ConnectionError(
                f"connection to {ws_url} closed during the opening handshake"
            )
    assert protocol.state is State.OPEN
    return StalledClient(sock, protocol, response, messages)
