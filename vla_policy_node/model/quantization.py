"""Quantized language model through bitsandbytes (8-bit LLM.int8 or 4-bit NF4).

Every linear layer of the Llama decoder is replaced by a bitsandbytes layer (``lm_head``
stays in full precision, as transformers does); the vision towers, projector and action head
are small next to the LLM and stay unquantized. Works on CPU and CUDA.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _quantized_linear(linear: nn.Linear, mode: str, compute_dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb
    device = linear.weight.device
    weight = linear.weight.data.to(torch.float16 if device.type == "cuda" else compute_dtype)
    if mode == "8bit":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features,
                                    bias=linear.bias is not None, has_fp16_weights=False,
                                    threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False,
                                         has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features,
                                  bias=linear.bias is not None, compute_dtype=compute_dtype,
                                  quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype).cpu(), requires_grad=False)
    # Moving the parameter to its device is what quantizes it in bitsandbytes.
    return layer.to(device)


def quantize_language_model(policy: Any, mode: str) -> int:
    """Replace the LLM decoder's linear layers in place. Returns how many were replaced."""
    if mode not in ("8bit", "4bit"):
        raise ValueError(f"quantization mode must be '8bit' or '4bit', got {mode!r}")
    if getattr(policy, "quantization", "none") != "none":
        raise ValueError(f"policy is already quantized ({policy.quantization})")
    decoder = policy.model.language_model.model
    compute_dtype = policy.model.dtype
    targets = [(n, m) for n, m in decoder.named_modules() if isinstance(m, nn.Linear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        setattr(parent, child, _quantized_linear(module, mode, compute_dtype))
    policy.quantization = mode
    logger.info("quantized %d LLM linear layers to %s", len(targets), mode)
    return len(targets)
