"""A control panel for the in-kernel server, built from ipywidgets.

The panel shows the server's URL and state, Start / Stop / Restart buttons, a
live table of connections, a broadcast box, counters and a live log. It
updates while the kernel is idle, because every update is driven by an event
on the kernel's loop: a log record, a connection change, a published chat
message, or a refresh task for the ping latencies.

Widget callbacks run synchronously on the kernel's loop thread. They never
block and never await: a Start click schedules ``server.start()`` as a task,
and Send calls :meth:`~rtkit.server.Server.publish`, which writes to every
subscriber with ``broadcast()`` and returns at once.

Usage in a notebook::

    from rtkit.widgets import ControlPanel
    panel = ControlPanel(server)
    panel            # displays it
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .hub import Event, check_channel
from .logs import install_log_buffer
from .push import Client

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ControlPanel"]

logger = logging.getLogger("rtkit.widgets")

SERVER_SENDER = {"id": "server", "name": "notebook"}
"""The ``from`` field of messages sent from the panel."""


class ControlPanel:
    """An ipywidgets panel that starts, stops, watches and drives a server.

    Args:
        server: the server to control; it may be stopped.
        channel: the channel preselected in the broadcast box.
        max_log_lines: lines kept in the live log; older lines are dropped.
        refresh_interval: seconds between refreshes of the connection table,
            for the ping latencies, which change without an event.

    Raises:
        ImportError: if ipywidgets is not installed.
    """

    def __init__(
        self,
        server: Server,
        *,
        channel: str = "lobby",
        max_log_lines: int = 200,
        refresh_interval: float = 2.0,
    ) -> None:
        import ipywidgets as widgets

        self.server = server
        self.log_lines: deque[str] = deque(maxlen=max_log_lines)
        self.refresh_interval = refresh_interval
        self.tasks: set[asyncio.Task[Any]] = set()
        self._closers: list[Callable[[], None]] = []
        self._refresh_handle: asyncio.TimerHandle | None = None

        self.status = widgets.HTML()
        self.start_button = widgets.Button(description="Start", icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop")
        self.restart_button = widgets.Button(description="Restart", icon="refresh")
        self.counters = widgets.HTML()
        self.table = widgets.HTML()
        self.channel = widgets.Combobox(
            value=channel, options=[channel], description="Channel", ensure_option=False
        )
        self.message = widgets.Text(
            placeholder="Message to broadcast", description="Text"
        )
        self.send_button = widgets.Button(description="Send", icon="paper-plane")
        self.log = widgets.HTML()
        self.clear_button = widgets.Button(description="Clear log", icon="eraser")

        self.start_button.on_click(self._guard(self.on_start))
        self.stop_button.on_click(self._guard(self.on_stop))
        self.restart_button.on_click(self._guard(self.on_restart))
        self.send_button.on_click(self._guard(self.on_send))
        self.clear_button.on_click(self._guard(self.on_clear))

        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [
                        self.status,
                        self.start_button,
                        self.stop_button,
                        self.restart_button,
                    ]
                ),
                self.counters,
                self.table,
                widgets.HBox([self.channel, self.message, self.send_button]),
                widgets.HBox([widgets.HTML("<b>Log</b>"), self.clear_button]),
                self.log,
            ]
        )
        self._connect()
        self.refresh()
        self.render_log()

    # Wiring

    def _connect(self) -> None:
        buffer = install_log_buffer()
        self._closers.append(buffer.subscribe(self.append_log))
        self._closers.append(self.server.hub.subscribe(self._on_event))
        listeners = self.server.push.listeners
        listeners.append(self._on_client_change)
        self._closers.append(lambda: listeners.remove(self._on_client_change))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._track(loop.create_task(self._refresh_periodically()))

    def close(self) -> None:
        """Stop updating and close the widgets."""
        for closer in self._closers:
            closer()
        self._closers.clear()
        for task in list(self.tasks):
            task.cancel()
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
        for widget in self._widgets():
            widget.close()

    def _widgets(self) -> list[Any]:
        return [self.widget, *self.widget.children, *self._children_of_boxes()]

    def _children_of_boxes(self) -> list[Any]:
        return [w for box in self.widget.children for w in getattr(box, "children", ())]

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _guard(self, callback: Callable[[], None]) -> Callable[..., None]:
        # A failing callback would print its traceback under whichever cell
        # ran last; the panel logs it instead.
        def run(*_: object) -> None:
            try:
                callback()
            except Exception:
                logger.exception("panel action %s failed", callback.__name__)

        return run

    def _track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("panel task failed: %s", task.exception())
        self.refresh()

    def schedule(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` as a task on the kernel's loop; return the task."""
        return self._track(asyncio.get_running_loop().create_task(coroutine))

    # Callbacks

    def on_start(self) -> None:
        """Start the server, as a task."""
        self.schedule(self.server.start())

    def on_stop(self) -> None:
        """Stop the server, as a task."""
        self.schedule(self.server.stop())

    def on_restart(self) -> None:
        """Restart the server, as a task."""
        self.schedule(self.server.restart())

    def on_send(self) -> None:
        """Publish the text box to the chosen channel, then clear the box."""
        text = self.message.value.strip()
        if not text:
            return
        try:
            channel = check_channel(self.channel.value.strip())
        except ValueError as exc:
            logger.warning("broadcast not sent: %s", exc)
            return
        if not self.server.is_serving:
            logger.warning("broadcast not sent: the server is stopped; click Start")
            return
        self.server.publish({"from": SERVER_SENDER, "text": text}, channel)
        self.message.value = ""

    def on_clear(self) -> None:
        """Empty the live log."""
        self.log_lines.clear()
        self.render_log()

    # Updates

    def append_log(self, line: str) -> None:
        """Add one line to the live log."""
        self.log_lines.append(line)
        self.render_log()

    def render_log(self) -> None:
        """Show the kept log lines, newest last."""
        text = html.escape("\n".join(self.log_lines)) or "(empty)"
        self.log.value = (
            f'<pre style="max-height: 16em; overflow-y: auto; margin: 0">{text}</pre>'
        )

    def _on_event(self, event: Event) -> None:
        data = event.data
        if isinstance(data, dict) and "text" in data and "from" in data:
            sender = (
                data["from"].get("name", "?") if isinstance(data["from"], dict) else "?"
            )
            self.append_log(f"[{event.channel}] {sender}: {data['text']}")
        if event.channel not in self.channel.options:
            self.channel.options = (*self.channel.options, event.channel)

    def _on_client_change(self, change: str, client: Client) -> None:
        if change == "message":
            self._refresh_soon()
            return
        for channel in client.channels:
            if channel not in self.channel.options:
                self.channel.options = (*self.channel.options, channel)
        self.refresh()

    def _refresh_soon(self) -> None:
        # Messages can arrive thousands of times a second: one redraw per
        # 200 ms keeps the counters live without flooding the front end.
        if self._refresh_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._refresh_handle = loop.call_later(0.2, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh_handle = None
        self.refresh()

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            self.refresh()

    def refresh(self) -> None:
        """Redraw the status line, the counters and the connection table."""
        server = self.server
        serving = server.is_serving
        state = "serving" if serving else "stopped"
        color = "#1a7f37" if serving else "#cf222e"
        self.status.value = (
            f'<span style="color: {color}">&#9679; {state}</span> '
            f'<a href="{html.escape(server.url)}" target="_blank">'
            f"{html.escape(server.url)}</a>"
        )
        self.start_button.disabled = serving
        self.stop_button.disabled = not serving
        push = server.push
        self.counters.value = (
            f"clients: <b>{len(push.clients)}</b> &nbsp; "
            f"messages in: <b>{push.totals['in']}</b> &nbsp; "
            f"messages out: <b>{push.totals['out']}</b>"
        )
        self.table.value = self.render_table()

    def rows(self) -> list[dict[str, str]]:
        """Return one row per open connection, as shown in the table."""
        now = time.time()
        rows = []
        for connection, client in list(self.server.push.clients.items()):
            latency = connection.latency
            rows.append(
                {
                    "id": client.id,
                    "remote": client.remote,
                    "channels": ", ".join(sorted(client.channels)) or "-",
                    "name": client.name or "-",
                    "connected": f"{now - client.connected_at:.0f} s ago",
                    "ping": f"{latency * 1000:.1f} ms" if latency else "-",
                }
            )
        return rows

    def render_table(self) -> str:
        """Return the connection table as HTML, with every value escaped."""
        headers = ["id", "remote", "channels", "name", "connected", "ping"]
        head = "".join(f"<th>{name}</th>" for name in headers)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(row[name])}</td>" for name in headers)
            + "</tr>"
            for row in self.rows()
        )
        if not body:
            body = f'<tr><td colspan="{len(headers)}">no connections</td></tr>'
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
