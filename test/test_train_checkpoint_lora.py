"""Mid-training checkpoints of a LoRA run: merged in place, restored bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vla_policy_node.model import load_policy
from vla_policy_node.model.checkpoint import OUR_WEIGHTS
from vla_policy_node.model.lora import apply_lora, merge_lora
from vla_policy_node.train.loop import FINAL_DIR, TrainConfig, _checkpoint_and_evaluate
from vla_policy_node.train.recipe import RunningLog

torch.set_num_threads(1)


def test_mid_training_checkpoint_merges_in_place_and_restores_exactly(tmp_path: Path) -> None:
    policy = load_policy(preset="tiny", seed=3)
    apply_lora(policy, rank=4, alpha=8)
    with torch.no_grad():  # trained adapters: B != 0, so merging changes the base weights
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    # What the checkpoint must hold: the adapters merged into a copy (the old way).
    reference = copy.deepcopy(policy)
    merge_lora(reference)
    expected = {k: v.contiguous() for k, v in reference.model.state_dict().items()}
    del reference

    # No second copy of the weights: every tensor the save sees is a training tensor.
    storages = {p.data_ptr() for p in policy.model.parameters()}
    seen: list[bool] = []
    original_save = type(policy).save_pretrained

    def spy(self, directory):
        seen.append(all(p.data_ptr() in storages for p in self.model.parameters()))
        return original_save(self, directory)

    type(policy).save_pretrained = spy
    try:
        config = TrainConfig(data_dir=str(tmp_path), output_dir=str(tmp_path / "out"),
                             lora_rank=4, lora_alpha=8, checkpoint_every=1)
        (tmp_path / "out").mkdir()
        log = RunningLog(tmp_path / "out", enabled=False)
        _checkpoint_and_evaluate(policy, config, tmp_path / "out", 1, lambda d: None, log,
                                 None)
    finally:
        type(policy).save_pretrained = original_save
    assert seen == [True], "the checkpoint was saved from a copy of the model"

    # Training goes on from exactly the weights it had, adapters and all.
    after = policy.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert policy.lora_applied
    assert [n for n, p in policy.model.named_parameters() if p.requires_grad] == trainable

    # The checkpoint is the merged model, tensor for tensor, and it loads.
    written = load_file(str(tmp_path / "out" / FINAL_DIR / OUR_WEIGHTS))
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(written[key], value), key
    restored = load_policy(str(tmp_path / "out" / FINAL_DIR))
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
              for c in policy.camera_names}
    proprio = rng.uniform(-1, 1, policy.proprio_dim)
    np.testing.assert_allclose(restored.infer(images, proprio, "stack").actions,
                               policy.infer(images, proprio, "stack").actions, atol=1e-4)
