"""Smoke test of the JupyterLab that ``make lab`` starts on the notebooks folder."""

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
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, timeout

pytestmark = pytest.mark.lab

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


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


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 and a free port, serving ``notebooks/``.

    The user-level Jupyter config, data and runtime folders point into
    ``tmp_path``, so the user's settings do not apply. Kernelspecs installed
    in the environment (``sys.prefix/share/jupyter``) stay visible.
    """
    assert NOTEBOOKS.is_dir(), f"{NOTEBOOKS} is missing"
    port = free_port()
    token = secrets.token_hex(16)
    env = os.environ.copy()
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(tmp_path / name.lower())
    env["IPYTHONDIR"] = str(tmp_path / "ipython")
    log = tmp_path / "lab.log"
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
                f"--ServerApp.root_dir={NOTEBOOKS}",
                # CI runs as root, and jupyter lab exits when started as root
                # without this flag.
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            cwd=tmp_path,
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


def test_lab_serves_notebooks_and_shuts_down(lab: Lab) -> None:
    lab.wait_until_ready()

    status, body = lab.request("GET", "/lab")
    assert status == 200, f"GET /lab returned {status}: {body[:500]!r}"
    assert b"JupyterLab" in body

    listing = lab.get_json("/api/contents")
    assert listing["type"] == "directory"
    listed = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
    on_disk = {path.name for path in NOTEBOOKS.glob("*.ipynb")}
    assert on_disk, f"{NOTEBOOKS} contains no .ipynb file"
    assert listed == on_disk

    kernelspecs = lab.get_json("/api/kernelspecs")
    assert "python3" in kernelspecs["kernelspecs"], kernelspecs

    status, body = lab.request("POST", "/api/shutdown")
    assert status == 200, f"POST /api/shutdown returned {status}: {body[:500]!r}"
    try:
        exit_status = lab.process.wait(timeout(30))
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"jupyter lab still runs {timeout(30)} s after /api/shutdown:\n"
            f"{lab.output()}"
        )
    assert exit_status == 0, f"jupyter lab exited with {exit_status}:\n{lab.output()}"
