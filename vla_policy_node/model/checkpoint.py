"""Checkpoints: our own format, and the official OpenVLA / OpenVLA-OFT layouts.

Nothing from a checkpoint is ever executed: configs are JSON, weights are safetensors or
``torch.load(..., weights_only=True)``; no ``trust_remote_code``. The key mapping between the
official (timm-named) layout and our transformers-built classes is explicit below and in
docs/model.md; loading fails with the full lists of missing and unexpected keys.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import re
from typing import Any, Mapping

import torch

from vla_policy_node.model.configuration_oft import (ALOHA_CAMERAS, LIBERO_CAMERAS,
                                                     LlamaTextConfig, OFTConfig, ViTConfig,
                                                     get_preset)
from vla_policy_node.model.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

OUR_CONFIG = "oft_config.json"
OUR_WEIGHTS = "model.safetensors"
STATISTICS = "dataset_statistics.json"
FORMAT_NAME = "vla_policy_node/oft"
# 2: the model computes what the official OpenVLA-OFT computes (issue 15: action hidden states
# from the last prompt token, exact GELU in SigLIP, the official image chain, no clipping
# before un-normalization). Weights trained under 1 learned the old computation.
FORMAT_VERSION = 2
_VERSION_CHANGES = {
    1: ("the action head read the action slots themselves (the reference reads from the last "
        "prompt token through the second-to-last slot), SigLIP used the tanh GELU, images "
        "went through OpenCV area/linear resizes instead of the official JPEG + Lanczos + "
        "crop_and_resize chain, and actions were clipped to [-1, 1] before un-normalization"),
}

DINO = "vision_backbone.featurizer."
SIGLIP = "vision_backbone.fused_featurizer."


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message says why."""


# ====================================================================== our format
def save_policy(policy: Any, directory: str | os.PathLike) -> Path:
    """Our format: oft_config.json, model.safetensors, tokenizer.json (+ids),
    dataset_statistics.json (when the policy has statistics)."""
    from safetensors.torch import save_file
    if getattr(policy, "quantization", "none") != "none":
        raise CheckpointError("cannot save a quantized policy; save before quantizing")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": policy.config.to_dict(),
            "unnorm_key": policy.processor.unnorm_key}
    state = {k: v.detach().contiguous().cpu() for k, v in policy.model.state_dict().items()}
    lora = [k for k in state if "lora_" in k]
    if lora:
        raise CheckpointError(f"merge LoRA before saving ({len(lora)} LoRA tensors present, "
                              f"e.g. {lora[0]})")
    save_file(state, str(directory / OUR_WEIGHTS), metadata={"format": FORMAT_NAME})
    policy.processor.tokenizer.save(directory)
    if policy.processor.statistics is not None:
        (directory / STATISTICS).write_text(json.dumps(policy.processor.statistics, indent=2))
    (directory / OUR_CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def _read_statistics(directory: Path) -> dict | None:
    path = directory / STATISTICS
    return json.loads(path.read_text()) if path.is_file() else None


def _check_keys(missing: list[str], unexpected: list[str], where: str) -> None:
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the model.\n"
                              f"  missing keys ({len(missing)}): {sorted(missing)}\n"
                              f"  unexpected keys ({len(unexpected)}): {sorted(unexpected)}")


def _load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str,
                optional_missing: tuple[str, ...] = ()) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(optional_missing)]
    unexpected = [k for k in state if k not in own]
    _check_keys(missing, unexpected, where)
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{where}: shape mismatches: {bad}")
    model.load_state_dict(dict(state), strict=False)


def load_checkpoint(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                    unnorm_key: str | None = None, seed: int = 0,
                    merge_official_lora: bool = False,
                    config_overrides: Mapping[str, Any] | None = None) -> Any:
    """Load our format or an official OpenVLA / OpenVLA-OFT directory (detected by files)."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if (directory / OUR_CONFIG).is_file():
        return _load_ours(directory, device, dtype, unnorm_key, seed)
    if (directory / "config.json").is_file():
        return load_official(directory, device, dtype, unnorm_key, seed, merge_official_lora,
                             config_overrides)
    raise CheckpointError(f"{directory} holds neither {OUR_CONFIG} (our format) nor "
                          "config.json (official OpenVLA layout)")


def _load_ours(directory: Path, device: str, dtype: str, unnorm_key: str | None,
               seed: int) -> Any:
    from safetensors.torch import load_file

    from vla_policy_node.model.policy import build_policy
    meta = json.loads((directory / OUR_CONFIG).read_text())
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{directory / OUR_CONFIG}: format {meta.get('format')!r} is not "
                              f"{FORMAT_NAME!r}")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise CheckpointError(
                f"{directory}: checkpoint format version {version}, this build reads version "
                f"{FORMAT_VERSION}. Since then the model changed: {_VERSION_CHANGES[version]}. "
                "Weights trained under the old computation would load but act differently, so "
                "they are refused. Retrain with vla-finetune (from the same data and base "
                "checkpoint), or, if this was a converted official checkpoint, load the "
                "official checkpoint directory itself.")
        raise CheckpointError(f"{directory}: checkpoint format version {version!r} is not "
                              f"supported (this build reads {FORMAT_VERSION}); upgrade "
                              "vla_policy_node")
    config = OFTConfig.from_dict(meta["config"])
    tokenizer = TextTokenizer.load(directory)
    stats = _read_statistics(directory)
    policy = build_policy(config, tokenizer, device, dtype, seed, stats,
                          unnorm_key or meta.get("unnorm_key"))
    state = load_file(str(directory / OUR_WEIGHTS))
    _load_state(policy.model, state, str(directory / OUR_WEIGHTS))
    return policy


# ====================================================================== official key mapping
_DINO_BLOCK = {
    "norm1": "norm1", "attn.proj": "attention.o_proj", "norm2": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "ls1.scale_factor": "layer_scale1.lambda1", "ls1.gamma": "layer_scale1.lambda1",
    "ls2.scale_factor": "layer_scale2.lambda1", "ls2.gamma": "layer_scale2.lambda1",
}
_SIGLIP_BLOCK = {
    "norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
# Official tensors our model does not use: SigLIP's attention-pooling (MAP) head; features are
# taken from the second-to-last block, so it never runs in OpenVLA either.
IGNORED_OFFICIAL = re.compile(r"^vision_backbone\.fused_featurizer\.attn_pool\.")
# Our tensors absent from official files: DINOv2's mask token (used only for masked-image
# pretraining, never at inference).
OPTIONAL_OURS = ("embeddings.mask_token",)
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias|scale_factor|gamma)$")


def _map_tower(key: str, value: torch.Tensor, dino: bool) -> list[tuple[str, torch.Tensor]]:
    """One timm tower key (without the tower prefix) -> our key(s)."""
    if dino:
        simple = {"cls_token": "embeddings.cls_token", "reg_token": "embeddings.register_tokens",
                  "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
                  "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
                  "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}
        if key == "pos_embed":
            # timm reg4 models add no position to class/register tokens (no_embed_class);
            # transformers adds row 0 to the class token: a zero row is the same computation.
            zero = torch.zeros_like(value[:, :1])
            return [("embeddings.position_embeddings", torch.cat([zero, value], 1))]
        block_map, layers, attn = _DINO_BLOCK, "encoder.layer", "attention"
    else:
        simple = {"patch_embed.proj.weight": "embeddings.patch_embedding.weight",
                  "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
                  "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
        if key == "pos_embed":
            return [("embeddings.position_embedding.weight", value[0])]
        block_map, layers, attn = _SIGLIP_BLOCK, "encoder.layers", "self_attn"
    if key in simple:
        return [(simple[key], value)]
    match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if match is None:
        raise CheckpointError(f"unknown vision key {key!r}")
    index, rest = match.groups()
    if rest in ("attn.qkv.weight", "attn.qkv.bias"):
        # timm's fused qkv -> three projections (rows: q, k, v).
        suffix = rest.rsplit(".", 1)[1]
        q, k, v = value.chunk(3, dim=0)
        return [(f"{layers}.{index}.{attn}.{n}_proj.{suffix}", t)
                for n, t in (("q", q), ("k", k), ("v", v))]
    for timm_name, ours in block_map.items():
        if rest == timm_name or rest.startswith(timm_name + "."):
            tail = rest[len(timm_name):]
            return [(f"{layers}.{index}.{ours}{tail}", value)]
    raise CheckpointError(f"unknown vision block key {key!r}")


def map_official_key(key: str, value: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One key of an official OpenVLA state dict -> our (key, tensor) pairs ([] = ignored)."""
    if IGNORED_OFFICIAL.match(key):
        return []
    for prefix, dino in ((DINO, True), (SIGLIP, False)):
        if key.startswith(prefix):
            return [(prefix + k, v) for k, v in _map_tower(key[len(prefix):], value, dino)]
    if key.startswith(("projector.", "language_model.")):
        return [(key, value)]
    raise CheckpointError(f"unknown official key {key!r}")


def map_official_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for new_key, new_value in map_official_key(key, value):
            out[new_key] = new_value
    return out


def to_official_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict (backbone, projector, LLM) -> official timm-named keys (the inverse of
    :func:`map_official_state`; FiLM and OFT components are written separately)."""
    out: dict[str, torch.Tensor] = {}
    inverse = {}
    for prefix, dino in ((DINO, True), (SIGLIP, False)):
        block_map = _DINO_BLOCK if dino else _SIGLIP_BLOCK
        layers, attn = ("encoder.layer", "attention") if dino else ("encoder.layers", "self_attn")
        for timm_name, ours in block_map.items():
            if not timm_name.endswith(".gamma"):
                inverse[(prefix, f"{ours}")] = timm_name
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            k = key[len(prefix):]
            if k.endswith(OPTIONAL_OURS):
                continue
            match = re.match(rf"^{re.escape(layers)}\.(\d+)\.(.+)\.(weight|bias|lambda1)$", k)
            if match:
                index, name, suffix = match.groups()
                if name in (f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"):
                    if name.endswith("q_proj"):
                        parts = [state[f"{prefix}{layers}.{index}.{attn}.{n}_proj.{suffix}"]
                                 for n in "qkv"]
                        out[f"{prefix}blocks.{index}.attn.qkv.{suffix}"] = torch.cat(parts, 0)
                    continue
                full = name if suffix != "lambda1" else f"{name}.lambda1"
                timm_name = inverse[(prefix, full)]
                tail = "" if suffix == "lambda1" else f".{suffix}"
                out[f"{prefix}blocks.{index}.{timm_name}{tail}"] = value
                continue
            if dino:
                proj = "embeddings.patch_embeddings.projection"
                simple = {"embeddings.cls_token": "cls_token",
                          "embeddings.register_tokens": "reg_token",
                          f"{proj}.weight": "patch_embed.proj.weight",
                          f"{proj}.bias": "patch_embed.proj.bias",
                          "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
                if k == "embeddings.position_embeddings":
                    out[prefix + "pos_embed"] = value[:, 1:]
                    continue
            else:
                simple = {"embeddings.patch_embedding.weight": "patch_embed.proj.weight",
                          "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
                          "post_layernorm.weight": "norm.weight",
                          "post_layernorm.bias": "norm.bias"}
                if k == "embeddings.position_embedding.weight":
                    out[prefix + "pos_embed"] = value[None]
                    continue
            if k not in simple:
                raise CheckpointError(f"no official name for {key!r}")
            out[prefix + simple[k]] = value
    for key, value in state.items():
        if key.startswith(("projector.", "language_model.")):
            out[key] = value
    return out


# ====================================================================== official directories
# Attention heads are the one tower size that no tensor shape carries (qkv is (3W, W) for any
# head count); timm takes them from its registry by model id. Released towers by width:
_REGISTERED_HEADS = {("dinov2_reg", 1024): 16, ("siglip", 1152): 16}
# Our own writer records them in config.json (for towers that are not the released sizes).
HEADS_HINT = "vla_policy_node_vision_heads"

_COMPONENT = re.compile(r"^(action_head|proprio_projector|vision_backbone|noisy_action_projector)"
                        r"--(.+)_checkpoint\.pt$")


def _find_components(directory: Path) -> dict[str, Path]:
    """Latest ``<name>--<step>_checkpoint.pt`` per component (``latest`` wins)."""
    found: dict[str, tuple[float, Path]] = {}
    for path in directory.iterdir():
        match = _COMPONENT.match(path.name)
        if not match:
            continue
        name, step = match.groups()
        rank = float("inf") if step == "latest" else float(step) if step.isdigit() else -1.0
        if name not in found or rank > found[name][0]:
            found[name] = (rank, path)
    return {name: path for name, (_, path) in found.items()}


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    # DDP saves prefix every key with "module.".
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _read_shards(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{directory}: no model.safetensors or "
                              "model.safetensors.index.json (only safetensors shards are read)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def _tower_kind(timm_id: str, position: int) -> str:
    name = timm_id.lower()
    if "dinov2" in name:
        return "dinov2_reg"
    if "siglip" in name:
        return "siglip"
    # Prismatic's fused backbone: featurizer = DINOv2, fused_featurizer = SigLIP.
    return ("dinov2_reg", "siglip")[position]


def _vit_from_state(state: Mapping[str, torch.Tensor], prefix: str, kind: str, timm_id: str,
                    image_size: int, heads_hint: int | None, fallback_heads: int,
                    where: str) -> ViTConfig:
    """One tower's sizes from its timm-named tensors (``prefix`` = "...featurizer.")."""
    def get(name: str) -> torch.Tensor:
        if prefix + name not in state:
            raise CheckpointError(f"{where}: no {prefix + name}; cannot size the vision tower")
        return state[prefix + name]

    patch = get("patch_embed.proj.weight")
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    depth = 1 + max((int(m.group(1)) for k in state
                     if (m := re.match(rf"^{re.escape(prefix)}blocks\.(\d+)\.", k))), default=-1)
    mlp_dim = int(get("blocks.0.mlp.fc1.weight").shape[0])
    registers = int(state[prefix + "reg_token"].shape[1]) if prefix + "reg_token" in state else 0
    heads = heads_hint or _REGISTERED_HEADS.get((kind, width))
    if heads is None:
        heads = fallback_heads if width % fallback_heads == 0 else 1
        logger.warning("%s: %s tower of width %d is not a released size and the checkpoint does "
                       "not record its attention heads; assuming %d (the language model's head "
                       "count). Override with config_overrides if that is wrong.",
                       where, kind, width, heads)
    return ViTConfig(kind=kind, width=width, depth=depth, heads=int(heads), mlp_dim=mlp_dim,
                     patch_size=patch_size, image_size=image_size, num_registers=registers,
                     timm_id=timm_id)


def official_config(directory: Path, components: Mapping[str, Path],
                    overrides: Mapping[str, Any] | None = None,
                    state: Mapping[str, torch.Tensor] | None = None) -> OFTConfig:
    """OFTConfig of an official directory, every size from config.json and the tensors.

    Towers: width, depth, MLP width, patch size, registers from the timm-named tensors (the
    FiLM file's when there is one), image size from ``image_sizes``, heads from the released
    towers' registry (not stored in any tensor). Projector widths and the Llama sizes from the
    tensors (heads from ``text_config``, LlamaConfig defaults otherwise). Action head type,
    D, hidden width and residual blocks from the head file, P from the proprio projector,
    FiLM from the backbone file. K and cameras are platform constants of the reference
    (D=14: ALOHA K=25, 3 cameras, BOUNDS; D=7: LIBERO K=8, 2 cameras, BOUNDS_Q99).
    ``overrides`` are applied last.
    """
    raw = json.loads((directory / "config.json").read_text())
    where = str(directory / "config.json")
    ids = list(raw.get("timm_model_ids") or ())
    if len(ids) != 2 or not raw.get("use_fused_vision_backbone", True):
        raise CheckpointError(f"{where}: only the fused DINOv2 + SigLIP backbone is supported, "
                              f"got timm_model_ids {ids}")
    if state is None:
        state = _read_shards(directory)
    vision = state
    if "vision_backbone" in components:
        vision = _vision_file_as_timm(_torch_load(components["vision_backbone"]))
    sizes = list(raw.get("image_sizes") or (224, 224))
    text = dict(raw.get("text_config") or {})
    heads = int(text.get("num_attention_heads", 32))
    hint = raw.get(HEADS_HINT) or (None, None)
    towers = [_vit_from_state(vision, prefix, _tower_kind(ids[i], i), ids[i], int(sizes[i]),
                              hint[i], heads, where)
              for i, prefix in enumerate((DINO, SIGLIP))]
    if towers[0].kind != "dinov2_reg" or towers[1].kind != "siglip":
        raise CheckpointError(f"{where}: expected DINOv2 then SigLIP, got timm_model_ids {ids}")
    embed = state.get("language_model.model.embed_tokens.weight")
    fc1 = state.get("projector.fc1.weight")
    if embed is None or fc1 is None:
        raise CheckpointError(f"{where}: the shards lack language_model.model.embed_tokens or "
                              "projector.fc1; not an OpenVLA model")
    hidden = int(embed.shape[1])
    layers = 1 + max(int(m.group(1)) for k in state
                     if (m := re.match(r"^language_model\.model\.layers\.(\d+)\.", k)))
    kv_rows = int(state["language_model.model.layers.0.self_attn.k_proj.weight"].shape[0])
    llm = LlamaTextConfig(
        hidden_size=hidden,
        intermediate_size=int(state["language_model.model.layers.0.mlp.gate_proj.weight"].shape[0]),
        num_layers=layers, num_heads=heads, num_kv_heads=kv_rows // (hidden // heads),
        vocab_size=int(embed.shape[0]),
        max_position_embeddings=int(text.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=float(text.get("rope_theta", 10000.0)))
    changes: dict[str, Any] = {
        "dino": towers[0], "siglip": towers[1], "llm": llm,
        "projector_hidden": int(fc1.shape[0]), "name": f"official:{directory.name}",
        **_tokenizer_fields(directory),
        "n_action_bins": int(raw.get("n_action_bins", 256))}
    if "action_head" in components:
        head = _torch_load(components["action_head"])
        diffusion = "noisy_action_projector" in components
        fc2 = head["noise_predictor.mlp_resnet.fc2.weight" if diffusion else "model.fc2.weight"]
        action_dim = int(fc2.shape[0])
        blocks = {int(m.group(1)) for k in head
                  if (m := re.search(r"mlp_resnet_blocks\.(\d+)\.", k))}
        aloha = action_dim == 14
        changes.update(action_head="diffusion" if diffusion else "l1", action_dim=action_dim,
                       head_blocks=len(blocks),
                       chunk_length=25 if aloha else 8,
                       camera_names=ALOHA_CAMERAS if aloha else LIBERO_CAMERAS,
                       normalization="bounds" if aloha else "bounds_q99")
        if not aloha:
            changes["resize_size"] = 256
        if "proprio_projector" in components:
            proprio = _torch_load(components["proprio_projector"])
            changes.update(use_proprio=True, proprio_dim=int(proprio["fc1.weight"].shape[1]))
        else:
            changes.update(use_proprio=False)
        changes["use_film"] = any(re.search(r"\.blocks\.\d+\.scale\.", k) for k in vision)
    else:  # plain OpenVLA: discrete tokens, one image, K=1
        changes.update(action_head="discrete", chunk_length=1, action_dim=7, proprio_dim=8,
                       use_proprio=False, use_film=False, camera_names=LIBERO_CAMERAS[:1],
                       normalization="bounds_q99")
    changes.update(_pixel_normalization(directory))
    base = get_preset("tiny")
    changes.update(overrides or {})
    return base.replace(**changes)


def _pixel_normalization(directory: Path) -> dict[str, Any]:
    """Per-tower mean/std as the checkpoint's image processor applies them
    (``tvf_normalize_params``, else ``means``/``stds`` of preprocessor_config.json; the
    released openvla-7b file carries bf16-rounded ImageNet values, used as they are)."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    params = raw.get("tvf_normalize_params")
    if params and len(params) == 2:
        means, stds = [p["mean"] for p in params], [p["std"] for p in params]
    elif len(raw.get("means") or ()) == 2 and len(raw.get("stds") or ()) == 2:
        means, stds = raw["means"], raw["stds"]
    else:
        return {}
    return {"dino_mean": tuple(means[0]), "dino_std": tuple(stds[0]),
            "siglip_mean": tuple(means[1]), "siglip_std": tuple(stds[1])}


def _tokenizer_fields(directory: Path) -> dict[str, Any]:
    """Llama's tokenizer has the empty word piece "▁" (29871) that OFT appends after "Out:"
    (modeling_prismatic.py:972-975); the tiny test tokenizer has none."""
    tokenizer = TextTokenizer.load(directory)
    empty = tokenizer.tokenizer.token_to_id("▁")
    return {"tokenizer_kind": "llama" if tokenizer.pad_id >= 32000 else "tiny",
            "empty_token_id": empty}


_LORA = re.compile(r"^(.+)\.(base_layer\.(weight|bias)|lora_A\.default\.weight|"
                   r"lora_B\.default\.weight)$")


def film_lora_scale(lora_a: torch.Tensor, adapter_dir: Path | None) -> float:
    """alpha / r of the vision LoRA in a FiLM file: from ``lora_adapter/adapter_config.json``
    when present, else the reference's rule alpha = min(r, 16) (finetune.py:847-854,
    openvla_utils.py:325-331) with r from the lora_A shape."""
    config = adapter_dir / "adapter_config.json" if adapter_dir is not None else None
    if config is not None and config.is_file():
        cfg = json.loads(config.read_text())
        return float(cfg["lora_alpha"]) / float(cfg["r"])
    rank = int(lora_a.shape[0])
    return min(rank, 16) / rank


def _vision_file_as_timm(state: Mapping[str, torch.Tensor],
                         adapter_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """OFT's ``vision_backbone--*.pt`` -> plain timm names under ``vision_backbone.``.

    The file is the state dict of the FiLM-wrapped, LoRA-wrapped backbone
    (finetune.py:644): ``vision_backbone.<tower>.blocks.N.block.<timm>`` with peft's
    ``base_layer`` / ``lora_A.default`` / ``lora_B.default`` for every linear (and the patch
    convolution), FiLM ``blocks.N.scale|shift``. The reference keeps the LoRA layers active
    at inference (openvla_utils.py:332-347); folding ``W + (alpha/r) B A`` computes the same.
    FiLM keys come back as ``vision_backbone.<tower>.blocks.N.scale|shift.*``.
    """
    plain: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith("vision_backbone."):
            key = "vision_backbone." + key    # files written without the wrapper's prefix
        key = re.sub(r"\.blocks\.(\d+)\.block\.", r".blocks.\1.", key)
        match = _LORA.match(key)
        if match is None:
            plain[key] = value
            continue
        layer, part = match.group(1), match.group(2)
        lora.setdefault(layer, {})[part] = value
    for layer, parts in lora.items():
        if "base_layer.weight" not in parts:
            raise CheckpointError(f"vision_backbone file: {layer} has LoRA tensors but no "
                                  "base_layer.weight")
        weight = parts["base_layer.weight"]
        if "lora_A.default.weight" in parts and "lora_B.default.weight" in parts:
            a, b = parts["lora_A.default.weight"].float(), parts["lora_B.default.weight"].float()
            scale = film_lora_scale(a, adapter_dir)
            # Linear: B (out, r) @ A (r, in); conv: A (r, C, k, k), B (out, r, 1, 1).
            delta = (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)).reshape(weight.shape)
            weight = weight.float() + scale * delta
        plain[layer + ".weight"] = weight
        if "base_layer.bias" in parts:
            plain[layer + ".bias"] = parts["base_layer.bias"]
    return plain


def _film_backbone_state(state: Mapping[str, torch.Tensor],
                         adapter_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """OFT's vision_backbone--*.pt -> our keys (LoRA folded, FiLM layers mapped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in _vision_file_as_timm(state, adapter_dir).items():
        match = re.match(r"^vision_backbone\.(featurizer|fused_featurizer)\.blocks\.(\d+)\."
                         r"(scale|shift)\.(weight|bias)$", key)
        if match:
            tower, index, which, suffix = match.groups()
            out[f"vision_backbone.{tower}_film.{index}.{which}.{suffix}"] = value
            continue
        if not key.startswith((DINO, SIGLIP)):
            raise CheckpointError(f"unknown vision_backbone key {key!r}")
        for k, v in map_official_key(key, value):
            out[k] = v
    return out


def load_official(directory: Path, device: str = "cpu", dtype: str = "float32",
                  unnorm_key: str | None = None, seed: int = 0,
                  merge_official_lora: bool = False,
                  config_overrides: Mapping[str, Any] | None = None) -> Any:
    """An official OpenVLA (HF) or OpenVLA-OFT checkpoint directory."""
    from vla_policy_node.model.policy import build_policy
    components = _find_components(directory)
    shards = _read_shards(directory)
    config = official_config(directory, components, config_overrides, shards)
    tokenizer = TextTokenizer.load(directory)
    stats = _read_statistics(directory)
    if stats is None:
        stats = json.loads((directory / "config.json").read_text()).get("norm_stats")
    policy = build_policy(config, tokenizer, device, dtype, seed, stats, unnorm_key)
    model = policy.model
    state = map_official_state(shards)
    if "vision_backbone" in components:
        # The reference takes the whole backbone from this file (openvla_utils.py:341-343).
        adapter = directory / "lora_adapter"
        state.update(_film_backbone_state(_torch_load(components["vision_backbone"]),
                                          adapter if adapter.is_dir() else None))
    for name in ("action_head", "proprio_projector", "noisy_action_projector"):
        if name in components and getattr(model, name) is not None:
            state.update({f"{name}.{k}": v for k, v in _torch_load(components[name]).items()})
    _load_state(model, state, str(directory), optional_missing=OPTIONAL_OURS)
    adapter = directory / "lora_adapter"
    if adapter.is_dir():
        if merge_official_lora:
            merge_official_adapter(model, adapter)
        else:
            logger.info("%s: lora_adapter/ not merged (OFT exports merged shards); pass "
                        "merge_official_lora=True if the shards are the base model", directory)
    return policy


def merge_official_adapter(model: torch.nn.Module, adapter_dir: Path) -> int:
    """Merge a peft LoRA adapter saved on the official model (timm names) into our weights:
    W += (alpha / r) * B @ A, with fused-qkv deltas split like the weights. Returns the
    number of merged layers."""
    from safetensors.torch import load_file
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    weights_file = adapter_dir / "adapter_model.safetensors"
    if weights_file.is_file():
        state = load_file(str(weights_file))
    else:
        state = _torch_load(adapter_dir / "adapter_model.bin")
    own = model.state_dict()
    merged = skipped = 0
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        if re.search(r"\.blocks\.\d+\.block\.", key):
            # Saved on the FiLM-wrapped backbone: these names match nothing in the base model,
            # so the reference's merge (finetune.py:654-661) leaves them out; the FiLM file
            # carries the vision LoRA instead.
            skipped += 1
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        base = key.split(".lora_A.")[0]
        base = re.sub(r"^base_model\.model\.", "", base) + ".weight"
        delta = (b.float() @ a.float()) * scale
        for our_key, our_delta in map_official_key(base, delta):
            if our_key not in own:
                raise CheckpointError(f"adapter key {key} maps to unknown weight {our_key}")
            param = own[our_key]
            param.copy_((param.float() + our_delta.to(param.device)).to(param.dtype))
        merged += 1
    logger.info("merged %d LoRA layers from %s (%d FiLM-wrapped vision layers left to the "
                "vision_backbone file)", merged, adapter_dir, skipped)
    return merged


def save_official_layout(policy: Any, directory: str | os.PathLike, step: int = 0,
                         max_shard_bytes: int | None = None) -> Path:
    """Write ``policy`` the way OpenVLA / OpenVLA-OFT lay out a checkpoint (see docs/model.md):
    config.json (timm_model_ids, text_config), safetensors shards + index with timm names,
    tokenizer.json, dataset_statistics.json, and DDP ``module.``-prefixed component files.
    Used to test the official loaders without downloading anything."""
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, model = policy.config, policy.model
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    main = to_official_state(state)
    llm = config.llm
    raw = {"architectures": ["OpenVLAForActionPrediction"], "model_type": "openvla",
           "timm_model_ids": [config.dino.timm_id, config.siglip.timm_id],
           "image_sizes": [config.image_size, config.image_size],
           "use_fused_vision_backbone": True, "n_action_bins": config.n_action_bins,
           HEADS_HINT: [config.dino.heads, config.siglip.heads],
           "pad_token_id": policy.tokenizer.pad_id,
           "text_config": {"model_type": "llama", "hidden_size": llm.hidden_size,
                           "intermediate_size": llm.intermediate_size,
                           "num_hidden_layers": llm.num_layers,
                           "num_attention_heads": llm.num_heads,
                           "num_key_value_heads": llm.num_kv_heads,
                           "vocab_size": llm.vocab_size,
                           "max_position_embeddings": llm.max_position_embeddings,
                           "rms_norm_eps": llm.rms_norm_eps, "rope_theta": llm.rope_theta}}
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    if max_shard_bytes is None:
        save_file(main, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for key, value in main.items():
            nbytes = value.numel() * value.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = value
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    policy.tokenizer.tokenizer.save(str(directory / "tokenizer.json"))
    if policy.processor.statistics is not None:
        (directory / STATISTICS).write_text(json.dumps(policy.processor.statistics, indent=2))

    def component(name: str, sub: Mapping[str, torch.Tensor]) -> None:
        torch.save({f"module.{k}": v for k, v in sub.items()},
                   directory / f"{name}--{step}_checkpoint.pt")

    for name in ("action_head", "proprio_projector", "noisy_action_projector"):
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            component(name, sub)
    if config.use_film:
        film: dict[str, torch.Tensor] = {}
        for key, value in main.items():
            if key.startswith("vision_backbone."):
                film[re.sub(r"\.blocks\.(\d+)\.", r".blocks.\1.block.", key)] = value
        for key, value in state.items():
            match = re.match(r"^vision_backbone\.(featurizer|fused_featurizer)_film\.(\d+)\.(.+)$",
                             key)
            if match:
                film[f"vision_backbone.{match.group(1)}.blocks.{match.group(2)}."
                     f"{match.group(3)}"] = value
        component("vision_backbone", film)
    return directory
