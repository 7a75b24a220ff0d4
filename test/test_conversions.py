"""Message <-> core conversions: round trips and rejection of inconsistent chunks."""

import numpy as np
import pytest

from vla_policy_node.chunk import ActionChunk, ChunkError
from vla_policy_node.nodes import conversions as conv


def make_chunk(**overrides):
    fields = dict(stamp=10.25, actions=np.random.default_rng(0).normal(size=(5, 3)),
                  joint_names=("a", "b", "c"), step_period=0.04, chunk_id=7,
                  instruction="fold the towel", model_latency=0.1)
    fields.update(overrides)
    return ActionChunk(**fields)


def test_chunk_round_trip_is_exact():
    chunk = make_chunk()
    back = conv.action_chunk_from_msg(conv.action_chunk_to_msg(chunk))
    np.testing.assert_array_equal(back.actions, chunk.actions)
    assert back.joint_names == chunk.joint_names
    assert back.stamp == pytest.approx(chunk.stamp, abs=1e-9)
    assert (back.chunk_id, back.instruction) == (7, "fold the towel")


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "chunk_length", 4), "does not match"),
    (lambda m: setattr(m, "joint_names", ["a", "b"]), "joint names"),
    (lambda m: m.actions.__setitem__(3, float("nan")), "non-finite"),
    (lambda m: setattr(m, "step_period", conv.seconds_to_duration(0.0)), "step_period"),
    (lambda m: setattr(m, "joint_names", ["a", "a", "c"]), "duplicate"),
])
def test_inconsistent_chunk_messages_are_rejected(mutate, message):
    msg = conv.action_chunk_to_msg(make_chunk())
    mutate(msg)
    with pytest.raises(ChunkError, match=message):
        conv.action_chunk_from_msg(msg)


def test_time_conversions():
    assert conv.time_to_seconds(conv.seconds_to_time(3.999999999)) == pytest.approx(3.999999999)
    assert conv.seconds_to_time(1.5).nanosec == 500_000_000
    with pytest.raises(ValueError, match="negative"):
        conv.seconds_to_time(-1.0)
    with pytest.raises(ValueError, match="finite"):
        conv.seconds_to_duration(float("inf"))
