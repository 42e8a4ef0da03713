"""The clients and the side-by-side harness on a real server, with generous bounds."""

from __future__ import annotations

import asyncio
import statistics

import pytest

import rtkit
from rtkit.clients import (
    Follower,
    LongPoller,
    Outage,
    ShortPoller,
    WebSocketSubscriber,
)
from rtkit.measure import (
    ReconnectResult,
    RestartRun,
    compare_transports,
    follow_through_restart,
    format_table,
    measure_poll_load,
    measure_reconnect_storm,
)

from .conftest import run, timeout


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


def test_follower_notices_gaps_and_restart() -> None:
    follower = Follower("test")
    follower.accept_subscribed({"epoch": "e1", "seq": 0, "missed": 0})
    for seq in [1, 4, 6]:
        follower.accept_event({"seq": seq, "ts": 0.0}, 1.0)
    follower.accept_subscribed({"epoch": "e1", "seq": 20, "missed": 10})
    follower.accept_subscribed({"epoch": "e2", "seq": 0, "missed": 0})
    follower.accept_poll({"epoch": "e2", "missed": 1, "events": []}, 1.0)
    assert follower.notices == [
        "missed 2 events (seq 2-3): the server did not send them",
        "missed 1 event (seq 5): the server did not send them",
        "missed 10 events (seq 7-16): no longer in the server's history",
        "server restarted: epoch e1 -> e2; following the new epoch from its "
        "first event",
        "missed 1 event (seq 1): no longer in the server's history",
    ]
    assert follower.missed == 14
    assert follower.restarts == 1
    assert follower.since == 1


def test_follower_notices_keep_last_100() -> None:
    follower = Follower("test")
    for n in range(150):
        follower.notice(f"notice {n}")
    assert len(follower.notices) == 100
    assert follower.notices[0] == "notice 50"
    assert follower.notices[-1] == "notice 149"


def test_follower_deliveries_carry_epoch() -> None:
    follower = Follower("test")
    follower.accept_epoch("e1")
    follower.accept_event({"seq": 1, "ts": 0.0}, 1.0)
    follower.accept_epoch("e2")
    follower.accept_event({"seq": 1, "ts": 0.0}, 1.0)
    assert [(d.epoch, d.seq) for d in follower.deliveries] == [("e1", 1), ("e2", 1)]


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


def reconnected_at(back_at: float) -> ReconnectResult:
    """A client that lost its connection at 0 and was back at ``back_at``."""
    outage = Outage(0.0, 1006, back_at=back_at, attempts=1)
    return ReconnectResult("c", 10, 10, 0, 0, 0, True, 0, (), outage, restarted_at=0.0)


def test_restart_run_spread_and_peak() -> None:
    backs = [0.05, 0.1, 0.12, 0.14, 0.5, 1.0]
    restart = RestartRun({}, 0.0, 0.0, [reconnected_at(b) for b in backs])
    restart.clients.append(
        ReconnectResult("d", 10, 4, 6, 0, 0, True, 1, (), None, restarted_at=0.0)
    )
    assert restart.reconnect_times() == backs
    spread = restart.spread()
    assert spread["min"] == 0.05
    assert spread["median"] == pytest.approx(0.13)
    assert spread["max"] == 1.0
    assert spread["p90"] is not None
    assert 0.5 <= spread["p90"] <= 1.0
    assert restart.peak(0.1) == 4
    assert restart.peak(0.01) == 1
    assert restart.not_back == 1
    summary = restart.summary()
    assert summary["lost"] == 6
    assert summary["peak_per_100ms"] == 4
    assert len(restart.rows()) == 7
    assert "peak_per_100ms" in restart.table()


def test_reconnect_storm_with_jitter_spreads_out() -> None:
    """Full jitter spreads 50 reconnections over the backoff's first delays."""

    async def scenario() -> RestartRun:
        async with rtkit.Server(port=0) as server:
            return await measure_reconnect_storm(
                server, 50, base=0.5, downtime=0.2, before=0.2, after=0.2, seed=1
            )

    storm = run(scenario(), units=30)
    assert storm.not_back == 0
    spread = storm.spread()
    assert spread["min"] is not None
    assert spread["max"] is not None
    # Delays are uniform in [0, 0.5 s], then in [0, 1 s] for the clients
    # that came too early: 50 of them span far more than 0.25 s.
    assert spread["max"] - spread["min"] > 0.25
    assert storm.peak(0.1) < 35
    summary = storm.summary()
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["missed"] == 0
    for client in storm.clients:
        assert client.outage is not None
        assert client.outage.code == 1006
        assert client.published > 0
        assert client.in_order


def test_reconnect_storm_without_jitter_clusters() -> None:
    """Without jitter every client waits the same 0.5 s: a thundering herd."""

    async def scenario() -> RestartRun:
        async with rtkit.Server(port=0) as server:
            return await measure_reconnect_storm(
                server,
                50,
                jitter=False,
                base=0.5,
                downtime=0.2,
                before=0.2,
                after=0.2,
            )

    storm = run(scenario(), units=30)
    assert storm.not_back == 0
    spread = storm.spread()
    assert spread["min"] is not None
    assert spread["max"] is not None
    assert spread["min"] >= 0.5
    assert spread["max"] - spread["min"] < timeout(0.2)
    assert storm.peak(timeout(0.25)) == 50
    assert storm.summary()["lost"] == 0


def test_restart_with_history_loses_nothing() -> None:
    async def scenario() -> ReconnectResult:
        async with rtkit.Server(port=0) as server:
            return await follow_through_restart(
                server, before=0.2, downtime=0.3, after=0.2
            )

    result = run(scenario(), units=20)
    # About 200 events/s for 0.7 s.
    assert result.published > 50
    assert result.delivered == result.published
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.in_order
    assert result.restarts == 0
    assert result.notices == ()
    assert result.time_to_reconnect is not None
    assert result.back_after_restart is not None
    assert result.back_after_restart >= 0


def test_restart_new_epoch_loses_events() -> None:
    async def scenario() -> ReconnectResult:
        async with rtkit.Server(port=0) as server:
            return await follow_through_restart(
                server, keep_history=False, before=0.2, downtime=0.3, after=0.2
            )

    result = run(scenario(), units=20)
    # The source publishes about 60 events in the 0.3 s of downtime. The
    # new epoch drops them, and no notice names them.
    assert result.lost > 10
    assert result.missed == 0
    assert result.restarts == 1
    assert result.duplicates == 0
    assert result.in_order
    assert len(result.notices) == 1
    assert result.notices[0].startswith("server restarted: epoch ")


def test_restart_small_history_reports_gap() -> None:
    async def scenario() -> ReconnectResult:
        async with rtkit.Server(port=0, history_size=20) as server:
            return await follow_through_restart(
                server, before=0.2, downtime=0.3, after=0.2
            )

    result = run(scenario(), units=20)
    assert result.lost > 0
    assert result.missed == result.lost
    assert result.restarts == 0
    assert len(result.notices) == 1
    assert result.notices[0].startswith(f"missed {result.missed} events (seq ")
    assert result.notices[0].endswith("): no longer in the server's history")


def test_reconnect_storm_invalid_arguments_raise() -> None:
    with pytest.raises(RuntimeError, match="is not running"):
        run(measure_reconnect_storm(rtkit.Server(port=0), 2))
    with pytest.raises(ValueError, match="invalid clients: 0"):
        run(measure_reconnect_storm(rtkit.Server(port=0), 0))
