"""HTTP routes on the WebSocket port: client page, static files, health, 404s."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request

import rtkit
from rtkit.routes import (
    STATIC_DIR,
    is_upgrade,
    repeated_header,
    resolve_static,
    route_name,
)

from .conftest import ThreadedServer, run, timeout


def fetch(
    server: rtkit.Server, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Send one request with ``path`` exactly as given; return status, headers, body."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=timeout(2)
    )
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_root_serves_client_html(live_server: rtkit.Server) -> None:
    status, headers, body = fetch(live_server, "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == (STATIC_DIR / "client.html").read_bytes()
    assert headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("client.html", "text/html; charset=utf-8"),
        ("client.js", "text/javascript; charset=utf-8"),
        ("client.css", "text/css; charset=utf-8"),
    ],
)
def test_static_file_content_type(
    live_server: rtkit.Server, name: str, content_type: str
) -> None:
    status, headers, body = fetch(live_server, f"/static/{name}")
    assert status == 200
    assert headers["Content-Type"] == content_type
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == (STATIC_DIR / name).read_bytes()


def test_head_sends_headers_only(live_server: rtkit.Server) -> None:
    status, headers, body = fetch(live_server, "/static/client.html", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["Content-Length"] == str((STATIC_DIR / "client.html").stat().st_size)


def test_health_returns_status_and_epoch(live_server: rtkit.Server) -> None:
    status, headers, body = fetch(live_server, "/health?verbose=1")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert payload["status"] == "ok"
    assert payload["epoch"] == live_server.epoch
    assert payload["clients"] == 0


@pytest.mark.parametrize("path", ["/nope", "/static/missing.js", "/static/"])
def test_unknown_path_returns_404(live_server: rtkit.Server, path: str) -> None:
    status, headers, body = fetch(live_server, path)
    assert status == 404
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert f"not found: {path}".encode() in body


def test_post_returns_405_with_allow(live_server: rtkit.Server) -> None:
    status, headers, body = fetch(live_server, "/health", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert b"method not allowed: POST" in body


TRAVERSALS = [
    "/static/../pyproject.toml",
    "/static/%2e%2e/pyproject.toml",
    "/static/%2E%2E%2Fpyproject.toml",
    "/static/..%2f..%2f..%2f..%2fetc/passwd",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/%252e%252e/pyproject.toml",
    "/static/..\\pyproject.toml",
    "/static/%5c..%5cpyproject.toml",
    "/static/client.html%00.txt",
    "/static/%ff",
    "/../pyproject.toml",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_static_traversal_returns_404(live_server: rtkit.Server, path: str) -> None:
    status, _, body = fetch(live_server, path)
    assert status == 404
    assert b"[tool.setuptools]" not in body
    assert b"root:" not in body


def test_static_symlink_out_returns_404(tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "inside.txt").write_text("inside\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret\n")
    (static / "link-out.txt").symlink_to(secret)
    (static / "link-in.txt").symlink_to(static / "inside.txt")

    with ThreadedServer(static_dir=static) as server:
        assert fetch(server, "/static/inside.txt")[:1] == (200,)
        assert fetch(server, "/static/link-in.txt")[2] == b"inside\n"
        status, _, body = fetch(server, "/static/link-out.txt")
    assert status == 404
    assert b"secret" not in body


def test_resolve_static_stays_inside_root(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    assert resolve_static("a.txt", tmp_path) == tmp_path.resolve() / "a.txt"
    assert resolve_static("../a.txt", tmp_path / "sub") is None
    assert resolve_static(str(tmp_path / "a.txt"), tmp_path) is None
    assert resolve_static("", tmp_path) is None


@pytest.mark.parametrize("path", ["/ws", "/"])
def test_websocket_upgrade_paths_reach_handler(path: str) -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            url = f"ws://127.0.0.1:{server.port}{path}"
            async with connect(url, open_timeout=timeout(2)) as client:
                assert (
                    await asyncio.wait_for(client.recv(), timeout(2)) == rtkit.WELCOME
                )

    run(scenario())


def test_websocket_upgrade_unknown_path_404() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            with pytest.raises(InvalidStatus) as raised:
                await connect(
                    f"ws://127.0.0.1:{server.port}/chat", open_timeout=timeout(2)
                )
            assert raised.value.response.status_code == 404
            assert b"open WebSockets on /ws or /" in raised.value.response.body

    run(scenario())


def raw_request(server: rtkit.Server, request: bytes) -> bytes:
    """Send ``request`` as written and return the raw response."""
    with socket.create_connection(("127.0.0.1", server.port), timeout(2)) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "path",
    ["/static/" + "a" * 5000, "/static/" + "a/" * 2000 + "x", "/static/client.html/"],
)
def test_static_odd_path_returns_404(live_server: rtkit.Server, path: str) -> None:
    status, _, _ = fetch(live_server, path)
    assert status == 404


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"GET health", b"404"), (b"GET *", b"404"), (b"OPTIONS *", b"405")],
)
def test_request_target_without_slash_no_500(
    live_server: rtkit.Server, request_line: bytes, status: bytes
) -> None:
    host = f"Host: 127.0.0.1:{live_server.port}\r\n\r\n".encode()
    response = raw_request(live_server, request_line + b" HTTP/1.1\r\n" + host)
    assert response.split(b" ", 2)[1] == status
    assert b"Failed to open a WebSocket connection" not in response


def test_get_ws_without_upgrade_returns_426(live_server: rtkit.Server) -> None:
    status, headers, body = fetch(live_server, "/ws")
    assert status == 426
    assert headers["Upgrade"] == "websocket"
    assert body.startswith(b"upgrade required: /ws is a WebSocket endpoint")
    assert live_server.ws_url.encode() in body


def test_head_ws_without_upgrade_returns_426_no_body(
    live_server: rtkit.Server,
) -> None:
    status, _, body = fetch(live_server, "/ws", method="HEAD")
    assert status == 426
    assert body == b""


def test_get_root_without_upgrade_serves_page(live_server: rtkit.Server) -> None:
    status, _, _ = fetch(live_server, "/")
    assert status == 200


def test_get_ws_full_server_returns_503() -> None:
    with ThreadedServer(max_connections=1) as server:

        async def hold_and_fetch() -> tuple[int, dict[str, str], bytes]:
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await asyncio.wait_for(client.recv(), timeout(2))
                return await asyncio.to_thread(fetch, server, "/ws")

        status, headers, body = run(hold_and_fetch())
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body == (
        b"server full: 1 of 1 connections open (max_connections); try again later\n"
    )


def test_get_ws_with_auth_returns_401_then_426() -> None:
    auth = rtkit.TokenAuth("s3cret")
    with ThreadedServer(auth=auth) as server:
        missing = fetch(server, "/ws")
        wrong = fetch(server, "/ws?token=nope")
        right = fetch(server, "/ws?token=s3cret")
    assert missing[0] == 401
    assert missing[1]["WWW-Authenticate"] == 'Bearer realm="rtkit"'
    assert b"ws://HOST:PORT/ws?token=TOKEN" in missing[2]
    assert wrong[0] == 401
    assert b"wrong token" in wrong[2]
    assert right[0] == 426


def test_health_reports_auth_method() -> None:
    with ThreadedServer(auth=rtkit.TokenAuth(via="cookie")) as server:
        _, _, body = fetch(server, "/health")
    assert json.loads(body)["auth"] == "cookie"


def test_health_without_auth_reports_none(live_server: rtkit.Server) -> None:
    _, _, body = fetch(live_server, "/health")
    assert json.loads(body)["auth"] is None


def test_login_without_auth_returns_404(live_server: rtkit.Server) -> None:
    status, _, body = fetch(live_server, "/login")
    assert status == 404
    assert b"requires no token" in body


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/", "root"),
        ("/static/client.js", "static"),
        ("/poll", "poll"),
        ("/login", "login"),
        ("/ws", "ws"),
        ("/wsx", "other"),
        ("/nope/poll", "other"),
    ],
)
def test_route_name_fixed_set(path: str, name: str) -> None:
    assert route_name(path) == name


def test_get_ws_message_auth_returns_426() -> None:
    auth = rtkit.TokenAuth("s3cret", via="message")
    with ThreadedServer(auth=auth) as server:
        status, headers, body = fetch(server, "/ws")
    assert status == 426
    assert headers["Upgrade"] == "websocket"
    assert b'send {"type": "auth", "token": TOKEN} as the first message' in body


@pytest.mark.parametrize(
    ("target", "headers", "name"),
    [
        (
            "/poll",
            ["Authorization: Bearer s3cret", "Authorization: Bearer x"],
            "Authorization",
        ),
        (
            "/login",
            ["Authorization: Bearer s3cret", "Authorization: Bearer x"],
            "Authorization",
        ),
        (
            "/",
            ["Upgrade: websocket", "Upgrade: websocket", "Connection: Upgrade"],
            "Upgrade",
        ),
        ("/health", ["Upgrade: foo", "Upgrade: bar"], "Upgrade"),
        (
            "/ws?token=s3cret",
            ["Upgrade: websocket", "Upgrade: h2c", "Connection: Upgrade"],
            "Upgrade",
        ),
    ],
)
def test_repeated_header_returns_400(
    target: str, headers: list[str], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit")
    auth = rtkit.TokenAuth("s3cret", via="cookie")
    with ThreadedServer(auth=auth) as server:
        head = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", *headers]
        response = raw_request(server, ("\r\n".join(head) + "\r\n\r\n").encode())
    status_line, _, body = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request"
    assert f"the request repeats its {name} header".encode() in body
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_is_upgrade_reads_repeated_headers() -> None:
    both = Request("/ws", Headers([("Upgrade", "h2c"), ("Upgrade", "websocket")]))
    neither = Request("/", Headers([("Upgrade", "foo"), ("Upgrade", "bar")]))
    assert is_upgrade(both)
    assert not is_upgrade(neither)
    assert repeated_header(both, ["Authorization", "Upgrade"]) == "Upgrade"
    assert repeated_header(both, ["Authorization"]) is None
