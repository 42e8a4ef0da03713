"""The classic echo on real sockets, and bad input that must not hurt others."""

from __future__ import annotations

import asyncio
import json
import struct

from websockets.asyncio.client import ClientConnection, connect

import rtkit

from .conftest import run, timeout


async def receive(client: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(client.recv(), timeout(2))


def test_echo_greets_then_echoes() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                assert await receive(client) == "Welcome to the WebSocket server!"
                await client.send("Hello Server!")
                assert await receive(client) == "Server received: Hello Server!"
                plain = [
                    "",
                    "ünïcødé ✓",
                    "x" * 10_000,
                    "[1, 2]",
                    "not {json}",
                ]
                for text in plain:
                    await client.send(text)
                    assert await receive(client) == f"Server received: {text}"

    run(scenario())


def test_echo_binary_frame_gets_error_and_stays_open() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await receive(client)
                await client.send(b"\x00\x01\x02")
                error = json.loads(await receive(client))
                assert error["type"] == "error"
                assert error["code"] == "binary_unsupported"
                assert "received 3 bytes" in error["message"]
                await client.send("still here")
                assert await receive(client) == "Server received: still here"

    run(scenario())


def test_echo_oversize_closes_1009_others_served() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_size=1024) as server:
            async with (
                connect(server.ws_url, open_timeout=timeout(2)) as bystander,
                connect(server.ws_url, open_timeout=timeout(2)) as sender,
            ):
                await receive(bystander)
                await receive(sender)
                await sender.send("x" * 2000)
                await asyncio.wait_for(sender.wait_closed(), timeout(2))
                assert sender.close_code == 1009
                await bystander.send("after")
                assert await receive(bystander) == "Server received: after"
            async with connect(server.ws_url, open_timeout=timeout(2)) as newcomer:
                assert await receive(newcomer) == rtkit.WELCOME

    run(scenario())
    assert (
        "disconnected: server closed with 1009 (message too big)"
        in rtkit.recent_logs(20)
    )


def test_echo_abrupt_disconnect_others_served() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as bystander:
                await receive(bystander)
                dropped = await connect(server.ws_url, open_timeout=timeout(2))
                await receive(dropped)
                dropped.transport.abort()
                await bystander.send("after abort")
                assert await receive(bystander) == "Server received: after abort"
                for _ in range(50):
                    if len(server.connections) == 1:
                        break
                    await asyncio.sleep(0.02)
                assert len(server.connections) == 1

    run(scenario())


def test_echo_invalid_utf8_closes_1007_server_survives() -> None:
    """A text frame with invalid UTF-8, written by hand, closes only its sender."""

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(2))
            assert head.startswith(b"HTTP/1.1 101")
            payload = b"\xff\xfe"
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            writer.write(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
            # The server sends the welcome, then a close frame with 1007, then
            # closes the TCP connection, which ends read().
            data = await asyncio.wait_for(reader.read(), timeout(2))
            close_at = data.index(b"\x88", len(rtkit.WELCOME))
            assert struct.unpack("!H", data[close_at + 2 : close_at + 4])[0] == 1007
            writer.close()
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                assert await receive(client) == rtkit.WELCOME

    run(scenario())


def test_echo_garbage_request_server_survives() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            for garbage in [b"\x16\x03\x01\x00\xff\r\n\r\n", b"NOT HTTP\r\n\r\n", b""]:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(garbage)
                if not garbage:
                    writer.transport.abort()
                else:
                    await asyncio.wait_for(reader.read(), timeout(2))
                    writer.close()
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                assert await receive(client) == rtkit.WELCOME

    run(scenario())


def test_echo_many_clients_each_get_own_replies() -> None:
    async def one_client(url: str, index: int) -> list[str | bytes]:
        async with connect(url, open_timeout=timeout(2)) as client:
            replies = [await receive(client)]
            for n in range(5):
                await client.send(f"{index}-{n}")
                replies.append(await receive(client))
            return replies

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            results = await asyncio.gather(
                *(one_client(server.ws_url, i) for i in range(20))
            )
            for index, replies in enumerate(results):
                expected = [rtkit.WELCOME] + [
                    f"Server received: {index}-{n}" for n in range(5)
                ]
                assert replies == expected

    run(scenario())
