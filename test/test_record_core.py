"""EpisodeRecorder (the core of vla-record) without ROS: states, files, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vla_policy_node.data.bags import BagError, BagReader, META_INSTRUCTION, META_SUCCESS
from vla_policy_node.data.recording import EpisodeRecorder, RecordingError

TOPICS = {"/a/joint_states": "sensor_msgs/msg/JointState"}


def make(tmp_path: Path, **kw) -> EpisodeRecorder:
    return EpisodeRecorder(tmp_path, TOPICS, "/vla/instruction", "/vla/episode_success", **kw)


def joint_state_cdr(recorder: EpisodeRecorder) -> bytes:
    store = recorder._writer.typestore  # the writer's own store serializes like rclpy
    msg = store.types["sensor_msgs/msg/JointState"](
        header=store.types["std_msgs/msg/Header"](
            stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=""),
        name=["waist"], position=np.array([0.5]), velocity=np.zeros(0), effort=np.zeros(0))
    return bytes(store.serialize_cdr(msg, "sensor_msgs/msg/JointState"))


def test_episode_metadata_and_hidden_partial(tmp_path: Path) -> None:
    rec = make(tmp_path, instruction="open the drawer")
    assert not rec.write("/a/joint_states", 1, b"\0\1\0\0")  # idle: ignored
    final = rec.start(10**9)
    assert not final.exists() and [p.name for p in tmp_path.iterdir()] == [".partial"]
    assert rec.write("/a/joint_states", 2 * 10**9, joint_state_cdr(rec))
    assert not rec.write("/unknown", 2 * 10**9, b"")
    rec.set_instruction("close the drawer", 3 * 10**9)
    summary = rec.stop(4 * 10**9)
    assert summary.path == final and final.is_dir() and not summary.success
    assert summary.duration == pytest.approx(3.0)
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # partial moved
    # The storage file carries the episode's name, not a temporary one.
    assert [p.name for p in final.iterdir() if p.suffix == ".mcap"] == [f"{final.name}.mcap"]
    with BagReader(final) as bag:
        contents = bag.contents()
        assert contents.custom_data[META_INSTRUCTION] == "close the drawer"
        assert contents.custom_data[META_SUCCESS] == "false"
        assert contents.topics["/vla/instruction"].count == 2
        assert contents.topics["/a/joint_states"].count == 1


def test_controls_in_the_wrong_state_and_bad_settings(tmp_path: Path) -> None:
    rec = make(tmp_path / "out", storage="sqlite3")
    for control in (lambda: rec.stop(0), rec.discard, rec.mark_success):
        with pytest.raises(RecordingError, match="no episode is being recorded"):
            control()
    rec.start(0)
    with pytest.raises(RecordingError, match="already recording episode_0000_"):
        rec.start(1)
    with pytest.raises(RecordingError, match="empty instruction"):
        rec.set_instruction("  ", 1)
    rec.mark_success()
    assert rec.stop(5).success
    second = rec.start(10)
    assert second.name.startswith("episode_0001_")
    rec.close()  # shutdown while recording: never stopped, so discarded
    assert not second.exists() and len(list((tmp_path / "out").iterdir())) == 1
    with pytest.raises(ValueError, match="storage must be one of .* got 'bag'"):
        make(tmp_path, storage="bag")
    with pytest.raises(ValueError, match="no topics"):
        EpisodeRecorder(tmp_path, {}, "/i", "/s")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recorded_episodes_carry_a_checksum_of_every_message(tmp_path: Path,
                                                             storage: str) -> None:
    """A flipped bit in a recorded message is found by the reader (it once read as good)."""
    rec = make(tmp_path, instruction="open the drawer", storage=storage)
    rec.start(10**9)
    raw = joint_state_cdr(rec)
    for k in range(50):
        assert rec.write("/a/joint_states", 2 * 10**9 + k, raw)
    final = rec.stop(3 * 10**9)
    [storage_file] = [p for p in final.path.iterdir() if p.suffix in (".mcap", ".db3")]
    data = bytearray(storage_file.read_bytes())
    pos = data.find(np.float64(0.5).tobytes(), len(data) // 4)  # one message's joint value
    assert pos > 0
    data[pos + 7] ^= 0x20
    storage_file.write_bytes(bytes(data))
    with BagReader(final.path) as bag, pytest.raises(BagError, match="checksum mismatch"):
        index = bag.index(["/a/joint_states"], load=["/a/joint_states"])
        list(bag.fetch([(index["/a/joint_states"], np.arange(50))]))
