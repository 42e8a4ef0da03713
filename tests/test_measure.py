"""The clients and the side-by-side harness on a real server, with generous bounds."""

from __future__ import annotations

import asyncio
import statistics

import pytest

import rtkit
from rtkit.clients import Follower, LongPoller, ShortPoller, WebSocketSubscriber
from rtkit.measure import compare_transports, format_table, measure_poll_load

from .conftest import run


def test_follower_counts_gaps_and_duplicates() -> None:
    follower = Follower("test")
    follower.accept_epoch("e1")
    for seq in [1, 2, 2, 5]:
        follower.accept_event({"seq": seq, "ts": 0.0}, 1.0)
    assert [d.seq for d in follower.deliveries] == [1, 2, 5]
    assert follower.duplicates == 1
    assert follower.missed == 2
    follower.accept_epoch("e2")
    assert follower.restarts == 1
    assert follower.since == 0


def test_follower_poll_missed_counted_once() -> None:
    follower = Follower("test")
    body = {
        "epoch": "e1",
        "seq": 10,
        "missed": 7,
        "events": [{"seq": s, "ts": 0.0} for s in (8, 9, 10)],
    }
    follower.accept_poll(body, 1.0)
    assert follower.missed == 7
    assert follower.since == 10
    assert len(follower.deliveries) == 3


def test_clients_reject_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="invalid server URL: 'ftp://x'"):
        ShortPoller("ftp://x", 1)
    with pytest.raises(ValueError, match="invalid interval: 0"):
        ShortPoller("http://127.0.0.1:1/", 0)
    with pytest.raises(ValueError, match="invalid wait: 31"):
        LongPoller("http://127.0.0.1:1/", 31)


def test_clients_follow_restart_with_new_epoch() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            clients = [
                ShortPoller(server.url, 0.05),
                LongPoller(server.url, 5),
            ]
            for client in clients:
                client.start()
            server.publish("first epoch")
            await asyncio.sleep(0.3)
            await server.restart()
            server.publish("second epoch")
            # The long poller waits 1 s after the failed request of the restart.
            for _ in range(100):
                if all(len(c.follower.deliveries) == 2 for c in clients):
                    break
                await asyncio.sleep(0.05)
            for client in clients:
                follower = await client.stop()
                assert [d.seq for d in follower.deliveries] == [1, 1]
                assert follower.restarts == 1
                assert follower.missed == 0

    run(scenario())


def test_compare_transports_short_poll_near_half_interval() -> None:
    """Short polling's mean latency is about interval / 2; push is far below."""

    async def scenario() -> rtkit.measure.Comparison:
        async with rtkit.Server(port=0) as server:
            return await compare_transports(
                server, duration=4, rate=25, interval=0.4, seed=7
            )

    comparison = run(scenario(), units=30)
    short, long, push = (
        comparison[name] for name in ("short poll", "long poll", "WebSocket")
    )
    interval_ms = 400
    for result in (short, long, push):
        assert result.published >= 40
        assert len(result.deliveries) == result.published
        assert result.missed == 0
        assert result.duplicates == 0
    assert (
        0.3 * interval_ms <= statistics.fmean(short.latencies_ms) <= 0.7 * interval_ms
    )
    assert statistics.median(push.latencies_ms) < 0.1 * interval_ms
    assert statistics.median(long.latencies_ms) < 0.1 * interval_ms
    assert push.requests == 1
    assert long.requests >= len(long.deliveries) / 5
    assert short.empty_responses < short.requests
    assert push.bytes_total < long.bytes_total
    rows = comparison.summary_rows()
    assert [row["transport"] for row in rows] == [
        "short poll",
        "long poll",
        "WebSocket",
    ]
    assert len(comparison.latency_rows()) == sum(
        len(r.deliveries) for r in comparison.results
    )
    assert "short poll" in comparison.table()


def test_compare_transports_requires_running_server() -> None:
    with pytest.raises(RuntimeError, match="is not running"):
        run(compare_transports(rtkit.Server(port=0)))


def test_measure_poll_load_scales_with_clients() -> None:
    async def scenario() -> list[float]:
        async with rtkit.Server(port=0) as server:
            results = [
                await measure_poll_load(server, clients, interval=0.2, duration=1.5)
                for clients in (1, 4)
            ]
            return [r.measured_per_second / r.expected_per_second for r in results]

    for ratio in run(scenario(), units=20):
        assert 0.6 <= ratio <= 1.5


def test_websocket_subscriber_counts_handshake_bytes() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = WebSocketSubscriber(server.url)
            subscriber.start()
            await asyncio.wait_for(subscriber.connected.wait(), 5)
            follower = await subscriber.stop()
            # The upgrade request and the 101 response are each over 100 bytes.
            assert follower.bytes.sent > 100
            assert follower.bytes.received > 100

    run(scenario())


def test_format_table_aligns_columns() -> None:
    table = format_table([{"a": 1.25, "b": None}, {"a": 10, "b": "x"}], ["a", "b"])
    assert table.splitlines() == ["a    b", "1.2  -", " 10  x"]
