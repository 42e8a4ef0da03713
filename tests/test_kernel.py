"""rtkit inside a real IPython kernel, driven the way a notebook drives it.

A cell starts the server with top-level ``await``. The server then keeps
serving from the kernel's event loop while no cell runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from websockets.asyncio.client import connect

import rtkit

from .conftest import can_bind, free_port, run, timeout
from .kernels import execute

pytestmark = pytest.mark.kernel

START_CELL = "import rtkit\nserver = await rtkit.start(port={port})"

# An opener without proxies, so requests to 127.0.0.1 never leave the machine
# even when http_proxy is set.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


async def exchange(url: str, text: str) -> tuple[str, str]:
    """Connect to ``url``, send ``text`` and return the greeting and the reply."""
    async with connect(url, open_timeout=timeout(5)) as client:
        welcome = await asyncio.wait_for(client.recv(), timeout(5))
        await client.send(text)
        reply = await asyncio.wait_for(client.recv(), timeout(5))
    return welcome, reply


def health(port: int) -> dict:
    url = f"http://127.0.0.1:{port}/health"
    with HTTP.open(url, timeout=timeout(5)) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_kernel_runs_venv_python(kernel: BlockingKernelClient) -> None:
    prefix = execute(kernel, "import sys\nprint(sys.prefix)").strip()
    assert prefix == sys.prefix, (
        f"kernel python3 runs the Python in {prefix}, not the one in {sys.prefix}; "
        "`jupyter kernelspec list` shows which python3 kernelspec was found"
    )


def test_kernel_serves_while_idle(kernel: BlockingKernelClient) -> None:
    port = free_port()
    ws_url = f"ws://127.0.0.1:{port}/ws"

    execute(kernel, START_CELL.format(port=port))
    # No cell runs now: the kernel's event loop alone serves the client.
    welcome, reply = run(exchange(ws_url, "first"))
    assert welcome == rtkit.WELCOME
    assert reply == "Server received: first"
    first_epoch = health(port)["epoch"]

    # Re-running the start cell replaces the server on the same port.
    execute(kernel, START_CELL.format(port=port))
    welcome, reply = run(exchange(ws_url, "second"))
    assert welcome == rtkit.WELCOME
    assert reply == "Server received: second"
    assert health(port)["epoch"] != first_epoch
    running = execute(kernel, "print(len(rtkit.running_servers()))").strip()
    assert running == "1"

    execute(kernel, "await server.stop()")
    assert can_bind(port), f"port {port} is still taken after server.stop()"


def send_comm_message(
    client: BlockingKernelClient, comm_id: str, data: dict[str, object]
) -> None:
    """Send a ``comm_msg`` on the shell channel, as JupyterLab does for widgets."""
    message = client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
    client.shell_channel.send(message)


async def joined_lobby_event(url: str, send: object) -> dict:
    """Join ``lobby``, call ``send()``, and return the first chat event received."""
    async with connect(url, open_timeout=timeout(5)) as client:
        await asyncio.wait_for(client.recv(), timeout(5))
        join = {"type": "join", "channel": "lobby", "name": "outside"}
        await client.send(json.dumps(join))
        while json.loads(await client.recv())["type"] != "presence":
            pass
        await asyncio.to_thread(send)  # type: ignore[arg-type]
        while True:
            message = json.loads(await asyncio.wait_for(client.recv(), timeout(10)))
            if message["type"] == "event":
                return message


def test_kernel_panel_click_broadcasts_while_idle(
    kernel: BlockingKernelClient,
) -> None:
    port = free_port()
    execute(kernel, START_CELL.format(port=port))
    ids = execute(
        kernel,
        "from rtkit.widgets import ControlPanel\n"
        "panel = ControlPanel(server)\n"
        "display(panel)\n"
        "print(panel.message.model_id, panel.send_button.model_id)",
    ).split()
    text_id, button_id = ids

    def click_send_from_front_end() -> None:
        # The same two messages a browser sends: the text box's new value,
        # then the button's click event.
        update = {"method": "update", "state": {"value": "hi from the page"}}
        send_comm_message(kernel, text_id, {**update, "buffer_paths": []})
        click = {"method": "custom", "content": {"event": "click"}}
        send_comm_message(kernel, button_id, click)

    event = run(
        joined_lobby_event(f"ws://127.0.0.1:{port}/ws", click_send_from_front_end)
    )
    assert event["channel"] == "lobby"
    assert event["data"]["text"] == "hi from the page"
    assert event["data"]["from"]["name"] == "notebook"
    log = execute(kernel, "print(panel.log.value)")
    assert "[lobby] notebook: hi from the page" in log
    execute(kernel, "panel.close()\nawait server.stop()")
