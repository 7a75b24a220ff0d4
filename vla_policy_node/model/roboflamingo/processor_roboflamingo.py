"""The RoboFlamingo processor: CLIP images, the prompt, and action (un)normalization.

- Images (uint8 H x W x 3 RGB per camera): shorter side resized to ``image_size`` (bicubic),
  centre crop, then the OpenAI CLIP mean/std (open_clip's val transform). Training adds the
  release's DrQ shift: per frame and camera, a replicate-padded copy shifted by an integer in
  [1, 2p] on each axis, applied to the normalized tensor (data.py:167-194).
- Prompt: ``<image>{instruction}<|endofchunk|><|endoftext|>``, no BOS, at most
  ``max_text_tokens`` tokens, right-padded with ``<PAD>``.
- Actions: continuous dims to [-1, 1] with the shared dataset statistics (``none``: they are
  already there, as CALVIN's rel_actions); binary gripper dims are labels (raw > 0 = open).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vla_policy_node.model.processor import Normalizer, ObservationError, select_statistics
from vla_policy_node.model.roboflamingo.configuration_roboflamingo import RoboFlamingoConfig

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
IDS_FILE = "flamingo_tokenizer_ids.json"
# Added by OpenFlamingo / RoboFlamingo to the GPT-NeoX tokenizer, in this order
# (additional_special_tokens, then the pad token): ids 50277, 50278, 50279 there.
SPECIAL = ("<|endofchunk|>", "<image>", "<PAD>")
RESERVED = ("<image>", "<|endofchunk|>", "<|endoftext|>", "<PAD>")


class FlamingoTokenizer:
    """A ``tokenizers.Tokenizer`` (GPT-NeoX's tokenizer.json, or a tiny one built in code) with
    OpenFlamingo's special tokens."""

    def __init__(self, tokenizer: Any) -> None:
        missing = [t for t in SPECIAL if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        if tokenizer.token_to_id("<|endoftext|>") is None:
            raise ValueError("tokenizer has no <|endoftext|> token (not a GPT-NeoX tokenizer)")
        self.tokenizer = tokenizer
        self.media_id = tokenizer.token_to_id("<image>")
        self.eoc_id = tokenizer.token_to_id("<|endofchunk|>")
        self.eos_id = tokenizer.token_to_id("<|endoftext|>")
        self.pad_id = tokenizer.token_to_id("<PAD>")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # Added tokens (<image>, <|endofchunk|>, <|endoftext|>) are matched inside the text.
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        (directory / IDS_FILE).write_text(json.dumps(
            {"media_id": self.media_id, "eoc_id": self.eoc_id, "eos_id": self.eos_id,
             "pad_id": self.pad_id}, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FlamingoTokenizer":
        from tokenizers import Tokenizer
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory} (the language "
                                    "model's fast tokenizer file is needed)")
        return cls(Tokenizer.from_file(str(path)))


def build_tiny_flamingo_tokenizer() -> FlamingoTokenizer:
    """The tiny BPE of the OFT presets plus <|endoftext|> and OpenFlamingo's tokens."""
    from vla_policy_node.model.tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer(n_action_tokens=0).tokenizer
    tok.add_special_tokens(["<|endoftext|>"])
    return FlamingoTokenizer(tok)


def check_images(images: Any, camera_names: Sequence[str]) -> None:
    """Raise ObservationError naming the first bad camera image."""
    if not isinstance(images, Mapping):
        raise ObservationError(f"images must be a mapping camera name -> array, got "
                               f"{type(images).__name__}")
    missing = [c for c in camera_names if c not in images]
    if missing:
        raise ObservationError(f"missing camera image(s) {missing}; the model needs "
                               f"{list(camera_names)}, got {sorted(images)}")
    for name in camera_names:
        image = images[name]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ObservationError(f"camera {name!r}: expected a uint8 numpy array, got "
                                   f"{getattr(image, 'dtype', type(image).__name__)}")
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
            raise ObservationError(f"camera {name!r}: expected an HxWx3 image, got shape "
                                   f"{image.shape}")


def check_instruction(instruction: Any) -> str:
    if not isinstance(instruction, str) or not instruction.strip():
        raise ObservationError(f"instruction must be a non-empty string, got {instruction!r}")
    bad = [t for t in RESERVED if t in instruction]
    if bad:
        # They would move the image position or end the prompt early.
        raise ObservationError(f"instruction contains reserved tokens {bad}")
    return instruction.strip()


class RoboFlamingoProcessor:
    """Observations -> model tensors; model outputs -> raw actions."""

    def __init__(self, config: RoboFlamingoConfig, tokenizer: FlamingoTokenizer,
                 statistics: Mapping[str, Any] | None = None,
                 unnorm_key: str | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self._mean = np.array(config.clip_mean, dtype=np.float32)
        self._std = np.array(config.clip_std, dtype=np.float32)
        self._cont = np.array(config.continuous_dims, dtype=np.int64)
        self._bin = np.array(config.binary_gripper_dims, dtype=np.int64)
        self.statistics: dict[str, Any] | None = None
        self.unnorm_key: str | None = None
        self.action_normalizer = self._identity()
        if statistics is not None:
            self.set_statistics(statistics, unnorm_key)

    def _identity(self) -> Normalizer:
        mask = np.ones(self.config.action_dim, dtype=bool)
        mask[self._bin] = False
        return Normalizer(-np.ones(self.config.action_dim), np.ones(self.config.action_dim),
                          mask, "action")

    # ------------------------------------------------------------------ statistics
    def set_statistics(self, stats: Mapping[str, Any], unnorm_key: str | None = None) -> None:
        """dataset_statistics.json content; with normalization ``none`` it is only kept."""
        key, entry = select_statistics(stats, unnorm_key)
        if "action" not in entry:
            raise ValueError(f"statistics entry {key!r} has no 'action'")
        normalizer = self._identity()
        if self.config.normalization != "none":
            normalizer = Normalizer.from_statistics(entry["action"], self.config.normalization,
                                                    "action")
            if normalizer.dim != self.config.action_dim:
                raise ValueError(f"action statistics have {normalizer.dim} dims, model "
                                 f"action_dim is {self.config.action_dim}")
            normalizer.mask = normalizer.mask.copy()
            normalizer.mask[self._bin] = False
        self.action_normalizer = normalizer
        self.statistics = dict(stats) if "action" not in stats else {key: entry}
        self.unnorm_key = key

    # ------------------------------------------------------------------ text
    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) long, attention_mask (B, T) bool; right-padded with <PAD>."""
        rows = []
        for text in instructions:
            prompt = self.config.prompt_template.format(instruction=check_instruction(text))
            rows.append(self.tokenizer.encode(prompt)[:self.config.max_text_tokens])
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        return ids, mask

    # ------------------------------------------------------------------ images
    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, S, S): shorter side to S (bicubic), centre crop,
        CLIP normalization. (open_clip uses PIL's bicubic; cv2's differs by a few levels.)"""
        size = self.config.vision.image_size
        h, w = image.shape[:2]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_CUBIC)
        top, left = (nh - size) // 2, (nw - size) // 2
        image = image[top:top + size, left:left + size]
        pixels = image.astype(np.float32) / 255.0
        return ((pixels - self._mean) / self._std).transpose(2, 0, 1)

    def pixel_values(self, frames: Sequence[Mapping[str, np.ndarray]]) -> torch.Tensor:
        """frames: camera dicts -> (N, C, 3, S, S) in model camera order."""
        return torch.from_numpy(np.stack([np.stack([self.preprocess_image(f[c])
                                                    for c in self.config.camera_names])
                                          for f in frames]))

    def shift_augment(self, pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(N, C, 3, S, S) normalized -> the same, each frame and camera shifted by its own
        integer offset in [1, 2p] per axis over a replicate-padded copy (p scaled from 224)."""
        size = pixels.shape[-1]
        out = pixels.clone()
        for c, pad224 in enumerate(self.config.shift_pad):
            pad = int(round(pad224 * size / 224))
            if pad == 0:
                continue
            padded = F.pad(pixels[:, c], (pad, pad, pad, pad), mode="replicate")
            offsets = rng.integers(1, 2 * pad + 1, size=(pixels.shape[0], 2))
            for n, (dy, dx) in enumerate(offsets):
                out[n, c] = padded[n, :, dy:dy + size, dx:dx + size]
        return out

    # ------------------------------------------------------------------ batches
    def inference_inputs(self, images: Mapping[str, np.ndarray], instruction: str
                         ) -> dict[str, torch.Tensor]:
        """One frame: pixel_values (1, C, 3, S, S), input_ids/attention_mask (1, T)."""
        check_images(images, self.config.camera_names)
        ids, mask = self.tokenize([instruction])
        return {"pixel_values": self.pixel_values([images]), "input_ids": ids,
                "attention_mask": mask}

    def build_training_batch(self, windows: Sequence[Sequence[Mapping[str, np.ndarray]]],
                             proprio: Any, actions: np.ndarray, instructions: Sequence[str],
                             augment: bool = True,
                             generator: np.random.Generator | int | None = None
                             ) -> dict[str, torch.Tensor]:
        """B windows of W frames (camera dicts), proprio (ignored, as released), actions
        (B, W, K, D) raw, B instructions ->
        pixel_values (B, W, C, 3, S, S), input_ids/attention_mask (B, T), actions
        (B, W, K, Dc) normalized, gripper_labels (B, W, K, Nb) in {0, 1}."""
        cfg = self.config
        b, w, k = len(windows), cfg.window, cfg.chunk_length
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (b, w, k, cfg.action_dim):
            raise ObservationError(f"actions must have shape ({b}, {w}, {k}, {cfg.action_dim})"
                                   f", got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ObservationError("actions contain non-finite values")
        if len(instructions) != b or any(len(win) != w for win in windows):
            raise ObservationError(f"need {b} instructions and {w} frames per window")
        frames = [frame for win in windows for frame in win]
        for i, frame in enumerate(frames):
            try:
                check_images(frame, cfg.camera_names)
            except ObservationError as exc:
                raise ObservationError(f"window {i // w} frame {i % w}: {exc}") from None
        pixels = self.pixel_values(frames)
        if augment:
            rng = (generator if isinstance(generator, np.random.Generator)
                   else np.random.default_rng(generator))
            pixels = self.shift_augment(pixels, rng)
        ids, mask = self.tokenize(instructions)
        normalized = self.action_normalizer.normalize(actions)
        return {"pixel_values": pixels.view(b, w, *pixels.shape[1:]), "input_ids": ids,
                "attention_mask": mask,
                "actions": torch.from_numpy(normalized[..., self._cont].astype(np.float32)),
                "gripper_labels": torch.from_numpy(
                    (actions[..., self._bin] > 0).astype(np.float32))}

    def assemble_actions(self, cont: np.ndarray, grip_prob: np.ndarray) -> np.ndarray:
        """continuous (K, Dc) in [-1, 1], gripper probabilities (K, Nb) -> raw (K, D) float64:
        binary dims are +1 (open) when p > 0.5 else -1, as the release's eval does."""
        out = np.zeros((cont.shape[0], self.config.action_dim), dtype=np.float64)
        out[:, self._cont] = np.clip(cont, -1.0, 1.0)
        out[:, self._bin] = np.where(grip_prob > 0.5, 1.0, -1.0)
        return self.action_normalizer.unnormalize(out)
