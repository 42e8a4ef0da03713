"""A JupyterLab server for tests: loopback only, a token, isolated Jupyter folders.

The user-level Jupyter config, data, runtime, settings and workspace folders
point into a test's temporary folder, so the user's settings do not apply.
Kernelspecs installed in the environment (``sys.prefix/share/jupyter``) stay
visible.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, timeout

OFFLINE_ARGS = [
    # When the page requests them, the server fetches the news feed and the
    # latest release number from the internet, unless these two options turn
    # that off (JupyterLab 4.6).
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements."
    "NeverCheckForUpdate",
    # The default "pypi" extension manager requests package versions from PyPI
    # when its panel lists or searches extensions, and "readonly" never does.
    "--LabApp.extension_manager=readonly",
]
"""Command-line options that turn off JupyterLab's requests for news, updates
and extensions to hosts outside the machine."""

# User settings, by plugin, that turn off the page's news and update checks
# and its extension manager.
OFFLINE_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Raise on a redirect, so a redirect to the login page fails the test."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies, so requests to 127.0.0.1 never leave the machine even when
# http_proxy is set.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


class Lab:
    """A JupyterLab server process and authenticated requests to it."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, token: str, log: Path
    ):
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.token = token
        self.log = log

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        """Send a request with the token and return the status and the body."""
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        try:
            with HTTP.open(request, timeout=timeout(10)) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path} returned {status}: {body[:500]!r}"
        return json.loads(body)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_until_ready(self, units: float = 60) -> None:
        """Poll GET /api/status until it returns 200, bounded by ``units``."""
        deadline = time.monotonic() + timeout(units)
        while True:
            status = self.process.poll()
            if status is not None:
                pytest.fail(
                    f"jupyter lab exited with status {status} before it answered "
                    f"/api/status; its output:\n{self.output()}"
                )
            try:
                if self.request("GET", "/api/status")[0] == 200:
                    return
            except OSError:
                pass  # Not listening yet.
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout(units)} s waiting for jupyter lab to "
                    f"answer /api/status; its output:\n{self.output()}"
                )
            time.sleep(0.2)

    def shutdown(self, units: float = 30) -> int:
        """Stop the server with POST /api/shutdown and return its exit status.

        Fails the test if the request fails or the process still runs after
        ``units`` time units.
        """
        status, body = self.request("POST", "/api/shutdown")
        assert status == 200, f"POST /api/shutdown returned {status}: {body[:500]!r}"
        try:
            return self.process.wait(timeout(units))
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"jupyter lab still runs {timeout(units)} s after /api/shutdown:\n"
                f"{self.output()}"
            )


def write_user_settings(settings_dir: Path, settings: dict[str, dict]) -> None:
    """Write one ``.jupyterlab-settings`` file per plugin into ``settings_dir``."""
    for plugin, values in settings.items():
        path = settings_dir / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2), encoding="utf-8")


@contextmanager
def running_lab(home: Path, root_dir: Path) -> Iterator[Lab]:
    """Start JupyterLab on 127.0.0.1 and a free port, serving ``root_dir``.

    The Jupyter folders and the server's log go into ``home``. On exit the
    server is terminated if it still runs, and killed if it does not stop in
    time.
    """
    port = free_port()
    token = secrets.token_hex(16)
    env = os.environ.copy()
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(home / name.lower())
    env["IPYTHONDIR"] = str(home / "ipython")
    env["JUPYTERLAB_SETTINGS_DIR"] = str(home / "lab-settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(home / "lab-workspaces")
    write_user_settings(home / "lab-settings", OFFLINE_SETTINGS)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "lab.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root_dir}",
                *OFFLINE_ARGS,
                # CI runs as root, and jupyter lab exits when started as root
                # without this flag.
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Lab(process, port, token, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout(15))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout(5))
