"""RoboFlamingo checkpoints: our format, and the released layout with an explicit key map.

Our format (what vla-finetune writes): ``roboflamingo_config.json``, ``model.safetensors``
(every weight), ``tokenizer.json`` + ids, ``dataset_statistics.json``.

A release directory (docs/roboflamingo.md) holds the RoboFlamingo ``.pth`` (a dict with
``model_state_dict``, keys prefixed ``module.``), optionally OpenFlamingo's ``checkpoint.pt``,
the language model's HF directory (``lang/``: weights, ``tokenizer.json``) and CLIP weights
(``clip/``: HF ``vision_model.*`` or open_clip ``visual.*``). Everything is read with
``weights_only=True`` (and mmap) or safetensors; later sources override earlier ones
(CLIP, LM, OpenFlamingo, RoboFlamingo). The official eval loads with ``strict=False``, which
hides mismatches; here every model key must be covered and every file key mapped or ignored
for a stated reason, else :class:`CheckpointError` with the full :class:`CoverageReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import logging
import os
from pathlib import Path
import re
from typing import Any, Callable, Mapping

import torch

from vla_policy_node.model.checkpoint import CheckpointError
from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
    get_preset, RoboFlamingoConfig)
from vla_policy_node.model.roboflamingo.processor_roboflamingo import FlamingoTokenizer

logger = logging.getLogger(__name__)

OUR_CONFIG = "roboflamingo_config.json"
OUR_WEIGHTS = "model.safetensors"
STATISTICS = "dataset_statistics.json"
RELEASE_OVERRIDES = "roboflamingo.json"
FORMAT_NAME = "vla_policy_node/roboflamingo"
OPENFLAMINGO = "openflamingo/checkpoint.pt"
RELEASED_LLMS = ("mpt_dolly_3b", "mpt_base_4b", "mpt_3b", "mpt_4b", "mpt_9b")


def is_roboflamingo_checkpoint(path: str | os.PathLike) -> bool:
    """True for our RoboFlamingo directory or a release directory / .pth file."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".pth"
    return ((path / OUR_CONFIG).is_file() or bool(_release_files(path))
            or (path / OPENFLAMINGO).is_file())


# ====================================================================== our format
def save_policy(policy: Any, directory: str | os.PathLike) -> Path:
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in policy.model.state_dict().items()}
    save_file(state, str(directory / OUR_WEIGHTS), metadata={"format": FORMAT_NAME})
    policy.processor.tokenizer.save(directory)
    if policy.processor.statistics is not None:
        (directory / STATISTICS).write_text(json.dumps(policy.processor.statistics, indent=2))
    meta = {"format": FORMAT_NAME, "version": 1, "config": policy.config.to_dict(),
            "unnorm_key": policy.processor.unnorm_key}
    (directory / OUR_CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def _statistics(directory: Path) -> dict | None:
    path = directory / STATISTICS
    return json.loads(path.read_text()) if path.is_file() else None


def load_directory(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                   unnorm_key: str | None = None, seed: int = 0, strict: bool = True) -> Any:
    """Our directory or a release directory -> RoboFlamingoPolicy."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir() and (path / OUR_CONFIG).is_file():
        return _load_ours(path, device, dtype, unnorm_key, seed)
    return load_release(path, device=device, dtype=dtype, unnorm_key=unnorm_key, seed=seed,
                        strict=strict)


def _load_ours(directory: Path, device: str, dtype: str, unnorm_key: str | None,
               seed: int) -> Any:
    from safetensors.torch import load_file

    from vla_policy_node.model.roboflamingo.policy_roboflamingo import build_roboflamingo
    try:
        meta = json.loads((directory / OUR_CONFIG).read_text())
        if meta.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{directory / OUR_CONFIG}: format {meta.get('format')!r}, "
                                  f"expected {FORMAT_NAME!r}")
        config = RoboFlamingoConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / OUR_CONFIG}: {exc}") from None
    weights = directory / OUR_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {OUR_WEIGHTS}")
    tokenizer = FlamingoTokenizer.load(directory)
    policy = build_roboflamingo(config, tokenizer, device, dtype, seed)
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{weights}: unreadable ({exc})") from None
    report = coverage(policy.model, {k: ("ours", v) for k, v in state.items()}, {}, [])
    report.raise_if_bad(str(weights))
    policy.model.load_state_dict(state, strict=True)
    stats = _statistics(directory)
    if stats is not None:
        policy.set_statistics(stats, unnorm_key or meta.get("unnorm_key"))
    return policy


# ====================================================================== coverage
@dataclass
class CoverageReport:
    """Which model keys came from which file; what was missing, unexpected or ignored."""

    sources: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    initialized: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.conflicts or self.shape_mismatches)

    def format(self) -> str:
        lines = [f"  loaded from: {self.sources}"]
        for name in ("missing", "unexpected", "conflicts", "shape_mismatches"):
            items = getattr(self, name)
            lines.append(f"  {name} ({len(items)}): {sorted(items)}")
        reasons: dict[str, int] = {}
        for reason in self.ignored.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines.append(f"  ignored by design ({len(self.ignored)}): {reasons}")
        if self.initialized:
            lines.append(f"  freshly initialized (no file holds them; an OpenFlamingo base): "
                         f"{len(self.initialized)} policy-head tensors")
        return "\n".join(lines)

    def raise_if_bad(self, where: str) -> None:
        if not self.ok:
            raise CheckpointError(f"{where}: weights do not match the model.\n{self.format()}")


def coverage(model: torch.nn.Module, merged: Mapping[str, tuple[str, torch.Tensor]],
             ignored: Mapping[str, str], unexpected: list[str],
             conflicts: list[str] | None = None) -> CoverageReport:
    own = model.state_dict()
    report = CoverageReport(ignored=dict(ignored), unexpected=list(unexpected),
                            conflicts=list(conflicts or []))
    for key, value in own.items():
        if key not in merged:
            report.missing.append(key)
            continue
        source, tensor = merged[key]
        report.sources[source] = report.sources.get(source, 0) + 1
        if tuple(tensor.shape) != tuple(value.shape):
            report.shape_mismatches.append(f"{key}: file {tuple(tensor.shape)} vs model "
                                           f"{tuple(value.shape)}")
    report.unexpected += [k for k in merged if k not in own]
    return report


# ====================================================================== key map
def _lm_block_prefix(kind: str) -> str:
    return {"mosaic_gpt": "lang.blocks.", "gpt_neox": "lang.model.layers.",
            "mpt": "lang.model.blocks."}[kind]


def map_lm_key(key: str, kind: str) -> tuple[str | None, str]:
    """A key of the language model as the release / OpenFlamingo / the HF directory names it,
    with ``lang_encoder.`` already stripped -> (our key or None, reason when None)."""
    blocks = _lm_block_prefix(kind)
    m = re.match(r"gated_cross_attn_layers\.(\d+)\.(.+)$", key)
    if m:
        return f"lang.xattn.{m[1]}.{m[2]}", ""
    m = re.match(r"old_decoder_blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"{blocks}{m[1]}.{m[2]}", ""
    root = "gpt_neox." if kind == "gpt_neox" else "transformer."
    if key.startswith(("embed_out.", "lm_head.")):
        return None, "LM output head (RoboFlamingo replaces it by its policy head)"
    if not key.startswith(root):
        return None, ""
    rest = key[len(root):]
    m = re.match(r"(?:blocks|layers)\.(\d+)\.(.+)$", rest)
    if m:
        index, inner = m[1], m[2]
        if inner.startswith("gated_cross_attn_layer."):
            return f"lang.xattn.{index}.{inner[len('gated_cross_attn_layer.'):]}", ""
        if inner.startswith("decoder_layer."):
            inner = inner[len("decoder_layer."):]
        if re.search(r"attention\.(bias|masked_bias|rotary_emb\.inv_freq)$", inner):
            return None, "GPT-NeoX buffer (recomputed)"
        return f"{blocks}{index}.{inner}", ""
    base = "lang." if kind == "mosaic_gpt" else "lang.model."
    return base + rest, ""


def _clip_prefix(model: torch.nn.Module) -> str:
    keys = model.vision.state_dict()
    return "vision.vision_model." if any(k.startswith("vision_model.") for k in keys) else \
        "vision."


def map_open_clip(key: str, value: torch.Tensor, prefix: str
                  ) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """open_clip ``visual.*`` key -> our CLIPVisionModel keys (in_proj split in q/k/v)."""
    simple = {"class_embedding": "embeddings.class_embedding",
              "positional_embedding": "embeddings.position_embedding.weight",
              "conv1.weight": "embeddings.patch_embedding.weight",
              "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
              "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias"}
    if key in simple:
        return [(prefix + simple[key], value)], ""
    if key == "proj":
        return [], "CLIP projection (RoboFlamingo reads the raw patch tokens)"
    m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key)
    if not m:
        return [], ""
    layer, inner = f"{prefix}encoder.layers.{m[1]}.", m[2]
    if inner.startswith("attn.in_proj_"):
        kind = inner.rsplit("_", 1)[1]
        q, k, v = value.chunk(3, dim=0)
        return [(f"{layer}self_attn.{n}_proj.{kind}", t)
                for n, t in zip("qkv", (q, k, v))], ""
    names = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.",
             "attn.out_proj.": "self_attn.out_proj.", "mlp.c_fc.": "mlp.fc1.",
             "mlp.c_proj.": "mlp.fc2."}
    for old, new in names.items():
        if inner.startswith(old):
            return [(layer + new + inner[len(old):], value)], ""
    return [], ""


def map_release_key(key: str, value: torch.Tensor, kind: str, clip_prefix: str
                    ) -> tuple[list[tuple[str, torch.Tensor]], str]:
    """One key of a RoboFlamingo .pth / OpenFlamingo checkpoint.pt -> our keys, or [] and
    the reason it is ignored ("" = unknown: reported as unexpected)."""
    key = key[len("module."):] if key.startswith("module.") else key
    if key.startswith("perceiver."):
        return [(key, value)], ""
    if key.startswith("lm_head."):
        return [("head." + key[len("lm_head."):], value)], ""
    if key.startswith("lang_encoder."):
        ours, reason = map_lm_key(key[len("lang_encoder."):], kind)
        return ([(ours, value)] if ours else []), reason
    for prefix in ("vision_encoder.visual.", "visual."):
        if key.startswith(prefix):
            return map_open_clip(key[len(prefix):], value, clip_prefix)
    if key.startswith("vision_encoder."):
        return [], "CLIP text tower (unused)"
    return [], ""


def map_hf_clip_key(key: str, value: torch.Tensor, clip_prefix: str
                    ) -> tuple[list[tuple[str, torch.Tensor]], str]:
    if key.startswith("vision_model."):
        rest = key[len("vision_model."):]
        if rest.endswith("position_ids"):
            return [], "position ids buffer (recomputed)"
        return [(clip_prefix + rest, value)], ""
    if key.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale")):
        return [], "CLIP text tower / projections (unused)"
    return [], ""


# ====================================================================== release directory
def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Legacy (non-zip) files cannot be memory-mapped.
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state = _torch_load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported with its name
        raise CheckpointError(f"{path}: cannot be read with weights_only=True ({exc})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a state dict")
    if "model_state_dict" in state:
        state = state["model_state_dict"]
    elif "state_dict" in state:
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        files = sorted(p for p in directory.glob("*.bin"))
    if not files:
        files = sorted(directory.glob("*.pt")) + sorted(directory.glob("*.pth"))
    return files


def _release_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.pth") if p.is_file())


def release_config(path: Path) -> RoboFlamingoConfig:
    """The configuration a release file name encodes (the official scripts parse it too),
    with ``roboflamingo.json`` overrides next to it (e.g. camera_names, window)."""
    name = path.name
    llm = next((k for k in RELEASED_LLMS if f"_{k}" in name), None)
    if llm is None:
        raise CheckpointError(f"{path}: cannot tell the language model from the file name "
                              f"(expected one of {RELEASED_LLMS}); add {RELEASE_OVERRIDES} "
                              "with a 'preset'")
    # As eval_ckpts.py parses it: "post" or else "pre" fusion; window after "ws", else 8.
    m = re.search(r"_ws_(\d+)", name)
    changes: dict[str, Any] = {"window": int(m[1]) if m else 8,
                               "fusion": "post" if "post" in name else "pre"}
    return _with_overrides(get_preset(f"roboflamingo-{llm}"), path.parent, changes)


def _with_overrides(config: RoboFlamingoConfig, directory: Path,
                    changes: dict[str, Any]) -> RoboFlamingoConfig:
    overrides = directory / RELEASE_OVERRIDES
    try:
        if overrides.is_file():
            data = json.loads(overrides.read_text())
            if "preset" in data:
                config = get_preset(data.pop("preset"))
            changes = {**changes, **data}
        return config.replace(**changes) if changes else config
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{overrides}: {exc}") from None


def base_config(directory: Path) -> RoboFlamingoConfig:
    """An OpenFlamingo base directory (no RoboFlamingo .pth): the preset comes from
    roboflamingo.json, e.g. {"preset": "roboflamingo-mpt_dolly_3b-aloha"}."""
    overrides = directory / RELEASE_OVERRIDES
    data = json.loads(overrides.read_text()) if overrides.is_file() else {}
    if "preset" not in data:
        raise CheckpointError(f"{directory}: an OpenFlamingo base directory needs "
                              f"{RELEASE_OVERRIDES} naming the preset, e.g. "
                              '{"preset": "roboflamingo-mpt_dolly_3b-aloha"}')
    return _with_overrides(get_preset(data["preset"]), directory, {})


def check_lm_config(lang_dir: Path, config: RoboFlamingoConfig) -> None:
    """Compare lang/config.json (when present) with the preset: a wrong LM fails here, not
    as silently different numbers."""
    path = lang_dir / "config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    spec = config.lm
    expected = {("d_model", "hidden_size"): spec.hidden_size,
                ("n_layers", "num_hidden_layers"): spec.num_layers,
                ("n_heads", "num_attention_heads"): spec.num_heads}
    if spec.kind == "gpt_neox":
        expected[("use_parallel_residual",)] = spec.use_parallel_residual
        expected[("rotary_pct",)] = spec.rotary_pct
    wrong = []
    for names, value in expected.items():
        found = next((data[n] for n in names if n in data), None)
        if found is not None and found != value:
            wrong.append(f"{names[0]}: {found} (the model needs {value})")
    if spec.kind == "mosaic_gpt" and data.get("attn_qk_ln") is False:
        wrong.append("attn_qk_ln: false (MPT-1B as released uses QK-LayerNorm)")
    if wrong:
        raise CheckpointError(f"{path} does not match {config.name}: {'; '.join(wrong)}")


def load_release(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                 unnorm_key: str | None = None, seed: int = 0, strict: bool = True) -> Any:
    """A release directory (or the .pth inside one) -> RoboFlamingoPolicy with its
    ``coverage`` report. ``strict=False`` only logs the report (never use it on a robot)."""
    from vla_policy_node.model.roboflamingo.policy_roboflamingo import build_roboflamingo
    path = Path(path)
    directory = path.parent if path.is_file() else path
    candidates = [path] if path.is_file() else _release_files(directory)
    of_file = directory / OPENFLAMINGO
    rf_file: Path | None = None
    if candidates or not of_file.is_file():
        if len(candidates) != 1:
            raise CheckpointError(f"{directory}: expected one RoboFlamingo .pth (or an "
                                  f"OpenFlamingo base {OPENFLAMINGO}), found "
                                  f"{[p.name for p in candidates]}")
        rf_file = candidates[0]
    config = release_config(rf_file) if rf_file is not None else base_config(directory)
    lang_dir = directory / "lang"
    if not (lang_dir / "tokenizer.json").is_file():
        raise CheckpointError(f"{directory}: the language model directory lang/ with its "
                              "tokenizer.json is missing (see docs/roboflamingo.md)")
    check_lm_config(lang_dir, config)
    tokenizer = FlamingoTokenizer.load(lang_dir)
    policy = build_roboflamingo(config, tokenizer, device, dtype, seed)
    model = policy.model
    kind, clip_prefix = config.lm.kind, _clip_prefix(model)
    own = model.state_dict()

    merged: dict[str, tuple[str, torch.Tensor]] = {}
    ignored: dict[str, str] = {}
    unexpected: list[str] = []
    conflicts: list[str] = []

    def add(source: str, state: Mapping[str, torch.Tensor],
            mapper: Callable[[str, torch.Tensor], tuple[list, str]]) -> None:
        seen: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            targets, reason = mapper(key, value)
            if not targets:
                if reason:
                    ignored[f"{source}:{key}"] = reason
                else:
                    unexpected.append(f"{source}:{key}")
                continue
            for ours, tensor in targets:
                if ours in own and tensor.dim() == 2 and ours.endswith(("wte.weight",
                                                                          "embed_in.weight")):
                    # resize_token_embeddings: the LM's padded vocabulary cut to the tokenizer's.
                    if tensor.shape[0] > own[ours].shape[0]:
                        tensor = tensor[:own[ours].shape[0]]
                if ours in seen and not torch.equal(seen[ours], tensor):
                    # The release stores each cross-attention layer under two names.
                    conflicts.append(f"{source}:{ours} (aliases differ)")
                seen[ours] = tensor
                merged[ours] = (source, tensor)

    clip_dir = directory / "clip"
    for file in (_weight_files(clip_dir) if clip_dir.is_dir() else []):
        state = _read_weights(file)
        hf = any(k.startswith("vision_model.") for k in state)
        add(f"clip/{file.name}", state,
            (lambda k, v: map_hf_clip_key(k, v, clip_prefix)) if hf else
            (lambda k, v: map_release_key(k, v, kind, clip_prefix)))
    def lm_mapper(key: str, value: torch.Tensor) -> tuple[list, str]:
        ours, reason = map_lm_key(key, kind)
        return ([(ours, value)] if ours else []), reason

    for file in _weight_files(lang_dir):
        add(f"lang/{file.name}", _read_weights(file), lm_mapper)
    if of_file.is_file():
        add(OPENFLAMINGO, _read_weights(of_file),
            lambda k, v: map_release_key(k, v, kind, clip_prefix))
    if rf_file is not None:
        add(rf_file.name, _read_weights(rf_file),
            lambda k, v: map_release_key(k, v, kind, clip_prefix))

    report = coverage(model, merged, ignored, unexpected, conflicts)
    if rf_file is None:
        # Training starts from OpenFlamingo as released: the policy head is new.
        report.initialized = [k for k in report.missing if k.startswith("head.")]
        report.missing = [k for k in report.missing if not k.startswith("head.")]
    policy.coverage = report
    if strict:
        report.raise_if_bad(str(directory))
    elif not report.ok:
        logger.error("%s: loading with strict=False despite:\n%s", directory, report.format())
    state = {k: t for k, (_, t) in merged.items() if k in own
             and tuple(t.shape) == tuple(own[k].shape)}
    model.load_state_dict(state, strict=False)
    logger.info("%s loaded:\n%s", directory, report.format())
    stats = _statistics(directory)
    if stats is not None:
        policy.set_statistics(stats, unnorm_key)
    return policy
