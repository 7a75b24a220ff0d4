"""OFT model inference on tiny presets: shapes, batching, bidirectional attention, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_policy_node.model import ObservationError, get_preset, load_policy
from vla_policy_node.model.configuration_oft import OFTConfig

torch.set_num_threads(1)


def observation(policy, seed: int = 0, size=(120, 160)):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in policy.camera_names}
    return images, rng.uniform(-1, 1, policy.proprio_dim), "Fold the towel"


@pytest.fixture(scope="module")
def tiny():
    return load_policy(preset="tiny", seed=0)


def test_tiny_defaults_to_aloha(tiny):
    assert tiny.camera_names == ("cam_high", "cam_left_wrist", "cam_right_wrist")
    assert (tiny.chunk_length, tiny.action_dim, tiny.proprio_dim) == (25, 14, 14)
    assert tiny.config.use_film and tiny.config.action_head == "l1"


def test_infer_returns_chunk_and_timings(tiny):
    result = tiny.infer(*observation(tiny))
    assert result.actions.shape == (25, 14) and result.actions.dtype == np.float64
    assert np.all(np.isfinite(result.actions))
    assert {"preprocess", "model", "total"} <= set(result.timings)
    assert result.timings["total"] >= result.timings["model"] > 0


def test_inference_is_deterministic_and_depends_on_inputs(tiny):
    images, proprio, text = observation(tiny)
    a = tiny.infer(images, proprio, text).actions
    assert np.array_equal(a, tiny.infer(images, proprio, text).actions)
    assert not np.allclose(a, tiny.infer(images, proprio + 0.5, text).actions)
    assert not np.allclose(a, tiny.infer(images, proprio, "open the drawer").actions)
    other = dict(images, cam_right_wrist=255 - images["cam_right_wrist"])
    assert not np.allclose(a, tiny.infer(other, proprio, text).actions)


def test_batch_matches_single(tiny):
    obs = [observation(tiny, 1), (observation(tiny, 2)[0], observation(tiny, 2)[1],
                                  "pick up the red cube and put it into the bowl")]
    batched = tiny.infer_batch(obs)
    for (images, proprio, text), result in zip(obs, batched):
        single = tiny.infer(images, proprio, text).actions
        np.testing.assert_allclose(result.actions, single, atol=1e-4)


@pytest.mark.parametrize("preset,shape", [("tiny-libero", (8, 7)), ("tiny-diffusion", (25, 14)),
                                          ("tiny-discrete", (1, 7))])
def test_other_presets(preset, shape):
    policy = load_policy(preset=preset, seed=0)
    if preset == "tiny-diffusion":
        policy.config.diffusion_inference_steps = 3  # keep the test fast
    images, proprio, text = observation(policy)
    result = policy.infer(images, proprio if policy.config.use_proprio else None, text)
    assert result.actions.shape == shape and np.all(np.isfinite(result.actions))
    if preset == "tiny-discrete":  # bin centres only
        centres = policy.model.action_tokenizer.bin_centers
        distance = np.abs(result.actions.reshape(-1, 1) - centres[None]).min(axis=1)
        assert np.all(distance < 1e-6)


def test_action_slots_attend_bidirectionally(tiny):
    model = tiny.model
    batch = tiny.processor.build_inference_batch([observation(tiny)])
    n, h = tiny.config.num_action_slots, tiny.config.llm.hidden_size
    with torch.no_grad():
        prefix = model._prefix(batch)
        zeros = torch.zeros(1, n, h)
        poked = zeros.clone()
        poked[0, -1] = 5.0  # only the LAST slot changes
        # Read position 0 is the last prompt token, 1 the first slot (the reference's offset).
        first = model.action_hidden_states(batch, zeros, prefix=prefix)[0, 1]
        first_poked = model.action_hidden_states(batch, poked, prefix=prefix)[0, 1]
        # The FIRST slot sees the change: attention is not causal.
        assert (first - first_poked).abs().max() > 1e-3
        # Control: the same pass with a causal mask cannot see it.
        tail, tail_mask = model._text_tail(batch)
        outs = []
        for slots in (zeros, poked):
            emb, mask, reads = model._assemble(prefix[0], prefix[1], [], tail, tail_mask, slots)
            outs.append(model.run_llm(emb, mask, causal=True)[0, reads[0, 1]])
        assert torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("mutate,message", [
    (lambda i, p, t: ({k: v for k, v in i.items() if k != "cam_left_wrist"}, p, t),
     "cam_left_wrist"),
    (lambda i, p, t: (dict(i, cam_high=i["cam_high"][..., 0]), p, t), "cam_high"),
    (lambda i, p, t: (dict(i, cam_high=i["cam_high"].astype(np.float32)), p, t), "uint8"),
    (lambda i, p, t: (i, np.where(np.arange(14) == 3, np.nan, p), t), "indices [3]"),
    (lambda i, p, t: (i, p[:5], t), "proprio must have shape (14,)"),
    (lambda i, p, t: (i, None, t), "proprio is required"),
    (lambda i, p, t: (i, p, "   "), "instruction"),
])
def test_bad_observations_raise_clear_errors(tiny, mutate, message):
    with pytest.raises(ObservationError, match=None) as info:
        tiny.infer(*mutate(*observation(tiny)))
    assert message in str(info.value)


def test_batch_error_names_the_observation(tiny):
    good = observation(tiny)
    with pytest.raises(ObservationError, match=r"observation 1: instruction"):
        tiny.infer_batch([good, (good[0], good[1], "")])


def test_config_validation_names_bad_values():
    data = get_preset("tiny").to_dict()
    with pytest.raises(ValueError, match="chunk_length must be a positive int, got 0"):
        OFTConfig.from_dict(dict(data, chunk_length=0))
    with pytest.raises(ValueError, match="'softmax'"):
        OFTConfig.from_dict(dict(data, action_head="softmax"))
    with pytest.raises(ValueError, match="unknown OFTConfig fields"):
        OFTConfig.from_dict(dict(data, chunk=3))
    with pytest.raises(ValueError, match="unknown preset"):
        load_policy(preset="huge")
    seven = get_preset("openvla-7b")
    assert (seven.vision_width, seven.projector_hidden) == (2176, 8704)
    assert seven.llm.vocab_size == 32064
    assert seven.patches_per_image * seven.num_images == 768
