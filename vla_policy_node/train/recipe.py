"""Pieces of the training recipe around the loop: the learning-rate schedule, learning rates
per part, stopping on SIGINT/SIGTERM, the running log, checkpoints with their provenance and
closed-loop evaluation during training (``vla-eval`` in a child process).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

SCHEDULES = ("step", "cosine")
LOG_JSONL = "training_log.jsonl"
PROVENANCE_FILE = "training_provenance.json"
#: Floor of the cosine schedule, as a fraction of the peak learning rate.
COSINE_FLOOR = 0.01


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int,
              decay_step: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warm-up from 1/warmup over ``warmup_steps``; then ``step``: 1.0, and 0.1 from
    ``decay_step`` on (0: never; OFT's recipe); ``cosine``: half a cosine from 1.0 at the end
    of the warm-up to COSINE_FLOOR at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
    return 0.1 if decay_step and step >= decay_step else 1.0


def parameter_groups(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], lr: float,
                     backbone_lr: float | None, head_tags: Sequence[str]
                     ) -> list[dict[str, Any]] | Sequence[Any]:
    """Heads (names containing one of ``head_tags``) at ``lr``, everything else (towers,
    projector, LLM, LoRA adapters) at ``backbone_lr``; one group (as before) when
    ``backbone_lr`` is None or equal to ``lr``."""
    if backbone_lr is None or backbone_lr == lr:
        return params
    trainable = {id(p) for p in params}
    heads, backbone = [], []
    for name, param in model.named_parameters():
        if id(param) in trainable:
            (heads if any(tag in name for tag in head_tags) else backbone).append(param)
    groups = [{"params": heads, "lr": lr, "name": "heads"},
              {"params": backbone, "lr": backbone_lr, "name": "backbone"}]
    return [g for g in groups if g["params"]]


class StopRequest:
    """SIGINT/SIGTERM set a flag instead of killing the run: the loop finishes its step and
    saves a state and a checkpoint. A second signal stops at once (the previous handler).
    Only the main thread can install handlers; elsewhere (a test's thread) nothing changes."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            previous = self._previous.get(signum)
            signal.signal(signum, previous if callable(previous) else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signum
        logger.warning("%s: stopping after this step (state and checkpoint are saved; send "
                       "it again to stop at once)", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunningLog:
    """``OUT/training_log.jsonl``: one JSON object per line, appended and flushed as training
    goes (steps, validations, evaluations, checkpoints), so a killed run keeps its history."""

    def __init__(self, output_dir: Path, enabled: bool = True) -> None:
        self.path = Path(output_dir) / LOG_JSONL
        self._file = open(self.path, "a") if enabled else None

    def write(self, **record: Any) -> None:
        if self._file is None:
            return
        record.setdefault("time", round(time.time(), 3))
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def demo_seeds(paths: Iterable[Path]) -> list[int]:
    """Simulator seeds of the episodes: from the source bag's name (``..._seed0042``, the
    ``--direct`` writer) or ``sim_seeds.json`` next to it (vla-sim-demos through ROS)."""
    import h5py
    seeds: set[int] = set()
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                source = str(f.attrs.get("source_bag", ""))
        except OSError:
            continue
        if not source:
            continue
        match = re.search(r"seed(\d+)", Path(source).name)
        if match:
            seeds.add(int(match.group(1)))
            continue
        index = Path(source).parent / "sim_seeds.json"
        try:
            seed = json.loads(index.read_text()).get(Path(source).name)
        except (OSError, ValueError, AttributeError):
            continue
        if seed is not None:
            seeds.add(int(seed))
    return sorted(seeds)


def write_provenance(directory: Path, step: int, config: Any, train_paths: Sequence[Path],
                     val_paths: Sequence[Path], seeds: Sequence[int],
                     extra: Mapping[str, Any] | None = None) -> None:
    """``training_provenance.json`` in a checkpoint: what it was trained on and how (vla-eval
    refuses evaluation seeds that were demonstration seeds)."""
    document = {"step": step, "dataset": str(Path(config.data_dir).resolve()),
                "train_episodes": [p.name for p in train_paths],
                "val_episodes": [p.name for p in val_paths], "demo_seeds": list(seeds),
                "preset": config.preset, "base": config.base or None,
                "settings": {k: getattr(config, k) for k in (
                    "steps", "batch_size", "grad_accumulation", "lr", "backbone_lr",
                    "lr_schedule", "warmup_steps", "lora_rank", "augment", "seed")},
                **(extra or {})}
    (Path(directory) / PROVENANCE_FILE).write_text(json.dumps(document, indent=1) + "\n")


def evaluate_checkpoint(checkpoint: Path, out_dir: Path, episodes: int, task: str,
                        seed_start: int, max_steps: int | None, device: str = "cpu",
                        timeout: float = 3600.0) -> dict[str, Any] | None:
    """Run ``vla-eval`` on ``checkpoint`` in a child process (its own ROS domain); the
    report, or None when it could not run (logged: training goes on)."""
    json_path = out_dir / "eval.json"
    argv = [sys.executable, "-m", "vla_policy_node.tools.eval", "--checkpoint",
            str(checkpoint), "--episodes", str(episodes), "--task", task, "--seed-start",
            str(seed_start), "--videos", "1", "--quiet", "--output-dir", str(out_dir),
            "--json", str(json_path)]
    if max_steps:
        argv += ["--max-steps", str(max_steps)]
    if device:
        argv += ["--device", device]
    started = time.monotonic()
    try:
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        logger.error("vla-eval of %s did not finish in %.0f s", checkpoint, timeout)
        return None
    if result.returncode != 0 or not json_path.is_file():
        logger.error("vla-eval of %s failed (exit %d): %s", checkpoint, result.returncode,
                     result.stdout[-2000:])
        return None
    report = json.loads(json_path.read_text())
    report["eval_wall_seconds"] = round(time.monotonic() - started, 1)
    return report
