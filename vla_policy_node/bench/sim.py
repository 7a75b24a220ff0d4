"""``vla-bench sim``: simulated ALOHA steps per second, physics only and with 1 and 3 cameras."""

from __future__ import annotations

import argparse
import time
from typing import Any

from vla_policy_node.bench import report

DESCRIPTION = ("Simulated ALOHA (MuJoCo) control steps per second: physics only, and rendering "
               "1 and 3 cameras every step.")

CAMERA_SETS = {"0 cameras (physics)": [], "1 camera (top)": ["top"],
               "3 cameras (top, wrists)": ["top", "left_wrist", "right_wrist"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=100,
                        help="control steps per measurement (default 100)")
    parser.add_argument("--resolutions", default="480x640,240x320",
                        help="comma-separated HEIGHTxWIDTH list (default 480x640,240x320)")
    parser.add_argument("--task", default="transfer_cube", choices=["transfer_cube", "insertion"])


def _measure(sim: Any, cameras: list[str], steps: int, height: int, width: int) -> float:
    sim.reset(seed=0)
    if cameras:
        sim.render(cameras, height, width)   # create the GL context outside the timing
    target = sim.target
    start = time.perf_counter()
    for _ in range(steps):
        sim.step(target)
        if cameras:
            sim.render(cameras, height, width)
    return steps / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from vla_policy_node.config import RobotConfig
    from vla_policy_node.sim import AlohaSim, SimConfig

    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    try:
        resolutions = [tuple(int(v) for v in r.lower().split("x"))
                       for r in args.resolutions.split(",")]
    except ValueError:
        raise SystemExit(
            f"--resolutions must look like 480x640,240x320: {args.resolutions!r}") from None
    sim = AlohaSim(RobotConfig.from_file(node_name="sim_aloha"), SimConfig(task=args.task))
    rows, results = [], []
    jobs = [(label, cams, res) for res in resolutions for label, cams in CAMERA_SETS.items()
            if cams or res == resolutions[0]]
    for label, cameras, (height, width) in tqdm(jobs, desc="sim bench", unit="case"):
        rate = _measure(sim, cameras, args.steps, height, width)
        resolution = f"{height}x{width}" if cameras else "-"
        rows.append([label, resolution, rate, rate * sim.config.control_period])
        results.append({"cameras": cameras, "height": height, "width": width,
                        "steps_per_s": rate,
                        "real_time_factor": rate * sim.config.control_period})
    sim.close()
    table = report.format_table(
        ["rendered per step", "resolution", "steps/s", "x real time (50 Hz)"], rows)
    print(table)
    markdown = (f"## Simulated ALOHA (`vla-bench sim`)\n\n{report.machine_description()}, "
                f"MuJoCo software rendering (MUJOCO_GL egl/osmesa), shadows and reflections off, "
                f"task {args.task}, {args.steps} steps per case. Real time is 50 steps/s; the "
                f"node renders at camera_rate_hz (default 10 Hz), so its cost per step is "
                f"lower than these every-step figures.\n\n{table}\n")
    if args.update_docs:
        report.update_docs_section("sim", markdown)
    return {"task": args.task, "steps": args.steps, "machine": report.machine_description(),
            "results": results}
