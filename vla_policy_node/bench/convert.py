"""Conversion throughput: synthetic ALOHA bags -> HDF5 episodes, output frames per second."""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil
import tempfile
import time
from typing import Any

from vla_policy_node.bench import report
from vla_policy_node.data.convert import convert_bags, ConvertOptions
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag

DESCRIPTION = "vla-convert throughput (frames/s) on synthetic 3-camera bags"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, default=2, help="bags to convert")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per bag")
    parser.add_argument("--image-size", type=int, nargs=2, default=(240, 320),
                        metavar=("H", "W"), help="camera resolution")
    parser.add_argument("--rate", type=float, default=25.0, help="training rate (Hz)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="convert each case N times into fresh directories and report "
                             "the fastest (the spread is in the JSON): other processes on a "
                             "small machine make single runs noisy")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows, result = [], {"machine": report.machine_description(), "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for storage in ("mcap", "sqlite3"):
            for compressed in (False, True):
                spec = DataSpec.from_file(rate_hz=args.rate)
                name = f"{storage}-{'jpeg' if compressed else 'raw'}"
                bags = [write_episode_bag(root / name / f"ep{i}", spec, SyntheticEpisode(
                    seed=i, duration=args.duration, image_size=tuple(args.image_size),
                    compressed=compressed, storage=storage)) for i in range(args.episodes)]
                runs = []
                for attempt in range(max(1, args.repeat)):
                    out = root / f"out-{name}-{attempt}"
                    started = time.perf_counter()
                    reports = convert_bags(bags, spec, out, ConvertOptions())
                    runs.append(time.perf_counter() - started)
                    failed = [r.error for r in reports if r.status != "converted"]
                    if failed:
                        raise RuntimeError(f"{name}: conversion failed: {failed[0]}")
                    shutil.rmtree(out)  # the next run writes into a fresh directory
                seconds = min(runs)
                frames = sum(r.frames for r in reports)
                case = {"case": name, "frames": frames, "seconds": seconds,
                        "runs_seconds": runs, "frames_per_s": frames / seconds,
                        "images_per_s": frames * len(spec.camera_names) / seconds}
                result["cases"].append(case)
                rows.append([name, f"{args.image_size[0]}x{args.image_size[1]}", frames,
                             round(seconds, 3), round(case["frames_per_s"]),
                             round(case["images_per_s"])])
    table = report.format_table(
        ["storage-images", "camera", "frames", "seconds", "frames/s", "images/s"], rows)
    print(table)
    if args.update_docs:
        report.update_docs_section("convert", (
            f"### Conversion (vla-convert)\n\n{result['machine']}; {args.episodes} bags x "
            f"{args.duration:g} s, 3 cameras at 30 Hz, joint states at 100 Hz, resampled to "
            f"{args.rate:g} Hz. A frame = 3 images + qpos + action; best of {args.repeat} runs. "
            f"Target >= 1,000 frames/s."
            f"\n\n{table}\n\n`vla-bench convert --update-docs`"))
    return result
