"""``vla-finetune DATA_DIR --out DIR``: OFT fine-tuning (LoRA) on a vla-convert dataset.

Multi-GPU: ``torchrun --nproc-per-node N -m vla_policy_node.tools.finetune ...``.
Killed runs continue from the last saved step when started again with the same --out.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
import re
import signal
import sys
from typing import Callable, NoReturn

import torch
from tqdm import tqdm

from vla_policy_node.train.dataset import DatasetError
from vla_policy_node.train.loop import (FINAL_DIR, LOG_FILE, STATE_DIR, TrainConfig, TrainError,
                                        resume_settings, train)

EPILOG = f"""\
output directory:
  {"OUT/" + STATE_DIR + "/":<22} resume states (the newest --keep-states; unmerged LoRA adapters)
  {"OUT/" + FINAL_DIR + "/":<22} the result, merged weights: the policy node's checkpoint parameter
  {"OUT/" + LOG_FILE:<22} losses, validation losses, the settings (at the end)
  {"OUT/training_log.jsonl":<22} one line per step (loss, lr, samples/s), validation,
  {"":<22} checkpoint and evaluation, written as training goes
  {"OUT/best_checkpoint/":<22} with --eval-every: the best checkpoint by success rate
  {"OUT/evals/":<22} with --eval-every: each evaluation's report, video and plot
  {"OUT/image_cache/":<22} frames at the model's resolution (--cache-images)

from scratch (no --base): every weight of an OFT model is trained (--lora-rank 0 is the
  default then; RoboFlamingo trains its released set, CLIP and language model frozen);
  e.g. --lr 3e-4 --lr-schedule cosine --warmup-steps 500 (see docs/learning.md).

stopping: SIGINT (Ctrl-C) or SIGTERM ends the current step, saves a resume state and
  OUT/checkpoint, and exits with 130 / 143; a second signal stops at once.

resume: run the same command again after a crash or a kill; it continues from the newest
  state and repeats exactly the steps the killed run would have taken. --steps may grow; the
  settings that shape training (batch, lr, LoRA, seed, ...) and the dataset must not change.

multi-GPU (DDP, one process per GPU, rank 0 writes everything):
  torchrun --nproc-per-node 4 -m vla_policy_node.tools.finetune DATA --out OUT ...
  --batch-size is per process: the global batch is batch-size x grad-accumulation x processes.

exit status: 0 done; 130 / 143 stopped by SIGINT / SIGTERM (state and checkpoint saved);
  1 the dataset or OUT cannot be used (the message says why);
  2 bad command-line arguments."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line: argparse's usage block is 20 lines here and hides the message.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vla-finetune", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Fine-tune an OFT policy on a dataset written by vla-convert (OFT recipe:\n"
                    "LoRA on the backbone, action head / proprio projector / FiLM trained\n"
                    "fully, L1 loss, AdamW with x0.1 step decay, image augmentation). The\n"
                    "result, OUT/checkpoint, loads directly in the vla_policy node.")
    p.add_argument("data_dir", metavar="DATA_DIR",
                   help="dataset directory written by vla-convert --out (episode *.hdf5 "
                        "files and dataset_statistics.json)")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="output directory; if it holds a state of this run, training resumes "
                        "from it")
    model = p.add_argument_group("model")
    model.add_argument("--base", default="", metavar="DIR",
                       help="base checkpoint directory: an OpenVLA / OpenVLA-OFT checkpoint or "
                            "ours (default: --preset with random weights)")
    model.add_argument("--preset", default="tiny", metavar="NAME",
                       help="model preset when there is no --base, random weights: tiny or "
                            "openvla-7b, each also -libero, -diffusion, -discrete (tiny*: "
                            "tests and demos; default: %(default)s); RoboFlamingo: "
                            "tiny-roboflamingo[-chunk], roboflamingo-mpt_dolly_3b[-aloha], ... "
                            "(trains its released set: LoRA options unused; recipe --lr 1e-4 "
                            "--weight-decay 0.1, see docs/roboflamingo.md)")
    model.add_argument("--lora-rank", type=_int_at_least(0), default=None, metavar="R",
                       help="LoRA rank on every linear layer of the backbone; 0: train every "
                            "weight, the from-scratch recipe (default: 32 with --base, as OFT; "
                            "0 without --base: LoRA on a random backbone cannot learn)")
    model.add_argument("--lora-alpha", type=float, default=16.0, metavar="A",
                       help="LoRA alpha: the adapters are scaled by alpha/rank (default: "
                            "%(default)s, as OFT)")
    model.add_argument("--lora-dropout", type=float, default=0.0, metavar="P",
                       help="dropout on the LoRA input, in [0, 1) (default: %(default)s, as "
                            "OFT)")
    model.add_argument("--unnorm-key", default=None, metavar="KEY",
                       help="key of dataset_statistics.json to normalize with (default: its "
                            "only key)")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--steps", type=_int_at_least(1), default=1000, metavar="N",
                     help="optimizer steps in total; a resumed run may raise it (default: "
                          "%(default)s; OFT on ALOHA: 50k-100k)")
    opt.add_argument("--batch-size", type=_int_at_least(1), default=8, metavar="B",
                     help="samples per micro-batch and process (default: %(default)s)")
    opt.add_argument("--grad-accumulation", type=_int_at_least(1), default=1, metavar="N",
                     help="micro-batches per optimizer step (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=5e-4,
                     help="AdamW learning rate (peak; of the heads when --backbone-lr is "
                          "given) (default: %(default)s, as OFT)")
    opt.add_argument("--backbone-lr", type=float, default=None, metavar="LR",
                     help="learning rate of the vision towers, projector and language model "
                          "(or their LoRA adapters); the action head, proprio projector and "
                          "FiLM keep --lr (default: --lr; OFT models only)")
    opt.add_argument("--lr-schedule", choices=("step", "cosine"), default="step",
                     help="step: x0.1 from --lr-decay-step (OFT); cosine: down to 1%% of the "
                          "peak at --steps (default: %(default)s)")
    opt.add_argument("--warmup-steps", type=_int_at_least(0), default=0, metavar="N",
                     help="linear learning-rate warm-up over the first N steps (default: "
                          "%(default)s)")
    opt.add_argument("--lr-decay-step", type=_int_at_least(0), default=0, metavar="STEP",
                     help="multiply the lr by 0.1 from this step on; 0: never (default: "
                          "%(default)s)")
    opt.add_argument("--weight-decay", type=float, default=0.0, metavar="WD",
                     help="AdamW weight decay (default: %(default)s, as OFT)")
    opt.add_argument("--no-augment", action="store_true",
                     help="no image augmentation (default: OFT's random resized crop 0.9, "
                          "brightness, contrast, saturation, hue)")
    opt.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seed of the initialization, sampling and augmentation (default: "
                          "%(default)s)")
    saves = p.add_argument_group("saving and validation")
    saves.add_argument("--save-every", type=_int_at_least(0), default=500, metavar="N",
                       help="write a resume state every N steps; 0: only at the end "
                            "(default: %(default)s)")
    saves.add_argument("--keep-states", type=_int_at_least(1), default=2, metavar="N",
                       help="resume states kept on disk, the newest (default: %(default)s)")
    saves.add_argument("--val-episodes", type=_int_at_least(0), default=1, metavar="N",
                       help="episodes held out for validation, the last by name (default: "
                            "%(default)s)")
    saves.add_argument("--val-every", type=_int_at_least(0), default=500, metavar="N",
                       help="validation loss every N steps and at the end; 0: never "
                            "(default: %(default)s)")
    saves.add_argument("--val-batches", type=_int_at_least(1), default=4, metavar="N",
                       help="held-out batches per validation (default: %(default)s)")
    saves.add_argument("--checkpoint-every", type=_int_at_least(0), default=0, metavar="N",
                       help="also write OUT/checkpoint (the deployable result, merged) every "
                            "N steps; it is always written at the end and when stopped by "
                            "SIGINT/SIGTERM (default: %(default)s: not in between)")
    saves.add_argument("--eval-every", type=_int_at_least(0), default=0, metavar="N",
                       help="every N steps and at the end, write OUT/checkpoint and run "
                            "vla-eval on it in the simulator; the best success rate is kept "
                            "in OUT/best_checkpoint (default: %(default)s: never)")
    saves.add_argument("--eval-episodes", type=_int_at_least(1), default=10, metavar="M",
                       help="episodes per evaluation (default: %(default)s)")
    saves.add_argument("--eval-task", choices=("transfer_cube", "insertion"),
                       default="transfer_cube", help="simulated task of the evaluations "
                                                     "(default: %(default)s)")
    saves.add_argument("--eval-seed-start", type=_int_at_least(0), default=1_000_000,
                       metavar="S", help="first evaluation seed, the same every time "
                                         "(default: %(default)s; demonstrations use seeds "
                                         "below 100000)")
    saves.add_argument("--eval-max-steps", type=_int_at_least(0), default=0, metavar="N",
                       help="simulated control steps per evaluation episode (default: the "
                            "task's 400)")
    saves.add_argument("--merge-lora", action="store_true",
                       help="no effect, kept for old scripts: OUT/checkpoint always holds "
                            "merged weights, the adapters stay in OUT/train_state")
    run = p.add_argument_group("hardware")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     metavar="DEV",
                     help="cpu, cuda or cuda:N; under torchrun each process takes "
                          "cuda:LOCAL_RANK (default here: %(default)s)")
    run.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast of the forward pass; weights and optimizer stay "
                          "float32 (default: on for CUDA, off for CPU)")
    run.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=True,
                     help="decode and resize every frame once to the model's resolution "
                          "and train from that memory-mapped cache (OUT/image_cache, keyed by "
                          "the episodes and the preprocessing; batches are byte-identical to "
                          "decoding on the fly) (default: on)")
    run.add_argument("--cache-dir", default="", metavar="DIR",
                     help="where the image cache goes (default: OUT/image_cache)")
    run.add_argument("--threads", type=_int_at_least(0), default=0, metavar="N",
                     help="torch CPU threads; 0: torch's default (default: %(default)s)")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no progress bar (a line per step is printed when stdout is not a "
                          "terminal)")
    return p


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Usage errors found before anything heavy loads (exit 2). Returns the policy family."""
    if not Path(args.data_dir).is_dir():
        parser.error(f"dataset directory {args.data_dir} does not exist")
    if args.base and not Path(args.base).is_dir():
        parser.error(f"--base {args.base} is not a directory")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} exists and is not a directory")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch has no CUDA device")
    # Imported here, not at the top: the model package loads transformers (seconds), which
    # --help and the checks above do not need.
    from vla_policy_node.model.configuration_oft import PRESETS as OFT_PRESETS
    from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
        PRESETS as ROBOFLAMINGO_PRESETS)
    PRESETS = OFT_PRESETS + ROBOFLAMINGO_PRESETS
    if not args.base and args.preset not in PRESETS:
        parser.error(f"unknown --preset {args.preset!r}; known: {', '.join(PRESETS)}")
    from vla_policy_node.model.family import resolve_family
    family = resolve_family(args.base or None, args.preset)
    if family == "roboflamingo" and args.backbone_lr is not None:
        # Its optimizer groups are the release's (weight decay on cross-attention); CLIP and
        # the language model are frozen, so there is no backbone for a second rate.
        parser.error("--backbone-lr is for OFT models: RoboFlamingo trains its released set "
                     "(perceiver, cross-attention, embeddings, head) at --lr, its CLIP and "
                     "language model frozen")
    return family


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    # Under torchrun the other ranks say only what goes wrong: one copy of the log is enough.
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    family = _check_paths(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = logging.getLogger("vla-finetune")
    resumed = resume_settings(args.out) if args.lora_rank is None else None
    if resumed is not None and isinstance(resumed[1].get("lora_rank"), int):
        # The default changed (it was 32 with or without --base): "run the same command
        # again" must continue a run started before, so its rank wins over the new default.
        args.lora_rank = resumed[1]["lora_rank"]
        if rank == 0:
            log.info("resuming %s: --lora-rank %d as saved (no --lora-rank given)",
                     resumed[0], args.lora_rank)
    elif args.lora_rank is None:
        # A random backbone has nothing for low-rank adapters to adapt: train every weight.
        args.lora_rank = 32 if args.base else 0
        if not args.base and rank == 0 and family == "oft":
            log.info(
                "no --base: random %s weights, training every parameter (--lora-rank 0)",
                args.preset)
        elif not args.base and rank == 0:
            log.info("no --base: random %s weights; RoboFlamingo trains its released set "
                     "(perceiver, cross-attention, embeddings, head), its CLIP and language "
                     "model stay frozen", args.preset)
    elif args.lora_rank > 0 and not args.base and rank == 0 and family == "oft":
        log.warning(
            "LoRA (--lora-rank %d) on random weights: only the adapters and heads learn, the "
            "random backbone stays; --lora-rank 0 trains from scratch", args.lora_rank)
    try:
        config = TrainConfig(
            data_dir=args.data_dir, output_dir=args.out, base=args.base, preset=args.preset,
            steps=args.steps, batch_size=args.batch_size,
            grad_accumulation=args.grad_accumulation, lr=args.lr,
            lr_decay_step=args.lr_decay_step, weight_decay=args.weight_decay,
            lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout, augment=not args.no_augment,
            save_every=args.save_every, keep_states=args.keep_states,
            val_episodes=args.val_episodes, val_every=args.val_every,
            val_batches=args.val_batches, merge_lora=args.merge_lora,
            unnorm_key=args.unnorm_key, seed=args.seed, device=args.device, bf16=args.bf16,
            backbone_lr=args.backbone_lr, lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every, eval_episodes=args.eval_episodes,
            eval_task=args.eval_task, eval_seed_start=args.eval_seed_start,
            eval_max_steps=args.eval_max_steps, cache_images=args.cache_images,
            cache_dir=args.cache_dir)
    except ValueError as exc:
        # TrainConfig names its fields; the user typed options.
        parser.error(re.sub(r"^(\w+)", lambda m: "--" + m.group(1).replace("_", "-"),
                            str(exc)))
    bar = tqdm(total=config.steps, unit="step", disable=args.quiet or rank != 0 or None)

    def progress(step: int, loss: float) -> None:
        if bar.n == 0 and step > 1:
            bar.update(step - 1)  # resumed
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if bar.disable:
            print(f"step {step} loss {loss:.6f}", flush=True)

    from vla_policy_node.model.checkpoint import CheckpointError
    try:
        result = train(config, progress)
    except (CheckpointError, DatasetError, TrainError, FloatingPointError) as exc:
        bar.close()
        print(f"vla-finetune: {exc}", file=sys.stderr)
        return 1
    bar.close()
    if rank != 0:
        return 0
    if result.resumed_from:
        print(f"resumed from step {result.resumed_from}")
    print(f"{result.step} steps, {result.steps_per_second:.3f} steps/s; "
          f"final loss {result.losses[-1]:.5f}; validation {result.val_losses}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    if result.best:
        low, high = result.best["success_rate_ci95"]
        print(f"best checkpoint: {Path(args.out) / 'best_checkpoint'} (step "
              f"{result.best['step']}: success {result.best['successes']}/"
              f"{result.best['episodes']}, 95% CI {low:.0%}-{high:.0%})")
    if result.interrupted:
        print(f"stopped by {signal.Signals(result.interrupted).name} at step {result.step}; "
              f"run the same command again to continue")
        return 128 + int(result.interrupted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
