"""The command line ``python -m rtkit serve``, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest
from websockets.asyncio.client import connect

import rtkit

from .conftest import can_bind, run, timeout

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+)/)")

# An opener without proxies, so requests to 127.0.0.1 never leave the machine
# even when http_proxy is set.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtkit", "serve", *args]


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m rtkit serve`` with ``args`` to completion, bounded."""
    return subprocess.run(
        serve_command(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout(10),
    )


class ServeProcess:
    """``python -m rtkit serve`` in a subprocess, its output written to a file.

    Use it with ``with``: leaving the block kills the process if it still runs.
    """

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.log_file = log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            serve_command(*args),
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def wait_for_line(
        self, pattern: re.Pattern[str], units: float = 10
    ) -> re.Match[str]:
        """Wait until the output matches ``pattern`` and return the match."""
        deadline = time.monotonic() + timeout(units)
        while True:
            match = pattern.search(self.output())
            if match:
                return match
            status = self.process.poll()
            if status is not None:
                pytest.fail(
                    f"rtkit serve exited with status {status} before printing a line "
                    f"matching {pattern.pattern!r}; its output:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout(units)} s waiting for a line matching "
                    f"{pattern.pattern!r}; output so far:\n{self.output()}"
                )
            time.sleep(0.05)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout(5))
        self.log_file.close()


async def exchange(url: str, text: str) -> tuple[str, str]:
    """Connect to ``url``, send ``text`` and return the greeting and the reply."""
    async with connect(url, open_timeout=timeout(5)) as client:
        welcome = await asyncio.wait_for(client.recv(), timeout(5))
        await client.send(text)
        reply = await asyncio.wait_for(client.recv(), timeout(5))
    return welcome, reply


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_serve_echoes_then_stops_on_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with ServeProcess(tmp_path / "serve.log", "--port", "0") as serve:
        match = serve.wait_for_line(LISTENING)
        url, port = match[1], int(match[2])

        with HTTP.open(url + "health", timeout=timeout(5)) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            health = json.loads(response.read())
        assert health["status"] == "ok"

        welcome, reply = run(exchange(f"ws://127.0.0.1:{port}/ws", "hello"))
        assert welcome == rtkit.WELCOME
        assert reply == "Server received: hello"

        serve.process.send_signal(signum)
        status = serve.process.wait(timeout(10))
        output = serve.output()

    assert status == 0, f"exit status {status} after {signum.name}; output:\n{output}"
    assert f"rtkit server on {url} stopped" in output
    assert "Traceback" not in output
    assert can_bind(port), f"port {port} is still taken after rtkit serve exited"


def test_serve_port_in_use_exits_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            serve_command("--port", str(port)),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout(10),
        )

    assert result.returncode == 2, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "start rtkit on another port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("70000", "invalid port: 70000; pass an integer from 0 to 65535"),
        ("-1", "invalid port: -1; pass an integer from 0 to 65535"),
        ("http", "argument --port: invalid int value: 'http'"),
    ],
)
def test_serve_invalid_port_exits_2(port: str, message: str) -> None:
    result = run_serve("--port", port)

    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--max-size", "-5"], "invalid max_size: -5"),
        (["--allow-origin", "not a url"], "invalid origin: 'not a url'"),
        (["--max-channels", "0"], "invalid max_channels: 0"),
        # A documentation address (RFC 5737): bind() fails locally, no traffic.
        (["--host", "192.0.2.1"], "rtkit: cannot listen on 192.0.2.1"),
    ],
)
def test_serve_invalid_option_exits_2(arguments: list[str], message: str) -> None:
    result = run_serve("--port", "0", *arguments)

    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
