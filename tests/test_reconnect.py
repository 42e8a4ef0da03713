"""WebSocketSubscriber reconnects with backoff and resumes without loss."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import rtkit
from rtkit.clients import Backoff, WebSocketSubscriber

from .conftest import run, timeout, until


def test_backoff_grows_capped_with_full_jitter() -> None:
    backoff = Backoff(base=1, cap=8, rng=random.Random(3))
    ceilings = [1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert 0 <= delay <= ceiling
    backoff.reset()
    assert backoff.attempt == 0
    delays = [Backoff(base=1, rng=random.Random(i)).next_delay() for i in range(200)]
    assert 0.4 <= statistics.fmean(delays) <= 0.6


def test_subscriber_resumes_after_drop_without_loss() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            backoff = Backoff(base=0.05, cap=0.2)
            subscriber = WebSocketSubscriber(
                server.url, reconnect=True, backoff=backoff
            )
            subscriber.start()
            await asyncio.wait_for(subscriber.connected.wait(), timeout(2))
            server.start_source(rate=200)
            for _ in range(3):
                await asyncio.sleep(0.2)
                for connection in server.connections:
                    connection.transport.abort()
            await asyncio.sleep(0.3)
            await server.stop_source()
            last = server.hub.latest
            follower = subscriber.follower
            await until(lambda: follower.since >= last, units=5)
            await subscriber.stop()
            seqs = [delivery.seq for delivery in follower.deliveries]
            assert seqs == list(range(1, last + 1))
            assert follower.duplicates == 0
            assert follower.missed == 0
            assert subscriber.reconnects >= 3

    run(scenario(), units=20)


def test_subscriber_notices_restart_and_follows_new_epoch() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = WebSocketSubscriber(
                server.url, reconnect=True, backoff=Backoff(base=0.05)
            )
            subscriber.start()
            await asyncio.wait_for(subscriber.connected.wait(), timeout(2))
            server.publish("old")
            await until(lambda: subscriber.follower.since == 1)
            await server.restart()
            server.publish("new 1")
            server.publish("new 2")
            follower = subscriber.follower
            await until(lambda: follower.restarts == 1 and follower.since == 2, 5)
            await subscriber.stop()
            data = [delivery.seq for delivery in follower.deliveries]
            assert data == [1, 1, 2]

    run(scenario(), units=20)


def test_many_subscribers_spread_reconnects() -> None:
    """Full jitter spreads 50 reconnections instead of a thundering herd."""

    async def scenario() -> float:
        async with rtkit.Server(port=0) as server:
            subscribers = [
                WebSocketSubscriber(
                    server.url, reconnect=True, backoff=Backoff(base=1.0)
                )
                for _ in range(50)
            ]
            for subscriber in subscribers:
                subscriber.start()
            await until(lambda: len(server.connections) == 50, units=5)
            aborted_at = time.time()
            for connection in server.connections:
                connection.transport.abort()

            # The server keeps the last 50 handshakes: the reconnections.
            def reconnected() -> list[float]:
                return [h.at for h in server.handshakes if h.at > aborted_at]

            await until(lambda: len(reconnected()) == 50, units=10)
            times = sorted(reconnected())
            for subscriber in subscribers:
                await subscriber.stop()
            return times[-1] - times[0]

    spread = run(scenario(), units=30)
    # Delays are uniform in [0, 1 s]: 50 of them span most of that second.
    assert spread > 0.5
