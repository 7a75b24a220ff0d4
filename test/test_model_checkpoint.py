"""Checkpoints: our format round trip, official OpenVLA / OFT layouts, key mapping errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch

from vla_policy_node.model import load_policy
from vla_policy_node.model.checkpoint import (CheckpointError, map_official_key,
                                              save_official_layout)

torch.set_num_threads(1)

STATS = {"towel": {"action": {"min": [-2.0] * 14, "max": [2.0] * 14, "q01": [-1.0] * 14,
                              "q99": [1.0] * 14, "mean": [0.0] * 14, "std": [1.0] * 14,
                              "mask": [True] * 14},
                   "proprio": {"min": [-3.0] * 14, "max": [3.0] * 14, "q01": [-1.0] * 14,
                               "q99": [1.0] * 14, "mean": [0.0] * 14, "std": [1.0] * 14,
                               "mask": [True] * 14},
                   "num_transitions": 5, "num_trajectories": 1}}


def trained_like(preset: str, seed: int = 3):
    """A tiny policy whose weights are all perturbed (FiLM, LayerScale, heads all matter)."""
    policy = load_policy(preset=preset, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "position_embeddings" not in name:  # the DINOv2 class row stays zero
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    if policy.config.action_head == "diffusion":
        policy.config.diffusion_inference_steps = 2
    return policy


def obs(policy):
    rng = np.random.default_rng(7)
    images = {c: rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for c in policy.camera_names}
    proprio = rng.uniform(-1, 1, policy.proprio_dim) if policy.config.use_proprio else None
    return images, proprio, "put the cube in the bowl"


def test_format_1_checkpoint_is_refused_with_what_changed(tmp_path):
    """A checkpoint saved before the model matched the reference must not load silently."""
    policy = load_policy(preset="tiny")
    policy.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "oft_config.json").read_text())
    assert meta["version"] == 2
    meta["version"] = 1
    (tmp_path / "oft_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_policy(str(tmp_path))
    message = str(info.value)
    assert "version 1" in message and "last prompt token" in message and "Retrain" in message
    meta["version"] = 9
    (tmp_path / "oft_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not supported"):
        load_policy(str(tmp_path))


def test_our_format_round_trip_is_exact(tmp_path):
    policy = trained_like("tiny")
    policy.set_statistics(STATS)
    expected = policy.infer(*obs(policy)).actions
    policy.save_pretrained(tmp_path)
    assert {"oft_config.json", "model.safetensors", "tokenizer.json",
            "dataset_statistics.json"} <= {p.name for p in tmp_path.iterdir()}
    restored = load_policy(str(tmp_path))
    assert restored.processor.unnorm_key == "towel"
    for (k, a), (k2, b) in zip(policy.model.state_dict().items(),
                               restored.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert np.array_equal(restored.infer(*obs(restored)).actions, expected)


@pytest.mark.parametrize("preset", ["tiny", "tiny-diffusion", "tiny-libero", "tiny-discrete"])
def test_official_layout_reload_gives_identical_outputs(tmp_path, preset):
    policy = trained_like(preset)
    if preset != "tiny-libero" and preset != "tiny-discrete":
        policy.set_statistics(STATS)
    expected = policy.infer(*obs(policy)).actions
    save_official_layout(policy, tmp_path, step=5000, max_shard_bytes=300_000)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors.index.json" in names and "config.json" in names
    if preset != "tiny-discrete":
        assert {"action_head--5000_checkpoint.pt",
                "proprio_projector--5000_checkpoint.pt"} <= names
    if policy.config.use_film:
        assert "vision_backbone--5000_checkpoint.pt" in names
    # The files really use the official (timm / DDP) names.
    keys = set()
    for shard in tmp_path.glob("model-*.safetensors"):
        keys |= set(load_file(str(shard)))
    assert "vision_backbone.featurizer.blocks.0.attn.qkv.weight" in keys
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in keys
    assert "vision_backbone.fused_featurizer.pos_embed" in keys
    if preset != "tiny-discrete":
        head = torch.load(tmp_path / "action_head--5000_checkpoint.pt", weights_only=True)
        assert all(k.startswith("module.") for k in head)
    restored = load_policy(str(tmp_path), seed=3)  # diffusion noise seed of trained_like
    assert restored.config.action_head == policy.config.action_head
    assert (restored.chunk_length, restored.action_dim) == (policy.chunk_length,
                                                            policy.action_dim)
    restored.config.diffusion_inference_steps = policy.config.diffusion_inference_steps
    np.testing.assert_array_equal(restored.infer(*obs(restored)).actions, expected)


def test_official_missing_and_unexpected_keys_are_listed(tmp_path):
    policy = trained_like("tiny-libero")
    save_official_layout(policy, tmp_path)
    shard = tmp_path / "model.safetensors"
    state = load_file(str(shard))
    del state["projector.fc2.bias"]
    state["projector.fc9.weight"] = torch.zeros(2)
    save_file(state, str(shard))
    with pytest.raises(CheckpointError) as info:
        load_policy(str(tmp_path))
    text = str(info.value)
    assert "missing keys (1): ['projector.fc2.bias']" in text
    assert "unexpected keys (1): ['projector.fc9.weight']" in text


def test_key_mapping_splits_fused_qkv_and_layerscale():
    qkv = torch.arange(12.0).reshape(6, 2)
    out = dict(map_official_key("vision_backbone.featurizer.blocks.3.attn.qkv.weight", qkv))
    prefix = "vision_backbone.featurizer.encoder.layer.3.attention."
    assert torch.equal(out[prefix + "q_proj.weight"], qkv[:2])
    assert torch.equal(out[prefix + "v_proj.weight"], qkv[4:])
    ls = dict(map_official_key("vision_backbone.featurizer.blocks.0.ls2.scale_factor",
                               torch.ones(4)))
    assert list(ls) == ["vision_backbone.featurizer.encoder.layer.0.layer_scale2.lambda1"]
    sig = dict(map_official_key("vision_backbone.fused_featurizer.blocks.1.attn.proj.bias",
                                torch.ones(4)))
    assert list(sig) == [
        "vision_backbone.fused_featurizer.encoder.layers.1.self_attn.out_proj.bias"]
    assert map_official_key("vision_backbone.fused_featurizer.attn_pool.q.weight",
                            torch.ones(1)) == []
    with pytest.raises(CheckpointError, match="unknown official key 'foo.bar'"):
        map_official_key("foo.bar", torch.ones(1))


def test_official_lora_adapter_is_merged(tmp_path):
    policy = trained_like("tiny-libero")
    save_official_layout(policy, tmp_path)
    adapter = tmp_path / "lora_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    a, b = torch.randn(2, 32), torch.randn(96, 2) * 0.1
    base = "base_model.model.vision_backbone.featurizer.blocks.0.attn.qkv"
    save_file({f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b},
              str(adapter / "adapter_model.safetensors"))
    plain = load_policy(str(tmp_path))
    merged = load_policy(str(tmp_path), merge_official_lora=True)
    key = "vision_backbone.featurizer.encoder.layer.0.attention.k_proj.weight"
    delta = merged.model.state_dict()[key] - plain.model.state_dict()[key]
    torch.testing.assert_close(delta, (b @ a * 2.0)[32:64], rtol=1e-4, atol=1e-5)


def test_official_adapter_film_named_vision_keys_are_left_out(tmp_path):
    """An OFT+ adapter's vision keys carry the FiLM wrapper's names (blocks.N.block.*): the
    reference's merge applies none of them (the vision_backbone file holds that LoRA)."""
    policy = trained_like("tiny-libero")
    save_official_layout(policy, tmp_path)
    adapter = tmp_path / "lora_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    a, b = torch.randn(2, 32), torch.randn(96, 2) * 0.1
    film = "base_model.model.vision_backbone.featurizer.blocks.0.block.attn.qkv"
    llm = "base_model.model.language_model.model.layers.0.self_attn.q_proj"
    a2, b2 = torch.randn(2, 64), torch.randn(64, 2) * 0.1
    save_file({f"{film}.lora_A.weight": a, f"{film}.lora_B.weight": b,
               f"{llm}.lora_A.weight": a2, f"{llm}.lora_B.weight": b2},
              str(adapter / "adapter_model.safetensors"))
    plain = load_policy(str(tmp_path)).model.state_dict()
    merged = load_policy(str(tmp_path), merge_official_lora=True).model.state_dict()
    vision = "vision_backbone.featurizer.encoder.layer.0.attention.k_proj.weight"
    assert torch.equal(merged[vision], plain[vision])
    q = "language_model.model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[q] - plain[q], b2 @ a2 * 2.0, rtol=1e-4, atol=1e-5)


def test_weights_only_loading_refuses_code(tmp_path):
    policy = trained_like("tiny-libero")
    save_official_layout(policy, tmp_path, step=1)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    torch.save({"module.model.fc2.weight": Evil()}, tmp_path / "action_head--2_checkpoint.pt")
    with pytest.raises(Exception, match="(?i)weights only|weights_only|Unsupported"):
        load_policy(str(tmp_path))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="neither oft_config.json"):
        load_policy(str(tmp_path))
    with pytest.raises(CheckpointError, match="not found"):
        load_policy(str(Path(tmp_path) / "missing"))
