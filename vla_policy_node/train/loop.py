"""The OFT fine-tuning loop (the core of ``vla-finetune``).

Recipe (OpenVLA-OFT): LoRA on the backbone's linear layers; action head, proprio projector and
FiLM layers trained fully; L1 loss on normalized actions; AdamW with a x0.1 step decay; image
augmentation (random resized crop 0.9, colour jitter). bf16 autocast (on CUDA by default, on
CPU when asked; the weights and the optimizer stay float32), gradient accumulation, DDP under
torchrun (gloo on CPU, nccl with one GPU per process on CUDA).

Exact resume: a state holds the trainable weights, the optimizer and scheduler and the step;
every random draw (batches, augmentations, dropout, diffusion noise) comes from a generator
seeded by (seed, step, micro-batch, rank), so a run killed after state N and resumed repeats
steps N+1... exactly, on CPU and CUDA alike, and the ranks of a DDP run draw differently.
States are written to a temporary file and renamed, so a kill while saving never leaves a
half state that a resume would pick.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
import datetime
import gc
import hashlib
import json
import logging
import math
import os
from pathlib import Path
import pickle
import shutil
import signal
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch

from vla_policy_node.data.stats import STATISTICS_FILE
from vla_policy_node.train.dataset import (batch_indices, cacheable, DatasetError,
                                           EpisodeDataset, from_cached_stage, ImageCache,
                                           load_statistics, split_episodes)
from vla_policy_node.train.recipe import (demo_seeds, evaluate_checkpoint, lr_factor,
                                          parameter_groups, RunningLog, SCHEDULES, StopRequest,
                                          write_provenance)

logger = logging.getLogger(__name__)

# Parameters trained fully (not through LoRA), by name fragment (OFT: heads, projector, FiLM).
FULLY_TRAINED = ("action_head", "proprio_projector", "_film", "noisy_action_projector")
STATE_DIR = "train_state"
FINAL_DIR = "checkpoint"
LOG_FILE = "training_log.json"
# Settings that define the optimization problem: a state saved with other values cannot
# continue exactly. Everything else (steps, save/validation cadence, device, bf16, paths) may
# change between a run and its resume; the dataset is compared by content, not by path.
RESUME_KEYS = ("base", "preset", "batch_size", "grad_accumulation", "lr", "lr_decay_step",
               "weight_decay", "lora_rank", "lora_alpha", "lora_dropout", "augment", "seed",
               "val_episodes", "unnorm_key", "backbone_lr", "lr_schedule", "warmup_steps")
# What states saved before a setting existed were trained with.
RESUME_DEFAULTS = {"backbone_lr": None, "lr_schedule": "step", "warmup_steps": 0}
BEST_DIR = "best_checkpoint"
# Collectives wait this long: rank 0 alone writes states and merges the final checkpoint while
# the others wait (a 7B merge and save takes minutes on a slow disk).
DIST_TIMEOUT = datetime.timedelta(minutes=60)


class TrainError(RuntimeError):
    """A run that cannot start or continue (the message says why, in one line)."""


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
        device: "cpu", "cuda" or "cuda:N"; under torchrun CUDA runs use cuda:LOCAL_RANK.
        bf16: bf16 autocast of the forward pass; None: on for CUDA, off for CPU.
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
    backbone_lr: float | None = None
    lr_schedule: str = "step"
    warmup_steps: int = 0
    checkpoint_every: int = 0
    eval_every: int = 0
    eval_episodes: int = 10
    eval_task: str = "transfer_cube"
    eval_seed_start: int = 1_000_000
    eval_max_steps: int = 0
    cache_images: bool = False
    cache_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accumulation", "val_batches", "keep_states"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lora_rank", "save_every", "val_episodes", "val_every", "lr_decay_step",
                     "warmup_steps", "checkpoint_every", "eval_every", "eval_max_steps",
                     "eval_seed_start"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.backbone_lr is not None and not (math.isfinite(self.backbone_lr)
                                                 and self.backbone_lr > 0):
            raise ValueError(f"backbone_lr must be > 0, got {self.backbone_lr}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if self.eval_every and self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.lora_rank > 0 and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}") from None


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    losses: list[float]
    val_losses: dict[int, float]
    checkpoint: Path | None
    seconds: float
    steps_per_second: float
    world_size: int = 1
    #: The signal (SIGINT/SIGTERM) that stopped the run early, with its state and checkpoint.
    interrupted: int | None = None
    best: dict[str, Any] | None = None


def uses_bf16(bf16: bool | None, device: str) -> bool:
    """Whether a run autocasts to bf16: as asked, else on CUDA only (CPUs without native bf16
    emulate it slowly, and CPU runs are tests and small jobs)."""
    return bf16 if bf16 is not None else torch.device(device).type == "cuda"


def _distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _init_distributed(device: str, world: int) -> tuple[str, bool]:
    """Join torchrun's process group (env://). Returns (this process's device, whether this
    call created the group, so that train() destroys only what it made)."""
    if world == 1:
        return device, False
    import torch.distributed as dist
    cuda = torch.device(device).type == "cuda"
    if cuda:
        # One GPU per process: torchrun numbers the processes of a node with LOCAL_RANK, and a
        # device index on the command line would put every rank on the same GPU.
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                            timeout=DIST_TIMEOUT)
    return device, True


def _select_trainable(policy: Any, config: TrainConfig) -> list[torch.nn.Parameter]:
    model = policy.model
    if hasattr(policy, "trainable_parameters"):
        # A family with its own trainable set (RoboFlamingo: perceiver, cross-attention,
        # input embeddings, head; the rest frozen, no LoRA).
        logger.info("%s trains its released parameter set (LoRA settings unused)",
                    getattr(policy, "family", "this family"))
        return policy.trainable_parameters()
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
        raise TrainError("no trainable parameters after applying LoRA")
    return params


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items()
            if n in trainable}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the trainable weights' bytes: DDP ranks must agree bit for bit."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _state_step(path: Path) -> int:
    return int(path.stem.split("_")[1])


def _states(output_dir: Path) -> list[Path]:
    """Saved states, oldest first. Temporary files of interrupted saves (``.step_*.tmp``)
    never match: only complete, renamed states count."""
    return sorted((output_dir / STATE_DIR).glob("step_*.pt"), key=_state_step)


def _load_latest_state(output_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest state that loads. One that does not (a disk that lost data: saves are
    atomic, so a kill never leaves one) is skipped with a warning for the one before it."""
    for path in reversed(_states(output_dir)):
        try:
            return path, _read_state(path)
        except (RuntimeError, EOFError, OSError, ValueError,
                pickle.UnpicklingError) as exc:
            logger.warning("cannot read %s (%s): using the state before it", path, exc)
    return None, None


def resume_settings(output_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The state a run with this OUT would resume from and the settings it was saved with
    (``TrainConfig`` as a dict), or None when there is none."""
    path, state = _load_latest_state(Path(output_dir))
    if state is None:
        return None
    return path, json.loads(state["config"])


def _read_state(path: Path) -> dict[str, Any]:
    # mmap: each DDP rank reads the same file through the page cache instead of its own copy.
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _fsync_dir(directory: Path) -> None:
    # Makes a rename durable across a power loss (a kill alone never loses a rename).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _draw_seed(seed: int, step: int, micro: int, rank: int, stream: int) -> int:
    """Seed of one kind of random draw (``stream``) at one (step, micro-batch, rank)."""
    return int(np.random.SeedSequence([seed, step, micro, rank, stream]).generate_state(1)[0])


def _save_state(output_dir: Path, step: int, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig,
                losses: list[float], val_losses: dict[int, float],
                extra: Mapping[str, Any]) -> Path:
    directory = output_dir / STATE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    tmp = directory / f".step_{step:08d}.pt.tmp"
    with open(tmp, "wb") as stream:
        torch.save({"step": step, "model": _trainable_state(model),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "losses": list(losses),
                    "val_losses": {str(k): v for k, v in val_losses.items()},
                    "config": json.dumps(asdict(config), default=str), **extra}, stream)
        stream.flush()
        os.fsync(stream.fileno())
    # The rename is atomic: a kill before it leaves only the .tmp file, which no resume reads.
    os.replace(tmp, path)
    _fsync_dir(directory)
    for old in _states(output_dir)[:-config.keep_states]:
        old.unlink(missing_ok=True)
    return path


def _remove_stale_temporaries(output_dir: Path) -> None:
    for stale in [*(output_dir / STATE_DIR).glob(".step_*.tmp"),
                  output_dir / f".{FINAL_DIR}.tmp", output_dir / f".{FINAL_DIR}.old"]:
        if not stale.exists():
            continue
        logger.info("removing %s (left by an interrupted save)", stale)
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_final(policy: Any, output_dir: Path,
                extra: Callable[[Path], None] | None = None) -> Path:
    """Write OUT/checkpoint through a temporary directory and renames: the policy node never
    finds a half-written checkpoint, even when the run is killed while saving. ``extra``
    adds files to the directory before it is renamed into place (the provenance)."""
    final = output_dir / FINAL_DIR
    tmp = output_dir / f".{FINAL_DIR}.tmp"
    old = output_dir / f".{FINAL_DIR}.old"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    policy.save_pretrained(tmp)
    if extra is not None:
        extra(tmp)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def check_resume(state: Mapping[str, Any], path: Path, config: TrainConfig, world: int,
                 episodes: Mapping[str, list[list[Any]]]) -> None:
    """Raise TrainError when ``state`` was saved by a run that this one cannot continue
    exactly: other optimization settings, another number of processes, other episodes."""
    saved = json.loads(state["config"])
    current = json.loads(json.dumps(asdict(config), default=str))
    for key, default in RESUME_DEFAULTS.items():
        saved.setdefault(key, default)
    changed = [f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in RESUME_KEYS
               if saved.get(key) != current[key]]
    advice = f"use another --out, or delete {path.parent} to start over"
    if changed:
        raise TrainError(f"{path} was saved by a run with other settings "
                         f"({'; '.join(changed)}): {advice}")
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise TrainError(f"{path} was saved by {saved_world} process(es), this run has "
                         f"{world} (the global batch would change): {advice}")
    saved_episodes = state.get("episodes")
    if saved_episodes is not None and saved_episodes != dict(episodes):
        raise TrainError(f"{path} was saved with other dataset episodes (files or frame "
                         f"counts changed since): {advice}")
    later = [f"{key} {saved.get(key)!r} -> {current[key]!r}" for key in
             ("steps", "save_every", "val_every", "val_batches", "device", "bf16")
             if saved.get(key) != current[key]]
    if later:
        logger.info("resuming with changed settings: %s", "; ".join(later))


def _all_reduce_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)  # SUM: gloo has no AVG
    return tensor.tolist()


def validate(policy: Any, dataset: EpisodeDataset, config: TrainConfig,
             autocast: Callable[[], Any], rank: int = 0, world: int = 1,
             processor: Any = None) -> float:
    """Mean loss (L1 on normalized actions for the L1 head) over ``val_batches`` fixed
    held-out batches; under DDP each rank computes every world-th batch (same result)."""
    model = policy.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(rank, config.val_batches, world):
            indices = batch_indices(len(dataset), config.batch_size, config.seed + 7919, i)
            data = dataset.batch(indices)
            batch = (processor or policy.processor).build_training_batch(
                data["images"], data["proprio"], data["actions"], data["instructions"],
                augment=False, generator=config.seed)
            batch = {k: v.to(policy.device) for k, v in batch.items()}
            with autocast():
                total += float(model.compute_loss(batch))
            count += 1
    model.train()
    total, count = _all_reduce_sum([total, float(count)], policy.device, world)
    return total / count


def _image_cache(policy: Any, config: TrainConfig, output_dir: Path, rank: int, world: int,
                 datasets: list[Any]) -> Any:
    """Build (rank 0) and attach the image caches; the processor the batches go through."""
    if not config.cache_images:
        return policy.processor
    if not (cacheable(policy.processor) and all(getattr(d, "supports_image_cache", False)
                                                for d in datasets)):
        logger.info("image cache: not available for this model family, decoding on the fly")
        return policy.processor
    directory = Path(config.cache_dir) if config.cache_dir else output_dir / "image_cache"
    if rank == 0:
        from tqdm import tqdm
        for data in datasets:
            if ImageCache.path_for(data, policy.processor, directory).is_file():
                continue
            with tqdm(total=len(data), unit="frame", desc="caching images") as bar:
                ImageCache.build(data, policy.processor, directory, bar.update)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    for data in datasets:
        data.image_cache = ImageCache.build(data, policy.processor, directory)
    return from_cached_stage(policy.processor)


def _read_best(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / BEST_DIR / "eval.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_and_evaluate(policy: Any, config: TrainConfig, output_dir: Path, step: int,
                             provenance: Callable[[Path], None], log: RunningLog,
                             best: dict[str, Any] | None) -> dict[str, Any] | None:
    """OUT/checkpoint at this step (merged weights: a LoRA model is merged in place for the
    save, on a CPU copy of the adapted base weights that restores them bit for bit after;
    a second copy of the model on the training device would not fit a 7B model), then
    vla-eval on it when due."""
    if config.lora_rank > 0 and getattr(policy, "lora_applied", False):
        from vla_policy_node.model.lora import lora_merged
        with lora_merged(policy):
            checkpoint = _save_final(policy, output_dir, provenance)
    else:
        checkpoint = _save_final(policy, output_dir, provenance)
    log.write(event="checkpoint", step=step, path=str(checkpoint))
    if config.eval_every and step % config.eval_every == 0:
        best = _evaluate(checkpoint, config, output_dir, step, log, best)
    return best


def _evaluate(checkpoint: Path, config: TrainConfig, output_dir: Path, step: int,
              log: RunningLog, best: dict[str, Any] | None) -> dict[str, Any] | None:
    """vla-eval on the checkpoint; a better success rate (ties: higher mean reward) becomes
    OUT/best_checkpoint (copied through a temporary name, with its eval.json)."""
    report = evaluate_checkpoint(checkpoint, output_dir / "evals" / f"step_{step:08d}",
                                 config.eval_episodes, config.eval_task,
                                 config.eval_seed_start, config.eval_max_steps or None,
                                 config.device if config.device.startswith("cuda") else "")
    if report is None:
        log.write(event="eval_failed", step=step)
        return best
    report["step"] = step
    log.write(event="eval", step=step, success_rate=report["success_rate"],
              ci95=report["success_rate_ci95"], mean_max_reward=report["mean_max_reward"],
              wall_seconds=report.get("eval_wall_seconds"))
    logger.info("step %d: closed-loop success %d/%d (%s)", step, report["successes"],
                report["episodes"], config.eval_task)
    key = (report["success_rate"], report["mean_max_reward"])
    if best is None or key > (best["success_rate"], best["mean_max_reward"]):
        target, tmp = output_dir / BEST_DIR, output_dir / f".{BEST_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp)
        (tmp / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        best = report
        log.write(event="best", step=step, success_rate=report["success_rate"])
    return best


def train(config: TrainConfig, progress: Callable[[int, float], None] | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Fine-tune; resumes from ``output_dir/train_state`` when a state is there.

    Under torchrun (WORLD_SIZE > 1) every process calls this: each trains on its own slice of
    every global batch, and rank 0 alone writes states, the log and the final checkpoint.

    Args:
        progress: called on rank 0 after each optimizer step with (step, loss), the loss
            averaged over all processes.
        stop_after: return after this step (tests/benchmarks), saving nothing extra.

    Raises:
        DatasetError: the dataset cannot be trained on.
        TrainError: the output directory holds a state of another run.
        FloatingPointError: the loss became NaN or infinite.
    """
    from vla_policy_node.model import load_policy

    rank, world = _distributed()
    device, own_group = _init_distributed(config.device, world)
    output_dir = Path(config.output_dir)
    statistics = load_statistics(config.data_dir)
    train_paths, val_paths = split_episodes(config.data_dir, config.val_episodes)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(output_dir)
    # Rank 0 picks the state and tells the others: every rank must continue from the same one.
    state_path, state = _load_latest_state(output_dir) if rank == 0 else (None, None)
    if world > 1:
        import torch.distributed as dist
        shared = [str(state_path) if state_path else ""]
        dist.broadcast_object_list(shared, src=0)
        if rank != 0 and shared[0]:
            state_path = Path(shared[0])
            state = _read_state(state_path)
    torch.manual_seed(config.seed)
    policy = load_policy(config.base or None, preset=config.preset, device=device,
                         seed=config.seed)
    try:
        policy.set_statistics(statistics, config.unnorm_key)
    except ValueError as exc:
        raise DatasetError(f"{Path(config.data_dir) / STATISTICS_FILE}: {exc}") from None
    make_dataset = getattr(policy, "training_dataset", None)  # families with history: windows
    if make_dataset is not None:
        dataset = make_dataset(train_paths)
        val_dataset = make_dataset(val_paths) if val_paths else None
    else:
        dataset = EpisodeDataset(train_paths, policy.camera_names, policy.chunk_length,
                                 policy.action_dim)
        val_dataset = (EpisodeDataset(val_paths, policy.camera_names, policy.chunk_length,
                                      policy.action_dim) if val_paths else None)
    episodes = {"train": dataset.manifest(),
                "val": val_dataset.manifest() if val_dataset is not None else []}
    if state is not None:
        check_resume(state, state_path, config, world, episodes)
    processor = _image_cache(policy, config, output_dir, rank, world,
                             [dataset] + ([val_dataset] if val_dataset is not None else []))
    params = _select_trainable(policy, config)
    model = policy.model
    model.train()
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    logger.info("trainable %d of %d parameters (%.1f%%); %d train frames, %d val frames; "
                "%d process(es), global batch %d", n_train, n_all, 100 * n_train / n_all,
                len(dataset), len(val_dataset) if val_dataset else 0, world,
                config.batch_size * config.grad_accumulation * world)
    # A family may group its parameters (RoboFlamingo: weight decay on cross-attention only)
    # and shape the lr (RoboFlamingo: linear warmup).
    # OFT models: heads at --lr, towers/projector/LLM at --backbone-lr when given.
    if config.backbone_lr is not None and hasattr(policy, "optimizer_groups"):
        raise TrainError(f"backbone_lr is for OFT models: {policy.family} has its own "
                         f"optimizer groups at lr")
    groups = (policy.optimizer_groups(config.lr, config.weight_decay)
              if hasattr(policy, "optimizer_groups")
              else parameter_groups(model, params, config.lr, config.backbone_lr,
                                    FULLY_TRAINED))
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    # A family's own warm-up (RoboFlamingo's recipe: 5000 steps) unless --warmup-steps is set.
    family_warmup = getattr(policy, "lr_factor", None)
    warmup = (family_warmup if family_warmup is not None and not config.warmup_steps
              else (lambda step: 1.0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup(step) * lr_factor(
            step, config.lr_schedule, config.warmup_steps, config.steps, config.lr_decay_step))
    grad_clip = float(getattr(policy, "grad_clip", 0.0))
    start, losses, val_losses = 0, [], {}
    if state is not None:
        missing = set(_trainable_state(model)) - set(state["model"])
        if missing:
            raise TrainError(f"{state_path} lacks trainable weights {sorted(missing)[:5]}: "
                             f"it was saved with other LoRA settings")
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, losses = int(state["step"]), list(state["losses"])
        val_losses = {int(k): float(v) for k, v in state["val_losses"].items()}
        logger.info("resumed from %s (step %d)", state_path, start)
        del state  # the optimizer holds its own copies now
    use_bf16 = uses_bf16(config.bf16, device)
    if use_bf16:
        logger.info("bf16 autocast on %s (weights and optimizer stay float32)", device)

    def autocast() -> Any:
        # Autocast, not .to(bfloat16): the master weights and AdamW's moments stay float32.
        if use_bf16:
            return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        return nullcontext()

    forward: Any = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        cuda = torch.device(device).type == "cuda"
        # Unused-parameter search: which trainable weights a forward touches depends on the
        # head and the towers' feature layer; the search keeps DDP correct for all of them.
        forward = DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if cuda else None,
            find_unused_parameters=True)
    state_extra = {"world_size": world, "episodes": episodes}
    seeds = demo_seeds(train_paths + val_paths) if rank == 0 else []

    def provenance(directory: Path) -> None:
        write_provenance(directory, step, config, train_paths, val_paths, seeds)

    log = RunningLog(output_dir, enabled=rank == 0)
    log.write(event="start", resumed_from=start, steps=config.steps, world_size=world)
    samples_per_step = config.batch_size * config.grad_accumulation * world
    best: dict[str, Any] | None = _read_best(output_dir)
    interrupted: int | None = None
    started = step_started = time.perf_counter()
    step = start
    last = min(config.steps, stop_after) if stop_after is not None else config.steps
    stop_request = StopRequest().__enter__()
    try:
        while step < last:
            step += 1
            # Dropout draws from torch's global generators (CPU and CUDA): seeded per step and
            # rank, a resumed run repeats them exactly and the ranks draw different masks.
            torch.manual_seed(_draw_seed(config.seed, step, 0, rank, 3))
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(config.grad_accumulation):
                indices = batch_indices(len(dataset), config.batch_size, config.seed,
                                        (step - 1) * config.grad_accumulation + micro, rank, world)
                data = dataset.batch(indices)
                batch = processor.build_training_batch(
                    data["images"], data["proprio"], data["actions"], data["instructions"],
                    augment=config.augment,
                    generator=np.random.default_rng([config.seed, step, micro, rank, 1]))
                batch = {k: v.to(policy.device) for k, v in batch.items()}
                # DDP averages gradients in backward; skip that for all but the last micro-batch.
                sync = (nullcontext() if world == 1 or micro == config.grad_accumulation - 1
                        else forward.no_sync())
                with sync:
                    # The diffusion head's noise and timesteps: per micro-batch and rank.
                    noise = torch.Generator().manual_seed(
                        _draw_seed(config.seed, step, micro, rank, 2))
                    with autocast():
                        loss = forward(batch, generator=noise) / config.grad_accumulation
                    loss.backward()
                total += float(loss.detach())
            # The mean over all processes: what is logged, and what every rank checks, so that a
            # non-finite loss stops all of them together.
            total = _all_reduce_sum([total], policy.device, world)[0] / world
            if not math.isfinite(total):
                raise FloatingPointError(f"loss became {total} at step {step}")
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(total)
            if progress is not None and rank == 0:
                progress(step, total)
            now = time.perf_counter()
            log.write(step=step, loss=total, lr=scheduler.get_last_lr(),
                      samples_per_second=round(samples_per_step / max(now - step_started,
                                                                      1e-9), 2))
            step_started = now
            if val_dataset is not None and config.val_every and (
                    step % config.val_every == 0 or step == config.steps):
                val_losses[step] = validate(policy, val_dataset, config, autocast, rank, world,
                                            processor)
                logger.info("step %d: validation loss %.5f", step, val_losses[step])
                log.write(step=step, val_loss=val_losses[step])
            if rank == 0 and config.save_every and step % config.save_every == 0 and (
                    step < config.steps):
                _save_state(output_dir, step, model, optimizer, scheduler, config, losses,
                            val_losses, state_extra)
            if rank == 0 and step < config.steps and (
                    (config.checkpoint_every and step % config.checkpoint_every == 0)
                    or (config.eval_every and step % config.eval_every == 0)):
                best = _checkpoint_and_evaluate(policy, config, output_dir, step, provenance,
                                                log, best)
            # Every rank stops at the same step (a signal may reach only some of them).
            if _all_reduce_sum([float(stop_request.requested)], policy.device, world)[0]:
                interrupted = stop_request.signal or signal.SIGTERM
                logger.warning("stopped at step %d: saving a state and the checkpoint", step)
                break
    finally:
        stop_request.__exit__()
    seconds = time.perf_counter() - started
    checkpoint = None
    if step >= config.steps or interrupted:
        fingerprints = [weights_fingerprint(model)]
        if world > 1:
            import torch.distributed as dist
            fingerprints = [""] * world
            dist.all_gather_object(fingerprints, weights_fingerprint(model))
            if len(set(fingerprints)) != 1:
                logger.error("DDP ranks ended with different weights: %s", fingerprints)
        if rank == 0:
            _save_state(output_dir, step, model, optimizer, scheduler, config, losses,
                        val_losses, state_extra)
            if config.lora_rank > 0:
                # Our checkpoint format holds plain weights only (the policy node loads it with
                # no peft): fold the adapters in. The unmerged adapters stay in train_state/.
                from vla_policy_node.model.lora import merge_lora
                merged = merge_lora(policy)
                logger.info("merged %d LoRA layers into the final checkpoint", merged)
            checkpoint = _save_final(policy, output_dir, provenance)
            log.write(event="checkpoint", step=step, path=str(checkpoint),
                      interrupted=bool(interrupted))
            if config.eval_every and not interrupted:
                best = _evaluate(checkpoint, config, output_dir, step, log, best)
            _write_text_atomic(output_dir / LOG_FILE, json.dumps(
                {"losses": losses, "val_losses": val_losses, "resumed_from": start,
                 "world_size": world, "rank_weights_sha256": fingerprints,
                 "config": asdict(config)}, default=str, indent=1))
    if world > 1:
        import torch.distributed as dist
        # Drop DDP while the process group is still registered. Its Reducer holds the group,
        # and when the Reducer is the last holder, the gloo group is destroyed with the GIL
        # held: its destructor joins the worker threads, which may need the GIL to free a
        # finished collective's tensors, and the process hangs at exit (seen under load;
        # pytorch/pytorch#56297). Destroyed through destroy_process_group, it releases the GIL.
        del forward
        gc.collect()
        # The others wait for rank 0's final save: torchrun must not see the job end first.
        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    log.close()
    dataset.close()
    if val_dataset is not None:
        val_dataset.close()
    done = step - start
    return TrainResult(step, start, losses, val_losses, checkpoint, seconds,
                       done / seconds if seconds > 0 else 0.0, world, interrupted, best)
