"""Lifecycle of rtkit.Server on real loopback sockets."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import rtkit
from rtkit.server import default_port
from rtkit.tls import LocalCA

from .conftest import can_bind, free_port, run, timeout, until


async def greeting(url: str) -> str:
    async with connect(url, open_timeout=timeout(2)) as client:
        return await asyncio.wait_for(client.recv(), timeout(2))


def test_start_defaults_to_loopback_8765() -> None:
    server = rtkit.Server()
    assert server.host == "127.0.0.1"
    assert server.port == 8765
    assert server.url == "http://127.0.0.1:8765/"
    assert server.ws_url == "ws://127.0.0.1:8765/ws"


def test_start_port_zero_binds_free_port() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        try:
            assert server.is_serving
            assert server.port != 0
            assert server.url == f"http://127.0.0.1:{server.port}/"
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())


def test_start_twice_same_port_replaces_server() -> None:
    port = free_port()

    async def scenario() -> None:
        first = await rtkit.start(port=port)
        first_epoch = first.epoch
        async with connect(first.ws_url, open_timeout=timeout(2)) as client:
            await client.recv()
            second = await rtkit.start(port=port)
            try:
                assert not first.is_serving
                assert second.is_serving
                assert second.port == port
                assert second.epoch != first_epoch
                assert rtkit.running_servers() == [second]
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(client.recv(), timeout(2))
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1001
                assert await greeting(second.ws_url) == rtkit.WELCOME
            finally:
                await second.stop()

    run(scenario())


def test_start_same_instance_twice_is_noop() -> None:
    async def scenario() -> None:
        server = rtkit.Server(port=0)
        await server.start()
        epoch = server.epoch
        await server.start()
        try:
            assert server.epoch == epoch
        finally:
            await server.stop()

    run(scenario())


def test_start_port_held_by_other_program_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(rtkit.PortInUseError) as raised:
            run(rtkit.start(port=port))
    message = str(raised.value)
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert f"rtkit.start(port={port + 1})" in message
    assert raised.value.errno == errno.EADDRINUSE


def test_stop_twice_is_harmless_and_frees_port() -> None:
    async def scenario() -> int:
        server = await rtkit.start(port=0)
        port = server.port
        await server.stop()
        await server.stop()
        assert not server.is_serving
        assert rtkit.running_servers() == []
        return port

    port = run(scenario())
    assert can_bind(port)


def test_stop_closes_clients_with_1001() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        async with connect(server.ws_url, open_timeout=timeout(2)) as client:
            await client.recv()
            await server.stop()
            await asyncio.wait_for(client.wait_closed(), timeout(2))
            assert client.close_code == 1001

    run(scenario())


def test_stop_module_function_stops_every_server() -> None:
    async def scenario() -> None:
        first = await rtkit.start(port=0)
        second = await rtkit.start(port=0)
        await rtkit.stop(port=first.port)
        assert not first.is_serving
        assert second.is_serving
        await rtkit.stop()
        await rtkit.stop()
        assert not second.is_serving

    run(scenario())


def test_server_async_with_stops_on_exit() -> None:
    async def scenario() -> int:
        async with rtkit.Server(port=0) as server:
            assert server.is_serving
            assert await greeting(server.ws_url) == rtkit.WELCOME
        assert not server.is_serving
        return server.port

    assert can_bind(run(scenario()))


def test_restart_keeps_port_and_changes_epoch() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        port, epoch = server.port, server.epoch
        try:
            await server.restart()
            assert server.port == port
            assert server.epoch != epoch
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())


def test_start_logs_url_and_stop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")

    async def scenario() -> str:
        server = await rtkit.start(port=0)
        await server.stop()
        return server.url

    url = run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert (
        f"rtkit server listening on {url} (WebSocket {url.replace('http', 'ws')}ws)"
        in messages
    )
    assert f"rtkit server on {url} stopped" in messages


def test_server_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("IPv6 is not available")

    async def scenario() -> None:
        try:
            server = await rtkit.start("::1", 0)
        except OSError as exc:
            pytest.skip(f"cannot bind ::1: {exc}")
        try:
            assert server.url == f"http://[::1]:{server.port}/"
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())


@pytest.mark.parametrize("port", [-1, 65536, "8765", 1.5, True])
def test_server_invalid_port_raises(port: object) -> None:
    with pytest.raises(ValueError, match="invalid port"):
        rtkit.Server(port=port)  # type: ignore[arg-type]


def test_default_port_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTKIT_PORT", "9001")
    assert default_port() == 9001
    assert rtkit.Server().port == 9001


def test_default_port_invalid_environment_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTKIT_PORT", "abc")
    with pytest.raises(ValueError, match="invalid RTKIT_PORT: 'abc'"):
        default_port()


def test_handler_failure_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(connection: object) -> None:
        raise RuntimeError("boom")

    async def close_code_of_new_client(url: str) -> int | None:
        async with connect(url, open_timeout=timeout(2)) as client:
            await asyncio.wait_for(client.wait_closed(), timeout(2))
            return client.close_code

    async def scenario() -> None:
        async with rtkit.Server(port=0, handler=failing) as server:
            assert await close_code_of_new_client(server.ws_url) == 1011
            assert server.is_serving
            assert await close_code_of_new_client(server.ws_url) == 1011

    caplog.set_level(logging.INFO, logger="rtkit")
    run(scenario())
    failures = [
        r for r in caplog.records if r.getMessage().startswith("handler failed")
    ]
    assert len(failures) == 2
    assert failures[0].exc_info is not None


def test_handshakes_recorded_with_headers() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            assert await greeting(server.ws_url) == rtkit.WELCOME
            handshake = server.handshakes[-1]
            text = handshake.format()
            assert text.startswith("GET /ws HTTP/1.1\n")
            assert "HTTP/1.1 101 Switching Protocols" in text
            assert "Upgrade: websocket" in text
            assert handshake.remote.startswith("127.0.0.1:")

    run(scenario())


def test_recent_logs_show_connection_lines() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            assert await greeting(server.ws_url) == rtkit.WELCOME
            # The handler logs the disconnect after the close handshake ends.
            await asyncio.sleep(0.1)

    run(scenario())
    lines = rtkit.recent_logs(10)
    assert "connected from 127.0.0.1:" in lines
    assert "disconnected: client closed with 1000 (normal closure)" in lines


def test_restart_keeps_event_source_running() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            server.start_source(rate=50)
            await server.restart()
            assert server.source is not None
            assert server.source.rate == 50
            for _ in range(100):
                if server.hub.latest > 0:
                    break
                await asyncio.sleep(0.02)
            assert server.hub.latest > 0

    run(scenario())


@pytest.mark.parametrize("size", [0, -5, 1.5, True])
def test_server_invalid_max_size_raises(size: object) -> None:
    with pytest.raises(ValueError, match="invalid max_size"):
        rtkit.Server(port=0, max_size=size)  # type: ignore[arg-type]


async def long_poll(port: int, query: str) -> bytes:
    """Send GET /poll?query and return the raw response, b"" if the server hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /poll?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        return await asyncio.wait_for(reader.read(), timeout(5))
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def test_kill_drops_clients_without_close_frame() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        async with connect(server.ws_url, open_timeout=timeout(2)) as client:
            await client.recv()
            await server.kill()
            await asyncio.wait_for(client.wait_closed(), timeout(2))
            assert client.close_code == 1006
            assert client.protocol.close_rcvd is None
        assert not server.is_serving
        assert server.connections == []
        assert rtkit.running_servers() == []
        assert can_bind(server.port)

    run(scenario())


def test_kill_aborts_pending_long_poll() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        polling = asyncio.ensure_future(long_poll(server.port, "since=0&wait=20"))
        await asyncio.sleep(0.2)
        started = asyncio.get_running_loop().time()
        await server.kill()
        assert await asyncio.wait_for(polling, timeout(2)) == b""
        assert asyncio.get_running_loop().time() - started < timeout(2)

    run(scenario())


def test_kill_keeps_hub_and_twice_is_harmless() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        server.publish("kept")
        epoch = server.epoch
        await server.kill()
        await server.kill()
        assert server.epoch == epoch
        assert server.hub.latest == 1
        await server.stop()

    run(scenario())


def test_start_after_kill_reuses_port() -> None:
    async def scenario() -> None:
        server = rtkit.Server(port=0)
        await server.start()
        port = server.port
        await server.kill()
        await server.start()
        try:
            assert server.port == port
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())


def test_start_keep_history_resumes_events() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        for i in range(3):
            server.publish(i)
        epoch = server.epoch
        await server.kill()
        await server.start(keep_history=True)
        try:
            assert server.epoch == epoch
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                await client.send(
                    json.dumps({"type": "subscribe", "since": 1, "epoch": epoch})
                )
                replies = [
                    json.loads(await asyncio.wait_for(client.recv(), timeout(2)))
                    for _ in range(3)
                ]
            assert replies[0]["type"] == "subscribed"
            assert replies[0]["missed"] == 0
            assert [reply["seq"] for reply in replies[1:]] == [2, 3]
        finally:
            await server.stop()

    run(scenario())


def test_start_after_kill_new_epoch() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        server.publish("lost")
        epoch = server.epoch
        await server.kill()
        await server.start()
        try:
            assert server.epoch != epoch
            assert server.hub.latest == 0
        finally:
            await server.stop()

    run(scenario())


def test_restart_keep_history_long_poll_waits() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            server.publish("first")
            epoch = server.epoch
            await server.restart(keep_history=True)
            assert server.epoch == epoch
            loop = asyncio.get_running_loop()
            started = loop.time()
            empty = await long_poll(server.port, f"since=1&wait=0.3&epoch={epoch}")
            assert loop.time() - started >= 0.25
            assert b'"events":[]' in empty.replace(b" ", b"")
            polling = asyncio.ensure_future(
                long_poll(server.port, f"since=1&wait=5&epoch={epoch}")
            )
            await asyncio.sleep(0.1)
            server.publish("second")
            woken = await asyncio.wait_for(polling, timeout(2))
            assert b'"second"' in woken

    run(scenario())


def test_max_connections_full_returns_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit")

    async def scenario() -> None:
        async with rtkit.Server(port=0, max_connections=2) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as first:
                await first.recv()
                async with connect(server.ws_url, open_timeout=timeout(2)) as second:
                    await second.recv()
                    with pytest.raises(InvalidStatus) as raised:
                        await connect(server.ws_url, open_timeout=timeout(2))
                    response = raised.value.response
                    assert response.status_code == 503
                    assert response.headers["Retry-After"] == "5"
                    assert response.body == (
                        b"server full: 2 of 2 connections open (max_connections); "
                        b"try again later\n"
                    )
                    assert server.rejected_full == 1
                await until(lambda: len(server._upgraded) == 1)
                assert await greeting(server.ws_url) == rtkit.WELCOME

    run(scenario())
    assert any("server full" in record.getMessage() for record in caplog.records)


def test_max_connections_none_disables_limit() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, max_connections=None) as server:
            assert server.max_connections is None
            assert await greeting(server.ws_url) == rtkit.WELCOME

    run(scenario())


def test_max_connections_full_log_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> None:
        async with rtkit.Server(port=0, max_connections=1) as server:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                for _ in range(5):
                    with pytest.raises(InvalidStatus):
                        await connect(server.ws_url, open_timeout=timeout(2))
                assert server.rejected_full == 5

    run(scenario())
    full = [r for r in caplog.records if "server full" in r.getMessage()]
    assert len(full) == 1


def test_kill_frees_connection_slots() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0, max_connections=1)
        client = await connect(server.ws_url, open_timeout=timeout(2))
        await client.recv()
        await server.kill()
        await asyncio.wait_for(client.wait_closed(), timeout(2))
        await server.start(keep_history=True)
        try:
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())


def test_check_origin_false_accepts_other_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> None:
        async with rtkit.Server(port=0, check_origin=False) as server:
            async with connect(
                server.ws_url,
                origin="http://127.0.0.1:1",  # type: ignore[arg-type]
                open_timeout=timeout(2),
            ) as client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())
    warnings = [r.getMessage() for r in caplog.records]
    assert any(
        "Origin check disabled" in message and "any web page" in message
        for message in warnings
    )


def test_check_origin_default_rejects_other_origin() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            with pytest.raises(InvalidStatus) as raised:
                await connect(
                    server.ws_url,
                    origin="http://127.0.0.1:1",  # type: ignore[arg-type]
                    open_timeout=timeout(2),
                )
            assert raised.value.response.status_code == 403

    run(scenario())


def test_access_log_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.access")

    async def scenario() -> None:
        async with rtkit.Server(port=0, access_log=True) as server:
            assert await greeting(server.ws_url + "?token=s3cret") == rtkit.WELCOME
            await long_poll(server.port, "since=0")
            await long_poll(server.port, "wait=99")

    run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.name == "rtkit.access"]
    assert len(lines) == 3
    assert re.fullmatch(
        r'127\.0\.0\.1:\d+ "GET /ws\?token=s3cret HTTP/1\.1" 101', lines[0]
    )
    assert lines[1].endswith('"GET /poll?since=0 HTTP/1.1" 200')
    assert lines[2].endswith('"GET /poll?wait=99 HTTP/1.1" 400')


def test_access_log_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.access")

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            await long_poll(server.port, "since=0")

    run(scenario())
    assert [r for r in caplog.records if r.name == "rtkit.access"] == []


def test_ssl_serves_https_and_wss(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)

    async def scenario() -> None:
        async with rtkit.Server(port=0, ssl=ca.server_context()) as server:
            assert server.url == f"https://127.0.0.1:{server.port}/"
            assert server.ws_url == f"wss://127.0.0.1:{server.port}/ws"
            async with connect(
                server.ws_url, ssl=ca.client_context(), open_timeout=timeout(2)
            ) as client:
                assert await client.recv() == rtkit.WELCOME
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                server.port,
                ssl=ca.client_context(),
                server_hostname="127.0.0.1",
            )
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), timeout(2))
            writer.close()
            assert raw.startswith(b"HTTP/1.1 200 OK")

    run(scenario())


def test_ssl_origin_check_uses_https_origin(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)

    async def scenario() -> None:
        async with rtkit.Server(port=0, ssl=ca.server_context()) as server:
            origin = f"https://127.0.0.1:{server.port}"
            async with connect(
                server.ws_url,
                ssl=ca.client_context(),
                origin=origin,  # type: ignore[arg-type]
                open_timeout=timeout(2),
            ) as client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


def test_options_reach_push_handler() -> None:
    server = rtkit.Server(
        port=0, max_rate=5, slow_policy="discard", max_buffer=4096, stall_timeout=3
    )
    assert server.push.max_rate == 5
    assert server.push.slow_policy == "discard"
    assert server.push.max_buffer == 4096
    assert server.push.stall_timeout == 3


INVALID_OPTIONS = [
    ({"max_connections": 0}, "invalid max_connections: 0"),
    ({"max_connections": 1.5}, "invalid max_connections: 1.5"),
    ({"max_connections": True}, "invalid max_connections: True"),
    ({"max_rate": 0}, "invalid max_rate: 0"),
    ({"max_rate": float("nan")}, "invalid max_rate: nan"),
    ({"slow_policy": "block"}, "invalid slow_policy: 'block'"),
    ({"max_wait": 3601}, "invalid max_wait: 3601"),
    ({"stall_timeout": 0}, "invalid stall_timeout: 0"),
    ({"max_buffer": -1}, "invalid max_buffer: -1"),
    ({"max_buffer": 1.5}, "invalid max_buffer: 1.5"),
    ({"ping_interval": 0}, "invalid ping_interval: 0"),
    ({"ping_timeout": -1}, "invalid ping_timeout: -1"),
    ({"check_origin": "no"}, "invalid check_origin: 'no'"),
    ({"access_log": 1}, "invalid access_log: 1"),
    ({"auth": "s3cret"}, "invalid auth: 's3cret'"),
    ({"ssl": True}, "invalid ssl: True"),
]


@pytest.mark.parametrize(("options", "message"), INVALID_OPTIONS)
def test_server_invalid_option_raises(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        rtkit.Server(port=0, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("close_timeout", [0, -1, "5", None, float("nan"), True])
def test_server_invalid_close_timeout_raises(close_timeout: object) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"invalid close_timeout: {close_timeout!r}")
    ):
        rtkit.Server(port=0, close_timeout=close_timeout)  # type: ignore[arg-type]


# Host


@pytest.mark.parametrize("host", ["", " ", None])
def test_server_empty_host_raises(host: object) -> None:
    with pytest.raises(ValueError) as raised:
        rtkit.Server(host, port=0)  # type: ignore[arg-type]
    message = str(raised.value)
    assert message.startswith(f"invalid host: {host!r}")
    assert "'0.0.0.0' or '::'" in message


@pytest.mark.parametrize(
    ("host", "url_host"),
    [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("::1", "[::1]")],
)
def test_server_url_reaches_wildcard_host(host: str, url_host: str) -> None:
    assert rtkit.Server(host, port=8765).url == f"http://{url_host}:8765/"


@pytest.fixture
def loopback_binds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Bind every server to the loopback address of its host's family.

    Start code still receives the host it was given, such as ``0.0.0.0``, but no
    socket listens beyond this machine. Returns the (host, port) pairs bound.
    """
    real_serve = rtkit.server.serve
    bound: list[tuple[str, int]] = []

    async def serve(handler: object, host: str, port: int, **options: object) -> object:
        loopback = "::1" if ":" in host else "127.0.0.1"
        websocket_server = await real_serve(handler, loopback, port, **options)  # type: ignore[arg-type]
        bound.extend(
            (loopback, sock.getsockname()[1]) for sock in websocket_server.sockets
        )
        return websocket_server

    monkeypatch.setattr(rtkit.server, "serve", serve)
    return bound


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_start_wildcard_host_warns_network(
    host: str,
    loopback_binds: list[tuple[str, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if ":" in host and not socket.has_ipv6:
        pytest.skip("IPv6 is not available")
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> None:
        try:
            server = await rtkit.start(host, 0)
        except OSError as exc:
            pytest.skip(f"cannot bind the loopback address for {host}: {exc}")
        try:
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"listens on {host}, so other machines on the network" in w for w in warnings
    ), warnings


def test_start_loopback_host_no_network_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> None:
        async with rtkit.Server("127.0.0.1", 0):
            pass

    run(scenario())
    assert "other machines on the network" not in caplog.text


# Concurrent lifecycle calls


def listening(bound: list[tuple[str, int]]) -> list[int]:
    """Return the ports of ``bound`` that still have a listener, once each."""
    return sorted({port for host, port in bound if not can_bind(port, host)})


def test_start_concurrent_twice_binds_once(
    loopback_binds: list[tuple[str, int]],
) -> None:
    async def scenario() -> None:
        server = rtkit.Server(port=0)
        await asyncio.gather(server.start(), server.start())
        try:
            assert len(loopback_binds) == 1
            assert rtkit.running_servers() == [server]
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())
    assert listening(loopback_binds) == []


def test_start_stop_start_concurrent_leaves_one(
    loopback_binds: list[tuple[str, int]],
) -> None:
    async def scenario() -> None:
        server = rtkit.Server(port=0)
        await asyncio.gather(server.start(), server.stop(), server.start())
        try:
            assert server.is_serving
            assert listening(loopback_binds) == [server.port]
        finally:
            await server.stop()

    run(scenario())
    assert listening(loopback_binds) == []


def test_restart_concurrent_twice_keeps_port(
    loopback_binds: list[tuple[str, int]],
) -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        port = server.port
        try:
            await asyncio.gather(server.restart(), server.restart())
            assert server.is_serving
            assert server.port == port
            assert listening(loopback_binds) == [port]
            assert await greeting(server.ws_url) == rtkit.WELCOME
        finally:
            await server.stop()

    run(scenario())
    assert listening(loopback_binds) == []


def test_kill_and_start_concurrent_consistent(
    loopback_binds: list[tuple[str, int]],
) -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        try:
            await asyncio.gather(server.kill(), server.start(keep_history=True))
            assert server.is_serving
            assert listening(loopback_binds) == [server.port]
        finally:
            await server.stop()

    run(scenario())
    assert listening(loopback_binds) == []


def test_module_start_same_port_concurrent() -> None:
    port = free_port()

    async def scenario() -> None:
        first, second = await asyncio.gather(
            rtkit.start(port=port), rtkit.start(port=port)
        )
        try:
            assert [first.is_serving, second.is_serving].count(True) == 1
            running = rtkit.running_servers()
            assert len(running) == 1
            assert running[0].port == port
            assert await greeting(running[0].ws_url) == rtkit.WELCOME
        finally:
            await rtkit.stop()

    run(scenario())
    assert can_bind(port)


def test_lifecycle_lock_works_in_second_event_loop() -> None:
    server = rtkit.Server(port=0)

    async def start_twice_and_stop() -> None:
        await asyncio.gather(server.start(), server.start())
        await server.stop()

    run(start_twice_and_stop())
    run(start_twice_and_stop())
    assert not server.is_serving
    assert can_bind(server.port)


# Logs


SECRET = "s3cret-TOKEN"


async def send_raw(port: int, request: str) -> bytes:
    """Send ``request`` as written to 127.0.0.1:port and return the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        return await asyncio.wait_for(reader.read(), timeout(2))
    finally:
        writer.close()


def test_log_leaves_out_query_string(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="rtkit")
    upgrade = (
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )

    async def scenario() -> list[bytes]:
        auth = rtkit.TokenAuth(SECRET)
        async with rtkit.Server(port=0, auth=auth) as server:
            host = f"Host: 127.0.0.1:{server.port}\r\n"

            def fail() -> dict[str, object]:
                raise RuntimeError("health failed")

            monkeypatch.setattr(server, "health", fail)
            requests = [
                f"GET /poll?token={SECRET} HTTP/1.1\r\nHost: rebind.example\r\n\r\n",
                f"GET /health?token={SECRET} HTTP/1.1\r\n{host}\r\n",
                f"GET /chat?token={SECRET} HTTP/1.1\r\n{host}{upgrade}\r\n",
                f"GET /ws?token={SECRET} HTTP/1.1\r\n{host}{upgrade}"
                "Origin: http://evil.example\r\n\r\n",
                f"GET /ws?token={SECRET} HTTP/1.1\r\n{host}{host}{upgrade}\r\n",
            ]
            return [await send_raw(server.port, request) for request in requests]

    responses = run(scenario())
    statuses = [response.split(b" ", 2)[1] for response in responses]
    assert statuses == [b"403", b"500", b"404", b"403", b"403"]
    records = [r for r in caplog.records if r.name != "rtkit.access"]
    assert any("rejected request '/poll' from" in r.getMessage() for r in records)
    assert any("request '/health' from" in r.getMessage() for r in records)
    leaks = [r.getMessage() for r in records if SECRET in r.getMessage()]
    assert leaks == []
    assert SECRET not in rtkit.recent_logs(50)


# Auth rejection logs


def test_repeat_filter_holds_back_repeats() -> None:
    now = [0.0]
    repeats = rtkit.server._RepeatFilter(interval=1, clock=lambda: now[0])
    assert repeats.admit("wrong token") == 0
    assert repeats.admit("wrong token") is None
    assert repeats.admit("missing token") == 0
    now[0] = 0.5
    assert repeats.admit("wrong token") is None
    now[0] = 1.0
    assert repeats.admit("wrong token") == 2
    assert repeats.admit("wrong token") is None


def test_repeat_filter_memory_bounded() -> None:
    repeats = rtkit.server._RepeatFilter(max_messages=3, clock=lambda: 0.0)
    for index in range(10):
        assert repeats.admit(f"reason {index}") == 0
    assert len(repeats._logged_at) == 3
    assert repeats.admit("reason 9") is None


def test_auth_rejections_logged_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> rtkit.Server:
        async with rtkit.Server(port=0, auth=rtkit.TokenAuth(SECRET)) as server:
            for _ in range(5):
                with pytest.raises(InvalidStatus):
                    await connect(
                        server.ws_url + "?token=wrong", open_timeout=timeout(2)
                    )
            with pytest.raises(InvalidStatus):
                await connect(server.ws_url, open_timeout=timeout(2))
        return server

    server = run(scenario())
    assert server.rejected_auth == 6
    wrong = [r for r in caplog.records if "wrong token" in r.getMessage()]
    missing = [r for r in caplog.records if "missing token" in r.getMessage()]
    assert len(wrong) == 1
    assert len(missing) == 1


def test_message_auth_failures_logged_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> rtkit.Server:
        auth = rtkit.TokenAuth(SECRET, via="message")
        async with rtkit.Server(port=0, auth=auth) as server:
            for _ in range(4):
                async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                    await client.send(json.dumps({"type": "auth", "token": "wrong"}))
                    await asyncio.wait_for(client.wait_closed(), timeout(2))
                    assert client.close_code == 1008
        return server

    server = run(scenario())
    assert server.rejected_auth == 4
    failed = [r for r in caplog.records if "failed to authenticate" in r.getMessage()]
    assert len(failed) == 1
