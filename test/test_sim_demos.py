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


def test_scripted_episode_through_ros_is_recorded_by_vla_record(spawn, tmp_path: Path) -> None:
    """sim_aloha + vla-record as processes, the scripted teleoperator commanding over DDS."""
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
    assert contents.topics["/cam_left_wrist/camera/color/image_rect_raw"].count >= 80
    # The configuration says teleoperation (leader arms); the bag says where its actions are.
    assert contents.custom_data["vla.action_source"] == "commands"
    converted = convert_bag(bag, DataSpec.from_file(config), tmp_path / "out")
    assert converted.status == "converted", converted.error
    assert converted.success is True
    assert converted.instruction == INSTRUCTIONS["transfer_cube"]
    assert converted.frames >= 190 and converted.dropped_frames == 0
