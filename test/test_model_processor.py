"""Processor: normalization, statistics, images, prompt, tokenizers, training batches, losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_policy_node.model import load_policy
from vla_policy_node.model.action_heads import ActionTokenizer
from vla_policy_node.model.processor import Normalizer, ObservationError

torch.set_num_threads(1)


def stats(d: int = 14, p: int = 14) -> dict:
    def entry(n):
        low = -np.arange(1, n + 1, dtype=float)
        return {"min": low.tolist(), "max": (-low).tolist(), "q01": (low / 2).tolist(),
                "q99": (-low / 2).tolist(), "mean": [0.0] * n, "std": [1.0] * n,
                "mask": [True] * (n - 1) + [False]}
    return {"aloha_towel": {"action": entry(d), "proprio": entry(p),
                            "num_transitions": 10, "num_trajectories": 1}}


@pytest.fixture(scope="module")
def tiny():
    return load_policy(preset="tiny", seed=0)


def test_normalizer_round_trip_clip_and_mask():
    norm = Normalizer(np.array([0.0, -2.0, 5.0]), np.array([1.0, 2.0, 6.0]),
                      np.array([True, True, False]))
    x = np.array([0.25, 1.0, 123.0])
    a = norm.normalize(x)
    np.testing.assert_allclose(a[:2], [-0.5, 0.5], atol=1e-6)
    assert a[2] == 123.0  # masked dims pass through
    np.testing.assert_allclose(norm.unnormalize(a), x, atol=1e-6)
    assert norm.normalize(np.array([7.0, -9.0, 0.0]))[:2].tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="high < low at dims \\[0\\]"):
        Normalizer(np.array([1.0]), np.array([0.0]))


def test_statistics_select_bounds_and_keys(tiny):
    tiny.set_statistics(stats())
    assert tiny.processor.unnorm_key == "aloha_towel"
    np.testing.assert_allclose(tiny.processor.action_normalizer.high[:3], [1, 2, 3])  # min/max
    both = dict(stats(), other=stats()["aloha_towel"])
    with pytest.raises(ValueError, match="pass unnorm_key"):
        tiny.set_statistics(both)
    with pytest.raises(ValueError, match="'nope' not in statistics keys"):
        tiny.set_statistics(both, "nope")
    with pytest.raises(ValueError, match="action statistics have 7 dims"):
        tiny.set_statistics(stats(d=7))
    libero = load_policy(preset="tiny-libero")
    libero.set_statistics(stats(7, 8))
    np.testing.assert_allclose(libero.processor.action_normalizer.high[:2], [0.5, 1.0])  # q99


def test_unnormalized_outputs_use_statistics_without_clipping(tiny):
    """The reference's formula; outputs beyond [-1, 1] are not clipped (the executor limits)."""
    tiny.set_statistics(stats())
    norm = tiny.processor.action_normalizer
    a = np.linspace(-1.6, 1.6, 14)[None].repeat(2, 0)
    expected = np.where(norm.mask, 0.5 * (a + 1) * (norm.high - norm.low + 1e-8) + norm.low, a)
    np.testing.assert_allclose(tiny.processor.unnormalize_actions(a), expected, rtol=0, atol=1e-12)
    assert np.any(expected[:, norm.mask] > norm.high[norm.mask])


def test_image_pipeline_shapes_normalization_and_crop(tiny):
    proc = tiny.processor
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    image[:, :320] = 255  # left half white
    out = proc.preprocess_image(image)
    assert out.shape == (6, 224, 224) and out.dtype == np.float32
    # DINOv2 channels use ImageNet stats, SigLIP channels map [0, 1] to [-1, 1].
    np.testing.assert_allclose(out[3:, 0, 0], [1.0, 1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(out[0, 0, 0], (1 - 0.485) / 0.229, atol=1e-4)
    np.testing.assert_allclose(out[3:, 0, -1], [-1.0, -1.0, -1.0], atol=1e-5)
    # The centre crop (90% area) keeps the white/black edge in the middle.
    assert out[3, 112, 100] > 0.9 and out[3, 112, 124] < -0.9
    aug = proc.preprocess_image(image, augment=True, rng=np.random.default_rng(1))
    assert aug.shape == (6, 224, 224) and not np.allclose(aug, out)


def test_prompt_and_tokenization(tiny):
    proc = tiny.processor
    assert proc.prompt(" Fold The Towel ") == (
        "In: What action should the robot take to fold the towel?\nOut:")
    ids, mask = proc.tokenize(["fold", "pick up the red cube and put it in the box"])
    assert ids[0, 0] == tiny.tokenizer.bos_id and mask[0].sum() < mask[1].sum()
    assert ids[0, mask[0].sum():].eq(tiny.tokenizer.pad_id).all()
    assert tiny.tokenizer.decode(ids[1, 1:].tolist()).strip().startswith("In: What action")


def test_action_tokenizer_matches_openvla_convention():
    tok = ActionTokenizer(32000, 256)
    assert tok.encode(np.array([-1.0]))[0] == 31999 and tok.encode(np.array([1.0]))[0] == 31744
    a = np.linspace(-0.99, 0.99, 50)
    assert np.abs(tok.decode(tok.encode(a)) - a).max() <= 2.0 / 255 + 1e-9


@pytest.mark.parametrize("preset", ["tiny", "tiny-diffusion", "tiny-discrete"])
def test_training_batch_and_loss_backward(preset):
    policy = load_policy(preset=preset, seed=0)
    cfg = policy.config
    rng = np.random.default_rng(0)
    images = [{c: rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for c in cfg.camera_names}
              for _ in range(2)]
    proprio = rng.uniform(-1, 1, (2, cfg.proprio_dim))
    actions = rng.uniform(-1, 1, (2, cfg.chunk_length, cfg.action_dim))
    batch = policy.processor.build_training_batch(images, proprio, actions, ["fold", "open it"],
                                                  augment=True, generator=0)
    assert batch["pixel_values"].shape == (2, cfg.num_images, 6, 224, 224)
    assert batch["actions"].shape == (2, cfg.chunk_length, cfg.action_dim)
    policy.model.train()
    loss = policy.model.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grad = policy.model.language_model.model.layers[0].self_attn.q_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ObservationError, match="actions must have shape"):
        policy.processor.build_training_batch(images, proprio, actions[..., :1], ["a", "b"])
