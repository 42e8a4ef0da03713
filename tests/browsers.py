"""Debian's Chromium as the browser tests launch it.

Playwright cannot download its own browsers here, so the tests drive the
system's ``/usr/bin/chromium``. The flags keep Chromium from reaching any
host but the test servers on loopback, and from a first-run setup.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

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
