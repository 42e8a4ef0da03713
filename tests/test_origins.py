"""Origin checks: the rule itself, then real upgrades accepted and rejected."""

from __future__ import annotations

import asyncio
import logging

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import rtkit
from rtkit.origins import check_host, check_origin, normalize_origin

from .conftest import run, timeout

ACCEPTED = [
    (None, "127.0.0.1:8765"),
    ("http://127.0.0.1:8765", "127.0.0.1:8765"),
    ("http://localhost:8765", "127.0.0.1:8765"),
    ("http://127.0.0.1:8765", "localhost:8765"),
    ("http://[::1]:8765", "127.0.0.1:8765"),
    ("HTTP://LOCALHOST:8765/", "localhost:8765"),
    ("http://192.168.1.20:8765", "192.168.1.20:8765"),
    ("http://127.0.0.1", "127.0.0.1"),
    ("https://127.0.0.1", "127.0.0.1:443"),
    # A page proxied by the Jupyter server keeps Jupyter's Host and Origin.
    ("http://127.0.0.1:8888", "127.0.0.1:8888"),
]

REJECTED = [
    ("http://evil.example", "127.0.0.1:8765", "is not this server's origin"),
    ("http://127.0.0.1:3000", "127.0.0.1:8765", "is not this server's origin"),
    ("http://192.168.1.20:8765", "127.0.0.1:8765", "is not this server's origin"),
    ("null", "127.0.0.1:8765", "Origin 'null' is sent by pages opened from file://"),
    ("http://rebind.example:8765", "rebind.example:8765", "DNS rebinding"),
    ("ftp://127.0.0.1:8765", "127.0.0.1:8765", "is not a valid http(s) origin"),
    ("http://127.0.0.1:99999", "127.0.0.1:8765", "is not a valid http(s) origin"),
    ("garbage", "127.0.0.1:8765", "is not a valid http(s) origin"),
    ("http://127.0.0.1:8765", None, "no Host header"),
    ("http://127.0.0.1:8765", "127.0.0.1:abc", "is not a valid host[:port]"),
]


@pytest.mark.parametrize(("origin", "host"), ACCEPTED)
def test_check_origin_accepts_own_origin(origin: str | None, host: str) -> None:
    assert check_origin(origin, host) is None


@pytest.mark.parametrize(("origin", "host", "reason"), REJECTED)
def test_check_origin_rejects_with_reason(
    origin: str, host: str | None, reason: str
) -> None:
    result = check_origin(origin, host)
    assert result is not None
    assert reason in result


def test_check_origin_allow_list_accepts() -> None:
    allowed = {normalize_origin("https://hub.example.org/"), normalize_origin("null")}
    assert check_origin("https://hub.example.org", "127.0.0.1:8765", allowed) is None
    assert check_origin("null", "127.0.0.1:8765", allowed) is None
    assert check_origin("https://other.example.org", "127.0.0.1:8765", allowed)


def test_check_origin_rejection_names_fix() -> None:
    reason = check_origin("http://127.0.0.1:3000", "127.0.0.1:8765")
    assert reason is not None
    assert "allowed_origins=['http://127.0.0.1:3000']" in reason
    assert "--allow-origin http://127.0.0.1:3000" in reason


def test_normalize_origin_empty_raises() -> None:
    with pytest.raises(ValueError, match="invalid origin: ' '"):
        normalize_origin(" ")


async def welcome_with_origin(url: str, origin: str | None) -> str:
    async with connect(url, origin=origin, open_timeout=timeout(2)) as client:  # type: ignore[arg-type]
        return await asyncio.wait_for(client.recv(), timeout(2))


def test_upgrade_foreign_origin_rejected_403(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            with pytest.raises(InvalidStatus) as raised:
                await welcome_with_origin(server.ws_url, "http://evil.example")
            response = raised.value.response
            assert response.status_code == 403
            assert (
                b"Origin 'http://evil.example' is not this server's origin"
                in response.body
            )
            assert server.handshakes[-1].response.status_code == 403
            assert server.is_serving

    run(scenario())
    rejections = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected")
    ]
    assert len(rejections) == 1
    assert "rejected WebSocket upgrade from 127.0.0.1:" in rejections[0]
    assert "'http://evil.example' is not this server's origin" in rejections[0]
    assert caplog.records[-1].levelno <= logging.WARNING


def test_upgrade_own_origin_and_missing_origin_accepted() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            own = f"http://localhost:{server.port}"
            assert await welcome_with_origin(server.ws_url, own) == rtkit.WELCOME
            assert await welcome_with_origin(server.ws_url, None) == rtkit.WELCOME

    run(scenario())


def test_upgrade_null_origin_needs_allow_list() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            with pytest.raises(InvalidStatus) as raised:
                await welcome_with_origin(server.ws_url, "null")
            assert raised.value.response.status_code == 403
        async with rtkit.Server(port=0, allowed_origins=["null"]) as server:
            assert await welcome_with_origin(server.ws_url, "null") == rtkit.WELCOME

    run(scenario())


def test_upgrade_allowed_origin_accepted() -> None:
    async def scenario() -> None:
        origins = ["https://hub.example.org/"]
        async with rtkit.Server(port=0, allowed_origins=origins) as server:
            welcome = await welcome_with_origin(
                server.ws_url, "https://hub.example.org"
            )
            assert welcome == rtkit.WELCOME

    run(scenario())


@pytest.mark.parametrize(
    ("origin", "host"),
    [("http://[::1", "127.0.0.1:8765"), ("http://[zz]:1", "127.0.0.1:8765")],
)
def test_check_origin_malformed_rejected(origin: str, host: str) -> None:
    assert check_origin(origin, host) is not None
    assert check_origin("http://127.0.0.1:8765", "[::1") is not None


@pytest.mark.parametrize("bad", ["not a url", "ftp://x", "http://", "http://a/b"])
def test_normalize_origin_invalid_raises(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid origin"):
        normalize_origin(bad)


def test_upgrade_repeated_or_malformed_headers_403() -> None:
    async def attempt(port: int, extra: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
        )
        response = await asyncio.wait_for(reader.read(), timeout(2))
        writer.close()
        return response

    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
            cases = [
                host + b"Origin: http://a.example\r\nOrigin: http://b.example\r\n",
                host + host,
                host + b"Origin: http://[::1\r\n",
                b"Host: [::1\r\nOrigin: http://127.0.0.1\r\n",
            ]
            for extra in cases:
                response = await attempt(server.port, extra)
                assert response.startswith(b"HTTP/1.1 403"), (extra, response[:80])

    run(scenario())


HOST_ACCEPTED = [
    None,
    "127.0.0.1:8765",
    "localhost:8765",
    "[::1]:8765",
    "192.168.1.20:8765",
]

HOST_REJECTED = [
    ("rebind.example:8765", "DNS rebinding"),
    ("127.0.0.1:abc", "is not a valid host[:port]"),
]


@pytest.mark.parametrize("host", HOST_ACCEPTED)
def test_check_host_accepts_ip_and_localhost(host: str | None) -> None:
    assert check_host(host) is None


@pytest.mark.parametrize(("host", "reason"), HOST_REJECTED)
def test_check_host_rejects_with_reason(host: str, reason: str) -> None:
    result = check_host(host)
    assert result is not None
    assert reason in result


def test_check_host_allow_list_accepts_dns_name() -> None:
    allowed = {normalize_origin("https://hub.example.org")}
    assert check_host("hub.example.org", allowed) is None
    assert check_host("other.example.org", allowed) is not None


async def get_with_host(port: int, target: str, host: str) -> bytes:
    """Send one GET to 127.0.0.1:port with a chosen Host header; return the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        return await asyncio.wait_for(reader.read(), timeout(2))
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("target", ["/poll", "/health", "/", "/ws"])
def test_http_dns_host_rejected_403(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> tuple[bytes, bytes]:
        async with rtkit.Server(port=0) as server:
            rebound = await get_with_host(server.port, target, "rebind.example")
            own = await get_with_host(server.port, target, f"127.0.0.1:{server.port}")
            return rebound, own

    with caplog.at_level(logging.WARNING, logger="rtkit.server"):
        rebound, own = run(main())
    assert rebound.startswith(b"HTTP/1.1 403"), rebound[:80]
    assert b"DNS rebinding" in rebound
    assert not own.startswith(b"HTTP/1.1 403"), own[:80]
    assert "rejected request" in caplog.text


def test_http_dns_host_allowed_or_unchecked() -> None:
    async def main() -> tuple[bytes, bytes]:
        allowed = rtkit.Server(port=0, allowed_origins=["http://rebind.example"])
        unchecked = rtkit.Server(port=0, check_origin=False)
        async with allowed, unchecked:
            first = await get_with_host(allowed.port, "/health", "rebind.example")
            second = await get_with_host(unchecked.port, "/health", "rebind.example")
            return first, second

    first, second = run(main())
    assert first.startswith(b"HTTP/1.1 200"), first[:80]
    assert second.startswith(b"HTTP/1.1 200"), second[:80]
