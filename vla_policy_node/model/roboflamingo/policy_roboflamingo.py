"""RoboFlamingo behind the family contract: one frame per call, history in the policy.

History rule of the release (eval_utils.py:146-355, action_head.py:330-360): each call encodes
one frame to a pooled feature; for the first ``window`` calls the LSTM is stepped with its
carried (h, c); from call ``window + 1`` on it is re-run from a zero state over the last
``window`` pooled features (the carried state is no longer used). Both give the LSTM run from
zero over the last min(t, window) features, which the tests check. The history is forgotten by
:meth:`reset` and whenever the instruction changes (the release resets before every subtask).
"""

from __future__ import annotations

from collections import deque
import logging
import os
from pathlib import Path
import threading
import time
from typing import Any, Mapping

import numpy as np
import torch

from vla_policy_node.model.family import PolicyBase
from vla_policy_node.model.policy import build_context, InferenceResult, parse_dtype
from vla_policy_node.model.processor import ObservationError
from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
    get_preset, RoboFlamingoConfig)
from vla_policy_node.model.roboflamingo.modeling_roboflamingo import (log_size, PolicyHead,
                                                                      RoboFlamingoModel)
from vla_policy_node.model.roboflamingo.processor_roboflamingo import (
    build_tiny_flamingo_tokenizer, FlamingoTokenizer, RoboFlamingoProcessor)

logger = logging.getLogger(__name__)


class HeadHistory:
    """The release's history rule around a :class:`PolicyHead` (one pooled feature per step):
    LSTM state carried for the first ``window`` steps, then a re-run from zero over the last
    ``window`` features. Not thread-safe (the policy holds its lock around it)."""

    def __init__(self, head: PolicyHead, window: int) -> None:
        self.head = head
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.features: deque[torch.Tensor] = deque(maxlen=self.window)
        self.state: Any = None
        self.steps = 0

    def __len__(self) -> int:
        return len(self.features)

    @torch.inference_mode()
    def step(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled (1, D) -> continuous (K, Dc) in [-1, 1], gripper probabilities (K, Nb)."""
        head = self.head
        self.features.append(pooled)
        self.steps += 1
        if head.rnn is None:
            hidden = pooled
        elif self.steps <= self.window:
            out, self.state = head.rnn(pooled[:, None], self.state)
            hidden = out[:, -1]
        else:
            out, _ = head.rnn(torch.stack(list(self.features), dim=1), None)
            hidden = out[:, -1]
        cont, grip = head.decode(hidden)
        return cont[0], torch.sigmoid(grip[0])


class RoboFlamingoPolicy(PolicyBase):
    """A RoboFlamingo model with its processor and the inference history.

    Attributes:
        model: :class:`RoboFlamingoModel`; processor: :class:`RoboFlamingoProcessor`;
        config: :class:`RoboFlamingoConfig`; coverage: the key coverage report of an
        official checkpoint (None for ours and presets).
    """

    family = "roboflamingo"
    keeps_history = True

    def __init__(self, model: RoboFlamingoModel, processor: RoboFlamingoProcessor) -> None:
        self.model = model
        self.processor = processor
        self.config: RoboFlamingoConfig = model.config
        self.quantization = "none"
        self.lora_applied = False
        self.coverage: Any = None
        self._lock = threading.Lock()
        self.model.eval()
        self.reset()

    # ------------------------------------------------------------------ contract
    @property
    def window(self) -> int:
        return self.config.window

    @property
    def tokenizer(self) -> FlamingoTokenizer:
        return self.processor.tokenizer

    @property
    def history_length(self) -> int:
        """Pooled features currently held (at most ``window``)."""
        return len(self._history)

    def reset(self) -> None:
        """Forget the history (features, LSTM state, step count, instruction)."""
        with self._lock:
            self._history = HeadHistory(self.model.head, self.config.window)
            self._instruction: str | None = None

    # ------------------------------------------------------------------ inference
    def step_features(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push one pooled feature (1, D) through the head with the history rule ->
        continuous (K, Dc) in [-1, 1], gripper probabilities (K, Nb)."""
        return self._history.step(pooled)

    def infer(self, images: Mapping[str, np.ndarray], proprio: np.ndarray | None,
              instruction: str) -> InferenceResult:
        """One frame -> (K, D) raw actions; the frame joins the history.

        ``proprio`` is accepted for the family contract and ignored, as in the release.

        Raises:
            ObservationError: missing camera, bad image, empty/reserved instruction.
            FloatingPointError: non-finite model output (never handed to a robot).
        """
        t0 = time.perf_counter()
        inputs = self.processor.inference_inputs(images, instruction)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        t1 = time.perf_counter()
        with self._lock:
            if instruction.strip() != self._instruction:
                if self._instruction is not None:
                    logger.info("instruction changed: history reset")
                self._history.reset()
                self._instruction = instruction.strip()
            with torch.inference_mode():
                pooled = self.model.frame_features(inputs["pixel_values"], inputs["input_ids"],
                                                   inputs["attention_mask"])
            if not bool(torch.isfinite(pooled).all()):
                # Kept out of the history: one bad frame must not poison the next `window`.
                raise FloatingPointError("the model produced non-finite features; the frame "
                                         "was not added to the history")
            cont, grip = self.step_features(pooled)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        cont_np = cont.float().cpu().numpy().astype(np.float64)
        grip_np = grip.float().cpu().numpy().astype(np.float64)
        if not (np.all(np.isfinite(cont_np)) and np.all(np.isfinite(grip_np))):
            raise FloatingPointError("the model produced non-finite actions")
        actions = self.processor.assemble_actions(cont_np, grip_np)
        t3 = time.perf_counter()
        return InferenceResult(actions=actions, timings={
            "preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0})

    # ------------------------------------------------------------------ training hooks
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Freeze everything but the released trainable set; return that set."""
        keep = {id(p) for _, p in self.model.trainable_named_parameters()}
        for param in self.model.parameters():
            param.requires_grad_(id(param) in keep)
        return [p for p in self.model.parameters() if p.requires_grad]

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups of the release (train_calvin.py get_grouped_params): weight decay on
        cross-attention parameters whose name has no gate, "norm" or "bias", none elsewhere.
        By name, as released: the FF's LayerNorm weight (``ff.0.weight``) is decayed."""
        decay, plain = [], []
        for name, param in self.model.trainable_named_parameters():
            if not param.requires_grad:
                continue
            wd = ".xattn." in f".{name}" and not any(
                t in name for t in ("gate", "norm", "bias"))
            (decay if wd else plain).append(param)
        return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
                {"params": plain, "weight_decay": 0.0, "lr": lr}]

    @property
    def grad_clip(self) -> float:
        """Gradient-norm clip of the release (0: none)."""
        return self.config.grad_clip

    def lr_factor(self, step: int) -> float:
        """Constant after a linear warmup of ``warmup_steps`` (the release's schedule)."""
        warm = self.config.warmup_steps
        return 1.0 if warm == 0 else min(1.0, (step + 1) / warm)

    def training_dataset(self, paths: Any) -> Any:
        from vla_policy_node.train.windows import WindowDataset
        return WindowDataset(paths, self.camera_names, self.config.window,
                             self.config.frame_stride, self.chunk_length, self.action_dim)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from vla_policy_node.model.roboflamingo.checkpoint_roboflamingo import save_policy
        return save_policy(self, directory)


def build_roboflamingo(config: RoboFlamingoConfig, tokenizer: FlamingoTokenizer | None = None,
                       device: str = "cpu", dtype: str | torch.dtype = "float32",
                       seed: int = 0, statistics: Mapping[str, Any] | None = None,
                       unnorm_key: str | None = None) -> RoboFlamingoPolicy:
    """A policy with freshly initialized (random, seeded) weights."""
    if tokenizer is None:
        tokenizer = build_tiny_flamingo_tokenizer()
        if config.tokenizer_kind != "tiny":
            logger.warning("preset %s: no GPT-NeoX tokenizer without a checkpoint; using the "
                           "tiny one (token ids only matter for shapes here)", config.name)
    if tokenizer.vocab_size > config.lm.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the LM vocabulary "
                         f"{config.lm.vocab_size}")
    with build_context(device, parse_dtype(dtype), seed):
        model = RoboFlamingoModel(config, tokenizer.media_id)
    log_size(model)
    return RoboFlamingoPolicy(model, RoboFlamingoProcessor(config, tokenizer, statistics,
                                                           unnorm_key))


def load_roboflamingo(checkpoint: str | os.PathLike | None = None,
                      preset: str = "tiny-roboflamingo", device: str = "cpu",
                      dtype: str = "float32", unnorm_key: str | None = None, seed: int = 0,
                      strict: bool = True) -> RoboFlamingoPolicy:
    """Our checkpoint directory, an official release directory (see docs/roboflamingo.md), or
    ``preset`` with random weights when ``checkpoint`` is empty."""
    if checkpoint:
        from vla_policy_node.model.roboflamingo.checkpoint_roboflamingo import load_directory
        return load_directory(checkpoint, device=device, dtype=dtype, unnorm_key=unnorm_key,
                              seed=seed, strict=strict)
    policy = build_roboflamingo(get_preset(preset), device=device, dtype=dtype, seed=seed)
    logger.info("preset %s with random weights and identity normalization", preset)
    return policy


__all__ = ["ObservationError", "RoboFlamingoPolicy", "build_roboflamingo", "load_roboflamingo"]
