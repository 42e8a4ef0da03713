"""static/client.html when servers crash, stall, fill up or require a token.

Headless Chromium (Debian's /usr/bin/chromium, through Playwright's sync API)
follows real rtkit servers on 127.0.0.1. The page's query parameters shorten
its backoff delays and heartbeat, so each test takes a few seconds.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable

import pytest
from playwright.sync_api import Browser, Page, expect
from websockets.sync.client import connect

import rtkit
import rtkit.server
from rtkit.auth import TokenAuth

from .browsers import record_console_errors
from .conftest import ThreadedServer, timeout
from .test_browser import (
    EVENT_MODES,
    RUNNING_STATUS,
    choose_mode,
    counter,
    event_seqs,
    expect_open_with_greeting,
    is_http_error,
    is_network_error,
    log_texts,
    on_loop,
    unexpected,
    wait_for_counter,
)

pytestmark = pytest.mark.browser

FAST_RECONNECT = {"backoff_base": 0.05, "backoff_cap": 0.2}
"""Backoff settings that bring the page back within a fraction of a second."""

TOKEN = "s3cret-token"


def page_url(server: rtkit.Server, **parameters: float) -> str:
    """Return the client's URL on ``server`` with ``parameters`` in its query."""
    query = "&".join(f"{name}={value}" for name, value in parameters.items())
    return f"{server.url}?{query}" if query else server.url


def open_push_page(page: Page, url: str) -> None:
    """Open the client at ``url``, switch it to push and wait for the subscription."""
    page.goto(url)
    expect_open_with_greeting(page)
    choose_mode(page, "push")
    expect(page.get_by_test_id("status")).to_have_text("open")
    expect(log_texts(page, "sent").last).to_contain_text('"type":"subscribe"')


def publish(threaded: ThreadedServer, count: int) -> None:
    """Publish ``count`` events on the server's loop, running or killed."""
    server = threaded.server
    assert server is not None
    for _ in range(count):
        on_loop(threaded, server.publish, {"n": server.hub.latest + 1})


def is_failed_websocket(text: str) -> bool:
    """Match Chromium's console error for a WebSocket that failed to open."""
    return text.startswith("WebSocket connection to ") and " failed" in text


def is_reconnect_error(text: str) -> bool:
    """Match the console errors of failed reconnects while a server is down.

    After each failed attempt the page requests GET /ws, which fails while
    the server is down and returns 426 once it is back.
    """
    return (
        is_failed_websocket(text) or is_network_error(text) or is_http_error(426)(text)
    )


def record_retries(page: Page) -> None:
    """Record each (attempt, delay, ceiling) of the reconnect bar in window.retries."""
    page.evaluate(
        """() => {
            const bar = document.querySelector('[data-testid="reconnect-bar"]');
            window.retries = [];
            const record = () => {
                const data = bar.dataset;
                const entry = [data.attempt, data.delayMs, data.ceilingMs];
                const last = window.retries.at(-1);
                if (entry[0] !== undefined && String(last) !== String(entry)) {
                    window.retries.push(entry);
                }
            };
            new MutationObserver(record).observe(bar, { attributes: true });
        }"""
    )


def recorded_retries(page: Page) -> list[tuple[int, float, float]]:
    """Return the retries that record_retries() saw, as (attempt, delay, ceiling)."""
    entries = page.evaluate("window.retries")
    return [(int(a), float(d), float(c)) for a, d, c in entries]


def first_attempt_after_kill(page: Page, threaded: ThreadedServer) -> int:
    """Kill the server and return the attempt number of the page's next retry.

    Call record_retries() first. The server then starts again with its history,
    and this returns once the page is open again.
    """
    server = threaded.server
    assert server is not None
    count = len(recorded_retries(page))
    threaded.call(server.kill())
    page.wait_for_function(f"() => window.retries.length > {count}")
    attempt = recorded_retries(page)[count][0]
    threaded.call(server.start(keep_history=True))
    expect(page.get_by_test_id("status")).to_have_text("open")
    return attempt


# Crash and restart


def test_push_resumes_after_kill_without_loss(
    page: Page, console_errors: list[str]
) -> None:
    threaded = ThreadedServer()
    with threaded as server:
        open_push_page(page, page_url(server, **FAST_RECONNECT))
        epoch = server.epoch
        publish(threaded, 5)
        wait_for_counter(page, "events", 5)

        threaded.call(server.kill())
        expect(page.get_by_test_id("status")).to_have_text(
            re.compile("retrying|connecting")
        )
        publish(threaded, 5)
        expect(log_texts(page, "error")).to_contain_text(
            [re.compile(r"reconnecting to .* failed: 1006")]
        )
        threaded.call(server.start(keep_history=True))
        publish(threaded, 5)

        wait_for_counter(page, "events", 15)
        expect(page.get_by_test_id("status")).to_have_text("open")
        assert event_seqs(page) == list(range(1, 16))
        assert counter(page, "duplicates") == 0
        assert counter(page, "missed") == 0
        assert counter(page, "requests") == 2
        expect(page.get_by_test_id("epoch")).to_have_text(epoch)
        expect(log_texts(page, "system")).to_contain_text(
            [re.compile(r"^recovered after \d+ failed attempts?$")]
        )
        expect(page.get_by_test_id("reconnect-bar")).to_be_hidden()
        expect(page.get_by_test_id("connection-problem")).to_be_hidden()
    failures = unexpected(console_errors, is_reconnect_error)
    assert failures == []


def test_push_restart_reports_new_epoch(page: Page, console_errors: list[str]) -> None:
    threaded = ThreadedServer()
    with threaded as server:
        open_push_page(page, page_url(server, **FAST_RECONNECT))
        old_epoch = server.epoch
        publish(threaded, 3)
        wait_for_counter(page, "events", 3)

        threaded.call(server.kill())
        threaded.call(server.start())
        publish(threaded, 2)

        assert server.epoch != old_epoch
        expect(log_texts(page, "system")).to_contain_text(
            [
                f"server restarted: new epoch {server.epoch} (was {old_epoch}), "
                "continuing from seq 0"
            ]
        )
        expect(page.get_by_test_id("epoch")).to_have_text(server.epoch)
        wait_for_counter(page, "events", 5)
        assert event_seqs(page) == [1, 2, 3, 1, 2]
        assert counter(page, "duplicates") == 0
    failures = unexpected(console_errors, is_reconnect_error)
    assert failures == []


LATENCY_SUMMARY = re.compile(r"^(-?\d+\.\d) / (-?\d+\.\d) ms$")
"""The latency tile's text: median / max in milliseconds."""


def start_events_mode(page: Page, url: str, mode: str) -> None:
    """Open the client at ``url`` in ``mode`` and wait until it follows the stream."""
    page.goto(url)
    expect_open_with_greeting(page)
    choose_mode(page, mode)
    expect(page.get_by_test_id("status")).to_have_text(RUNNING_STATUS[mode])
    if mode == "push":
        expect(log_texts(page, "system")).to_contain_text(
            ["subscribed after seq 0: the server pushes new events"]
        )


def replayed_seqs(page: Page) -> list[int]:
    """Return the seq of each event row marked as replayed from the history."""
    rows = page.get_by_test_id("events").locator("tr.replayed[data-seq]")
    return [
        int(seq) for seq in rows.evaluate_all("rows => rows.map(r => r.dataset.seq)")
    ]


def row_latencies_ms(page: Page, seqs: Iterable[int]) -> list[float]:
    """Return the latency cells of the event rows with ``seqs``, in milliseconds."""
    events = page.get_by_test_id("events")
    cells = [events.locator(f'tr[data-seq="{seq}"] td.latency') for seq in seqs]
    return [float(cell.text_content() or "") for cell in cells]


@pytest.mark.parametrize("mode", EVENT_MODES)
def test_latency_skips_replay_after_kill(
    page: Page, console_errors: list[str], mode: str
) -> None:
    downtime_s = timeout(2)
    threaded = ThreadedServer()
    with threaded as server:
        start_events_mode(page, page_url(server, **FAST_RECONNECT), mode)
        publish(threaded, 3)
        wait_for_counter(page, "events", 3)

        threaded.call(server.kill())
        expect(page.get_by_test_id("status")).to_have_text(
            re.compile("retrying|connecting")
        )
        publish(threaded, 4)
        # The events published while the server is down wait in its history
        # for at least this long, so their latency would exceed the bound.
        time.sleep(downtime_s)
        threaded.call(server.start(keep_history=True))
        wait_for_counter(page, "events", 7)
        publish(threaded, 3)
        wait_for_counter(page, "events", 10)

        assert event_seqs(page) == list(range(1, 11))
        assert replayed_seqs(page) == [4, 5, 6, 7]
        for latency_ms in row_latencies_ms(page, range(4, 8)):
            assert latency_ms >= downtime_s * 1000
        summary = page.get_by_test_id("latency-summary").text_content() or ""
        match = LATENCY_SUMMARY.fullmatch(summary)
        assert match is not None, summary
        max_ms = float(match[2])
        assert max_ms < downtime_s * 1000, summary
        live_max_ms = max(row_latencies_ms(page, [*range(1, 4), *range(8, 11)]))
        assert max_ms == pytest.approx(live_max_ms, abs=0.1)
        assert counter(page, "missed") == 0
        assert counter(page, "duplicates") == 0
    failures = unexpected(console_errors, is_reconnect_error)
    assert failures == []


# Backoff


def test_backoff_delays_grow_with_jitter(page: Page, console_errors: list[str]) -> None:
    threaded = ThreadedServer()
    with threaded as server:
        open_push_page(page, page_url(server, backoff_base=0.05, backoff_cap=0.4))
        record_retries(page)

        threaded.call(server.kill())
        page.wait_for_function(
            "() => window.retries.length >= 7", timeout=timeout(5) * 1000
        )
        text = page.get_by_test_id("reconnect-text").text_content() or ""
        threaded.call(server.start(keep_history=True))
        expect(page.get_by_test_id("status")).to_have_text("open")

    assert re.fullmatch(r"reconnecting in \d+\.\d s \(attempt \d+\)", text), text
    retries = recorded_retries(page)[:7]
    attempts = [attempt for attempt, _, _ in retries]
    assert attempts == [1, 2, 3, 4, 5, 6, 7]
    ceilings = [ceiling for _, _, ceiling in retries]
    assert ceilings == [50, 100, 200, 400, 400, 400, 400]
    for _, delay, ceiling in retries:
        assert 0 <= delay <= ceiling
    # Full jitter draws each delay anew, so the delays are not a fixed share
    # of their ceilings.
    shares = {round(delay / ceiling, 3) for _, delay, ceiling in retries}
    assert len(shares) > 1, retries
    failures = unexpected(console_errors, is_reconnect_error)
    assert failures == []


def test_backoff_resets_after_stable_connection(
    page: Page, console_errors: list[str]
) -> None:
    threaded = ThreadedServer()
    parameters = {**FAST_RECONNECT, "stable_after": 0.5}
    with threaded as server:
        open_push_page(page, page_url(server, **parameters))
        record_retries(page)
        threaded.call(server.kill())
        page.wait_for_function("() => window.retries.length >= 2")
        threaded.call(server.start(keep_history=True))
        expect(page.get_by_test_id("status")).to_have_text("open")
        last_attempt = recorded_retries(page)[-1][0]

        # A connection that stays up for less than stable_after keeps counting.
        after_short_connection = first_attempt_after_kill(page, threaded)

        # One that stays up longer starts over at attempt 1.
        page.wait_for_timeout(800)
        after_stable_connection = first_attempt_after_kill(page, threaded)

    assert last_attempt >= 2
    assert after_short_connection == last_attempt + 1
    assert after_stable_connection == 1
    failures = unexpected(console_errors, is_reconnect_error)
    assert failures == []


def test_reconnect_now_skips_delay(page: Page, console_errors: list[str]) -> None:
    threaded = ThreadedServer()
    with threaded as server:
        open_push_page(page, page_url(server, backoff_base=20, backoff_cap=20))
        threaded.call(server.kill())

        # Delays are random from 0 to 20 s. A short one ends in another failed
        # attempt, so the test waits for a delay with at least 3 s left.
        remaining = 0.0
        read_at = time.monotonic()
        deadline = read_at + timeout(20)
        while remaining < 3 and time.monotonic() < deadline:
            bar_text = page.get_by_test_id("reconnect-text")
            expect(bar_text).to_have_text(re.compile(r"^reconnecting in"))
            read_at = time.monotonic()
            match = re.search(r"in (\d+\.\d) s", bar_text.text_content() or "")
            assert match is not None
            remaining = float(match.group(1))
            if remaining < 3:
                page.wait_for_timeout(remaining * 1000 + 100)
        assert remaining >= 3, "no reconnect delay of 3 s or more within 20 s"
        threaded.call(server.start(keep_history=True))

        page.get_by_test_id("reconnect-now").click()

        expect(page.get_by_test_id("status")).to_have_text("open")
        # The countdown is rounded to 0.1 s and redrawn every 0.1 s.
        assert time.monotonic() - read_at < remaining - 0.2
        expect(page.get_by_test_id("reconnect-bar")).to_be_hidden()
    failures = unexpected(console_errors, is_reconnect_error)
    assert failures == []


# Heartbeat


def test_heartbeat_detects_blocked_loop(page: Page, console_errors: list[str]) -> None:
    threaded = ThreadedServer()
    parameters = {
        **FAST_RECONNECT,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 0.5,
    }
    with threaded as server:
        open_push_page(page, page_url(server, **parameters))
        heartbeat = page.get_by_test_id("heartbeat")
        expect(heartbeat).to_have_text(re.compile(r"^round trip \d+\.\d ms$"))
        publish(threaded, 3)
        wait_for_counter(page, "events", 3)

        # time.sleep() on the server's loop blocks it as a long cell would.
        threaded.loop.call_soon_threadsafe(time.sleep, 2.5)

        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text(
            "The server is not answering: no pong within 0.50 s of ping",
            timeout=timeout(2) * 1000,
        )
        expect(problem).to_contain_text("Its event loop may be blocked")
        expect(log_texts(page, "error").last).to_contain_text(
            "Closing the connection. Reconnecting in"
        )
        expect(page.get_by_test_id("status")).to_have_text("open")
        expect(heartbeat).to_have_attribute("data-round-trip-ms", re.compile(r"\d"))
        expect(problem).to_be_hidden()
        publish(threaded, 2)
        wait_for_counter(page, "events", 5)
        assert event_seqs(page) == [1, 2, 3, 4, 5]
        assert counter(page, "duplicates") == 0
        assert counter(page, "requests") == 2
    assert console_errors == []


# Handshakes that never finish


def test_open_timeout_gives_up_silent_server(
    live_server: rtkit.Server, page: Page, console_errors: list[str]
) -> None:
    # The kernel completes the TCP handshake into the backlog, and nothing
    # ever reads the upgrade request or responds to it.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        silent_url = f"ws://127.0.0.1:{listener.getsockname()[1]}/ws"
        page.goto(f"{live_server.url}?open_timeout=0.5&url={silent_url}")

        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text(
            "The WebSocket handshake did not complete within 0.5 s: the server "
            "probably accepted the connection but never answered the upgrade "
            "request, so its event loop may be blocked"
        )
        expect(page.get_by_test_id("status")).to_have_text("closed")
        expect(log_texts(page, "error").last).to_contain_text(
            "Press Connect to try again."
        )
        expect(page.get_by_test_id("connect")).to_be_enabled()
    assert unexpected(console_errors, is_failed_websocket) == []


def test_open_timeout_retries_push(page: Page, console_errors: list[str]) -> None:
    threaded = ThreadedServer()
    with threaded as server:
        open_push_page(page, page_url(server, open_timeout=0.5, **FAST_RECONNECT))
        publish(threaded, 2)
        wait_for_counter(page, "events", 2)
        page.get_by_test_id("disconnect").click()
        expect(page.get_by_test_id("status")).to_have_text("closed")
        record_retries(page)

        # time.sleep() on the server's loop blocks it as a long cell would, so
        # it accepts connections but responds to no upgrade request.
        threaded.loop.call_soon_threadsafe(time.sleep, 2)
        page.get_by_test_id("connect").click()

        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text(
            "The WebSocket handshake did not complete within 0.5 s"
        )
        expect(log_texts(page, "error").last).to_contain_text(
            re.compile(r"event loop may be blocked.*\. Reconnecting in \d")
        )
        expect(page.get_by_test_id("status")).to_have_text(
            re.compile("retrying|connecting")
        )
        expect(page.get_by_test_id("status")).to_have_text(
            "open", timeout=timeout(5) * 1000
        )
        expect(problem).to_be_hidden()
        expect(log_texts(page, "system")).to_contain_text(
            [re.compile(r"^recovered after \d+ failed attempts?$")]
        )
        # Connect started a new run, which resumes after seq 2.
        publish(threaded, 1)
        wait_for_counter(page, "events", 1)
        assert event_seqs(page) == [3]
        assert len(recorded_retries(page)) >= 1
    assert unexpected(console_errors, is_failed_websocket) == []


# A full server


@pytest.fixture
def short_retry_after(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make full servers send Retry-After: 1, so a test waits 1 s, not 5."""
    monkeypatch.setattr(rtkit.server, "RETRY_AFTER", 1)
    return 1


def test_full_server_retried_after_retry_after(
    page: Page, console_errors: list[str], short_retry_after: int
) -> None:
    with (
        ThreadedServer(max_connections=1) as server,
        connect(server.ws_url) as holder,
    ):
        page.goto(page_url(server, **FAST_RECONNECT))
        # Echo mode does not retry.
        expect(log_texts(page, "error").last).to_contain_text("Press Connect again")

        choose_mode(page, "push")

        bar_text = page.get_by_test_id("reconnect-text")
        expect(bar_text).to_have_text(
            re.compile(
                r"^reconnecting in \d\.\d s \(attempt 1, waiting for the server's "
                r"Retry-After of 1 s\)$"
            )
        )
        bar = page.get_by_test_id("reconnect-bar")
        expect(bar).to_have_attribute("data-minimum-ms", "1000.0")
        delay_ms = float(bar.get_attribute("data-delay-ms") or "0")
        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text("The server is full: GET http://127.0.0.1:")
        expect(problem).to_contain_text(
            re.compile(
                r"\(Retry-After: 1 s\)\. Reconnecting in 1\.\d\d s \(attempt 1\): "
                r"the server's Retry-After of 1 s plus a random 0\.\d\d s"
            )
        )
        expect(page.get_by_test_id("status")).to_have_text("retrying")
        holder.close()

        expect(page.get_by_test_id("status")).to_have_text("open")
        expect(problem).to_be_hidden()
        expect(bar).to_be_hidden()
        expect(log_texts(page, "system")).to_contain_text(
            [re.compile(r"^recovered after \d+ failed attempts?$")]
        )
    assert 1000 <= delay_ms <= 1000 + FAST_RECONNECT["backoff_base"] * 1000
    failures = unexpected(console_errors, is_failed_websocket, is_http_error(503))
    assert failures == []


def test_full_server_on_reconnect_waits_retry_after(
    page: Page, console_errors: list[str], short_retry_after: int
) -> None:
    threaded = ThreadedServer()
    with threaded as server, connect(server.ws_url) as holder:
        open_push_page(page, page_url(server, **FAST_RECONNECT))
        record_retries(page)

        async def fill_then_drop_page() -> None:
            server.max_connections = 1
            for connection in list(server.connections):
                if connection.request.headers.get("Origin") is not None:
                    await connection.close(1012, "restarting")

        threaded.call(fill_then_drop_page())

        bar = page.get_by_test_id("reconnect-bar")
        expect(bar).to_have_attribute("data-minimum-ms", "1000.0")
        expect(page.get_by_test_id("connection-problem")).to_contain_text(
            re.compile(r"The server is full: .* the server's Retry-After of 1 s")
        )
        holder.close()

        expect(page.get_by_test_id("status")).to_have_text("open")
        expect(bar).to_be_hidden()
    retries = recorded_retries(page)
    # The plain backoff delays are at most 50 and 100 ms. Once the page's GET
    # saw the 503, the pending attempt waits for the Retry-After instead,
    # under the same attempt number.
    assert retries[0][:1] == (1,), retries
    assert retries[0][1] <= 50, retries
    waits = [(attempt, delay) for attempt, delay, _ in retries if delay >= 1000]
    assert len(waits) == 1, retries
    assert waits[0][0] in [attempt for attempt, delay, _ in retries if delay < 1000]
    failures = unexpected(
        console_errors, is_failed_websocket, is_http_error(503), is_network_error
    )
    assert failures == []


# Close codes the page explains


def submit_messages(page: Page, texts: list[str]) -> None:
    """Send ``texts`` from the echo form in one go, faster than typing them."""
    page.evaluate(
        """texts => {
            const box = document.querySelector('[data-testid="message"]');
            const form = document.querySelector('[data-testid="send-form"]');
            for (const text of texts) {
                box.value = text;
                form.requestSubmit();
            }
        }""",
        texts,
    )


def test_rate_limit_close_explained(page: Page, console_errors: list[str]) -> None:
    with ThreadedServer(max_rate=2) as server:
        page.goto(server.url)
        expect_open_with_greeting(page)

        submit_messages(page, [f"flood {number}" for number in range(10)])

        expect(page.get_by_test_id("status")).to_have_text("closed")
        # The server may drop the TCP connection before the close handshake
        # ends, so the line can be an error or a system line.
        expect(page.get_by_test_id("log")).to_contain_text(
            "closed: 1008 (policy violation): rate limit: over 2"
        )
        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text("rate limit: over 2")
        expect(problem).to_contain_text(
            "this page sent more messages per second than the server's max_rate"
        )
    assert console_errors == []


def test_oversize_close_explained(page: Page, console_errors: list[str]) -> None:
    with ThreadedServer(max_size=64) as server:
        page.goto(server.url)
        expect_open_with_greeting(page)

        submit_messages(page, ["x" * 200])

        expect(page.get_by_test_id("status")).to_have_text("closed")
        expect(page.get_by_test_id("log")).to_contain_text(
            "closed: 1009 (message too big)"
        )
        expect(log_texts(page, "error").last).to_contain_text(
            "a message was larger than its max_size"
        )
        expect(page.get_by_test_id("connection-problem")).to_be_visible()
    assert console_errors == []


def test_server_full_explained(browser: Browser) -> None:
    contexts = [browser.new_context() for _ in range(2)]
    first, second = (context.new_page() for context in contexts)
    errors: list[str] = []
    record_console_errors(second, errors)
    try:
        with ThreadedServer(max_connections=1) as server:
            first.goto(server.url)
            expect_open_with_greeting(first)

            second.goto(server.url)

            expect(second.get_by_test_id("status")).to_have_text("closed")
            explanation = log_texts(second, "error").first
            # The server's own text follows "server full: ", with the count.
            expect(explanation).to_contain_text(
                f"The server is full: GET {server.ws_url.replace('ws:', 'http:')} "
                "returned HTTP 503 Service Unavailable: server full: "
            )
            expect(explanation).to_contain_text(
                "(max_connections); try again later (Retry-After: 5 s)"
            )
            expect(log_texts(second, "error").last).to_contain_text(
                "larger max_connections"
            )
            expect(second.get_by_test_id("connection-problem")).to_contain_text(
                "The server is full"
            )

            first.get_by_test_id("disconnect").click()
            expect(first.get_by_test_id("status")).to_have_text("closed")
            second.get_by_test_id("connect").click()
            expect(second.get_by_test_id("status")).to_have_text("open")
            expect(second.get_by_test_id("connection-problem")).to_be_hidden()
    finally:
        for context in contexts:
            context.close()
    assert unexpected(errors, is_failed_websocket, is_http_error(503)) == []


# Tokens

TOKEN_METHODS = ["query", "message", "cookie"]

MISSING_TOKEN_ERRORS = {
    "query": "The server requires a token: GET ",
    # Without a token, the echo greeting is the first message.
    "message": "authentication failed: first message is not JSON",
    "cookie": "The server requires a token: GET ",
}
"""What the page shows when it connects without a token, by the server's method."""

WRONG_TOKEN_ERRORS = {
    "query": "returned HTTP 401 Unauthorized: unauthorized: wrong token",
    "message": "authentication failed: wrong token",
    "cookie": "/login failed: HTTP 401 Unauthorized",
}
"""What the page shows when the server rejects its token, by the method."""

METHOD_LABELS = {
    "query": "in the query string (?token=)",
    "message": "in the first message",
    "cookie": "as a cookie from GET /login",
}
"""The choices next to the Token field, by method."""


def missing_token_advice(via: str) -> str:
    label = METHOD_LABELS[via]
    return (
        f'The server expects a token {label}: enter it in the Token field, choose "'
        f'{label}" next to it, then press Connect.'
    )


def wrong_token_advice(via: str) -> str:
    return (
        f"The server rejected the token that the page sent {METHOD_LABELS[via]}: "
        "check the Token field, then press Connect."
    )


def enter_token(page: Page, token: str, via: str) -> None:
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("token-via").select_option(via)


def log_text(page: Page) -> str:
    return page.get_by_test_id("log").inner_text()


def is_expected_auth_error(text: str) -> bool:
    return is_failed_websocket(text) or is_http_error(401)(text)


@pytest.mark.parametrize("via", TOKEN_METHODS)
def test_token_missing_then_accepted(
    page: Page, console_errors: list[str], via: str
) -> None:
    auth = TokenAuth(TOKEN, via=via, timeout=1)
    with ThreadedServer(auth=auth) as server:
        page.goto(server.url)
        expect(page.get_by_test_id("status")).to_have_text("closed")
        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text(MISSING_TOKEN_ERRORS[via])
        expect(problem).to_contain_text(missing_token_advice(via))
        expect(problem).not_to_contain_text("rejected the token")

        enter_token(page, TOKEN, via)
        page.get_by_test_id("connect").click()

        expect_open_with_greeting(page)
        choose_mode(page, "push")
        expect(page.get_by_test_id("status")).to_have_text("open")
        expect(log_texts(page, "system")).to_contain_text(
            [re.compile(r"^subscribed after seq 0")]
        )
        assert TOKEN not in log_text(page)
    assert unexpected(console_errors, is_expected_auth_error) == []


@pytest.mark.parametrize("via", TOKEN_METHODS)
def test_token_wrong_rejected(page: Page, console_errors: list[str], via: str) -> None:
    auth = TokenAuth(TOKEN, via=via, timeout=1)
    with ThreadedServer(auth=auth) as server:
        page.goto(server.url)
        expect(page.get_by_test_id("status")).to_have_text("closed")
        expect(page.get_by_test_id("connection-problem")).to_be_visible()

        enter_token(page, "wrong-token", via)
        page.get_by_test_id("connect").click()

        problem = page.get_by_test_id("connection-problem")
        expect(problem).to_contain_text(WRONG_TOKEN_ERRORS[via])
        expect(problem).to_contain_text(wrong_token_advice(via))
        expect(page.get_by_test_id("status")).to_have_text("closed")
        assert "wrong-token" not in log_text(page)
    assert unexpected(console_errors, is_expected_auth_error) == []


@pytest.mark.parametrize(
    ("server_via", "page_via"),
    [("message", "query"), ("query", "message"), ("cookie", "query")],
)
def test_token_sent_wrong_way_explained(
    page: Page, console_errors: list[str], server_via: str, page_via: str
) -> None:
    auth = TokenAuth(TOKEN, via=server_via, timeout=1)
    with ThreadedServer(auth=auth) as server:
        page.goto(server.url)
        expect(page.get_by_test_id("status")).to_have_text("closed")

        enter_token(page, TOKEN, page_via)
        page.get_by_test_id("connect").click()

        expected = METHOD_LABELS[server_via]
        expect(page.get_by_test_id("connection-problem")).to_contain_text(
            f"The server expects the token {expected}, but the page sent it "
            f'{METHOD_LABELS[page_via]}: choose "{expected}" next to the Token field'
        )
        expect(page.get_by_test_id("status")).to_have_text("closed")
        assert TOKEN not in log_text(page)
    assert unexpected(console_errors, is_expected_auth_error) == []


def test_token_rejected_on_reconnect_stops_retrying(
    page: Page, console_errors: list[str]
) -> None:
    auth = TokenAuth(TOKEN, via="message", timeout=1)
    threaded = ThreadedServer(auth=auth)
    with threaded as server:
        page.goto(page_url(server, **FAST_RECONNECT))
        enter_token(page, TOKEN, "message")
        page.get_by_test_id("connect").click()
        expect_open_with_greeting(page)
        choose_mode(page, "push")
        expect(page.get_by_test_id("status")).to_have_text("open")

        # The server's token changes while the page is away, as in a rotation.
        auth.token = "rotated-token"
        threaded.call(server.kill())
        threaded.call(server.start(keep_history=True))

        expect(page.get_by_test_id("connection-problem")).to_contain_text(
            WRONG_TOKEN_ERRORS["message"]
        )
        expect(page.get_by_test_id("status")).to_have_text("closed")
        expect(log_texts(page, "error")).to_contain_text(
            [re.compile("Not reconnecting: correct the token")]
        )
        expect(page.get_by_test_id("reconnect-bar")).to_be_hidden()
    assert unexpected(console_errors, is_expected_auth_error) == []
