"""``sim_aloha`` node: a simulated bimanual ALOHA that looks like the real one on the ROS graph.

Thin plumbing around :class:`vla_policy_node.sim.AlohaSim`:

* publishes the cameras (``cameras.topics``, sensor_msgs/Image rgb8, at ``camera_rate_hz`` of
  simulated time) and, as image_transport's compressed plugin does for a real camera, their
  JPEG (``jpeg_quality``) sensor_msgs/CompressedImage on ``<topic>/compressed``; a camera is
  rendered only while someone subscribes to one of its topics, and JPEG-encoded only while
  someone subscribes to ``/compressed``,
  ``/<arm>/joint_states`` with the Interbotix driver's names and units (``joint_state_rate_hz``),
  ``/clock`` (``publish_clock``), the task's stage reward and success;
* consumes the Interbotix commands the executor sends to a real ALOHA:
  ``/<arm>/commands/joint_group`` (JointGroupCommand ``arm``, 6 joints) and
  ``/<arm>/commands/joint_single`` (JointSingleCommand ``gripper`` in driver radians, or one arm
  joint); they become the position actuators' targets. Bad commands are logged and counted,
  never applied;
* serves ``~/reset`` (std_srvs/Trigger): a new episode of the ``task`` parameter with the next
  seed. Both are settable at run time (``ros2 param set /sim_aloha seed 7`` then a reset gives
  the object placement of seed 7), which is how ``vla-sim-demos`` replays a scripted episode.

Time: the node owns simulated time. It steps the physics at ``physics_rate_hz`` and publishes
``/clock``; every other node runs with ``use_sim_time``. With ``real_time_factor`` r > 0 it paces
to r simulated seconds per wall second when it is faster; when it is slower, simulated time
simply runs slower. Stamps are simulated time.

Run: ``python -m vla_policy_node.nodes.sim_aloha --ros-args --params-file config/aloha.yaml``.
"""

from __future__ import annotations

from dataclasses import replace
import logging
import math
import sys
import threading
import time
from typing import Any

import numpy as np
from rclpy import logging as rclpy_logging
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import SetParametersResult
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64
from std_srvs.srv import Trigger

from vla_policy_node.config import RobotConfig
from vla_policy_node.nodes import interbotix
from vla_policy_node.nodes.conversions import seconds_to_time
from vla_policy_node.control.throttle import ThrottledLogger
from vla_policy_node.data.images import encode_compressed, JPEG_TRANSPORT_FORMAT
from vla_policy_node.nodes.diagnostics import Check, CounterDeltas, DiagnosticsPublisher
from vla_policy_node.nodes.diagnostics import NodeLog, RosLogHandler, summarize, WARN
from vla_policy_node.nodes.parameters import (
    declare_parameters, ParameterSpec, robot_parameter_specs)
from vla_policy_node.nodes.runner import run_node
from vla_policy_node.sim import AlohaSim, SimConfig, SimError, TASKS

NODE_NAME = "sim_aloha"
# Settable with `ros2 param set` (they apply to the next ~/reset); all others are read-only.
RUNTIME_PARAMETERS = ("task", "seed")
_STRINGS = Parameter.Type.STRING_ARRAY

SIM_PARAMETERS = (
    ParameterSpec("task", "transfer_cube", f"Task of the next reset: one of {list(TASKS)}."),
    ParameterSpec("cameras.names", None, "Published cameras (ALOHA names).", type_=_STRINGS),
    ParameterSpec("cameras.sim_names", None, "MuJoCo camera of each published camera.",
                  type_=_STRINGS),
    ParameterSpec("cameras.topics", None, "Image topic of each camera.", type_=_STRINGS),
    ParameterSpec("camera_height", 480, "Image height (pixels).", (8, 4096)),
    ParameterSpec("camera_width", 640, "Image width (pixels).", (8, 4096)),
    ParameterSpec("camera_rate_hz", 10.0, "Camera frames per simulated second.", (0.1, 1000.0)),
    ParameterSpec("jpeg_quality", 90, "JPEG quality (1-100) of the CompressedImage on "
                  "<camera topic>/compressed (encoded only while someone subscribes).",
                  (1, 100)),
    ParameterSpec("physics_rate_hz", 50.0, "Control steps per simulated second.", (1.0, 1000.0)),
    ParameterSpec("joint_state_rate_hz", 50.0, "Joint states per simulated second.",
                  (0.1, 1000.0)),
    ParameterSpec("publish_clock", True, "Publish /clock from simulated time."),
    ParameterSpec("real_time_factor", 1.0,
                  "Simulated seconds per wall second at most (0: as fast as possible).",
                  (0.0, 1000.0)),
    ParameterSpec("seed", 0, "Object placement seed of the next episode; each reset takes the "
                  "next one (-1: random). Setting it at run time applies to the next reset.",
                  (-1, 2**31 - 1)),
    ParameterSpec("reward_topic", "/sim/reward", "Stage reward (std_msgs/Float64, 0..4)."),
    ParameterSpec("success_topic", "/sim/success",
                  "Success since the last reset (std_msgs/Bool)."),
    ParameterSpec("group_topic", "/{arm}/commands/joint_group", "JointGroupCommand per arm."),
    ParameterSpec("single_topic", "/{arm}/commands/joint_single",
                  "JointSingleCommand per arm."),
    ParameterSpec("group_name", "arm", "Group name accepted in JointGroupCommand."),
    ParameterSpec("gripper_name", "gripper", "Joint name of the gripper in JointSingleCommand."),
    ParameterSpec("sim.finger_open_position", 0.057, "Simulated finger slide (m) when open."),
    ParameterSpec("sim.finger_close_position", 0.0224,
                  "Simulated finger slide (m) when closed (empty fingers touching)."),
    ParameterSpec("sim.shadows", False, "Render shadows (slow in software GL)."),
    ParameterSpec("sim.reflections", False, "Render reflections (slow in software GL)."),
)


class SimAlohaNode(Node):
    """The simulated ALOHA; :meth:`run` steps it until :meth:`stop` (on its own thread)."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        params = declare_parameters(self, robot_parameter_specs(read_only=True) + tuple(
            replace(spec, read_only=spec.name not in RUNTIME_PARAMETERS)
            for spec in SIM_PARAMETERS))
        self.params = params
        self.robot = RobotConfig.from_params(params)
        try:
            self.sim = AlohaSim(self.robot, SimConfig.from_params(params))
        except SimError as exc:
            raise ValueError(str(exc)) from exc
        names, sim_names, topics = (params["cameras.names"], params["cameras.sim_names"],
                                    params["cameras.topics"])
        if not len(names) == len(sim_names) == len(topics):
            raise ValueError(f"cameras.names {names}, cameras.sim_names {sim_names} and "
                             f"cameras.topics {topics} must have the same length")
        unknown = [c for c in sim_names if c not in self.sim.cameras]
        if unknown:
            raise ValueError(f"cameras.sim_names {unknown} are not cameras of the simulation "
                             f"(it has {list(self.sim.cameras)})")
        self.dt = self.sim.config.control_period
        self.rtf = float(params["real_time_factor"])
        seed = int(params["seed"])
        self._next_seed: int | None = None if seed < 0 else seed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._warnings = ThrottledLogger(NodeLog(self.get_logger()), 1.0)
        self.sim_time = 0.0
        self.counters = {"steps": 0, "group_commands": 0, "single_commands": 0,
                         "rejected_commands": 0, "frames": 0, "jpeg_frames": 0, "resets": 0}

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        images_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.jpeg_quality = int(params["jpeg_quality"])
        # Per camera: its raw publisher and its image_transport "compressed" sibling.
        self._cameras = [(name, sim_name, self.create_publisher(Image, topic, images_qos),
                          self.create_publisher(CompressedImage, f"{topic}/compressed",
                                                images_qos))
                         for name, sim_name, topic in zip(names, sim_names, topics)]
        suffix = self.robot.joint_states_topic_suffix
        self._joint_pubs = [self.create_publisher(JointState, f"/{arm}/{suffix}", reliable)
                            for arm in self.robot.arms]
        self._clock_pub = (self.create_publisher(Clock, "/clock", reliable)
                           if params["publish_clock"] else None)
        self._reward_pub = self.create_publisher(Float64, params["reward_topic"], reliable)
        self._success_pub = self.create_publisher(Bool, params["success_topic"], reliable)

        JointGroupCommand, JointSingleCommand = interbotix.command_types()
        groups = self.robot.arm_group_indices()
        for arm in self.robot.arms:
            group = groups[arm]
            self.create_subscription(
                JointGroupCommand, params["group_topic"].format(arm=arm),
                lambda msg, arm=arm, group=group: self._on_group(arm, group, msg), reliable)
            self.create_subscription(
                JointSingleCommand, params["single_topic"].format(arm=arm),
                lambda msg, arm=arm, group=group: self._on_single(arm, group, msg), reliable)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._reset_episode()
        self._diagnostic_deltas = CounterDeltas()
        self._last_report = (time.monotonic(), 0.0)
        self.diagnostics = DiagnosticsPublisher(self, {"simulation": self._diagnose},
                                                hardware_id="mujoco")
        self.get_logger().info(
            f"simulating ALOHA {self.sim.task} at {1 / self.dt:.0f} Hz, cameras "
            f"{[c[0] for c in self._cameras]} at {params['camera_height']}x"
            f"{params['camera_width']} {params['camera_rate_hz']} Hz (raw, and JPEG quality "
            f"{self.jpeg_quality} on <topic>/compressed), real-time factor "
            f"{self.rtf or 'unbounded'}, /clock {'on' if self._clock_pub else 'off'}")

    # ------------------------------------------------------------------ commands
    def _reject(self, arm: str, reason: str) -> None:
        self.counters["rejected_commands"] += 1
        self._warnings.warning(
            f"reject_{arm}", f"rejected command for {arm}: {reason} "
            f"({self.counters['rejected_commands']} rejected so far)")

    def _on_group(self, arm: str, group: dict[str, Any], msg: Any) -> None:
        if msg.name != self.params["group_name"]:
            self._reject(arm, f"group {msg.name!r} is not {self.params['group_name']!r}")
            return
        cmd = np.asarray(msg.cmd, dtype=np.float64)
        indices = group["joint_indices"]
        if cmd.shape != (len(indices),):
            self._reject(arm, f"{cmd.size} values for the {len(indices)} joints of the group")
            return
        if not np.all(np.isfinite(cmd)):
            self._reject(arm, f"non-finite joint command {cmd.tolist()}")
            return
        with self._lock:
            self._target[indices] = cmd
            self.counters["group_commands"] += 1

    def _on_single(self, arm: str, group: dict[str, Any], msg: Any) -> None:
        if not math.isfinite(msg.cmd):
            self._reject(arm, f"non-finite command {msg.cmd} for {msg.name!r}")
            return
        if msg.name == self.params["gripper_name"]:
            index = group["gripper_index"]
            value = float(self.robot.normalize_gripper(float(msg.cmd)))
        elif msg.name in group["driver_joint_names"]:
            index = group["joint_indices"][group["driver_joint_names"].index(msg.name)]
            value = float(msg.cmd)
        else:
            self._reject(arm, f"unknown joint {msg.name!r}")
            return
        with self._lock:
            self._target[index] = value
            self.counters["single_commands"] += 1

    # ------------------------------------------------------------------ episodes
    def _reset_episode(self) -> str:
        """Reset the sim (caller holds no lock); returns a description of the episode."""
        task = self.get_parameter("task").value
        with self._lock:
            self.sim.reset(task, seed=self._next_seed)
            self._target = self.sim.target
            seed = self._next_seed
            if self._next_seed is not None:
                self._next_seed += 1
            self.counters["resets"] += 1
        return f"task {task}, seed {seed if seed is not None else 'random'}"

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        try:
            response.message = self._reset_episode()
            response.success = True
            self.get_logger().info(f"reset: {response.message}")
        except SimError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().error(f"reset failed: {exc}")
        return response

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "task" and parameter.value not in TASKS:
                return SetParametersResult(
                    successful=False,
                    reason=f"unknown task {parameter.value!r}; expected one of {list(TASKS)}")
        for parameter in parameters:
            if parameter.name == "seed":
                with self._lock:
                    self._next_seed = None if parameter.value < 0 else int(parameter.value)
        return SetParametersResult(successful=True)

    def _diagnose(self) -> Check:
        """/diagnostics: rejected commands in the last period, simulated vs wall time."""
        with self._lock:
            counters = dict(self.counters)
            sim_time = self.sim_time
        delta = self._diagnostic_deltas.update({"rejected_commands":
                                                counters["rejected_commands"]})
        wall, last_sim = self._last_report
        now = time.monotonic()
        factor = (sim_time - last_sim) / (now - wall) if now > wall else 0.0
        self._last_report = (now, sim_time)
        values = dict(counters, task=self.sim.task, sim_time_s=sim_time,
                      real_time_factor=factor, target_real_time_factor=self.rtf)
        problems = []
        if delta["rejected_commands"]:
            problems.append((WARN, f"{delta['rejected_commands']} rejected commands"))
        return summarize(problems, f"{self.sim.task} at {factor:.2f}x real time", values)

    # ------------------------------------------------------------------ loop
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Step, publish and pace until :meth:`stop`."""
        camera_period = 1.0 / self.params["camera_rate_hz"]
        joint_period = 1.0 / self.params["joint_state_rate_hz"]
        self._next_camera = self._next_joints = 0.0
        wall_start, sim_start = time.monotonic(), self.sim_time
        last_report = time.monotonic()
        # Catching up after a slow step (a camera frame) runs at most at twice the paced rate:
        # every /clock tick leaves the nodes that answer it (executor, teleoperator) at least
        # half a control period to do so before the next step.
        min_gap = 0.5 * self.dt / self.rtf if self.rtf > 0 else 0.0
        while not self._stop.is_set() and self.context.ok():
            step_start = time.monotonic()
            try:
                self._step_and_publish(camera_period, joint_period)
            except Exception:
                if not self.context.ok():
                    break  # shut down (Ctrl-C) while publishing
                raise
            if self.rtf > 0:
                now = time.monotonic()
                ahead = (self.sim_time - sim_start) / self.rtf - (now - wall_start)
                if ahead < -0.5:  # far behind: let simulated time lag instead of catching up
                    wall_start, sim_start = now, self.sim_time
                wait = max(ahead, min_gap - (now - step_start))
                if wait > 0:
                    self._stop.wait(wait)
            if time.monotonic() - last_report > 10.0:
                last_report = time.monotonic()
                self.get_logger().info(f"sim time {self.sim_time:.1f} s, {self.counters}")

    def _step_and_publish(self, camera_period: float, joint_period: float) -> None:
        """One control step, then whatever is due at the new simulated time."""
        with self._lock:
            target = self._target.copy()
            try:
                self.sim.step(target)
            except SimError as exc:  # cannot happen with validated commands; never crash
                self.get_logger().error(f"step rejected: {exc}", throttle_duration_sec=1.0)
                self.sim.step()
            self.sim_time += self.dt
            now = self.sim_time
            stamp = seconds_to_time(now)
            if self._clock_pub is not None:
                self._clock_pub.publish(Clock(clock=stamp))
            if now + 1e-9 >= self._next_joints:
                self._next_joints = max(self._next_joints + joint_period, now)
                self._publish_joint_states(stamp)
            if now + 1e-9 >= self._next_camera:
                self._next_camera = max(self._next_camera + camera_period, now)
                self._publish_cameras(stamp)
            self.counters["steps"] += 1

    def _publish_joint_states(self, stamp: Any) -> None:
        for publisher, state in zip(self._joint_pubs, self.sim.driver_joint_states()):
            msg = JointState()
            msg.header.stamp = stamp
            msg.name = state["name"]
            msg.position = state["position"].tolist()
            msg.velocity = state["velocity"].tolist()
            msg.effort = state["effort"].tolist()
            publisher.publish(msg)
        self._reward_pub.publish(Float64(data=float(self.sim.reward)))
        self._success_pub.publish(Bool(data=bool(self.sim.success)))

    def _publish_cameras(self, stamp: Any) -> None:
        # Render only what someone listens to (software rendering is the sim's main cost) and
        # encode only for /compressed listeners (JPEG costs about as much as a small render).
        wanted = []
        for name, sim_name, raw_pub, jpeg_pub in self._cameras:
            raw, jpeg = raw_pub.get_subscription_count() > 0, \
                jpeg_pub.get_subscription_count() > 0
            if raw or jpeg:
                wanted.append((name, sim_name, raw_pub if raw else None,
                               jpeg_pub if jpeg else None))
        if not wanted:
            return
        images = self.sim.render([camera[1] for camera in wanted])
        for name, sim_name, raw_pub, jpeg_pub in wanted:
            image = images[sim_name]
            self.counters["frames"] += 1
            frame_id = f"{name}_color_optical_frame"
            if raw_pub is not None:
                msg = Image()
                msg.header.stamp = stamp
                msg.header.frame_id = frame_id
                msg.height, msg.width = image.shape[:2]
                msg.encoding = "rgb8"
                msg.is_bigendian = 0
                msg.step = image.shape[1] * 3
                msg.data = image.tobytes()
                raw_pub.publish(msg)
            if jpeg_pub is not None:
                compressed = CompressedImage()
                compressed.header.stamp = stamp
                compressed.header.frame_id = frame_id
                # What compressed_image_transport writes for an rgb8 camera: its subscribers
                # (rqt, republish) then give rgb8 back; our decode_image reads any JPEG.
                compressed.format = JPEG_TRANSPORT_FORMAT
                compressed.data = encode_compressed(image, "jpeg", self.jpeg_quality)
                jpeg_pub.publish(compressed)
                self.counters["jpeg_frames"] += 1

    def destroy_node(self) -> None:
        self.stop()
        # After Ctrl-C the context is gone: a node logger would fail to reach /rosout.
        logger = self.get_logger() if self.context.ok() else rclpy_logging.get_logger(
            f"{NODE_NAME}.shutdown")
        logger.info(f"stopped at sim time {self.sim_time:.2f} s, {self.counters}")
        self.sim.close()
        super().destroy_node()


def _spin(node: "SimAlohaNode") -> None:
    """ROS callbacks on a thread; the simulation loop on this one, until shutdown."""
    logging.getLogger("vla_policy_node.sim").addHandler(RosLogHandler(node.get_logger()))
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin_callbacks() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass  # Ctrl-C / shutdown: the main loop ends too
        except Exception:
            if node.context.ok():
                raise
            # A callback that raced the shutdown (a timer publishing while the context is
            # torn down: "publisher's context is invalid"): nothing to report, we are stopping.

    threading.Thread(target=spin_callbacks, name="ros", daemon=True).start()
    node.run()


def main(args: list[str] | None = None) -> int:
    """Entry point ``sim_aloha``; returns 1 when the configuration is invalid."""
    return run_node(SimAlohaNode, NODE_NAME, spin=_spin, args=args)


if __name__ == "__main__":
    sys.exit(main())
