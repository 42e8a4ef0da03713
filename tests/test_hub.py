"""The hub: sequence numbers, bounded history, long-poll wake-ups, the source."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import rtkit.hub
from rtkit.hub import Hub
from rtkit.source import EventSource

from .conftest import run, timeout


def test_hub_publish_numbers_from_one() -> None:
    hub = Hub()
    events = [hub.publish({"i": i}) for i in range(3)]
    assert [event.seq for event in events] == [1, 2, 3]
    assert hub.latest == 3
    assert events[0].channel == "events"
    assert events[0].ts <= events[2].ts


def test_hub_events_after_returns_newer_only() -> None:
    hub = Hub()
    for i in range(5):
        hub.publish(i)
    result = hub.events_after(2)
    assert [event.seq for event in result.events] == [3, 4, 5]
    assert result.latest == 5
    assert result.missed == 0
    assert hub.events_after(5).events == []
    assert len(hub.events_after(99).events) == 5


def test_hub_history_overflow_reports_missed() -> None:
    hub = Hub(history_size=3)
    for i in range(10):
        hub.publish(i)
    result = hub.events_after(2)
    assert [event.seq for event in result.events] == [8, 9, 10]
    assert result.missed == 5
    assert hub.events_after(7).missed == 0
    assert hub.events_after(0).missed == 7


def test_hub_reset_new_epoch_restarts_seq() -> None:
    hub = Hub()
    hub.publish("a")
    epoch = hub.epoch
    hub.reset()
    assert hub.epoch != epoch
    assert hub.latest == 0
    assert hub.publish("b").seq == 1


@pytest.mark.parametrize("size", [0, -1, 1.5, "10", True])
def test_hub_invalid_history_size_raises(size: object) -> None:
    with pytest.raises(ValueError, match="invalid history_size"):
        Hub(size)  # type: ignore[arg-type]


def test_hub_envelope_fields() -> None:
    hub = Hub()
    event = hub.publish({"x": 1}, channel="news")
    envelope = event.envelope(hub.epoch)
    assert envelope == {
        "type": "event",
        "seq": 1,
        "epoch": hub.epoch,
        "channel": "news",
        "data": {"x": 1},
        "ts": event.ts,
    }


def test_hub_wait_woken_by_publish() -> None:
    async def scenario() -> float:
        hub = Hub()
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, hub.publish, "late")
        started = time.monotonic()
        result = await hub.wait_for_events(0, wait=timeout(5))
        assert [event.data for event in result.events] == ["late"]
        return time.monotonic() - started

    assert run(scenario()) < timeout(2)


def test_hub_wait_times_out_empty() -> None:
    async def scenario() -> float:
        hub = Hub()
        started = time.monotonic()
        result = await hub.wait_for_events(0, wait=0.2)
        assert result.events == []
        return time.monotonic() - started

    elapsed = run(scenario())
    assert 0.2 <= elapsed < timeout(2)


def test_hub_wait_many_released_by_one_publish() -> None:
    async def scenario() -> None:
        hub = Hub()
        waiters = [
            asyncio.create_task(hub.wait_for_events(0, wait=timeout(5)))
            for _ in range(500)
        ]
        await asyncio.sleep(0.05)
        assert not any(waiter.done() for waiter in waiters)
        hub.publish("one")
        results = await asyncio.wait_for(asyncio.gather(*waiters), timeout(2))
        assert all([e.seq for e in r.events] == [1] for r in results)

    run(scenario())


def test_hub_wait_stale_since_returns_at_once() -> None:
    async def scenario() -> None:
        hub = Hub()
        hub.publish("only")
        result = await asyncio.wait_for(hub.wait_for_events(50, 10), timeout(1))
        assert result.reset
        assert [event.seq for event in result.events] == [1]
        assert result.latest == 1

    run(scenario())


def test_hub_since_above_latest_resets() -> None:
    hub = Hub(history_size=3)
    for i in range(5):
        hub.publish(i)
    result = hub.events_after(9)
    assert result.reset
    assert [event.seq for event in result.events] == [3, 4, 5]
    assert result.missed == 2
    assert result.to_json(hub.epoch)["reset"] is True
    assert not hub.events_after(5).reset
    assert "reset" not in hub.events_after(5).to_json(hub.epoch)
    unknown = hub.events_after(4, channel="never")
    assert unknown.reset
    assert unknown.latest == 0


def test_hub_close_releases_waiters() -> None:
    async def scenario() -> None:
        hub = Hub()
        waiter = asyncio.create_task(hub.wait_for_events(0, wait=timeout(10)))
        await asyncio.sleep(0.05)
        hub.close()
        result = await asyncio.wait_for(waiter, timeout(1))
        assert result.events == []

    run(scenario())


# Channel eviction


def test_hub_evicts_least_recently_used_idle() -> None:
    hub = Hub(max_channels=3)
    for channel in ("a", "b", "c"):
        hub.publish(channel, channel=channel)
    hub.publish("again", channel="a")
    hub.publish("new", channel="d")
    assert list(hub.streams) == ["c", "a", "d"]
    assert hub.evictions == 1


def test_hub_recreated_channel_continues_seq() -> None:
    hub = Hub(max_channels=1)
    for i in range(3):
        hub.publish(i, channel="a")
    hub.publish("evicts a", channel="b")
    assert "a" not in hub.streams
    evicted = hub.events_after(1, channel="a")
    assert evicted.latest == 3
    assert evicted.missed == 2
    assert evicted.events == []
    assert not evicted.reset
    assert hub.publish("back", channel="a").seq == 4
    resumed = hub.events_after(1, channel="a")
    assert resumed.missed == 2
    assert [event.seq for event in resumed.events] == [4]
    assert not hub.events_after(3, channel="a").reset


def test_hub_forgotten_record_resets_resume(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rtkit.hub, "MAX_RETIRED_CHANNELS", 2)
    caplog.set_level(logging.INFO, logger="rtkit.hub")
    hub = Hub(max_channels=1)
    for channel in ("a", "b", "c", "d"):
        hub.publish(channel, channel=channel)
        hub.publish(channel, channel=channel)
    # "a" was evicted first, and its record gave way to that of "c".
    assert hub.events_after(0, channel="b").latest == 2
    assert hub.events_after(0, channel="a").latest == 0
    assert hub.publish("restarted", channel="a").seq == 1
    result = hub.events_after(2, channel="a")
    assert result.reset
    assert [event.data for event in result.events] == ["restarted"]
    forgotten = [r for r in caplog.records if "forgot the last seq" in r.message]
    assert len(forgotten) == 1


def test_hub_default_channel_never_evicted() -> None:
    hub = Hub(max_channels=2)
    hub.publish("first")
    hub.publish("x", channel="a")
    hub.publish("y", channel="b")
    assert list(hub.streams) == ["events", "b"]
    assert not hub.is_idle("events")


def test_hub_in_use_check_keeps_channel() -> None:
    hub = Hub(max_channels=2)
    remove = hub.add_in_use_check(lambda channel: channel == "kept")
    hub.publish("x", channel="kept")
    hub.publish("y", channel="a")
    hub.publish("z", channel="b")
    assert list(hub.streams) == ["kept", "b"]
    remove()
    hub.publish("w", channel="c")
    assert list(hub.streams) == ["b", "c"]


def test_hub_all_channels_busy_raises() -> None:
    hub = Hub(max_channels=2)
    hub.add_in_use_check(lambda channel: True)
    hub.publish("x", channel="a")
    hub.publish("y", channel="b")
    with pytest.raises(ValueError, match="too many channels: 2 exist") as caught:
        hub.publish("z", channel="c")
    assert "raise max_channels (for 'c')" in str(caught.value)
    assert list(hub.streams) == ["a", "b"]
    assert hub.evictions == 0


def test_hub_waiting_poll_keeps_channel() -> None:
    async def scenario() -> None:
        hub = Hub(max_channels=2)
        hub.publish("old", channel="waited")
        waiter = asyncio.create_task(
            hub.wait_for_events(1, wait=timeout(5), channel="waited")
        )
        await asyncio.sleep(0.05)
        assert not hub.is_idle("waited")
        hub.publish("x", channel="a")
        hub.publish("y", channel="b")
        assert list(hub.streams) == ["waited", "b"]
        hub.publish("new", channel="waited")
        result = await asyncio.wait_for(waiter, timeout(1))
        assert [event.data for event in result.events] == ["new"]
        assert hub.is_idle("waited")

    run(scenario())


def test_hub_eviction_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtkit.hub")
    hub = Hub(max_channels=1)
    for i in range(50):
        hub.publish(i, channel=f"c{i}")
    assert hub.evictions == 49
    lines = [r for r in caplog.records if r.message.startswith("evicted")]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert "evicted idle channel 'c0' (last seq 1) to create 'c1'" in lines[0].message


def test_source_fixed_rate_publishes_evenly() -> None:
    async def scenario() -> list[float]:
        hub = Hub()
        source = EventSource(hub, rate=50)
        source.start()
        await asyncio.sleep(0.5)
        await source.stop()
        return [event.ts for event in hub.history]

    times = run(scenario())
    # At most 0.5 s * 50 events/s plus the first; fewer on a loaded machine.
    assert 5 <= len(times) <= 26
    assert times == sorted(times)
    assert EventSource(Hub(), rate=50).next_gap() == 0.02


def test_source_poisson_gaps_vary_with_mean() -> None:
    hub = Hub()
    source = EventSource(hub, rate=10, poisson=True, seed=1)
    gaps = [source.next_gap() for _ in range(5000)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.1, rel=0.05)
    assert min(gaps) < 0.01
    assert max(gaps) > 0.4


@pytest.mark.parametrize("rate", [0, -1, 1001, float("nan"), float("inf"), "5"])
def test_source_invalid_rate_raises(rate: object) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        EventSource(Hub(), rate)  # type: ignore[arg-type]
