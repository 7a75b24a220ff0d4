"""Bag -> HDF5 conversion: alignment, both storages, compressed images, every bad-bag case."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
import signal
import subprocess
import sys

import numpy as np
import pytest

from vla_policy_node.data import convert
from vla_policy_node.data.bags import BagReader, BagWriter
from vla_policy_node.data.convert import convert_bags, ConvertOptions, MANIFEST_FILE
from vla_policy_node.data.episodes import action_window, Episode
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.stats import STATISTICS_FILE
from vla_policy_node.data.synthetic import arm_trajectory, render, SyntheticEpisode, \
    write_episode_bag

from test_data_bags import kill_sqlite_recording

SPEC = DataSpec.from_file()
N_JOINTS = len(SPEC.robot.arm_joint_names)


def expected_pose(t: np.ndarray, seed: int, lead: float = 0.0) -> np.ndarray:
    """(N, 14) model-order vector the synthetic trajectory has at times t (s from start)."""
    return np.concatenate([arm_trajectory(t + lead, i, N_JOINTS, seed)
                           for i in range(len(SPEC.robot.arms))], axis=1)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_converts_a_bag_with_latest_before_alignment(tmp_path: Path, storage: str) -> None:
    bag = write_episode_bag(tmp_path / "bags" / "episode_1", SPEC,
                            SyntheticEpisode(duration=2.0, seed=3, storage=storage))
    out = tmp_path / "data"
    [report] = convert_bags([bag], SPEC, out)
    assert report.status == "converted", report.error
    assert report.outputs == ["episode_1.hdf5"]
    assert report.frames == 50 and report.dropped_frames == 0 and report.gaps == []
    with Episode(out / "episode_1.hdf5") as ep:
        assert len(ep) == 50
        assert ep.instruction == "pick up the cube" and ep.success
        assert list(ep.joint_names) == list(SPEC.robot.joint_names)
        assert ep.camera_names == SPEC.camera_names
        # Clock: 25 Hz from the moment every stream has a message (the first camera frame
        # is stamped at t=0, joint states too).
        t = ep.timestamp - 1000.0
        np.testing.assert_allclose(np.diff(t), 0.04, atol=1e-9)
        # Latest-before at 100 Hz joint states: the sample at floor(t * 100) / 100.
        t_joint = np.floor(t * 100 + 1e-6) / 100
        np.testing.assert_allclose(ep.qpos, expected_pose(t_joint, 3), atol=1e-9)
        np.testing.assert_allclose(ep.action, expected_pose(t_joint, 3, lead=0.06), atol=1e-9)
        # Images: the latest camera frame (30 Hz) at or before each tick, pixel-exact.
        for frame in (0, 17, 49):
            k = int(np.floor(t[frame] * 30 + 1e-6))
            pose = expected_pose(np.array([k / 30]), 3)[0]
            for c, cam in enumerate(SPEC.camera_names):
                np.testing.assert_array_equal(ep.image(cam, frame), render(pose, (48, 64), c))
    stats = json.loads((out / STATISTICS_FILE).read_text())["aloha"]
    with Episode(out / "episode_1.hdf5") as ep:
        np.testing.assert_allclose(stats["action"]["min"], ep.action.min(0))
        np.testing.assert_allclose(stats["proprio"]["q99"], np.quantile(ep.qpos, 0.99, 0))
    assert stats["num_transitions"] == 50 and stats["num_trajectories"] == 1
    assert stats["action"]["mask"] == [True] * 14


def test_rerun_is_idempotent_and_force_gives_identical_files(tmp_path: Path) -> None:
    bags = [write_episode_bag(tmp_path / f"ep{i}", SPEC, SyntheticEpisode(seed=i))
            for i in range(2)]
    out = tmp_path / "data"
    first = convert_bags(bags, SPEC, out)
    assert [r.status for r in first] == ["converted", "converted"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.hdf5")}
    stats = (out / STATISTICS_FILE).read_text()
    second = convert_bags(bags, SPEC, out)
    assert [r.status for r in second] == ["unchanged", "unchanged"]
    assert [r.frames for r in second] == [r.frames for r in first]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.hdf5")} == mtimes
    assert (out / STATISTICS_FILE).read_text() == stats
    with Episode(out / "ep1.hdf5") as ep:
        before = (ep.qpos.copy(), ep.image("cam_high", 10))
    third = convert_bags(bags, SPEC, out, ConvertOptions(force=True))
    assert [r.status for r in third] == ["converted", "converted"]
    with Episode(out / "ep1.hdf5") as ep:
        np.testing.assert_array_equal(ep.qpos, before[0])
        np.testing.assert_array_equal(ep.image("cam_high", 10), before[1])
    assert (out / STATISTICS_FILE).read_text() == stats
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ep0.hdf5", "ep1.hdf5", MANIFEST_FILE, STATISTICS_FILE])


def test_compressed_cameras_and_resize(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "jpeg", SPEC, SyntheticEpisode(compressed=True))
    [report] = convert_bags([bag], SPEC, tmp_path / "data",
                            ConvertOptions(image_size=(24, 32), compression="lzf"))
    assert report.status == "converted", report.error
    with Episode(tmp_path / "data" / "jpeg.hdf5") as ep:
        assert ep.image("cam_left_wrist", 0).shape == (24, 32, 3)
        assert json.loads(ep.attrs["camera_topics"])["cam_high"].endswith("/compressed")


def test_bad_bags_are_reported_and_skipped_the_rest_converted(tmp_path: Path) -> None:
    good = write_episode_bag(tmp_path / "good", SPEC)
    truncated = write_episode_bag(tmp_path / "truncated", SPEC)
    storage_file = next(truncated.glob("*.mcap"))
    storage_file.write_bytes(storage_file.read_bytes()[:20000])
    missing = write_episode_bag(tmp_path / "missing", SPEC, SyntheticEpisode(
        omit_topics=["/cam_right_wrist/camera/color/image_rect_raw"]))
    renamed = write_episode_bag(tmp_path / "renamed", SPEC, SyntheticEpisode(
        joint_names=["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]))
    nonexistent = tmp_path / "nope"
    out = tmp_path / "data"
    reports = convert_bags([truncated, good, missing, renamed, nonexistent], SPEC, out)
    status = {Path(r.bag).name: r for r in reports}
    assert status["good"].status == "converted"
    assert status["truncated"].status == "failed"
    # Cut inside the first chunk: nothing complete to recover.
    assert "interrupted before any message was completely written" in status["truncated"].error
    assert status["missing"].status == "failed"
    assert "camera 'cam_right_wrist'" in status["missing"].error
    assert status["renamed"].status == "failed"
    assert "['waist', 'shoulder'" in status["renamed"].error
    assert "joint1" in status["renamed"].error
    assert status["nope"].status == "failed" and "not found" in status["nope"].error
    assert sorted(p.name for p in out.glob("*.hdf5")) == ["good.hdf5"]
    assert not list(out.glob(".*.tmp"))
    stats = json.loads((out / STATISTICS_FILE).read_text())["aloha"]
    assert stats["num_trajectories"] == 1


def test_an_unexpected_error_fails_only_its_bag_and_ctrl_c_stops_the_run(
        tmp_path: Path, monkeypatch) -> None:
    bags = [write_episode_bag(tmp_path / name, SPEC) for name in ("bad", "good")]
    real = convert._BagStreams

    def flaky(reader: BagReader, spec: DataSpec) -> convert._BagStreams:
        if reader.path.name == "bad":  # e.g. an OverflowError out of numpy on a damaged bag
            raise OverflowError("Python int too large to convert to C long")
        return real(reader, spec)

    monkeypatch.setattr(convert, "_BagStreams", flaky)
    out = tmp_path / "data"
    reports = convert_bags(bags, SPEC, out)
    assert [r.status for r in reports] == ["failed", "converted"]
    assert reports[0].error == "OverflowError: Python int too large to convert to C long"
    assert sorted(p.name for p in out.glob("*.hdf5")) == ["good.hdf5"]

    def interrupted(reader: BagReader, spec: DataSpec) -> convert._BagStreams:
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "_BagStreams", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_bags(bags, SPEC, out, ConvertOptions(force=True))
    assert not list(out.glob(".*.tmp"))


def test_a_truncated_image_message_fails_its_bag_naming_the_camera(tmp_path: Path) -> None:
    source = write_episode_bag(tmp_path / "source", SPEC, SyntheticEpisode(duration=1.0))
    bad = tmp_path / "bad"
    camera_topic = SPEC.camera_topics[1]
    with BagReader(source) as reader, BagWriter(bad) as writer:
        contents = reader.contents()
        for topic, info in contents.topics.items():
            writer.add_topic(topic, info.msgtype)
        for key, value in contents.custom_data.items():
            writer.set_custom_data(key, value)
        frames = 0
        for topic, _, log_ns, raw in reader.messages(sorted(contents.topics)):
            if topic == camera_topic:
                frames += 1
                raw = raw[:200] if frames == 5 else raw  # cut inside the pixel data
            writer.write_raw(topic, log_ns, raw)
    [report] = convert_bags([bad], SPEC, tmp_path / "data")
    assert report.status == "failed"
    assert f"camera {SPEC.camera_names[1]} ({camera_topic}) message 4" in report.error
    assert "truncated sensor_msgs/Image: data needs" in report.error
    assert not list((tmp_path / "data").glob("*.hdf5"))


def test_camera_gap_splits_the_episode_and_is_reported(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "gappy", SPEC, SyntheticEpisode(
        duration=4.0, camera_gap=(1.5, 2.0)))
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "converted", report.error
    assert report.outputs == ["gappy_seg0.hdf5", "gappy_seg1.hdf5"]
    assert len(report.gaps) == 1
    gap = report.gaps[0]
    # Last frame before the gap at ~1.467 s; stale from 1.467 + 0.1 s on, fresh at 2.0 s.
    assert 1.5 <= gap["start"] <= 1.6 and 0.36 <= gap["duration"] <= 0.48
    assert gap["streams"] == [f"camera:{c}" for c in sorted(SPEC.camera_names)]
    lengths = []
    for name in report.outputs:
        with Episode(tmp_path / "data" / name) as ep:
            lengths.append(len(ep))
            assert np.all(np.diff(ep.timestamp) < 0.041)  # no gap inside a segment
    assert sum(lengths) == report.frames
    assert report.frames + report.dropped_frames == 100


def test_min_segment_duration_drops_short_runs(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "gappy", SPEC, SyntheticEpisode(
        duration=3.0, camera_gap=(0.5, 1.0)))
    spec = DataSpec.from_file(min_segment_duration=1.0)
    [report] = convert_bags([bag], spec, tmp_path / "data")
    assert report.outputs == ["gappy.hdf5"]  # the 0.5 s run before the gap is too short
    assert report.dropped_frames > 10


def test_executor_commands_as_action_source(tmp_path: Path) -> None:
    spec = DataSpec.from_file(action_source="commands")
    bag = write_episode_bag(tmp_path / "cmd", spec, SyntheticEpisode(seed=1))
    [report] = convert_bags([bag], spec, tmp_path / "data")
    assert report.status == "converted", report.error
    with Episode(tmp_path / "data" / "cmd.hdf5") as ep:
        t = ep.timestamp - 1000.0
        t_cmd = np.floor(t * 50 + 1e-6) / 50  # commands at 50 Hz, log-time stamped
        # float32 on the wire
        np.testing.assert_allclose(ep.action, expected_pose(t_cmd, 1, lead=0.06), atol=1e-6)


def test_the_bag_recorded_action_source_wins_unless_the_user_chose_one(tmp_path: Path) -> None:
    commands = DataSpec.from_file(action_source="commands")
    bag = write_episode_bag(tmp_path / "cmd", commands, SyntheticEpisode(seed=1))
    # SPEC (the config) says leader arms; the bag says commands, and has no leader topics.
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "converted", report.error
    [report] = convert_bags([bag], SPEC, tmp_path / "forced",
                            ConvertOptions(action_source_from_bag=False))
    assert report.status == "failed" and "leader" in report.error


def test_instruction_success_and_missing_metadata(tmp_path: Path) -> None:
    failed = write_episode_bag(tmp_path / "failed_ep", SPEC, SyntheticEpisode(success=False))
    silent = write_episode_bag(tmp_path / "silent", SPEC, SyntheticEpisode(
        instruction=None, success=None))
    out = tmp_path / "data"
    reports = {Path(r.bag).name: r for r in convert_bags(
        [failed, silent], SPEC, out, ConvertOptions(only_success=True))}
    assert reports["failed_ep"].status == "skipped"
    assert reports["silent"].status == "failed" and "--instruction" in reports["silent"].error
    [report] = convert_bags([silent], SPEC, out, ConvertOptions(instruction="fold the towel"))
    assert report.status == "converted"
    with Episode(out / "silent.hdf5") as ep:
        assert ep.instruction == "fold the towel" and ep.success is None


def test_bag_without_metadata_yaml_is_read_from_its_storage_file(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "killed", SPEC, SyntheticEpisode(storage="sqlite3"))
    (bag / "metadata.yaml").unlink()  # ros2 bag record killed before writing it
    [report] = convert_bags([bag], SPEC, tmp_path / "data",
                            ConvertOptions(instruction="pick up the cube"))
    assert report.status == "converted", report.error
    assert report.frames == 50


KILLED_RECORDER = """
import os, signal, sys
from vla_policy_node.data.bags import BagReader, BagWriter
with BagReader(sys.argv[1]) as reader:
    writer = BagWriter(sys.argv[2])  # as vla-record writes an episode
    topics = reader.contents().topics
    for topic, info in topics.items():
        writer.add_topic(topic, info.msgtype)
    for topic, _, log_ns, raw in reader.messages(sorted(topics)):
        writer.write_raw(topic, log_ns, raw)
os.kill(os.getpid(), signal.SIGKILL)  # the chunk being filled and the summary are lost
"""


@pytest.mark.parametrize("storage", ["mcap", "sqlite3-wal"])
def test_killed_recording_converts_what_was_written(tmp_path: Path, storage: str) -> None:
    source = write_episode_bag(tmp_path / "source", SPEC, SyntheticEpisode(
        duration=4.0, storage=storage[:7], success=None))
    killed = tmp_path / "killed"
    if storage == "mcap":
        run = subprocess.run([sys.executable, "-c", KILLED_RECORDER, str(source),
                              str(killed)], capture_output=True, text=True)
        assert run.returncode == -signal.SIGKILL, run.stderr
        [mcap] = killed.glob("*.mcap")
    else:  # 3 s of the 4 committed, the rest not
        with BagReader(source) as reader:
            start = reader.contents().start_ns
            messages = sum(1 for *_, t, _ in reader.messages(sorted(reader.contents().topics))
                           if t < start + 3 * 10**9)
        kill_sqlite_recording(source, killed, messages + 50, messages)
    out = tmp_path / "data"
    [report] = convert_bags([killed], SPEC, out, ConvertOptions(force=True))
    assert report.status == "converted", report.error
    assert report.instruction == "pick up the cube"  # from the topic: no metadata.yaml
    storage_file = mcap.name if storage == "mcap" else "killed_0.db3"
    assert report.warnings[0] == (
        f"no metadata.yaml (recording interrupted?): read {storage_file} directly")
    if storage == "mcap":  # 3 of the 4 s were written in whole 1 MB chunks
        [lost] = report.warnings[1:]
        assert lost.startswith(f"{mcap.name}: recording interrupted: read its first ")
        assert 60 <= report.frames <= 90
    else:
        assert "write-ahead log" in report.warnings[1] and 70 <= report.frames <= 76
    # Reading changed nothing that the next run's fingerprint looks at.
    [again] = convert_bags([killed], SPEC, out)
    assert again.status == "unchanged" and again.warnings == report.warnings


def test_action_window_pads_with_the_last_action() -> None:
    actions = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(action_window(actions, 1, 3), actions[1:4])
    window = action_window(actions, 4, 4)
    np.testing.assert_array_equal(window, [[8, 9], [10, 11], [10, 11], [10, 11]])


# ---- damaged recordings: checksums ----------------------------------------------------------

def episode_arrays(path: Path) -> list[np.ndarray]:
    with Episode(path) as ep:
        return [ep.qpos.copy(), ep.action.copy()] + [
            np.stack([ep.image(c, i) for i in range(len(ep))]) for c in ep.camera_names]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_flipped_bytes_in_a_recorded_bag_never_convert_silently(tmp_path: Path,
                                                                 storage: str) -> None:
    """20 random bytes flipped anywhere in the storage file: the episode fails (checksum,
    SQLite integrity), or the report warns, or the data is exactly the undamaged data
    (bytes nobody reads). Before bags carried checksums, the damage converted as good data."""
    clean = write_episode_bag(tmp_path / "clean", SPEC, SyntheticEpisode(storage=storage))
    [report] = convert_bags([clean], SPEC, tmp_path / "clean_data")
    assert report.status == "converted" and report.warnings == []
    reference = episode_arrays(tmp_path / "clean_data" / "clean.hdf5")
    [storage_file] = [p for p in clean.iterdir() if p.name != "metadata.yaml"]
    detected = 0
    for seed in range(6):
        bag = tmp_path / f"flipped{seed}"
        shutil.copytree(clean, bag)
        damaged = bag / storage_file.name
        data = bytearray(damaged.read_bytes())
        rng = np.random.default_rng(seed)
        for pos in rng.choice(len(data), 20, replace=False).tolist():
            data[pos] ^= int(rng.integers(1, 256))
        damaged.write_bytes(bytes(data))
        [report] = convert_bags([bag], SPEC, tmp_path / f"data{seed}")
        if report.status == "failed":
            assert "damaged" in report.error or "Error" in report.error, report.error
            detected += 1
        elif report.warnings:
            detected += 1
        else:
            assert report.status == "converted", report.error
            for got, want in zip(episode_arrays(tmp_path / f"data{seed}" / report.outputs[0]),
                                 reference):
                np.testing.assert_array_equal(got, want)
    assert detected >= 5  # images are most of the file: nearly every flip hits one


def test_a_damaged_mcap_chunk_fails_its_episode_naming_the_checksum(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC)
    [mcap] = bag.glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the images of a chunk
    mcap.write_bytes(bytes(data))
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "failed"
    assert "is damaged" in report.error and "checksum mismatch" in report.error
    assert not list((tmp_path / "data").glob("*.hdf5"))


def test_a_damaged_sqlite3_message_or_page_fails_its_episode(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC, SyntheticEpisode(storage="sqlite3"))
    [db] = bag.glob("*.db3")
    con = sqlite3.connect(db)
    (message_id, length) = con.execute(
        "SELECT m.id, length(m.data) FROM messages m JOIN topics t ON t.id = m.topic_id "
        "WHERE t.name LIKE '%cam_high%' ORDER BY m.id LIMIT 1 OFFSET 10").fetchone()
    con.close()
    blob_bag = tmp_path / "blob"
    shutil.copytree(bag, blob_bag)
    con = sqlite3.connect(blob_bag / db.name)
    with con.blobopen("messages", "data", message_id) as blob:  # one pixel, in place
        blob.seek(length - 7)
        pixel = blob.read(1)
        blob.seek(length - 7)
        blob.write(bytes([pixel[0] ^ 0x10]))
    con.commit()
    con.close()
    page_bag = tmp_path / "page"
    shutil.copytree(bag, page_bag)
    data = bytearray((page_bag / db.name).read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page] = 0x77  # the second page's b-tree page type: not a page SQLite knows
    (page_bag / db.name).write_bytes(bytes(data))
    reports = {Path(r.bag).name: r for r in convert_bags(
        [bag, blob_bag, page_bag], SPEC, tmp_path / "data")}
    assert reports["bag"].status == "converted"
    assert reports["blob"].status == "failed"
    assert f"message {message_id}: checksum mismatch" in reports["blob"].error
    assert reports["page"].status == "failed" and "damaged" in reports["page"].error


def test_a_wrong_message_count_in_metadata_yaml_is_a_warning(tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC)
    metadata = bag / "metadata.yaml"
    topic = SPEC.follower_topic(SPEC.robot.arms[0])
    text = metadata.read_text()
    at = text.index(f"name: {topic}")
    count = text.rindex("message_count: ", 0, at)  # each entry lists its count first
    end = text.index("\n", count)
    stored = int(text[count + len("message_count: "):end])
    metadata.write_text(text[:count] + f"message_count: {stored + 7}" + text[end:])
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "converted", report.error
    assert report.warnings == [f"metadata.yaml lists {stored + 7} messages on {topic}, the "
                               f"storage holds {stored} (read what is stored)"]


def test_a_damaged_mcap_summary_is_a_warning_and_the_data_section_is_read(
        tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC)
    [report] = convert_bags([bag], SPEC, tmp_path / "clean")
    reference = episode_arrays(tmp_path / "clean" / "bag.hdf5")
    [mcap] = bag.glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    footer = len(data) - 8 - 29
    summary = int.from_bytes(data[footer + 9:footer + 17], "little")
    assert int.from_bytes(data[footer + 25:footer + 29], "little") != 0  # CRC written
    data[summary + 12] ^= 0x04  # inside the first channel record: its id
    mcap.write_bytes(bytes(data))
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "converted", report.error
    assert report.warnings == [f"{mcap.name}: the summary section is damaged (checksum "
                               f"mismatch): read the data section alone"]
    for got, want in zip(episode_arrays(tmp_path / "data" / "bag.hdf5"), reference):
        np.testing.assert_array_equal(got, want)


def test_an_instruction_in_metadata_yaml_that_its_messages_contradict_is_a_warning(
        tmp_path: Path) -> None:
    bag = write_episode_bag(tmp_path / "bag", SPEC)
    metadata = bag / "metadata.yaml"
    metadata.write_text(metadata.read_text().replace("pick up the cube", "pick up the cuBe"))
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "converted", report.error
    assert report.warnings == [
        f"metadata vla.instruction 'pick up the cuBe' differs from the last message on "
        f"{SPEC.instruction_topic} 'pick up the cube' (metadata.yaml damaged or edited?); "
        f"used 'pick up the cuBe'"]


def test_a_commands_bag_without_metadata_yaml_names_the_action_source_option(
        tmp_path: Path) -> None:
    commands = DataSpec.from_file(action_source="commands")
    bag = write_episode_bag(tmp_path / "killed", commands, SyntheticEpisode(seed=1))
    (bag / "metadata.yaml").unlink()  # killed: its vla.action_source is gone with it
    [report] = convert_bags([bag], SPEC, tmp_path / "data")
    assert report.status == "failed"
    assert "(action source leader, from the config or the bag's vla.action_source; if this " \
           "bag recorded the follower commands, pass --action-source commands)" in report.error
    [report] = convert_bags([bag], commands, tmp_path / "data")  # what --action-source does
    assert report.status == "converted", report.error


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_encoded_images_store_each_camera_frame_once(tmp_path: Path, fmt: str) -> None:
    """A 10 Hz camera converted at 25 Hz: raw storage repeats pictures 2-3 times, encoded
    storage keeps each once (plus an index) and decodes with the policy's decoder."""
    bag = write_episode_bag(tmp_path / "bags" / "ep", SPEC,
                            SyntheticEpisode(duration=2.0, seed=5, camera_rate_hz=10.0))
    [raw] = convert_bags([bag], SPEC, tmp_path / "raw")
    [encoded] = convert_bags([bag], SPEC, tmp_path / fmt, ConvertOptions(compression=fmt))
    assert raw.status == encoded.status == "converted", encoded.error
    import h5py
    with h5py.File(tmp_path / fmt / "ep.hdf5", "r") as f, Episode(tmp_path / "raw" /
                                                                 "ep.hdf5") as plain:
        frames = len(plain)
        distinct = len({plain.image("cam_high", t).tobytes() for t in range(frames)})
        pictures = f["observations/images/cam_high"]
        assert pictures.attrs["encoding"] == fmt
        assert len(pictures) == distinct < frames * 0.6  # 10 of 25 frames per second are new
        assert f["observations/image_index/cam_high"].shape == (frames,)
    with Episode(tmp_path / fmt / "ep.hdf5") as ep, Episode(tmp_path / "raw" /
                                                            "ep.hdf5") as plain:
        for t in range(frames):
            for camera in SPEC.camera_names:
                a, b = ep.image(camera, t), plain.image(camera, t)
                assert a.shape == b.shape and a.dtype == np.uint8
                if fmt == "png":  # lossless
                    np.testing.assert_array_equal(a, b)
                else:
                    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4.0
    size = lambda d: sum(p.stat().st_size for p in (tmp_path / d).glob("*.hdf5"))  # noqa: E731
    assert size(fmt) < size("raw") / 2
