"""LoRA through peft, following the OFT recipe.

LoRA (rank 32, alpha 16, dropout 0, gaussian init) on every linear layer of the vision towers,
the projector and the language model except ``lm_head``; the action head, proprio projector,
noisy-action projector and FiLM layers are trained fully; everything else is frozen.
Adapters are injected in place (``peft.inject_adapter_in_model``), so ``policy.model`` keeps
its class and API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Modules trained fully in the OFT recipe (prefixes of parameter names).
FULLY_TRAINED = ("action_head.", "proprio_projector.", "noisy_action_projector.",
                 "vision_backbone.featurizer_film.", "vision_backbone.fused_featurizer_film.")
_LORA_ROOTS = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.",
               "projector.", "language_model.")


def lora_target_modules(model: nn.Module) -> list[str]:
    """Full names of the linear layers that get LoRA (all but lm_head, heads and FiLM)."""
    names = []
    for name, module in model.named_modules():
        if not name.startswith(_LORA_ROOTS) or name.endswith("lm_head"):
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ in ("Linear8bitLt",
                                                                       "Linear4bit"):
            names.append(name)
    return names


def _lora_layers(model: nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def apply_lora(policy: Any, rank: int = 32, alpha: int = 16, dropout: float = 0.0) -> int:
    """Inject LoRA adapters and set requires_grad per the OFT recipe.

    Returns the number of trainable parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model
    if rank <= 0 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"bad LoRA settings: rank {rank}, alpha {alpha}, dropout {dropout}")
    model = policy.model
    if _lora_layers(model):
        raise ValueError("LoRA is already applied to this policy")
    targets = lora_target_modules(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=targets, init_lora_weights="gaussian", bias="none")
    inject_adapter_in_model(config, model)
    trainable = 0
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or name.startswith(FULLY_TRAINED)
        trainable += param.numel() if param.requires_grad else 0
    policy.lora_applied = True
    logger.info("LoRA r=%d alpha=%d on %d layers; %d trainable parameters", rank, alpha,
                len(targets), trainable)
    return trainable


def merge_lora(policy: Any, unload: bool = True) -> int:
    """Fold the adapters into the base weights. With ``unload`` the LoRA layers are replaced
    by their (merged) base layers, leaving a plain model that saves in our format.
    Returns the number of merged layers."""
    model = policy.model
    layers = _lora_layers(model)
    for name, layer in layers:
        if not layer.merged:
            layer.merge()
        if unload:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
    if unload:
        policy.lora_applied = False
    return len(layers)


def unmerge_lora(policy: Any) -> int:
    """Undo :func:`merge_lora` (``unload=False``): subtract the adapters again."""
    layers = _lora_layers(policy.model)
    for _, layer in layers:
        if layer.merged:
            layer.unmerge()
    return len(layers)


@contextmanager
def lora_merged(policy: Any) -> Iterator[int]:
    """Within the block, ``policy`` is the merged, unloaded model that :func:`merge_lora`
    makes (it saves in our format); afterwards its adapters are back and every weight is
    bit-identical to before. Yields the number of merged layers.

    Merging works in place, on the training device: the only extra memory is a CPU copy of
    the base weights of the adapted layers. A merge followed by an unmerge is not exact in
    floating point (``(W + BA) - BA`` rounds, badly so in bf16), so the base weights are
    restored from that copy rather than recomputed."""
    model = policy.model
    layers = _lora_layers(model)
    applied = getattr(policy, "lora_applied", False)
    saved = []
    try:
        for name, layer in layers:
            base = layer.get_base_layer()
            bias = getattr(base, "bias", None)
            saved.append((name, layer, base.weight.detach().to("cpu", copy=True),
                          None if bias is None else bias.detach().to("cpu", copy=True)))
            if not layer.merged:
                layer.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, base)
        policy.lora_applied = False
        yield len(layers)
    finally:
        for name, layer, weight, bias in saved:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer)
            if layer.merged:
                layer.unmerge()  # peft's bookkeeping; the values come from the copy
            base = layer.get_base_layer()
            with torch.no_grad():
                base.weight.copy_(weight)
                if bias is not None:
                    base.bias.copy_(bias)
        policy.lora_applied = applied
