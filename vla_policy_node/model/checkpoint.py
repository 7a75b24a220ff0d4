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
                                                     LlamaTextConfig, OFTConfig, get_preset)
from vla_policy_node.model.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

OUR_CONFIG = "oft_config.json"
OUR_WEIGHTS = "model.safetensors"
STATISTICS = "dataset_statistics.json"
FORMAT_NAME = "vla_policy_node/oft"

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
    meta = {"format": FORMAT_NAME, "version": 1, "config": policy.config.to_dict(),
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
_TOWERS_BY_TIMM_ID = {}
for _preset_name in ("openvla-7b", "tiny"):
    _cfg = get_preset(_preset_name)
    _TOWERS_BY_TIMM_ID[(_cfg.dino.timm_id, _cfg.siglip.timm_id)] = _preset_name

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


def official_config(directory: Path, components: Mapping[str, Path],
                    overrides: Mapping[str, Any] | None = None) -> OFTConfig:
    """OFTConfig of an official directory: backbone from ``timm_model_ids``, Llama from
    ``text_config`` (transformers' LlamaConfig defaults = Llama-2-7B, as OpenVLA relies on),
    OFT sizes from the component files, platform defaults by action dim (14: ALOHA K=25,
    3 cameras; 7: LIBERO K=8, 2 cameras), then ``overrides``."""
    raw = json.loads((directory / "config.json").read_text())
    ids = tuple(raw.get("timm_model_ids") or ())
    if ids not in _TOWERS_BY_TIMM_ID:
        raise CheckpointError(f"{directory}/config.json: unsupported timm_model_ids {list(ids)}; "
                              f"known: {[list(k) for k in _TOWERS_BY_TIMM_ID]}")
    base = get_preset(_TOWERS_BY_TIMM_ID[ids])
    text = dict(raw.get("text_config") or {})
    heads = int(text.get("num_attention_heads", 32))
    llm = LlamaTextConfig(
        hidden_size=int(text.get("hidden_size", 4096)),
        intermediate_size=int(text.get("intermediate_size", 11008)),
        num_layers=int(text.get("num_hidden_layers", 32)), num_heads=heads,
        num_kv_heads=int(text.get("num_key_value_heads") or heads),
        vocab_size=int(text.get("vocab_size", 32064)),
        max_position_embeddings=int(text.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=float(text.get("rope_theta", 10000.0)))
    changes: dict[str, Any] = {"llm": llm, "name": f"official:{directory.name}",
                               "tokenizer_kind": base.tokenizer_kind,
                               "empty_token_id": base.empty_token_id,
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
                       head_blocks=len(blocks) or 2,
                       chunk_length=25 if aloha else 8,
                       camera_names=ALOHA_CAMERAS if aloha else LIBERO_CAMERAS,
                       normalization="bounds" if aloha else "bounds_q99")
        if "proprio_projector" in components:
            proprio = _torch_load(components["proprio_projector"])
            changes.update(use_proprio=True, proprio_dim=int(proprio["fc1.weight"].shape[1]))
        else:
            changes.update(use_proprio=False)
        film = False
        if "vision_backbone" in components:
            film = any(".scale." in k for k in _torch_load(components["vision_backbone"]))
        changes["use_film"] = film
    else:  # plain OpenVLA: discrete tokens, one image, K=1
        changes.update(action_head="discrete", chunk_length=1, action_dim=7, proprio_dim=8,
                       use_proprio=False, use_film=False, camera_names=LIBERO_CAMERAS[:1],
                       normalization="bounds_q99")
    changes.update(overrides or {})
    return base.replace(**changes)


def _film_backbone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OFT's vision_backbone--*.pt (FiLM-wrapped timm blocks) -> our keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tower, _, rest = key.partition(".")
        if tower not in ("featurizer", "fused_featurizer"):
            raise CheckpointError(f"unknown vision_backbone key {key!r}")
        match = re.match(r"^blocks\.(\d+)\.(scale|shift)\.(weight|bias)$", rest)
        if match:
            index, which, suffix = match.groups()
            out[f"vision_backbone.{tower}_film.{index}.{which}.{suffix}"] = value
            continue
        rest = re.sub(r"^blocks\.(\d+)\.block\.", r"blocks.\1.", rest)
        for k, v in map_official_key(f"vision_backbone.{tower}.{rest}", value):
            out[k] = v
    return out


def load_official(directory: Path, device: str = "cpu", dtype: str = "float32",
                  unnorm_key: str | None = None, seed: int = 0,
                  merge_official_lora: bool = False,
                  config_overrides: Mapping[str, Any] | None = None) -> Any:
    """An official OpenVLA (HF) or OpenVLA-OFT checkpoint directory."""
    from vla_policy_node.model.policy import build_policy
    components = _find_components(directory)
    config = official_config(directory, components, config_overrides)
    tokenizer = TextTokenizer.load(directory)
    stats = _read_statistics(directory)
    if stats is None:
        stats = json.loads((directory / "config.json").read_text()).get("norm_stats")
    policy = build_policy(config, tokenizer, device, dtype, seed, stats, unnorm_key)
    model = policy.model
    state = map_official_state(_read_shards(directory))
    if config.use_film:
        state.update(_film_backbone_state(_torch_load(components["vision_backbone"])))
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
    merged = 0
    for key, a in state.items():
        if ".lora_A." not in key:
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
    logger.info("merged %d LoRA layers from %s", merged, adapter_dir)
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
                k = re.sub(r"^(featurizer|fused_featurizer)\.blocks\.(\d+)\.",
                           r"\1.blocks.\2.block.", key[len("vision_backbone."):])
                film[k] = value
        for key, value in state.items():
            match = re.match(r"^vision_backbone\.(featurizer|fused_featurizer)_film\.(\d+)\.(.+)$",
                             key)
            if match:
                film[f"{match.group(1)}.blocks.{match.group(2)}.{match.group(3)}"] = value
        component("vision_backbone", film)
    return directory
