"""Shared fixtures: loopback servers on port 0, bounded waits and Chromium pages."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

import rtkit

if TYPE_CHECKING:
    from jupyter_client.blocking.client import BlockingKernelClient
    from playwright.sync_api import Browser, Page

T = TypeVar("T")

TIME_UNIT = float(os.environ.get("RTKIT_TEST_TIME_UNIT", "1"))
"""Seconds per unit of waiting; raise it on a slow machine, e.g. to 3."""


def timeout(units: float = 5) -> float:
    """Return a wait bound of ``units`` time units, in seconds."""
    return units * TIME_UNIT


def run(coroutine: Awaitable[T], units: float = 10) -> T:
    """Run ``coroutine`` on a fresh event loop, bounded by ``units`` time units."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout(units)):
            return await coroutine

    return asyncio.run(bounded())


def can_bind(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a listening socket can take ``port`` right now.

    SO_REUSEADDR matches what the rtkit server sets, so connections left in
    TIME_WAIT do not count as holding the port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
            return False
        sock.listen()
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def no_rtkit_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a learner's RTKIT_PORT from changing the tests' defaults."""
    monkeypatch.delenv("RTKIT_PORT", raising=False)


class ThreadedServer:
    """An rtkit server running on its own event loop in a background thread.

    For tests whose main thread is synchronous (Playwright's sync API, a
    subprocess): enter it with ``with``; it stops the server and the loop on exit.

    Args:
        options: keyword arguments for :class:`rtkit.Server`; ``port`` defaults to 0.
    """

    def __init__(self, **options: object) -> None:
        options.setdefault("port", 0)
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: rtkit.Server | None = None

    def call(self, coroutine: Awaitable[T], units: float = 10) -> T:
        """Run ``coroutine`` on the server's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout(units))

    def __enter__(self) -> rtkit.Server:
        self.thread.start()
        self.server = self.call(rtkit.Server(**self.options).start())
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        if self.server is not None:
            self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout(5))
        self.loop.close()


@pytest.fixture
def kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BlockingKernelClient]:
    """A client of a fresh ``python3`` kernel, shut down after the test."""
    from .kernels import running_kernel

    with running_kernel(tmp_path, monkeypatch) as client:
        yield client


# The browser fixtures import .browsers in their bodies, because .browsers
# imports this module. Tests without a browser then also run without Playwright.


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, started once per module."""
    from playwright.sync_api import expect

    from .browsers import WAIT_MS, launched_chromium

    expect.set_options(timeout=WAIT_MS)
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context, closed after the test."""
    from .browsers import WAIT_MS

    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def console_errors(page: Page) -> list[str]:
    """Console errors and uncaught exceptions of ``page``, in order."""
    from .browsers import record_console_errors

    errors: list[str] = []
    record_console_errors(page, errors)
    return errors


@pytest.fixture
def live_server() -> Iterator[rtkit.Server]:
    """An echo server on 127.0.0.1 and a free port, served from a thread."""
    with ThreadedServer() as server:
        yield server


async def until(condition: Callable[[], bool], units: float = 2) -> None:
    """Wait until ``condition()`` is true, checking every 20 ms, bounded."""
    async with asyncio.timeout(timeout(units)):
        while not condition():
            await asyncio.sleep(0.02)
