"""vla-sim-demos: scripted demonstrations on the simulated ALOHA, recorded through ROS.

Starts ``sim_aloha`` and ``vla-record`` (action source: the follower commands) on a private ROS
domain and plays a scripted teleoperator: for each episode it plans the scripted trajectory
(end-effector waypoints rolled out in the mocap variant, replayed in joint space; see
:mod:`vla_policy_node.sim.scripted`), sets the simulator's task and seed and resets it, starts
the recorder with the task's instruction, publishes the joint commands on the Interbotix
command topics one per simulated control step (driven by /clock), marks the episode successful
when the simulator reports success, and stops (or discards) the recording. The bags are what a
teleoperated session gives, ready for vla-convert. The recorder records the cameras' JPEG
``<topic>/compressed`` (what sim_aloha publishes there, like image_transport for a real camera;
about 25x smaller than raw frames) unless ``--raw-images``.

--direct writes the same episodes without ROS (the simulator and the bag writer in this process):
faster, but not the recording path a robot uses.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from vla_policy_node.config import default_config_path, load_node_params, RobotConfig
from vla_policy_node.control.arms import ArmMapper
from vla_policy_node.launch_spec import node_descriptions, NodeDescription

#: Simulated steps after the last command before the outcome is read (the arms settle).
SETTLE_STEPS = 25


class DemoError(RuntimeError):
    """The ROS graph did not do what the driver asked (a service missing, failed or late)."""


@dataclass
class EpisodeResult:
    """What one scripted episode gave.

    Attributes:
        seed: object placement seed.
        success: the simulator reported success before the end of the episode.
        bag: the saved bag (None when discarded).
        commands: control steps commanded.
        wall_seconds: wall time of the episode, planning included.
    """

    seed: int
    success: bool
    bag: str | None
    commands: int
    wall_seconds: float


class SimDriver:
    """A ROS node that drives the simulated ALOHA between episodes: its /clock, its success
    flag, its task/seed parameters and reset service, and the services of other nodes.

    The ROS callbacks run on a thread of their own, so the caller may block on service calls
    and on simulated time. Subclasses add clients to ``self._clients`` (``extra_clients``)
    and subscriptions in :meth:`_setup`.

    Args:
        context: an initialized rclpy context.
        robot: robot description (topics, gripper calibration).
        sim_params: the ``sim_aloha`` parameters (command topics and names, success topic).
        sim_node: name of the running simulator node (its services).
        node_name: name of this node.
        extra_clients: more Trigger services, ``{key: full service name}``.
    """

    def __init__(self, context: Any, robot: RobotConfig, sim_params: dict[str, Any],
                 sim_node: str = "sim_aloha", node_name: str = "vla_sim_driver",
                 extra_clients: dict[str, str] | None = None) -> None:
        import rclpy
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger

        self.robot = robot
        self.sim_params = sim_params
        self._Parameter, self._Trigger, self._SetParameters = Parameter, Trigger, SetParameters
        self.node = rclpy.create_node(
            node_name, context=context,
            parameter_overrides=[Parameter("use_sim_time", Parameter.Type.BOOL, True)])
        self.reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._lock = threading.Lock()
        self._ticks = 0
        self.sim_time = math.nan
        self._tick_event = threading.Condition(self._lock)
        self.node.create_subscription(Clock, "/clock", self._on_clock_msg, self.reliable)
        self.node.create_subscription(Bool, sim_params.get("success_topic", "/sim/success"),
                                      self._on_success, self.reliable)
        self._clients: dict[str, Any] = {
            "reset": self.node.create_client(Trigger, f"/{sim_node}/reset"),
            "sim_parameters": self.node.create_client(
                SetParameters, f"/{sim_node}/set_parameters")}
        for key, service in (extra_clients or {}).items():
            self._clients[key] = self.node.create_client(Trigger, service)
        self._setup()
        self._executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="sim-driver-ros", daemon=True)
        self._spinner.start()

    def _setup(self) -> None:
        """Subclasses: more publishers, subscriptions and clients (before spinning starts)."""

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass

    def _on_clock_msg(self, msg: Any) -> None:
        with self._lock:
            self._ticks += 1
            self.sim_time = msg.clock.sec + msg.clock.nanosec * 1e-9
            self._tick_event.notify_all()
            self._on_tick()

    def _on_tick(self) -> None:
        """Subclasses: called (lock held) on every simulator step."""

    def _on_success(self, msg: Any) -> None:
        """Subclasses: the simulator's success flag (every joint-state period)."""

    def wait_ticks(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the simulator has stepped ``n`` more times (its /clock)."""
        with self._lock:
            target = self._ticks + n
            if not self._tick_event.wait_for(lambda: self._ticks >= target, timeout):
                raise DemoError(f"the simulator did not step for {timeout:.0f} s (no /clock)")

    # ---- services ------------------------------------------------------------------------
    def _call(self, name: str, request: Any, timeout: float = 10.0) -> Any:
        client = self._clients[name]
        if not client.wait_for_service(timeout_sec=timeout):
            raise DemoError(f"service {client.srv_name} is not available")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise DemoError(f"service {client.srv_name} did not answer in {timeout:.0f} s")
        response = future.result()
        if hasattr(response, "success") and not response.success:
            raise DemoError(f"{client.srv_name} failed: {response.message}")
        return response

    def trigger(self, name: str) -> str:
        """Call one of the std_srvs/Trigger services; its message."""
        return self._call(name, self._Trigger.Request()).message

    def set_episode(self, task: str, seed: int) -> str:
        """Set the simulator's task and seed, then reset it; the reset's description."""
        P = self._Parameter
        request = self._SetParameters.Request(parameters=[
            P("task", P.Type.STRING, task).to_parameter_msg(),
            P("seed", P.Type.INTEGER, int(seed)).to_parameter_msg()])
        for result in self._call("sim_parameters", request).results:
            if not result.successful:
                raise DemoError(f"simulator refused task {task!r} seed {seed}: {result.reason}")
        message = self.trigger("reset")
        if f"seed {seed}" not in message:
            raise DemoError(f"the simulator reset to {message!r}, not seed {seed}")
        return message

    def wait_for_graph(self, timeout: float) -> None:
        """Wait for the simulator's clock and every service, or raise naming what is missing."""
        deadline = time.monotonic() + timeout
        for client in self._clients.values():
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise DemoError(f"service {client.srv_name} did not appear in {timeout:.0f} s")
        self.wait_ticks(1, timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        # A spin thread still inside rclpy when the interpreter exits aborts the process
        # ("terminate called without an active exception", exit -6): let it end first.
        self._spinner.join(timeout=2.0)
        self.node.destroy_node()


class ScriptedTeleop(SimDriver):
    """A ROS node that commands the simulated arms like a teleoperator and runs the recorder.

    Args:
        context: an initialized rclpy context.
        robot: robot description (topics, gripper calibration).
        sim_params: the ``sim_aloha`` parameters (command topics and names, success topic).
        sim_node / recorder_node: names of the running nodes (their services).
    """

    def __init__(self, context: Any, robot: RobotConfig, sim_params: dict[str, Any],
                 sim_node: str = "sim_aloha", recorder_node: str = "vla_recorder") -> None:
        self._recorder_node = recorder_node
        self._actions: np.ndarray | None = None
        self._next = 0
        self._settle = 0
        self._success = False
        self._done = threading.Event()
        super().__init__(context, robot, sim_params, sim_node, "vla_scripted_teleop", {
            name: f"/{recorder_node}/{name}"
            for name in ("start", "stop", "discard", "mark_success")})

    def _setup(self) -> None:
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
        from vla_msgs.srv import SetInstruction

        self._Group, self._Single = JointGroupCommand, JointSingleCommand
        self._SetInstruction = SetInstruction
        self.group_name = str(self.sim_params.get("group_name", "arm"))
        self.gripper_name = str(self.sim_params.get("gripper_name", "gripper"))
        self._arms = ArmMapper(self.robot)
        self._outputs = {arm: (
            self.node.create_publisher(
                JointGroupCommand, self.sim_params["group_topic"].format(arm=arm),
                self.reliable),
            self.node.create_publisher(
                JointSingleCommand, self.sim_params["single_topic"].format(arm=arm),
                self.reliable))
            for arm in self.robot.arms}
        self._clients["set_instruction"] = self.node.create_client(
            SetInstruction, f"/{self._recorder_node}/set_instruction")

    # ---- topics --------------------------------------------------------------------------
    def _publish(self, action: np.ndarray) -> None:
        for command in self._arms.split(action):
            group_pub, single_pub = self._outputs[command.arm]
            group_pub.publish(self._Group(name=self.group_name,
                                          cmd=command.positions.tolist()))
            single_pub.publish(self._Single(name=self.gripper_name,
                                            cmd=command.gripper_position))

    def _on_tick(self) -> None:
        actions = self._actions
        if actions is None:
            return
        if self._next < len(actions):
            # One command per simulated step: this tick executed the previous command.
            self._publish(actions[self._next])
            self._next += 1
        elif self._settle > 0:
            self._settle -= 1
        else:
            self._actions = None
            self._done.set()

    def _on_success(self, msg: Any) -> None:
        with self._lock:
            if self._actions is not None and msg.data:
                self._success = True

    def set_instruction(self, text: str) -> None:
        self._call("set_instruction", self._SetInstruction.Request(instruction=text))

    # ---- episodes ------------------------------------------------------------------------
    def play(self, actions: np.ndarray, period: float) -> bool:
        """Command ``actions`` (T, D), one per simulated step, then let the arms settle.

        Returns:
            Whether the simulator reported success during the episode.
        """
        with self._lock:
            self._done.clear()
            self._next, self._settle, self._success = 1, SETTLE_STEPS, False
            self._publish(actions[0])
            self._actions = np.asarray(actions, dtype=np.float64)
        # Generous: the sim may run slower than real time while rendering cameras.
        timeout = 60.0 + 20.0 * (len(actions) + SETTLE_STEPS) * period
        if not self._done.wait(timeout):
            with self._lock:
                self._actions = None
            raise DemoError(f"the episode did not finish in {timeout:.0f} s (simulator stalled)")
        with self._lock:
            return self._success

    def record_episode(self, trajectory: Any, instruction: str, out_dir: Path,
                       period: float, keep_failures: bool = False) -> EpisodeResult:
        """Reset to the trajectory's task and seed, record its replay, keep or discard it."""
        wall = time.monotonic()
        self.set_episode(trajectory.task, trajectory.seed)
        self.wait_ticks(3)  # the recorder's first joint states come from the new episode
        self.set_instruction(instruction)
        name = self.trigger("start").removeprefix("recording ").strip()
        try:
            success = self.play(trajectory.actions, period)
        except BaseException:
            self.trigger("discard")
            raise
        bag: str | None = None
        if success:
            self.trigger("mark_success")
        if success or keep_failures:
            self.trigger("stop")
            bag = str(out_dir / name)
        else:
            self.trigger("discard")
        return EpisodeResult(int(trajectory.seed), bool(success), bag,
                             len(trajectory.actions), round(time.monotonic() - wall, 2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-sim-demos",
        description="Record scripted demonstrations of the simulated ALOHA through ROS: "
                    "sim_aloha and vla-record (recording the follower commands) run on a "
                    "private ROS domain while a scripted teleoperator resets the simulator to "
                    "each seed, starts the recorder with the task's instruction, commands the "
                    "arms one step per /clock tick, marks successful episodes and saves them "
                    "(failed ones are discarded). One rosbag2 per episode, as vla-record writes "
                    "them, the cameras as JPEG CompressedImage on <topic>/compressed "
                    "(--raw-images: raw Image); node logs in OUT/logs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Example: vla-sim-demos --out bags/ --task insertion --episodes 20 && "
               "vla-convert bags/episode_* --out dataset/")
    parser.add_argument("--out", required=True, help="directory for the episode bags")
    parser.add_argument("--task", choices=["transfer_cube", "insertion"],
                        default="transfer_cube", help="simulated task")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="object placement seed of the first episode (then +1 each)")
    parser.add_argument("--config", default=str(default_config_path()),
                        help="parameter file (robot, sim_aloha and vla_recorder sections)")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap",
                        help="bag storage format")
    parser.add_argument("--keep-failures", action="store_true",
                        help="keep bags of failed episodes (marked unsuccessful)")
    parser.add_argument("--json", default=None,
                        help="write the per-episode results and success rate here")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="wall seconds for the simulator and recorder to come up")
    parser.add_argument("--direct", action="store_true",
                        help="no ROS: simulate and write the bags in this process")
    parser.add_argument("--raw-images", action="store_true",
                        help="record raw sensor_msgs/Image frames on the camera topics instead "
                             "of the default JPEG CompressedImage on <camera topic>/compressed "
                             "(about 25x smaller at 240x320; quality 90: through ROS "
                             "sim_aloha's jpeg_quality, with --direct the episode writer's)")
    return parser


def node_set(config: str, out: Path, storage: str, task: str, seed: int,
             raw_images: bool = False) -> list[NodeDescription]:
    """The simulator (as the bringup starts it) and the recorder, set up for scripted
    recording: the commands as actions, the cameras raw or (default) JPEG-compressed."""
    [sim] = [node for node in node_descriptions(config=config, sim="true", task=task)
             if node.name == "sim_aloha"]
    sim = dataclasses.replace(sim, overrides={**sim.overrides, "seed": int(seed)})
    recorder = NodeDescription(
        "vla-record", "vla_policy_node.nodes.recorder", "vla_recorder", config,
        {"use_sim_time": True, "config_file": config, "output_dir": str(out),
         "storage": storage, "action_source": "commands", "keyboard": False,
         "camera_transports": "raw" if raw_images else "compressed"})
    return [sim, recorder]


SEEDS_FILE = "sim_seeds.json"


def record_seeds(out: Path, results: Sequence[EpisodeResult]) -> None:
    """``OUT/sim_seeds.json``: bag name -> object placement seed, merged over runs, so training
    can record which seeds its demonstrations used (vla-eval keeps evaluation seeds apart)."""
    path = out / SEEDS_FILE
    try:
        seeds = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        seeds = {}
    seeds.update({Path(r.bag).name: r.seed for r in results if r.bag})
    tmp = path.with_name(f".{SEEDS_FILE}.tmp")
    tmp.write_text(json.dumps(seeds, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Record the episodes through ROS; returns the report (see :func:`main`)."""
    from tqdm import tqdm

    from vla_policy_node.sim import AlohaSim, INSTRUCTIONS, SimConfig
    from vla_policy_node.sim.scripted import plan_joint_trajectory, tune_replay
    from vla_policy_node.tools.bringup import NodeProcesses
    from vla_policy_node.tools.session import private_ros_graph, stop_on_signals

    config = str(Path(args.config).resolve())
    params = load_node_params(config, "sim_aloha")
    robot = RobotConfig.from_params(params)
    sim_config = SimConfig.from_params({**params, "task": args.task})
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: list[EpisodeResult] = []
    interrupted = False
    with stop_on_signals() as stop, private_ros_graph() as (domain, env, context):
        print(f"vla-sim-demos: starting sim_aloha ({args.task}) and vla-record on private ROS "
              f"domain {domain}; bags in {out}, logs in {out}/logs", flush=True)
        processes = NodeProcesses(node_set(config, out, args.storage, args.task,
                                           args.first_seed, args.raw_images),
                                  env=env, output=None, log_dir=str(out / "logs"))
        teleop = None
        planner = AlohaSim(robot, sim_config)
        try:
            processes.start()
            teleop = ScriptedTeleop(context, robot, params)
            try:
                teleop.wait_for_graph(args.startup_timeout)
            except DemoError as exc:
                raise DemoError(f"{exc}; exited nodes: {processes.exited() or 'none'} "
                                f"(see {out}/logs)") from None
            seeds = range(args.first_seed, args.first_seed + args.episodes)
            bar = tqdm(seeds, desc=f"{args.task} demos", unit="episode")
            for seed in bar:
                if stop.is_set():
                    interrupted = True
                    break
                if processes.exited():
                    raise DemoError(f"node(s) exited: {processes.exited()} (see {out}/logs)")
                trajectory = tune_replay(planner, plan_joint_trajectory(
                    robot, args.task, seed, sim_config))
                result = teleop.record_episode(trajectory, INSTRUCTIONS[args.task], out,
                                               sim_config.control_period, args.keep_failures)
                results.append(result)
                bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
            interrupted = interrupted or stop.is_set()
        finally:
            planner.close()
            if teleop is not None:
                teleop.close()
            processes.stop()
    record_seeds(out, results)
    n = len(results)
    return {
        "task": args.task,
        "instruction": INSTRUCTIONS[args.task],
        "episodes": n,
        "successes": sum(r.success for r in results),
        "success_rate": (sum(r.success for r in results) / n) if n else math.nan,
        "bags": [r.bag for r in results if r.bag],
        "interrupted": interrupted,
        "results": [asdict(r) for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be >= 0, got {args.first_seed}")
    if not Path(args.config).is_file():
        parser.error(f"--config: file not found: {args.config}")
    if args.direct:
        from vla_policy_node.sim import demos
        forwarded = ["--out", args.out, "--task", args.task, "--episodes", str(args.episodes),
                     "--first-seed", str(args.first_seed), "--config", args.config,
                     "--storage", args.storage] + (["--keep-failures"] if args.keep_failures
                                                   else []) + (
            ["--raw-images"] if args.raw_images else [])
        return demos.main(forwarded)
    try:
        report = run(args)
    except DemoError as exc:
        print(f"vla-sim-demos: {exc}", file=sys.stderr)
        return 1
    print(f"vla-sim-demos: {report['successes']}/{report['episodes']} scripted {args.task} "
          f"episodes succeeded through ROS; "
          f"{len(report['bags'])} bags in {Path(args.out).resolve()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 130 if report["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
