"""The backpressure experiment: broadcast, bounded queues and the awaited loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rtkit.fanout import STRATEGIES, SUMMARY_COLUMNS, FanoutResult, run_fanout

from .conftest import run, timeout

WRITE_LIMIT = 2**15
"""websockets' default high-water mark of a connection's write buffer."""


@pytest.fixture(scope="module")
def default_run() -> tuple[FanoutResult, float]:
    """One run with the default settings, as a notebook runs it, and its time."""
    started = time.monotonic()
    result = run(run_fanout(), units=30)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def summary(default_run: tuple[FanoutResult, float]) -> dict[str, dict[str, Any]]:
    result, _ = default_run
    return {row["strategy"]: row for row in result.summary()}


def test_run_fanout_default_runs_every_strategy(
    default_run: tuple[FanoutResult, float],
) -> None:
    result, elapsed = default_run
    assert list(result.results) == list(STRATEGIES)
    assert elapsed < timeout(15)
    for row in result.summary():
        assert set(SUMMARY_COLUMNS) <= set(row)
        assert row["scheduled"] == 250


def test_run_fanout_series_in_time_order(
    default_run: tuple[FanoutResult, float],
) -> None:
    result, _ = default_run
    rows = result.series()
    assert {row["strategy"] for row in rows} == set(STRATEGIES)
    for name, strategy in result.results.items():
        times = [sample["t"] for sample in strategy.series]
        assert times == sorted(times), name
        assert len(times) >= 10, name
        assert set(strategy.series[0]) == {
            "t",
            "slow_buffered",
            "fast_received",
            "published",
        }


def test_run_fanout_awaited_loop_delays_fast_clients(
    summary: dict[str, dict[str, Any]],
) -> None:
    awaited = summary["awaited"]
    # Most messages never reach the fast clients, and each of those counts
    # with the time it had waited at the deadline: 0.25 s or more.
    assert awaited["fast_latency_median_ms"] >= 250
    for name in ("broadcast", "queues"):
        other = summary[name]
        assert awaited["fast_latency_median_ms"] > 5 * other["fast_latency_median_ms"]
        assert awaited["fast_latency_p99_ms"] > other["fast_latency_p99_ms"]
        assert awaited["delivered_share"] < other["delivered_share"]
    assert awaited["published"] < awaited["scheduled"]
    assert awaited["delivered_share"] < 0.5


def test_run_fanout_fast_clients_get_everything(
    summary: dict[str, dict[str, Any]],
) -> None:
    for name in ("broadcast", "queues"):
        assert summary[name]["published"] == summary[name]["scheduled"]
        assert summary[name]["delivered_share"] > 0.95


def test_run_fanout_queues_bound_memory(
    default_run: tuple[FanoutResult, float],
    summary: dict[str, dict[str, Any]],
) -> None:
    result, _ = default_run
    settings = result.settings
    message_bytes = settings["message_size"] + 100
    bound = WRITE_LIMIT + (settings["queue_size"] + 1) * message_bytes
    assert summary["queues"]["slow_max_buffered"] <= bound
    assert summary["queues"]["slow_dropped"] > 0
    assert summary["broadcast"]["slow_max_buffered"] > bound
    assert summary["broadcast"]["slow_dropped"] == 0


def test_run_fanout_plot_draws_both_panels(
    default_run: tuple[FanoutResult, float],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result, _ = default_run
    figure = result.plot()
    try:
        memory, progress = figure.axes
        assert len(memory.lines) == len(STRATEGIES)
        assert len(progress.lines) == len(STRATEGIES)
    finally:
        plt.close(figure)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"strategies": ("broadcast", "gossip")}, "invalid strategies"),
        ({"strategies": ()}, "invalid strategies"),
        ({"fast_clients": 0}, "invalid fast_clients: 0"),
        ({"queue_size": 1.5}, "invalid queue_size: 1.5"),
        ({"message_size": -1}, "invalid message_size: -1"),
        ({"rate": 0}, "invalid rate: 0"),
        ({"duration": -2}, "invalid duration: -2"),
        ({"rate": float("inf")}, "invalid rate: inf"),
        ({"rate": True}, "invalid rate: True"),
        ({"grace": -0.1}, "invalid grace: -0.1"),
        ({"sample_interval": 0}, "invalid sample_interval: 0"),
        ({"sndbuf": 0}, "invalid sndbuf: 0"),
        ({"rcvbuf": "big"}, "invalid rcvbuf: 'big'"),
    ],
)
def test_run_fanout_invalid_settings_raise(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        asyncio.run(run_fanout(**options))
