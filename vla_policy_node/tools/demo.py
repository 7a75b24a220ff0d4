"""vla-demo: the whole suite on a simulated ALOHA, no robot needed (what `make demo` runs).

Starts the simulated ALOHA, the vla_policy node (the package's trained transfer_cube policy,
--checkpoint DIR, or --preset NAME with random weights) and the chunk_executor through the same
bringup as `vla-bringup --sim true`, on a private ROS domain with localhost-only discovery (so it
can never reach a real robot), sends an instruction, runs for --duration seconds of simulated
time, then prints a summary (with the task's success and highest reward stage), writes it as JSON
and saves a plot of commanded vs measured joint positions.

The default policy is the one shipped in vla_policy_node/pretrained/sim_transfer_cube (its
README.md gives its held-out success rate), on a held-out object placement (--seed, default
1000000: training demonstrations use seeds below 100000). With --preset the arms move but do not
solve the task: that shows the system working (chunks flowing, commands at the control rate,
limits held), not a trained policy.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
import dataclasses
import json
import math
from pathlib import Path
import sys
import threading
import time
from typing import Any

import numpy as np

from vla_policy_node.config import default_config_path, load_node_params, RobotConfig
from vla_policy_node.launch_spec import node_descriptions
from vla_policy_node.pretrained import MissingPolicyError
from vla_policy_node.sim.scripted import EVAL_SEED_START
from vla_policy_node.tools.bringup import NodeProcesses
from vla_policy_node.tools.session import (
    add_policy_arguments, private_ros_graph, resolve_policy, stop_on_signals)

INSTRUCTIONS = {"transfer_cube": "transfer the red cube to the other arm",
                "insertion": "insert the peg into the socket"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-demo", description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="Example: vla-demo --duration 30 --task insertion --json out/demo.json")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of simulated time to run (default 20)")
    parser.add_argument("--task", choices=sorted(INSTRUCTIONS), default="transfer_cube")
    parser.add_argument("--instruction", default=None,
                        help="instruction to send (default: the task's)")
    add_policy_arguments(parser)
    parser.add_argument("--seed", type=int, default=EVAL_SEED_START,
                        help="object placement seed (default %(default)s, held out from "
                             "training demonstrations)")
    parser.add_argument("--config", default="", help="parameter file (default aloha.yaml)")
    parser.add_argument("--output-dir", default="demo_output",
                        help="where logs, plot and data go (default ./demo_output)")
    parser.add_argument("--json", default=None,
                        help="summary JSON path (default OUTPUT_DIR/summary.json)")
    parser.add_argument("--plot", default=None,
                        help="PNG of commanded vs measured joints (default OUTPUT_DIR/joints.png)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="wall seconds to wait for the first chunk (default 180)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


class Monitor:
    """Observes the running system (on sim time) and collects what the summary reports."""

    def __init__(self, context: Any, robot: RobotConfig, params: dict[str, Any]) -> None:
        import rclpy
        from rclpy.parameter import Parameter
        from rclpy.qos import qos_profile_sensor_data
        from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float64, String
        from vla_msgs.msg import ActionChunk, ExecutorStatus, PolicyStatus

        self.robot = robot
        self.node = rclpy.create_node(
            "vla_demo_monitor", context=context,
            parameter_overrides=[Parameter("use_sim_time", Parameter.Type.BOOL, True)])
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.String = String
        self.lock = threading.Lock()
        self.sim_time = math.nan
        self.chunks: list[Any] = []
        self.policy_status: Any = None
        self.executor_status: Any = None
        self.success = False
        self.max_reward = 0.0
        self.commands: dict[str, list[float]] = defaultdict(list)  # arm -> command times
        self.commanded = np.full(robot.dim, np.nan)
        self.measured = np.full(robot.dim, np.nan)
        self.samples: list[tuple[float, np.ndarray, np.ndarray]] = []
        groups = robot.arm_group_indices()
        sim = params
        n = self.node
        n.create_subscription(Clock, "/clock", self._on_clock, 10)
        n.create_subscription(ActionChunk, "/vla/action_chunk", self.chunks.append, 10)
        n.create_subscription(PolicyStatus, "/vla/policy_status",
                              lambda m: setattr(self, "policy_status", m), 10)
        n.create_subscription(ExecutorStatus, "/vla/executor_status",
                              lambda m: setattr(self, "executor_status", m), 10)
        n.create_subscription(Bool, sim.get("success_topic", "/sim/success"),
                              self._on_success, 10)
        n.create_subscription(Float64, sim.get("reward_topic", "/sim/reward"),
                              self._on_reward, 10)
        for arm, group in groups.items():
            n.create_subscription(
                JointGroupCommand, sim["group_topic"].format(arm=arm),
                lambda m, a=arm, g=group: self._on_group(a, g, m), 10)
            n.create_subscription(
                JointSingleCommand, sim["single_topic"].format(arm=arm),
                lambda m, g=group: self._on_single(g, m), 10)
            n.create_subscription(
                JointState, f"/{arm}/{robot.joint_states_topic_suffix}",
                lambda m, a=arm: self._on_joint_state(a, m), qos_profile_sensor_data)
        self.instruction_pub = n.create_publisher(String, "/vla/instruction", 10)

    def _on_clock(self, msg: Any) -> None:
        self.sim_time = msg.clock.sec + msg.clock.nanosec * 1e-9

    def _on_success(self, msg: Any) -> None:
        self.success = self.success or bool(msg.data)

    def _on_reward(self, msg: Any) -> None:
        self.max_reward = max(self.max_reward, float(msg.data))

    def _on_group(self, arm: str, group: dict, msg: Any) -> None:
        self.commands[arm].append(self.sim_time)
        if len(msg.cmd) == len(group["joint_indices"]):
            self.commanded[group["joint_indices"]] = msg.cmd

    def _on_single(self, group: dict, msg: Any) -> None:
        if group["gripper_index"] is not None:
            self.commanded[group["gripper_index"]] = self.robot.normalize_gripper(msg.cmd)

    def _on_joint_state(self, arm: str, msg: Any) -> None:
        from vla_policy_node.policy_runtime import arm_vector
        try:
            indices, values = arm_vector(self.robot, arm, list(msg.name), list(msg.position))
        except ValueError:
            return
        self.measured[indices] = values
        if arm == self.robot.arms[-1] and math.isfinite(self.sim_time):
            self.samples.append((self.sim_time, self.commanded.copy(), self.measured.copy()))

    def say(self, text: str) -> None:
        self.instruction_pub.publish(self.String(data=text))

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, end - time.monotonic())))


def summarize(monitor: Monitor, start_sim: float, end_sim: float, wall: float,
              physics_rate: float, robot: RobotConfig, interrupted: bool) -> dict[str, Any]:
    latencies = np.array([c.model_latency.sec + c.model_latency.nanosec * 1e-9
                          for c in monitor.chunks])
    status = monitor.executor_status
    sim_elapsed = max(0.0, end_sim - start_sim) if math.isfinite(end_sim) else 0.0
    rates = [sum(1 for t in times if start_sim <= t <= end_sim) / sim_elapsed
             for times in monitor.commands.values()] if sim_elapsed > 0 else [0.0]
    measured = np.array([m for _, _, m in monitor.samples]) if monitor.samples else None
    within = None
    if measured is not None:
        finite = measured[np.all(np.isfinite(measured), axis=1)]
        tolerance = 0.05  # the physics settles slightly past a commanded limit
        within = bool(np.all(finite >= robot.position_min - tolerance)
                      and np.all(finite <= robot.position_max + tolerance))
    return {
        "interrupted": interrupted,
        "sim_seconds": round(sim_elapsed, 3),
        "wall_seconds": round(wall, 3),
        "chunks_published": len(monitor.chunks),
        "inference_latency_p50_s": float(np.percentile(latencies, 50)) if latencies.size
        else None,
        "inference_latency_p95_s": float(np.percentile(latencies, 95)) if latencies.size
        else None,
        "executor_achieved_rate_hz": float(status.achieved_rate_hz) if status else None,
        "commands_per_sim_second": round(float(min(rates)), 2) if rates else 0.0,
        "starved_ticks": int(status.starved_ticks) if status else None,
        "clamped_commands": int(status.clamped_commands) if status else None,
        "rate_limited_commands": int(status.rate_limited_commands) if status else None,
        "rejected_chunks": int(status.rejected_chunks) if status else None,
        "sim_steps_per_wall_second": round(sim_elapsed * physics_rate / wall, 2)
        if wall > 0 else None,
        "task_success": monitor.success,
        "max_reward": monitor.max_reward,
        "measured_within_limits": within,
        "joint_motion_range": float(np.nanmax(np.ptp(measured, axis=0)))
        if measured is not None and len(measured) > 1 else 0.0,
    }


def save_plot(monitor: Monitor, robot: RobotConfig, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not monitor.samples:
        return
    t = np.array([s[0] for s in monitor.samples])
    commanded = np.array([s[1] for s in monitor.samples])
    measured = np.array([s[2] for s in monitor.samples])
    t = t - t[0]
    rows = math.ceil(robot.dim / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 2 * rows), sharex=True)
    for i, name in enumerate(robot.joint_names):
        ax = axes[i % rows, i // rows]
        ax.plot(t, commanded[:, i], label="commanded", lw=1.2)
        ax.plot(t, measured[:, i], label="measured", lw=1.0, ls="--")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("sim time (s)")
    fig.suptitle("vla-demo: commanded vs measured joint positions")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    np.savez_compressed(path.with_suffix(".npz"), t=t, commanded=commanded, measured=measured,
                        joint_names=np.array(robot.joint_names))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.duration > 0:
        print(f"vla-demo: --duration must be > 0, got {args.duration}", file=sys.stderr)
        return 2
    config = args.config or str(default_config_path())
    robot = RobotConfig.from_file(config)
    sim_params = load_node_params(config, "sim_aloha")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else out / "summary.json"
    plot_path = Path(args.plot) if args.plot else out / "joints.png"
    instruction = args.instruction or INSTRUCTIONS[args.task]
    if args.seed < 0:
        print(f"vla-demo: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    try:
        policy_name = resolve_policy(args)
        nodes = node_descriptions(config=config, sim="true", checkpoint=args.checkpoint,
                                  preset=args.preset or "tiny", task=args.task)
    except (ValueError, MissingPolicyError) as exc:
        print(f"vla-demo: {exc}", file=sys.stderr)
        return 2
    nodes = [dataclasses.replace(n, overrides={**n.overrides, "seed": args.seed})
             if n.name == "sim_aloha" else n for n in nodes]

    interrupted = False
    with stop_on_signals() as stop, private_ros_graph() as (domain, env, context):
        print(f"vla-demo: starting sim_aloha ({args.task}, seed {args.seed}), vla_policy "
              f"({policy_name}) and chunk_executor on private ROS domain {domain}; logs in "
              f"{out}/", flush=True)
        processes = NodeProcesses(nodes, env=env, output=None, log_dir=str(out / "logs"))
        monitor = None
        wall_start = time.monotonic()
        start_sim = end_sim = math.nan
        try:
            processes.start()
            monitor = Monitor(context, robot, sim_params)
            # Wait for the first chunk, repeating the instruction (discovery takes a moment).
            deadline = time.monotonic() + args.startup_timeout
            while not monitor.chunks and not stop.is_set():
                if processes.exited():
                    raise RuntimeError(f"nodes exited during start-up: {processes.exited()} "
                                       f"(see {out}/logs)")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no action chunk after {args.startup_timeout:.0f} s "
                                       f"(see {out}/logs)")
                monitor.say(instruction)
                monitor.spin(0.5)
            print(f"vla-demo: first chunk after {time.monotonic() - wall_start:.1f} s; "
                  f"running {args.duration:g} s of simulated time", flush=True)
            start_sim = monitor.sim_time
            wall_start = time.monotonic()
            progress = None
            if not args.quiet:
                from tqdm import tqdm
                progress = tqdm(total=round(args.duration, 1), unit="sim s",
                                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim s "
                                           "[{elapsed}<{remaining}]")
            while not stop.is_set() and monitor.sim_time - start_sim < args.duration:
                if processes.exited():
                    raise RuntimeError(f"node(s) exited: {processes.exited()} "
                                       f"(see {out}/logs)")
                monitor.spin(0.2)
                if progress is not None:
                    progress.n = round(min(args.duration, monitor.sim_time - start_sim), 1)
                    progress.refresh()
            if progress is not None:
                progress.close()
            interrupted = stop.is_set()
            end_sim = monitor.sim_time
        except RuntimeError as exc:
            print(f"vla-demo: {exc}", file=sys.stderr)
            return 1
        finally:
            wall = time.monotonic() - wall_start
            processes.stop()
            if monitor is not None:
                summary = {"policy": policy_name, "checkpoint": args.checkpoint or None,
                           "preset": args.preset or None, "task": args.task, "seed": args.seed,
                           **summarize(monitor, start_sim, end_sim, wall,
                                       float(sim_params.get("physics_rate_hz", 50.0)), robot,
                                       interrupted or stop.is_set())}
                save_plot(monitor, robot, plot_path)
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps(summary, indent=2) + "\n")
                monitor.node.destroy_node()
                print_summary(summary, json_path, plot_path)
    return 130 if interrupted else 0


def print_summary(summary: dict[str, Any], json_path: Path, plot_path: Path) -> None:
    def fmt(value: Any, scale: float = 1.0, unit: str = "") -> str:
        if value is None:
            return "n/a"
        return f"{value * scale:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}"
    lines = [
        ("policy", f"{summary['policy']} on {summary['task']}, seed {summary['seed']}"),
        ("simulated / wall time", f"{summary['sim_seconds']:.1f} s / "
                                  f"{summary['wall_seconds']:.1f} s"),
        ("chunks published", fmt(summary["chunks_published"])),
        ("inference latency p50 / p95",
         f"{fmt(summary['inference_latency_p50_s'], 1e3, ' ms')} / "
         f"{fmt(summary['inference_latency_p95_s'], 1e3, ' ms')}"),
        ("executor rate (achieved)", fmt(summary["executor_achieved_rate_hz"], 1, " Hz")),
        ("commands per sim second", fmt(summary["commands_per_sim_second"])),
        ("starved ticks", fmt(summary["starved_ticks"])),
        ("clamped / rate-limited ticks", f"{fmt(summary['clamped_commands'])} / "
                                         f"{fmt(summary['rate_limited_commands'])}"),
        ("rejected chunks", fmt(summary["rejected_chunks"])),
        ("sim steps per wall second", fmt(summary["sim_steps_per_wall_second"])),
        ("joints within limits", fmt(summary["measured_within_limits"])),
        ("task success", f"{summary['task_success']} (max reward {summary['max_reward']:g})"),
    ]
    width = max(len(k) for k, _ in lines)
    print("\nvla-demo summary" + (" (interrupted)" if summary["interrupted"] else ""))
    for key, value in lines:
        print(f"  {key:<{width}}  {value}")
    print(f"  {'summary JSON':<{width}}  {json_path}")
    print(f"  {'joint plot':<{width}}  {plot_path}")


if __name__ == "__main__":
    sys.exit(main())
