"""The control panel in a real JupyterLab page, clicked in headless Chromium.

The test starts JupyterLab on a temporary folder with one notebook, opens the
notebook in Debian's /usr/bin/chromium through Playwright's sync API, runs all
cells from the Run menu, and clicks the panel's Send button. A WebSocket client
in the test process receives the broadcast while the kernel is idle, so the
click reached the kernel as a comm message and nothing else drove it.

Every server listens on 127.0.0.1, and the page may only load loopback URLs.
The page's screenshot after the click is saved as ``after-send.png`` in the
test's ``tmp_path``, and as ``failure.png`` when a step in the page fails.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import (
    Browser,
    Page,
    Route,
    expect,
)
from websockets.sync.client import ClientConnection, connect

import rtkit

from .browsers import WAIT_MS, record_console_errors
from .conftest import free_port, timeout
from .jupyter import Lab, running_lab

pytestmark = [pytest.mark.lab, pytest.mark.browser]

KERNEL_WAIT_MS = timeout(30) * 1000
"""Playwright's bound on a kernel start or a run of all cells, in milliseconds."""

NOTEBOOK = "panel.ipynb"

# With this kernelspec in the notebook's metadata, JupyterLab starts python3
# without asking in a Select Kernel dialog.
KERNELSPEC = {
    "name": "python3",
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
}

MESSAGE = "hello from JupyterLab"

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def write_notebook(path: Path, rtkit_port: int) -> None:
    """Write a notebook that starts rtkit on ``rtkit_port`` and shows the panel."""
    notebook = new_notebook(
        cells=[
            new_code_cell(
                "import rtkit\n"
                "from rtkit.widgets import ControlPanel\n"
                f"server = await rtkit.start(port={rtkit_port})"
            ),
            new_code_cell("panel = ControlPanel(server)\npanel"),
        ],
        metadata={"kernelspec": KERNELSPEC},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def leaves_machine(url: str) -> bool:
    """Return whether ``url`` is a network URL of a host other than loopback."""
    parts = urlsplit(url)
    is_network = parts.scheme in {"http", "https", "ws", "wss"}
    return is_network and parts.hostname not in LOOPBACK_HOSTS


def process_state(stat: Path) -> tuple[str, int] | None:
    """Return the state letter and the parent's id from a /proc/<pid>/stat file.

    Returns None if the process has exited and the file is gone.
    """
    try:
        text = stat.read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so the fields are
    # counted from the closing bracket: state, then the parent's id.
    state, parent = text[text.rindex(")") + 2 :].split()[:2]
    return state, int(parent)


def child_pids(pid: int) -> list[int]:
    """Return the ids of the processes whose parent is ``pid``, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        state = process_state(stat)
        if state is not None and state[1] == pid:
            children.append(int(stat.parent.name))
    return children


def wait_until_gone(pid: int, units: float = 10) -> bool:
    """Wait until process ``pid`` has ended, and return whether it ended in time.

    A zombie (state Z) counts as ended, because only its parent's wait() is
    missing, and the init process may reap orphans late.
    """
    deadline = time.monotonic() + timeout(units)
    while True:
        state = process_state(Path(f"/proc/{pid}/stat"))
        if state is None or state[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def connection_refused(port: int) -> bool:
    """Return whether a connection to 127.0.0.1 at ``port`` is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout(2)):
            return False
    except ConnectionRefusedError:
        return True


@contextmanager
def lobby_client(rtkit_port: int) -> Iterator[ClientConnection]:
    """Connect to rtkit's /ws, join ``lobby`` as ``watcher``, and yield the client."""
    url = f"ws://127.0.0.1:{rtkit_port}/ws"
    with connect(url, open_timeout=timeout(5), proxy=None) as client:
        welcome = client.recv(timeout(5))
        assert welcome == rtkit.WELCOME, f"{url} sent {welcome!r} first"
        join = {"type": "join", "channel": "lobby", "name": "watcher"}
        client.send(json.dumps(join))
        receive_until(client, "presence")
        yield client


def receive_until(
    client: ClientConnection, message_type: str, units: float = 10
) -> dict[str, Any]:
    """Return the first JSON message of ``message_type``, skipping the others."""
    deadline = time.monotonic() + timeout(units)
    skipped = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            message = json.loads(client.recv(max(remaining, 0)))
        except TimeoutError:
            pytest.fail(
                f"no {message_type!r} message within {timeout(units)} s; "
                f"received instead: {skipped}"
            )
        if message.get("type") == message_type:
            return message
        skipped.append(message)


class LabPage:
    """The notebook open in JupyterLab, with locators for what the test checks."""

    def __init__(self, page: Page):
        self.page = page
        statusbar = page.locator("#jp-main-statusbar")
        # The status bar item reads "<kernel display name> | <status>". The
        # toolbar's execution indicator is no use here, because it reads
        # "idle" before any kernel is connected (JupyterLab 4.6).
        self.kernel_status = statusbar.get_by_title(re.compile(r"^Change kernel"))
        self.dialog = page.locator(".jp-Dialog")
        self.notebook = page.locator(".jp-NotebookPanel .jp-Notebook")
        self.outputs = self.notebook.locator(".jp-OutputArea")
        self.errors = self.outputs.locator(
            '[data-mime-type="application/vnd.jupyter.stderr"]'
        )
        # The accessible name of the Send button starts with its icon's glyph.
        send_button = page.get_by_role("button", name=re.compile(r"^\W*Send$"))
        self.panel = self.outputs.filter(has=send_button)
        self.send_button = self.panel.locator(send_button)
        self.message_box = self.panel.get_by_placeholder("Message to broadcast")

    def expect_kernel_idle(self, wait_ms: float = WAIT_MS) -> None:
        expect(self.kernel_status).to_have_text(
            f"{KERNELSPEC['display_name']} | Idle", timeout=wait_ms
        )

    def expect_no_dialog(self) -> None:
        if self.dialog.count():
            pytest.fail(
                "JupyterLab shows a dialog: "
                + " / ".join(self.dialog.all_inner_texts()).replace("\n", " ")
            )

    def wait_for_kernel(self) -> None:
        """Wait until the notebook's kernel is idle, failing on any dialog."""
        idle = self.kernel_status.get_by_text(
            f"{KERNELSPEC['display_name']} | Idle", exact=True
        )
        idle.or_(self.dialog).first.wait_for(timeout=KERNEL_WAIT_MS)
        self.expect_no_dialog()
        self.expect_kernel_idle()

    def run_all_cells(self) -> None:
        """Choose Run > Run All Cells in the menu bar."""
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    def expect_cells_ran(self, count: int) -> None:
        prompts = self.notebook.locator(".jp-InputArea-prompt")
        expected = [f"[{number}]:" for number in range(1, count + 1)]
        expect(prompts).to_have_text(expected, timeout=KERNEL_WAIT_MS)
        self.expect_kernel_idle(KERNEL_WAIT_MS)
        errors = self.errors.all_inner_texts()
        assert errors == [], "cells wrote to stderr:\n" + "\n".join(errors)


@contextmanager
def screenshot_on_failure(
    page: Page, path: Path, describe: Callable[[], list[str]]
) -> Iterator[None]:
    """Save a screenshot to ``path`` if the block raises, and note it on the error.

    The lines that ``describe()`` returns when the error happens are added as
    notes too.
    """
    try:
        yield
    except BaseException as exc:
        try:
            page.screenshot(path=path)
            exc.add_note(f"screenshot of the page: {path}")
        except Exception as screenshot_error:
            exc.add_note(f"no screenshot: {screenshot_error}")
        for note in describe():
            exc.add_note(note)
        raise


def test_lab_panel_send_click_broadcasts(tmp_path: Path, browser: Browser) -> None:
    rtkit_port = free_port()
    root_dir = tmp_path / "root"
    write_notebook(root_dir / NOTEBOOK, rtkit_port)

    with running_lab(tmp_path / "jupyter", root_dir) as lab:
        lab.wait_until_ready()
        kernel_pids = drive_panel_in_page(lab, browser, rtkit_port, tmp_path)
        shut_down_kernel(lab, rtkit_port)
        exit_status = lab.shutdown()
        assert exit_status == 0, (
            f"jupyter lab exited with {exit_status}:\n{lab.output()}"
        )

    left = [pid for pid in kernel_pids if not wait_until_gone(pid)]
    assert left == [], f"processes that jupyter lab started still run: {left}"


def drive_panel_in_page(
    lab: Lab, browser: Browser, rtkit_port: int, tmp_path: Path
) -> list[int]:
    """Open the notebook, run its cells and click Send.

    Returns the ids of the kernel processes.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    blocked: list[str] = []
    console_errors: list[str] = []

    def block(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort("blockedbyclient")

    context.route(leaves_machine, block)
    page = context.new_page()
    record_console_errors(page, console_errors)

    def describe() -> list[str]:
        return [
            f"console errors of the page: {console_errors}",
            f"blocked requests to other hosts: {blocked}",
            f"jupyter lab log: {lab.log}",
        ]

    lab_page = LabPage(page)
    try:
        with screenshot_on_failure(page, tmp_path / "failure.png", describe):
            page.goto(f"{lab.base_url}/lab/tree/{NOTEBOOK}?token={lab.token}")
            lab_page.wait_for_kernel()

            lab_page.run_all_cells()

            lab_page.expect_cells_ran(2)
            expect(lab_page.send_button).to_be_visible()
            lab_page.expect_no_dialog()
            kernel_pids = child_pids(lab.process.pid)
            assert kernel_pids, "jupyter lab has no child process, so no kernel runs"

            with lobby_client(rtkit_port) as client:
                # The kernel pushes the new connection table to the page.
                expect(lab_page.panel.locator("table")).to_contain_text("watcher")
                lab_page.message_box.press_sequentially(MESSAGE)
                expect(lab_page.message_box).to_have_value(MESSAGE)
                # No cell runs now: the click reaches the kernel as a comm
                # message that the kernel handles between cells.
                lab_page.expect_kernel_idle()

                lab_page.send_button.click()

                event = receive_until(client, "event")
                assert event["channel"] == "lobby"
                assert event["data"]["text"] == MESSAGE
                assert event["data"]["from"]["name"] == "notebook"
                expect(lab_page.message_box).to_have_value("")
                expect(lab_page.panel).to_contain_text(f"[lobby] notebook: {MESSAGE}")
                page.screenshot(path=tmp_path / "after-send.png")
            lab_page.expect_no_dialog()
    finally:
        context.close()
    assert blocked == [], f"the page requested hosts other than loopback: {blocked}"
    return kernel_pids


def shut_down_kernel(lab: Lab, rtkit_port: int) -> None:
    """Shut down the notebook's kernel with DELETE /api/kernels/<id>."""
    sessions = lab.get_json("/api/sessions")
    paths = [session["path"] for session in sessions]
    assert paths == [NOTEBOOK], f"expected one session, of {NOTEBOOK}: {sessions}"
    kernel_id = sessions[0]["kernel"]["id"]

    status, body = lab.request("DELETE", f"/api/kernels/{kernel_id}")

    assert status == 204, f"DELETE /api/kernels/{kernel_id} returned {status}: {body!r}"
    assert lab.get_json("/api/kernels") == []
    assert connection_refused(rtkit_port), (
        f"rtkit still listens on port {rtkit_port} after the kernel shut down"
    )
