"""``vla-finetune DATA_DIR --out DIR``: OFT fine-tuning (LoRA) on a vla-convert dataset.

Multi-GPU: ``torchrun --nproc-per-node N -m vla_policy_node.tools.finetune ...``.
Killed runs continue from the last saved step when started again with the same --out.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from tqdm import tqdm

from vla_policy_node.train.loop import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vla-finetune",
        description="Fine-tune an OFT policy on a dataset written by vla-convert (OFT recipe: "
                    "LoRA on the backbone, action head / proprio projector / FiLM trained "
                    "fully, L1 loss, AdamW with x0.1 step decay, image augmentation). The "
                    "result, OUT/checkpoint, loads directly in the vla_policy node.")
    p.add_argument("data_dir", help="dataset directory (vla-convert --out)")
    p.add_argument("--out", required=True, help="output directory (resumes if it has state)")
    p.add_argument("--base", default="", help="base checkpoint directory (default: --preset "
                                              "with random weights)")
    p.add_argument("--preset", default="tiny", help="model preset without --base")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="samples per micro-batch")
    p.add_argument("--grad-accumulation", type=int, default=1,
                   help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate")
    p.add_argument("--lr-decay-step", type=int, default=0,
                   help="multiply the lr by 0.1 from this step (0: never)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lora-rank", type=int, default=32, help="0: train every weight")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true", help="no image augmentation")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--val-episodes", type=int, default=1, help="episodes held out")
    p.add_argument("--val-every", type=int, default=500, help="validate every N steps")
    p.add_argument("--merge-lora", action="store_true",
                   help="(always done now: OUT/checkpoint holds merged weights; the "
                        "adapters stay in OUT/train_state)")
    p.add_argument("--unnorm-key", default=None, help="dataset key of the statistics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = TrainConfig(
            data_dir=args.data_dir, output_dir=args.out, base=args.base, preset=args.preset,
            steps=args.steps, batch_size=args.batch_size,
            grad_accumulation=args.grad_accumulation, lr=args.lr,
            lr_decay_step=args.lr_decay_step, weight_decay=args.weight_decay,
            lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout, augment=not args.no_augment,
            save_every=args.save_every, val_episodes=args.val_episodes,
            val_every=args.val_every, merge_lora=args.merge_lora, unnorm_key=args.unnorm_key,
            seed=args.seed, device=args.device, bf16=False if args.no_bf16 else None)
    except ValueError as exc:
        print(f"vla-finetune: {exc}", file=sys.stderr)
        return 2
    quiet = args.quiet or int(__import__("os").environ.get("RANK", "0")) != 0
    bar = tqdm(total=config.steps, unit="step", disable=quiet or None)

    def progress(step: int, loss: float) -> None:
        if bar.n == 0 and step > 1:
            bar.update(step - 1)  # resumed
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        print(f"step {step} loss {loss:.6f}", flush=True) if bar.disable else None

    result = train(config, progress)
    bar.close()
    if result.resumed_from:
        print(f"resumed from step {result.resumed_from}")
    print(f"{result.step} steps, {result.steps_per_second:.3f} steps/s; "
          f"final loss {result.losses[-1]:.5f}; validation {result.val_losses}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
