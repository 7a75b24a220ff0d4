"""vla_policy node: cameras + joint states + instruction -> OFT model -> ActionChunk.

Subscriptions never block: images and joint states are stored with their stamps, and a worker
thread runs the model when the trigger says so (executor demand by default), publishing each
chunk stamped with the capture time of the observation it was predicted from.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
import os
import sys
import threading
import time
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data, QoSDurabilityPolicy, QoSProfile
from rclpy.qos import QoSReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from vla_msgs.msg import ActionChunk as ActionChunkMsg
from vla_msgs.msg import ExecutorStatus, PolicyStatus
from vla_msgs.srv import SetInstruction

from vla_policy_node.chunk import ActionChunk
from vla_policy_node.config import RobotConfig
from vla_policy_node.data.images import decode_image
from vla_policy_node.model.family import history_rate_advice
from vla_policy_node.nodes.conversions import (
    action_chunk_to_msg, duration_to_seconds, time_to_seconds)
from vla_policy_node.control.throttle import ThrottledLogger
from vla_policy_node.nodes.diagnostics import (
    Check, CounterDeltas, DiagnosticsPublisher, ERROR, NodeLog, summarize, WARN)
from vla_policy_node.nodes.lifecycle import AutoActive
from vla_policy_node.nodes.parameters import declare_parameters, ParameterSpec
from vla_policy_node.nodes.parameters import robot_parameter_specs
from vla_policy_node.nodes.runner import run_node
from vla_policy_node.policy_runtime import (
    camera_size_ranges, DEFAULT_SIZE_FACTOR, InferenceTrigger, instruction_from_cdr,
    ObservationStore, ObservationUnavailable, TRIGGER_MODES)

# What `ros2 param set /vla_policy ...` may change while the node runs; validated and applied
# by VlaPolicyNode._on_set_parameters. Every other parameter is read-only.
RUNTIME_PARAMETERS = ("trigger", "demand_horizon", "inference_rate_hz", "max_observation_age",
                      "status_period", "instruction")

_PARAMETERS: tuple[ParameterSpec, ...] = robot_parameter_specs() + (
    ParameterSpec("cameras.names", ["cam_high", "cam_left_wrist", "cam_right_wrist"],
                  "Camera names, in the order the model takes them."),
    ParameterSpec("cameras.topics", [""], "Image topic of each camera (cameras.names order)."),
    ParameterSpec("cameras.transports", ["raw"],
                  "raw (sensor_msgs/Image) or compressed (CompressedImage) per camera."),
    ParameterSpec("cameras.heights", [480], "Image height each camera is set up for "
                  "(pixels, cameras.names order; one value: every camera)."),
    ParameterSpec("cameras.widths", [640], "Image width each camera is set up for (pixels)."),
    ParameterSpec("cameras.size_factor", DEFAULT_SIZE_FACTOR, "Images more than this factor "
                  "smaller or larger than cameras.heights/widths in a dimension are rejected "
                  "before decoding (counted in rejected_images).", (1.0, 1000.0)),
    ParameterSpec("instruction_topic", "/vla/instruction",
                  "std_msgs/String instructions (reliable, volatile: ros2 topic pub works)."),
    ParameterSpec("output_topic", "/vla/action_chunk", "vla_msgs/ActionChunk output."),
    ParameterSpec("status_topic", "/vla/policy_status", "vla_msgs/PolicyStatus output."),
    ParameterSpec("executor_status_topic", "/vla/executor_status",
                  "vla_msgs/ExecutorStatus input (demand)."),
    ParameterSpec("checkpoint", "", "Checkpoint directory (ours or official OpenVLA-OFT); "
                  "empty: the preset with random weights."),
    ParameterSpec("preset", "tiny", "Model preset used when checkpoint is empty."),
    ParameterSpec("policy_family", "auto", "auto (from the checkpoint or preset) | oft | "
                  "roboflamingo (one frame of history per inference; use trigger fixed_rate "
                  "at the training frame rate)."),
    ParameterSpec("unnorm_key", "", "dataset_statistics.json key (empty: the only one)."),
    ParameterSpec("device", "cpu", "Inference device: cpu, cuda, cuda:N."),
    ParameterSpec("dtype", "float32", "Model dtype: float32, bfloat16, float16."),
    ParameterSpec("quantization", "none", "Language model quantization: none, 8bit, 4bit."),
    ParameterSpec("step_period", 0.04, "Seconds between the actions of a chunk.",
                  (1e-3, 10.0)),
    ParameterSpec("max_observation_age", 0.5,
                  "Inputs older than this (s, ROS time) are stale: no inference.", (1e-3, 60.0)),
    ParameterSpec("trigger", "on_demand", "on_demand | fixed_rate | once."),
    ParameterSpec("demand_horizon", 0.6, "on_demand: infer when the executor's remaining "
                  "horizon (s) drops below this.", (0.0, 60.0)),
    ParameterSpec("inference_rate_hz", 2.0, "fixed_rate: inferences per second.",
                  (0.01, 100.0)),
    ParameterSpec("status_period", 1.0, "Seconds between PolicyStatus messages.", (0.05, 60.0)),
    ParameterSpec("seed", 0, "Seed of the random weights of a preset.", (0, 2**31 - 1)),
    ParameterSpec("torch_threads", 0, "CPU threads of torch; 0: half the cores (the rest "
                  "stay free for the executor, cameras and DDS).", (0, 256)),
    ParameterSpec("instruction", "", "The language instruction (as on instruction_topic or "
                  "~/set_instruction; shows the latest from any of them). Empty at start: "
                  "wait for one."),
)
PARAMETERS: tuple[ParameterSpec, ...] = tuple(
    replace(spec, read_only=spec.name not in RUNTIME_PARAMETERS) for spec in _PARAMETERS)

INSTRUCTION_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)


class VlaPolicyNode(AutoActive, Node):
    """The policy node; ``policy`` may be injected (tests), otherwise loaded from parameters."""

    def __init__(self, policy: Any | None = None, **node_kwargs: Any) -> None:
        Node.__init__(self, "vla_policy", **node_kwargs)
        self.init_lifecycle()  # `ros2 lifecycle set /vla_policy deactivate`: no inference
        self._held = False
        p = declare_parameters(self, PARAMETERS)
        self.params = p
        self.robot = RobotConfig.from_params(p)
        names, topics, transports = (list(p["cameras.names"]), list(p["cameras.topics"]),
                                     list(p["cameras.transports"]))
        if not (len(names) == len(topics) == len(transports)):
            raise ValueError(f"cameras.names {names}, cameras.topics {topics} and "
                             f"cameras.transports {transports} differ in length")
        bad = [t for t in transports if t not in ("raw", "compressed")]
        if bad:
            raise ValueError(f"cameras.transports: {bad} not raw/compressed")
        self.image_sizes = camera_size_ranges(names, p["cameras.heights"], p["cameras.widths"],
                                              p["cameras.size_factor"])
        self.trigger = InferenceTrigger(p["trigger"], p["demand_horizon"],
                                        p["inference_rate_hz"])
        if p["trigger"] not in TRIGGER_MODES:
            raise ValueError(f"trigger {p['trigger']!r} not in {TRIGGER_MODES}")

        self.policy = policy if policy is not None else self._load_policy()
        missing = [c for c in self.policy.camera_names if c not in names]
        if missing:
            raise ValueError(f"the model needs cameras {missing}, configured: {names}")
        if self.policy.action_dim != self.robot.dim:
            raise ValueError(f"the model predicts {self.policy.action_dim}-d actions, "
                             f"robot.joint_names has {self.robot.dim}")
        self._warm_up()
        advice = history_rate_advice(self.policy, p["trigger"], p["inference_rate_hz"],
                                     p["step_period"])
        if advice:
            self.get_logger().warning(advice)
        self.store = ObservationStore(self.policy.camera_names, self.robot,
                                      p["max_observation_age"])
        self.counters = dict(chunks_published=0, inferences_skipped=0, rejected_images=0,
                             rejected_joint_states=0, rejected_instructions=0,
                             inference_errors=0)
        self.latencies: deque[float] = deque(maxlen=200)
        # Repeated warnings: the first at once, then a count per growing period.
        self._warnings = ThrottledLogger(NodeLog(self.get_logger()), 2.0)
        self.last_age = -1.0
        self.last_skip_reason = ""
        self.state = "waiting_for_instruction"
        self._next_chunk_id = 1
        self._lock = threading.Lock()
        # Before anything that may set an instruction (the instruction parameter) wakes the worker.
        self._wake = threading.Event()
        self._stop = threading.Event()

        self.chunk_pub = self.create_publisher(ActionChunkMsg, p["output_topic"], 10)
        self.status_pub = self.create_publisher(PolicyStatus, p["status_topic"], 10)
        for name, topic, transport in zip(names, topics, transports):
            if name not in self.policy.camera_names:
                continue
            msg_type = Image if transport == "raw" else CompressedImage
            self.create_subscription(msg_type, topic,
                                     lambda msg, cam=name: self._on_image(cam, msg),
                                     qos_profile_sensor_data)
        for arm in self.robot.arms:
            topic = f"/{arm}/{self.robot.joint_states_topic_suffix}"
            self.create_subscription(JointState, topic,
                                     lambda msg, a=arm: self._on_joint_state(a, msg),
                                     qos_profile_sensor_data)
        # Raw: rclpy would cut a text at its first NUL without a word (see _on_instruction).
        self.create_subscription(String, p["instruction_topic"], self._on_instruction,
                                 INSTRUCTION_QOS, raw=True)
        self.create_subscription(ExecutorStatus, p["executor_status_topic"],
                                 self._on_executor_status, 10)
        self.create_service(SetInstruction, "~/set_instruction", self._on_set_instruction)
        # Families with history (RoboFlamingo) forget it here and on every new instruction;
        # the worker does it before its next inference, so this callback never waits on one.
        self._reset_requested = threading.Event()
        self.create_service(Trigger, "~/reset", self._on_reset)
        self._status_timer = self.create_timer(p["status_period"], self._publish_status)
        self._deltas = {"inference": CounterDeltas(), "inputs": CounterDeltas()}
        self.diagnostics = DiagnosticsPublisher(
            self, {"inference": self._diagnose_inference, "inputs": self._diagnose_inputs},
            hardware_id=self.model_name)
        self._syncing_instruction = False
        if p["instruction"].strip():
            ok, reason = self._set_instruction(p["instruction"])
            if not ok:
                raise ValueError(f"parameter instruction: {reason}")
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name="vla_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model {self.model_name} (K={self.policy.chunk_length}, "
            f"D={self.policy.action_dim}), cameras {list(self.policy.camera_names)}, "
            f"trigger {p['trigger']}; waiting for an instruction on {p['instruction_topic']}")
        self.activate_lifecycle()

    @property
    def model_name(self) -> str:
        return self.params["checkpoint"] or f"preset:{self.params['preset']}"

    def _load_policy(self) -> Any:
        import torch

        from vla_policy_node.model import load_policy
        p = self.params
        threads = p["torch_threads"] or max(1, (os.cpu_count() or 2) // 2)
        torch.set_num_threads(threads)
        self.get_logger().info(f"loading model {p['checkpoint'] or 'preset ' + p['preset']} "
                               f"on {p['device']} ({p['dtype']}, quantization "
                               f"{p['quantization']})")
        return load_policy(checkpoint=p["checkpoint"] or None, preset=p["preset"],
                           device=p["device"], dtype=p["dtype"],
                           quantization=p["quantization"], unnorm_key=p["unnorm_key"] or None,
                           seed=p["seed"], family=p["policy_family"])

    def _warm_up(self) -> None:
        """One inference on blank inputs, so the first real chunk is not slowed by lazy
        initialization (allocator, kernels) and arrives before its actions expire."""
        images = {c: np.zeros((224, 224, 3), np.uint8) for c in self.policy.camera_names}
        start = time.perf_counter()
        self.policy.infer(images, np.zeros(self.policy.proprio_dim), "warm up")
        self.get_logger().info(f"warm-up inference took {time.perf_counter() - start:.2f} s")
        self.policy.reset()  # the blank frame must not stay in a family's history

    # --- time -----------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _stamp_of(self, header: Any) -> float:
        stamp = time_to_seconds(header.stamp)
        # An unstamped message (e.g. from `ros2 topic pub`) counts from its arrival.
        return stamp if stamp > 0 else self._now()

    def _count(self, counter: str, message: str) -> None:
        with self._lock:
            self.counters[counter] += 1
            count = self.counters[counter]
        self._warnings.warning(counter, f"{message} ({counter}: {count})")

    # --- inputs ---------------------------------------------------------------------------
    def _on_image(self, camera: str, msg: Any) -> None:
        try:
            # Size from the header fields only: a huge or tiny frame is never decoded.
            self.image_sizes[camera].check(msg)
            if isinstance(msg, CompressedImage):
                if not len(msg.data):
                    raise ValueError("empty compressed image")
                image: Any = lambda m=msg: decode_image(m)  # noqa: E731 - decoded on demand
            else:
                image = decode_image(msg)
            self.store.set_image(camera, image, self._stamp_of(msg.header))
        except Exception as exc:  # noqa: BLE001 - any bad image is counted, never fatal
            self._count("rejected_images", f"rejected image from {camera}: {exc}")
            return
        self._wake.set()

    def _on_joint_state(self, arm: str, msg: JointState) -> None:
        try:
            self.store.set_joint_state(arm, list(msg.name), list(msg.position),
                                       self._stamp_of(msg.header))
        except ValueError as exc:
            self._count("rejected_joint_states", f"rejected joint state: {exc}")

    def _set_instruction(self, text: str) -> tuple[bool, str]:
        try:
            changed = self.store.set_instruction(text)
        except ValueError as exc:
            self._count("rejected_instructions", f"rejected instruction: {exc}")
            return False, str(exc)
        if changed:
            self.get_logger().info(f"new instruction: {text.strip()!r}")
            self._wake.set()
            if not self._syncing_instruction:  # `ros2 param get instruction` tells the truth
                self._syncing_instruction = True
                try:
                    self.set_parameters([Parameter("instruction", value=text.strip())])
                finally:
                    self._syncing_instruction = False
        return True, "instruction set" if changed else "instruction unchanged"

    def _on_instruction(self, raw: bytes) -> None:
        try:
            text = instruction_from_cdr(raw)
        except ValueError as exc:
            self._count("rejected_instructions", f"rejected instruction: {exc}")
            return
        self._set_instruction(text)

    def _on_set_instruction(self, request: Any, response: Any) -> Any:
        response.success, response.message = self._set_instruction(request.instruction)
        return response

    def _on_reset(self, request: Any, response: Any) -> Any:
        self._reset_requested.set()
        response.success = True
        response.message = ("history cleared before the next inference"
                            if self.policy.keeps_history else "this policy keeps no history")
        return response

    def _on_executor_status(self, msg: ExecutorStatus) -> None:
        self.trigger.on_executor_status(duration_to_seconds(msg.remaining_horizon))
        self._wake.set()

    # --- inference ------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self.context.ok():
                break  # shutting down: nothing may be published any more
            try:
                self._maybe_infer()
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                if not self.context.ok():
                    break
                self._count("inference_errors", f"inference failed: {exc!r}")
                self.trigger.failed()
                self._stop.wait(0.5)

    def lifecycle_hold(self, reason: str) -> tuple[bool, str]:
        self._held = True
        self.state = "inactive"
        return True, f"{reason}: no inference until activated"

    def lifecycle_resume(self) -> tuple[bool, str]:
        self._held = False
        self.state = "ready" if self.store.instruction else "waiting_for_instruction"
        self._wake.set()
        return True, "inferring again"

    def _maybe_infer(self) -> None:
        if self._held:
            return
        now = self._now()
        if not self.trigger.should_start(now, self.store.instruction_id, busy=False):
            return
        try:
            obs = self.store.assemble(now)
        except ObservationUnavailable as exc:
            self.last_skip_reason = str(exc)
            self.state = ("waiting_for_instruction" if not self.store.instruction
                          else "waiting_for_inputs")
            self.trigger.failed()
            if self.store.instruction:
                self._count("inferences_skipped", f"no inference: {exc}")
            self._stop.wait(0.1)
            return
        except Exception as exc:  # noqa: BLE001 - a lazily decoded frame was bad
            self._count("rejected_images", f"rejected image: {exc}")
            self.trigger.failed()
            return
        self.trigger.started(now, obs.instruction_id)
        if self._reset_requested.is_set():
            self._reset_requested.clear()
            self.policy.reset()
        self.state = "inferring"
        self.last_age = obs.age
        start = time.perf_counter()
        result = self.policy.infer(obs.images, obs.proprio, obs.instruction)
        latency = time.perf_counter() - start
        chunk = ActionChunk(stamp=obs.stamp, actions=np.asarray(result.actions),
                            joint_names=self.robot.joint_names,
                            step_period=self.params["step_period"],
                            chunk_id=self._next_chunk_id, instruction=obs.instruction,
                            model_latency=latency)
        self._next_chunk_id += 1
        self.chunk_pub.publish(action_chunk_to_msg(chunk))
        self.trigger.finished()
        with self._lock:
            self.counters["chunks_published"] += 1
            self.latencies.append(latency)
        self.last_skip_reason = ""
        self.state = "inactive" if self._held else "ready"  # deactivated while inferring

    # --- status ---------------------------------------------------------------------------
    def _publish_status(self) -> None:
        msg = PolicyStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.state = self.state
        msg.instruction = self.store.instruction
        msg.model = self.model_name
        with self._lock:
            for name, value in self.counters.items():
                setattr(msg, name, value)
            latencies = np.array(self.latencies) if self.latencies else None
        msg.last_inference_latency = float(latencies[-1]) if latencies is not None else -1.0
        msg.inference_latency_p50 = (float(np.percentile(latencies, 50))
                                     if latencies is not None else -1.0)
        msg.inference_latency_p95 = (float(np.percentile(latencies, 95))
                                     if latencies is not None else -1.0)
        msg.observation_age = float(self.last_age)
        msg.last_skip_reason = self.last_skip_reason
        self.status_pub.publish(msg)
        self.get_logger().info(status_line(msg), throttle_duration_sec=10.0)

    # --- parameters -----------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validate every runtime parameter of the request, then apply them all (or none)."""
        new = {p.name: p.value for p in parameters}
        if self._syncing_instruction and set(new) == {"instruction"}:
            return SetParametersResult(successful=True)
        mode = new.get("trigger", self.trigger.mode)
        horizon = new.get("demand_horizon", self.trigger.demand_horizon)
        rate = new.get("inference_rate_hz", self.get_parameter("inference_rate_hz").value)
        try:
            InferenceTrigger(mode, horizon, rate)  # validates the combination
            if "max_observation_age" in new and not new["max_observation_age"] > 0:
                raise ValueError("max_observation_age must be > 0 s")
            if "instruction" in new:
                text = str(new["instruction"]).strip()
                if not text:
                    raise ValueError("empty instruction (send a new one instead)")
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if "instruction" in new:
            self._syncing_instruction = True
            try:
                ok, reason = self._set_instruction(str(new["instruction"]))
            finally:
                self._syncing_instruction = False
            if not ok:
                return SetParametersResult(successful=False, reason=reason)
        # Plain attribute stores: the inference thread reads each one atomically.
        self.trigger.mode, self.trigger.demand_horizon = mode, float(horizon)
        self.trigger.period = 1.0 / float(rate)
        if "max_observation_age" in new:
            self.store.max_age = float(new["max_observation_age"])
        if "status_period" in new:
            self._status_timer.timer_period_ns = int(float(new["status_period"]) * 1e9)
            self._status_timer.reset()
        changed = ", ".join(f"{k}={v!r}" for k, v in new.items())
        self.get_logger().info(f"parameters changed: {changed}")
        if {"trigger", "inference_rate_hz"} & set(new):
            advice = history_rate_advice(self.policy, mode, float(rate),
                                         self.params["step_period"])
            if advice:
                self.get_logger().warning(advice)
        self._wake.set()
        return SetParametersResult(successful=True)

    # --- diagnostics ----------------------------------------------------------------------
    def _diagnose_inference(self) -> Check:
        with self._lock:
            latencies = np.array(self.latencies) if self.latencies else None
            errors = self.counters["inference_errors"]
        delta = self._deltas["inference"].update({"inference_errors": errors})
        chunk_time = self.policy.chunk_length * self.params["step_period"]
        values: dict = {"state": self.state, "model": self.model_name,
                        "trigger": self.trigger.mode, "chunk_duration_s": chunk_time,
                        "demand_horizon_s": self.trigger.demand_horizon,
                        "inference_period_s": self.trigger.period,
                        "inference_errors": errors}
        problems = []
        if delta["inference_errors"]:
            problems.append((ERROR, f"{delta['inference_errors']} inferences failed"))
        if latencies is None:
            return summarize(problems, f"no inference yet ({self.state})", values)
        p95 = float(np.percentile(latencies, 95))
        values.update(latency_p50_s=float(np.percentile(latencies, 50)), latency_p95_s=p95)
        budget_name, budget = "chunk duration", chunk_time
        if self.trigger.mode == "on_demand":
            budget_name, budget = "demand horizon", self.trigger.demand_horizon
        elif self.trigger.mode == "fixed_rate":
            budget_name, budget = "inference period", min(self.trigger.period, chunk_time)
        if p95 > chunk_time:
            problems.append((ERROR, f"latency p95 {p95 * 1e3:.0f} ms exceeds the chunk "
                                    f"duration {chunk_time * 1e3:.0f} ms: the robot waits"))
        elif p95 > budget:
            problems.append((WARN, f"latency p95 {p95 * 1e3:.0f} ms exceeds the {budget_name} "
                                   f"{budget * 1e3:.0f} ms"))
        return summarize(problems, f"latency p95 {p95 * 1e3:.0f} ms within the {budget_name} "
                                   f"{budget * 1e3:.0f} ms", values)

    def _diagnose_inputs(self) -> Check:
        names = ("rejected_images", "rejected_joint_states", "rejected_instructions",
                 "inferences_skipped")
        with self._lock:
            counters = {name: self.counters[name] for name in names}
        delta = self._deltas["inputs"].update(counters)
        values: dict = dict(counters, instruction=self.store.instruction,
                            last_skip_reason=self.last_skip_reason)
        problems = [(WARN, f"{delta[name]} {name.replace('_', ' ')}")
                    for name in names[:3] if delta[name]]
        if self.last_skip_reason.startswith("stale"):
            problems.append((WARN, self.last_skip_reason))
        elif delta["inferences_skipped"] and self.last_skip_reason:
            problems.append((WARN, f"no inference: {self.last_skip_reason}"))
        if not self.store.instruction:
            return summarize(problems, "waiting for an instruction", values)
        return summarize(problems, "inputs fresh", values)

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            # The worker checks _stop between inferences; a long one is not waited for (it
            # is a daemon thread and publishes nothing once the context is shut down).
            self._worker.join(timeout=1.0)
        super().destroy_node()


def status_line(msg: PolicyStatus) -> str:
    """The periodic log line; values that do not exist yet (no inference) are left out."""
    parts = [f"{msg.state}: {msg.chunks_published} chunks"]
    if msg.inference_latency_p50 >= 0:
        parts.append(f"latency p50 {msg.inference_latency_p50 * 1e3:.0f} ms")
    if msg.observation_age >= 0:
        parts.append(f"observation age {msg.observation_age * 1e3:.0f} ms")
    rejected = (msg.rejected_images, msg.rejected_joint_states, msg.rejected_instructions)
    if msg.inferences_skipped:
        parts.append(f"skipped {msg.inferences_skipped}")
    if any(rejected):
        parts.append("rejected images/joints/instructions {}/{}/{}".format(*rejected))
    return ", ".join(parts)


def main(args: list[str] | None = None) -> int:
    """Entry point ``vla_policy``; returns 1 when the node cannot start."""
    return run_node(VlaPolicyNode, "vla_policy", args=args)


if __name__ == "__main__":
    sys.exit(main())
