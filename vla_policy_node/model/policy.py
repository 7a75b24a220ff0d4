"""The one inference API: :class:`VLAPolicy` and :func:`load_policy`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
import logging
import os
from pathlib import Path
import time
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from vla_policy_node.model.family import PolicyBase
from vla_policy_node.model.configuration_oft import QUANTIZATIONS, OFTConfig, get_preset
from vla_policy_node.model.modeling_oft import OFTModel
from vla_policy_node.model.processor import ObservationError, OFTProcessor
from vla_policy_node.model.tokenizer import TextTokenizer, build_tiny_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class InferenceResult:
    """actions: (K, D) float64 un-normalized; timings: seconds ("preprocess", "model",
    "postprocess", "total")."""

    actions: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@contextlib.contextmanager
def build_context(device: str | torch.device, dtype: torch.dtype,
                  seed: int) -> Iterator[None]:
    """Construct modules directly on ``device`` in ``dtype`` with a private RNG seed
    (a 7B model on a GPU never touches CPU memory)."""
    previous = torch.get_default_dtype()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                yield
        finally:
            torch.set_default_dtype(previous)


class VLAPolicy(PolicyBase):
    """An OFT model with its processor: observations in, un-normalized action chunks out.

    Attributes:
        model: the :class:`OFTModel` (``torch.nn.Module``).
        processor: the :class:`OFTProcessor` (images, prompt, normalization).
        config: the :class:`OFTConfig`.
    """

    family = "oft"

    def __init__(self, model: OFTModel, processor: OFTProcessor, seed: int = 0) -> None:
        self.model = model
        self.processor = processor
        self.config: OFTConfig = model.config
        self.quantization = "none"
        self.lora_applied = False
        # Diffusion sampling noise comes from a private generator: reproducible per policy.
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(seed)
        self.model.eval()

    # ------------------------------------------------------------------ description
    @property
    def tokenizer(self) -> TextTokenizer:
        return self.processor.tokenizer

    # ------------------------------------------------------------------ inference
    def infer(self, images: Mapping[str, np.ndarray], proprio: np.ndarray | None,
              instruction: str) -> InferenceResult:
        """One observation -> (K, D) un-normalized chunk.

        Raises:
            ObservationError: missing camera, bad image shape/dtype, bad or non-finite proprio,
                empty instruction (the message names the problem).
        """
        return self.infer_batch([(images, proprio, instruction)])[0]

    def infer_batch(self, observations: Sequence[tuple[Mapping[str, np.ndarray],
                                                       np.ndarray | None, str]]
                    ) -> list[InferenceResult]:
        """Several observations in one forward pass; timings are per batch."""
        t0 = time.perf_counter()
        batch = self.processor.build_inference_batch(list(observations))
        t1 = time.perf_counter()
        with torch.inference_mode():
            normalized = self.model.predict_actions(batch, generator=self._generator)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        raw = normalized.cpu().numpy().astype(np.float64)
        if not np.all(np.isfinite(raw)):
            # Never hand a NaN chunk to a robot.
            raise FloatingPointError("the model produced non-finite actions")
        actions = self.processor.unnormalize_actions(raw)
        t3 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2,
                   "total": t3 - t0}
        return [InferenceResult(actions=a, timings=dict(timings)) for a in actions]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write our checkpoint format (see docs/model.md); ``load_policy(dir)`` restores it."""
        from vla_policy_node.model.checkpoint import save_policy
        return save_policy(self, directory)


def build_policy(config: OFTConfig, tokenizer: TextTokenizer | None = None,
                 device: str = "cpu", dtype: str | torch.dtype = "float32",
                 seed: int = 0, statistics: Mapping[str, Any] | None = None,
                 unnorm_key: str | None = None) -> VLAPolicy:
    """A policy with freshly initialized (random, seeded) weights."""
    torch_dtype = parse_dtype(dtype)
    if tokenizer is None:
        if config.tokenizer_kind != "tiny":
            raise ValueError(f"preset {config.name!r} uses the Llama tokenizer: load it from a "
                             "checkpoint directory (tokenizer.json)")
        tokenizer = build_tiny_tokenizer(n_action_tokens=config.n_action_bins)
    if tokenizer.pad_id >= config.llm.vocab_size:
        raise ValueError(f"tokenizer pad id {tokenizer.pad_id} >= model vocab "
                         f"{config.llm.vocab_size}")
    with build_context(device, torch_dtype, seed):
        model = OFTModel(config, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    processor = OFTProcessor(config, tokenizer, statistics, unnorm_key)
    return VLAPolicy(model, processor, seed)


def _llama_tokenizer_stub(config: OFTConfig) -> TextTokenizer:
    """A Llama-sized stand-in tokenizer for random-weight 7B benchmarks (no checkpoint):
    the tiny BPE with Llama's special ids; token ids only matter for shapes there."""
    tiny = build_tiny_tokenizer(n_action_tokens=config.n_action_bins)
    return TextTokenizer(tiny.tokenizer, tiny.bos_id, tiny.eos_id, 32000)


def load_policy(checkpoint: str | os.PathLike | None = None, preset: str = "tiny",
                device: str = "cpu", dtype: str = "float32", quantization: str = "none",
                unnorm_key: str | None = None, seed: int = 0,
                merge_official_lora: bool = False, family: str = "auto") -> Any:
    """A checkpoint directory (ours or an official OpenVLA / OpenVLA-OFT one), or ``preset``
    with random weights when ``checkpoint`` is empty.

    Args:
        quantization: "none", "8bit" or "4bit" (nf4) for the language model (bitsandbytes).
        unnorm_key: dataset key of dataset_statistics.json (default: the only one).
        merge_official_lora: official directories only: merge ``lora_adapter/`` into the base
            weights (use when the shards are the base model, not OFT's merged export).
        family: "auto" (from the checkpoint or preset), "oft" or "roboflamingo" (then a
            RoboFlamingoPolicy is returned; see model/family.py).
    """
    from vla_policy_node.model.family import resolve_family
    if resolve_family(checkpoint, preset, family) == "roboflamingo":
        if quantization != "none":
            raise ValueError("quantization is not supported by the RoboFlamingo family")
        from vla_policy_node.model.roboflamingo import load_roboflamingo
        return load_roboflamingo(checkpoint, preset, device, dtype, unnorm_key, seed)
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    parse_dtype(dtype)
    if checkpoint:
        from vla_policy_node.model.checkpoint import load_checkpoint
        policy = load_checkpoint(checkpoint, device=device, dtype=dtype, unnorm_key=unnorm_key,
                                 seed=seed, merge_official_lora=merge_official_lora)
    else:
        config = get_preset(preset)
        tokenizer = _llama_tokenizer_stub(config) if config.tokenizer_kind == "llama" else None
        policy = build_policy(config, tokenizer, device, dtype, seed)
        logger.info("preset %s with random weights and identity normalization", preset)
    if quantization != "none":
        from vla_policy_node.model.quantization import quantize_language_model
        quantize_language_model(policy, quantization)
    if unnorm_key and policy.processor.statistics is None:
        raise ValueError(f"unnorm_key {unnorm_key!r} given but the policy has no statistics")
    return policy


__all__ = ["InferenceResult", "ObservationError", "VLAPolicy", "build_policy", "load_policy"]
