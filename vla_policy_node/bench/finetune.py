"""Fine-tuning throughput: optimizer steps/s of the OFT recipe (LoRA) on synthetic episodes.

CPU: ``vla-bench finetune`` (tiny preset). GPU: ``vla-bench finetune --device cuda --preset
openvla-7b --batch-size 8`` (random weights, bf16 autocast; memory reported).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import tempfile
import time
from typing import Any

import torch

from vla_policy_node.bench import report
from vla_policy_node.data.convert import convert_bags, ConvertOptions
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag
from vla_policy_node.train.loop import TrainConfig, train, uses_bf16

DESCRIPTION = "vla-finetune throughput (optimizer steps/s, samples/s) with LoRA"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", help="model preset (random weights)")
    parser.add_argument("--base", default="", help="base checkpoint directory instead")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: as vla-finetune, on for CUDA only)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[2, 8],
                        help="micro-batch sizes to measure")
    parser.add_argument("--lora-rank", type=int, default=32, help="0: full fine-tuning")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=False,
                        help="train from the image cache (as vla-finetune does by default; "
                             "built before the timed steps)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(96, 128),
                        metavar=("H", "W"), help="camera resolution of the episodes")


def _dataset(root: Path, image_size: tuple[int, int]) -> Path:
    spec = DataSpec.from_file()
    bags = [write_episode_bag(root / "bags" / f"ep{i}", spec, SyntheticEpisode(
        seed=i, duration=3.0, image_size=image_size)) for i in range(2)]
    reports = convert_bags(bags, spec, root / "data", ConvertOptions())
    failed = [r for r in reports if r.status != "converted"]
    if failed:
        raise RuntimeError(f"synthetic conversion failed: {failed[0].error}")
    return root / "data"


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1 or args.warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, "
                         f"{args.warmup}")
    torch.set_num_threads(args.threads)
    rows, result = [], {"machine": report.machine_description(), "cases": []}
    bf16 = uses_bf16(args.bf16, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = _dataset(root, tuple(args.image_size))
        for batch in args.batch_size:
            times: list[float] = []
            out = root / f"run-{batch}"
            config = TrainConfig(
                data_dir=str(data), output_dir=str(out), base=args.base, preset=args.preset,
                steps=args.warmup + args.steps, batch_size=batch, lora_rank=args.lora_rank,
                save_every=0, val_every=0, val_episodes=0, device=args.device,
                bf16=args.bf16, cache_images=args.cache_images)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()

            def progress(step: int, loss: float, times: list[float] = times) -> None:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()  # steps are timed when the GPU is done
                times.append(time.perf_counter())

            # stop_after: no final checkpoint is written (not part of a step's cost).
            train(config, progress=progress, stop_after=args.warmup + args.steps)
            timed = times[args.warmup:]
            start = times[args.warmup - 1] if args.warmup else timed[0]
            n = len(timed) if args.warmup else len(timed) - 1
            seconds = timed[-1] - start
            steps_per_s = n / seconds if seconds > 0 else float("nan")
            case = {"preset": args.preset, "device": args.device, "bf16": bf16,
                    "cache_images": args.cache_images,
                    "batch_size": batch, "lora_rank": args.lora_rank, "steps": n,
                    "seconds": seconds,
                    "steps_per_s": steps_per_s, "samples_per_s": steps_per_s * batch}
            if args.device.startswith("cuda"):
                case["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            result["cases"].append(case)
            rows.append([args.preset, args.device, "bf16" if bf16 else "fp32",
                         "yes" if args.cache_images else "no", batch,
                         args.lora_rank, n, round(steps_per_s, 3),
                         round(case["samples_per_s"], 2),
                         round(case["peak_memory_gb"], 2) if "peak_memory_gb" in case
                         else "-"])
    table = report.format_table(["preset", "device", "autocast", "cache", "batch", "LoRA r",
                                 "steps",
                                 "steps/s", "samples/s", "peak GPU GB"], rows)
    print(table)
    if args.update_docs:
        report.update_docs_section("finetune", (
            f"### Fine-tuning (vla-finetune)\n\n{result['machine']}; torch threads "
            f"{args.threads}; synthetic 3-camera episodes at {args.image_size[0]}x"
            f"{args.image_size[1]}, OFT recipe (LoRA on the backbone, heads/FiLM trained "
            f"fully, AdamW, augmentation), {args.warmup} warm-up steps not timed.\n\n{table}"
            f"\n\n`vla-bench finetune --update-docs` (GPU: `--device cuda --preset "
            f"openvla-7b --batch-size 8`)"))
    return result
