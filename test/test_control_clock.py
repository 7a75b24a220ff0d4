"""Control clock: absolute deadlines (no drift), overruns, backward jumps, achieved rate."""

from __future__ import annotations

import itertools
import threading

import pytest

from vla_policy_node.control.clock import ControlClock, FakeTimeSource, MonotonicTimeSource


def take(clock: ControlClock, n: int):
    return list(itertools.islice(clock.ticks(), n))


def test_late_wakeups_do_not_drift_the_deadlines():
    # Every wake-up 3 ms late: a relative sleep would drift 3 ms per tick.
    source = FakeTimeSource(start=100.0, delay=lambda deadline: 0.003)
    clock = ControlClock(source, 50.0)
    ticks = take(clock, 200)
    for tick in ticks:
        assert tick.deadline == pytest.approx(100.0 + tick.index * 0.02, abs=1e-9)
        assert tick.error == pytest.approx(0.003)
    stats = clock.stats()
    assert stats.ticks == 200 and stats.overruns == 0
    assert stats.error_p99 == pytest.approx(0.003)


def test_an_overrun_skips_missed_deadlines_and_stays_on_the_grid():
    late = {5: 0.05}  # tick 5 wakes 50 ms late: 2 whole periods missed at 50 Hz
    source = FakeTimeSource(start=0.0, delay=lambda d: late.get(round(d / 0.02), 0.0))
    clock = ControlClock(source, 50.0)
    ticks = take(clock, 10)
    assert ticks[5].skipped == 2
    assert ticks[5].deadline == pytest.approx(0.14)
    assert ticks[5].error == pytest.approx(0.01)
    assert ticks[6].deadline == pytest.approx(0.16)
    assert clock.stats().overruns == 2


def test_time_going_backwards_reanchors_the_grid():
    source = FakeTimeSource(start=50.0)
    clock = ControlClock(source, 100.0)
    it = clock.ticks()
    for _ in range(5):
        next(it)
    source.advance(-40.0)  # simulation reset
    tick = next(it)
    assert tick.time == pytest.approx(10.04)
    assert tick.deadline == pytest.approx(tick.time)
    assert next(it).deadline == pytest.approx(10.05)
    assert clock.reanchors == 1


def test_a_forward_time_jump_reanchors_instead_of_counting_overruns():
    source = FakeTimeSource(start=0.0)
    clock = ControlClock(source, 50.0)
    it = clock.ticks()
    next(it)
    source.advance(100.0)  # first /clock message of a simulation
    tick = next(it)
    assert tick.skipped == 0 and tick.deadline == pytest.approx(100.0)
    assert next(it).deadline == pytest.approx(100.02)
    assert clock.stats().overruns == 0 and clock.reanchors == 1


def test_achieved_rate_over_the_last_window():
    source = FakeTimeSource()
    clock = ControlClock(source, 500.0)
    take(clock, 1500)
    assert clock.achieved_rate() == pytest.approx(500.0, rel=1e-3)
    # A loop that stopped two seconds ago reads as 0, not as its old rate.
    assert clock.achieved_rate(now=source.now() + 2.0) == 0.0


def test_stop_event_and_stopped_source_end_the_loop():
    stop = threading.Event()
    clock = ControlClock(FakeTimeSource(), 50.0)
    count = 0
    for _ in clock.ticks(stop):
        count += 1
        if count == 3:
            stop.set()
    assert count == 3
    source = FakeTimeSource()
    source.stopped = True
    assert take(ControlClock(source, 50.0), 5) == []


def test_monotonic_source_sleep_is_interrupted_by_stop():
    source = MonotonicTimeSource()
    results = []
    thread = threading.Thread(target=lambda: results.append(
        source.sleep_until(source.now() + 3600.0)))
    thread.start()
    source.stop()
    thread.join(timeout=5.0)
    assert not thread.is_alive() and results == [False]
    assert source.sleep_until(source.now() - 1.0) is False


def test_real_clock_ticks_on_its_grid():
    source = MonotonicTimeSource()
    clock = ControlClock(source, 500.0)
    ticks = take(clock, 20)
    start = ticks[0].deadline
    for tick in ticks:
        assert tick.time >= tick.deadline
        n = round((tick.deadline - start) * 500.0)
        assert tick.deadline == pytest.approx(start + n / 500.0, abs=1e-9)


def test_clock_validates_rate():
    with pytest.raises(ValueError, match="-5"):
        ControlClock(FakeTimeSource(), -5)
