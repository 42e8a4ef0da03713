"""Debian's Chromium as the browser tests launch it.

Playwright cannot download its own browsers here, so the tests drive the
system's ``/usr/bin/chromium``. The flags keep Chromium from reaching any
host but the test servers on loopback, and from a first-run setup.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
