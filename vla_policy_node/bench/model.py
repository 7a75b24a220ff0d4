"""``vla-bench model``: OFT inference latency, throughput and memory with random weights.

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

DESCRIPTION = "OFT model inference: latency per chunk (p50/p95), actions/s, peak memory"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vla_policy_node.model.configuration_oft import PRESETS
    parser.add_argument("--preset", default="tiny", choices=PRESETS,
                        help="model preset with random weights (default: tiny)")
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


def _peak_memory_mb(device: str) -> float:
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from vla_policy_node.model import load_policy
    torch.set_num_threads(max(1, args.threads))
    if args.iterations < 1 or args.batch < 1:
        raise SystemExit("--iterations and --batch must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    t0 = time.perf_counter()
    policy = load_policy(preset=args.preset, device=args.device, dtype=args.dtype,
                         quantization=args.quantization)
    build_s = time.perf_counter() - t0
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rng = np.random.default_rng(0)
    observations = [({c: rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                      for c in policy.camera_names},
                     rng.uniform(-1, 1, policy.proprio_dim), "fold the towel")
                    for _ in range(args.batch)]
    for _ in range(args.warmup):
        policy.infer_batch(observations)
    totals, models, pre = [], [], []
    for _ in tqdm(range(args.iterations), desc=f"{args.preset} {args.device}", leave=False):
        result = policy.infer_batch(observations)[0]
        totals.append(result.timings["total"])
        models.append(result.timings["model"])
        pre.append(result.timings["preprocess"])
    totals_a = np.array(totals)
    params = sum(p.numel() for p in policy.model.parameters())
    k = policy.chunk_length
    out = {
        "preset": args.preset, "device": args.device, "dtype": args.dtype,
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
    headers = ["preset", "device", "dtype", "quant", "batch", "params", "p50 ms", "p95 ms",
               "model p50 ms", "actions/s", "peak MB"]
    row = [out["preset"], out["device"], out["dtype"], out["quantization"], out["batch"],
           f"{params / 1e6:.1f}M", out["latency_p50_s"] * 1e3, out["latency_p95_s"] * 1e3,
           out["model_p50_s"] * 1e3, out["actions_per_s"], out["peak_memory_mb"]]
    table = report.format_table(headers, [row])
    print(table)
    if getattr(args, "update_docs", False):
        section = f"model-{args.preset}-{args.device}-{args.dtype}-{args.quantization}"
        report.update_docs_section(section, (
            f"### OFT model: `{args.preset}` on {args.device} ({args.dtype}, quantization "
            f"{args.quantization})\n\n{out['machine']}, {args.threads} torch threads, "
            f"random weights, {len(policy.camera_names)} cameras at {height}x{width}, "
            f"K={k}, D={policy.action_dim}, {args.iterations} chunks.\n"
            f"Command: `vla-bench model --preset {args.preset} --device {args.device} "
            f"--dtype {args.dtype} --quantization {args.quantization}`\n\n{table}\n"))
    return out
