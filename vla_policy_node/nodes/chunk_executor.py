"""``chunk_executor`` node: streams action chunks to the arm controllers, safely and gap-free.

Thin plumbing around :class:`vla_policy_node.control.ExecutorCore`, which decides everything:

* subscribes to ``vla_msgs/ActionChunk`` (``chunk_topic``) and to ``/<arm>/joint_states``;
* ticks on a dedicated thread on absolute deadlines of the node's clock (ROS time, so
  ``use_sim_time`` follows ``/clock``), publishing one command per arm per tick;
* publishes ``vla_msgs/ExecutorStatus`` at ``status_rate_hz`` (the policy node's demand);
* serves ``~/pause``, ``~/resume``, ``~/stop`` and ``~/reset`` (std_srvs/Trigger): pause holds
  the last command and keeps merging chunks; stop holds it, clears the plan and rejects chunks
  until resume; reset is a stop that also forgets the last command (and the joint states
  received so far), so nothing is sent until resume and a new chunk, which ramps from the
  measured pose (for a robot or simulator moved by someone else, e.g. between episodes);
* is a managed node that activates itself: ``deactivate`` holds like ``~/pause``, ``activate``
  lifts only that hold (never an operator's pause or stop), ``shutdown`` holds for good.

Run: ``python -m vla_policy_node.nodes.chunk_executor --ros-args --params-file
config/aloha.yaml [-p use_sim_time:=true]``.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable

import rclpy
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from vla_msgs.msg import ActionChunk as ActionChunkMsg
from vla_msgs.msg import ExecutorStatus

from vla_policy_node.chunk import ChunkError
from vla_policy_node.config import RobotConfig
from vla_policy_node.control import (
    ArmCommand, ControlClock, ExecutorConfig, ExecutorCore, MergeStrategy)
from vla_policy_node.control.clock import set_realtime_priority
from vla_policy_node.control.throttle import ThrottledLogger
from vla_policy_node.nodes import interbotix
from vla_policy_node.nodes.conversions import action_chunk_from_msg, seconds_to_duration
from vla_policy_node.nodes.diagnostics import (
    Check, CounterDeltas, DiagnosticsPublisher, ERROR, RosLogHandler, summarize, WARN)
from vla_policy_node.nodes.lifecycle import AutoActive, SHUTDOWN
from vla_policy_node.nodes.parameters import (
    declare_derived, declare_parameters, ParameterSpec, robot_parameter_specs)
from vla_policy_node.nodes.runner import run_node

NODE_NAME = "chunk_executor"
OUTPUT_TYPES = ("interbotix", "joint_trajectory", "float64_array")
CORE_LOGGER = "vla_policy_node.control"

def _spec(name: str, default: Any, description: str,
          value_range: tuple[float, float] | None = None, **kwargs: Any) -> ParameterSpec:
    # Read-only: limits and rates are validated once at start; no run-time bypass.
    return ParameterSpec(name, default, description, value_range, read_only=True, **kwargs)


# Every parameter of the node, in one place. The robot description has no defaults: robot
# constants live in config/, never in code.
PARAMETERS: tuple[ParameterSpec, ...] = robot_parameter_specs(read_only=True) + (
    _spec("chunk_topic", "/vla/action_chunk", "vla_msgs/ActionChunk input"),
    _spec("status_topic", "/vla/executor_status",
          "vla_msgs/ExecutorStatus output (the policy's demand signal)"),
    _spec("control_rate_hz", 50.0, "control ticks per second", (1, 5000)),
    _spec("status_rate_hz", 10.0, "status messages per second", (0.1, 1000)),
    _spec("merge_strategy", "crossfade",
          "how overlapping chunks merge: replace | crossfade | temporal_ensemble"),
    _spec("crossfade_window", 0.2, "seconds over which a new chunk fades in (crossfade)",
          (0, 10)),
    _spec("temporal_ensemble_k", 0.01,
          "k of the ACT weights exp(-k*i), oldest prediction weighs most", (0, 100)),
    _spec("stale_timeout", 0.2, "seconds without a valid target before holding the last "
          "command", (0.001, 60)),
    _spec("joint_state_timeout", 1.0,
          "joint states whose header stamp is older than this (s) are rejected and not used "
          "for the start-up ramp", (0.001, 60)),
    _spec("max_future_stamp", 0.5,
          "reject chunks and joint states stamped more than this (s) ahead of this node's "
          "clock", (0.001, 60)),
    _spec("start_margin", 0.05,
          "refuse to start while a measured joint is outside its position limits by more "
          "than this (rad; grippers normalized); within it, ramp from the clamped pose",
          (0, 1)),
    _spec("max_chunk_length", 100, "reject chunks with more actions (K)", (1, 100000)),
    _spec("min_step_period", 0.002, "reject chunks whose step period is shorter (s)",
          (0.0001, 10)),
    _spec("max_step_period", 0.2, "reject chunks whose step period is longer (s)",
          (0.0001, 10)),
    _spec("max_chunk_horizon", 2.0,
          "reject chunks spanning more than this, (K-1) * step period (s)", (0.001, 60)),
    _spec("log_interval", 1.0, "minimum seconds between two warnings of the same kind",
          (0, 3600)),
    _spec("realtime_priority", 0,
          "SCHED_FIFO priority of the control thread, 0 = normal scheduling", (0, 99)),
    _spec("output_type", "interbotix",
          "command output of every arm: interbotix | joint_trajectory | float64_array"),
    _spec("output_types", None, "optional per-arm override of output_type, in robot.arms "
          "order", type_=Parameter.Type.STRING_ARRAY, optional=True),
    _spec("interbotix.group_topic", "/{arm}/commands/joint_group",
          "JointGroupCommand topic pattern ({arm} is replaced)"),
    _spec("interbotix.single_topic", "/{arm}/commands/joint_single",
          "JointSingleCommand (gripper) topic pattern"),
    _spec("interbotix.group_name", "arm", "JointGroupCommand.name of the arm group"),
    _spec("interbotix.gripper_name", "gripper", "JointSingleCommand.name of the gripper"),
    _spec("joint_trajectory.topic", "/{arm}/arm_controller/joint_trajectory",
          "JointTrajectory topic pattern (joint_trajectory_controller)"),
    _spec("joint_trajectory.joint_name_format", "{joint}",
          "controller joint names, from {arm} and {joint} (driver name)"),
    _spec("joint_trajectory.time_from_start", 0.0,
          "time_from_start of the streamed point, s (0: one control period)", (0, 10)),
    _spec("float64_array.topic", "/{arm}/forward_position_controller/commands",
          "Float64MultiArray topic pattern (forward_command_controller)"),
    _spec("include_gripper", True,
          "joint_trajectory / float64_array: append the gripper (driver units) to each arm"),
)


class RosTimeSource:
    """The node's clock (ROS time: wall or /clock) for :class:`ControlClock`.

    Sleeps wake on the deadline, on any time jump (each /clock message, a backward reset,
    sim time being switched on) and on :meth:`stop`.
    """

    def __init__(self, node: Node) -> None:
        self._clock = node.get_clock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._jumped_back = False
        threshold = JumpThreshold(min_forward=Duration(nanoseconds=1),
                                  min_backward=Duration(nanoseconds=-1), on_clock_change=True)
        self._jump_handle = self._clock.create_jump_callback(
            threshold, post_callback=self._on_jump)

    def _on_jump(self, jump: Any) -> None:
        if jump.delta.nanoseconds < 0:
            self._jumped_back = True
        self._wake.set()

    def now(self) -> float:
        return self._clock.now().nanoseconds * 1e-9

    def sleep_until(self, deadline: float) -> bool:
        until = int(round(deadline * 1e9))
        while not self._stop.is_set():
            if self._jumped_back:
                self._jumped_back = False
                return True
            now = self._clock.now().nanoseconds
            if now >= until:
                return True
            self._wake.clear()
            if self._clock.ros_time_is_active:
                # Simulated time advances only with /clock messages, which set _wake.
                self._wake.wait(0.1)
            else:
                self._wake.wait((until - now) * 1e-9)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self._jump_handle.unregister()


class ChunkExecutorNode(AutoActive, Node):
    """The ROS side of the executor (see the module docstring).

    A managed node that activates itself (nodes/lifecycle.py): ``ros2 lifecycle set
    /chunk_executor deactivate`` holds the last command like ``~/pause``; ``activate``
    resumes what deactivate paused, never an operator's ``~/pause`` / ``~/stop``.
    """

    def __init__(self, **kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **kwargs)
        self.init_lifecycle()
        params = self._declare_parameters()
        self._attach_core_logging()
        self.robot = RobotConfig.from_params(params)
        self.config = ExecutorConfig.from_params(params)
        self.core = ExecutorCore(self.robot, self.config)
        self._log = ThrottledLogger(logging.getLogger(CORE_LOGGER + ".node"),
                                    self.config.log_interval)
        self._outputs = self._create_outputs(params)
        # Unset, output_types is undeclared; show the per-arm outputs the node derived.
        declare_derived(self, PARAMETERS, "output_types",
                        [kind for kind, _ in self._outputs.values()])

        self.create_subscription(ActionChunkMsg, params["chunk_topic"], self._on_chunk,
                                 QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        suffix = self.robot.joint_states_topic_suffix
        for arm in self.robot.arms:
            # Sensor-data QoS (best effort) matches reliable and best-effort drivers alike.
            self.create_subscription(JointState, f"/{arm}/{suffix}",
                                     lambda msg, arm=arm: self._on_joint_state(arm, msg),
                                     qos_profile_sensor_data)
        self._status_pub = self.create_publisher(ExecutorStatus, params["status_topic"], 10)
        self.create_timer(1.0 / params["status_rate_hz"], self._publish_status)
        self._lifecycle_lock = threading.Lock()
        self._inactive = False  # deactivated (or shut down) through the lifecycle
        self._lifecycle_paused = False  # ... and that deactivation did the pausing
        self._shut_down = False
        for name, handler in (("pause", self.core.pause), ("resume", self.core.resume),
                              ("stop", self.core.stop), ("reset", self.core.reset)):
            self.create_service(Trigger, f"~/{name}",
                                self._trigger(self._operator(name, handler)))
        self._diagnostic_deltas = CounterDeltas()
        self.diagnostics = DiagnosticsPublisher(self, {"execution": self._diagnose},
                                                hardware_id=",".join(self.robot.arms))

        # The control thread needs the GIL promptly when it wakes; Python's default 5 ms
        # switch interval would let a busy callback delay a tick by that much.
        sys.setswitchinterval(0.0005)
        self._time = RosTimeSource(self)
        self.control_clock = ControlClock(self._time, self.config.control_rate_hz)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._control_loop, name="control",
                                        daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"executing chunks from {params['chunk_topic']} at {self.config.control_rate_hz} Hz, "
            f"merge {self.config.merge.strategy.value}, outputs "
            f"{ {arm: kind for arm, (kind, _) in self._outputs.items()} }")
        self.activate_lifecycle()

    # ------------------------------------------------------------------ lifecycle
    # A lifecycle transition never overrides the operator: activate undoes only the pause that
    # deactivate made. An executor already paused or stopped by ~/pause / ~/stop / ~/reset
    # stays so through deactivate / activate (a lifecycle manager cycling the node must not
    # undo an e-stop-like ~/stop), and ~/resume waits for activate. After shutdown nothing
    # resumes: ~/resume and chunks are refused until the node is restarted.
    def lifecycle_hold(self, reason: str) -> tuple[bool, str]:
        with self._lifecycle_lock:
            self._inactive = True
            if reason == SHUTDOWN:
                self._shut_down = True
            state = self.core.state.name.lower()
            if state in ("paused", "stopped"):
                # Held by the operator (or by an earlier deactivate): leave it to them.
                return True, f"{state}: holding the last command"
            ok, message = self.core.pause()
            self._lifecycle_paused = ok
            return ok, message

    def lifecycle_resume(self) -> tuple[bool, str]:
        with self._lifecycle_lock:
            if self._shut_down:
                return False, "shut down: holds for good; restart the node"
            self._inactive = False
            if not self._lifecycle_paused:
                state = self.core.state.name.lower()
                if state in ("paused", "stopped"):
                    return True, (f"active, still {state} by the operator (~/pause, ~/stop "
                                  "or ~/reset): call ~/resume to move again")
                return True, state
            self._lifecycle_paused = False
            return self.core.resume()

    def _operator(self, service: str, handler: Callable[[], tuple[bool, str]]
                  ) -> Callable[[], tuple[bool, str]]:
        """~/pause, ~/stop, ~/reset, ~/resume with the lifecycle's say (see above)."""
        def serve() -> tuple[bool, str]:
            with self._lifecycle_lock:
                if service == "resume":
                    if self._shut_down:
                        return False, ("refused: the node was shut down (ros2 lifecycle "
                                       "shutdown) and holds for good; restart it to move again")
                    if self._inactive:
                        return False, ("refused: the node is inactive (ros2 lifecycle); "
                                       "`ros2 lifecycle set /chunk_executor activate` first")
                    return handler()
                ok, message = handler()
                if ok:
                    # The operator's hold now stands: activate must not lift it.
                    self._lifecycle_paused = False
                return ok, message
        return serve

    # ------------------------------------------------------------------ setup
    def _declare_parameters(self) -> dict[str, Any]:
        params = declare_parameters(self, PARAMETERS)
        MergeStrategy.parse(params["merge_strategy"])
        return params

    def _attach_core_logging(self) -> None:
        core_logger = logging.getLogger(CORE_LOGGER)
        core_logger.setLevel(logging.INFO)
        core_logger.propagate = False
        core_logger.handlers = [h for h in core_logger.handlers
                                if not isinstance(h, RosLogHandler)]
        core_logger.addHandler(RosLogHandler(self.get_logger(), logging.INFO))

    def _create_outputs(self, params: dict[str, Any]) -> dict[str, tuple[str, Callable]]:
        arms = self.robot.arms
        kinds = params["output_types"] or [params["output_type"]] * len(arms)
        if len(kinds) != len(arms):
            raise ValueError(f"output_types {kinds} must name one output per arm {list(arms)}")
        outputs: dict[str, tuple[str, Callable]] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        period = 1.0 / self.config.control_rate_hz
        for arm, kind in zip(arms, kinds):
            if kind not in OUTPUT_TYPES:
                raise ValueError(f"unknown output type {kind!r} for {arm}; "
                                 f"expected one of {OUTPUT_TYPES}")
            if kind == "interbotix":
                outputs[arm] = (kind, self._interbotix_output(arm, params, reliable))
            elif kind == "joint_trajectory":
                outputs[arm] = (kind, self._trajectory_output(arm, params, reliable, period))
            else:
                outputs[arm] = (kind, self._array_output(arm, params, reliable))
        return outputs

    def _interbotix_output(self, arm: str, params: dict[str, Any],
                           qos: QoSProfile) -> Callable[[ArmCommand], None]:
        JointGroupCommand, JointSingleCommand = interbotix.command_types()
        group = self.create_publisher(
            JointGroupCommand, params["interbotix.group_topic"].format(arm=arm), qos)
        single = self.create_publisher(
            JointSingleCommand, params["interbotix.single_topic"].format(arm=arm), qos)
        group_name, gripper_name = params["interbotix.group_name"], params[
            "interbotix.gripper_name"]

        def publish(command: ArmCommand) -> None:
            group.publish(JointGroupCommand(name=group_name, cmd=command.positions.tolist()))
            if command.gripper_position is not None:
                single.publish(JointSingleCommand(name=gripper_name,
                                                  cmd=command.gripper_position))
        return publish

    def _trajectory_output(self, arm: str, params: dict[str, Any], qos: QoSProfile,
                           period: float) -> Callable[[ArmCommand], None]:
        publisher = self.create_publisher(
            JointTrajectory, params["joint_trajectory.topic"].format(arm=arm), qos)
        fmt = params["joint_trajectory.joint_name_format"]
        include_gripper = params["include_gripper"]
        time_from_start = seconds_to_duration(
            params["joint_trajectory.time_from_start"] or period)

        def publish(command: ArmCommand) -> None:
            names = list(command.joint_names)
            positions = command.positions.tolist()
            if include_gripper and command.gripper_position is not None:
                names.append(command.gripper_name)
                positions.append(command.gripper_position)
            msg = JointTrajectory()
            # A zero stamp means "start now" to joint_trajectory_controller.
            msg.joint_names = [fmt.format(arm=arm, joint=name) for name in names]
            msg.points = [JointTrajectoryPoint(positions=positions,
                                               time_from_start=time_from_start)]
            publisher.publish(msg)
        return publish

    def _array_output(self, arm: str, params: dict[str, Any],
                      qos: QoSProfile) -> Callable[[ArmCommand], None]:
        publisher = self.create_publisher(
            Float64MultiArray, params["float64_array.topic"].format(arm=arm), qos)
        include_gripper = params["include_gripper"]

        def publish(command: ArmCommand) -> None:
            data = command.positions.tolist()
            if include_gripper and command.gripper_position is not None:
                data.append(command.gripper_position)
            publisher.publish(Float64MultiArray(data=data))
        return publish

    # ------------------------------------------------------------------ callbacks
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_chunk(self, msg: ActionChunkMsg) -> None:
        if self._shut_down:
            self.core.reject_chunk(int(msg.chunk_id), "the node was shut down (ros2 lifecycle "
                                   "shutdown): holds for good; restart it")
            return
        try:
            chunk = action_chunk_from_msg(msg)
        except (ChunkError, ValueError, TypeError) as exc:
            self.core.reject_chunk(int(msg.chunk_id), str(exc))
            return
        self.core.submit_chunk(chunk, self._now())

    def _on_joint_state(self, arm: str, msg: JointState) -> None:
        # Freshness is judged by the header stamp (when the pose was measured), not arrival.
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self.core.update_joint_state(arm, msg.name, msg.position, self._now(), stamp=stamp)

    def _trigger(self, handler: Callable[[], tuple[bool, str]]) -> Callable:
        def serve(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            response.success, response.message = handler()
            self.get_logger().info(f"service: {response.message}")
            return response
        return serve

    # ------------------------------------------------------------------ control loop
    def _control_loop(self) -> None:
        error = set_realtime_priority(self.config.realtime_priority)
        if error is not None:
            self.get_logger().warning(f"{error}; the control loop runs at normal priority "
                                      "and may wake late under CPU load")
        try:
            for tick in self.control_clock.ticks(self._stop):
                try:
                    command = self.core.tick(tick.time)
                    if command is None:
                        continue
                    for arm_command in self.core.arms.split(command):
                        self._outputs[arm_command.arm][1](arm_command)
                except Exception as exc:  # noqa: BLE001 - the loop must survive and hold
                    if not rclpy.ok(context=self.context):
                        return
                    self._log.warning("tick_error", f"control tick failed: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - reported; the node shuts down its loop
            if rclpy.ok(context=self.context):
                self.get_logger().error(f"control loop ended: {exc!r}")

    def _publish_status(self) -> None:
        now = self._now()
        snap = self.core.snapshot(now)
        c = snap.counters
        msg = ExecutorStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.state = int(snap.state)
        msg.state_name = snap.state.name.lower()
        msg.remaining_horizon = seconds_to_duration(snap.remaining_horizon)
        msg.remaining_steps = snap.remaining_steps
        msg.last_chunk_id = snap.last_chunk_id
        msg.ticks = c.ticks
        msg.starved_ticks = c.starved_ticks
        msg.clamped_commands = c.clamped_commands
        msg.rate_limited_commands = c.rate_limited_commands
        msg.accepted_chunks = c.accepted_chunks
        msg.rejected_chunks = c.rejected_chunks
        msg.rejected_chunks_bounds = c.rejected_chunks_bounds
        msg.rejected_chunks_order = c.rejected_chunks_order
        msg.rejected_joint_states = c.rejected_joint_states
        msg.refused_start_ticks = c.refused_start_ticks
        msg.idle_reason = snap.idle_reason
        msg.last_rejection = snap.last_rejection
        msg.achieved_rate_hz = self.control_clock.achieved_rate(now)
        msg.control_rate_hz = self.config.control_rate_hz
        self._status_pub.publish(msg)

    def _diagnose(self) -> Check:
        """/diagnostics: what went wrong in the last period (see nodes/diagnostics.py)."""
        now = self._now()
        snap = self.core.snapshot(now)
        names = ("starved_ticks", "clamped_commands", "rate_limited_commands",
                 "rejected_chunks", "rejected_joint_states", "refused_start_ticks")
        counters = {name: int(getattr(snap.counters, name, 0)) for name in names}
        delta = self._diagnostic_deltas.update(counters)
        rate = self.control_clock.achieved_rate(now)
        target = self.config.control_rate_hz
        state = snap.state.name.lower()
        # What every start does (ramp, in-margin start clamp) is shown, never warned about.
        expected = {name: int(getattr(snap.counters, name))
                    for name in ("ramp_rate_limited_commands", "clamped_start_poses")}
        values = dict(counters, **expected, state=state,
                      remaining_horizon_s=snap.remaining_horizon,
                      achieved_rate_hz=rate, control_rate_hz=target)
        problems = [(WARN, f"{delta[name]} {name.replace('_', ' ')}") for name in names
                    if delta[name]]
        if delta["refused_start_ticks"]:
            # The arm is beyond its limits (or the limits are wrong): a person must act.
            problems.append((ERROR, snap.idle_reason))
        moving = state in ("running", "ramping", "holding")
        if moving and 0 < rate < 0.5 * target:
            problems.append((ERROR, f"control at {rate:.1f} Hz of {target:.0f} Hz"))
        elif moving and 0 < rate < 0.9 * target:
            problems.append((WARN, f"control at {rate:.1f} Hz of {target:.0f} Hz"))
        return summarize(problems, f"{state}, {snap.remaining_horizon:.2f} s of actions left",
                         values)

    def destroy_node(self) -> None:
        self._stop.set()
        self._time.stop()
        self._thread.join(timeout=2.0)
        self._time.close()
        logging.getLogger(CORE_LOGGER).handlers = [
            h for h in logging.getLogger(CORE_LOGGER).handlers
            if not isinstance(h, RosLogHandler)]
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Entry point ``chunk_executor``; returns 1 when the configuration is invalid."""
    return run_node(ChunkExecutorNode, NODE_NAME, args=args)


if __name__ == "__main__":
    sys.exit(main())
