"""Scripted simulated demonstrations recorded as bags that the project's converter accepts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import sys

import pytest

from vla_policy_node.config import default_config_path
from vla_policy_node.data.bags import BagReader
from vla_policy_node.data.convert import convert_bag
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.sim import AlohaSim, INSTRUCTIONS, SimConfig, SimError
from vla_policy_node.sim.demos import write_scripted_bag

CAMERAS = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist"}


@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_scripted_transfer_bag_converts_with_instruction_and_success(tmp_path: Path,
                                                                     transport: str) -> None:
    spec = DataSpec.from_file(action_source="commands")
    recorded = dataclasses.replace(spec, camera_transports=(transport,) * 3)
    with AlohaSim(spec.robot, SimConfig(camera_height=48, camera_width=64)) as sim:
        ok = write_scripted_bag(tmp_path / "bag", recorded, sim, "transfer_cube", 0, CAMERAS,
                                camera_rate_hz=10.0)
    assert ok
    with BagReader(tmp_path / "bag") as reader:
        contents = reader.contents()
    # 400 steps at 50 Hz: joint states and commands every step, images at 10 Hz.
    assert contents.topics["/follower_left/joint_states"].count == 400
    assert contents.topics["/follower_right/commands/joint_single"].count == 400
    suffix = "/compressed" if transport == "compressed" else ""
    assert contents.topics["/cam_high/camera/color/image_rect_raw" + suffix].count == 80
    assert contents.custom_data["vla.success"] == "true"
    report = convert_bag(tmp_path / "bag", spec, tmp_path / "out")
    assert report.status == "converted", report.error
    assert report.instruction == INSTRUCTIONS["transfer_cube"]
    assert report.success is True
    assert report.duration == pytest.approx(8.0, abs=0.2)
    assert report.frames > 150 and report.dropped_frames == 0
    # The configuration names raw topics: a JPEG bag converts through the /compressed sibling.
    from vla_policy_node.data.episodes import Episode
    with Episode(tmp_path / "out" / report.outputs[0]) as episode:
        assert episode.image("cam_high", 40).shape == (48, 64, 3)


def test_scripted_bag_needs_command_actions(tmp_path: Path) -> None:
    spec = DataSpec.from_file(action_source="leader")
    with AlohaSim(spec.robot, SimConfig(camera_height=48, camera_width=64)) as sim:
        with pytest.raises(SimError, match="leader"):
            write_scripted_bag(tmp_path / "bag", spec, sim, "transfer_cube", 0, CAMERAS)


def _small_camera_config(tmp_path: Path) -> Path:
    """config/aloha.yaml with 48x64 simulated cameras (rendering dominates the sim's cost)."""
    import yaml
    document = yaml.safe_load(Path(default_config_path()).read_text())
    document["sim_aloha"]["ros__parameters"].update(camera_height=48, camera_width=64)
    path = tmp_path / "aloha_small.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _layout(path: Path) -> dict[str, tuple]:
    """Every dataset of an episode file: name -> (shape without the time axis, dtype)."""
    import h5py
    found: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: found.__setitem__(name, (item.shape[1:], item.dtype))
                     if isinstance(item, h5py.Dataset) else None)
    return found


def test_scripted_episode_through_ros_is_recorded_by_vla_record(spawn, tmp_path: Path) -> None:
    """sim_aloha + vla-record as processes, the scripted teleoperator commanding over DDS;
    the cameras recorded as JPEG CompressedImage (sim_aloha's <topic>/compressed)."""
    config = _small_camera_config(tmp_path)
    bags, report_path = tmp_path / "bags", tmp_path / "report.json"
    tool = spawn([sys.executable, "-m", "vla_policy_node.tools.sim_demos", "--out", str(bags),
                  "--episodes", "1", "--first-seed", "3", "--config", str(config),
                  "--json", str(report_path)], name="vla-sim-demos")
    assert tool.process.wait(timeout=300) == 0, tool.output()[-5000:]
    report = json.loads(report_path.read_text())
    logs = {p.name: p.read_text()[-2000:] for p in (bags / "logs").glob("*.log")}
    assert report["successes"] == 1, (report, logs)
    [bag] = report["bags"]
    assert Path(bag).parent == bags and not (bags / ".partial").exists()
    # The seed of each bag, for training provenance (evaluation seeds stay apart).
    assert json.loads((bags / "sim_seeds.json").read_text()) == {Path(bag).name: 3}
    with BagReader(bag) as reader:
        contents = reader.contents()
    assert contents.custom_data["vla.success"] == "true"
    assert contents.custom_data["vla.instruction"] == INSTRUCTIONS["transfer_cube"]
    # Recorded by the recorder from the graph: commands and states at the 50 Hz control
    # rate over the 8 s episode, images at the 10 Hz camera rate.
    assert contents.topics["/follower_left/commands/joint_group"].count == 400
    assert contents.topics["/follower_right/joint_states"].count >= 400
    for camera in CAMERAS:
        topic = f"/{camera}/camera/color/image_rect_raw"
        assert topic not in contents.topics
        assert contents.topics[topic + "/compressed"].msgtype == \
            "sensor_msgs/msg/CompressedImage"
        assert contents.topics[topic + "/compressed"].count >= 80
    # The configuration says teleoperation (leader arms); the bag says where its actions are.
    assert contents.custom_data["vla.action_source"] == "commands"
    converted = convert_bag(bag, DataSpec.from_file(config), tmp_path / "out")
    assert converted.status == "converted", converted.error
    assert converted.success is True
    assert converted.instruction == INSTRUCTIONS["transfer_cube"]
    assert converted.frames >= 190 and converted.dropped_frames == 0
    # The same dataset layout as raw frames give (here the --direct writer's raw bag of the
    # same episode): datasets, per-frame shapes and dtypes.
    spec = DataSpec.from_file(config, action_source="commands")
    with AlohaSim(spec.robot, SimConfig(camera_height=48, camera_width=64)) as sim:
        assert write_scripted_bag(tmp_path / "raw_bag", spec, sim, "transfer_cube", 3, CAMERAS)
    raw = convert_bag(tmp_path / "raw_bag", spec, tmp_path / "raw_out")
    assert raw.status == "converted", raw.error
    assert _layout(tmp_path / "out" / converted.outputs[0]) == \
        _layout(tmp_path / "raw_out" / raw.outputs[0])
    from vla_policy_node.data.episodes import Episode
    with Episode(tmp_path / "out" / converted.outputs[0]) as episode:
        assert episode.image("cam_high", 100).shape == (48, 64, 3)


@pytest.mark.parametrize("raw_images", [False, True])
def test_ros_recorder_records_jpeg_unless_raw_images(tmp_path: Path, raw_images: bool) -> None:
    """vla-sim-demos through ROS: the recorder's topic set (what the node derives from its
    camera_transports parameter) holds the cameras' /compressed siblings, or with --raw-images
    the raw topics, whatever vla_policy cameras.transports says."""
    from vla_policy_node.tools.sim_demos import node_set
    config = str(default_config_path())
    [_, recorder] = node_set(config, tmp_path, "mcap", "transfer_cube", 0, raw_images)
    topics = DataSpec.from_file(config, action_source="commands", camera_transports=(
        recorder.overrides["camera_transports"])).record_topics()
    for camera in CAMERAS:
        topic = f"/{camera}/camera/color/image_rect_raw"
        if raw_images:
            assert topics[topic] == "sensor_msgs/msg/Image" and topic + "/compressed" \
                not in topics
        else:
            assert topics[topic + "/compressed"] == "sensor_msgs/msg/CompressedImage"
            assert topic not in topics
