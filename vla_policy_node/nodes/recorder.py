"""``vla-record``: record demonstrations, one rosbag2 per episode, ready for ``vla-convert``.

Topics come from config/aloha.yaml (``DataSpec.record_topics()``: the cameras, the follower
joint states, the action source, instruction and success, plus ``extra_topics``). Messages are
received serialized (``raw=True``) and written as they are: no deserialization, no copies of
images through Python message objects.

Controls (services, and keys when stdin is a terminal):
  ~/start (r)   ~/stop (s: save)   ~/discard (d)   ~/mark_success (y)
  ~/set_instruction (vla_msgs/SetInstruction; key i), the instruction topic, or the
  ``instruction`` parameter.   h: help, q: quit.

Usage: ``vla-record --ros-args --params-file config/aloha.yaml [-p output_dir:=~/bags]``
"""

from __future__ import annotations

from dataclasses import replace
import importlib
import sys
import threading
from typing import Any, Callable

from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger
from vla_msgs.srv import SetInstruction

from vla_policy_node.data.recording import EpisodeRecorder, RecordingError
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.nodes.diagnostics import Check, DiagnosticsPublisher, OK
from vla_policy_node.nodes.parameters import declare_parameters, ParameterSpec
from vla_policy_node.nodes.runner import run_node

NODE_NAME = "vla_recorder"

PARAMETERS = (
    ParameterSpec("config_file", "", "robot/topic configuration read for the recorded topic "
                  "set (vla_policy cameras.*, vla_recorder action source); empty: the "
                  "package's config/aloha.yaml"),
    ParameterSpec("action_source", "", "leader (teleoperation) or commands (the Interbotix "
                  "commands on the follower command topics); empty: the config file's"),
    ParameterSpec("camera_transports", "", "recorded camera transports: raw (Image on the "
                  "topic) or compressed (CompressedImage on <topic>/compressed), "
                  "comma-separated per camera or one for all; empty: the config file's "
                  "(vla_recorder camera_transports, else vla_policy cameras.transports)"),
    ParameterSpec("output_dir", "~/vla_data/bags", "directory of the episode bags"),
    ParameterSpec("storage", "mcap", "bag storage: mcap or sqlite3"),
    ParameterSpec("instruction", "", "instruction stored in every episode"),
    ParameterSpec("max_episode_duration", 0.0, "stop an episode after this many seconds "
                  "(0: no limit)", (0.0, 86400.0)),
    ParameterSpec("keyboard", True, "keyboard controls when stdin is a terminal"),
)

HELP = ("keys: r start | s stop+save | y mark success | n mark failure | d discard | "
        "i set instruction | h help | q quit")


def message_class(msgtype: str) -> Any:
    """``pkg/msg/Name`` -> the rclpy message class (raises ValueError naming the type)."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise ValueError(f"bad message type name {msgtype!r} (expected pkg/msg/Name)")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"message type {msgtype!r} is not installed: {exc}") from None


class RecorderNode(Node):
    """Subscribes raw to the configured topics and feeds an :class:`EpisodeRecorder`."""

    def __init__(self, spec: DataSpec | None = None) -> None:
        super().__init__(NODE_NAME)
        values = declare_parameters(self, tuple(
            replace(spec, read_only=spec.name != "instruction") for spec in PARAMETERS))
        # The camera list lives in the vla_policy section: the topic set is read from the
        # whole file so that recorder and converter share one DataSpec.
        overrides = {name: values[name] for name in ("action_source", "camera_transports")
                     if values[name]}
        self.spec = spec or DataSpec.from_file(values["config_file"] or None, **overrides)
        topics = self.spec.record_topics()
        self.recorder = EpisodeRecorder(
            values["output_dir"], topics, self.spec.instruction_topic, self.spec.success_topic,
            storage=str(values["storage"]), instruction=str(values["instruction"]),
            action_source=self.spec.action_source)
        self.max_duration = float(values["max_episode_duration"])
        self.keyboard = bool(values["keyboard"])
        self.received = 0
        camera_topics = {t for t in topics if t.split("/compressed")[0] in
                         set(self.spec.camera_topics)}
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        sensor = QoSProfile(depth=30, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability)
        for topic, msgtype in topics.items():
            if topic == self.spec.instruction_topic:
                continue  # subscribed below: it also changes the stored instruction
            self._subscribe(topic, msgtype, sensor if topic in camera_topics else reliable)
        self.create_subscription(String, self.spec.instruction_topic, self._on_instruction,
                                 10)
        self._pending_extra = list(self.spec.extra_topics)
        if self._pending_extra:
            self._resolve_extra()
            self.create_timer(1.0, self._resolve_extra)
        self.create_service(Trigger, "~/start", self._trigger(self.start))
        self.create_service(Trigger, "~/stop", self._trigger(self.stop))
        self.create_service(Trigger, "~/discard", self._trigger(self.discard))
        self.create_service(Trigger, "~/mark_success", self._trigger(self.mark_success))
        self.create_service(SetInstruction, "~/set_instruction", self._on_set_instruction)
        # `ros2 param set /vla_recorder instruction ...` works like the other controls.
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.max_duration > 0:
            self.create_timer(0.1, self._check_duration)
        self.diagnostics = DiagnosticsPublisher(self, {"recording": self._diagnose})
        self.get_logger().info(
            f"recording {len(topics)} topics ({self.recorder.storage}) into "
            f"{self.recorder.output_dir}; instruction {self.recorder.instruction!r}")

    # ---- subscriptions -------------------------------------------------------------------
    def _subscribe(self, topic: str, msgtype: str, qos: QoSProfile) -> None:
        cls = message_class(msgtype)
        self.create_subscription(cls, topic, self._writer_for(topic), qos, raw=True)

    def _writer_for(self, topic: str) -> Callable[[bytes], None]:
        def write(raw: bytes) -> None:
            self.received += 1
            self.recorder.write(topic, self._now_ns(), raw)
        return write

    def _resolve_extra(self) -> None:
        graph = dict(self.get_topic_names_and_types())
        for topic in list(self._pending_extra):
            types = graph.get(topic)
            if not types:
                continue
            self._pending_extra.remove(topic)
            try:
                self.recorder.topics[topic] = types[0]
                self._subscribe(topic, types[0], QoSProfile(
                    depth=100, reliability=qos_profile_sensor_data.reliability))
                self.get_logger().info(f"extra topic {topic} ({types[0]}) found: recording "
                                       "it from the next episode")
            except ValueError as exc:
                self.recorder.topics.pop(topic, None)
                self.get_logger().error(f"cannot record extra topic {topic}: {exc}")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # ---- controls ------------------------------------------------------------------------
    def start(self) -> str:
        path = self.recorder.start(self._now_ns())
        return f"recording {path.name}"

    def stop(self) -> str:
        summary = self.recorder.stop(self._now_ns())
        n = sum(summary.messages.values())
        return (f"saved {summary.path} ({summary.duration:.1f} s, {n} messages, "
                f"success={summary.success})")

    def discard(self) -> str:
        return f"discarded {self.recorder.discard().name}"

    def mark_success(self, success: bool = True) -> str:
        self.recorder.mark_success(success)
        return f"episode marked {'successful' if success else 'failed'}"

    def set_instruction(self, text: str) -> str:
        self.recorder.set_instruction(text, self._now_ns())
        return f"instruction: {self.recorder.instruction!r}"

    def control(self, action: Callable[[], str]) -> tuple[bool, str]:
        """Run a control; errors (wrong state, disk) are answered, never raised."""
        try:
            message = action()
        except (RecordingError, ValueError, OSError) as exc:
            self.get_logger().warning(str(exc))
            return False, str(exc)
        self.get_logger().info(message)
        return True, message

    def _trigger(self, action: Callable[[], str]) -> Callable[[Any, Any], Any]:
        def serve(request: Any, response: Any) -> Any:
            response.success, response.message = self.control(action)
            return response
        return serve

    def _on_set_instruction(self, request: Any, response: Any) -> Any:
        response.success, response.message = self.control(
            lambda: self.set_instruction(request.instruction))
        return response

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "instruction":
                ok, message = self.control(
                    lambda text=str(parameter.value): self.set_instruction(text))
                if not ok:
                    return SetParametersResult(successful=False, reason=message)
        return SetParametersResult(successful=True)

    def _on_instruction(self, msg: String) -> None:
        self.control(lambda: self.set_instruction(msg.data))

    def _diagnose(self) -> Check:
        state = "recording" if self.recorder.recording else "idle"
        return Check(OK, f"{state}, {self.received} messages received",
                     {"state": state, "received": self.received,
                      "output_dir": self.recorder.output_dir,
                      "instruction": self.recorder.instruction})

    def _check_duration(self) -> None:
        if self.recorder.recording and self.recorder.elapsed(self._now_ns()) >= \
                self.max_duration:
            self.get_logger().warning(f"episode reached max_episode_duration "
                                      f"{self.max_duration} s")
            self.control(self.stop)

    def destroy_node(self) -> None:
        self.recorder.close()
        super().destroy_node()


class Keyboard:
    """Single-key controls on a terminal (cbreak mode, restored on exit)."""

    def __init__(self, node: RecorderNode, stop_event: threading.Event) -> None:
        self.node = node
        self.stop_event = stop_event
        self.thread = threading.Thread(target=self._run, daemon=True, name="keyboard")

    def _run(self) -> None:
        import termios
        import tty
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        print(HELP, flush=True)
        try:
            tty.setcbreak(fd)
            while not self.stop_event.is_set():
                key = sys.stdin.read(1)
                if not key or key == "q":
                    break
                if key == "i":
                    termios.tcsetattr(fd, termios.TCSADRAIN, saved)
                    try:
                        text = input("instruction: ")
                    finally:
                        tty.setcbreak(fd)
                    self.node.control(lambda t=text: self.node.set_instruction(t))
                    continue
                actions = {"r": self.node.start, "s": self.node.stop,
                           "d": self.node.discard, "y": self.node.mark_success,
                           "n": lambda: self.node.mark_success(False)}
                if key in actions:
                    self.node.control(actions[key])
                elif key in ("h", "?"):
                    print(HELP, flush=True)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self.stop_event.set()


def _spin(node: "RecorderNode") -> None:
    """Spin until shutdown or the keyboard's quit key."""
    stop_event = threading.Event()
    if node.keyboard and sys.stdin.isatty():
        Keyboard(node, stop_event).thread.start()
    else:
        node.get_logger().info("stdin is not a terminal: control through the services")
    while rclpy.ok() and not stop_event.is_set():
        rclpy.spin_once(node, timeout_sec=0.1)


def _parse_args(args: list[str]) -> None:
    """``--help`` (printed, exit 0) and unknown options (exit 2), before rclpy starts.

    Everything after ``--ros-args`` belongs to ROS (parameters, remappings) and is left out.
    """
    import argparse
    parser = argparse.ArgumentParser(
        prog="vla-record", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[0].strip("`").replace("``", ""),
        epilog="parameters (-p NAME:=VALUE after --ros-args, or a --params-file section "
               f"{NODE_NAME}):\n" + "\n".join(
                   f"  {s.name} (default {s.default!r}): {s.description}" for s in PARAMETERS)
               + f"\n\n{HELP}\nservices: ~/start ~/stop ~/discard ~/mark_success "
               "(std_srvs/Trigger), ~/set_instruction (vla_msgs/SetInstruction)\n\n"
               "example: vla-record --ros-args --params-file config/aloha.yaml "
               "-p output_dir:=~/bags")
    parser.parse_args(rclpy.utilities.remove_ros_args(args)[1:])


def main(args: list[str] | None = None) -> int:
    """Entry point ``vla-record``; returns 1 when the recorder cannot start."""
    _parse_args(sys.argv if args is None else args)
    return run_node(RecorderNode, NODE_NAME, spin=_spin, args=args)


if __name__ == "__main__":
    sys.exit(main())
