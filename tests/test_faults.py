"""Peers that stop reading: keepalive closes them, max_buffer bounds them,
and stall_timeout drops them once no more is sent."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidStatus

import rtkit
from rtkit.faults import StalledClient, stalled_client
from rtkit.hub import Hub
from rtkit.push import PushHandler

from .conftest import run, timeout, until

EVENT_TEXT = "x" * 2000
"""Payload of each event in the slow-consumer tests, about 2 KB on the wire."""


def server_side(server: rtkit.Server, stalled: StalledClient) -> ServerConnection:
    """Return the server's end of the stalled client's connection."""
    port = stalled.sock.getsockname()[1]
    for connection in server.push.clients:
        if connection.remote_address[1] == port:
            return connection
    raise AssertionError(f"no connection from port {port}")


def cap_send_buffer(connection: ServerConnection, size: int = 16384) -> None:
    """Cap the kernel send buffer of ``connection`` on the server.

    Linux grows it up to 4 MiB (net.ipv4.tcp_wmem), so without a cap a short
    test would only fill kernel memory, never the server's write buffer.
    """
    sock = connection.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def subscribed_reader(server: rtkit.Server) -> ClientConnection:
    client = await connect(server.ws_url, open_timeout=timeout(2))
    assert await client.recv() == rtkit.WELCOME
    await client.send(json.dumps({"type": "subscribe"}))
    assert json.loads(await client.recv())["type"] == "subscribed"
    return client


async def subscribe_stalled(server: rtkit.Server, stalled: StalledClient) -> str:
    """Subscribe ``stalled`` to the events; return its client id."""
    await stalled.send(json.dumps({"type": "subscribe"}))
    connection = server_side(server, stalled)
    client = server.push.clients[connection]
    await until(lambda: bool(client.subscriptions))
    cap_send_buffer(connection)
    return client.id


async def collect_seqs(client: ClientConnection, count: int) -> list[int]:
    seqs = []
    while len(seqs) < count:
        message = json.loads(await asyncio.wait_for(client.recv(), timeout(2)))
        seqs.append(message["seq"])
    return seqs


async def publish_and_watch(server: rtkit.Server, count: int, stalled_id: str) -> int:
    """Publish ``count`` events; return the stalled client's largest buffer."""
    largest = 0
    for _ in range(count):
        server.publish(EVENT_TEXT)
        for row in server.push.client_table():
            if row["id"] == stalled_id:
                largest = max(largest, row["buffered"])
        await asyncio.sleep(0.001)
    return largest


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_stalled_client_closed_by_keepalive(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")
    interval, ping_timeout, close_timeout = 0.5, 0.5, 0.5
    slack = timeout(1)

    async def scenario() -> None:
        async with rtkit.Server(
            port=0,
            ping_interval=interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        ) as server:
            async with stalled_client(server.ws_url) as stalled:
                connection = server_side(server, stalled)
                client_id = server.push.clients[connection].id
                await until(
                    lambda: connection.protocol.close_sent is not None,
                    units=interval + ping_timeout + slack,
                )
                close_sent_after = stalled.elapsed()
                await until(
                    lambda: not server.push.clients,
                    units=close_timeout + slack,
                )
                gone_after = stalled.elapsed()
                closure = await stalled.closed_by_server(timeout(2))

            assert connection.protocol.close_sent.code == 1011
            # The first ping leaves after ping_interval, so no sooner.
            assert interval <= close_sent_after <= interval + ping_timeout + slack
            # The peer never replies to the close frame, so the server waits
            # close_timeout before it drops the TCP connection.
            limit = interval + ping_timeout + close_timeout + slack
            assert gone_after <= limit
            assert closure.closed
            assert closure.code == 1011
            assert closure.reason == "keepalive ping timeout"
            assert closure.messages == 1  # the welcome
            lines = messages(caplog, f"client {client_id} disconnected")
            assert len(lines) == 1
            assert "1011" in lines[0]
            assert "keepalive ping timeout" in lines[0]

    run(scenario())


def test_slow_consumer_dropped_fast_client_gets_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.push")
    max_buffer = 64_000
    count = 300

    async def scenario() -> None:
        async with rtkit.Server(
            port=0, max_buffer=max_buffer, slow_policy="drop", close_timeout=0.5
        ) as server:
            fast = await subscribed_reader(server)
            async with stalled_client(server.ws_url) as stalled:
                stalled_id = await subscribe_stalled(server, stalled)
                received = asyncio.create_task(collect_seqs(fast, count))
                largest = await publish_and_watch(server, count, stalled_id)
                assert await received == list(range(1, count + 1))
                await until(lambda: len(server.push.clients) == 1)
                closure = await stalled.closed_by_server(timeout(2))
            await fast.close()

        assert largest <= max_buffer + len(EVENT_TEXT) + 200
        drops = messages(caplog, "dropped client")
        assert len(drops) == 1
        assert stalled_id in drops[0]
        assert f"over max_buffer {max_buffer}" in drops[0]
        # Aborted without a close frame: the client sees 1006.
        assert closure.closed
        assert closure.code is None
        assert closure.messages < count

    run(scenario(), units=20)


def test_slow_consumer_discard_keeps_client_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.push")
    max_buffer = 64_000
    count = 300

    async def scenario() -> None:
        async with rtkit.Server(
            port=0, max_buffer=max_buffer, slow_policy="discard", close_timeout=0.5
        ) as server:
            fast = await subscribed_reader(server)
            async with stalled_client(server.ws_url) as stalled:
                stalled_id = await subscribe_stalled(server, stalled)
                received = asyncio.create_task(collect_seqs(fast, count))
                largest = await publish_and_watch(server, count, stalled_id)
                assert await received == list(range(1, count + 1))

                rows = {row["id"]: row for row in server.push.client_table()}
                assert stalled_id in rows
                discarded = rows[stalled_id]["discarded"]
                assert discarded > count // 2
                assert server.push.totals["discarded"] == discarded
                assert len(messages(caplog, "skipping messages for client")) == 1

                # Reading again drains the buffer, so the next event goes out
                # and the episode ends.
                closure = await stalled.closed_by_server(0.5)
                assert not closure.closed
                assert closure.messages < count
                server.publish("after the gap")
                await until(lambda: bool(messages(caplog, "caught up")))
            await fast.close()

        assert largest <= max_buffer + len(EVENT_TEXT) + 200
        skips = messages(caplog, "skipping messages for client")
        assert len(skips) == 1
        assert stalled_id in skips[0]
        caught_up = messages(caplog, "caught up")
        assert caught_up == [
            f"client {stalled_id} caught up after {discarded} discarded messages"
        ]

    run(scenario(), units=20)


def test_slow_consumer_discard_dropped_after_max_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.push")
    max_buffer = 64_000
    max_behind = 0.3

    async def scenario() -> None:
        async with rtkit.Server(
            port=0, max_buffer=max_buffer, slow_policy="discard", close_timeout=0.5
        ) as server:
            server.push.max_behind = max_behind
            # Long enough that only max_behind can drop the client.
            server.push.stall_timeout = 30
            async with stalled_client(server.ws_url) as stalled:
                stalled_id = await subscribe_stalled(server, stalled)
                for _ in range(100):
                    server.publish(EVENT_TEXT)
                behind_since = time.monotonic()
                # No event follows: the stream is quiet from here on.
                await until(
                    lambda: not server.push.clients, units=max_behind + timeout(1)
                )
                dropped_after = time.monotonic() - behind_since
                closure = await stalled.closed_by_server(timeout(2))
        assert closure.closed
        assert closure.code is None
        assert dropped_after >= max_behind
        drops = messages(caplog, "behind for more than max_behind 0.3 s")
        assert len(drops) == 1
        assert stalled_id in drops[0]
        assert not messages(caplog, "none sent for")

    run(scenario(), units=20)


def write_buffer(connection: ServerConnection) -> tuple[int, int]:
    """Return the bytes in the write buffer of ``connection`` and its low-water mark."""
    transport = connection.transport
    low_water, _ = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size(), low_water


@pytest.mark.parametrize("slow_policy", ["drop", "discard"])
def test_stalled_client_on_quiet_stream_dropped(
    slow_policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")
    stall_timeout = 0.5
    slack = timeout(1)

    async def scenario() -> None:
        async with rtkit.Server(
            port=0, max_connections=1, slow_policy=slow_policy, close_timeout=0.5
        ) as server:
            server.push.stall_timeout = stall_timeout
            async with stalled_client(server.ws_url) as stalled:
                stalled_id = await subscribe_stalled(server, stalled)
                connection = server_side(server, stalled)
                # About 200 KB, under max_buffer (1 MiB), so slow_policy never
                # applies; then the stream stays quiet.
                for _ in range(100):
                    server.publish(EVENT_TEXT)
                quiet_since = time.monotonic()
                buffered, low_water = write_buffer(connection)
                assert buffered > low_water

                await asyncio.sleep(stall_timeout / 2)
                assert server.push.clients, "dropped before stall_timeout"
                await until(
                    lambda: not server.push.clients, units=stall_timeout + slack
                )
                dropped_after = time.monotonic() - quiet_since

                # The max_connections slot is free again.
                other = await connect(server.ws_url, open_timeout=timeout(2))
                assert await other.recv() == rtkit.WELCOME
                await other.close()
                closure = await stalled.closed_by_server(timeout(2))

        assert stall_timeout <= dropped_after <= stall_timeout + slack
        assert closure.closed
        assert closure.code is None
        drops = messages(caplog, "none sent for")
        assert len(drops) == 1
        assert f"dropped client {stalled_id} from 127.0.0.1:" in drops[0]
        assert f"{buffered} bytes waiting to be sent" in drops[0]
        assert f"(stall_timeout {stall_timeout:g} s)" in drops[0]
        stalled_for = float(re.search(r"none sent for ([\d.]+) s", drops[0])[1])
        assert stalled_for >= stall_timeout
        assert server.push.totals["discarded"] == 0

    run(scenario(), units=20)


def test_stall_timeout_defaults_to_keepalive(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.push")
    interval, ping_timeout = 0.3, 0.3
    slack = timeout(1)

    async def scenario() -> None:
        async with rtkit.Server(
            port=0, ping_interval=interval, ping_timeout=ping_timeout, close_timeout=0.5
        ) as server:
            assert server.push.stall_timeout is None
            async with stalled_client(server.ws_url) as stalled:
                await subscribe_stalled(server, stalled)
                for _ in range(100):
                    server.publish(EVENT_TEXT)
                quiet_since = time.monotonic()
                # Keepalive's ping waits behind the unsent events, so only the
                # watchdog can drop this client.
                await until(
                    lambda: not server.push.clients,
                    units=interval + ping_timeout + slack,
                )
                dropped_after = time.monotonic() - quiet_since
                closure = await stalled.closed_by_server(timeout(2))

        assert dropped_after >= interval + ping_timeout
        assert closure.closed
        assert closure.code is None
        drops = messages(caplog, "none sent for")
        assert len(drops) == 1
        assert "(stall_timeout 0.6 s)" in drops[0]

    run(scenario(), units=20)


def test_slow_reader_not_dropped_while_draining(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.push")
    # TCP sends to a reader with a 4 KiB receive buffer in bursts, with pauses
    # of up to about 0.4 s seen on loopback, so a shorter timeout would drop
    # this client although it reads.
    stall_timeout = 0.8
    duration = 2.0

    async def scenario() -> None:
        async with rtkit.Server(port=0, close_timeout=0.5) as server:
            server.push.stall_timeout = stall_timeout
            async with stalled_client(server.ws_url) as slow:
                await subscribe_stalled(server, slow)
                connection = server_side(server, slow)
                publishing = True

                async def read_slowly() -> None:
                    # Stopped by the flag, not cancelled: a cancelled read
                    # could lose bytes and break the frame stream.
                    while publishing:
                        await slow.read(1024)
                        await asyncio.sleep(0.01)

                reader = asyncio.create_task(read_slowly())
                # Publish faster than the client reads, so its buffer grows
                # although it drains all the time.
                published = 0
                sizes = []
                started = time.monotonic()
                while time.monotonic() - started < duration:
                    server.publish(EVENT_TEXT)
                    published += 1
                    sizes.append(write_buffer(connection))
                    await asyncio.sleep(0.008)
                publishing = False
                await asyncio.wait_for(reader, timeout(2))
                assert server.push.clients, "the slow reader was dropped"
                # Over the low-water mark for the second half, which is
                # longer than stall_timeout, and never over max_buffer.
                second_half = sizes[len(sizes) // 2 :]
                assert all(size > low for size, low in second_half)
                assert max(size for size, _ in sizes) < server.push.max_buffer

                # The welcome, the confirmation and every event arrive.
                expected = 2 + published
                async with asyncio.timeout(timeout(2)):
                    closure = await slow.closed_by_server(0.1)
                    while closure.messages < expected and not closure.closed:
                        closure = await slow.closed_by_server(0.1)

        assert not closure.closed
        assert closure.messages == expected
        assert not messages(caplog, "dropped client")

    run(scenario(), units=20)


def test_drop_burst_skips_aborted_connection(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.WARNING)
    max_buffer = 64_000
    count = 3000

    async def scenario() -> dict[str, Any]:
        async with rtkit.Server(
            port=0, max_buffer=max_buffer, slow_policy="drop", close_timeout=0.5
        ) as server:
            async with stalled_client(server.ws_url) as stalled:
                await subscribe_stalled(server, stalled)
                client = server.push.clients[server_side(server, stalled)]
                out_before = server.push.totals["out"]
                # One synchronous burst: the abort cannot complete before it ends.
                for _ in range(count):
                    server.publish(EVENT_TEXT)
                out = server.push.totals["out"] - out_before
                await until(lambda: not server.push.clients)
                closure = await stalled.closed_by_server(timeout(2))
        return {"client": client, "out": out, "closure": closure}

    outcome = run(scenario(), units=20)
    client, out, closure = outcome["client"], outcome["out"], outcome["closure"]
    assert 0 < out < count
    # Written before the abort: max_buffer, plus the capped kernel buffers.
    assert out * len(EVENT_TEXT) < 2 * max_buffer
    assert client.messages_out == 2 + out  # the welcome and the confirmation
    assert closure.messages <= client.messages_out
    assert len(messages(caplog, "dropped client")) == 1
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert capfd.readouterr().err == ""


def test_push_handler_invalid_max_behind_raises() -> None:
    with pytest.raises(ValueError, match="invalid max_behind: 0"):
        PushHandler(Hub(), max_behind=0)


def test_stalled_client_sees_shutdown_close() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0, close_timeout=0.2)
        try:
            async with stalled_client(server.ws_url) as stalled:
                await server.stop()
                closure = await stalled.closed_by_server(timeout(2))
        finally:
            await server.stop()
        assert closure.closed
        assert closure.code == 1001
        assert closure.messages == 1
        assert closure.bytes_received > 0

    run(scenario())


def test_stalled_client_without_server_close_times_out() -> None:
    async def scenario() -> dict[str, Any]:
        async with rtkit.Server(port=0) as server:
            async with stalled_client(server.ws_url) as stalled:
                started = time.monotonic()
                closure = await stalled.closed_by_server(0.2)
                waited = time.monotonic() - started
        return {"closure": closure, "waited": waited}

    outcome = run(scenario())
    assert not outcome["closure"].closed
    assert outcome["closure"].code is None
    assert outcome["closure"].messages == 1
    assert 0.2 <= outcome["waited"] <= timeout(2)


def test_stalled_client_foreign_origin_rejected() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            with pytest.raises(InvalidStatus) as info:
                async with stalled_client(
                    server.ws_url, origin="http://attacker.invalid"
                ):
                    pass
            assert info.value.response.status_code == 403

    run(scenario())


def test_stalled_client_wss_url_raises() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="use a ws:// URL"):
            async with stalled_client("wss://127.0.0.1:1/ws"):
                pass

    run(scenario())
