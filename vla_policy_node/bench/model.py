"""``vla-bench model``: inference latency, throughput and memory with random weights.

Any policy family (OFT, RoboFlamingo); several comma-separated presets are measured in one run
and reported in one table, so the families compare on the same machine at the same moment.
RoboFlamingo keeps one frame of history per call: it is timed in steady state (warm-up covers
its window, so every timed call re-runs the LSTM over the last W features) and only at batch 1.

Builds the preset directly on the target device (``openvla-7b`` on a GPU never allocates
30 GB of CPU memory), feeds random camera frames at the ALOHA resolution and times
``policy.infer``: latency per chunk (p50/p95), actions per second (a chunk holds K actions,
so actions/s = K * batch / latency, as the OFT paper counts), peak memory.
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from typing import Any

import numpy as np

from vla_policy_node.bench import report

DESCRIPTION = ("model inference (OFT, RoboFlamingo): latency per chunk (p50/p95), actions/s, "
               "peak memory")
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", type=_presets,
                        help="model preset(s) with random weights, comma-separated to compare "
                             f"in one run (default: tiny); known: {', '.join(_known())}")
    parser.add_argument("--quantization", default="none", choices=("none", "8bit", "4bit"),
                        help="bitsandbytes quantization of the language model")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--iterations", type=int, default=20, help="timed chunks (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed chunks first")
    parser.add_argument("--batch", type=int, default=1, help="observations per forward pass")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: robust on a shared 2-core CPU)")
    parser.add_argument("--image-size", default="480x640",
                        help="camera frame HxW fed to the processor (default 480x640)")


def _known() -> tuple[str, ...]:
    from vla_policy_node.model.configuration_oft import PRESETS
    from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
        PRESETS as ROBOFLAMINGO_PRESETS)
    return PRESETS + ROBOFLAMINGO_PRESETS


def _presets(value: str) -> str:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in _known()]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown preset(s) {unknown or value!r}")
    return ",".join(names)


def _peak_memory_mb(device: str) -> float:
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure(preset: str, args: argparse.Namespace, height: int, width: int
             ) -> tuple[dict[str, Any], list[Any], Any]:
    import torch
    from tqdm import tqdm

    from vla_policy_node.model import load_policy
    t0 = time.perf_counter()
    policy = load_policy(preset=preset, device=args.device, dtype=args.dtype,
                         quantization=args.quantization)
    build_s = time.perf_counter() - t0
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rng = np.random.default_rng(0)
    observations = [({c: rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                      for c in policy.camera_names},
                     rng.uniform(-1, 1, policy.proprio_dim), "fold the towel")
                    for _ in range(args.batch)]
    family = getattr(policy, "family", "oft")
    warmup = args.warmup
    if hasattr(policy, "infer_batch"):
        def step() -> Any:
            return policy.infer_batch(observations)[0]
    else:  # a family with history: one observation per call, steady state after its window
        if args.batch != 1:
            raise SystemExit(f"--batch {args.batch}: {preset} ({family}) keeps history and "
                             "runs one observation per call; use --batch 1")
        warmup = max(warmup, getattr(policy, "window", 0) + 1)

        def step() -> Any:
            return policy.infer(*observations[0])
    for _ in range(warmup):
        step()
    totals, models, pre = [], [], []
    for _ in tqdm(range(args.iterations), desc=f"{preset} {args.device}", leave=False):
        result = step()
        totals.append(result.timings["total"])
        models.append(result.timings["model"])
        pre.append(result.timings["preprocess"])
    totals_a = np.array(totals)
    params = sum(p.numel() for p in policy.model.parameters())
    k = policy.chunk_length
    out = {
        "preset": preset, "family": family, "device": args.device, "dtype": args.dtype,
        "quantization": args.quantization, "batch": args.batch,
        "machine": report.machine_description(), "threads": args.threads,
        "parameters": int(params), "chunk_length": k, "action_dim": policy.action_dim,
        "cameras": len(policy.camera_names), "build_s": build_s,
        "latency_p50_s": float(np.percentile(totals_a, 50)),
        "latency_p95_s": float(np.percentile(totals_a, 95)),
        "model_p50_s": float(np.percentile(models, 50)),
        "preprocess_p50_s": float(np.percentile(pre, 50)),
        "actions_per_s": float(k * args.batch / np.percentile(totals_a, 50)),
        "peak_memory_mb": _peak_memory_mb(args.device),
        "iterations": args.iterations,
    }
    row = [preset, family, args.device, args.dtype, args.quantization, args.batch,
           f"{params / 1e6:.1f}M", f"{len(policy.camera_names)}", f"{k}x{policy.action_dim}",
           out["latency_p50_s"] * 1e3, out["latency_p95_s"] * 1e3, out["model_p50_s"] * 1e3,
           out["actions_per_s"], out["peak_memory_mb"]]
    return out, row, policy


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    torch.set_num_threads(max(1, args.threads))
    if args.iterations < 1 or args.batch < 1:
        raise SystemExit("--iterations and --batch must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    presets = _presets(args.preset).split(",")
    results, rows = [], []
    for preset in presets:
        out, row, policy = _measure(preset, args, height, width)
        results.append(out)
        rows.append(row)
        del policy  # one model in memory at a time
    headers = ["preset", "family", "device", "dtype", "quant", "batch", "params", "cams",
               "KxD", "p50 ms", "p95 ms", "model p50 ms", "actions/s", "peak MB"]
    table = report.format_table(headers, rows)
    print(table)
    if getattr(args, "update_docs", False):
        name = "+".join(presets)
        section = f"model-{name}-{args.device}-{args.dtype}-{args.quantization}"
        families = " and ".join(sorted({r["family"] for r in results}))
        report.update_docs_section(section, (
            f"### Model inference ({families}): `{args.preset}` on {args.device} ({args.dtype}"
            f", quantization {args.quantization})\n\n{results[0]['machine']}, {args.threads} "
            f"torch threads, random weights, cameras at {height}x{width}, {args.iterations} "
            f"chunks per preset, one run. Peak MB is the process peak so far (CPU: max RSS, "
            f"so later rows include earlier ones).\n"
            f"Command: `vla-bench model --preset {args.preset} --device {args.device} "
            f"--dtype {args.dtype} --quantization {args.quantization}`\n\n{table}\n"))
    return results[0] if len(results) == 1 else {"presets": results}
