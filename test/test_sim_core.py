"""The simulated ALOHA core (no ROS): units, gripper mapping, control, cameras, reward, scripts."""

from __future__ import annotations

import numpy as np
import pytest

from vla_policy_node.config import RobotConfig
from vla_policy_node.sim import AlohaSim, SimConfig, SimError
from vla_policy_node.sim import scripted


@pytest.fixture(scope="module")
def robot() -> RobotConfig:
    return RobotConfig.from_file(node_name="sim_aloha")


@pytest.fixture(scope="module")
def sim(robot: RobotConfig) -> AlohaSim:
    s = AlohaSim(robot, SimConfig(camera_height=48, camera_width=64))
    yield s
    s.close()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(SimError, match="'stacking'"):
        SimConfig(task="stacking")
    with pytest.raises(SimError, match="camera_width"):
        SimConfig(camera_width=0)
    with pytest.raises(SimError, match="control_period"):
        SimConfig(control_period=float("nan"))
    with pytest.raises(SimError, match="finger"):
        SimConfig(finger_open_position=0.03, finger_close_position=0.03)


def test_config_from_yaml_section() -> None:
    from vla_policy_node.config import default_config_path, load_node_params
    params = load_node_params(default_config_path(), "sim_aloha")
    config = SimConfig.from_params(params)
    assert config.control_period == pytest.approx(1.0 / params["physics_rate_hz"])
    assert (config.camera_height, config.camera_width) == (
        params["camera_height"], params["camera_width"])
    assert config.finger_open_position == params["sim.finger_open_position"]


def test_reset_puts_arms_at_start_pose(sim: AlohaSim) -> None:
    sim.reset("transfer_cube", seed=3)
    q = sim.joint_positions()
    assert q.shape == (14,)
    np.testing.assert_allclose(q[[0, 1, 2, 3, 4, 5]], [0, -0.96, 1.16, 0, -0.3, 0], atol=1e-9)
    np.testing.assert_allclose(q[7:13], q[0:6])
    assert sim.time == 0.0 and sim.reward == 0 and not sim.success
    # The seed fixes the object placement, like gym-aloha's.
    first = sim.object_poses()
    sim.reset(seed=4)
    assert not np.allclose(first, sim.object_poses())
    sim.reset(seed=3)
    np.testing.assert_allclose(first, sim.object_poses())


def test_step_moves_joints_towards_target_at_control_period(sim: AlohaSim) -> None:
    sim.reset("transfer_cube", seed=0)
    target = sim.joint_positions()
    target[0] += 0.3          # left waist
    target[8] -= 0.2          # right shoulder
    target[13] = 1.0          # right gripper open
    for _ in range(50):
        sim.step(target)
    assert sim.time == pytest.approx(50 * sim.config.control_period)
    q = sim.joint_positions()
    assert q[0] == pytest.approx(target[0], abs=0.02)
    assert q[8] == pytest.approx(target[8], abs=0.03)
    assert q[13] > 0.9
    assert q[6] < 0.2         # the other gripper was not touched


def test_step_rejects_bad_targets_without_moving(sim: AlohaSim) -> None:
    sim.reset("transfer_cube", seed=0)
    before = sim.target
    bad = before.copy()
    bad[4] = np.nan
    with pytest.raises(SimError, match="left_wrist_angle"):
        sim.step(bad)
    with pytest.raises(SimError, match="shape"):
        sim.step(before[:7])
    np.testing.assert_array_equal(sim.target, before)
    assert sim.steps == 0


def test_out_of_range_target_is_held_at_the_joint_limit(sim: AlohaSim,
                                                        robot: RobotConfig) -> None:
    sim.reset("transfer_cube", seed=0)
    target = sim.joint_positions()
    target[2] = 10.0          # far beyond the elbow's limit
    for _ in range(100):
        sim.step(target)
    q = sim.joint_positions()
    assert q[2] <= robot.position_max[2] + 0.01


def test_gripper_maps_to_interbotix_driver_units(sim: AlohaSim, robot: RobotConfig) -> None:
    sim.reset("transfer_cube", seed=0)
    target = sim.joint_positions()
    target[6] = 1.0
    for _ in range(60):
        sim.step(target)
    states = sim.driver_joint_states()
    assert [s["arm"] for s in states] == list(robot.arms)
    left = states[0]
    assert left["name"] == ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle",
                            "wrist_rotate", "gripper", "left_finger", "right_finger"]
    normalized = sim.joint_positions()[6]
    assert left["position"][6] == pytest.approx(robot.unnormalize_gripper(normalized))
    # Open: close to the driver's open position; fingers symmetric, in metres.
    assert left["position"][6] == pytest.approx(robot.gripper_open_position, abs=0.05)
    assert left["position"][7] == pytest.approx(-left["position"][8], abs=1e-3)
    assert 0.05 < left["position"][7] < 0.06
    assert len(left["velocity"]) == len(left["effort"]) == 9


@pytest.mark.parametrize("command", [0.0, 0.5, 1.0])
def test_empty_gripper_reads_back_what_it_was_commanded(sim: AlohaSim, command: float) -> None:
    # Calibration: an empty gripper commanded closed reads closed, open reads open (both arms).
    sim.reset("transfer_cube", seed=0)
    target = sim.joint_positions()
    target[[6, 13]] = command
    for _ in range(60):
        sim.step(target)
    assert sim.joint_positions()[[6, 13]] == pytest.approx([command, command], abs=0.03)


def test_render_only_requested_cameras(sim: AlohaSim) -> None:
    images = sim.render(["top", "left_wrist"])
    assert set(images) == {"top", "left_wrist"}
    for image in images.values():
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        assert image.std() > 1.0              # a scene, not a blank buffer
    assert not np.array_equal(images["top"], images["left_wrist"])
    with pytest.raises(SimError, match="cam_high"):
        sim.render(["cam_high"])


def test_task_switch_and_reward_starts_at_zero(sim: AlohaSim) -> None:
    sim.reset("insertion", seed=1)
    assert sim.task == "insertion" and sim.object_poses().shape == (2, 7)
    sim.step()
    assert sim.reward == 0
    sim.reset("transfer_cube", seed=1)
    assert sim.object_poses().shape == (1, 7)


def test_waypoint_interpolation() -> None:
    q = scripted.quat_about([0, 0, 1], 0)
    a = scripted.Waypoint(0, np.zeros(3), q, 0.0)
    b = scripted.Waypoint(10, np.ones(3), q, 1.0)
    xyz, quat, gripper = scripted.interpolate([a, b], 5)
    np.testing.assert_allclose(xyz, 0.5)
    assert gripper == pytest.approx(0.5)
    np.testing.assert_allclose(quat, [1, 0, 0, 0])
    assert scripted.interpolate([a, b], 20)[2] == 1.0


def test_scripted_transfer_cube_episode_succeeds(robot: RobotConfig, sim: AlohaSim) -> None:
    trajectory = scripted.plan_joint_trajectory(robot, "transfer_cube", seed=0)
    assert trajectory.actions.shape == (scripted.EPISODE_STEPS["transfer_cube"], 14)
    steps = list(scripted.run_scripted_episode(sim, trajectory, cameras=["top"],
                                               camera_every=100))
    assert sim.success
    assert [s.reward for s in steps][-1] == 4
    times = np.array([s.time for s in steps])
    np.testing.assert_allclose(np.diff(times), sim.config.control_period, atol=1e-9)
    assert sum(bool(s.images) for s in steps) == 4
    # The demonstration stays within the robot's limits.
    actions = np.stack([s.action for s in steps])
    assert np.all(actions >= robot.position_min) and np.all(actions <= robot.position_max)


def test_scripted_insertion_episode_succeeds_after_tuning(robot: RobotConfig,
                                                          sim: AlohaSim) -> None:
    trajectory = scripted.plan_joint_trajectory(robot, "insertion", seed=2)
    tuned = scripted.tune_replay(sim, trajectory)
    for _ in scripted.run_scripted_episode(sim, tuned):
        pass
    assert sim.success
