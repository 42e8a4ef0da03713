"""A real IPython kernel for tests, and cells run in it as a notebook runs them."""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from .conftest import timeout

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@contextmanager
def running_kernel(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BlockingKernelClient]:
    """Start a fresh ``python3`` kernel, yield a client of it, then shut it down.

    The connection file and the IPython profile go to ``directory``, so the
    user's IPython startup files do not run in the kernel.
    """
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(directory / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(directory / "ipython"))
    manager = KernelManager(kernel_name="python3")
    manager.shutdown_wait_time = timeout(5)
    manager.start_kernel()
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=timeout(30))
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel()


def execute(
    client: BlockingKernelClient,
    code: str,
    units: float = 30,
    iopub: list[dict[str, Any]] | None = None,
) -> str:
    """Run ``code`` as a cell, wait until the kernel is idle, return its stdout.

    Fails the test with the kernel's traceback if the cell raises, or if it
    does not finish within ``units`` time units. With ``iopub``, every IOPub
    message read while waiting is appended to it, also those that belong to
    earlier cells or to tasks that ran between cells.
    """
    deadline = time.monotonic() + timeout(units)
    msg_id = client.execute(code)
    outputs: list[dict[str, Any]] = []
    while True:
        message = _receive(client.get_iopub_msg, code, deadline)
        if iopub is not None:
            iopub.append(message)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        content = message["content"]
        if message["msg_type"] == "status" and content["execution_state"] == "idle":
            break
        outputs.append(message)
    reply = _receive(client.get_shell_msg, code, deadline)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = _receive(client.get_shell_msg, code, deadline)
    content = reply["content"]
    if content["status"] != "ok":
        traceback = ANSI_ESCAPE.sub("", "\n".join(content.get("traceback", [])))
        pytest.fail(
            f"cell {code!r} failed with {content.get('ename')}: "
            f"{content.get('evalue')}\n{traceback}"
        )
    return "".join(
        output["content"]["text"]
        for output in outputs
        if output["msg_type"] == "stream" and output["content"]["name"] == "stdout"
    )


def drain_iopub(
    client: BlockingKernelClient, iopub: list[dict[str, Any]], units: float = 0.5
) -> None:
    """Append to ``iopub`` the IOPub messages that arrive within ``units``."""
    deadline = time.monotonic() + timeout(units)
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            iopub.append(client.get_iopub_msg(timeout=remaining))
        except queue.Empty:
            return


def _receive(
    receive: Callable[..., dict[str, Any]], code: str, deadline: float
) -> dict[str, Any]:
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise queue.Empty
        return receive(timeout=remaining)
    except queue.Empty:
        pytest.fail(f"cell {code!r} timed out: the kernel did not finish it in time")
