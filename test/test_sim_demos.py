"""Scripted simulated demonstrations recorded as bags that the project's converter accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_policy_node.data.bags import BagReader
from vla_policy_node.data.convert import convert_bag
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.sim import AlohaSim, INSTRUCTIONS, SimConfig, SimError
from vla_policy_node.sim.demos import write_scripted_bag

CAMERAS = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist"}


def test_scripted_transfer_bag_converts_with_instruction_and_success(tmp_path: Path) -> None:
    spec = DataSpec.from_file(action_source="commands")
    with AlohaSim(spec.robot, SimConfig(camera_height=48, camera_width=64)) as sim:
        ok = write_scripted_bag(tmp_path / "bag", spec, sim, "transfer_cube", 0, CAMERAS,
                                camera_rate_hz=10.0)
    assert ok
    with BagReader(tmp_path / "bag") as reader:
        contents = reader.contents()
    # 400 steps at 50 Hz: joint states and commands every step, images at 10 Hz.
    assert contents.topics["/follower_left/joint_states"].count == 400
    assert contents.topics["/follower_right/commands/joint_single"].count == 400
    assert contents.topics["/cam_high/camera/color/image_rect_raw"].count == 80
    assert contents.custom_data["vla.success"] == "true"
    report = convert_bag(tmp_path / "bag", spec, tmp_path / "out")
    assert report.status == "converted", report.error
    assert report.instruction == INSTRUCTIONS["transfer_cube"]
    assert report.success is True
    assert report.duration == pytest.approx(8.0, abs=0.2)
    assert report.frames > 150 and report.dropped_frames == 0


def test_scripted_bag_needs_command_actions(tmp_path: Path) -> None:
    spec = DataSpec.from_file(action_source="leader")
    with AlohaSim(spec.robot, SimConfig(camera_height=48, camera_width=64)) as sim:
        with pytest.raises(SimError, match="leader"):
            write_scripted_bag(tmp_path / "bag", spec, sim, "transfer_cube", 0, CAMERAS)
