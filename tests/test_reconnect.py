"""WebSocketSubscriber reconnects with backoff, resumes, authenticates, uses TLS."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

import rtkit
import rtkit.server
from rtkit.auth import AuthenticationFailed, TokenAuth
from rtkit.clients import (
    MAX_RETRY_AFTER,
    Backoff,
    Follower,
    LongPoller,
    ShortPoller,
    WebSocketSubscriber,
    _session_cookie,
    retry_after,
)
from rtkit.tls import LocalCA

from .conftest import ThreadedServer, run, timeout, until


def fast_backoff(**options: float) -> Backoff:
    """A backoff with short delays, so that tests reconnect within a second."""
    options.setdefault("base", 0.05)
    options.setdefault("cap", 0.2)
    return Backoff(**options)  # type: ignore[arg-type]


async def connected_subscriber(url: str, **options: Any) -> WebSocketSubscriber:
    """Start a WebSocketSubscriber on ``url`` and wait until it connects, bounded."""
    subscriber = WebSocketSubscriber(url, **options)
    subscriber.start()
    await asyncio.wait_for(subscriber.connected.wait(), timeout(2))
    return subscriber


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


def test_backoff_without_jitter_waits_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=3, jitter=False)
    delays = [backoff.next_delay() for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": 0}, "invalid base: 0"),
        ({"base": 2, "cap": 1}, "invalid cap: 1"),
        ({"stable_after": -1}, "invalid stable_after: -1"),
    ],
)
def test_backoff_invalid_values_raise(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"auth": "header"}, "invalid auth: 'header'"),
        ({"ping_interval": 0}, "invalid ping_interval: 0"),
        ({"ping_timeout": -1}, "invalid ping_timeout: -1"),
        ({"open_timeout": 0}, "invalid open_timeout: 0"),
        ({"close_timeout": 0}, "invalid close_timeout: 0"),
        ({"token": "two words"}, "invalid token: pass"),
        ({"token": ""}, "invalid token: pass"),
    ],
)
def test_subscriber_invalid_options_raise(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        WebSocketSubscriber("http://127.0.0.1:1/", **options)  # type: ignore[arg-type]


def test_subscriber_invalid_token_hidden() -> None:
    with pytest.raises(ValueError) as raised:
        WebSocketSubscriber("http://127.0.0.1:1/", token="secret value")
    assert "secret" not in str(raised.value)


def test_subscriber_resumes_after_drop_without_loss() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = await connected_subscriber(
                server.url, reconnect=True, backoff=fast_backoff()
            )
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
            assert subscriber.reconnects == 3
            assert len(subscriber.outages) == 3
            for outage in subscriber.outages:
                assert outage.code == 1006
                assert outage.closed_by is None
                assert outage.attempts >= 1
                assert outage.time_to_reconnect is not None
                assert 0 < outage.time_to_reconnect < timeout(2)

    run(scenario(), units=20)


def test_subscriber_resumes_after_kill_with_history() -> None:
    """A killed server that keeps its history loses no event of a 200/s stream."""

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = await connected_subscriber(
                server.url, reconnect=True, backoff=fast_backoff()
            )
            epoch = server.epoch
            server.start_source(rate=200)
            await asyncio.sleep(0.3)
            await server.kill()
            killed_at = server.hub.latest
            # Events published while the server is down wait in the history.
            server.start_source(rate=200)
            await asyncio.sleep(0.2)
            await server.start(keep_history=True)
            await asyncio.sleep(0.3)
            await server.stop_source()
            last = server.hub.latest
            follower = subscriber.follower
            await until(lambda: follower.since >= last, units=5)
            await subscriber.stop()
            assert server.epoch == epoch
            assert last > killed_at + 20
            seqs = [delivery.seq for delivery in follower.deliveries]
            assert seqs == list(range(1, last + 1))
            assert {delivery.epoch for delivery in follower.deliveries} == {epoch}
            assert follower.duplicates == 0
            assert follower.missed == 0
            assert follower.restarts == 0
            assert follower.notices == []
            [outage] = subscriber.outages
            assert outage.code == 1006
            assert outage.back_at is not None
            assert outage.attempts >= 1

    run(scenario(), units=20)


def test_subscriber_notices_restart_and_follows_new_epoch() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = await connected_subscriber(
                server.url, reconnect=True, backoff=fast_backoff()
            )
            server.publish("old")
            await until(lambda: subscriber.follower.since == 1)
            old_epoch = server.epoch
            await server.kill()
            await server.start()
            new_epoch = server.epoch
            server.publish("new 1")
            server.publish("new 2")
            follower = subscriber.follower
            await until(lambda: follower.restarts == 1 and follower.since == 2, 5)
            await subscriber.stop()
            assert new_epoch != old_epoch
            data = [(d.epoch, d.seq) for d in follower.deliveries]
            assert data == [(old_epoch, 1), (new_epoch, 1), (new_epoch, 2)]
            assert follower.notices == [
                f"server restarted: epoch {old_epoch} -> {new_epoch}; "
                "following the new epoch from its first event"
            ]

    run(scenario(), units=20)


def test_subscriber_reports_gap_outside_history() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, history_size=20) as server:
            subscriber = await connected_subscriber(
                server.url, reconnect=True, backoff=fast_backoff()
            )
            for n in range(5):
                server.publish(n)
            follower = subscriber.follower
            await until(lambda: follower.since == 5)
            await server.kill()
            # 50 events while the server is down: the history keeps the last
            # 20 (seq 36 to 55), so seq 6 to 35 are gone.
            for n in range(50):
                server.publish(n)
            await server.start(keep_history=True)
            await until(lambda: follower.since == 55, units=5)
            await subscriber.stop()
            assert follower.missed == 30
            assert follower.notices == [
                "missed 30 events (seq 6-35): no longer in the server's history"
            ]
            seqs = [delivery.seq for delivery in follower.deliveries]
            assert seqs == [*range(1, 6), *range(36, 56)]
            assert follower.duplicates == 0

    run(scenario(), units=20)


def test_keepalive_blocked_server_closes_1011() -> None:
    """A server whose event loop blocks sends no pongs, so the client closes
    with 1011, and it reconnects by itself once the loop runs again."""

    async def scenario(threaded: ThreadedServer, server: rtkit.Server) -> None:
        subscriber = await connected_subscriber(
            server.url,
            reconnect=True,
            backoff=fast_backoff(),
            ping_interval=0.5,
            ping_timeout=0.5,
        )
        await until(lambda: (subscriber.latency or 0) > 0, units=2)
        threaded.loop.call_soon_threadsafe(time.sleep, 1.5)
        await until(lambda: bool(subscriber.outages), units=5)
        await until(lambda: subscriber.reconnects == 1, units=5)
        threaded.loop.call_soon_threadsafe(server.publish, "after the block")
        await until(lambda: subscriber.follower.since == 1, units=2)
        await subscriber.stop()
        [outage] = subscriber.outages
        assert outage.code == 1011
        assert outage.reason == "keepalive ping timeout"
        assert outage.closed_by == "client"
        assert outage.time_to_reconnect is not None
        assert subscriber.latency is None

    threaded = ThreadedServer()
    with threaded as server:
        run(scenario(threaded, server), units=15)


def test_close_timeout_records_outage_during_block() -> None:
    """With a short close_timeout, the outage is recorded while the server's
    loop is still blocked, not when the blocked server replies to the close."""

    async def scenario(threaded: ThreadedServer, server: rtkit.Server) -> None:
        subscriber = await connected_subscriber(
            server.url,
            reconnect=True,
            backoff=fast_backoff(),
            ping_interval=0.5,
            ping_timeout=0.5,
            close_timeout=0.3,
        )
        await until(lambda: (subscriber.latency or 0) > 0, units=2)
        blocked_at = time.time()
        threaded.loop.call_soon_threadsafe(time.sleep, 3)
        await until(lambda: bool(subscriber.outages), units=5)
        lost_after = subscriber.outages[0].lost_at - blocked_at
        await until(lambda: subscriber.reconnects == 1, units=10)
        await subscriber.stop()
        # Keepalive gives up within 1 s and the closing within 0.3 s more.
        assert lost_after < 2.5
        assert subscriber.outages[0].code == 1011

    threaded = ThreadedServer()
    with threaded as server:
        run(scenario(threaded, server), units=20)


def test_backoff_resets_only_after_stable_connection() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            backoff = fast_backoff(base=0.01, cap=0.02, stable_after=0.5)
            subscriber = await connected_subscriber(
                server.url, reconnect=True, backoff=backoff
            )
            # Three connections dropped right after they open: no reset.
            for count in range(1, 4):
                for connection in server.connections:
                    connection.transport.abort()
                await until(lambda: subscriber.reconnects == count)  # noqa: B023
            assert backoff.attempt == 3
            # A connection that stayed up for stable_after: reset, then one delay.
            await asyncio.sleep(0.6)
            for connection in server.connections:
                connection.transport.abort()
            await until(lambda: subscriber.reconnects == 4)
            await subscriber.stop()
            assert backoff.attempt == 1

    run(scenario(), units=20)


def test_backoff_no_reset_after_timeouts() -> None:
    """Attempts that time out are failures, however long they took."""

    async def scenario(threaded: ThreadedServer, server: rtkit.Server) -> None:
        backoff = fast_backoff(base=0.01, cap=0.02, stable_after=0.1)
        subscriber = WebSocketSubscriber(
            server.url, reconnect=True, backoff=backoff, open_timeout=0.3
        )
        # The listening socket accepts TCP connections, but the blocked loop
        # completes no handshake, so each attempt times out after 0.3 s.
        threaded.loop.call_soon_threadsafe(time.sleep, 1.5)
        await asyncio.sleep(0.1)
        subscriber.start()
        await asyncio.wait_for(subscriber.connected.wait(), timeout(5))
        await subscriber.stop()
        assert backoff.attempt >= 3
        assert subscriber.follower.errors >= 3
        assert subscriber.outages == []

    threaded = ThreadedServer()
    with threaded as server:
        run(scenario(threaded, server), units=15)


def test_subscriber_latency_none_until_connected() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = WebSocketSubscriber(
                server.url, ping_interval=0.1, ping_timeout=1
            )
            assert subscriber.latency is None
            subscriber.start()
            await asyncio.wait_for(subscriber.connected.wait(), timeout(2))
            await until(lambda: (subscriber.latency or 0) > 0)
            assert subscriber.latency is not None
            assert subscriber.latency < timeout(1)
            await subscriber.stop()
            assert subscriber.latency is None
            assert not subscriber.connected.is_set()

    run(scenario())


def test_subscriber_without_reconnect_stops_on_loss() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            subscriber = await connected_subscriber(server.url)
            await server.kill()
            await until(lambda: subscriber.failure is not None)
            await server.start(keep_history=True)
            await asyncio.sleep(0.2)
            await subscriber.stop()
            assert subscriber.reconnects == 0
            [outage] = subscriber.outages
            assert outage.code == 1006
            assert outage.back_at is None
            assert subscriber.follower.notices[-1] == (
                "stopped: connection closed: no close frame received or sent"
            )

    run(scenario())


@pytest.mark.parametrize("via", ["query", "message", "cookie"])
def test_subscriber_token_each_method_resumes(via: str) -> None:
    async def scenario() -> None:
        auth = TokenAuth(via=via)  # type: ignore[arg-type]
        async with rtkit.Server(port=0, auth=auth) as server:
            subscriber = await connected_subscriber(
                server.url,
                reconnect=True,
                backoff=fast_backoff(),
                token=auth.token,
                auth=via,
            )
            server.publish("one")
            await server.kill()
            server.publish("two")
            await server.start(keep_history=True)
            follower = subscriber.follower
            await until(lambda: follower.since == 2, units=5)
            await subscriber.stop()
            assert [d.seq for d in follower.deliveries] == [1, 2]
            assert subscriber.reconnects == 1
            assert subscriber.failure is None
            # The upgrade of each connection, plus GET /login before each for
            # cookies.
            assert follower.requests == (4 if via == "cookie" else 2)

    run(scenario(), units=15)


@pytest.mark.parametrize("via", ["query", "message", "cookie"])
def test_subscriber_wrong_token_stops(via: str) -> None:
    async def scenario() -> None:
        auth = TokenAuth(via=via)  # type: ignore[arg-type]
        async with rtkit.Server(port=0, auth=auth) as server:
            subscriber = WebSocketSubscriber(
                server.url,
                reconnect=True,
                backoff=fast_backoff(),
                token="wrong-token",
                auth=via,
            )
            subscriber.start()
            await until(lambda: subscriber.failure is not None, units=5)
            await asyncio.sleep(0.2)
            await subscriber.stop()
            failure = subscriber.failure
            if via == "query":
                assert isinstance(failure, InvalidStatus)
                assert failure.response.status_code == 401
            else:
                assert isinstance(failure, AuthenticationFailed)
            assert "wrong-token" not in str(failure)
            assert not subscriber.connected.is_set()
            assert subscriber.follower.errors == 1
            assert subscriber.follower.notices[-1].startswith("stopped: ")

    run(scenario(), units=15)


def test_session_cookie_from_set_cookie_headers() -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "theme=dark; Path=/"),
        ("Set-Cookie", "rtkit_session_9000=abc; HttpOnly; SameSite=Strict; Path=/"),
    ]
    assert _session_cookie(headers) == "rtkit_session_9000=abc"
    assert _session_cookie(headers[:2]) is None


def test_subscriber_missing_token_gets_401() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, auth=TokenAuth()) as server:
            subscriber = WebSocketSubscriber(server.url, reconnect=True)
            subscriber.start()
            await until(lambda: subscriber.failure is not None, units=5)
            await subscriber.stop()
            assert isinstance(subscriber.failure, InvalidStatus)
            notice = subscriber.follower.notices[-1]
            assert notice.startswith(
                "stopped: server rejected WebSocket connection: HTTP 401: "
            )

    run(scenario())


def test_pollers_send_token_as_bearer() -> None:
    async def scenario() -> None:
        auth = TokenAuth()
        async with rtkit.Server(port=0, auth=auth) as server:
            server.publish("one")
            pollers = [
                ShortPoller(server.url, 0.05, token=auth.token),
                LongPoller(server.url, 1, token=auth.token),
            ]
            for poller in pollers:
                poller.start()
            await until(lambda: all(p.follower.since == 1 for p in pollers))
            for poller in pollers:
                follower = await poller.stop()
                assert follower.errors == 0

    run(scenario())


def test_subscriber_over_wss_resumes(tmp_path: Path) -> None:
    async def scenario() -> None:
        ca = LocalCA.create(tmp_path)
        auth = TokenAuth(via="cookie")
        options = {"auth": auth, "ssl": ca.server_context()}
        async with rtkit.Server(port=0, **options) as server:  # type: ignore[arg-type]
            assert server.url.startswith("https://")
            subscriber = WebSocketSubscriber(
                server.url,
                reconnect=True,
                backoff=fast_backoff(),
                token=auth.token,
                auth="cookie",
                ssl=ca.client_context(),
            )
            assert subscriber.ws_url.startswith("wss://")
            subscriber.start()
            await asyncio.wait_for(subscriber.connected.wait(), timeout(2))
            server.publish("one")
            await server.kill()
            await server.start(keep_history=True)
            server.publish("two")
            follower = subscriber.follower
            await until(lambda: follower.since == 2, units=5)
            await subscriber.stop()
            assert [d.seq for d in follower.deliveries] == [1, 2]
            assert subscriber.failure is None

    run(scenario(), units=15)


def test_subscriber_untrusted_certificate_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        server_ca = LocalCA.create(tmp_path / "server")
        other_ca = LocalCA.create(tmp_path / "other")
        context = server_ca.server_context()
        async with rtkit.Server(port=0, ssl=context) as server:
            subscriber = WebSocketSubscriber(
                server.url, reconnect=True, ssl=other_ca.client_context()
            )
            subscriber.start()
            await until(lambda: subscriber.failure is not None, units=5)
            await subscriber.stop()
            assert "CERTIFICATE_VERIFY_FAILED" in str(subscriber.failure)
            assert subscriber.follower.notices[-1].endswith(
                "pass ssl= a context that trusts the server's CA, "
                "e.g. LocalCA.client_context()"
            )

    run(scenario())


def retry_after_error(status: int, value: str | None) -> InvalidStatus:
    response = Response(status, "", Headers())
    if value is not None:
        response.headers["Retry-After"] = value
    return InvalidStatus(response)


@pytest.mark.parametrize(
    ("status", "value", "seconds"),
    [
        (503, "5", 5.0),
        (429, "0.5", 0.5),
        (503, None, 0.0),
        (503, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        (503, "-1", 0.0),
        (503, "inf", 0.0),
        (503, "86400", MAX_RETRY_AFTER),
        (401, "5", 0.0),
    ],
)
def test_retry_after_reads_header(
    status: int, value: str | None, seconds: float
) -> None:
    assert retry_after(retry_after_error(status, value)) == seconds


def test_retry_after_other_errors_zero() -> None:
    assert retry_after(ConnectionRefusedError()) == 0.0


def test_subscriber_waits_retry_after_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rtkit.server, "RETRY_AFTER", 1)

    async def scenario() -> int:
        async with rtkit.Server(port=0, max_connections=1) as server:
            holder = await connect(server.ws_url, open_timeout=timeout(2))
            subscriber = WebSocketSubscriber(
                server.url, reconnect=True, backoff=fast_backoff(base=0.01, cap=0.02)
            )
            subscriber.start()
            await asyncio.sleep(0.6)
            # Without Retry-After, the tiny backoff would retry dozens of times.
            failed_while_full = subscriber.follower.errors
            await holder.close()
            await until(subscriber.connected.is_set, units=5)
            await subscriber.stop()
            return failed_while_full

    assert run(scenario(), units=10) == 1


def test_follower_reset_starts_over() -> None:
    follower = Follower("reset")
    follower.since, follower.epoch = 50, "e1"
    events = [{"seq": seq, "ts": 0.0} for seq in (1, 2, 3)]
    body = {"epoch": "e1", "events": events, "missed": 0, "reset": True}
    follower.accept_poll(body, 1.0)
    assert [delivery.seq for delivery in follower.deliveries] == [1, 2, 3]
    assert follower.duplicates == 0
    assert follower.since == 3
    assert follower.notices[-1].startswith("position reset: seq 50")


def test_subscriber_since_past_latest_replays() -> None:
    async def scenario() -> list[int]:
        async with rtkit.Server(port=0) as server:
            for n in range(3):
                server.publish(n)
            subscriber = WebSocketSubscriber(server.url)
            subscriber.follower.since = 50
            subscriber.follower.epoch = server.epoch
            subscriber.start()
            await until(lambda: subscriber.follower.since == 3, units=5)
            follower = await subscriber.stop()
            return [delivery.seq for delivery in follower.deliveries]

    assert run(scenario()) == [1, 2, 3]
