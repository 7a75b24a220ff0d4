"""ActionBuffer: time indexing, interpolation, latency compensation, merge strategies, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from vla_policy_node.chunk import ChunkError
from vla_policy_node.control.buffer import ActionBuffer, MergeConfig, MergeStrategy

D = 3
PERIOD = 0.04  # 25 Hz chunks, as OFT on ALOHA


def ramp_chunk(stamp: float, k: int = 25, start: float = 0.0, slope: float = 1.0):
    """times (K,), actions (K, D): every joint = start + slope * (t - stamp)."""
    times = stamp + np.arange(k) * PERIOD
    values = start + slope * (times - stamp)
    return times, np.repeat(values[:, None], D, axis=1)


def const_chunk(stamp: float, value: float, k: int = 25):
    times = stamp + np.arange(k) * PERIOD
    return times, np.full((k, D), value)


def test_interpolates_between_action_times_at_a_faster_control_rate():
    buf = ActionBuffer(D, MergeConfig(strategy="replace"))
    buf.insert(*ramp_chunk(10.0, slope=2.0), now=10.0)
    # 50 Hz ticks fall on action times and halfway between them.
    for i in range(40):
        now = 10.0 + i * 0.02
        np.testing.assert_allclose(buf.sample(now), np.full(D, 2.0 * (now - 10.0)), atol=1e-12)


def test_past_actions_are_dropped_latency_compensation():
    buf = ActionBuffer(D)
    times, actions = ramp_chunk(5.0)
    # The model took 0.3 s: the chunk arrives when 7.5 of its actions lie in the past.
    result = buf.insert(times, actions, now=5.3)
    assert result.dropped_past == 7  # action 7 (t=5.28) is kept to interpolate 5.3
    np.testing.assert_allclose(buf.sample(5.3), np.full(D, 0.3), atol=1e-12)
    plan_times, _ = buf.plan()
    assert plan_times[0] == pytest.approx(5.28)
    assert buf.remaining_horizon(5.3) == pytest.approx(5.0 + 24 * PERIOD - 5.3)


def test_sampling_prunes_the_past_and_reports_dry_buffer():
    buf = ActionBuffer(D)
    buf.insert(*const_chunk(0.0, 1.0, k=5), now=0.0)
    assert buf.sample(0.1) is not None
    assert buf.plan()[0][0] == pytest.approx(0.08)
    np.testing.assert_allclose(buf.sample(0.16), np.ones(D))  # last action time
    assert buf.sample(0.1601) is None
    assert buf.remaining_horizon(0.2) == 0.0


def test_expired_chunk_is_rejected():
    buf = ActionBuffer(D)
    with pytest.raises(ChunkError, match="expired"):
        buf.insert(*const_chunk(0.0, 1.0, k=5), now=1.0)
    assert len(buf) == 0


@pytest.mark.parametrize("times, actions, match", [
    (np.array([0.0, 0.04]), np.zeros((2, D + 1)), "expected times"),
    (np.array([0.0, 0.0]), np.zeros((2, D)), "increase"),
    (np.array([0.0, 0.04]), np.array([[0.0] * D, [np.nan] * D]), "finite"),
])
def test_malformed_input_raises_with_a_clear_error(times, actions, match):
    with pytest.raises(ChunkError, match=match):
        ActionBuffer(D).insert(times, actions, now=0.0)


def test_replace_switches_to_the_new_chunk_at_once():
    buf = ActionBuffer(D, MergeConfig(strategy=MergeStrategy.REPLACE))
    buf.insert(*const_chunk(0.0, 0.0), now=0.0)
    buf.insert(*const_chunk(0.4, 1.0), now=0.5)
    np.testing.assert_allclose(buf.sample(0.5), np.ones(D))
    assert buf.end_time() == pytest.approx(0.4 + 24 * PERIOD)


def test_crossfade_starts_at_the_old_plan_and_ends_at_the_new_chunk():
    window = 0.2
    buf = ActionBuffer(D, MergeConfig(strategy="crossfade", crossfade_window=window))
    buf.insert(*const_chunk(0.0, 0.0), now=0.0)
    # The new chunk's grid is aligned with "now" so the fade is exact at its samples.
    buf.insert(*const_chunk(0.4, 1.0), now=0.4)
    np.testing.assert_allclose(buf.sample(0.4), np.zeros(D), atol=1e-12)   # no jump
    np.testing.assert_allclose(buf.sample(0.48), np.full(D, 0.4), atol=1e-12)  # a = 0.08/0.2
    np.testing.assert_allclose(buf.sample(0.6), np.ones(D), atol=1e-12)
    np.testing.assert_allclose(buf.sample(0.9), np.ones(D), atol=1e-12)


def test_crossfade_hand_over_has_no_jump_at_control_rate():
    """50 Hz samples across a hand-over between two different chunks change smoothly."""
    buf = ActionBuffer(D, MergeConfig(strategy="crossfade", crossfade_window=0.2))
    buf.insert(*ramp_chunk(0.0, slope=1.0), now=0.0)
    samples = []
    now = 0.0
    for i in range(50):
        now = i * 0.02
        if i == 20:
            # A newer prediction disagreeing by 0.5 rad, computed from an observation at 0.3 s.
            buf.insert(*ramp_chunk(0.3, start=0.8, slope=1.0), now=now)
        samples.append(buf.sample(now)[0])
    steps = np.abs(np.diff(samples))
    # Plain following moves 0.02 per tick; the 0.5 offset is spread over the 0.2 s window.
    assert steps.max() < 0.02 + 0.5 * 0.02 / 0.2 + 1e-9
    assert samples[-1] == pytest.approx(0.8 + (now - 0.3))


def test_replace_would_jump_where_crossfade_does_not():
    """The comparison that makes the crossfade test meaningful."""
    buf = ActionBuffer(D, MergeConfig(strategy="replace"))
    buf.insert(*ramp_chunk(0.0), now=0.0)
    before = buf.sample(0.38)[0]
    buf.insert(*ramp_chunk(0.3, start=0.8), now=0.4)
    assert buf.sample(0.4)[0] - before > 0.4


def test_temporal_ensemble_weights_oldest_prediction_most():
    k = 0.5
    buf = ActionBuffer(D, MergeConfig(strategy="temporal_ensemble", temporal_ensemble_k=k))
    buf.insert(*const_chunk(0.0, 0.0), now=0.0)
    buf.insert(*const_chunk(0.2, 1.0), now=0.2)
    w1 = np.exp(-k)
    expected2 = w1 / (1 + w1)
    np.testing.assert_allclose(buf.sample(0.4), np.full(D, expected2), atol=1e-12)
    buf.insert(*const_chunk(0.4, 2.0), now=0.4)
    w2 = np.exp(-2 * k)
    expected3 = (0 + w1 * 1 + w2 * 2) / (1 + w1 + w2)
    np.testing.assert_allclose(buf.sample(0.48), np.full(D, expected3), atol=1e-12)
    # Beyond the first chunk (ends at 0.96) only chunks 2 and 3 predicted the time.
    np.testing.assert_allclose(buf.sample(1.0), np.full(D, (1 + w1 * 2) / (1 + w1)), atol=1e-12)
    # Beyond the second (ends at 1.16) only the newest.
    np.testing.assert_allclose(buf.sample(1.2), np.full(D, 2.0), atol=1e-12)


def test_a_chunk_starting_in_the_future_keeps_the_old_plan_before_it():
    buf = ActionBuffer(D, MergeConfig(strategy="crossfade"))
    buf.insert(*const_chunk(0.0, 0.0), now=0.0)
    buf.insert(*const_chunk(0.2, 1.0), now=0.1)
    np.testing.assert_allclose(buf.sample(0.12), np.zeros(D))


def test_merge_config_validates():
    with pytest.raises(ValueError, match="'blend'"):
        MergeConfig(strategy="blend")
    with pytest.raises(ValueError, match="crossfade_window"):
        MergeConfig(crossfade_window=-1.0)
    with pytest.raises(ValueError, match="temporal_ensemble_k"):
        MergeConfig(temporal_ensemble_k=float("nan"))
    with pytest.raises(ValueError, match="dimension"):
        ActionBuffer(0)


@pytest.mark.parametrize("strategy", [m.value for m in MergeStrategy])
def test_concurrent_inserts_and_samples_stay_consistent(strategy):
    """Producers insert while a consumer samples: every sample is a convex mix of chunk values.

    All chunks hold values in [0, 1]; any merge of them (replace, fade, weighted average,
    interpolation) must stay in [0, 1] with all D joints equal. A torn update would break it.
    """
    buf = ActionBuffer(D, MergeConfig(strategy=strategy, crossfade_window=0.1))
    clock = {"t": 0.0}
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def producer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                with lock:
                    now = clock["t"]
                times = now - 0.05 + np.arange(10) * PERIOD
                values = rng.uniform(0, 1, size=(10, 1)).repeat(D, axis=1)
                buf.insert(times, values, now=now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    samples = []

    def consumer() -> None:
        try:
            while not stop.is_set():
                with lock:
                    clock["t"] += 0.002
                    now = clock["t"]
                target = buf.sample(now)
                if target is not None:
                    samples.append(target)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(s,)) for s in range(3)]
    reader = threading.Thread(target=consumer)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    stop.set()
    reader.join(timeout=20)
    assert not errors, errors
    assert samples
    stacked = np.array(samples)
    assert np.all(np.isfinite(stacked))
    assert stacked.min() >= -1e-12 and stacked.max() <= 1 + 1e-12
    np.testing.assert_allclose(stacked, stacked[:, :1].repeat(D, axis=1))
