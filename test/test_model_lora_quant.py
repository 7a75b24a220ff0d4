"""LoRA (peft, OFT recipe) and bitsandbytes quantization of the language model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_policy_node.model import load_policy
from vla_policy_node.model.checkpoint import CheckpointError
from vla_policy_node.model.lora import apply_lora, merge_lora, unmerge_lora

torch.set_num_threads(1)


def obs(policy):
    rng = np.random.default_rng(11)
    images = {c: rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for c in policy.camera_names}
    return images, rng.uniform(-1, 1, policy.proprio_dim), "stack the blocks"


def test_lora_trainable_set_follows_oft_recipe():
    policy = load_policy(preset="tiny")
    apply_lora(policy, rank=4, alpha=8)
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    assert any("fused_featurizer" in n and "lora_B" in n for n in trainable)
    assert any(n.startswith("projector.") and "lora_" in n for n in trainable)
    assert any(n.startswith("action_head.") for n in trainable)
    assert any(n.startswith("proprio_projector.") for n in trainable)
    assert any("featurizer_film" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    assert not any("lora_" not in n and n.startswith("language_model.") for n in trainable)
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(policy)


def test_lora_merge_and_unmerge_are_equivalent(tmp_path):
    policy = load_policy(preset="tiny", seed=2)
    base = policy.infer(*obs(policy)).actions
    apply_lora(policy, rank=4, alpha=8)
    # Gaussian init: B = 0, the adapter starts as the identity.
    assert np.allclose(policy.infer(*obs(policy)).actions, base, atol=1e-6)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    adapted = policy.infer(*obs(policy)).actions
    assert not np.allclose(adapted, base, atol=1e-3)
    with pytest.raises(CheckpointError, match="merge LoRA before saving"):
        policy.save_pretrained(tmp_path / "unmerged")
    merge_lora(policy, unload=False)
    np.testing.assert_allclose(policy.infer(*obs(policy)).actions, adapted, atol=1e-4)
    unmerge_lora(policy)
    np.testing.assert_allclose(policy.infer(*obs(policy)).actions, adapted, atol=1e-4)
    assert merge_lora(policy) > 0
    assert not any("lora_" in n for n, _ in policy.model.named_parameters())
    np.testing.assert_allclose(policy.infer(*obs(policy)).actions, adapted, atol=1e-4)
    policy.save_pretrained(tmp_path / "merged")
    restored = load_policy(str(tmp_path / "merged"))
    np.testing.assert_allclose(restored.infer(*obs(restored)).actions, adapted, atol=1e-5)


def llm_hidden(policy):
    batch = policy.processor.build_inference_batch([obs(policy)])
    with torch.no_grad():
        return policy.model.action_hidden_states(batch)


@pytest.mark.parametrize("mode,tolerance", [("8bit", 0.05), ("4bit", 0.35)])
def test_quantized_forward_close_to_full_precision(mode, tolerance):
    full = load_policy(preset="tiny", seed=4)
    quant = load_policy(preset="tiny", seed=4, quantization=mode)
    layer = quant.model.language_model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == ("Linear8bitLt" if mode == "8bit" else "Linear4bit")
    assert quant.model.language_model.lm_head.__class__ is torch.nn.Linear
    a, b = llm_hidden(full), llm_hidden(quant)
    relative = ((a - b).norm() / a.norm()).item()
    assert 0 < relative < tolerance  # quantized, yet close
    chunk_full = full.infer(*obs(full)).actions
    chunk_quant = quant.infer(*obs(quant)).actions
    assert np.corrcoef(chunk_full.ravel(), chunk_quant.ravel())[0, 1] > 0.9
    with pytest.raises(CheckpointError, match="quantized"):
        quant.save_pretrained("/nonexistent/never-written")
