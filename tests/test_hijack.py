"""static/hijack.html in headless Chromium: a page on one origin attacks another.

Two rtkit servers listen on 127.0.0.1: the attacker serves the page, and the
target is the server the page tries to open a WebSocket to. Chromium is
Debian's /usr/bin/chromium, driven by Playwright's sync API; the module skips
when that binary is missing.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect
from websockets.asyncio.server import ServerConnection
from websockets.sync.client import ClientConnection, connect

import rtkit
from rtkit.auth import TokenAuth

from .conftest import ThreadedServer, free_port, timeout

pytestmark = pytest.mark.browser

MARKUP = '<img src=x onerror="window.injected = true">'

OPEN_TIMEOUT_MS = 10_000
"""OPEN_TIMEOUT_MS in hijack.js: how long the page waits for an open or a rejection."""

TOKEN = "victim-token"


@pytest.fixture
def attacker() -> Iterator[rtkit.Server]:
    """The rtkit server that serves the hijacking page, on its own port."""
    with ThreadedServer() as server:
        yield server


def hijack_url(attacker: rtkit.Server, target: str) -> str:
    return f"{attacker.url}static/hijack.html?target={quote(target, safe=':/')}"


def page_origin(server: rtkit.Server) -> str:
    return server.url.rstrip("/")


def publish(threaded: ThreadedServer, data: object) -> None:
    """Publish ``data`` to the default channel on the server's event loop."""
    assert threaded.server is not None
    server = threaded.server

    async def call() -> None:
        server.publish(data)

    threaded.call(call())


def handshakes(threaded: ThreadedServer) -> list[rtkit.Handshake]:
    assert threaded.server is not None
    server = threaded.server

    async def call() -> list[rtkit.Handshake]:
        return list(server.handshakes)

    return threaded.call(call())


def receive_until(
    client: ClientConnection, matches: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Return the first JSON message from ``client`` that ``matches``, bounded."""
    while True:
        text = client.recv(timeout=timeout(5))
        if isinstance(text, str) and text.startswith("{"):
            message = json.loads(text)
            if matches(message):
                return message


def join_chat(client: ClientConnection, name: str, channel: str = "lobby") -> None:
    client.send(json.dumps({"type": "join", "channel": channel, "name": name}))
    receive_until(client, lambda m: m["type"] == "subscribed")


def unexpected(errors: list[str], *allowed: str) -> list[str]:
    """Return the console errors that contain none of ``allowed``."""
    return [text for text in errors if not any(part in text for part in allowed)]


def test_hijack_reads_target_without_origin_check(
    attacker: rtkit.Server,
    page: Page,
    console_errors: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")
    threaded = ThreadedServer(check_origin=False)
    with threaded as target, connect(target.ws_url) as member:
        join_chat(member, "ada")
        member.send(json.dumps({"type": "message", "channel": "lobby", "text": MARKUP}))
        publish(threaded, {"temperature": 21})
        publish(threaded, {"temperature": 22})

        page.goto(hijack_url(attacker, target.ws_url))

        expect(page.get_by_test_id("verdict")).to_have_text("accepted")
        expect(page.get_by_test_id("explanation")).to_contain_text(
            f"accepted a WebSocket from this page's origin {page_origin(attacker)}"
        )
        expect(page.get_by_test_id("explanation")).to_contain_text(
            "started with check_origin=False, or from the command line with "
            "--no-origin-check"
        )
        events = page.get_by_test_id("events").locator("li")
        expect(events).to_have_text(
            ['#1 events: {"temperature":21}', '#2 events: {"temperature":22}']
        )
        publish(threaded, {"temperature": 23})
        expect(events.last).to_have_text('#3 events: {"temperature":23}')
        expect(page.get_by_test_id("count-events")).to_have_attribute("data-value", "3")
        chat = page.get_by_test_id("chat").locator("li")
        expect(chat.first).to_have_text(f"ada: {MARKUP}")
        expect(chat.last).to_contain_text("hijacker: Sent by a page on ")
        expect(page.get_by_test_id("members")).to_have_text("ada, hijacker")

        sent = receive_until(
            member,
            lambda m: m["type"] == "event" and m["data"]["from"]["name"] == "hijacker",
        )
        accepted = [h for h in handshakes(threaded) if h.response.status_code == 101]

    assert page_origin(attacker) in sent["data"]["text"]
    assert page.get_by_test_id("chat").locator("img").count() == 0
    assert page.evaluate("window.injected") is None
    assert [h.request.headers.get("Origin") for h in accepted] == [
        None,
        page_origin(attacker),
    ]
    assert console_errors == []


def test_hijack_rejected_by_origin_check(
    attacker: rtkit.Server,
    page: Page,
    console_errors: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")
    threaded = ThreadedServer()
    with threaded as target:
        publish(threaded, {"secret": "not for other origins"})

        page.goto(hijack_url(attacker, target.ws_url))

        expect(page.get_by_test_id("verdict")).to_have_text("rejected")
        explanation = page.get_by_test_id("explanation")
        expect(explanation).to_contain_text(
            "closed before it opened: 1006 (abnormal closure, no close frame)"
        )
        expect(explanation).to_contain_text("hides the HTTP status")
        diagnosis = page.get_by_test_id("diagnosis")
        expect(diagnosis).to_contain_text(f"responds to HTTP at {page_origin(target)}")
        expect(diagnosis).to_contain_text("Its Origin check probably did")
        expect(diagnosis).to_contain_text('"rejected WebSocket upgrade"')
        expect(page.get_by_test_id("count-events")).to_have_attribute("data-value", "0")
        rejected = handshakes(threaded)

    origin = page_origin(attacker)
    assert [h.response.status_code for h in rejected] == [403]
    assert rejected[0].request.headers.get("Origin") == origin
    assert (
        f"Origin {origin!r} is not this server's origin"
        in (rejected[0].response.body or b"").decode()
    )
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "rtkit.server" and record.levelno == logging.WARNING
    ]
    assert any(
        line.startswith("rejected WebSocket upgrade") and repr(origin) in line
        for line in warnings
    ), warnings
    assert page.get_by_test_id("events").locator("li").count() == 0
    handshake_failed = f"WebSocket connection to '{target.ws_url}' failed"
    assert unexpected(console_errors, handshake_failed) == []


def test_hijack_reports_unreachable_target(
    attacker: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    target = f"ws://127.0.0.1:{free_port()}/ws"

    page.goto(hijack_url(attacker, target))

    expect(page.get_by_test_id("verdict")).to_have_text("unreachable")
    expect(page.get_by_test_id("diagnosis")).to_contain_text(
        "the target server is probably not running"
    )
    assert unexpected(console_errors, target, "ERR_CONNECTION_REFUSED") == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "missing target"),
        ("not a url", 'invalid target "not a url"'),
        ("http://127.0.0.1:8765/ws", "the scheme must be ws: or wss:"),
        # The URL parser accepts a fragment, but Chromium's WebSocket
        # constructor throws a SyntaxError for it.
        ("ws://127.0.0.1:8765/ws#x", "fragment identifier"),
    ],
)
def test_hijack_rejects_invalid_target(
    attacker: rtkit.Server,
    page: Page,
    console_errors: list[str],
    target: str,
    message: str,
) -> None:
    page.goto(f"{attacker.url}static/hijack.html")
    expect(page.get_by_test_id("verdict")).to_have_text("idle")

    page.get_by_test_id("target").fill(target)
    page.get_by_test_id("connect").click()

    expect(page.get_by_test_id("verdict")).to_have_text("invalid target")
    expect(page.get_by_test_id("explanation")).to_contain_text(message)
    assert console_errors == []


def test_hijack_same_origin_accepted_with_note(
    attacker: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    page.goto(hijack_url(attacker, attacker.ws_url))

    expect(page.get_by_test_id("verdict")).to_have_text("accepted")
    log = page.get_by_test_id("log").locator('li[data-kind="system"] .line-text')
    expect(log.nth(1)).to_contain_text("served by the target itself")
    expect(page.get_by_test_id("members")).to_have_text("hijacker")
    assert console_errors == []


def test_hijack_fragment_in_query_not_stuck(
    attacker: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    target = f"ws://127.0.0.1:{free_port()}/ws#x"
    page.clock.install()

    page.goto(hijack_url(attacker, target))

    verdict = page.get_by_test_id("verdict")
    expect(verdict).to_have_text("invalid target")
    explanation = page.get_by_test_id("explanation")
    expect(explanation).to_contain_text(f'invalid target "{target}"')
    expect(explanation).to_contain_text("SyntaxError")
    expect(explanation).to_contain_text("fragment identifier")
    error_lines = page.get_by_test_id("log").locator('li[data-kind="error"]')
    expect(error_lines).to_contain_text(["new WebSocket() failed: SyntaxError"])
    # The open timeout was cleared, so it does not replace the verdict.
    page.clock.run_for(OPEN_TIMEOUT_MS + 1000)
    expect(verdict).to_have_text("invalid target")
    expect(page.get_by_test_id("disconnect")).to_be_disabled()
    assert console_errors == []


def test_hijack_silent_target_times_out(
    attacker: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    # The kernel completes the TCP handshake into the backlog, and nothing
    # ever reads the upgrade request or responds to it.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        target = f"ws://127.0.0.1:{listener.getsockname()[1]}/ws"
        page.clock.install()

        page.goto(hijack_url(attacker, target))

        verdict = page.get_by_test_id("verdict")
        expect(verdict).to_have_text("connecting")
        page.clock.run_for(OPEN_TIMEOUT_MS + 1000)
        expect(verdict).to_have_text("no answer")
        expect(page.get_by_test_id("explanation")).to_contain_text(
            "neither accepted nor rejected the connection within 10 s"
        )
    assert (
        unexpected(console_errors, "closed before the connection is established") == []
    )


async def send_malformed_presence(connection: ServerConnection) -> None:
    members = [None, {"name": "ada"}, {"name": 5}, "bob", {"id": "x"}]
    presence = {"type": "presence", "channel": "lobby", "members": members}
    await connection.send(json.dumps(presence))
    await connection.wait_closed()


def test_hijack_skips_malformed_members(
    attacker: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    target_server = ThreadedServer(check_origin=False, handler=send_malformed_presence)
    with target_server as target:
        page.goto(hijack_url(attacker, target.ws_url))

        expect(page.get_by_test_id("verdict")).to_have_text("accepted")
        members = page.get_by_test_id("members")
        expect(members).to_have_text("ada")
        expect(members).to_have_attribute("data-count", "1")
    assert console_errors == []


def log_in_from_victim_page(page: Page, victim: rtkit.Server) -> str:
    """Log the browser in to ``victim`` as its user would, and return the cookie's name.

    A page of the victim sends GET /login with the token, so the browser
    stores the session cookie that the response sets. The name comes from the
    Set-Cookie header, because it depends on the server's port.
    """
    page.goto(f"{victim.url}static/hijack.html")
    with page.expect_response(f"{victim.url}login") as login:
        status = page.evaluate(
            """token => fetch('/login', {
                headers: {Authorization: 'Bearer ' + token},
            }).then(response => response.status)""",
            TOKEN,
        )
    assert status == 204
    set_cookie = login.value.header_value("set-cookie")
    assert set_cookie is not None
    name = set_cookie.split("=", 1)[0]
    stored = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert stored[name]["sameSite"] == "Strict"
    assert stored[name]["httpOnly"]
    return name


@pytest.mark.parametrize(
    ("check_origin", "verdict", "status"),
    [(False, "accepted", 101), (True, "rejected", 403)],
)
def test_hijack_rides_session_cookie(
    attacker: rtkit.Server,
    page: Page,
    console_errors: list[str],
    check_origin: bool,
    verdict: str,
    status: int,
) -> None:
    auth = TokenAuth(TOKEN, via="cookie")
    threaded = ThreadedServer(auth=auth, check_origin=check_origin)
    with threaded as victim:
        cookie_name = log_in_from_victim_page(page, victim)

        # The attack page is on another port of 127.0.0.1, so another origin
        # but the same site, and SameSite=Strict does not keep the cookie out.
        page.goto(hijack_url(attacker, victim.ws_url))

        expect(page.get_by_test_id("verdict")).to_have_text(verdict)
        upgrades = [h for h in handshakes(threaded) if h.request.path == "/ws"]

    assert [h.response.status_code for h in upgrades] == [status]
    request = upgrades[0].request
    assert request.headers.get("Origin") == page_origin(attacker)
    assert f"{cookie_name}=" in (request.headers.get("Cookie") or "")
    handshake_failed = f"WebSocket connection to '{victim.ws_url}' failed"
    assert unexpected(console_errors, handshake_failed) == []
