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
from websockets.exceptions import InvalidStatus

import rtkit
from rtkit import auth
from rtkit.__main__ import build_parser, token_from_environment
from rtkit.tls import LocalCA

from .conftest import can_bind, run, timeout

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+)/)")

# An opener without proxies, so requests to 127.0.0.1 never leave the machine
# even when http_proxy is set.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(autouse=True)
def no_rtkit_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a learner's RTKIT_TOKEN from turning on auth in these tests."""
    monkeypatch.delenv("RTKIT_TOKEN", raising=False)


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
    assert result.stderr.startswith(
        f"rtkit: port {port} on 127.0.0.1 is already in use"
    )
    assert "[Errno" not in result.stderr
    assert "start rtkit on another port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("70000", "argument --port: invalid value: '70000'; pass a port from 0"),
        ("-1", "argument --port: invalid value: '-1'; pass a port from 0"),
        ("http", "argument --port: invalid value: 'http'; pass a port from 0"),
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
        (
            ["--max-size", "-5"],
            "argument --max-size: invalid value: '-5'; pass a positive integer, "
            "or 0 for no limit",
        ),
        (
            ["--allow-origin", "not a url"],
            "argument --allow-origin: invalid value: 'not a url'",
        ),
        (["--max-channels", "0"], "argument --max-channels: invalid value: '0'"),
        (["--history", "-1"], "argument --history: invalid value: '-1'"),
        (["--rate", "0"], "argument --rate: invalid value: '0'"),
        (["--host", ""], "argument --host: invalid value: ''"),
        # A documentation address (RFC 5737): bind() fails locally, no traffic.
        (["--host", "192.0.2.1"], "rtkit: cannot listen on 192.0.2.1"),
        (
            ["--max-connections", "-1"],
            "argument --max-connections: invalid value: '-1'; pass a positive "
            "integer, or 0 for no limit",
        ),
        (["--max-rate", "fast"], "argument --max-rate: invalid value: 'fast'"),
        (["--max-wait", "0"], "argument --max-wait: invalid value: '0'"),
        (
            ["--max-wait", "1e308"],
            "argument --max-wait: invalid value: '1e308'; pass at most 3600",
        ),
        (["--max-buffer", "-1"], "argument --max-buffer: invalid value: '-1'"),
        (["--slow-policy", "block"], "argument --slow-policy: invalid choice"),
        (["--stall-timeout", "0"], "argument --stall-timeout: invalid value: '0'"),
        (["--ping-interval", "-1"], "argument --ping-interval: invalid value"),
        (["--ping-timeout", "nan"], "argument --ping-timeout: invalid value"),
        (["--token", "has space"], "argument --token: invalid value: the token"),
        (["--auth-via", "header"], "argument --auth-via: invalid choice"),
        (["--keyfile", "key.pem"], "--keyfile needs --certfile"),
        (
            ["--certfile", "/nonexistent/server.pem"],
            "cannot load the certificate '/nonexistent/server.pem'",
        ),
    ],
)
def test_serve_invalid_option_exits_2(arguments: list[str], message: str) -> None:
    result = run_serve("--port", "0", *arguments)

    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "None" not in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_invalid_token_variable_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTKIT_TOKEN", "bad token")
    result = run_serve("--port", "0")

    assert result.returncode == 2, result.stderr
    assert "rtkit: invalid RTKIT_TOKEN: the token is not" in result.stderr
    assert "bad token" not in result.stderr
    assert "Traceback" not in result.stderr


def test_parser_zero_means_no_limit() -> None:
    arguments = ["serve", "--max-connections", "0", "--max-rate", "0"]
    arguments += ["--ping-interval", "0", "--max-size", "0"]
    args = build_parser().parse_args(arguments)
    assert args.max_connections is None
    assert args.max_rate is None
    assert args.ping_interval is None
    assert args.max_size is None


@pytest.mark.parametrize("zero", ["0", "0.0", "0.00", " 0", "-0", "0e3"])
def test_parser_zero_seconds_turns_off(zero: str) -> None:
    args = build_parser().parse_args(
        ["serve", "--ping-interval", zero, "--ping-timeout", zero]
    )
    assert args.ping_interval is None
    assert args.ping_timeout is None


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert token_from_environment() is None
    monkeypatch.setenv("RTKIT_TOKEN", "from-env")
    assert token_from_environment() == "from-env"
    monkeypatch.setenv("RTKIT_TOKEN", "")
    assert token_from_environment() is None


def test_parser_defaults_match_server() -> None:
    args = build_parser().parse_args(["serve"])
    server = rtkit.Server(port=0)
    assert args.max_connections == server.max_connections
    assert args.max_rate == server.push.max_rate
    assert args.max_wait == server.max_wait
    assert args.max_buffer == server.push.max_buffer
    assert args.slow_policy == server.push.slow_policy
    assert args.stall_timeout == server.push.stall_timeout
    assert args.ping_interval == server.ping_interval
    assert args.ping_timeout == server.ping_timeout
    assert args.check_origin is True
    assert args.token is None
    assert args.access_log is False


def test_serve_limits_auth_and_access_log(tmp_path: Path) -> None:
    arguments = ["--port", "0", "--max-connections", "1", "--token", "s3cret"]
    arguments += ["--access-log", "--no-origin-check", "--ping-interval", "5"]
    with ServeProcess(tmp_path / "serve.log", *arguments) as serve:
        port = int(serve.wait_for_line(LISTENING)[2])
        url = f"ws://127.0.0.1:{port}/ws"

        async def scenario() -> tuple[int, int]:
            with pytest.raises(InvalidStatus) as missing:
                await connect(url, open_timeout=timeout(5))
            async with connect(url + "?token=s3cret", open_timeout=timeout(5)) as ws:
                await asyncio.wait_for(ws.recv(), timeout(5))
                with pytest.raises(InvalidStatus) as full:
                    await connect(url + "?token=s3cret", open_timeout=timeout(5))
            return missing.value.response.status_code, full.value.response.status_code

        assert run(scenario()) == (401, 503)
        serve.wait_for_line(re.compile(r'"GET /ws\?token=s3cret HTTP/1\.1" 503'))
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout(10)) == 0
        output = serve.output()

    assert "Origin check disabled" in output
    assert "clients must send a token (via query)" in output
    assert '"GET /ws HTTP/1.1" 401' in output
    assert '"GET /ws?token=s3cret HTTP/1.1" 101' in output


def test_serve_auth_via_without_token_prints_one(tmp_path: Path) -> None:
    with ServeProcess(
        tmp_path / "serve.log", "--port", "0", "--auth-via", "message"
    ) as serve:
        match = serve.wait_for_line(re.compile(r"clients must send this token: (\S+)"))
        port = int(serve.wait_for_line(LISTENING)[2])
        token = match[1]

        async def scenario() -> str:
            client = await auth.connect(
                f"ws://127.0.0.1:{port}/ws", token, "message", open_timeout=timeout(5)
            )
            async with client:
                return await asyncio.wait_for(client.recv(), timeout(5))

        assert run(scenario()) == rtkit.WELCOME


def run_cert(directory: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtkit", "cert", "--dir", str(directory)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout(20),
    )


def test_cert_writes_files_prints_command(tmp_path: Path) -> None:
    result = run_cert(tmp_path / "tls")

    assert result.returncode == 0, result.stderr
    for name in ("ca.pem", "server.pem", "server-key.pem"):
        assert (tmp_path / "tls" / name).is_file()
    assert (
        f"--certfile {tmp_path / 'tls' / 'server.pem'} "
        f"--keyfile {tmp_path / 'tls' / 'server-key.pem'}"
    ) in result.stdout
    assert "--ignore-certificate-errors-spki-list=" in result.stdout


def test_cert_unwritable_dir_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cert(blocker / "tls")

    assert result.returncode == 2
    assert (
        f"rtkit: cannot create certificates in {blocker / 'tls'}: {blocker} is "
        "a file, not a folder"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_cert_dir_is_file_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cert(blocker)

    assert result.returncode == 2
    assert f"{blocker} is a file, not a folder" in result.stderr
    assert "[Errno" not in result.stderr
    assert blocker.read_text() == "not a folder"


def test_cert_empty_dir_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rtkit", "cert", "--dir", ""],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout(20),
    )

    assert result.returncode == 2
    assert "argument --dir: invalid value: ''" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_certfile_serves_https(tmp_path: Path) -> None:
    assert run_cert(tmp_path).returncode == 0
    ca = LocalCA(tmp_path)
    arguments = ["--port", "0", "--certfile", str(ca.cert_file)]
    arguments += ["--keyfile", str(ca.key_file)]
    with ServeProcess(tmp_path / "serve.log", *arguments) as serve:
        match = serve.wait_for_line(
            re.compile(r"listening on https://127\.0\.0\.1:(\d+)/")
        )
        port = int(match[1])

        async def scenario() -> str:
            async with connect(
                f"wss://127.0.0.1:{port}/ws",
                ssl=ca.client_context(),
                open_timeout=timeout(5),
            ) as client:
                return await asyncio.wait_for(client.recv(), timeout(5))

        assert run(scenario()) == rtkit.WELCOME
