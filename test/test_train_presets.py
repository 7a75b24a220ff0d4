"""The presets sized for learning the simulated tasks on a CPU: the full OFT model at a small
size trains from scratch (every weight, image cache) and its checkpoint deploys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_train_loop import make_dataset
from vla_policy_node.model import load_policy
from vla_policy_node.model.configuration_oft import get_preset, SIM_SIZES
from vla_policy_node.train.loop import TrainConfig, train


@pytest.mark.parametrize("name", sorted(SIM_SIZES))
def test_sim_presets_are_the_whole_oft_architecture(name: str) -> None:
    config = get_preset(name)
    assert config.action_head == "l1" and config.use_proprio and config.use_film
    assert config.camera_names == ("cam_high", "cam_left_wrist", "cam_right_wrist")
    assert (config.chunk_length, config.action_dim) == (25, 14)
    assert config.dino.kind == "dinov2_reg" and config.siglip.kind == "siglip"
    assert config.resize_size == config.image_size  # one resize of the camera frame


def test_sim_preset_trains_from_scratch_and_deploys(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d")
    result = train(TrainConfig(data_dir=str(data), output_dir=str(tmp_path / "run"),
                               preset="sim-s", steps=3, batch_size=2, lora_rank=0,
                               lr=3e-4, backbone_lr=1e-4, lr_schedule="cosine",
                               warmup_steps=1, save_every=0, val_every=0, val_episodes=1,
                               cache_images=True))
    assert result.checkpoint is not None and all(np.isfinite(result.losses))
    policy = load_policy(str(result.checkpoint))
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (240, 320, 3), np.uint8) for c in policy.camera_names}
    chunk = policy.infer(images, np.zeros(14), "transfer the red cube to the other arm")
    actions = getattr(chunk, "actions", chunk)
    assert np.shape(actions) == (25, 14) and np.all(np.isfinite(actions))
