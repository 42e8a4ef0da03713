"""Debian's Chromium as the browser tests launch it.

Playwright cannot download its own browsers here, so the tests drive the
system's ``/usr/bin/chromium``. The flags keep Chromium from reaching any
host but the test servers on loopback, and from a first-run setup.

The browser test modules share the wait bound and the console-error recording
here. The ``browser``, ``page`` and ``console_errors`` fixtures built on them
are in conftest.py, so the modules request them without importing them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from .conftest import timeout

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

WAIT_MS = timeout(5) * 1000
"""Playwright's bound on each wait, in milliseconds."""


@contextmanager
def launched_chromium(extra_args: Sequence[str] = ()) -> Iterator[Browser]:
    """Launch headless Chromium and close it on exit; skip the test without it.

    Playwright's launch() (checked with 1.65) gives Chromium a fresh temporary
    --user-data-dir and deletes it on close. ``extra_args`` are appended to
    :data:`CHROMIUM_ARGS`, for example a certificate pin.
    """
    if not CHROMIUM.exists():
        pytest.skip(
            f"Chromium not found at {CHROMIUM}. Install Debian's chromium package "
            "to run the browser tests."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, *extra_args],
            headless=True,
            timeout=timeout(30) * 1000,
        )
        try:
            yield browser
        finally:
            browser.close()


def record_console_errors(page: Page, errors: list[str], label: str = "") -> None:
    """Append the console errors and uncaught exceptions of ``page`` to ``errors``.

    Each entry starts with ``label``, which identifies the page in a test with
    several pages.
    """

    def record_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(label + message.text)

    page.on("console", record_console)
    page.on("pageerror", lambda error: errors.append(f"{label}uncaught: {error}"))
