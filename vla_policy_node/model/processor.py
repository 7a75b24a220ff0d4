"""The OFT processor: images, prompt, tokens, and action/proprio (un)normalization.

- Images (uint8 H x W x 3 RGB per camera): the official OFT chain
  (:func:`vla_policy_node.data.images.prepare_policy_image`: PIL bicubic to 256, JPEG q95,
  TF lanczos3 to 224, 90%-area crop resized back, centred at inference and random in training),
  then each tower's normalization, stacked as 6 channels (DINOv2 first, SigLIP second).
- Prompt: ``In: What action should the robot take to {instruction.lower()}?\\nOut:``.
- Normalization from dataset_statistics.json: BOUNDS (min/max) or BOUNDS_Q99 (q01/q99) to
  [-1, 1], clipped; dimensions whose ``mask`` is false pass through unchanged.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vla_policy_node.data.images import prepare_policy_image
from vla_policy_node.model.configuration_oft import OFTConfig
from vla_policy_node.model.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the bad input."""


# ---------------------------------------------------------------------- normalization
class Normalizer:
    """Maps one quantity (action or proprio) between raw units and [-1, 1].

    normalize: ``clip(2 * (x - low) / (high - low + 1e-8) - 1, -1, 1)``;
    unnormalize: ``0.5 * (a + 1) * (high - low + 1e-8) + low``; masked-off dims pass through.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, mask: np.ndarray | None = None,
                 name: str = "action") -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.ndim != 1 or self.low.shape != self.high.shape:
            raise ValueError(f"{name} statistics: low {self.low.shape} / high {self.high.shape} "
                             "must be matching 1-D arrays")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError(f"{name} statistics contain non-finite values")
        if np.any(self.high < self.low):
            raise ValueError(f"{name} statistics: high < low at dims "
                             f"{np.flatnonzero(self.high < self.low).tolist()}")
        self.mask = (np.ones_like(self.low, dtype=bool) if mask is None
                     else np.asarray(mask, dtype=bool))
        if self.mask.shape != self.low.shape:
            raise ValueError(f"{name} statistics: mask {self.mask.shape} vs {self.low.shape}")
        self.name = name

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def normalize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.clip(2.0 * (x - self.low) / (self.high - self.low + 1e-8) - 1.0, -1.0, 1.0)
        return np.where(self.mask, out, x)

    def unnormalize(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        out = 0.5 * (a + 1.0) * (self.high - self.low + 1e-8) + self.low
        return np.where(self.mask, out, a)

    @classmethod
    def identity(cls, dim: int, name: str) -> "Normalizer":
        """No statistics: [-1, 1] maps to itself (random-weight presets)."""
        return cls(-np.ones(dim), np.ones(dim), None, name)

    @classmethod
    def from_statistics(cls, stats: Mapping[str, Any], kind: str, name: str) -> "Normalizer":
        keys = ("min", "max") if kind == "bounds" else ("q01", "q99")
        missing = [k for k in keys if k not in stats]
        if missing:
            raise ValueError(f"{name} statistics lack {missing} (needed by {kind})")
        return cls(np.asarray(stats[keys[0]]), np.asarray(stats[keys[1]]), stats.get("mask"), name)


def select_statistics(stats: Mapping[str, Any], unnorm_key: str | None) -> tuple[str, dict]:
    """Pick one dataset's entry of dataset_statistics.json content."""
    if not isinstance(stats, Mapping) or not stats:
        raise ValueError("dataset statistics must be a non-empty mapping {key: {...}}")
    if "action" in stats:  # a single entry given directly
        return unnorm_key or "default", dict(stats)
    if unnorm_key:
        if unnorm_key not in stats:
            raise ValueError(f"unnorm_key {unnorm_key!r} not in statistics keys {sorted(stats)}")
        return unnorm_key, dict(stats[unnorm_key])
    if len(stats) != 1:
        raise ValueError(f"statistics hold several datasets {sorted(stats)}: pass unnorm_key")
    key = next(iter(stats))
    return key, dict(stats[key])


class OFTProcessor:
    """Turns observations into model batches and model outputs into actions."""

    def __init__(self, config: OFTConfig, tokenizer: TextTokenizer,
                 statistics: Mapping[str, Any] | None = None,
                 unnorm_key: str | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        mean = np.array(config.dino_mean + config.siglip_mean, dtype=np.float32)
        std = np.array(config.dino_std + config.siglip_std, dtype=np.float32)
        self._mean, self._std = mean, std
        self.statistics: dict[str, Any] | None = None
        self.unnorm_key: str | None = None
        self.action_normalizer = Normalizer.identity(config.action_dim, "action")
        self.proprio_normalizer = Normalizer.identity(config.proprio_dim, "proprio")
        if statistics is not None:
            self.set_statistics(statistics, unnorm_key)

    # ------------------------------------------------------------------ statistics
    def set_statistics(self, stats: Mapping[str, Any], unnorm_key: str | None = None) -> None:
        """Use dataset_statistics.json content ({key: {"action": {...}, "proprio": {...}}})."""
        key, entry = select_statistics(stats, unnorm_key)
        if "action" not in entry:
            raise ValueError(f"statistics entry {key!r} has no 'action'")
        kind = self.config.normalization
        action = Normalizer.from_statistics(entry["action"], kind, "action")
        if action.dim != self.config.action_dim:
            raise ValueError(f"action statistics have {action.dim} dims, model action_dim is "
                             f"{self.config.action_dim}")
        proprio = self.proprio_normalizer
        if self.config.use_proprio:
            if "proprio" not in entry:
                raise ValueError(f"statistics entry {key!r} has no 'proprio'")
            proprio = Normalizer.from_statistics(entry["proprio"], kind, "proprio")
            if proprio.dim != self.config.proprio_dim:
                raise ValueError(f"proprio statistics have {proprio.dim} dims, model "
                                 f"proprio_dim is {self.config.proprio_dim}")
        self.action_normalizer, self.proprio_normalizer = action, proprio
        self.statistics = dict(stats) if "action" not in stats else {key: entry}
        self.unnorm_key = key

    # ------------------------------------------------------------------ validation
    def check_observation(self, images: Mapping[str, np.ndarray], proprio: Any,
                          instruction: Any) -> np.ndarray:
        """Raise ObservationError naming the problem; return proprio as float64 (P,)."""
        if not isinstance(images, Mapping):
            raise ObservationError(f"images must be a mapping camera name -> array, "
                                   f"got {type(images).__name__}")
        missing = [c for c in self.config.camera_names if c not in images]
        if missing:
            raise ObservationError(f"missing camera image(s) {missing}; the model needs "
                                   f"{list(self.config.camera_names)}, got {sorted(images)}")
        for name in self.config.camera_names:
            image = images[name]
            if not isinstance(image, np.ndarray):
                raise ObservationError(f"camera {name!r}: expected a numpy array, "
                                       f"got {type(image).__name__}")
            if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
                raise ObservationError(f"camera {name!r}: expected an HxWx3 image, "
                                       f"got shape {image.shape}")
            if image.dtype != np.uint8:
                raise ObservationError(f"camera {name!r}: expected uint8 pixels, "
                                       f"got {image.dtype}")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ObservationError(f"instruction must be a non-empty string, got {instruction!r}")
        if proprio is None:
            if self.config.use_proprio:
                raise ObservationError(f"proprio is required ({self.config.proprio_dim} values)")
            return np.zeros(self.config.proprio_dim)
        try:
            values = np.asarray(proprio, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ObservationError(f"proprio is not numeric: {exc}") from None
        if values.shape != (self.config.proprio_dim,):
            raise ObservationError(f"proprio must have shape ({self.config.proprio_dim},), "
                                   f"got {values.shape}")
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ObservationError(f"proprio has non-finite values at indices {bad.tolist()}: "
                                   f"{values[bad].tolist()}")
        return values

    # ------------------------------------------------------------------ pieces
    def prompt(self, instruction: str) -> str:
        return self.config.prompt_template.format(instruction=instruction.strip().lower())

    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """BOS + prompt (+ empty token), right-padded: input_ids (B, T) long, mask (B, T)."""
        rows = []
        for text in instructions:
            ids = [self.tokenizer.bos_id] + self.tokenizer.encode(self.prompt(text))
            if self.config.empty_token_id is not None and ids[-1] != self.config.empty_token_id:
                ids.append(self.config.empty_token_id)
            rows.append(ids)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, r in enumerate(rows):
            input_ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = True
        return input_ids, mask

    def prepare_image(self, image: np.ndarray, augment: bool = False,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 (H, W, 3) camera frame -> the model's uint8 (S, S, 3) image: the official
        OFT chain (:func:`vla_policy_node.data.images.prepare_policy_image`), the same
        function in training (``augment``: random crop + colour jitter) and deployment."""
        return prepare_policy_image(image, self.config.image_size, self.config.resize_size,
                                    self.config.crop_scale, self.config.center_crop,
                                    augment, rng)

    def normalize_pixels(self, image: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) -> float32 (6, S, S): x / 255, then each tower's mean/std (DINOv2
        channels first), as the Prismatic processor's to_tensor + normalize."""
        pixels = image.astype(np.float32) / np.float32(255.0)
        six = np.concatenate([pixels, pixels], axis=2)
        return ((six - self._mean) / self._std).transpose(2, 0, 1)

    def preprocess_image(self, image: np.ndarray, augment: bool = False,
                         rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (6, S, S) normalized for DINOv2 then SigLIP."""
        return self.normalize_pixels(self.prepare_image(image, augment, rng))

    def pixel_values(self, images: Sequence[Mapping[str, np.ndarray]], augment: bool = False,
                     rng: np.random.Generator | None = None) -> torch.Tensor:
        """(B, N, 6, S, S) in model camera order."""
        out = np.stack([np.stack([self.preprocess_image(obs[c], augment, rng)
                                  for c in self.config.camera_names]) for obs in images])
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ batches
    def build_inference_batch(self, observations: Sequence[tuple[Mapping[str, np.ndarray],
                                                                 Any, str]]
                              ) -> dict[str, torch.Tensor]:
        """Validated observations (images, proprio, instruction) -> model batch."""
        if not observations:
            raise ObservationError("no observations given")
        proprios, images, texts = [], [], []
        for i, (imgs, proprio, text) in enumerate(observations):
            try:
                proprios.append(self.check_observation(imgs, proprio, text))
            except ObservationError as exc:
                if len(observations) == 1:
                    raise
                raise ObservationError(f"observation {i}: {exc}") from None
            images.append(imgs)
            texts.append(text)
        ids, mask = self.tokenize(texts)
        batch = {"pixel_values": self.pixel_values(images), "input_ids": ids,
                 "attention_mask": mask}
        if self.config.use_proprio:
            norm = self.proprio_normalizer.normalize(np.stack(proprios))
            batch["proprio"] = torch.from_numpy(norm.astype(np.float32))
        return batch

    def build_training_batch(self, images: Sequence[Mapping[str, np.ndarray]],
                             proprio: np.ndarray | None, actions: np.ndarray,
                             instructions: Sequence[str], augment: bool = True,
                             generator: np.random.Generator | int | None = None
                             ) -> dict[str, torch.Tensor]:
        """A training batch: images list of B camera dicts, proprio (B, P) and actions
        (B, K, D) un-normalized, B instructions. Actions/proprio are normalized here."""
        b = len(images)
        actions = np.asarray(actions, dtype=np.float64)
        k, d = self.config.chunk_length, self.config.action_dim
        if actions.shape != (b, k, d):
            raise ObservationError(f"actions must have shape ({b}, {k}, {d}), "
                                   f"got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ObservationError("actions contain non-finite values")
        if len(instructions) != b:
            raise ObservationError(f"{len(instructions)} instructions for {b} samples")
        proprio_rows = (np.asarray(proprio, dtype=np.float64) if proprio is not None
                        else [None] * b)
        if proprio is not None and proprio_rows.shape[0] != b:
            raise ObservationError(f"proprio has {proprio_rows.shape[0]} rows for {b} samples")
        for i in range(b):
            try:
                self.check_observation(images[i], proprio_rows[i], instructions[i])
            except ObservationError as exc:
                raise ObservationError(f"sample {i}: {exc}") from None
        rng = (generator if isinstance(generator, np.random.Generator)
               else np.random.default_rng(generator))
        ids, mask = self.tokenize(instructions)
        batch = {"pixel_values": self.pixel_values(images, augment, rng), "input_ids": ids,
                 "attention_mask": mask,
                 "actions": torch.from_numpy(
                     self.action_normalizer.normalize(actions).astype(np.float32))}
        if self.config.use_proprio:
            batch["proprio"] = torch.from_numpy(
                self.proprio_normalizer.normalize(proprio_rows).astype(np.float32))
        return batch

    def unnormalize_actions(self, normalized: np.ndarray) -> np.ndarray:
        """(..., D) model output -> raw action units (float64).

        The reference formula ``0.5 (a + 1)(high - low + 1e-8) + low`` where the mask is true
        (modeling_prismatic.py:772-790), WITHOUT clipping ``a``: the L1 head's output leaves
        [-1, 1] and the reference passes it on. Limits are the executor's job (joint limits,
        step limits, with counters), not the model's."""
        return self.action_normalizer.unnormalize(np.asarray(normalized, dtype=np.float64))
