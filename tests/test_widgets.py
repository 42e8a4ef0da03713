"""The control panel, driven from code as a notebook under nbval drives it."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

import rtkit
from rtkit.widgets import ControlPanel

from .conftest import run, timeout, until


def test_panel_send_reaches_channel_member() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            panel = ControlPanel(server)
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                join = {"type": "join", "channel": "lobby", "name": "ada"}
                await client.send(json.dumps(join))
                await until(lambda: "ada" in panel.table.value)
                panel.channel.value = "lobby"
                panel.message.value = "hello from the notebook"
                panel.send_button.click()
                assert panel.message.value == ""
                while True:
                    message = json.loads(await asyncio.wait_for(client.recv(), 2))
                    if message["type"] == "event":
                        break
                assert message["data"]["text"] == "hello from the notebook"
                assert message["data"]["from"]["name"] == "notebook"
            await until(lambda: "no connections" in panel.table.value)
            assert "[lobby] notebook: hello from the notebook" in panel.log.value
            panel.close()

    run(scenario())


def test_panel_stop_and_start_buttons() -> None:
    async def scenario() -> None:
        server = await rtkit.start(port=0)
        panel = ControlPanel(server)
        try:
            assert "serving" in panel.status.value
            assert panel.start_button.disabled
            panel.stop_button.click()
            await until(lambda: not server.is_serving)
            await until(lambda: "stopped" in panel.status.value)
            assert not panel.start_button.disabled
            panel.start_button.click()
            await until(lambda: server.is_serving)
            epoch = server.epoch
            panel.restart_button.click()
            await until(lambda: server.epoch != epoch)
            assert server.is_serving
        finally:
            panel.close()
            await server.stop()

    run(scenario())


def test_panel_log_shows_server_lines_and_clears() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            panel = ControlPanel(server, max_log_lines=3)
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
            await until(lambda: "disconnected" in panel.log.value)
            assert len(panel.log_lines) <= 3
            panel.clear_button.click()
            assert panel.log_lines == type(panel.log_lines)()
            assert "(empty)" in panel.log.value
            panel.close()

    run(scenario())


def test_panel_invalid_channel_not_sent() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            panel = ControlPanel(server)
            panel.channel.value = "no spaces allowed"
            panel.message.value = "x"
            panel.send_button.click()
            assert "broadcast not sent: invalid channel" in panel.log.value
            assert panel.message.value == "x"
            panel.close()

    run(scenario())


def test_panel_counters_and_escaped_names() -> None:
    async def scenario() -> None:
        async with rtkit.Server(port=0) as server:
            panel = ControlPanel(server)
            async with connect(server.ws_url, open_timeout=timeout(2)) as client:
                await client.recv()
                join = {"type": "join", "channel": "lobby", "name": "<b>x</b>"}
                await client.send(json.dumps(join))
                await until(lambda: "&lt;b&gt;x&lt;/b&gt;" in panel.table.value)
                assert "<b>x</b>" not in panel.table.value
                assert "clients: <b>1</b>" in panel.counters.value
            panel.close()

    run(scenario())
