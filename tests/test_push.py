"""WebSocket push of hub events: subscribe, replay, live events, bad commands."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import rtkit
from rtkit.hub import Hub
from rtkit.push import DEFAULT_STALL_TIMEOUT, PushHandler

from .conftest import run, timeout, until


async def receive_json(client: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(client.recv(), timeout(2)))


async def subscribed_client(server: rtkit.Server, since: int = 0) -> ClientConnection:
    client = await connect(server.ws_url, open_timeout=timeout(2))
    assert await asyncio.wait_for(client.recv(), timeout(2)) == rtkit.WELCOME
    await client.send(json.dumps({"type": "subscribe", "since": since}))
    return client


def test_push_subscribe_replays_then_streams() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            server.publish("a")
            server.publish("b")
            client = await subscribed_client(server, since=1)
            confirmation = await receive_json(client)
            assert confirmation == {
                "type": "subscribed",
                "channel": "events",
                "epoch": server.epoch,
                "seq": 2,
                "missed": 0,
            }
            replayed = await receive_json(client)
            assert (replayed["seq"], replayed["data"]) == (2, "b")
            server.publish("c")
            live = await receive_json(client)
            assert live["type"] == "event"
            assert (live["seq"], live["data"]) == (3, "c")
            assert live["epoch"] == server.epoch
            await client.close()

    run(scenario())


def test_push_no_loss_no_duplicates_under_publishing() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            source = server.start_source(rate=500)
            await asyncio.sleep(0.1)
            clients = [await subscribed_client(server) for _ in range(5)]
            await asyncio.sleep(0.3)
            await server.stop_source()
            last = server.hub.latest
            for client in clients:
                assert (await receive_json(client))["type"] == "subscribed"
                seqs: list[int] = []
                while not seqs or seqs[-1] < last:
                    seqs.append((await receive_json(client))["seq"])
                assert seqs == list(range(1, last + 1))
                await client.close()
            assert source.published == last

    run(scenario())


def test_push_missed_reported_after_overflow() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, history_size=3) as server:
            for i in range(10):
                server.publish(i)
            client = await subscribed_client(server, since=2)
            confirmation = await receive_json(client)
            assert confirmation["missed"] == 5
            seqs = [(await receive_json(client))["seq"] for _ in range(3)]
            assert seqs == [8, 9, 10]
            await client.close()

    run(scenario())


def test_push_unsubscribe_stops_events() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            client = await subscribed_client(server)
            await receive_json(client)
            await client.send(json.dumps({"type": "unsubscribe"}))
            assert await receive_json(client) == {
                "type": "unsubscribed",
                "channel": "events",
            }
            server.publish("ignored")
            await client.send("ping")
            assert await client.recv() == "Server received: ping"
            await client.close()

    run(scenario())


def test_push_bad_commands_get_errors_and_stay_open() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                cases = [
                    (
                        {"type": "dance"},
                        "unknown_type",
                        "unknown message type: 'dance'",
                    ),
                    ({"type": "subscribe", "since": -3}, "invalid_since", "-3"),
                    ({"type": "subscribe", "since": "x"}, "invalid_since", "'x'"),
                    ({"type": 7}, "unknown_type", "7"),
                ]
                raw_cases = [
                    ("{oops", "invalid_json", "invalid JSON: Expecting"),
                    ('{"no": "type"}', "missing_field", "missing field 'type'"),
                    ("  {1: 2}", "invalid_json", "invalid JSON"),
                ]
                for text, code, expected in raw_cases:
                    await client.send(text)
                    error = await receive_json(client)
                    assert error["type"] == "error"
                    assert error["code"] == code
                    assert expected in error["message"]
                for command, code, text in cases:
                    await client.send(json.dumps(command))
                    error = await receive_json(client)
                    assert error["type"] == "error"
                    assert error["code"] == code
                    assert text in error["message"]
                await client.send("still open")
                assert await client.recv() == "Server received: still open"

    run(scenario())


def test_push_echo_clients_get_no_events() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                server.publish("not for echo clients")
                await client.send("hi")
                assert await client.recv() == "Server received: hi"

    run(scenario())


async def joined_client(
    server: rtkit.Server, name: str, channel: str = "lobby"
) -> ClientConnection:
    client = await connect(server.ws_url, open_timeout=timeout(2))
    assert await asyncio.wait_for(client.recv(), timeout(2)) == rtkit.WELCOME
    await client.send(json.dumps({"type": "join", "channel": channel, "name": name}))
    assert (await receive_json(client))["type"] == "subscribed"
    return client


async def receive_type(client: ClientConnection, kind: str) -> dict[str, Any]:
    """Return the next message of type ``kind``, skipping others."""
    while True:
        message = await receive_json(client)
        if message["type"] == kind:
            return message


def test_chat_presence_on_join_and_disconnect() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            ada = await joined_client(server, "ada")
            presence = await receive_type(ada, "presence")
            assert [m["name"] for m in presence["members"]] == ["ada"]
            bob = await joined_client(server, "bob")
            for client in (ada, bob):
                presence = await receive_type(client, "presence")
                assert presence["channel"] == "lobby"
                assert [m["name"] for m in presence["members"]] == ["ada", "bob"]
            await bob.close()
            presence = await receive_type(ada, "presence")
            assert [m["name"] for m in presence["members"]] == ["ada"]
            await ada.close()

    run(scenario())


def test_chat_message_reaches_channel_only() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            ada = await joined_client(server, "ada")
            bob = await joined_client(server, "bob")
            eve = await joined_client(server, "eve", channel="other")
            await ada.send(
                json.dumps({"type": "message", "channel": "lobby", "text": "hi"})
            )
            for client in (ada, bob):
                event = await receive_type(client, "event")
                assert event["channel"] == "lobby"
                assert event["data"]["text"] == "hi"
                assert event["data"]["from"]["name"] == "ada"
            server.publish({"text": "only other"}, channel="other")
            event = await receive_type(eve, "event")
            assert event["data"] == {"text": "only other"}
            assert event["seq"] == 1
            for client in (ada, bob, eve):
                await client.close()

    run(scenario())


def test_chat_leave_removes_from_presence() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            ada = await joined_client(server, "ada")
            bob = await joined_client(server, "bob")
            await bob.send(json.dumps({"type": "leave", "channel": "lobby"}))
            assert (await receive_type(bob, "unsubscribed"))["channel"] == "lobby"
            while True:
                presence = await receive_type(ada, "presence")
                if len(presence["members"]) == 1:
                    break
            assert presence["members"][0]["name"] == "ada"
            assert [c.name for c in server.push.members("lobby")] == ["ada"]
            await ada.close()
            await bob.close()

    run(scenario())


def test_chat_bad_commands_get_errors() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                cases = [
                    ({"type": "join", "name": "x"}, "missing_field", "'channel'"),
                    ({"type": "join", "channel": "lobby"}, "invalid_name", "None"),
                    (
                        {"type": "join", "channel": "lobby", "name": " "},
                        "invalid_name",
                        "''",
                    ),
                    (
                        {"type": "join", "channel": "../x", "name": "a"},
                        "invalid_channel",
                        "'../x'",
                    ),
                    (
                        {"type": "message", "channel": "lobby", "text": "x"},
                        "not_joined",
                        "join",
                    ),
                    ({"type": "leave", "channel": "lobby"}, "not_joined", "lobby"),
                ]
                for command, code, text in cases:
                    await client.send(json.dumps(command))
                    error = await receive_json(client)
                    assert error["type"] == "error", command
                    assert error["code"] == code, command
                    assert text in error["message"], command
                await client.send(
                    json.dumps({"type": "join", "channel": "lobby", "name": "a"})
                )
                await receive_type(client, "presence")
                await client.send(
                    json.dumps({"type": "message", "channel": "lobby", "text": ""})
                )
                error = await receive_type(client, "error")
                assert error["code"] == "invalid_text"
                await client.send("still open")
                assert await client.recv() == "Server received: still open"

    run(scenario())


def test_chat_channel_limit_rejects_new_channels() -> None:
    async def scenario() -> None:
        server = rtkit.Server(port=0)
        server.hub.max_channels = 3
        async with server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                for i in range(4):
                    await client.send(
                        json.dumps({"type": "subscribe", "channel": f"c{i}"})
                    )
                    reply = await receive_json(client)
                expected = "too many channels"
                assert reply["type"] == "error"
                assert expected in reply["message"]

    run(scenario())


def test_push_odd_json_gets_errors_and_stays_open() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                cases = [
                    ('{"type": ["subscribe"]}', "unknown_type"),
                    ('{"type": {"a": 1}}', "unknown_type"),
                    (
                        '{"type": "subscribe", "x": '
                        + "[" * 100_000
                        + "]" * 100_000
                        + "}",
                        "invalid_json",
                    ),
                    ('{"type": "subscribe", "epoch": [1]}', "invalid_epoch"),
                    ('{"type": "subscribe", "since": 1e3}', "invalid_since"),
                    (
                        '{"type": "subscribe", "since": ' + "9" * 30 + "}",
                        "invalid_since",
                    ),
                    (
                        '{"type": "join", "channel": "c", "name": "'
                        + "n" * 10_000
                        + '"}',
                        "invalid_name",
                    ),
                    ('{"type": "' + "t" * 100_000 + '"}', "unknown_type"),
                ]
                for text, code in cases:
                    await client.send(text)
                    error = await receive_json(client)
                    assert error["code"] == code, text[:60]
                    assert len(error["message"]) < 300
                join = {"type": "join", "channel": "lobby", "name": "ada"}
                await client.send(json.dumps(join))
                await receive_type(client, "presence")
                await client.send(
                    json.dumps({"type": "message", "channel": "lobby", "text": 12})
                )
                error = await receive_type(client, "error")
                assert "invalid text: 12;" in error["message"]
                await client.send("still open")
                assert await client.recv() == "Server received: still open"

    run(scenario())


def test_push_subscription_and_channel_limits() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_channels=200) as server:
            holder = await connect(server.ws_url, open_timeout=timeout(2))
            await holder.recv()
            for i in range(65):
                await holder.send(json.dumps({"type": "subscribe", "channel": f"c{i}"}))
                reply = await receive_json(holder)
            assert reply["code"] == "too_many_subscriptions"
            server.hub.max_channels = 64
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                new = json.dumps({"type": "subscribe", "channel": "new"})
                await client.send(new)
                reply = await receive_json(client)
                assert reply["code"] == "too_many_channels"
                assert "each has subscribers, members or waiting" in reply["message"]
                await holder.close()
                await until(lambda: not server.push.is_channel_in_use("c0"))
                await client.send(new)
                assert (await receive_json(client))["type"] == "subscribed"
                assert "c0" not in server.hub.streams
            await until(lambda: server.push.subscribers == {})

    run(scenario())


def test_push_joined_channels_count_toward_limit() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_rate=None) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                for i in range(64):
                    join = {"type": "join", "channel": f"c{i}", "name": "ada"}
                    await client.send(json.dumps(join))
                    await receive_type(client, "presence")
                await client.send(json.dumps({"type": "unsubscribe", "channel": "c0"}))
                await receive_type(client, "unsubscribed")
                assert server.push.is_channel_in_use("c0")
                join = {"type": "join", "channel": "extra", "name": "ada"}
                await client.send(json.dumps(join))
                error = await receive_type(client, "error")
                assert error["code"] == "too_many_subscriptions"
                assert "64 channels subscribed or joined" in error["message"]
                await client.send(json.dumps({"type": "leave", "channel": "c0"}))
                await receive_type(client, "unsubscribed")
                assert not server.push.is_channel_in_use("c0")
                await client.send(json.dumps(join))
                assert (await receive_type(client, "subscribed"))["channel"] == "extra"
            await until(lambda: not server.push.member_counts)

    run(scenario())


# Channel eviction


async def subscribe_many(
    server: rtkit.Server, names: list[str]
) -> tuple[ClientConnection, list[dict[str, Any]]]:
    """Connect and subscribe to each of ``names``; return the client and replies."""
    client = await connect(server.ws_url, open_timeout=timeout(2))
    await client.recv()
    replies = []
    for name in names:
        await client.send(json.dumps({"type": "subscribe", "channel": name}))
        replies.append(await receive_json(client))
    return client, replies


def test_push_closed_subscriptions_free_channels() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            clients = []
            replies: list[dict[str, Any]] = []
            for c in range(5):
                client, more = await subscribe_many(
                    server, [f"m{c}_{i}" for i in range(60)]
                )
                clients.append(client)
                replies += more
            # 256 channels are held at once, so the last 44 are rejected.
            codes = Counter(reply.get("code", reply["type"]) for reply in replies)
            assert codes == {"subscribed": 256, "too_many_channels": 44}
            for client in clients:
                await client.close()
            await until(lambda: not server.push.clients)
            ada = await joined_client(server, "ada")
            assert len(server.hub.streams) == 256
            assert "lobby" in server.hub.streams
            assert server.hub.evictions == 1
            await ada.close()

    run(scenario())


def test_chat_evicted_channel_continues_seq() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_channels=4) as server:
            for c in range(3):
                client = await connect(server.ws_url, open_timeout=timeout(2))
                await client.recv()
                for i in range(3):
                    channel = f"room{c}_{i}"
                    join = {"type": "join", "channel": channel, "name": f"u{c}"}
                    await client.send(json.dumps(join))
                    await receive_type(client, "presence")
                    text = {"type": "message", "channel": channel, "text": "hi"}
                    for _ in range(2):
                        await client.send(json.dumps(text))
                        await receive_type(client, "event")
                await client.close()
                await until(lambda: not server.push.clients)
            assert "room0_0" not in server.hub.streams
            ada = await joined_client(server, "ada", channel="lobby")
            await ada.send(
                json.dumps(
                    {"type": "join", "channel": "room0_0", "name": "ada", "since": 1}
                )
            )
            confirmation = await receive_type(ada, "subscribed")
            assert confirmation["seq"] == 2
            assert confirmation["missed"] == 1
            assert "reset" not in confirmation
            message = {"type": "message", "channel": "room0_0", "text": "back"}
            await ada.send(json.dumps(message))
            event = await receive_type(ada, "event")
            assert event["seq"] == 3
            assert event["data"]["text"] == "back"
            await ada.close()

    run(scenario())


def test_push_subscriber_keeps_channel() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_channels=2) as server:
            keeper, _ = await subscribe_many(server, ["kept"])
            server.publish("x", channel="idle")
            newcomer, replies = await subscribe_many(server, ["new"])
            assert replies[0]["type"] == "subscribed"
            assert list(server.hub.streams) == ["kept", "new"]
            await newcomer.send(json.dumps({"type": "subscribe", "channel": "more"}))
            error = await receive_json(newcomer)
            assert error["code"] == "too_many_channels"
            server.publish("still here", channel="kept")
            event = await receive_json(keeper)
            assert event["channel"] == "kept"
            assert event["data"] == "still here"
            await keeper.close()
            await newcomer.close()

    run(scenario())


def test_push_since_above_latest_resets() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            server.publish("a")
            server.publish("b")
            client = await subscribed_client(server, since=7)
            confirmation = await receive_json(client)
            assert confirmation["reset"] is True
            assert confirmation["seq"] == 2
            assert confirmation["missed"] == 0
            replayed = [(await receive_json(client))["seq"] for _ in range(2)]
            assert replayed == [1, 2]
            await client.close()

    run(scenario())


# Limits and heartbeat


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_rate": 0}, "invalid max_rate: 0; use a number"),
        ({"max_rate": "fast"}, "invalid max_rate: 'fast'"),
        ({"slow_policy": "block"}, "invalid slow_policy: 'block'; use 'drop'"),
        ({"stall_timeout": 0}, "invalid stall_timeout: 0; pass the seconds"),
        ({"stall_timeout": -1.5}, "invalid stall_timeout: -1.5;"),
        ({"stall_timeout": float("nan")}, "invalid stall_timeout: nan;"),
        ({"stall_timeout": float("inf")}, "invalid stall_timeout: inf;"),
        ({"stall_timeout": True}, "invalid stall_timeout: True;"),
        ({"stall_timeout": "5"}, "invalid stall_timeout: '5';"),
    ],
)
def test_push_handler_invalid_options_raise(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        PushHandler(Hub(), **options)


def test_push_handler_options_default() -> None:
    handler = PushHandler(Hub())
    assert handler.max_rate == 100.0
    assert handler.slow_policy == "drop"
    assert handler.stall_timeout is None
    assert PushHandler(Hub(), max_rate=None).max_rate is None
    assert PushHandler(Hub(), stall_timeout=3).stall_timeout == 3.0


@pytest.mark.parametrize(
    ("stall_timeout", "ping_interval", "ping_timeout", "expected"),
    [
        (None, 20, 20, 40.0),
        (None, 1, 0.5, 1.5),
        (None, None, 20, DEFAULT_STALL_TIMEOUT),
        (None, 20, None, DEFAULT_STALL_TIMEOUT),
        (7, 1, 1, 7.0),
        (7, None, None, 7.0),
    ],
)
def test_push_stall_timeout_for_connection(
    stall_timeout: float | None,
    ping_interval: float | None,
    ping_timeout: float | None,
    expected: float,
) -> None:
    handler = PushHandler(Hub(), stall_timeout=stall_timeout)
    keepalive = SimpleNamespace(ping_interval=ping_interval, ping_timeout=ping_timeout)
    assert handler.stall_timeout_for(keepalive) == expected  # type: ignore[arg-type]


def test_push_one_watchdog_for_all_clients() -> None:
    def watchdogs() -> list[asyncio.Task[Any]]:
        return [
            task
            for task in asyncio.all_tasks()
            if task.get_name() == "rtkit push watchdog" and not task.done()
        ]

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            assert watchdogs() == []
            clients = [
                await connect(server.ws_url, open_timeout=timeout(2)) for _ in range(20)
            ]
            await until(lambda: len(server.push.clients) == 20)
            assert len(watchdogs()) == 1
            for client in clients:
                await client.close()
            await until(lambda: not server.push.clients)
            await until(lambda: watchdogs() == [])
            # A new client starts it again.
            client = await connect(server.ws_url, open_timeout=timeout(2))
            await until(lambda: len(watchdogs()) == 1)
            await client.close()

    run(scenario())


def test_push_rate_limit_closes_with_1008(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.push")

    async def scenario() -> None:
        async with rtkit.Server(port=0, max_rate=5, close_timeout=1) as server:
            calm = await connect(server.ws_url, open_timeout=timeout(2))
            await calm.recv()
            flood = await connect(server.ws_url, open_timeout=timeout(2))
            await flood.recv()
            flood_id = list(server.push.clients.values())[-1].id
            with pytest.raises(ConnectionClosed):
                for number in range(20):
                    await flood.send(f"message {number}")
                    await asyncio.sleep(0)
                async with asyncio.timeout(timeout(2)):
                    while True:
                        await flood.recv()
            assert flood.close_code == 1008
            assert flood.close_reason == (
                "rate limit: over 5 messages/s (max_rate); slow down"
            )
            await calm.send("still here")
            assert await calm.recv() == "Server received: still here"
            await until(lambda: len(server.push.clients) == 1)
            await calm.close()
            warnings = [
                r.getMessage() for r in caplog.records if "max_rate" in r.getMessage()
            ]
            assert len(warnings) == 1
            assert flood_id in warnings[0]
            assert "over 5 messages/s" in warnings[0]

    run(scenario())


def test_push_rate_limit_counts_pings() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_rate=3, close_timeout=1) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                pongs = 0
                with pytest.raises(ConnectionClosed):
                    for number in range(10):
                        await client.send(json.dumps({"type": "ping", "id": number}))
                        await receive_type(client, "pong")
                        pongs += 1
                assert pongs == 3
                assert client.close_code == 1008

    run(scenario())


def test_push_rate_limit_none_allows_bursts() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_rate=None) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                for number in range(300):
                    await client.send(str(number))
                for number in range(300):
                    assert await client.recv() == f"Server received: {number}"

    run(scenario())


def test_push_ping_gets_pong() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                for ping_id in [7, "tab-1:42", "x" * 64, -(2**53 - 1)]:
                    before = time.time()
                    await client.send(json.dumps({"type": "ping", "id": ping_id}))
                    pong = await receive_json(client)
                    assert pong["type"] == "pong"
                    assert pong["id"] == ping_id
                    assert before - 1 <= pong["ts"] <= time.time() + 1
                await client.send(json.dumps({"type": "ping"}))
                pong = await receive_json(client)
                assert pong["type"] == "pong"
                assert pong["id"] is None

    run(scenario())


@pytest.mark.parametrize(
    "ping_id",
    [True, 1.5, "x" * 65, 2**53, [1], {"a": 1}],
    ids=["bool", "float", "long-string", "huge-int", "list", "object"],
)
def test_push_ping_invalid_id_gets_error(ping_id: object) -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                await client.send(json.dumps({"type": "ping", "id": ping_id}))
                error = await receive_json(client)
                assert error["type"] == "error"
                assert error["code"] == "invalid_id"
                assert error["message"].startswith("invalid id: ")
                assert "64 characters" in error["message"]
                await client.send("still open")
                assert await client.recv() == "Server received: still open"

    run(scenario())


def test_push_client_table_rows() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, ping_interval=0.1, ping_timeout=1) as server:
            ada = await joined_client(server, "ada")
            plain = await connect(server.ws_url, open_timeout=timeout(2))
            await plain.recv()
            await plain.send("hi")
            await plain.recv()
            await until(
                lambda: all(r["latency_ms"] > 0 for r in server.push.client_table())
            )
            rows = server.push.client_table()
            assert [row["name"] for row in rows] == ["ada", ""]
            assert set(rows[0]) == {
                "id",
                "name",
                "remote",
                "latency_ms",
                "buffered",
                "messages_in",
                "messages_out",
                "discarded",
            }
            assert rows[0]["remote"].startswith("127.0.0.1:")
            assert rows[1]["messages_in"] == 1
            assert rows[1]["messages_out"] == 2
            for row in rows:
                assert 0 < row["latency_ms"] < 1000
                assert row["buffered"] == 0
                assert row["discarded"] == 0
            await ada.close()
            await plain.close()

    run(scenario())
