"""Token authentication: query, first message and cookie, on loopback servers."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import rtkit
from rtkit import auth
from rtkit.auth import AuthenticationFailed, TokenAuth
from rtkit.tls import LocalCA

from .conftest import run, timeout

TOKEN = "s3cret-token"


async def http_get(
    server: rtkit.Server, target: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send GET ``target`` with ``headers``; return status, headers and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = await asyncio.wait_for(reader.read(), timeout(2))
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip()] = value.strip()
    return int(status_line.split(" ")[1]), parsed, body


async def next_json(client: object) -> dict[str, object]:
    return json.loads(await asyncio.wait_for(client.recv(), timeout(2)))  # type: ignore[attr-defined]


# TokenAuth


def test_token_auth_none_generates_random_token() -> None:
    first, second = TokenAuth(), TokenAuth()
    assert len(first.token) >= 20
    assert first.token != second.token
    assert first.via == "query"
    assert first.timeout == 5


def test_token_auth_repr_hides_token() -> None:
    assert TOKEN not in repr(TokenAuth(TOKEN))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"token": ""}, "invalid token"),
        ({"token": "has space"}, "invalid token"),
        ({"token": "x" * 257}, "invalid token"),
        ({"token": 123}, "invalid token: a int"),
        ({"via": "header"}, "invalid via: 'header'"),
        ({"timeout": 0}, "invalid timeout: 0"),
        ({"timeout": float("inf")}, "invalid timeout: inf"),
    ],
)
def test_token_auth_invalid_values_raise(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TokenAuth(**options)  # type: ignore[arg-type]


def test_token_auth_error_hides_value() -> None:
    with pytest.raises(ValueError) as raised:
        TokenAuth("almost right")
    assert "almost right" not in str(raised.value)


# via="query"


def test_query_valid_token_connects() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, auth=TokenAuth(TOKEN)) as server:
            client = await auth.connect(
                server.ws_url, TOKEN, "query", open_timeout=timeout(2)
            )
            async with client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


def test_query_missing_token_returns_401(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit.server")

    async def scenario() -> None:
        async with rtkit.Server(port=0, auth=TokenAuth(TOKEN)) as server:
            with pytest.raises(InvalidStatus) as raised:
                await websocket_connect(server.ws_url, open_timeout=timeout(2))
            response = raised.value.response
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="rtkit"'
            assert b"missing token" in response.body
            assert b"?token=TOKEN" in response.body

    run(scenario())
    assert any("missing token" in r.getMessage() for r in caplog.records)


def test_query_wrong_token_raises() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, auth=TokenAuth(TOKEN)) as server:
            with pytest.raises(AuthenticationFailed, match=r"HTTP 401.*wrong token"):
                await auth.connect(
                    server.ws_url, "wrong", "query", open_timeout=timeout(2)
                )

    run(scenario())


def test_query_token_with_plus_survives_url() -> None:
    token = "a+b/c=="

    async def scenario() -> None:
        async with rtkit.Server(port=0, auth=TokenAuth(token)) as server:
            client = await auth.connect(server.ws_url, token, open_timeout=timeout(2))
            async with client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


# via="message"


def test_message_valid_token_then_welcome() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="message")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            client = await auth.connect(
                server.ws_url, TOKEN, "message", open_timeout=timeout(2)
            )
            async with client:
                assert await client.recv() == rtkit.WELCOME
                await client.send("hello")
                assert await client.recv() == "Server received: hello"

    run(scenario())


def test_message_auth_replies_authenticated() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="message")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            async with websocket_connect(
                server.ws_url, open_timeout=timeout(2)
            ) as client:
                await client.send(json.dumps({"type": "auth", "token": TOKEN}))
                assert await next_json(client) == {"type": "authenticated"}
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


async def close_of(server: rtkit.Server, message: str | None) -> tuple[int, str]:
    """Open a WebSocket, send ``message`` (if any), return the close code and reason."""
    async with websocket_connect(server.ws_url, open_timeout=timeout(2)) as client:
        if message is not None:
            await client.send(message)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), timeout(2))
        assert client.close_code is not None
        return client.close_code, client.close_reason or ""


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            json.dumps({"type": "auth", "token": "wrong"}),
            "authentication failed: wrong token",
        ),
        (
            json.dumps({"type": "subscribe"}),
            "authentication failed: first message is not an auth message",
        ),
        ("hello", "authentication failed: first message is not JSON"),
        (
            json.dumps({"type": "auth", "token": 1}),
            "authentication failed: auth message has no token string",
        ),
        ('{"type": "auth", "token": "\\ud800"}', "authentication failed: wrong token"),
        (
            json.dumps({"type": "auth", "token": "tök\u00e9n"}),
            "authentication failed: wrong token",
        ),
        (
            "[" * 100_000 + "]" * 100_000,
            "authentication failed: first message is JSON nested too deeply",
        ),
    ],
    ids=["wrong", "not-auth", "not-json", "no-token", "surrogate", "non-ascii", "deep"],
)
def test_message_bad_first_message_closes_1008(
    message: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rtkit")

    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="message")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            code, received = await close_of(server, message)
            assert code == 1008
            assert received.startswith(reason)
            assert len(received.encode()) <= 123
            assert server.is_serving

    run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize(
    "candidate", ["", "é", "\ud800", TOKEN + "\x00", TOKEN.upper(), None, 1, b"x"]
)
def test_token_auth_matches_rejects_other_values(candidate: object) -> None:
    assert not TokenAuth(TOKEN).matches(candidate)


def test_token_auth_matches_token() -> None:
    assert TokenAuth(TOKEN).matches(TOKEN)


def test_message_no_auth_in_time_closes_1008() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="message", timeout=0.2)
        async with rtkit.Server(port=0, auth=server_auth) as server:
            code, reason = await close_of(server, None)
            assert code == 1008
            assert reason == "authentication failed: no auth message within 0.2 s"

    run(scenario())


def test_message_wrong_token_raises() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="message")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            with pytest.raises(AuthenticationFailed, match="wrong token"):
                await auth.connect(
                    server.ws_url, "wrong", "message", open_timeout=timeout(2)
                )

    run(scenario())


# via="cookie"


def test_login_valid_bearer_sets_session_cookie() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            status, headers, body = await http_get(
                server, "/login", {"Authorization": f"Bearer {TOKEN}"}
            )
            assert status == 204
            assert body == b""
            assert "Content-Length" not in headers
            name, _, rest = headers["Set-Cookie"].partition("=")
            assert name == f"rtkit_session_{server.port}"
            value, _, attributes = rest.partition("; ")
            assert len(value) >= 20
            assert attributes == "HttpOnly; SameSite=Strict; Path=/"

    run(scenario())


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}]
)
def test_login_missing_or_wrong_bearer_returns_401(headers: dict[str, str]) -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            status, response_headers, body = await http_get(server, "/login", headers)
            assert status == 401
            assert "Set-Cookie" not in response_headers
            assert b"Authorization: Bearer TOKEN" in body

    run(scenario())


def test_cookie_connect_logs_in_then_opens() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            client = await auth.connect(
                server.ws_url, TOKEN, "cookie", open_timeout=timeout(2)
            )
            async with client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


@pytest.mark.parametrize("cookie", [None, "rtkit_session=forged", "other=1"])
def test_cookie_upgrade_without_session_returns_401(cookie: str | None) -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            headers = {"Cookie": cookie} if cookie else None
            with pytest.raises(InvalidStatus) as raised:
                await websocket_connect(
                    server.ws_url, additional_headers=headers, open_timeout=timeout(2)
                )
            assert raised.value.response.status_code == 401
            assert b"GET /login" in raised.value.response.body

    run(scenario())


def test_cookie_wrong_token_raises() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            with pytest.raises(AuthenticationFailed, match=r"GET /login failed.*401"):
                await auth.connect(
                    server.ws_url, "wrong", "cookie", open_timeout=timeout(2)
                )

    run(scenario())


def test_cookie_session_found_among_other_cookies() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            _, headers, _ = await http_get(
                server, "/login", {"Authorization": f"Bearer {TOKEN}"}
            )
            session = headers["Set-Cookie"].split(";")[0]
            cookie = f'_xsrf=2|ab"c; {session}; theme=dark'
            async with websocket_connect(
                server.ws_url,
                additional_headers={"Cookie": cookie},
                open_timeout=timeout(2),
            ) as client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


def test_cookie_secure_over_tls(tmp_path: Path) -> None:
    ca = LocalCA.create(tmp_path)

    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(
            port=0, auth=server_auth, ssl=ca.server_context()
        ) as server:
            response = server.auth.login(  # type: ignore[union-attr]
                _login_request(), port=server.port, secure=True
            )
            assert response.headers["Set-Cookie"].endswith("; Secure")
            client = await auth.connect(
                server.ws_url,
                TOKEN,
                "cookie",
                ssl=ca.client_context(),
                open_timeout=timeout(2),
            )
            async with client:
                assert await client.recv() == rtkit.WELCOME

    run(scenario())


async def login_cookie(server: rtkit.Server) -> str:
    """Send GET /login with the token and return the cookie as ``name=value``."""
    status, headers, _ = await http_get(
        server, "/login", {"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 204
    return headers["Set-Cookie"].split(";")[0]


def test_cookie_two_servers_keep_own_sessions() -> None:
    async def scenario() -> None:
        first = rtkit.Server(port=0, auth=TokenAuth(TOKEN, via="cookie"))
        second = rtkit.Server(port=0, auth=TokenAuth(TOKEN, via="cookie"))
        async with first, second:
            # A browser keeps one cookie per host, path and name, whatever
            # the port (RFC 6265 section 8.5), so a second login to a server
            # of the same host replaces a cookie of the same name.
            jar: dict[str, str] = {}
            for server in (first, second):
                name, _, value = (await login_cookie(server)).partition("=")
                jar[name] = value
            assert len(jar) == 2
            cookie = "; ".join(f"{name}={value}" for name, value in jar.items())
            for server in (first, second):
                async with websocket_connect(
                    server.ws_url,
                    additional_headers={"Cookie": cookie},
                    open_timeout=timeout(2),
                ) as client:
                    assert await client.recv() == rtkit.WELCOME
                status, _, _ = await http_get(server, "/poll", {"Cookie": cookie})
                assert status == 200

    run(scenario())


def test_cookie_of_other_port_rejected() -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via="cookie")
        async with rtkit.Server(port=0, auth=server_auth) as server:
            _, _, value = (await login_cookie(server)).partition("=")
            other = f"rtkit_session_{server.port + 1}={value}"
            with pytest.raises(InvalidStatus) as raised:
                await websocket_connect(
                    server.ws_url,
                    additional_headers={"Cookie": other},
                    open_timeout=timeout(2),
                )
            body = raised.value.response.body
            assert f"unknown rtkit_session_{server.port} cookie".encode() in body

    run(scenario())


def test_session_cookie_names() -> None:
    assert auth.session_cookie_name(8765) == "rtkit_session_8765"
    assert auth.is_session_cookie("rtkit_session_8765")
    for name in ("rtkit_session", "rtkit_session_", "rtkit_session_x", "other_8765"):
        assert not auth.is_session_cookie(name)


def test_session_cookie_parsed_with_port_name() -> None:
    raw = (
        b"HTTP/1.1 204 No Content\r\nSet-Cookie: theme=dark\r\n"
        b"Set-Cookie: rtkit_session_9000=abc; HttpOnly; Path=/\r\n\r\n"
    )
    assert auth._session_cookie(raw) == "rtkit_session_9000=abc"


def _login_request() -> object:
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    return Request("/login", Headers({"Authorization": f"Bearer {TOKEN}"}))


# /poll and open paths


@pytest.mark.parametrize("via", ["query", "message", "cookie"])
def test_poll_requires_token(via: str) -> None:
    async def scenario() -> None:
        server_auth = TokenAuth(TOKEN, via=via)  # type: ignore[arg-type]
        async with rtkit.Server(port=0, auth=server_auth) as server:
            server.publish("secret event")
            status, headers, body = await http_get(server, "/poll?since=0")
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Bearer realm="rtkit"'
            assert json.loads(body)["error"] == "unauthorized"
            assert b"secret event" not in body

            status, _, body = await http_get(
                server, "/poll?since=0", {"Authorization": f"Bearer {TOKEN}"}
            )
            assert status == 200
            assert b"secret event" in body

            status, _, _ = await http_get(server, f"/poll?since=0&token={TOKEN}")
            assert status == 200

            _, login, _ = await http_get(
                server, "/login", {"Authorization": f"Bearer {TOKEN}"}
            )
            session = login["Set-Cookie"].split(";")[0]
            status, _, _ = await http_get(server, "/poll?since=0", {"Cookie": session})
            assert status == 200

            status, _, body = await http_get(
                server, "/poll?since=0", {"Authorization": "Bearer wrong"}
            )
            assert status == 401
            assert b"wrong token" in body

    run(scenario())


@pytest.mark.parametrize("path", ["/", "/static/client.css", "/health"])
def test_open_paths_need_no_token(path: str) -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0, auth=TokenAuth(TOKEN)) as server:
            status, _, _ = await http_get(server, path)
            assert status == 200

    run(scenario())


def test_repeated_authorization_not_accepted() -> None:
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    headers = Headers()
    headers["Authorization"] = f"Bearer {TOKEN}"
    headers["Authorization"] = "Bearer wrong"
    request = Request("/login", headers)
    server_auth = TokenAuth(TOKEN, via="cookie")
    reason = server_auth.check_http(request, port=8765)
    assert reason is not None
    assert "repeats its Authorization header" in reason
    response = server_auth.login(request, port=8765)
    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers


def test_connect_invalid_via_raises() -> None:
    with pytest.raises(ValueError, match="invalid via: 'header'"):
        run(auth.connect("ws://127.0.0.1:1/ws", TOKEN, "header"))  # type: ignore[arg-type]


def test_connect_server_full_raises_invalid_status() -> None:
    async def scenario() -> None:
        auth = TokenAuth("s3cret", via="query")
        async with rtkit.Server(port=0, auth=auth, max_connections=1) as server:
            first = await rtkit.auth.connect(server.ws_url, "s3cret", "query")
            try:
                with pytest.raises(InvalidStatus) as raised:
                    await rtkit.auth.connect(server.ws_url, "s3cret", "query")
            finally:
                await first.close()
        assert raised.value.response.status_code == 503

    run(scenario())
