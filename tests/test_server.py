"""Lifecycle of rtkit.Server on real loopback sockets."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import rtkit
from rtkit.server import default_port

from .conftest import can_bind, free_port, run, timeout


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
