"""The OFT fine-tuning loop (the core of ``vla-finetune``).

Recipe (OpenVLA-OFT): LoRA on the backbone's linear layers; action head, proprio projector and
FiLM layers trained fully; L1 loss on normalized actions; AdamW with a x0.1 step decay; image
augmentation (random resized crop 0.9, colour jitter). bf16 autocast on CUDA, gradient
accumulation, DDP under torchrun.

Exact resume: a checkpoint holds the trainable weights, the optimizer and scheduler, the step
and the torch RNG; batches and augmentations are drawn from generators seeded by
(seed, step, rank), so a run killed after checkpoint N and resumed repeats steps N+1... exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
import json
import logging
import math
import os
from pathlib import Path
import time
from typing import Any, Callable

import numpy as np
import torch

from vla_policy_node.train.dataset import (batch_indices, EpisodeDataset, load_statistics,
                                           split_episodes)

logger = logging.getLogger(__name__)

# Parameters trained fully (not through LoRA), by name fragment (OFT: heads, projector, FiLM).
FULLY_TRAINED = ("action_head", "proprio_projector", "_film", "noisy_action_projector")
STATE_DIR = "train_state"
FINAL_DIR = "checkpoint"


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run (validated).

    Attributes:
        data_dir: a vla-convert output directory.
        output_dir: receives train_state/ (resume) and checkpoint/ (for the policy node).
        base: base checkpoint directory; empty: ``preset`` with random weights.
        steps: optimizer steps in total.
        batch_size: samples per micro-batch (per process).
        grad_accumulation: micro-batches per optimizer step.
        lr / lr_decay_step / weight_decay: AdamW; lr x0.1 from ``lr_decay_step`` (0: never).
        lora_rank / lora_alpha / lora_dropout: LoRA (rank 0: train every weight).
        augment: OFT image augmentation.
        save_every: checkpoint every N steps (0: only at the end).
        keep_states: training states kept on disk.
        val_episodes / val_every / val_batches: held-out episodes and validation cadence.
        merge_lora: kept for old configs; the final checkpoint is always merged (our
            format holds plain weights; the adapters stay in train_state/).
        unnorm_key: dataset key of the statistics (default: the only one).
        bf16: autocast on CUDA (None: when on CUDA).
    """

    data_dir: str
    output_dir: str
    base: str = ""
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 8
    grad_accumulation: int = 1
    lr: float = 5e-4
    lr_decay_step: int = 0
    weight_decay: float = 0.0
    lora_rank: int = 32
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    augment: bool = True
    save_every: int = 500
    keep_states: int = 2
    val_episodes: int = 1
    val_every: int = 500
    val_batches: int = 4
    merge_lora: bool = False
    unnorm_key: str | None = None
    seed: int = 0
    device: str = "cpu"
    bf16: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accumulation", "val_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lora_rank", "save_every", "val_episodes", "val_every", "lr_decay_step"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.keep_states < 1:
            raise ValueError(f"keep_states must be >= 1, got {self.keep_states}")


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    losses: list[float]
    val_losses: dict[int, float]
    checkpoint: Path | None
    seconds: float
    steps_per_second: float


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _select_trainable(policy: Any, config: TrainConfig) -> list[torch.nn.Parameter]:
    model = policy.model
    if config.lora_rank > 0:
        from vla_policy_node.model.lora import apply_lora
        apply_lora(policy, config.lora_rank, config.lora_alpha, config.lora_dropout)
        for name, param in model.named_parameters():
            if any(tag in name for tag in FULLY_TRAINED):
                param.requires_grad_(True)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters after applying LoRA")
    return params


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items()
            if n in trainable}


def _latest_state(output_dir: Path) -> Path | None:
    states = sorted((output_dir / STATE_DIR).glob("step_*.pt"),
                    key=lambda p: int(p.stem.split("_")[1]))
    return states[-1] if states else None


def _save_state(output_dir: Path, step: int, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig,
                losses: list[float], val_losses: dict[int, float]) -> Path:
    directory = output_dir / STATE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    tmp = directory / f".step_{step:08d}.pt.tmp"
    torch.save({"step": step, "model": _trainable_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "losses": list(losses),
                "val_losses": {str(k): v for k, v in val_losses.items()},
                "config": json.dumps(asdict(config), default=str)}, tmp)
    os.replace(tmp, path)  # a kill mid-write never leaves a half checkpoint
    states = sorted(directory.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    for old in states[:-config.keep_states]:
        old.unlink(missing_ok=True)
    return path


def validate(policy: Any, dataset: EpisodeDataset, config: TrainConfig,
             autocast: Callable[[], Any]) -> float:
    """Mean loss (L1 on normalized actions for the L1 head) over fixed held-out batches."""
    model = policy.model
    model.eval()
    losses = []
    with torch.no_grad():
        for i in range(config.val_batches):
            indices = batch_indices(len(dataset), config.batch_size, config.seed + 7919, i)
            data = dataset.batch(indices)
            batch = policy.processor.build_training_batch(
                data["images"], data["proprio"], data["actions"], data["instructions"],
                augment=False, generator=config.seed)
            batch = {k: v.to(policy.device) for k, v in batch.items()}
            with autocast():
                losses.append(float(model.compute_loss(batch)))
    model.train()
    return float(np.mean(losses))


def train(config: TrainConfig, progress: Callable[[int, float], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Fine-tune; resumes from ``output_dir/train_state`` when a state is there.

    Args:
        progress: called after each optimizer step with (step, loss).
        stop_after: return after this step (tests/benchmarks), saving nothing extra.
    """
    from vla_policy_node.model import load_policy

    rank, world = _distributed()
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if config.device.startswith("cuda") else "gloo")
        if config.device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", rank))
            torch.cuda.set_device(local)
            config.device = f"cuda:{local}"
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    statistics = load_statistics(config.data_dir)
    torch.manual_seed(config.seed)
    policy = load_policy(config.base or None, preset=config.preset, device=config.device,
                         seed=config.seed)
    policy.set_statistics(statistics, config.unnorm_key)
    train_paths, val_paths = split_episodes(config.data_dir, config.val_episodes)
    dataset = EpisodeDataset(train_paths, policy.camera_names, policy.chunk_length,
                             policy.action_dim)
    val_dataset = (EpisodeDataset(val_paths, policy.camera_names, policy.chunk_length,
                                  policy.action_dim) if val_paths else None)
    params = _select_trainable(policy, config)
    model = policy.model
    model.train()
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("trainable %d of %d parameters (%.1f%%); %d train frames, %d val frames",
                n_train, n_all, 100 * n_train / n_all, len(dataset),
                len(val_dataset) if val_dataset else 0)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    decay = config.lr_decay_step or (config.steps + 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if step < decay else 0.1)
    start, losses, val_losses = 0, [], {}
    state_path = _latest_state(output_dir)
    if state_path is not None:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        missing = set(_trainable_state(model)) - set(state["model"])
        if missing:
            raise RuntimeError(f"{state_path} lacks trainable weights {sorted(missing)[:5]}: "
                               f"it was saved with other LoRA settings")
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, losses = int(state["step"]), list(state["losses"])
        val_losses = {int(k): float(v) for k, v in state["val_losses"].items()}
        logger.info("resumed from %s (step %d)", state_path, start)
    use_bf16 = (config.bf16 if config.bf16 is not None
                else config.device.startswith("cuda"))

    def autocast() -> Any:
        if use_bf16:
            return torch.autocast(device_type=torch.device(config.device).type,
                                  dtype=torch.bfloat16)
        return nullcontext()

    forward: Any = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        forward = DistributedDataParallel(model, find_unused_parameters=True)
    started = time.perf_counter()
    step = start
    last = min(config.steps, stop_after) if stop_after is not None else config.steps
    while step < last:
        step += 1
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(config.grad_accumulation):
            indices = batch_indices(len(dataset), config.batch_size, config.seed,
                                    step * config.grad_accumulation + micro, rank)
            data = dataset.batch(indices)
            batch = policy.processor.build_training_batch(
                data["images"], data["proprio"], data["actions"], data["instructions"],
                augment=config.augment,
                generator=np.random.default_rng([config.seed, step, micro, rank, 1]))
            batch = {k: v.to(policy.device) for k, v in batch.items()}
            sync = (nullcontext() if world == 1 or micro == config.grad_accumulation - 1
                    else forward.no_sync())
            with sync, autocast():
                loss = forward(batch) / config.grad_accumulation
            with sync:
                loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {step}")
        optimizer.step()
        scheduler.step()
        losses.append(total)
        if progress is not None:
            progress(step, total)
        if val_dataset is not None and config.val_every and (
                step % config.val_every == 0 or step == config.steps):
            val_losses[step] = validate(policy, val_dataset, config, autocast)
            logger.info("step %d: validation loss %.5f", step, val_losses[step])
        if rank == 0 and config.save_every and step % config.save_every == 0 and (
                step < config.steps):
            _save_state(output_dir, step, model, optimizer, scheduler, config, losses,
                        val_losses)
    seconds = time.perf_counter() - started
    checkpoint = None
    if step >= config.steps and rank == 0:
        _save_state(output_dir, step, model, optimizer, scheduler, config, losses, val_losses)
        if config.lora_rank > 0:
            # Our checkpoint format holds plain weights only (the policy node loads it with
            # no peft): fold the adapters in. The unmerged adapters stay in train_state/.
            from vla_policy_node.model.lora import merge_lora
            merged = merge_lora(policy)
            logger.info("merged %d LoRA layers into the final checkpoint", merged)
        checkpoint = Path(policy.save_pretrained(output_dir / FINAL_DIR))
        (output_dir / "training_log.json").write_text(json.dumps(
            {"losses": losses, "val_losses": val_losses, "config": asdict(config)},
            default=str, indent=1))
    dataset.close()
    if val_dataset is not None:
        val_dataset.close()
    done = step - start
    return TrainResult(step, start, losses, val_losses, checkpoint, seconds,
                       done / seconds if seconds > 0 else 0.0)
