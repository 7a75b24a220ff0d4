"""The diffusion head, the discrete OpenVLA path and batching, checked against what the official
code does (read from openvla-oft 213c5ff and openvla c8f03f4; the file:line references are in
docs/model.md). The L1 path is checked against the reference's own outputs in
test_oft_reference.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vla_policy_node.model import load_policy
from vla_policy_node.model.action_heads import ActionTokenizer

torch.set_num_threads(1)

SHORT, LONG = "fold", "pick up the red cube and put it in the blue bowl on the left"


@pytest.fixture(scope="module")
def diffusion():
    policy = load_policy(preset="tiny-diffusion", seed=5)
    policy.config.diffusion_inference_steps = 3
    return policy


@pytest.fixture(scope="module")
def discrete():
    return load_policy(preset="tiny-discrete", seed=6)


def observations(policy, texts, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        images = {c: rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
                  for c in policy.camera_names}
        proprio = rng.uniform(-1, 1, policy.proprio_dim) if policy.config.use_proprio else None
        out.append((images, proprio, text))
    return out


def record_llm_inputs(model, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    calls = []
    original = model.run_llm

    def spy(embeds, key_mask, causal=False):
        calls.append((embeds.detach().clone(), key_mask.clone()))
        return original(embeds, key_mask, causal)
    monkeypatch.setattr(model, "run_llm", spy)
    return calls


# ---------------------------------------------------------------------- diffusion
def test_ddim_schedule_is_the_references(diffusion):
    """DDIMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2") with diffusers'
    defaults (action_heads.py:164), set_timesteps(50) at inference (openvla_utils.py:488)."""
    scheduler = diffusion.model.action_head.noise_scheduler
    cfg = scheduler.config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type) == (
        50, "squaredcos_cap_v2", "epsilon")
    assert cfg.clip_sample and cfg.set_alpha_to_one and cfg.steps_offset == 0
    assert load_policy(preset="tiny-diffusion").config.diffusion_inference_steps == 50
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(range(49, -1, -1))


def test_timestep_encoding_is_the_references(diffusion):
    """SinusoidalPositionalEncoding (action_heads.py:26-35)."""
    encoder = diffusion.model.action_head.time_encoder
    t = torch.tensor([0.0, 7.0, 49.0])
    half = encoder.dim // 2
    freq = torch.exp(torch.arange(half) * -math.log(10000) / (half - 1))
    angles = t[:, None] * freq[None]
    assert torch.allclose(encoder(t), torch.cat([angles.sin(), angles.cos()], -1), atol=0)


def test_denoising_loop_token_layout(diffusion, monkeypatch):
    """One LLM pass per inference step; the timestep token right after the proprio token
    (appended to the patch tokens, modeling_prismatic.py:816-827); every noisy action scalar
    projected to its own slot in (K, D) row-major order (:829-839)."""
    model, cfg = diffusion.model, diffusion.config
    batch = diffusion.processor.build_inference_batch(observations(diffusion, [SHORT]))
    noise = torch.randn((1, cfg.chunk_length, cfg.action_dim),
                        generator=torch.Generator().manual_seed(1))
    calls = record_llm_inputs(model, monkeypatch)
    with torch.no_grad():
        model._sample_diffusion(batch, None, noise)
        scheduler = model.action_head.noise_scheduler
        assert len(calls) == cfg.diffusion_inference_steps == len(scheduler.timesteps)
        position = 1 + cfg.num_images * cfg.patches_per_image + 1
        for (embeds, _), t in zip(calls, scheduler.timesteps):
            expected = model.action_head.time_encoder(torch.tensor([int(t)]))
            assert torch.allclose(embeds[0, position], expected[0], atol=1e-6)
        first_embeds = calls[0][0]
        n = cfg.num_action_slots
        slots = first_embeds[0, -1 - n:-1]
        assert torch.allclose(slots, model.noisy_action_projector(noise.reshape(1, -1, 1))[0],
                              atol=1e-6)


def test_diffusion_batch_of_two_prompt_lengths_equals_single_rows(diffusion):
    """Padding sits between prompt and slots: each row reads from its own last prompt token
    (a plain first-slot-minus-one read a PAD position: 1.7 off in the reference run)."""
    model, cfg = diffusion.model, diffusion.config
    obs = observations(diffusion, [SHORT, LONG])
    noise = torch.randn((2, cfg.chunk_length, cfg.action_dim),
                        generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        both = model._sample_diffusion(diffusion.processor.build_inference_batch(obs), None,
                                       noise)
        for i in range(2):
            single = model._sample_diffusion(
                diffusion.processor.build_inference_batch([obs[i]]), None, noise[i:i + 1])
            assert (both[i] - single[0]).abs().max() < 1e-5


def test_diffusion_loop_dtype(diffusion):
    """Default: noise and scheduler steps in float32; None: the model dtype (the reference's
    bf16 loop, modeling_prismatic.py:1025-1027). docs/model.md has the measured effect."""
    model = diffusion.model
    assert model.diffusion_loop_dtype == torch.float32
    batch = diffusion.processor.build_inference_batch(observations(diffusion, [SHORT]))
    bf16 = load_policy(preset="tiny-diffusion", seed=5, dtype="bfloat16")
    bf16.config.diffusion_inference_steps = 2
    noise = torch.randn((1, 25, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert bf16.model._sample_diffusion(batch, None, noise).dtype == torch.float32
        bf16.model.diffusion_loop_dtype = None
        assert bf16.model._sample_diffusion(batch, None, noise).dtype == torch.bfloat16


def test_diffusion_training_reads_the_same_positions(diffusion, monkeypatch):
    """The diffusion loss's noise prediction reads the positions inference reads."""
    model, cfg = diffusion.model, diffusion.config
    obs = observations(diffusion, [SHORT, LONG])
    actions = np.zeros((2, cfg.chunk_length, cfg.action_dim))
    batch = diffusion.processor.build_training_batch(
        [o[0] for o in obs], np.stack([o[1] for o in obs]), actions, [o[2] for o in obs],
        augment=False)
    seen = []
    original = model.action_head.predict_noise
    monkeypatch.setattr(model.action_head, "predict_noise",
                        lambda h: seen.append(h.detach().clone()) or original(h))
    with torch.no_grad():
        model.compute_loss(batch, torch.Generator().manual_seed(0))
        hidden = seen[0]
        # compute_loss reads through action_hidden_states: a padded row's reads equal its
        # reads alone (same slots and timestep token).
        t = model.action_head.time_encoder(torch.tensor([10, 10]))
        both = model.action_hidden_states(batch, None, t)
        for i in range(2):
            single = {k: v[i:i + 1] for k, v in batch.items()}
            length = int(single["attention_mask"].sum())
            single["input_ids"] = single["input_ids"][:, :length]
            single["attention_mask"] = single["attention_mask"][:, :length]
            alone = model.action_hidden_states(single, None, t[i:i + 1])
            assert (both[i] - alone[0]).abs().max() < 1e-5
    assert hidden.shape == (2, cfg.num_action_slots, cfg.llm.hidden_size)


# ---------------------------------------------------------------------- discrete OpenVLA
def test_action_token_mapping_is_openvlas():
    """token = vocab - digitize(clip(a), linspace(-1, 1, 256)) (openvla action_tokenizer);
    decode: bin_centers[clip(vocab - token - 1, 0, 254)] (modeling_prismatic.py:522-524),
    vocab = 32064 - 64 = 32000."""
    tok = ActionTokenizer(32000, 256)
    bins = np.linspace(-1, 1, 256)
    centers = (bins[:-1] + bins[1:]) / 2
    a = np.array([-1.5, -1.0, -0.3, 0.0, 0.5, 0.999, 1.0, 2.0])
    assert tok.encode(a).tolist() == (32000 - np.digitize(np.clip(a, -1, 1), bins)).tolist()
    tokens = np.arange(31744, 32000)
    assert np.array_equal(tok.decode(tokens), centers[np.clip(32000 - tokens - 1, 0, 254)])
    assert tok.first_token == 31744


def test_discrete_prompt_and_unnormalization_with_mask(discrete):
    """Prompt of OpenVLA (openvla_utils.py:757); BOUNDS_Q99 un-normalization where mask, the
    masked-off gripper passes through (modeling_prismatic.py:526-534)."""
    assert discrete.processor.prompt("Open The Drawer") == (
        "In: What action should the robot take to open the drawer?\nOut:")
    stats = {"libero": {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7, "min": [-3.0] * 7,
                                   "max": [3.0] * 7, "mask": [True] * 6 + [False]}}}
    discrete.set_statistics(stats)
    a = np.array([[-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 0.7]])
    out = discrete.processor.unnormalize_actions(a)
    expected = np.where([True] * 6 + [False], 0.5 * (a + 1) * 4.0 - 2.0, a)
    assert np.allclose(out, expected, atol=1e-7)


def test_discrete_batch_of_two_prompt_lengths_equals_single_rows(discrete):
    """Right-padded prompts: the first generated token comes from each row's own last prompt
    token (it was read at the padded end)."""
    obs = observations(discrete, [SHORT, LONG], seed=4)
    with torch.no_grad():
        both = discrete.model.predict_actions(discrete.processor.build_inference_batch(obs))
        for i in range(2):
            single = discrete.model.predict_actions(
                discrete.processor.build_inference_batch([obs[i]]))
            assert torch.equal(both[i], single[0])


def test_discrete_loss_reads_each_rows_last_prompt_token(discrete):
    """Teacher-forced loss of a padded batch = the mean of the single-row losses."""
    obs = observations(discrete, [SHORT, LONG], seed=5)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (2, 1, 7))
    batch = discrete.processor.build_training_batch(
        [o[0] for o in obs], None, actions, [o[2] for o in obs], augment=False)
    with torch.no_grad():
        both = float(discrete.model.compute_loss(batch))
        singles = []
        for i in range(2):
            single = discrete.processor.build_training_batch(
                [obs[i][0]], None, actions[i:i + 1], [obs[i][2]], augment=False)
            singles.append(float(discrete.model.compute_loss(single)))
    assert abs(both - np.mean(singles)) < 1e-5


# ---------------------------------------------------------------------- LIBERO image chain
def test_libero_chain_is_jpeg_lanczos_crop_of_the_256_render():
    """LIBERO renders 256x256 (run_libero_eval: resize_image_for_policy, then the centre
    crop): no PIL resize. Without the ALOHA pre-resize, a frame already 224x224 skips JPEG and
    resize, as the policy server does (openvla_utils.py:700)."""
    from vla_policy_node.data import images
    rng = np.random.default_rng(0)
    render = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    direct = images.tf_lanczos3_resize(images.jpeg_round_trip(render), 224)
    side = float(np.sqrt(np.float32(0.9)))
    top = float((np.float32(1) - np.float32(side)) / np.float32(2))
    cropped = images.crop_and_resize(direct.astype(np.float32) * np.float32(1 / 255), top, top,
                                     side, 224)
    expected = (np.clip(cropped, 0, 1) * np.float32(255.5)).astype(np.uint8)
    assert np.array_equal(images.prepare_policy_image(render), expected)
    small = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(images.prepare_policy_image(small, resize_size=0, center_crop=False),
                          small)


def test_training_augmentation_follows_dlimps_single_draw():
    """dlimp passes one seed to random_resized_crop and every colour op, so one uniform number
    u sets them all: crop offset u * (1 - sqrt(0.9)) for rows AND columns, brightness
    -0.2 + 0.4u, contrast/saturation 0.8 + 0.4u, hue -0.05 + 0.1u."""
    from vla_policy_node.data import images

    class Fixed:
        def __init__(self, u):
            self.u = u

        def uniform(self, low, high, size=None):
            return low + (high - low) * self.u

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    side = float(np.sqrt(np.float32(0.9)))
    for u in (0.0, 0.37, 0.999):
        ours = images.prepare_policy_image(frame, resize_size=0, augment=True, rng=Fixed(u))
        offset = float(np.float32(u) * (np.float32(1) - np.float32(side)))
        crop = images.crop_and_resize(frame.astype(np.float32) * np.float32(1 / 255), offset,
                                      offset, side, 224)
        jittered = images.color_jitter(np.clip(crop, 0, 1), u)
        assert np.array_equal(ours, (np.clip(jittered, 0, 1) * np.float32(255.5)).astype(np.uint8))
    dark = images.prepare_policy_image(frame, resize_size=0, augment=True, rng=Fixed(0.0))
    bright = images.prepare_policy_image(frame, resize_size=0, augment=True, rng=Fixed(1.0))
    assert dark.mean() + 20 < bright.mean()
