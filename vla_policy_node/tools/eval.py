"""vla-eval: closed-loop success rate of a policy on the simulated ALOHA, through ROS.

Starts the real node set (sim_aloha on simulated time, vla_policy, chunk_executor) on a private
ROS domain with localhost-only discovery, as vla-demo does, and runs N episodes without
restarting a node: before each one it resets the executor (plan cleared, last command
forgotten, so nothing drives the arms back to the old pose), sets the simulator's task and seed
and calls its reset service, waits for a chunk the policy predicted from the new episode's
images, then resumes the executor and lets the policy act for --max-steps simulated control
steps (or until 0.5 s after success). --oracle replaces the policy by the scripted
teleoperator, publishing its planned joint trajectory as action chunks through the same
executor: it shows that the evaluator sees success when a policy achieves it.

Seeds: demonstrations (vla-sim-demos) use seeds below 100000, evaluation starts at 1000000 by
default, so held-out episodes never place the objects as a training demonstration did. A
checkpoint that records its demonstration seeds (training_provenance.json) is refused on
overlapping evaluation seeds.
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
from vla_policy_node.launch_spec import node_descriptions, NodeDescription
from vla_policy_node.pretrained import MissingPolicyError
from vla_policy_node.tools.session import add_policy_arguments, resolve_policy
from vla_policy_node.tools.sim_demos import DemoError, SimDriver

TASKS = ("transfer_cube", "insertion")
#: Written next to a checkpoint by vla-finetune: the dataset and demonstration seeds it saw.
PROVENANCE_FILE = "training_provenance.json"
#: Simulated seconds an episode goes on after success (the video shows the result).
AFTER_SUCCESS = 0.5
#: Oracle chunks: this many control steps each, one every CHUNK_EVERY steps.
ORACLE_CHUNK_STEPS, ORACLE_CHUNK_EVERY = 50, 20


@dataclass
class EpisodeOutcome:
    """One evaluation episode.

    Attributes:
        seed: object placement seed.
        success: the task's final stage (reward 4) was reached.
        max_reward: highest stage reward (0..4: the task's stages, e.g. transfer_cube 1 touched,
            2 lifted, 3 touched by the other gripper, 4 transferred).
        time_to_success: simulated seconds from the start to success (None: not reached).
        sim_seconds / wall_seconds: length of the episode.
        chunks: action chunks published during the episode.
        clamped_commands / rejected_chunks / starved_ticks: the executor's counters over it.
    """

    seed: int
    success: bool
    max_reward: float
    time_to_success: float | None
    sim_seconds: float
    wall_seconds: float
    chunks: int
    clamped_commands: int | None
    rejected_chunks: int | None
    starved_ticks: int | None


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at 0/n and n/n, unlike the normal
    approximation)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def seed_check(seeds: Sequence[int], checkpoint: str) -> tuple[str, list[int]]:
    """(a note for the output, seeds that a checkpoint's recorded demonstrations used)."""
    from vla_policy_node.sim.scripted import DEMO_SEED_LIMIT
    overlap: list[int] = []
    recorded = ""
    path = Path(checkpoint) / PROVENANCE_FILE if checkpoint else None
    if path is not None and path.is_file():
        try:
            demo = {int(s) for s in json.loads(path.read_text()).get("demo_seeds") or []}
        except (ValueError, TypeError, AttributeError):
            demo = set()
        overlap = sorted(demo.intersection(seeds))
        recorded = (f"; the checkpoint was trained on {len(demo)} demonstration seeds "
                    f"(checked: {len(overlap)} shared)" if demo else "")
    low = [s for s in seeds if s < DEMO_SEED_LIMIT]
    if low:
        note = (f"WARNING: {len(low)} evaluation seeds are below {DEMO_SEED_LIMIT}, the range "
                f"vla-sim-demos uses for training demonstrations: they may not be held out")
    else:
        note = (f"held-out seeds {min(seeds)}-{max(seeds)} (demonstrations use seeds below "
                f"{DEMO_SEED_LIMIT})")
    return note + recorded, overlap


class Evaluator(SimDriver):
    """Drives the episodes: executor and simulator services, success, oracle chunks."""

    def __init__(self, context: Any, robot: RobotConfig, sim_params: dict[str, Any],
                 executor_node: str = "chunk_executor",
                 policy_node: str | None = "vla_policy") -> None:
        self._active = False
        self._t0 = math.nan
        self.success_time: float | None = None
        self._oracle: np.ndarray | None = None
        self._oracle_id = 0
        clients = {"executor_reset": f"/{executor_node}/reset",
                   "executor_resume": f"/{executor_node}/resume"}
        if policy_node:
            # Policies with history (RoboFlamingo) start every episode from an empty one.
            clients["policy_reset"] = f"/{policy_node}/reset"
        super().__init__(context, robot, sim_params, node_name="vla_eval",
                         extra_clients=clients)

    def _setup(self) -> None:
        from vla_msgs.msg import ActionChunk as ActionChunkMsg
        self._chunk_pub = self.node.create_publisher(ActionChunkMsg, "/vla/action_chunk",
                                                     self.reliable)
        self._period = 1.0 / float(self.sim_params.get("physics_rate_hz", 50.0))

    def _on_success(self, msg: Any) -> None:
        with self._lock:
            if self._active and msg.data and self.success_time is None:
                self.success_time = max(0.0, self.sim_time - self._t0)

    def _on_tick(self) -> None:
        # The oracle streams its planned trajectory as chunks through the executor, each
        # stamped on the trajectory's own time grid (a chunk never lies in the future).
        if self._oracle is None or not self._active:
            return
        step = int(round((self.sim_time - self._t0) / self._period))
        if step % ORACLE_CHUNK_EVERY or step >= len(self._oracle):
            return
        from vla_policy_node.chunk import ActionChunk
        from vla_policy_node.nodes.conversions import action_chunk_to_msg
        self._oracle_id += 1
        actions = self._oracle[step:step + ORACLE_CHUNK_STEPS]
        self._chunk_pub.publish(action_chunk_to_msg(ActionChunk(
            stamp=self._t0 + step * self._period, actions=actions,
            joint_names=tuple(self.robot.joint_names), step_period=self._period,
            chunk_id=self._oracle_id, instruction="oracle")))

    def begin(self, oracle: np.ndarray | None) -> float:
        """Start the episode now: count success from here, resume the executor."""
        with self._lock:
            self._t0 = self.sim_time
            self.success_time = None
            self._oracle = oracle
            self._active = True
        self.trigger("executor_resume")
        return self._t0

    def end(self) -> None:
        with self._lock:
            self._active = False
            self._oracle = None
        self.trigger("executor_reset")


def build_parser() -> argparse.ArgumentParser:
    from vla_policy_node.sim.scripted import EVAL_SEED_START
    parser = argparse.ArgumentParser(
        prog="vla-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[1].split("\n\nSeeds:")[0],
        epilog=f"""\
output (OUTPUT_DIR, default ./eval_output):
  eval.json            per episode: seed, success, max reward, time to success, chunks,
                       executor clamps; success rate with its 95% Wilson interval
  episode_<seed>.gif   cam_high of the first --videos episodes (10 frames/s)
  episode_<seed>_run.png/.npz  commanded vs measured joints of the same episodes
  logs/                the nodes' logs

seeds: demonstrations use seeds 0..99999 (vla-sim-demos --first-seed 0), evaluation starts
  at {EVAL_SEED_START} by default; overlapping seeds are refused for a checkpoint that
  records its demonstration seeds ({PROVENANCE_FILE}) unless --allow-seed-overlap.

exit status: 0 the evaluation ran (whatever the score); 1 it could not run (a node died,
  no chunk, a service missing); 2 bad arguments; 130 interrupted (results so far written).

examples:
  vla-eval --episodes 50                    # the shipped transfer_cube policy
  vla-eval --checkpoint runs/cube/checkpoint --episodes 50
  vla-eval --preset sim-s --episodes 10     # random weights: the floor
  vla-eval --oracle --episodes 5            # the scripted policy: should score 100%""")
    policy = add_policy_arguments(parser)
    policy.add_argument("--oracle", action="store_true",
                        help="the scripted teleoperator instead of a policy (its chunks go "
                             "through the executor and simulator like a policy's)")
    parser.add_argument("--task", choices=TASKS, default="transfer_cube")
    parser.add_argument("--episodes", type=int, default=10, help="episodes (default 10)")
    parser.add_argument("--seed-start", type=int, default=EVAL_SEED_START,
                        help="seed of the first episode, then +1 (default %(default)s)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="simulated control steps (50 Hz) per episode (default: the "
                             "scripted episode length, 400 = 8 s)")
    parser.add_argument("--instruction", default=None,
                        help="instruction sent to the policy (default: the task's)")
    parser.add_argument("--config", default="", help="parameter file (default aloha.yaml)")
    parser.add_argument("--device", default="", help="policy device (default: the config's)")
    parser.add_argument("--real-time-factor", type=float, default=None,
                        help="simulated seconds per wall second at most (default: the "
                             "config's, 1.0; the policy's latency counts in simulated time)")
    parser.add_argument("--output-dir", default="eval_output",
                        help="where results, videos, plots and logs go (default "
                             "./eval_output)")
    parser.add_argument("--json", default=None, help="results JSON (default "
                                                     "OUTPUT_DIR/eval.json)")
    parser.add_argument("--videos", type=int, default=2,
                        help="GIF and joint plot of the first N episodes (default 2; 0: none)")
    parser.add_argument("--direct", action="store_true",
                        help="no ROS: the policy and the simulator in this process, the chunks "
                             "followed without the executor and without inference latency "
                             "(several times faster; for sweeps over checkpoints; the ROS "
                             "node set is the reference). No videos, no executor counters")
    parser.add_argument("--allow-seed-overlap", action="store_true",
                        help="evaluate even on seeds the checkpoint's demonstrations used")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="wall seconds for the nodes to come up and the first chunk")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


class _EpisodeRecorder:
    """cam_high frames and commanded/measured joints of one episode (for videos and plots)."""

    def __init__(self, monitor: Any, camera_topic: str) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        self.monitor = monitor
        self.frames: list[np.ndarray] = []
        self.recording = False
        monitor.node.create_subscription(Image, camera_topic, self._on_image,
                                         qos_profile_sensor_data)

    def _on_image(self, msg: Any) -> None:
        if not self.recording:
            return
        from vla_policy_node.data.images import decode_image
        try:
            image = decode_image(msg)
        except ValueError:
            return
        self.frames.append(np.ascontiguousarray(image[::2, ::2]))  # GIFs stay small

    def save(self, out: Path, seed: int, robot: RobotConfig) -> list[str]:
        from vla_policy_node.tools.plot import PlotError, plot_run
        written = []
        if self.frames:
            from PIL import Image as PILImage
            path = out / f"episode_{seed}.gif"
            images = [PILImage.fromarray(f) for f in self.frames]
            images[0].save(path, save_all=True, append_images=images[1:], duration=100,
                           loop=0)
            written.append(str(path))
        samples = list(self.monitor.samples)
        if len(samples) > 1:
            run = out / f"episode_{seed}.npz"
            np.savez_compressed(run, t=np.array([s[0] for s in samples]),
                                commanded=np.array([s[1] for s in samples]),
                                measured=np.array([s[2] for s in samples]),
                                joint_names=np.array(robot.joint_names))
            try:
                written += [str(p) for p in plot_run(run, out)]
            except PlotError as exc:
                print(f"vla-eval: no joint plot: {exc}", file=sys.stderr)
        return written


def _counter(status: Any, name: str) -> int | None:
    return None if status is None else int(getattr(status, name))


def _delta(end: int | None, start: int | None) -> int | None:
    return None if end is None else end - (start or 0)


def run(args: argparse.Namespace, seeds: list[int], note: str) -> dict[str, Any]:
    """Start the nodes, run the episodes; the report (see --help). Raises DemoError."""
    from tqdm import tqdm

    from vla_policy_node.sim import INSTRUCTIONS
    from vla_policy_node.sim.scripted import EPISODE_STEPS
    from vla_policy_node.tools.bringup import NodeProcesses
    from vla_policy_node.tools.demo import Monitor
    from vla_policy_node.tools.session import private_ros_graph, stop_on_signals

    config = str(Path(args.config or default_config_path()).resolve())
    sim_params = load_node_params(config, "sim_aloha")
    robot = RobotConfig.from_params(sim_params)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    max_steps = args.max_steps or EPISODE_STEPS[args.task]
    period = 1.0 / float(sim_params.get("physics_rate_hz", 50.0))
    limit = max_steps * period
    camera_period = 1.0 / float(sim_params.get("camera_rate_hz", 10.0))
    instruction = args.instruction or INSTRUCTIONS[args.task]
    nodes = eval_nodes(config, args)
    outcomes: list[EpisodeOutcome] = []
    media: list[str] = []
    interrupted = False
    policy_name = args.policy_name
    wall_start = time.monotonic()
    with stop_on_signals() as stop, private_ros_graph() as (domain, env, context):
        print(f"vla-eval: {policy_name} on {args.task}, {len(seeds)} episodes; nodes "
              f"{[n.name for n in nodes]} on private ROS domain {domain}; {note}; logs in "
              f"{out}/logs", flush=True)
        processes = NodeProcesses(nodes, env=env, output=None, log_dir=str(out / "logs"))
        driver = monitor = None
        planner = None
        spinner: threading.Thread | None = None
        try:
            processes.start()
            monitor = Monitor(context, robot, sim_params)
            recorder = (_EpisodeRecorder(monitor, sim_params["cameras.topics"][0])
                        if args.videos > 0 else None)
            spinner = threading.Thread(target=_spin, args=(monitor,), daemon=True)
            spinner.start()
            driver = Evaluator(context, robot, sim_params,
                               policy_node=None if args.oracle else "vla_policy")
            _wait_for_graph(driver, processes, args.startup_timeout, out)
            driver.trigger("executor_reset")
            if args.oracle:
                from vla_policy_node.sim import AlohaSim, SimConfig
                sim_config = SimConfig.from_params({**sim_params, "task": args.task})
                planner = AlohaSim(robot, sim_config)
            else:
                _wait_first_chunk(monitor, processes, instruction, args.startup_timeout, stop,
                                  out)
            bar = tqdm(seeds, desc=f"vla-eval {args.task}", unit="episode",
                       disable=args.quiet or None)
            for index, seed in enumerate(bar):
                if stop.is_set():
                    break
                oracle = None
                if planner is not None:
                    from vla_policy_node.sim.scripted import plan_joint_trajectory, tune_replay
                    oracle = tune_replay(planner, plan_joint_trajectory(
                        robot, args.task, seed, planner.config)).actions
                outcome, files = _episode(driver, monitor, recorder if index < args.videos
                                          else None, processes, seed, args.task, oracle,
                                          limit, camera_period, stop, out, robot)
                if outcome is None:
                    break
                outcomes.append(outcome)
                media += files
                bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
            bar.close()
            interrupted = stop.is_set()
        finally:
            if planner is not None:
                planner.close()
            if driver is not None:
                driver.close()
            processes.stop()
            if monitor is not None:
                monitor.executor.shutdown(timeout_sec=1.0)
                if spinner is not None:
                    spinner.join(timeout=2.0)  # see SimDriver.close
                monitor.node.destroy_node()
    return _report(args, outcomes, instruction, note, max_steps, wall_start, interrupted, media)


def run_direct(args: argparse.Namespace, seeds: list[int], note: str) -> dict[str, Any]:
    """--direct: the policy and the simulator in this process, no ROS (see --help)."""
    from tqdm import tqdm

    from vla_policy_node.model.policy import load_policy
    from vla_policy_node.sim import AlohaSim, INSTRUCTIONS, MAX_REWARD, SimConfig
    from vla_policy_node.sim.rollout import run_policy_in_sim
    from vla_policy_node.sim.scripted import EPISODE_STEPS
    from vla_policy_node.tools.session import stop_on_signals

    config = str(Path(args.config or default_config_path()).resolve())
    sim_params = load_node_params(config, "sim_aloha")
    policy_params = load_node_params(config, "vla_policy")
    robot = RobotConfig.from_params(sim_params)
    max_steps = args.max_steps or EPISODE_STEPS[args.task]
    instruction = args.instruction or INSTRUCTIONS[args.task]
    step_period = float(policy_params.get("step_period", 0.04))
    camera_map = dict(zip(sim_params["cameras.names"], sim_params["cameras.sim_names"]))
    try:
        policy = load_policy(args.checkpoint or None, preset=args.preset or "tiny",
                             device=args.device or "cpu")
    except (OSError, ValueError, KeyError) as exc:
        raise DemoError(f"cannot load the policy: {exc}") from exc
    missing = [c for c in policy.camera_names if c not in camera_map]
    if missing:
        raise DemoError(f"the policy's cameras {missing} are not simulated "
                        f"(sim_aloha cameras.names: {list(camera_map)})")
    camera_map = {name: camera_map[name] for name in policy.camera_names}
    # What the node's on_demand trigger does: a new chunk once demand_horizon seconds remain.
    demand = float(policy_params.get("demand_horizon", 0.6))
    execute = max(1, policy.chunk_length - int(round(demand / step_period)))
    sim = AlohaSim(robot, SimConfig.from_params({**sim_params, "task": args.task}))
    period = sim.config.control_period
    print(f"vla-eval --direct: {args.policy_name} on {args.task}, {len(seeds)} episodes in "
          f"this process (no ROS, no executor); {note}", flush=True)
    outcomes: list[EpisodeOutcome] = []
    wall_start = time.monotonic()
    with stop_on_signals() as stop:
        bar = tqdm(seeds, desc=f"vla-eval --direct {args.task}", unit="episode",
                   disable=args.quiet or None)
        try:
            for seed in bar:
                if stop.is_set():
                    break
                start = time.monotonic()
                sim.reset(args.task, seed=seed)
                policy.reset()
                trace = run_policy_in_sim(policy, sim, instruction, max_steps, camera_map,
                                          step_period, execute_steps=execute)
                done = np.flatnonzero(trace.rewards >= MAX_REWARD)
                outcomes.append(EpisodeOutcome(
                    seed=seed, success=trace.success, max_reward=float(trace.rewards.max()),
                    time_to_success=round(float((done[0] + 1) * period), 3) if done.size
                    else None, sim_seconds=round(max_steps * period, 3),
                    wall_seconds=round(time.monotonic() - start, 3), chunks=trace.chunks,
                    clamped_commands=None, rejected_chunks=None, starved_ticks=None))
                bar.set_postfix(success=f"{sum(o.success for o in outcomes)}/{len(outcomes)}")
        finally:
            bar.close()
            sim.close()
    return _report(args, outcomes, instruction, note, max_steps, wall_start, stop.is_set(), [])


def _report(args: argparse.Namespace, outcomes: list[EpisodeOutcome], instruction: str,
            note: str, max_steps: int, wall_start: float, interrupted: bool,
            media: list[str]) -> dict[str, Any]:
    n = len(outcomes)
    successes = sum(o.success for o in outcomes)
    low, high = wilson_interval(successes, n)
    times = [o.time_to_success for o in outcomes if o.time_to_success is not None]
    return {
        "task": args.task,
        "mode": "direct" if getattr(args, "direct", False) else "ros",
        "policy": "oracle" if args.oracle else ("checkpoint" if args.checkpoint else "preset"),
        "checkpoint": args.checkpoint or None,
        "shipped_policy": getattr(args, "shipped_policy", None),
        "preset": args.preset or None,
        "instruction": instruction,
        "seeds": [o.seed for o in outcomes],
        "seed_note": note,
        "max_steps": max_steps,
        "episodes": n,
        "successes": successes,
        "success_rate": successes / n if n else None,
        "success_rate_ci95": [round(low, 4), round(high, 4)] if n else None,
        "mean_max_reward": float(np.mean([o.max_reward for o in outcomes])) if n else None,
        "mean_time_to_success": float(np.mean(times)) if times else None,
        "wall_seconds": round(time.monotonic() - wall_start, 2),
        "interrupted": interrupted,
        "media": media,
        "results": [asdict(o) for o in outcomes],
    }


def eval_nodes(config: str, args: argparse.Namespace) -> list[NodeDescription]:
    """The bringup's sim node set (the policy left out for --oracle), first seed and pace."""
    nodes = node_descriptions(config=config, sim="true", checkpoint=args.checkpoint,
                              preset=args.preset, task=args.task, device=args.device)
    if args.oracle:
        nodes = [n for n in nodes if n.name != "vla_policy"]
    sim_overrides: dict[str, Any] = {"seed": int(args.seed_start)}
    if args.real_time_factor is not None:
        sim_overrides["real_time_factor"] = float(args.real_time_factor)
    return [dataclasses.replace(n, overrides={**n.overrides, **sim_overrides})
            if n.name == "sim_aloha" else n for n in nodes]


def _spin(monitor: Any) -> None:
    from rclpy.executors import ExternalShutdownException
    try:
        monitor.executor.spin()
    except (ExternalShutdownException, RuntimeError):
        pass


def _wait_for_graph(driver: Evaluator, processes: Any, timeout: float, out: Path) -> None:
    """Wait for the services and /clock; a node that exits (a checkpoint that does not load)
    ends the wait at once instead of after the whole timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            driver.wait_for_graph(min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except DemoError as exc:
            if processes.exited():
                raise DemoError(f"node(s) exited during start-up: {processes.exited()} (see "
                                f"{out}/logs)") from None
            if time.monotonic() >= deadline:
                raise DemoError(f"{exc} (after {timeout:.0f} s; see {out}/logs)") from None


def _wait_first_chunk(monitor: Any, processes: Any, instruction: str, timeout: float,
                      stop: threading.Event, out: Path) -> None:
    deadline = time.monotonic() + timeout
    while not monitor.chunks and not stop.is_set():
        if processes.exited():
            raise DemoError(f"nodes exited during start-up: {processes.exited()} "
                            f"(see {out}/logs)")
        if time.monotonic() > deadline:
            raise DemoError(f"no action chunk after {timeout:.0f} s (see {out}/logs)")
        monitor.say(instruction)  # repeated: discovery takes a moment
        time.sleep(0.5)


def _episode(driver: Evaluator, monitor: Any, recorder: _EpisodeRecorder | None,
             processes: Any, seed: int, task: str, oracle: np.ndarray | None, limit: float,
             camera_period: float, stop: threading.Event, out: Path,
             robot: RobotConfig) -> tuple[EpisodeOutcome | None, list[str]]:
    """One episode from a reset to --max-steps (or shortly after success)."""
    def check_nodes() -> None:
        if processes.exited():
            raise DemoError(f"node(s) exited: {processes.exited()} (see {out}/logs)")

    driver.trigger("executor_reset")
    driver.set_episode(task, seed)
    if oracle is None:
        driver.trigger("policy_reset")
    reset_time = driver.sim_time
    # The first chunk of the episode must come from its own images: wait until the cameras
    # have published twice since the reset, then for a chunk predicted after that.
    ready = reset_time + max(0.3, 2.5 * camera_period)
    wall_deadline = time.monotonic() + 120.0
    while not stop.is_set():
        check_nodes()
        if time.monotonic() > wall_deadline:
            raise DemoError(f"seed {seed}: no chunk from the new episode in 120 s")
        if driver.sim_time >= ready and (oracle is not None or any(
                c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 >= ready
                for c in list(monitor.chunks))):
            break
        time.sleep(0.02)
    if stop.is_set():
        return None, []
    monitor.chunks.clear()
    monitor.samples.clear()
    monitor.max_reward = 0.0
    status_start = monitor.executor_status
    if recorder is not None:
        recorder.frames.clear()
        recorder.recording = True
    wall = time.monotonic()
    t0 = driver.begin(oracle)
    while not stop.is_set():
        check_nodes()
        elapsed = driver.sim_time - t0
        if elapsed >= limit or (driver.success_time is not None
                                and elapsed >= driver.success_time + AFTER_SUCCESS):
            break
        time.sleep(0.02)
    status_end = monitor.executor_status
    sim_seconds, wall = driver.sim_time - t0, time.monotonic() - wall
    driver.end()
    if recorder is not None:
        recorder.recording = False
    files = recorder.save(out, seed, robot) if recorder is not None else []
    chunks = len(monitor.chunks)
    outcome = EpisodeOutcome(
        seed=int(seed), success=driver.success_time is not None,
        max_reward=float(monitor.max_reward),
        time_to_success=(round(driver.success_time, 3) if driver.success_time is not None
                         else None),
        sim_seconds=round(sim_seconds, 3), wall_seconds=round(wall, 2), chunks=chunks,
        **{name: _delta(_counter(status_end, name), _counter(status_start, name))
           for name in ("clamped_commands", "rejected_chunks", "starved_ticks")})
    return outcome, files


def print_report(report: dict[str, Any], json_path: Path) -> None:
    n = report["episodes"]
    print(f"\nvla-eval {report['task']}"
          + (" (--direct: no ROS, no executor)" if report.get("mode") == "direct" else "")
          + (" (interrupted)" if report["interrupted"] else ""))
    if n:
        low, high = report["success_rate_ci95"]
        print(f"  success rate        {report['successes']}/{n} = "
              f"{report['success_rate']:.0%} (95% CI {low:.0%}-{high:.0%})")
        print(f"  mean max reward     {report['mean_max_reward']:.2f} of 4")
        if report["mean_time_to_success"] is not None:
            print(f"  mean time to success {report['mean_time_to_success']:.2f} s (sim)")
        print(f"  seeds               {min(report['seeds'])}-{max(report['seeds'])}: "
              f"{report['seed_note']}")
    else:
        print("  no episode completed")
    print(f"  wall time           {report['wall_seconds']:.1f} s")
    for path in report["media"]:
        print(f"  {Path(path).name:<19} {path}")
    print(f"  results JSON        {json_path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.seed_start < 0 or args.seed_start + args.episodes > 2**31 - 1:
        parser.error(f"--seed-start must be in 0..{2**31 - 1 - args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.videos < 0:
        parser.error(f"--videos must be >= 0, got {args.videos}")
    if args.real_time_factor is not None and not 0 <= args.real_time_factor <= 1000:
        parser.error("--real-time-factor must be in [0, 1000] (0: as fast as possible)")
    if args.config and not Path(args.config).is_file():
        parser.error(f"--config: file not found: {args.config}")
    if args.direct and args.oracle:
        parser.error("--direct evaluates a policy; the oracle runs through ROS only")
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        parser.error(f"--checkpoint {args.checkpoint} is not a directory")
    try:
        args.policy_name = resolve_policy(args)
    except MissingPolicyError as exc:
        parser.error(str(exc))
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    note, overlap = seed_check(seeds, args.checkpoint)
    if overlap and not args.allow_seed_overlap:
        parser.error(f"seeds {overlap[:10]} were demonstration seeds of {args.checkpoint} "
                     f"({PROVENANCE_FILE}); choose another --seed-start or pass "
                     f"--allow-seed-overlap")
    json_path = Path(args.json) if args.json else Path(args.output_dir) / "eval.json"
    try:
        report = run_direct(args, seeds, note) if args.direct else run(args, seeds, note)
    except DemoError as exc:
        print(f"vla-eval: {exc}", file=sys.stderr)
        return 1
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, json_path)
    return 130 if report["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
