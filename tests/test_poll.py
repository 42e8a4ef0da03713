"""Short and long polling on /poll, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import rtkit
from rtkit import routes

from .conftest import run, timeout, until


async def poll(server: rtkit.Server, query: str) -> tuple[int, dict[str, Any]]:
    """GET /poll?query with a raw HTTP/1.1 request; return status and JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        host = f"127.0.0.1:{server.port}"
        writer.write(f"GET /poll?{query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), timeout(40))
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def test_poll_short_returns_events_after_since() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            for i in range(3):
                server.publish({"i": i})
            status, body = await poll(server, "since=1")
            assert status == 200
            assert body["epoch"] == server.epoch
            assert body["seq"] == 3
            assert body["missed"] == 0
            assert [event["seq"] for event in body["events"]] == [2, 3]
            assert body["events"][0]["data"] == {"i": 1}
            assert body["events"][0]["type"] == "event"
            status, body = await poll(server, "")
            assert [event["seq"] for event in body["events"]] == [1, 2, 3]

    run(scenario())


def test_poll_short_empty_returns_at_once() -> None:
    async def scenario() -> float:
        async with rtkit.Server(port=0) as server:
            started = time.monotonic()
            status, body = await poll(server, "since=0")
            assert status == 200
            assert body["events"] == []
            return time.monotonic() - started

    assert run(scenario()) < timeout(1)


def test_poll_history_overflow_reports_missed() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, history_size=5) as server:
            for i in range(12):
                server.publish(i)
            _, body = await poll(server, "since=3")
            assert body["missed"] == 4
            assert [event["seq"] for event in body["events"]] == [8, 9, 10, 11, 12]

    run(scenario())


def test_poll_epoch_changes_on_restart() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            server.publish("before")
            _, before = await poll(server, "since=0")
            await server.restart()
            _, after = await poll(server, "since=1&wait=5")
            assert after["epoch"] != before["epoch"]
            assert after["seq"] == 0
            assert after["events"] == []

    run(scenario())


def test_poll_long_woken_by_publish() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            asyncio.get_running_loop().call_later(0.2, server.publish, "news")
            started = time.monotonic()
            status, body = await poll(server, "since=0&wait=10")
            elapsed = time.monotonic() - started
            assert status == 200
            assert [event["data"] for event in body["events"]] == ["news"]
            assert 0.15 <= elapsed < timeout(2)

    run(scenario())


def test_poll_long_times_out_empty() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            started = time.monotonic()
            status, body = await poll(server, "since=0&wait=0.3")
            elapsed = time.monotonic() - started
            assert status == 200
            assert body["events"] == []
            assert 0.3 <= elapsed < timeout(2)

    run(scenario())


def test_poll_many_long_polls_one_publish() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            polls = [
                asyncio.create_task(poll(server, "since=0&wait=20")) for _ in range(100)
            ]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in polls)
            server.publish("wake")
            results = await asyncio.wait_for(asyncio.gather(*polls), timeout(5))
            assert all(status == 200 for status, _ in results)
            assert all(len(body["events"]) == 1 for _, body in results)

    run(scenario(), units=30)


def test_poll_stop_releases_long_polls() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        waiting = asyncio.create_task(poll(server, "since=0&wait=25"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < timeout(2)
        status, body = await asyncio.wait_for(waiting, timeout(2))
        assert status == 200
        assert body["events"] == []

    run(scenario())


BAD_QUERIES = [
    ("since=abc", "since", "invalid since: 'abc'"),
    ("since=-1", "since", "invalid since: '-1'"),
    ("since=1.5", "since", "an integer >= 0"),
    ("since=0&wait=abc", "wait", "invalid wait: 'abc'"),
    ("since=0&wait=-1", "wait", "pass seconds from 0 to 30"),
    ("since=0&wait=31", "wait", "invalid wait: '31'"),
    ("since=0&wait=nan", "wait", "invalid wait: 'nan'"),
    ("since=0&wait=inf", "wait", "invalid wait: 'inf'"),
    ("since=0&wait=", "wait", "invalid wait: ''"),
    ("channel=a%2Fb", "channel", "invalid channel: 'a/b'"),
    ("channel=", "channel", "invalid channel: ''"),
]


@pytest.mark.parametrize(("query", "parameter", "message"), BAD_QUERIES)
def test_poll_bad_parameter_returns_400(
    query: str, parameter: str, message: str
) -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            status, body = await poll(server, query)
            assert status == 400
            assert body["error"] == "invalid_parameter"
            assert body["parameter"] == parameter
            assert message in body["message"]

    run(scenario())


def test_poll_long_client_gone_stops_waiting() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            host = f"127.0.0.1:{server.port}"
            writer.write(
                f"GET /poll?since=0&wait=25 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            )
            await asyncio.sleep(0.2)
            websocket_server = server._websocket_server
            assert websocket_server is not None
            assert len(websocket_server.handler_tasks) == 1
            writer.close()
            for _ in range(100):
                if not websocket_server.handler_tasks:
                    break
                await asyncio.sleep(0.02)
            assert not websocket_server.handler_tasks

    run(scenario())


def test_poll_channel_has_own_sequence() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            server.publish("default")
            server.publish("a", channel="lobby")
            server.publish("b", channel="lobby")
            _, body = await poll(server, "since=0&channel=lobby")
            assert [e["data"] for e in body["events"]] == ["a", "b"]
            assert [e["seq"] for e in body["events"]] == [1, 2]
            assert body["events"][0]["channel"] == "lobby"
            _, body = await poll(server, "since=0&channel=empty")
            assert body["events"] == []
            assert body["seq"] == 0

    run(scenario())


def test_poll_long_polls_create_no_channels() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_channels=3) as server:
            for i in range(10):
                status, _ = await poll(server, f"since=0&wait=0&channel=c{i}")
                assert status == 200
            assert server.hub.streams == {}
            waiting = asyncio.create_task(poll(server, "since=0&wait=10&channel=late"))
            await asyncio.sleep(0.2)
            server.publish("first", channel="late")
            _, body = await asyncio.wait_for(waiting, timeout(2))
            assert [e["data"] for e in body["events"]] == ["first"]

    run(scenario())


def test_poll_waiting_keeps_channel() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_channels=2) as server:
            server.publish("old", channel="waited")
            waiting = asyncio.create_task(
                poll(server, "since=1&wait=10&channel=waited")
            )
            await until(lambda: not server.hub.is_idle("waited"))
            server.publish("a", channel="a")
            server.publish("b", channel="b")
            assert list(server.hub.streams) == ["waited", "b"]
            server.publish("new", channel="waited")
            _, body = await asyncio.wait_for(waiting, timeout(2))
            assert [e["data"] for e in body["events"]] == ["new"]
            assert [e["seq"] for e in body["events"]] == [2]

    run(scenario())


def test_poll_evicted_channel_reports_missed() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_channels=1) as server:
            for i in range(3):
                server.publish(i, channel="gone")
            server.publish("evicts gone", channel="other")
            _, body = await poll(server, "since=1&channel=gone")
            assert body["seq"] == 3
            assert body["missed"] == 2
            assert body["events"] == []
            assert "reset" not in body
            server.publish("back", channel="gone")
            _, body = await poll(server, "since=3&channel=gone")
            assert [e["seq"] for e in body["events"]] == [4]

    run(scenario())


@pytest.mark.parametrize("wait", ["", "&wait=10"], ids=["short", "long"])
def test_poll_since_above_latest_resets(wait: str) -> None:
    async def scenario() -> float:
        async with rtkit.Server(port=0) as server:
            server.publish("a")
            server.publish("b")
            started = time.monotonic()
            status, body = await poll(server, f"since=9&epoch={server.epoch}{wait}")
            elapsed = time.monotonic() - started
            assert status == 200
            assert body["reset"] is True
            assert body["seq"] == 2
            assert body["missed"] == 0
            assert [e["seq"] for e in body["events"]] == [1, 2]
            _, body = await poll(server, "since=2")
            assert "reset" not in body
            return elapsed

    assert run(scenario()) < timeout(1)


@pytest.mark.parametrize("since", ["%D9%A1%D9%A2", "1_0", "%2B5", "%205", "9" * 19])
def test_poll_since_ascii_digits_only(since: str) -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            status, body = await poll(server, f"since={since}")
            assert status == 400
            assert body["parameter"] == "since"

    run(scenario())


def test_poll_wait_over_max_wait_returns_400() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_wait=2) as server:
            status, body = await poll(server, "since=0&wait=3")
            assert status == 400
            assert body["parameter"] == "wait"
            assert "pass seconds from 0 to 2, the server's max_wait" in body["message"]
            status, _ = await poll(server, "since=0&wait=0.1")
            assert status == 200

    run(scenario())


def test_parse_poll_query_max_wait_caps_wait() -> None:
    assert routes.parse_poll_query("wait=45", max_wait=60).wait == 45
    with pytest.raises(routes.InvalidParameter, match="from 0 to 30"):
        routes.parse_poll_query("wait=45")


def test_poll_max_wait_allows_longer_wait() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_wait=60) as server:
            waiting = asyncio.create_task(poll(server, "since=0&wait=45"))
            await asyncio.sleep(0.2)
            server.publish("woken")
            status, body = await asyncio.wait_for(waiting, timeout(2))
            assert status == 200
            assert [e["data"] for e in body["events"]] == ["woken"]

    run(scenario())


@pytest.mark.parametrize("max_wait", [0, -1, float("inf"), float("nan"), "30", True])
def test_server_invalid_max_wait_raises(max_wait: object) -> None:
    with pytest.raises(ValueError, match="invalid max_wait"):
        rtkit.Server(port=0, max_wait=max_wait)  # type: ignore[arg-type]
