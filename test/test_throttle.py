"""Repeated warnings become one line, then a count per growing period (issue: a clamp warning
every second for as long as the policy asked for an out-of-range gripper)."""

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from vla_policy_node.control.throttle import ThrottledLogger


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(logger, clock, key, seconds, rate_hz):
    for _ in range(int(seconds * rate_hz)):
        logger.warning(key, f"position limits clamped {key}")
        clock.now += 1.0 / rate_hz


def test_a_warning_every_tick_for_two_minutes_is_a_handful_of_lines(caplog):
    clock = Clock()
    throttled = ThrottledLogger(logging.getLogger("throttle_test"), 1.0, clock)
    with caplog.at_level(logging.WARNING, logger="throttle_test"):
        run(throttled, clock, "['left_gripper']", 120.0, 50.0)
    lines = [r.getMessage() for r in caplog.records]
    # 1 + periods of 1, 2, 4, ..., 60 s over 120 s: at most 9 lines, not 120.
    assert len(lines) <= 9, lines
    assert "similar" not in lines[0]
    counted = sum(int(line.split("(")[-1].split()[0]) for line in lines[1:])
    assert counted + len(lines) <= 6000 and counted >= 6000 - 60 * 50 - len(lines)
    assert "similar in the last" in lines[-1]


def test_a_new_burst_after_quiet_starts_at_the_base_interval(caplog):
    clock = Clock()
    throttled = ThrottledLogger(logging.getLogger("throttle_test"), 1.0, clock)
    with caplog.at_level(logging.WARNING, logger="throttle_test"):
        run(throttled, clock, "k", 30.0, 50.0)
        clock.now += 200.0
        count = len(caplog.records)
        run(throttled, clock, "k", 1.5, 50.0)
    # The new burst: logged at once and again after 1 s, not after the grown period.
    assert len(caplog.records) - count == 2


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=300))
def test_every_occurrence_is_logged_or_counted(gaps):
    records = []

    class Sink(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("throttle_property")
    logger.handlers = [Sink()]
    logger.propagate = False
    clock = Clock()
    throttled = ThrottledLogger(logger, 1.0, clock)
    emitted = 0
    for gap in gaps:
        clock.now += gap
        emitted += throttled.warning("k", "w")
    counted = sum(int(r.split("(")[-1].split()[0]) for r in records if "similar" in r)
    pending = throttled._suppressed.get("k", 0)
    assert emitted == len(records) and emitted + counted + pending == len(gaps)
