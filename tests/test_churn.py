"""Broadcast under churn: clients come and go, one never reads, others are served."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import socket

import pytest
from websockets.asyncio.client import ClientConnection, connect

import rtkit
from rtkit.clients import Backoff, WebSocketSubscriber

from .conftest import run, timeout, until

MESSAGES = 30
RATE = 10.0


async def join(server: rtkit.Server, name: str) -> ClientConnection:
    client = await connect(server.ws_url, open_timeout=timeout(2), max_queue=None)
    await asyncio.wait_for(client.recv(), timeout(2))
    await client.send(json.dumps({"type": "join", "channel": "lobby", "name": name}))
    return client


async def join_without_reading(server: rtkit.Server, name: str) -> ClientConnection:
    """Join ``lobby`` as a client that never reads.

    Once 16 messages wait unread, websockets stops reading the socket. Small
    socket buffers on both ends make the rest wait in the server's write
    buffer at once, instead of in the operating system's buffers first.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    client = await connect(
        server.ws_url, sock=sock, open_timeout=timeout(2), max_queue=16
    )
    await client.send(json.dumps({"type": "join", "channel": "lobby", "name": name}))
    await until(lambda: any(c.name == name for c in server.push.clients.values()))
    for connection, info in server.push.clients.items():
        if info.name == name:
            server_socket = connection.transport.get_extra_info("socket")
            server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client


async def collect_texts(client: ClientConnection, count: int) -> list[str]:
    """Receive until ``count`` chat events have arrived; return their texts."""
    texts: list[str] = []
    while len(texts) < count:
        message = json.loads(await asyncio.wait_for(client.recv(), timeout(5)))
        if message["type"] == "event":
            texts.append(message["data"]["text"])
    return texts


async def churn(server: rtkit.Server, stop: asyncio.Event, seed: int) -> int:
    """Connect and disconnect clients until ``stop``; return how many came."""
    rng = random.Random(seed)
    count = 0
    while not stop.is_set():
        client = await join(server, f"churn-{seed}-{count}")
        count += 1
        await asyncio.sleep(rng.uniform(0, 0.2))
        if rng.random() < 0.5:
            client.transport.abort()
        else:
            await client.close()
    return count


@pytest.mark.slow
def test_broadcast_churn_healthy_clients_get_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")

    async def scenario() -> tuple[int, int]:
        async with rtkit.Server(port=0, ping_interval=None) as server:
            healthy = [await join(server, f"healthy-{i}") for i in range(3)]
            stalled = await connect(server.ws_url, open_timeout=timeout(2))
            await stalled.recv()
            await stalled.send(
                json.dumps({"type": "join", "channel": "lobby", "name": "stalled"})
            )
            # The stalled client stops reading: its socket buffers fill up.
            stalled.transport.pause_reading()
            readers = [asyncio.create_task(collect_texts(c, MESSAGES)) for c in healthy]
            stop = asyncio.Event()
            churners = [asyncio.create_task(churn(server, stop, s)) for s in range(17)]
            for n in range(MESSAGES):
                server.publish(
                    {"from": {"id": "t", "name": "test"}, "text": f"m{n}"}, "lobby"
                )
                await asyncio.sleep(1 / RATE)
            stop.set()
            joined = sum(await asyncio.gather(*churners))
            results = await asyncio.gather(*readers)
            expected = [f"m{n}" for n in range(MESSAGES)]
            for texts in results:
                assert texts == expected
            # Once the churn is over, the server keeps state for the four clients
            # that stayed and nothing for the ones that left.
            await until(lambda: len(server.push.clients) == 4, units=5)
            assert len(server.push.subscribers["lobby"]) == 4
            assert len(server.push.members("lobby")) == 4
            assert len(server.hub.stream("lobby").history) == MESSAGES
            stalled_server_side = next(
                c for c, info in server.push.clients.items() if info.name == "stalled"
            )
            buffered = stalled_server_side.transport.get_write_buffer_size()
            for client in healthy:
                await client.close()
            stalled.transport.abort()
            return joined, buffered

    joined, buffered = run(scenario(), units=60)
    assert joined >= 20
    # broadcast() never waits on the stalled client. What it could not write
    # waits in that one connection's buffer: at most every message once.
    assert buffered <= MESSAGES * 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert not any(r.exc_info for r in caplog.records)


def test_slow_client_dropped_over_max_buffer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")

    async def scenario() -> None:
        async with rtkit.Server(port=0, max_buffer=64_000) as server:
            reader = await join(server, "reader")
            stalled = await join_without_reading(server, "stalled")
            # Random text, because permessage-deflate would shrink repeated
            # characters to almost nothing.
            big = base64.b64encode(os.urandom(30_000)).decode()
            received = asyncio.create_task(collect_texts(reader, 200))
            for _ in range(200):
                server.publish(
                    {"from": {"id": "t", "name": "test"}, "text": big}, "lobby"
                )
                await asyncio.sleep(0.005)
            texts = await received
            assert len(texts) == 200
            await until(lambda: len(server.push.clients) == 1, units=5)
            assert [c.name for c in server.push.clients.values()] == ["reader"]
            await reader.close()
            stalled.transport.abort()

    run(scenario(), units=30)
    drops = [
        r.getMessage() for r in caplog.records if "dropped client" in r.getMessage()
    ]
    assert len(drops) == 1
    assert "over max_buffer 64000" in drops[0]


def test_stop_with_stalled_client_finishes() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0, close_timeout=0.5, max_buffer=2**30)
        stalled = await join_without_reading(server, "stalled")
        for _ in range(100):
            server.publish(
                {"from": {"id": "t", "name": "t"}, "text": "y" * 50_000}, "lobby"
            )
        await asyncio.sleep(0.2)
        await asyncio.wait_for(server.stop(), timeout(5))
        assert not server.is_serving
        stalled.transport.abort()

    run(scenario(), units=20)


def test_subscribers_resume_under_random_drops() -> None:
    """Ten reconnecting subscribers, dropped at random, each get every event once."""

    async def scenario() -> None:
        rng = random.Random(5)
        async with rtkit.Server(port=0) as server:
            subscribers = [
                WebSocketSubscriber(
                    server.url,
                    name=f"subscriber {i}",
                    reconnect=True,
                    backoff=Backoff(base=0.02, cap=0.1, rng=random.Random(i)),
                )
                for i in range(10)
            ]
            for subscriber in subscribers:
                subscriber.start()
            await until(lambda: all(s.connected.is_set() for s in subscribers))
            server.start_source(rate=200)
            drops = 0
            for _ in range(20):
                await asyncio.sleep(rng.uniform(0, 0.1))
                connections = server.connections
                if connections:
                    rng.choice(connections).transport.abort()
                    drops += 1
            await server.stop_source()
            last = server.hub.latest
            # Give the last drop time to reach its client, which may already
            # have every event and still look connected.
            await asyncio.sleep(0.1)
            await until(
                lambda: all(
                    s.follower.since == last and s.connected.is_set()
                    for s in subscribers
                ),
                units=5,
            )
            for subscriber in subscribers:
                follower = await subscriber.stop()
                assert [d.seq for d in follower.deliveries] == list(range(1, last + 1))
                assert follower.duplicates == 0
                assert follower.missed == 0
                assert subscriber.reconnects == len(subscriber.outages)
            assert sum(s.reconnects for s in subscribers) == drops

    run(scenario(), units=20)
