"""static/client.html in headless Chromium against real rtkit servers on loopback.

Chromium is Debian's /usr/bin/chromium, driven by Playwright's sync API. The
module skips when that binary is missing. Every server listens on 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import (
    BaseHTTPRequestHandler,
    SimpleHTTPRequestHandler,
    ThreadingHTTPServer,
)
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Route,
    WebSocketRoute,
    expect,
)
from websockets.asyncio.server import ServerConnection

import rtkit
from rtkit.hub import DEFAULT_CHANNEL
from rtkit.routes import STATIC_DIR
from rtkit.widgets import ControlPanel

from .browsers import WAIT_MS, record_console_errors
from .conftest import ThreadedServer, free_port, timeout
from .kernels import drain_iopub, execute

pytestmark = pytest.mark.browser

ECHO_OF_GREETING = rtkit.echo_reply("Hello Server!")

T = TypeVar("T")


@pytest.fixture
def rtkit_warnings(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """A function returning the WARNING lines that rtkit.server logged so far."""
    caplog.set_level(logging.INFO, logger="rtkit")

    def warnings() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "rtkit.server" and record.levelno == logging.WARNING
        ]

    return warnings


class QuietStaticHandler(SimpleHTTPRequestHandler):
    """Serves files without writing a line per request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_origin() -> Iterator[str]:
    """Origin of a second local HTTP server that serves static/ at its root."""
    handler = functools.partial(QuietStaticHandler, directory=str(STATIC_DIR))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout(5))


def log_texts(page: Page, kind: str) -> Locator:
    """Locate the text of each log line of ``kind``: sent, received, system or error."""
    return page.get_by_test_id("log").locator(f'li[data-kind="{kind}"] .line-text')


def expect_open_with_greeting(page: Page) -> None:
    expect(page.get_by_test_id("status")).to_have_text("open")
    expect(log_texts(page, "received")).to_have_text([rtkit.WELCOME, ECHO_OF_GREETING])


def rejected_handshake_error(ws_url: str) -> Callable[[str], bool]:
    """Return a matcher for Chromium's console error on a 403 upgrade to ``ws_url``."""
    prefix = f"WebSocket connection to '{ws_url}' failed"
    return lambda text: text.startswith(prefix) and "403" in text


def unexpected(errors: list[str], *expected: Callable[[str], bool]) -> list[str]:
    return [text for text in errors if not any(match(text) for match in expected)]


def with_url_parameter(page_url: str, ws_url: str) -> str:
    return f"{page_url}?url={quote(ws_url, safe=':/')}"


# Connecting and echo


def test_client_connects_and_greets(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    page.goto(live_server.url)

    expect_open_with_greeting(page)
    expect(log_texts(page, "sent")).to_have_text(["Hello Server!"])
    expect(log_texts(page, "system").first).to_have_text(
        f"connecting to {live_server.ws_url}"
    )
    first_time = page.get_by_test_id("log").locator("li time").first
    expect(first_time).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    expect(page.get_by_test_id("message")).to_be_enabled()
    expect(page.get_by_test_id("connect")).to_be_disabled()
    assert console_errors == []


@pytest.mark.parametrize("submit", ["button", "enter"])
def test_send_echoes_message(
    live_server: rtkit.Server, page: Page, console_errors: list[str], submit: str
) -> None:
    page.goto(live_server.url)
    expect_open_with_greeting(page)
    message_box = page.get_by_test_id("message")

    message_box.fill(f"sent with {submit}")
    if submit == "button":
        page.get_by_test_id("send").click()
    else:
        message_box.press("Enter")

    expect(log_texts(page, "sent")).to_have_text(
        ["Hello Server!", f"sent with {submit}"]
    )
    expect(log_texts(page, "received").last).to_have_text(
        rtkit.echo_reply(f"sent with {submit}")
    )
    expect(message_box).to_have_value("")
    assert console_errors == []


def test_log_shows_markup_as_text(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    page.goto(live_server.url)
    expect_open_with_greeting(page)
    markup = '<img src=x onerror="window.injected = true"><b>bold</b>'

    page.get_by_test_id("message").fill(markup)
    page.get_by_test_id("send").click()

    expect(log_texts(page, "received").last).to_have_text(rtkit.echo_reply(markup))
    assert page.get_by_test_id("log").locator("img, b").count() == 0
    assert page.evaluate("window.injected") is None
    assert console_errors == []


def test_disconnect_closes_normally(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    page.goto(live_server.url)
    expect_open_with_greeting(page)

    page.get_by_test_id("disconnect").click()

    expect(page.get_by_test_id("status")).to_have_text("closed")
    expect(log_texts(page, "system").last).to_have_text(
        "closed: 1000 (normal closure): client disconnected"
    )
    expect(page.get_by_test_id("message")).to_be_disabled()
    expect(page.get_by_test_id("send")).to_be_disabled()
    expect(page.get_by_test_id("disconnect")).to_be_disabled()

    page.get_by_test_id("connect").click()

    expect(page.get_by_test_id("status")).to_have_text("open")
    expect(log_texts(page, "received")).to_have_count(4)
    assert console_errors == []


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("not a url", 'invalid URL "not a url". Enter a URL such as ws://'),
        ("ftp://127.0.0.1/ws", "cannot connect to ftp://127.0.0.1/ws: "),
    ],
)
def test_connect_rejects_invalid_url(
    live_server: rtkit.Server,
    page: Page,
    console_errors: list[str],
    url: str,
    error: str,
) -> None:
    page.goto(live_server.url)
    expect_open_with_greeting(page)
    page.get_by_test_id("disconnect").click()
    expect(page.get_by_test_id("status")).to_have_text("closed")

    page.get_by_test_id("url").fill(url)
    page.get_by_test_id("connect").click()

    expect(log_texts(page, "error").last).to_contain_text(error)
    expect(page.get_by_test_id("status")).to_have_text("closed")
    expect(page.get_by_test_id("connect")).to_be_enabled()
    assert console_errors == []


# WebSocket URL


@pytest.mark.parametrize("path", ["/", "/static/client.html"])
def test_url_derived_from_page(
    live_server: rtkit.Server, page: Page, console_errors: list[str], path: str
) -> None:
    page.goto(f"http://127.0.0.1:{live_server.port}{path}")

    expect(page.get_by_test_id("url")).to_have_value(
        f"ws://127.0.0.1:{live_server.port}/ws"
    )
    expect_open_with_greeting(page)
    assert console_errors == []


@pytest.mark.parametrize("path", ["/proxy/8765/", "/proxy/8765/static/client.html"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_url_derived_behind_proxy(
    live_server: rtkit.Server,
    page: Page,
    console_errors: list[str],
    scheme: str,
    path: str,
) -> None:
    # Playwright serves the page, its assets and the WebSocket at the proxy's
    # paths, in place of a path-prefixing proxy such as jupyter-server-proxy.
    origin = f"{scheme}://localhost:{live_server.port}"
    ws_scheme = "wss" if scheme == "https" else "ws"
    ws_url = f"{ws_scheme}://localhost:{live_server.port}/proxy/8765/ws"

    def serve_static(route: Route) -> None:
        relative = urlsplit(route.request.url).path.removeprefix("/proxy/8765/")
        name = relative.removeprefix("static/") or "client.html"
        route.fulfill(path=STATIC_DIR / name)

    def accept(websocket: WebSocketRoute) -> None:
        websocket.on_message(lambda message: websocket.send(f"proxied: {message}"))

    page.route(f"{origin}/proxy/8765/**", serve_static)
    page.route_web_socket(ws_url, accept)
    page.goto(origin + path)

    expect(page.get_by_test_id("url")).to_have_value(ws_url)
    expect(page.get_by_test_id("status")).to_have_text("open")
    expect(log_texts(page, "received")).to_have_text(["proxied: Hello Server!"])
    assert console_errors == []


def test_url_parameter_overrides(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    ws_url = f"ws://localhost:{live_server.port}/"

    page.goto(with_url_parameter(live_server.url, ws_url))

    expect(page.get_by_test_id("url")).to_have_value(ws_url)
    expect(log_texts(page, "system").first).to_have_text(f"connecting to {ws_url}")
    expect_open_with_greeting(page)
    assert console_errors == []


# Rejected origins


def test_foreign_origin_rejected(
    live_server: rtkit.Server,
    page: Page,
    console_errors: list[str],
    other_origin: str,
    rtkit_warnings: Callable[[], list[str]],
) -> None:
    page.goto(with_url_parameter(f"{other_origin}/client.html", live_server.ws_url))

    errors = log_texts(page, "error")
    expect(errors).to_have_count(2)
    expect(errors.first).to_contain_text(
        "closed before it opened: 1006 (abnormal closure, no close frame)"
    )
    expect(errors.first).to_contain_text("rejected this page's Origin with HTTP 403")
    expect(errors.last).to_contain_text(
        f"This page's origin {other_origin} is not the server's origin"
    )
    expect(errors.last).to_contain_text(f"--allow-origin {other_origin}")
    expect(page.get_by_test_id("status")).to_have_text("closed")
    expect(page.get_by_test_id("file-note")).to_be_hidden()
    rejections = [
        line
        for line in rtkit_warnings()
        if line.startswith("rejected WebSocket upgrade") and repr(other_origin) in line
    ]
    assert len(rejections) == 1, rtkit_warnings()
    handshake_error = rejected_handshake_error(live_server.ws_url)
    assert unexpected(console_errors, handshake_error) == []


def test_dns_name_page_rejected(
    live_server: rtkit.Server,
    page: Page,
    console_errors: list[str],
    rtkit_warnings: Callable[[], list[str]],
) -> None:
    # Chromium (156) resolves every *.localhost name to loopback without DNS, so
    # the page request reaches live_server under a DNS name.
    origin = f"http://rtkit.localhost:{live_server.port}"

    response = page.goto(f"{origin}/")

    assert response is not None
    assert response.status == 403
    body = page.locator("body")
    expect(body).to_contain_text(
        f"forbidden: Host 'rtkit.localhost:{live_server.port}' is a DNS name"
    )
    expect(body).to_contain_text(f"allowed_origins=['{origin}']")
    rejections = [
        line
        for line in rtkit_warnings()
        if line.startswith("rejected request '/'") and "is a DNS name" in line
    ]
    assert len(rejections) == 1, rtkit_warnings()
    assert unexpected(console_errors, is_http_error(403)) == []


def test_dns_name_failure_explained(page: Page, console_errors: list[str]) -> None:
    # A proxy can serve the page under a DNS name and pass the upgrade on with
    # that Host, which rtkit rejects. From file:// the page loads client.js as
    # a classic script, so the test can call its functions.
    page.route_web_socket("ws://localhost:8765/ws", lambda websocket: None)
    page.goto((STATIC_DIR / "client.html").as_uri())
    expect(page.get_by_test_id("status")).to_have_text("open")
    origin = "http://rtkit.example:8765"
    ws_url = "ws://rtkit.example:8765/ws"
    location = {
        "protocol": "http:",
        "hostname": "rtkit.example",
        "port": "8765",
        "origin": origin,
    }
    check = {
        "url": "http://rtkit.example:8765/ws",
        "status": 403,
        "error": "HTTP 403 Forbidden: forbidden: Host 'rtkit.example:8765' is a "
        "DNS name",
    }

    lines = page.evaluate(
        "([url, location, check]) => explainFailedOpen(url, location, 1006, '', check)",
        [ws_url, location, check],
    )

    assert len(lines) == 2
    assert lines[0].startswith(
        "The connection closed before it opened: 1006 (abnormal closure, no close "
        "frame), no reason given."
    )
    assert lines[0].endswith(
        "GET http://rtkit.example:8765/ws returned HTTP 403 Forbidden: forbidden: "
        "Host 'rtkit.example:8765' is a DNS name."
    )
    assert "This page's host rtkit.example is a DNS name" in lines[1]
    assert f'allowed_origins=["{origin}"]' in lines[1]
    assert console_errors == []


def test_file_page_explains_null_origin(
    live_server: rtkit.Server,
    page: Page,
    console_errors: list[str],
    rtkit_warnings: Callable[[], list[str]],
) -> None:
    file_url = (STATIC_DIR / "client.html").as_uri()

    page.goto(with_url_parameter(file_url, live_server.ws_url))

    note = page.get_by_test_id("file-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Origin: null")
    expect(note).to_contain_text("--allow-origin null")
    errors = log_texts(page, "error")
    expect(errors).to_have_count(2)
    expect(errors.first).to_contain_text(
        "closed before it opened: 1006 (abnormal closure, no close frame)"
    )
    expect(errors.last).to_contain_text("opened from a file, so it sent Origin: null")
    expect(page.get_by_test_id("status")).to_have_text("closed")
    rejections = [
        line
        for line in rtkit_warnings()
        if line.startswith("rejected WebSocket upgrade") and "Origin 'null'" in line
    ]
    assert len(rejections) == 1, rtkit_warnings()
    handshake_error = rejected_handshake_error(live_server.ws_url)
    assert unexpected(console_errors, handshake_error) == []


def test_file_page_falls_back_to_default_url(
    page: Page, console_errors: list[str]
) -> None:
    # Playwright mocks the WebSocket, so the test does not depend on whatever
    # listens on port 8765.
    page.route_web_socket("ws://localhost:8765/ws", lambda websocket: None)

    page.goto((STATIC_DIR / "client.html").as_uri())

    expect(page.get_by_test_id("url")).to_have_value("ws://localhost:8765/ws")
    expect(page.get_by_test_id("file-note")).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_text("open")
    assert console_errors == []


# Closing


def test_server_stop_shows_going_away(page: Page, console_errors: list[str]) -> None:
    threaded = ThreadedServer()
    with threaded as server:
        page.goto(server.url)
        expect_open_with_greeting(page)

        threaded.call(server.stop())

        expect(page.get_by_test_id("status")).to_have_text("closed")
        expect(log_texts(page, "system").last).to_have_text(
            "closed: 1001 (going away), no reason given"
        )
    assert console_errors == []


async def send_then_close(connection: ServerConnection) -> None:
    await connection.send('{"type": "error", "code": "demo", "message": "it broke"}')
    await connection.send('{"type": "mystery", "value": 1}')
    await connection.send('["not", "typed"]')
    await connection.close(4001, "demo finished")


def test_messages_dispatched_by_type(page: Page, console_errors: list[str]) -> None:
    with ThreadedServer(handler=send_then_close) as server:
        page.goto(server.url)

        expect(log_texts(page, "error")).to_have_text(
            [
                "server error (demo): it broke",
                'unknown message type "mystery": {"type": "mystery", "value": 1}',
            ]
        )
        expect(log_texts(page, "received")).to_have_text(['["not", "typed"]'])
        expect(log_texts(page, "system").last).to_have_text(
            "closed: 4001 (application-defined): demo finished"
        )
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


async def send_many(connection: ServerConnection) -> None:
    for number in range(600):
        await connection.send(f"line {number}")
    await connection.wait_closed()


def test_log_keeps_last_lines(page: Page, console_errors: list[str]) -> None:
    with ThreadedServer(handler=send_many) as server:
        page.goto(server.url)

        lines = page.get_by_test_id("log").locator("li")
        expect(log_texts(page, "received").last).to_have_text("line 599")
        expect(lines).to_have_count(500)
        expect(lines.first.locator(".line-text")).to_have_text("line 100")
    assert console_errors == []


def submit_message(page: Page, text: str) -> None:
    """Send ``text`` from the echo form, faster than typing it."""
    page.evaluate(
        """text => {
            document.querySelector('[data-testid="message"]').value = text;
            document.querySelector('[data-testid="send-form"]').requestSubmit();
        }""",
        text,
    )


def test_log_shortens_long_messages(page: Page, console_errors: list[str]) -> None:
    received: list[str] = []

    async def echo_as_is(connection: ServerConnection) -> None:
        async for text in connection:
            assert isinstance(text, str)
            received.append(text)
            await connection.send(text)

    with ThreadedServer(handler=echo_as_is) as server:
        page.goto(server.url)
        expect(log_texts(page, "received")).to_have_text(["Hello Server!"])
        long_text = "x" * 500_000
        # Characters beyond U+FFFF are two UTF-16 code units each in JavaScript.
        emoji_text = "\U0001f600" * 300

        submit_message(page, long_text)
        submit_message(page, emoji_text)

        wait_until(lambda: len(received) == 3, "the server to receive both messages")
        expect(log_texts(page, "received")).to_have_count(3)
        shortened = "x" * 200 + "… (500,000 characters in all)"
        shortened_emoji = "\U0001f600" * 200 + "… (300 characters in all)"
        expect(log_texts(page, "sent")).to_have_text(
            ["Hello Server!", shortened, shortened_emoji]
        )
        expect(log_texts(page, "received")).to_have_text(
            ["Hello Server!", shortened, shortened_emoji]
        )
        log_length = page.get_by_test_id("log").evaluate(
            "log => log.textContent.length"
        )
    assert received[1] == long_text
    assert received[2] == emoji_text
    assert log_length < 5000
    assert console_errors == []


# Event modes
#
# The page follows the server's event stream over WebSocket push, long polling
# or short polling. The server publishes with its built-in source, or the test
# publishes on the server's event loop.

EVENT_MODES = ["push", "long-poll", "short-poll"]

RUNNING_STATUS = {"push": "open", "long-poll": "polling", "short-poll": "polling"}
"""The status text of each event mode once it receives events."""


@pytest.fixture
def threaded() -> Iterator[ThreadedServer]:
    """An rtkit server on a free port, with its event loop for publishing."""
    threaded = ThreadedServer()
    with threaded:
        yield threaded


def on_loop(threaded: ThreadedServer, function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` on the server's event loop and return its result."""

    async def call() -> T:
        return function(*args)

    return threaded.call(call())


def poll_requests(threaded: ThreadedServer) -> int:
    assert threaded.server is not None
    return on_loop(threaded, lambda: threaded.server.request_counts["poll"])


def push_subscribers(threaded: ThreadedServer) -> int:
    """Return the number of subscribers of the channel that the page follows."""
    assert threaded.server is not None
    subscribers = threaded.server.push.subscribers
    return on_loop(threaded, lambda: len(subscribers.get(DEFAULT_CHANNEL, ())))


def wait_until(
    condition: Callable[[], bool], description: str, units: float = 5
) -> None:
    """Poll ``condition`` until it is true, and fail after ``units`` time units."""
    deadline = time.monotonic() + timeout(units)
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout(units):g} s waiting for {description}"
            )
        time.sleep(0.02)


def choose_mode(page: Page, mode: str) -> None:
    page.get_by_test_id(f"mode-{mode}").check()


def counter(page: Page, name: str) -> int:
    """Return the page's counter ``name``, e.g. events, from its data-value."""
    value = page.get_by_test_id(f"count-{name}").get_attribute("data-value")
    assert value is not None and value.isdigit(), f"count-{name} is {value!r}"
    return int(value)


def byte_count(page: Page, name: str) -> int:
    """Return the page's bytes-received or bytes-sent count."""
    value = page.get_by_test_id(name).get_attribute("data-value")
    assert value is not None and value.isdigit(), f"{name} is {value!r}"
    return int(value)


def wait_for_counter(page: Page, name: str, minimum: int, units: float = 5) -> None:
    page.wait_for_function(
        """([name, minimum]) => {
            const element = document.querySelector(`[data-testid="count-${name}"]`);
            return Number(element.dataset.value) >= minimum;
        }""",
        arg=[name, minimum],
        timeout=timeout(units) * 1000,
    )


def event_seqs(page: Page) -> list[int]:
    """Return the seq of each event row of the events table, top to bottom."""
    rows = page.get_by_test_id("events").locator("tr[data-seq]")
    return [
        int(seq) for seq in rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")
    ]


def stream_markers(page: Page) -> Locator:
    """Locate the rows of the events table that mark a restart or missed events."""
    return page.get_by_test_id("events").locator("tr.stream-marker")


def row_kinds(page: Page) -> list[str]:
    """Return each row of the events table as its seq, or as its marker's kind."""
    rows = page.get_by_test_id("events").locator("tr")
    return rows.evaluate_all(
        "rows => rows.map(row => row.dataset.seq ?? row.dataset.marker)"
    )


def start_events_page(page: Page, server: rtkit.Server, mode: str) -> None:
    """Open the page, then switch from echo to ``mode`` and wait until it runs."""
    page.goto(server.url)
    expect_open_with_greeting(page)
    choose_mode(page, mode)
    expect(page.get_by_test_id("events-panel")).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_text(RUNNING_STATUS[mode])


def expect_clean_stream(page: Page) -> None:
    assert counter(page, "missed") == 0
    assert counter(page, "duplicates") == 0
    assert counter(page, "errors") == 0


def is_network_error(text: str) -> bool:
    """Match Chromium's console error for a request that got no response."""
    return text.startswith("Failed to load resource: net::ERR_")


def is_http_error(status: int) -> Callable[[str], bool]:
    """Return a matcher for Chromium's console error on an HTTP ``status`` response."""
    return lambda text: f"the server responded with a status of {status}" in text


@pytest.mark.parametrize("mode", EVENT_MODES)
def test_events_arrive_in_order(
    threaded: ThreadedServer, page: Page, console_errors: list[str], mode: str
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, mode)

    on_loop(threaded, server.start_source, 20)
    wait_for_counter(page, "events", 30)

    seqs = event_seqs(page)
    assert seqs == list(range(1, len(seqs) + 1))
    assert counter(page, "events") >= len(seqs)
    expect_clean_stream(page)
    expect(page.get_by_test_id("epoch")).to_have_text(server.epoch)
    latencies = page.get_by_test_id("events").locator("td.latency")
    expect(latencies.first).to_have_text(re.compile(r"^-?\d+\.\d$"))
    expect(page.get_by_test_id("latency-summary")).to_have_text(
        re.compile(r"^-?\d+\.\d / -?\d+\.\d ms$")
    )
    expect(page.get_by_test_id("latency-note")).to_contain_text(
        "assumes that the page's clock and the server's clock agree"
    )
    assert byte_count(page, "bytes-received") > 0
    assert byte_count(page, "bytes-sent") > 0
    assert console_errors == []


def test_push_counts_one_connection(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "push")
    wait_until(lambda: push_subscribers(threaded) == 1, "one push subscriber")

    for number in range(4):
        on_loop(threaded, server.publish, {"number": number})
    markup = '<img src=x onerror="window.injected = true"><b>bold</b>'
    on_loop(threaded, server.publish, {"html": markup})
    wait_for_counter(page, "events", 5)

    assert counter(page, "requests") == 1
    expect(page.get_by_test_id("count-empty")).to_have_text("n/a")
    # The subscribe message and the first heartbeat ping, each with its
    # payload, a 2-byte frame header and a 4-byte mask.
    subscription = log_texts(page, "sent").last.text_content()
    assert subscription == '{"type":"subscribe","since":0}'
    ping = '{"type":"ping","id":1}'
    sent = len(subscription.encode()) + len(ping.encode()) + 2 * (2 + 4)
    assert byte_count(page, "bytes-sent") == sent
    expect(page.get_by_test_id("bytes-received-detail")).to_contain_text(
        "frame headers, computed"
    )
    expect(page.get_by_test_id("bytes-note")).to_contain_text(
        "cannot see the opening handshake"
    )
    assert event_seqs(page) == [1, 2, 3, 4, 5]
    data = page.get_by_test_id("events").locator("td.data")
    expect(data.last).to_have_text(json.dumps({"html": markup}, separators=(",", ":")))
    assert page.get_by_test_id("events").locator("img, b").count() == 0
    assert page.evaluate("window.injected") is None
    assert console_errors == []


def test_long_poll_one_request_per_event(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "long-poll")

    on_loop(threaded, server.start_source, 20)
    wait_for_counter(page, "events", 20)

    events = counter(page, "events")
    requests = counter(page, "requests")
    # Each response carries the events published while no request waited,
    # usually one, and the next request is already waiting.
    assert events * 0.5 <= requests <= events + 2, (events, requests)
    assert counter(page, "empty") == 0
    expect_clean_stream(page)
    expect(page.get_by_test_id("bytes-received-detail")).to_contain_text(
        re.compile(r"^[1-9][\d,]* body, measured \+ [1-9][\d,]* headers, estimated$")
    )
    expect(page.get_by_test_id("bytes-sent")).to_have_text(re.compile(r"^≥ [1-9]"))
    assert poll_requests(threaded) >= requests - 1
    assert console_errors == []


def test_short_poll_requests_follow_interval(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "short-poll")
    on_loop(threaded, server.start_source, 5)

    interval = page.get_by_test_id("interval")
    interval.fill("0.1")
    interval.press("Enter")
    expect(log_texts(page, "system").last).to_contain_text("every 0.1 s")
    started = time.monotonic()
    wait_for_counter(page, "requests", 20)
    elapsed = time.monotonic() - started

    requests = counter(page, "requests")
    expected = elapsed / 0.1
    assert expected * 0.5 <= requests <= expected * 1.2 + 2, (requests, elapsed)
    # Events come every 0.2 s and polls every 0.1 s, so about half come back empty.
    empty = counter(page, "empty")
    assert 0 < empty < requests
    assert counter(page, "events") > 0
    expect_clean_stream(page)
    assert console_errors == []


def test_events_table_keeps_last_rows(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "push")
    wait_until(lambda: push_subscribers(threaded) == 1, "one push subscriber")

    def publish_many() -> None:
        for number in range(250):
            server.publish({"number": number})

    on_loop(threaded, publish_many)

    wait_for_counter(page, "events", 250)
    assert event_seqs(page) == list(range(51, 251))
    expect_clean_stream(page)
    assert console_errors == []


# Switching transports


@pytest.mark.parametrize("mode", ["long-poll", "short-poll"])
def test_switch_to_push_stops_polling(
    threaded: ThreadedServer, page: Page, console_errors: list[str], mode: str
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, mode)
    on_loop(threaded, server.start_source, 20)
    wait_for_counter(page, "events", 5)

    choose_mode(page, "push")

    expect(page.get_by_test_id("status")).to_have_text("open")
    wait_until(lambda: push_subscribers(threaded) == 1, "one push subscriber")
    polls_after_switch = poll_requests(threaded)
    expect(page.get_by_test_id("requests-label")).to_have_text("WebSocket connections")
    wait_for_counter(page, "events", 10)
    assert poll_requests(threaded) == polls_after_switch
    # The push subscription resumes after the last event the poll received.
    seqs = event_seqs(page)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    expect_clean_stream(page)
    expect(log_texts(page, "system")).to_contain_text(
        [re.compile(r"^stopped Events: (long|short) poll: stopped polling after \d+")]
    )
    assert console_errors == []


@pytest.mark.parametrize("target", ["echo", "long-poll"])
def test_switch_from_push_unsubscribes(
    threaded: ThreadedServer, page: Page, console_errors: list[str], target: str
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "push")
    wait_until(lambda: push_subscribers(threaded) == 1, "one push subscriber")

    choose_mode(page, target)

    wait_until(lambda: push_subscribers(threaded) == 0, "no push subscribers")
    expect(log_texts(page, "system")).to_contain_text(
        [
            "stopped Events: WebSocket push: closing the WebSocket with 1000 "
            "(normal closure)"
        ]
    )
    expected_connections = 1 if target == "echo" else 0
    wait_until(
        lambda: (
            len(on_loop(threaded, lambda: server.connections)) == expected_connections
        ),
        f"{expected_connections} open WebSocket connections",
    )
    if target == "echo":
        expect(page.get_by_test_id("events-panel")).to_be_hidden()
        expect(log_texts(page, "received").last).to_have_text(ECHO_OF_GREETING)
    assert console_errors == []


def test_switch_resets_counters(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "long-poll")
    on_loop(threaded, server.start_source, 20)
    wait_for_counter(page, "events", 5)

    choose_mode(page, "short-poll")

    expect(page.get_by_test_id("requests-label")).to_have_text("HTTP requests")
    expect(page.get_by_test_id("count-requests")).to_have_text("1")
    assert counter(page, "events") <= 20
    assert counter(page, "empty") <= 1
    assert console_errors == []


# Server restarts and errors


@pytest.mark.parametrize("mode", EVENT_MODES)
def test_epoch_change_reported(
    threaded: ThreadedServer, page: Page, console_errors: list[str], mode: str
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, mode)
    on_loop(threaded, server.start_source, 20)
    wait_for_counter(page, "events", 5)
    old_epoch = server.epoch

    threaded.call(server.restart())
    on_loop(threaded, server.start_source, 20)

    expect(log_texts(page, "system")).to_contain_text(
        [
            f"server restarted: new epoch {server.epoch} (was {old_epoch}), "
            "continuing from seq 0"
        ]
    )
    expect(page.get_by_test_id("epoch")).to_have_text(server.epoch)
    expect(page.get_by_test_id("status")).to_have_text(RUNNING_STATUS[mode])
    page.wait_for_function(
        "() => document.querySelector('[data-testid=events] tr:last-child')"
        "?.dataset.seq >= 5"
    )
    seqs = event_seqs(page)
    restart = seqs.index(1, 1)
    assert seqs[:restart] == list(range(1, restart + 1))
    assert seqs[restart:] == list(range(1, len(seqs) - restart + 1))
    assert counter(page, "missed") == 0
    assert counter(page, "duplicates") == 0
    # The marker row sits where seq jumps back to 1.
    rows = row_kinds(page)
    assert rows[restart : restart + 2] == ["restart", "1"], rows
    expect(stream_markers(page)).to_have_text(
        [
            f"The server restarted: new epoch {server.epoch} (was {old_epoch}). The "
            "events below are from its new run, which counts seq from 1 again."
        ]
    )
    notice = page.get_by_test_id("stream-notice")
    expect(notice).to_be_visible()
    expect(notice).to_have_attribute("data-kind", "restart")
    expect(notice).to_have_text(
        re.compile(
            rf"^\d\d:\d\d:\d\d The server restarted: its epoch changed from "
            rf"{old_epoch} to {server.epoch}\. Its seq numbers start again at 1"
        )
    )
    # The request or connection that the restart cut off may fail once.
    assert unexpected(console_errors, is_network_error) == []


@pytest.mark.parametrize("mode", EVENT_MODES)
def test_missed_events_marked(page: Page, console_errors: list[str], mode: str) -> None:
    threaded = ThreadedServer(history_size=3)
    with threaded as server:
        start_events_page(page, server, mode)
        for number in range(2):
            on_loop(threaded, server.publish, {"n": number})
        wait_for_counter(page, "events", 2)
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
        expect(page.get_by_test_id("stream-notice")).to_be_hidden()

        # Seq 3 to 8, of which the history keeps 6 to 8.
        for number in range(6):
            on_loop(threaded, server.publish, {"n": number})
        page.get_by_test_id("connect").click()

        wait_for_counter(page, "events", 3)
        text = (
            "3 events missed: seq 3 to 5 fell out of the server's history before "
            "this page received them."
        )
        expect(stream_markers(page)).to_have_text([text])
        expect(stream_markers(page)).to_have_attribute("data-missed", "3")
        assert row_kinds(page) == ["missed", "6", "7", "8"]
        notice = page.get_by_test_id("stream-notice")
        expect(notice).to_have_attribute("data-kind", "missed")
        expect(notice).to_have_text(re.compile(rf"^\d\d:\d\d:\d\d {re.escape(text)}$"))
        assert counter(page, "missed") == 3

        # The next Connect starts a new run with an empty table and no notice.
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
        page.get_by_test_id("connect").click()
        expect(page.get_by_test_id("status")).to_have_text(RUNNING_STATUS[mode])
        expect(notice).to_be_hidden()
        expect(stream_markers(page)).to_have_count(0)
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            {"status": 503, "body": "the proxy is restarting"},
            "poll failed: HTTP 503 Service Unavailable: the proxy is restarting",
        ),
        (None, "(a network error: is the server running?)"),
    ],
)
def test_poll_error_retried(
    threaded: ThreadedServer,
    page: Page,
    console_errors: list[str],
    response: dict[str, Any] | None,
    message: str,
) -> None:
    server = threaded.server
    assert server is not None
    requested: list[float] = []

    def fail_first(route: Route) -> None:
        requested.append(time.monotonic())
        if len(requested) > 1:
            route.continue_()
        elif response is None:
            route.abort("connectionrefused")
        else:
            route.fulfill(**response)

    page.goto(server.url)
    expect_open_with_greeting(page)
    page.route(f"{server.url}poll?**", fail_first)
    on_loop(threaded, server.publish, {"before": "the failure"})

    choose_mode(page, "long-poll")

    expect(log_texts(page, "error")).to_have_count(1)
    expect(log_texts(page, "error").first).to_contain_text(message)
    expect(log_texts(page, "error").first).to_contain_text("Retrying in 1 s.")
    wait_for_counter(page, "events", 1)
    assert len(requested) >= 2
    assert requested[1] - requested[0] >= 0.9
    expect(log_texts(page, "system")).to_contain_text(
        ["recovered after 1 failed attempt"]
    )
    expect(page.get_by_test_id("status")).to_have_text("polling")
    assert counter(page, "errors") == 1
    expected_error = is_network_error if response is None else is_http_error(503)
    assert unexpected(console_errors, expected_error) == []


def test_poll_bad_request_shows_message(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "short-poll")
    page.get_by_test_id("disconnect").click()
    expect(page.get_by_test_id("status")).to_have_text("closed")

    # The page sets since and epoch but keeps other parameters of the URL, so
    # this short poll carries a wait the server rejects.
    page.get_by_test_id("url").fill(f"{server.url}poll?wait=99")
    page.get_by_test_id("connect").click()

    errors = log_texts(page, "error")
    expect(errors.first).to_contain_text(
        "poll failed: HTTP 400 Bad Request: invalid wait: '99'; "
        "pass seconds from 0 to 30"
    )
    expect(page.get_by_test_id("status")).to_have_text("retrying")
    wait_for_counter(page, "errors", 2, units=5)
    # The same error again is counted, not logged again.
    expect(errors).to_have_count(1)

    page.get_by_test_id("disconnect").click()

    expect(page.get_by_test_id("status")).to_have_text("closed")
    polls = poll_requests(threaded)
    page.wait_for_timeout(1500)
    assert poll_requests(threaded) == polls
    assert unexpected(console_errors, is_http_error(400)) == []


def test_file_page_poll_explains_cors(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    # The default poll URL of a file page is http://localhost:8765/poll.
    # Playwright aborts those requests, so the test does not depend on
    # whatever listens on port 8765.
    page.route_web_socket("ws://localhost:8765/ws", lambda websocket: None)
    page.route("http://localhost:8765/poll?**", lambda route: route.abort())
    page.goto((STATIC_DIR / "client.html").as_uri())
    expect(page.get_by_test_id("status")).to_have_text("open")

    # A short poll, because a long poll's response, which Chromium blocks,
    # would only come at the end of its wait.
    choose_mode(page, "short-poll")

    expect(page.get_by_test_id("url")).to_have_value("http://localhost:8765/poll")
    expect(page.get_by_test_id("status")).to_have_text("closed")
    expect(log_texts(page, "error").last).to_contain_text(
        "Open the page from the server instead: http://localhost:8765/"
    )

    # A real rtkit server receives the request, but sends no CORS headers, so
    # Chromium blocks the response.
    poll_url = f"{live_server.url}poll"
    page.get_by_test_id("url").fill(poll_url)
    page.get_by_test_id("connect").click()

    expect(log_texts(page, "error").last).to_contain_text(
        f"This page's origin is null (opened from a file), but the poll URL's "
        f"origin is {live_server.url.rstrip('/')}. rtkit sends no CORS headers"
    )
    expect(page.get_by_test_id("status")).to_have_text("closed")
    assert live_server.request_counts["poll"] == 1
    expect(page.get_by_test_id("file-note")).to_contain_text(
        "rtkit sends no CORS headers"
    )

    def is_cors_error(text: str) -> bool:
        return "has been blocked by CORS policy" in text

    assert unexpected(console_errors, is_cors_error, is_network_error) == []


# Short-poll interval


@pytest.mark.parametrize("value", ["abc", "0", "0.05", "20", "0x1", ""])
def test_invalid_interval_rejected(
    threaded: ThreadedServer, page: Page, console_errors: list[str], value: str
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "short-poll")
    interval = page.get_by_test_id("interval")

    interval.fill(value)
    interval.press("Enter")

    error = page.get_by_test_id("interval-error")
    expect(error).to_have_text(
        f"Invalid interval {json.dumps(value)}: enter seconds from 0.1 to 10, "
        "such as 1 or 0.5. Polling continues every 1 s."
    )
    expect(interval).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("status")).to_have_text("polling")
    starts = log_texts(page, "system").filter(has_text="short polling")
    expect(starts).to_have_text([re.compile(r"every 1 s$")])
    assert console_errors == []


def test_invalid_interval_blocks_start(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    start_events_page(page, server, "short-poll")
    page.get_by_test_id("disconnect").click()
    expect(page.get_by_test_id("status")).to_have_text("closed")
    interval = page.get_by_test_id("interval")
    interval.fill("12")
    polls = poll_requests(threaded)

    page.get_by_test_id("connect").click()

    expect(page.get_by_test_id("interval-error")).to_have_text(
        'Invalid interval "12": enter seconds from 0.1 to 10, such as 1 or 0.5.'
    )
    expect(log_texts(page, "error").last).to_have_text(
        "short polling not started: the interval is invalid"
    )
    expect(page.get_by_test_id("status")).to_have_text("closed")
    assert poll_requests(threaded) == polls

    interval.fill("0.5")
    interval.press("Enter")

    expect(page.get_by_test_id("interval-error")).to_be_hidden()
    expect(page.get_by_test_id("status")).to_have_text("polling")
    expect(log_texts(page, "system")).to_contain_text([re.compile(r"every 0\.5 s$")])
    assert console_errors == []


# URLs, echo mode and close codes


@pytest.mark.parametrize("path", ["/proxy/8765/", "/proxy/8765/static/client.html"])
def test_poll_url_derived_behind_proxy(
    live_server: rtkit.Server, page: Page, console_errors: list[str], path: str
) -> None:
    # Playwright replaces a path-prefixing proxy, as in
    # test_url_derived_behind_proxy, and responds to polls with one event.
    origin = f"http://localhost:{live_server.port}"
    polls: list[str] = []

    def serve(route: Route) -> None:
        url = urlsplit(route.request.url)
        relative = url.path.removeprefix("/proxy/8765/")
        if relative == "poll":
            polls.append(route.request.url)
            event = {"type": "event", "seq": 1, "epoch": "e1", "channel": "events"}
            event |= {"data": {"via": "proxy"}, "ts": time.time()}
            since = int(parse_qs(url.query)["since"][0])
            body = {"epoch": "e1", "seq": 1, "missed": 0}
            body["events"] = [event] if since == 0 else []
            route.fulfill(json=body)
            return
        name = relative.removeprefix("static/") or "client.html"
        route.fulfill(path=STATIC_DIR / name)

    page.route(f"{origin}/proxy/8765/**", serve)
    page.route_web_socket(
        f"ws://localhost:{live_server.port}/proxy/8765/ws", lambda _: None
    )
    page.goto(origin + path)
    expect(page.get_by_test_id("status")).to_have_text("open")

    choose_mode(page, "short-poll")

    expect(page.get_by_test_id("url")).to_have_value(f"{origin}/proxy/8765/poll")
    expect(page.get_by_test_id("events").locator("td.data")).to_have_text(
        ['{"via":"proxy"}']
    )
    assert polls[0] == f"{origin}/proxy/8765/poll?since=0"
    assert console_errors == []


def test_echo_mode_shows_stream_messages(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    page.goto(server.url)
    expect_open_with_greeting(page)
    message_box = page.get_by_test_id("message")

    message_box.fill('{"type": "subscribe", "since": 0}')
    message_box.press("Enter")
    expect(log_texts(page, "received").last).to_contain_text('{"type":"subscribed"')
    on_loop(threaded, server.publish, {"hello": "echo page"})
    expect(log_texts(page, "received").last).to_contain_text('{"type":"event","seq":1,')
    message_box.fill('{"type": "unsubscribe"}')
    message_box.press("Enter")

    expect(log_texts(page, "received").last).to_have_text(
        '{"type":"unsubscribed","channel":"events"}'
    )
    expect(log_texts(page, "error")).to_have_count(0)
    expect(page.get_by_test_id("events-panel")).to_be_hidden()
    assert console_errors == []


CLOSE_CODES = [*range(1000, 1016), 2999, 3000, 3999, 4000, 4999, 5000]


def test_close_codes_match_server(page: Page, console_errors: list[str]) -> None:
    # From file:// the page loads client.js as a classic script, so its
    # functions are globals that the test can call.
    page.route_web_socket("ws://localhost:8765/ws", lambda websocket: None)
    page.goto((STATIC_DIR / "client.html").as_uri())
    expect(page.get_by_test_id("status")).to_have_text("open")

    page_descriptions = page.evaluate(
        "codes => codes.map(code => describeClose(code, 'why'))", CLOSE_CODES
    )

    server_descriptions = [rtkit.describe_close(code, "why") for code in CLOSE_CODES]
    assert page_descriptions == server_descriptions
    assert console_errors == []


# Chat
#
# Each chat page gets its own browser context, as tabs of different people
# would. The server and the notebook's control panel run in the test process
# unless a test starts them in a real kernel.


class PageOpener:
    """Opens pages in fresh browser contexts and records their console errors."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[BrowserContext] = []
        self.console_errors: list[str] = []
        """Console errors of every page opened, each starting with the page's label."""

    def open(self, label: str) -> Page:
        context = self.browser.new_context()
        context.set_default_timeout(WAIT_MS)
        self.contexts.append(context)
        page = context.new_page()
        record_console_errors(page, self.console_errors, f"{label}: ")
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[PageOpener]:
    opener = PageOpener(browser)
    yield opener
    opener.close()


def open_chat(page: Page, url: str) -> None:
    """Open the client at ``url`` and switch it from echo to chat mode."""
    page.goto(url)
    expect_open_with_greeting(page)
    choose_mode(page, "chat")
    expect(page.get_by_test_id("chat-panel")).to_be_visible()
    expect(page.get_by_test_id("status")).to_have_text("open")
    expect(page.get_by_test_id("join")).to_be_enabled()


def join_chat(page: Page, name: str, channel: str = "lobby") -> None:
    page.get_by_test_id("chat-name").fill(name)
    page.get_by_test_id("chat-channel").fill(channel)
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("chat-state")).to_have_text(f"In {channel} as {name}")


def open_chat_page(pages: PageOpener, url: str, name: str) -> Page:
    """Open a page that joined ``lobby`` as ``name``."""
    page = pages.open(name)
    open_chat(page, url)
    join_chat(page, name)
    return page


def send_chat(page: Page, text: str) -> None:
    page.get_by_test_id("chat-text").fill(text)
    page.get_by_test_id("chat-text").press("Enter")


def chat_messages(page: Page) -> Locator:
    return page.get_by_test_id("chat-messages").locator(".chat-message")


def member_names(page: Page) -> Locator:
    return page.get_by_test_id("presence").locator(".member-name")


def chat_sender(name: str) -> dict[str, str]:
    """Return the ``from`` field the server gives a member's message."""
    return {"id": f"{name}-id", "name": name}


def expect_chat_message(
    message: Locator, sender: str, text: str, origin: str, tag: str | None = None
) -> None:
    expect(message.locator(".chat-sender")).to_have_text(sender)
    expect(message.locator(".chat-text")).to_have_text(text)
    expect(message).to_have_attribute("data-origin", origin)
    if tag is None:
        expect(message.locator(".chat-tag")).to_have_count(0)
    else:
        expect(message.locator(".chat-tag")).to_have_text(tag)
    expect(message.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))


def test_chat_two_pages_talk(threaded: ThreadedServer, pages: PageOpener) -> None:
    server = threaded.server
    assert server is not None
    ada = open_chat_page(pages, server.url, "ada")
    bob = open_chat_page(pages, server.url, "bob")

    for page, name in [(ada, "ada"), (bob, "bob")]:
        expect(member_names(page)).to_have_text(["ada", "bob"])
        expect(page.get_by_test_id("presence-count")).to_have_text("(2)")
        own_entry = page.get_by_test_id("presence").locator(".member-self")
        expect(own_entry.locator(".member-name")).to_have_text(name)
        expect(own_entry.locator(".chat-tag")).to_have_text("you")

    markup = '<img src=x onerror="window.injected = true"><b>hi bob</b>'
    send_chat(ada, markup)

    expect(chat_messages(bob)).to_have_count(1)
    expect_chat_message(chat_messages(bob).last, "ada", markup, "member")
    expect(chat_messages(ada)).to_have_count(1)
    expect_chat_message(chat_messages(ada).last, "ada", markup, "own", "you")
    expect(ada.get_by_test_id("chat-text")).to_have_value("")
    expect(log_texts(ada, "sent").last).to_have_text(
        json.dumps(
            {"type": "message", "channel": "lobby", "text": markup},
            separators=(",", ":"),
        )
    )
    for page in (ada, bob):
        assert page.get_by_test_id("chat-messages").locator("img, b").count() == 0
        assert page.evaluate("window.injected") is None

    bob.get_by_test_id("leave").click()

    expect(member_names(ada)).to_have_text(["ada"])
    expect(bob.get_by_test_id("chat-state")).to_have_text(
        "Not in a channel. Enter a display name and press Join."
    )
    expect(member_names(bob)).to_have_count(0)
    expect(bob.get_by_test_id("join")).to_be_enabled()
    expect(bob.get_by_test_id("chat-text")).to_be_disabled()
    expect(log_texts(bob, "system").last).to_have_text("left lobby")
    assert pages.console_errors == []


def test_chat_shows_notebook_broadcast(
    threaded: ThreadedServer, pages: PageOpener
) -> None:
    server = threaded.server
    assert server is not None
    ada = open_chat_page(pages, server.url, "ada")
    bob = open_chat_page(pages, server.url, "bob")

    async def send_from_panel() -> ControlPanel:
        panel = ControlPanel(server)
        panel.channel.value = "lobby"
        panel.message.value = "hello from the notebook"
        panel.send_button.click()
        return panel

    panel = threaded.call(send_from_panel())
    try:
        for page in (ada, bob):
            expect(chat_messages(page)).to_have_count(1)
            expect_chat_message(
                chat_messages(page).last,
                "notebook",
                "hello from the notebook",
                "notebook",
                "from the notebook",
            )
        assert panel.message.value == ""
    finally:
        on_loop(threaded, panel.close)
    assert pages.console_errors == []


INVALID_NAMES = ["", "   ", "x" * 33, "tab\there", "line\u2028break"]
INVALID_CHANNELS = ["", "-lobby", "lob by", "lobby/1", "x" * 65]


def test_chat_rejects_invalid_fields(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    open_chat(page, server.url)
    name = page.get_by_test_id("chat-name")
    channel = page.get_by_test_id("chat-channel")
    name_error = page.get_by_test_id("chat-name-error")
    channel_error = page.get_by_test_id("chat-channel-error")

    for value in INVALID_NAMES:
        name.fill(value)
        page.get_by_test_id("join").click()
        expect(name_error).to_have_text(
            f"Invalid name {json.dumps(value)}: enter 1 to 32 printable characters, "
            "such as ada."
        )
        expect(name).to_have_attribute("aria-invalid", "true")
        expect(channel_error).to_be_hidden()

    name.fill("ada")
    expect(name_error).to_be_hidden()
    for value in INVALID_CHANNELS:
        channel.fill(value)
        page.get_by_test_id("join").click()
        expect(channel_error).to_have_text(
            f"Invalid channel {json.dumps(value)}: use 1 to 64 letters, digits and "
            "_ . : -, starting with a letter or digit, such as lobby."
        )
        expect(channel).to_have_attribute("aria-invalid", "true")
        expect(name_error).to_be_hidden()

    expect(page.get_by_test_id("chat-state")).to_have_text(
        "Not in a channel. Enter a display name and press Join."
    )
    expect(log_texts(page, "sent")).to_have_text(["Hello Server!"])
    assert on_loop(threaded, lambda: server.push.members("lobby")) == []

    # Valid values of maximum length, with spaces around the name that the page
    # trims as the server does. Python counts the name's 32 code points, not the 64
    # UTF-16 code units of the emoji.
    longest_name = "\N{GRINNING FACE}" * 32
    longest_channel = "c" + "_.:-9" * 12 + "abc"
    name.fill(f"  {longest_name} ")
    channel.fill(longest_channel)
    page.get_by_test_id("join").click()

    expect(page.get_by_test_id("chat-state")).to_have_text(
        f"In {longest_channel} as {longest_name}"
    )
    expect(name_error).to_be_hidden()
    expect(channel_error).to_be_hidden()
    expect(name).not_to_have_attribute("aria-invalid", "true")
    expect(member_names(page)).to_have_text([longest_name])
    assert console_errors == []


def test_chat_shows_server_errors(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    hub = server.hub
    open_chat(page, server.url)
    chat_error = page.get_by_test_id("chat-error")

    # A join the server rejects: the hub may not create one more channel.
    on_loop(threaded, lambda: setattr(hub, "max_channels", len(hub.streams)))
    page.get_by_test_id("chat-name").fill("ada")
    page.get_by_test_id("join").click()

    expect(chat_error).to_contain_text(
        "server error (too_many_channels): too many channels"
    )
    expect(log_texts(page, "error").last).to_contain_text(
        "server error (too_many_channels): too many channels"
    )
    expect(page.get_by_test_id("chat-state")).to_have_text(
        "Not in a channel. Enter a display name and press Join."
    )
    expect(page.get_by_test_id("join")).to_be_enabled()

    on_loop(threaded, lambda: setattr(hub, "max_channels", 256))
    page.get_by_test_id("join").click()
    expect(page.get_by_test_id("chat-state")).to_have_text("In lobby as ada")
    expect(chat_error).to_be_hidden()

    # A text over the server's limit of 4096 characters.
    send_chat(page, "x" * 4097)

    # The server cuts the quoted value to 60 characters.
    message = (
        "server error (invalid_text): invalid text: '"
        + "x" * 56
        + "...; send 1 to 4096 characters of text"
    )
    expect(chat_error).to_have_text(message)
    expect(chat_error).to_be_visible()
    expect(log_texts(page, "error").last).to_have_text(message)
    expect(chat_messages(page)).to_have_count(0)

    send_chat(page, "x" * 4096)

    expect(chat_error).to_be_hidden()
    expect(chat_messages(page)).to_have_count(1)
    expect(chat_messages(page).last).to_have_attribute("data-origin", "own")
    assert console_errors == []


def test_chat_rejoins_after_drop(
    threaded: ThreadedServer, page: Page, console_errors: list[str]
) -> None:
    server = threaded.server
    assert server is not None
    open_chat(page, server.url)
    join_chat(page, "ada")
    for text in ["one", "two"]:
        on_loop(
            threaded,
            server.publish,
            {"from": chat_sender("bob"), "text": text},
            "lobby",
        )
    expect(chat_messages(page)).to_have_count(2)
    page.evaluate(
        """() => {
            const state = document.querySelector('[data-testid="chat-state"]');
            window.chatStates = [];
            const record = () => window.chatStates.push(state.textContent);
            const options = { childList: true, characterData: true, subtree: true };
            new MutationObserver(record).observe(state, options);
        }"""
    )

    async def drop_then_publish() -> None:
        # The server closes the page's connection, then publishes what the
        # page misses while it is away.
        push = server.push
        connection = next(
            c for c, client in push.clients.items() if client.name == "ada"
        )
        await connection.close(1012, "restarting the handler")
        for text in ["three", "four", "five"]:
            server.publish({"from": chat_sender("bob"), "text": text}, "lobby")

    threaded.call(drop_then_publish())

    expect(log_texts(page, "system")).to_contain_text(
        [
            re.compile(
                r"^closed: 1012 \(service restart\): restarting the handler\. "
                r"Reconnecting in \d+\.\d\d s \(attempt 1\)\.$"
            )
        ]
    )
    join = {"type": "join", "channel": "lobby", "name": "ada", "since": 2}
    join["epoch"] = server.epoch
    expect(log_texts(page, "sent").last).to_have_text(
        json.dumps(join, separators=(",", ":"))
    )
    expect(page.get_by_test_id("chat-state")).to_have_text("In lobby as ada")
    expect(chat_messages(page).locator(".chat-text")).to_have_text(
        ["one", "two", "three", "four", "five"]
    )
    seqs = chat_messages(page).evaluate_all("items => items.map(i => i.dataset.seq)")
    assert seqs == ["1", "2", "3", "4", "5"]
    # Only the messages sent while the page was away came in the rejoin's replay.
    replayed = page.get_by_test_id("chat-messages").locator(".chat-earlier")
    expect(replayed.locator(".chat-text")).to_have_text(["three", "four", "five"])
    expect(replayed.first).to_have_attribute(
        "title", re.compile("^Sent before this page joined or rejoined")
    )
    states = page.evaluate("window.chatStates")
    assert "Connection lost. Reconnecting, then rejoining lobby after seq 2." in states
    expect(member_names(page)).to_have_text(["ada"])
    expect(page.get_by_test_id("presence").locator(".member-self")).to_have_count(1)
    expect(log_texts(page, "error")).to_have_count(0)

    send_chat(page, "back again")
    expect_chat_message(chat_messages(page).last, "ada", "back again", "own", "you")
    expect(chat_messages(page).last).not_to_have_class(re.compile("chat-earlier"))
    assert console_errors == []


def test_chat_mode_switch_leaves_channel(
    threaded: ThreadedServer, pages: PageOpener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rtkit")
    server = threaded.server
    assert server is not None
    ada = open_chat_page(pages, server.url, "ada")
    bob = open_chat_page(pages, server.url, "bob")
    expect(member_names(bob)).to_have_text(["ada", "bob"])

    choose_mode(ada, "echo")

    expect(member_names(bob)).to_have_text(["bob"])
    expect(log_texts(ada, "sent")).to_contain_text(
        ['{"type":"leave","channel":"lobby"}']
    )
    expect(log_texts(ada, "system")).to_contain_text(
        ["stopped Chat (WebSocket): closing the WebSocket with 1000 (normal closure)"]
    )
    expect(log_texts(ada, "received").last).to_have_text(ECHO_OF_GREETING)
    expect(ada.get_by_test_id("chat-panel")).to_be_hidden()

    def closed_normally() -> bool:
        return any(
            "disconnected: client closed with 1000 (normal closure): "
            "client switched transport" in record.getMessage()
            for record in caplog.records
        )

    wait_until(closed_normally, "the server's log line for the closed chat connection")
    assert on_loop(
        threaded, lambda: [c.name for c in server.push.members("lobby")]
    ) == ["bob"]

    # Back in chat mode, the page is out of the channel until it joins again.
    choose_mode(ada, "chat")
    expect(ada.get_by_test_id("chat-state")).to_have_text(
        "Not in a channel. Enter a display name and press Join."
    )
    assert pages.console_errors == []


BROADCAST_CELL = """\
import asyncio
import itertools


async def publish_chat_messages(channel, per_second):
    sender = {"id": "server", "name": "notebook"}
    for number in itertools.count(1):
        server.publish({"from": sender, "text": f"tick {number}"}, channel)
        await asyncio.sleep(1 / per_second)


task = asyncio.get_running_loop().create_task(publish_chat_messages("lobby", 10))
"""

STOP_CELL = """\
task.cancel()
try:
    await task
except asyncio.CancelledError:
    pass
await server.stop()
"""

DISCONNECT_LINE = re.compile(r" INFO rtkit\.server: client [0-9a-f]{8} disconnected: ")
CHAT_CLOSE = re.compile(
    r"disconnected: (client closed with 1001 \(going away\)|connection lost, )"
)
"""How the server logs a tab that was closed, reloaded or dropped."""


@pytest.mark.kernel
def test_chat_tabs_closed_mid_broadcast(
    kernel: BlockingKernelClient, pages: PageOpener
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    iopub: list[dict[str, Any]] = []
    execute(
        kernel, f"import rtkit\nserver = await rtkit.start(port={port})", iopub=iopub
    )
    execute(kernel, BROADCAST_CELL, iopub=iopub)

    # The cell returned: the kernel's loop alone serves the pages from here.
    closed, reloaded, dropped = [
        open_chat_page(pages, url, name) for name in ["ann", "ben", "cat"]
    ]
    for page in (closed, reloaded, dropped):
        expect(member_names(page)).to_have_text(["ann", "ben", "cat"])
        expect(chat_messages(page).last.locator(".chat-text")).to_have_text(
            re.compile(r"^tick \d+$")
        )

    closed.close()
    reloaded.reload()
    dropped.context.close()

    expect_open_with_greeting(reloaded)
    logs = execute(
        kernel, "await asyncio.sleep(1)\nprint(rtkit.recent_logs(100))", iopub=iopub
    )
    execute(kernel, STOP_CELL, iopub=iopub)
    drain_iopub(kernel, iopub)

    outputs = [
        message
        for message in iopub
        if message["msg_type"] in ("stream", "error", "display_data", "execute_result")
    ]
    assert [m for m in outputs if m["msg_type"] == "error"] == []
    stderr = [
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    ]
    assert stderr == []
    for message in outputs:
        text = json.dumps(message["content"])
        assert "Traceback" not in text, text
        assert "Error" not in text, text
        assert "handler failed" not in text, text

    lines = logs.splitlines()
    disconnects = [line for line in lines if DISCONNECT_LINE.search(line)]
    switches = [line for line in disconnects if "client switched transport" in line]
    # The three echo connections that each page closed on its switch to chat.
    assert len(switches) == 3, logs
    # The three chat connections: closed, reloaded and dropped with the context.
    chat_closes = [line for line in disconnects if line not in switches]
    assert len(chat_closes) == 3, logs
    for line in chat_closes:
        assert CHAT_CLOSE.search(line), line
    assert [line for line in lines if " ERROR " in line or " WARNING " in line] == []
    assert pages.console_errors == []


# Hostile server values
#
# A server may send numbers that JSON allows but the page cannot use: times
# beyond the range of Date, and counts beyond 2^53 - 1, where JavaScript
# numbers stop being exact. The page reports each one and keeps its position.

MAX_SAFE_INTEGER = 2**53 - 1
NOT_A_COUNT = f"expected an integer from 0 to {MAX_SAFE_INTEGER}"
FAST_RETRY_NO_HEARTBEAT = "?backoff_base=0.05&backoff_cap=0.2&heartbeat_interval=0"
"""Query parameters that make the page reconnect at once and send no pings."""


class ScriptedStream:
    """A WebSocket handler that replies to the page's first ``command`` with ``frames``.

    It then closes the connection with 1012, so the page reconnects and sends
    the command again with the position it kept. Every command of that type
    is recorded in ``received``, and other messages, such as the echo
    greeting, are ignored.
    """

    def __init__(self, command: str, frames: list[str]) -> None:
        self.command = command
        self.frames = frames
        self.received: list[dict[str, Any]] = []

    async def __call__(self, connection: ServerConnection) -> None:
        async for text in connection:
            if not isinstance(text, str) or not text.startswith("{"):
                continue
            message = json.loads(text)
            if message.get("type") != self.command:
                continue
            self.received.append(message)
            if len(self.received) == 1:
                for frame in self.frames:
                    await connection.send(frame)
                await connection.close(1012, "restarting")


def subscribed_frame(**fields: Any) -> str:
    message = {"type": "subscribed", "channel": DEFAULT_CHANNEL, "epoch": "e1"}
    return json.dumps(message | {"seq": 3, "missed": 0} | fields)


def event_frame(seq: Any, ts: Any, channel: str = DEFAULT_CHANNEL, **data: Any) -> str:
    event = {"type": "event", "seq": seq, "epoch": "e1", "channel": channel}
    return json.dumps(event | {"data": data, "ts": ts})


def latency_cells(page: Page) -> Locator:
    return page.get_by_test_id("events").locator("td.latency")


def test_push_rejects_hostile_numbers(page: Page, console_errors: list[str]) -> None:
    stream = ScriptedStream(
        "subscribe",
        [
            subscribed_frame(missed=1e300),
            subscribed_frame(seq=2**53),
            subscribed_frame(missed=-1),
            subscribed_frame(missed=5),
            subscribed_frame(epoch=7),
            subscribed_frame(),
            event_frame(1, 1e300, n=1),
            # JSON.parse reads 1e400 as Infinity, which json.dumps cannot write.
            event_frame(2, 0, n=2).replace('"ts": 0', '"ts": 1e400'),
            event_frame(3, time.time(), n=3),
            event_frame(1e300, time.time(), n=4),
            event_frame(2**53, time.time(), n=5),
        ],
    )
    with ThreadedServer(handler=stream) as server:
        page.goto(server.url + FAST_RETRY_NO_HEARTBEAT)
        expect(page.get_by_test_id("status")).to_have_text("open")
        choose_mode(page, "push")

        wait_until(lambda: len(stream.received) == 2, "the page to subscribe again")

        expect(log_texts(page, "error")).to_contain_text(
            [
                f"missed is 1e+300, {NOT_A_COUNT}",
                f"seq is {2**53}, {NOT_A_COUNT}",
                f"missed is -1, {NOT_A_COUNT}",
                "missed is 5 after seq 0, but the latest seq is 3",
                "epoch is 7, expected a string",
                "invalid ts 1e+300 in event seq 1",
                "invalid ts Infinity in event seq 2",
                'invalid event: {"type":"event","seq":1e+300,',
                f'invalid event: {{"type":"event","seq":{2**53},',
            ]
        )
        assert event_seqs(page) == [1, 2, 3]
        expect(latency_cells(page)).to_have_text(
            ["invalid time", "invalid time", re.compile(r"^-?\d+\.\d$")]
        )
        invalid = latency_cells(page).first
        expect(invalid).to_have_attribute("data-invalid", "true")
        expect(invalid).to_have_attribute("title", re.compile("ts 1e\\+300"))
        expect(invalid).to_have_css("font-style", "italic")
        expect(latency_cells(page).last).to_have_css("font-style", "normal")
        expect(page.get_by_test_id("last-seq")).to_have_text("3")
        assert counter(page, "events") == 3
        assert counter(page, "missed") == 0
        assert counter(page, "duplicates") == 0
        first, second = stream.received
        assert first["since"] == 0
        assert "epoch" not in first
        assert second["since"] == 3
        assert second["epoch"] == "e1"

        # Stop the page before the server, so that it does not reconnect.
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


INVALID_EPOCH = "expected 1 to 64 letters, digits, _ and -"


def test_push_rejects_invalid_epochs(page: Page, console_errors: list[str]) -> None:
    long_epoch = "e" * 100_000
    stream = ScriptedStream(
        "subscribe",
        [
            subscribed_frame(epoch=long_epoch),
            subscribed_frame(epoch="bad epoch"),
            subscribed_frame(epoch="x" * 65),
            subscribed_frame(),
            event_frame(1, time.time(), n=1).replace('"e1"', json.dumps(long_epoch)),
            event_frame(1, time.time(), n=2),
        ],
    )
    with ThreadedServer(handler=stream) as server:
        page.goto(server.url + FAST_RETRY_NO_HEARTBEAT)
        expect(page.get_by_test_id("status")).to_have_text("open")
        choose_mode(page, "push")

        wait_until(lambda: len(stream.received) == 2, "the page to subscribe again")

        errors = log_texts(page, "error")
        expect(errors).to_contain_text(
            [
                f"epoch is a string of 100,000 characters, {INVALID_EPOCH}",
                f'epoch is "bad epoch", {INVALID_EPOCH}',
                f"epoch is a string of 65 characters, {INVALID_EPOCH}",
                'invalid event: {"type":"event","seq":1,"epoch":"eeee',
            ]
        )
        # The quoted messages are shortened, so the long epoch stays out of the page.
        log_length = page.get_by_test_id("log").evaluate(
            "log => log.textContent.length"
        )
        assert log_length < 10_000
        expect(page.get_by_test_id("epoch")).to_have_text("e1")
        assert event_seqs(page) == [1]
        second = stream.received[1]
        assert second["epoch"] == "e1"
        assert second["since"] == 1

        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


def test_push_marks_seq_gap(page: Page, console_errors: list[str]) -> None:
    stream = ScriptedStream(
        "subscribe",
        [
            subscribed_frame(seq=0),
            event_frame(1, time.time(), n=1),
            event_frame(4, time.time(), n=4),
            event_frame(5, time.time(), n=5),
            event_frame(7, time.time(), n=7),
        ],
    )
    with ThreadedServer(handler=stream) as server:
        page.goto(server.url + FAST_RETRY_NO_HEARTBEAT)
        expect(page.get_by_test_id("status")).to_have_text("open")
        choose_mode(page, "push")

        wait_until(lambda: len(stream.received) == 2, "the page to subscribe again")

        expect(stream_markers(page)).to_have_text(
            [
                "2 events missed: seq jumped from 1 to 4.",
                "1 event missed: seq jumped from 5 to 7.",
            ]
        )
        assert row_kinds(page) == ["1", "missed", "4", "5", "missed", "7"]
        expect(page.get_by_test_id("stream-notice")).to_contain_text(
            "1 event missed: seq jumped from 5 to 7."
        )
        assert counter(page, "missed") == 3

        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


def test_poll_rejects_long_epoch(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    long_epoch = "e" * 100_000
    bodies = [
        poll_body().replace('"e1"', json.dumps(long_epoch)),
        poll_body(events=(event_frame(1, time.time()), event_frame(2, time.time()))),
    ]
    with scripted_poll_server(bodies) as (poll_url, requests):
        start_events_page(page, live_server, "short-poll")
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
        page.get_by_test_id("url").fill(poll_url)
        page.get_by_test_id("connect").click()

        wait_until(
            lambda: any("since=2&epoch=e1" in target for target in requests),
            "a poll after seq 2",
        )

        expect(log_texts(page, "error").first).to_contain_text(
            f"epoch is a string of 100,000 characters, {INVALID_EPOCH}. "
            "Retrying in 1 s."
        )
        expect(log_texts(page, "error").first).to_contain_text(
            f"… ({len(bodies[0]):,} characters in all)"
        )
        assert requests[1] == requests[0]
        assert all(len(target) < 200 for target in requests)
        assert event_seqs(page) == [1, 2]

        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


def test_chat_shows_invalid_times(page: Page, console_errors: list[str]) -> None:
    sender = chat_sender("bob")
    stream = ScriptedStream(
        "join",
        [
            subscribed_frame(channel="lobby", missed=1e300),
            event_frame(1, 1e300, "lobby", **{"from": sender, "text": "far future"}),
            event_frame(2, "noon", "lobby", **{"from": sender, "text": "at noon"}),
            event_frame(3, time.time(), "lobby", **{"from": sender, "text": "now"}),
        ],
    )
    with ThreadedServer(handler=stream) as server:
        page.goto(server.url + FAST_RETRY_NO_HEARTBEAT)
        expect(page.get_by_test_id("status")).to_have_text("open")
        choose_mode(page, "chat")
        expect(page.get_by_test_id("join")).to_be_enabled()
        page.get_by_test_id("chat-name").fill("ada")
        page.get_by_test_id("join").click()

        wait_until(lambda: len(stream.received) == 2, "the page to join again")

        messages = chat_messages(page)
        expect(messages.locator(".chat-text")).to_have_text(
            ["far future", "at noon", "now"]
        )
        times = messages.locator("time")
        expect(times).to_have_text(
            ["invalid time", "invalid time", re.compile(r"^\d\d:\d\d:\d\d$")]
        )
        expect(times.first).to_have_attribute("data-invalid", "true")
        expect(times.first).to_have_css("font-style", "italic")
        expect(times.last).to_have_css("font-style", "normal")
        error_color = page.get_by_test_id("chat-error").evaluate(
            "element => getComputedStyle(element).color"
        )
        expect(times.first).to_have_css("color", error_color)
        expect(times.first).not_to_have_attribute("datetime", re.compile(".*"))
        expect(times.first).to_have_attribute("title", re.compile("ts 1e\\+300"))
        expect(log_texts(page, "error")).to_contain_text(
            [
                f"missed is 1e+300, {NOT_A_COUNT}",
                "invalid ts 1e+300 in event seq 1",
                'invalid ts "noon" in event seq 2',
            ]
        )
        first, second = stream.received
        assert first["since"] == 0
        # The invalid subscribed message left the position as it was, so the
        # rejoin resumes after the last message shown, without an epoch.
        assert second["since"] == 3
        assert "epoch" not in second

        # Stop the page before the server, so that it does not reconnect.
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


@contextmanager
def scripted_poll_server(bodies: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``bodies`` in turn at /poll on 127.0.0.1, repeating the last one.

    Yields the poll URL and the list of request targets received. Responses
    allow any origin, as a hostile server may, so a page of another origin
    reads them.
    """
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = bodies[min(len(requests), len(bodies)) - 1].encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/poll", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout(5))


def poll_body(missed: str = "0", events: tuple[str, ...] = ()) -> str:
    """Return a /poll body in epoch e1 at seq 2, with ``missed`` as written."""
    head = f'{{"epoch": "e1", "seq": 2, "missed": {missed}, "events": ['
    return head + ", ".join(events) + "]}"


def test_poll_rejects_hostile_numbers(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    bodies = [
        poll_body(missed="1e300"),
        poll_body(events=(event_frame(1, 1e300), event_frame(2, time.time()))),
        poll_body(),
    ]
    with scripted_poll_server(bodies) as (poll_url, requests):
        start_events_page(page, live_server, "short-poll")
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
        page.get_by_test_id("url").fill(poll_url)
        page.get_by_test_id("connect").click()

        wait_until(
            lambda: any("since=2&epoch=e1" in target for target in requests),
            "a poll after seq 2",
        )

        expect(log_texts(page, "error")).to_contain_text(
            [
                f"poll failed: invalid poll response {bodies[0]}: missed is 1e+300, "
                f"{NOT_A_COUNT}. Retrying in 1 s.",
                "invalid ts 1e+300 in event seq 1",
            ]
        )
        assert requests[0].startswith("/poll?since=0&epoch=")
        assert requests[1] == requests[0]
        assert event_seqs(page) == [1, 2]
        expect(latency_cells(page)).to_have_text(
            ["invalid time", re.compile(r"^-?\d+\.\d$")]
        )
        expect(page.get_by_test_id("last-seq")).to_have_text("2")
        assert counter(page, "events") == 2
        assert counter(page, "errors") == 1
        assert counter(page, "missed") == 0
        assert counter(page, "duplicates") == 0

        # Stop polling before the server stops, so that no poll fails.
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []


class ScriptedReplies:
    """A WebSocket handler that replies to the n-th ``command`` with ``replies[n]``.

    After each reply but the last, it closes the connection with 1012, so the
    page reconnects and sends the command again.
    """

    def __init__(self, command: str, replies: list[list[str]]) -> None:
        self.command = command
        self.replies = replies
        self.received: list[dict[str, Any]] = []

    async def __call__(self, connection: ServerConnection) -> None:
        async for text in connection:
            if not isinstance(text, str) or not text.startswith("{"):
                continue
            message = json.loads(text)
            if message.get("type") != self.command:
                continue
            self.received.append(message)
            count = len(self.received)
            for frame in self.replies[min(count, len(self.replies)) - 1]:
                await connection.send(frame)
            if count < len(self.replies):
                await connection.close(1012, "restarting")


def test_push_reset_starts_over(page: Page, console_errors: list[str]) -> None:
    now = time.time()
    stream = ScriptedReplies(
        "subscribe",
        [
            [subscribed_frame(seq=5), *(event_frame(seq, now) for seq in range(1, 6))],
            [
                subscribed_frame(seq=2, reset=True),
                *(event_frame(s, now) for s in (1, 2)),
            ],
        ],
    )
    with ThreadedServer(handler=stream) as server:
        page.goto(server.url + FAST_RETRY_NO_HEARTBEAT)
        expect(page.get_by_test_id("status")).to_have_text("open")
        choose_mode(page, "push")

        wait_until(lambda: len(stream.received) == 2, "the page to subscribe again")
        expect(page.get_by_test_id("last-seq")).to_have_text("2")
        assert event_seqs(page) == [1, 2, 3, 4, 5, 1, 2]
        expect(stream_markers(page)).to_have_count(1)
        expect(stream_markers(page)).to_have_attribute("data-marker", "reset")
        expect(log_texts(page, "system")).to_contain_text(
            [re.compile(r"^position reset: seq 5 is past the channel's latest event")]
        )
        assert counter(page, "duplicates") == 0
        assert stream.received[1]["since"] == 5

        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
    assert console_errors == []
