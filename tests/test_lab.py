"""Smoke test of the JupyterLab that ``make lab`` starts on the notebooks folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .jupyter import Lab, running_lab

pytestmark = pytest.mark.lab

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 and a free port, serving ``notebooks/``."""
    assert NOTEBOOKS.is_dir(), f"{NOTEBOOKS} is missing"
    with running_lab(tmp_path, NOTEBOOKS) as lab:
        yield lab


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

    exit_status = lab.shutdown()
    assert exit_status == 0, f"jupyter lab exited with {exit_status}:\n{lab.output()}"
