"""Benchmark: echo round trips through rtkit against a bare websockets server.

Run with ``.venv/bin/python benchmarks/roundtrip.py``. Three servers listen on
127.0.0.1, all started by this script: a bare websockets echo server (the
reference), rtkit in its own process, and rtkit inside a real Jupyter kernel,
serving while the kernel is idle. They are measured in alternating rounds so
that machine noise hits all alike. The table shows the median round trip of
each round, and the ratios of the medians against the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from websockets.asyncio.client import connect

REFERENCE_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(connection):
    await connection.send("Welcome to the WebSocket server!")
    async for message in connection:
        await connection.send(f"Server received: {message}")

async def main():
    async with serve(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
"""

RTKIT_SERVER = """
import asyncio, logging
import rtkit

async def main():
    logging.getLogger("rtkit").setLevel(logging.WARNING)
    # The round trips would exceed the default limit of 100 messages/s.
    async with rtkit.Server(port=0, max_rate=None) as server:
        print(server.port, flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


def start_kernel_server() -> tuple[Any, int]:
    """Start rtkit inside a real Jupyter kernel; return the kernel manager and port."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    output: list[str] = []

    def keep_stdout(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            output.append(message["content"]["text"])

    code = (
        "import logging, rtkit\n"
        "logging.getLogger('rtkit').setLevel(logging.WARNING)\n"
        "server = await rtkit.start(port=0, max_rate=None)\n"
        "print(server.port)"
    )
    client.execute_interactive(code, timeout=60, output_hook=keep_stdout)
    client.stop_channels()
    return manager, int("".join(output).strip())


def start_server(code: str) -> tuple[subprocess.Popen[str], int]:
    """Start a server script in a subprocess; return it and its port."""
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"server failed to start: {line!r}")
    return process, int(line)


async def round_trips(port: int, count: int) -> list[float]:
    """Return ``count`` echo round-trip times in microseconds."""
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as client:
        await client.recv()
        times = []
        for i in range(count):
            started = time.perf_counter()
            await client.send(f"message {i}")
            await client.recv()
            times.append((time.perf_counter() - started) * 1e6)
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--count", type=int, default=2000, help="round trips per round")
    args = parser.parse_args()

    reference, reference_port = start_server(REFERENCE_SERVER)
    process, process_port = start_server(RTKIT_SERVER)
    kernel, kernel_port = start_kernel_server()
    ports = {
        "reference": reference_port,
        "rtkit": process_port,
        "in-kernel": kernel_port,
    }
    medians: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for _ in range(args.rounds):
            for name, port in ports.items():
                times = asyncio.run(round_trips(port, args.count))
                medians[name].append(statistics.median(times))
    finally:
        for server in (reference, process):
            server.kill()
            server.wait()
        kernel.shutdown_kernel(now=True)

    print(f"echo round trip on 127.0.0.1, {args.rounds} rounds x {args.count} messages")
    header = ["median of round medians (us)", "min (us)", "max (us)"]
    print(f"{'server':<10}  {header[0]:>28}  {header[1]:>9}  {header[2]:>9}")
    for name, values in medians.items():
        print(
            f"{name:<10}  {statistics.median(values):>28.1f}  "
            f"{min(values):>9.1f}  {max(values):>9.1f}"
        )
    baseline = statistics.median(medians["reference"])
    for name in ("rtkit", "in-kernel"):
        ratio = statistics.median(medians[name]) / baseline
        print(f"ratio {name} / reference: {ratio:.2f}")


if __name__ == "__main__":
    main()
