"""RoboFlamingo model: shapes, the history rule, reset, gated cross-attention, MosaicGPT's
QK-LayerNorm + ALiBi against reference formulas, feature layer, fusion, processor."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla_policy_node.model.processor import ObservationError
from vla_policy_node.model.roboflamingo import build_roboflamingo, get_preset
from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
    LanguageSpec, PRESETS, RoboFlamingoConfig)
from vla_policy_node.model.roboflamingo.modeling_roboflamingo import (
    alibi_bias, attention_bias, GatedCrossAttentionBlock, MosaicAttention, MosaicGPT)

WINDOW = 3


@pytest.fixture(scope="module")
def policy():
    config = get_preset("tiny-roboflamingo").replace(window=WINDOW)
    return build_roboflamingo(config, seed=1)


def _images(policy, seed):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for c in policy.camera_names}


def test_presets_build_configs():
    for name in PRESETS:
        config = get_preset(name)
        assert RoboFlamingoConfig.from_dict(config.to_dict()) == config
    released = get_preset("roboflamingo-mpt_dolly_3b")
    assert (released.lm.kind, released.lm.hidden_size, released.lm.num_layers) == (
        "mosaic_gpt", 2048, 24)
    assert released.lm.cross_attn_every_n_layers == 1
    assert get_preset("roboflamingo-mpt_4b").lm.cross_attn_every_n_layers == 2
    assert get_preset("roboflamingo-mpt_9b").lm.cross_attn_every_n_layers == 4
    assert released.media_tokens == 128 and released.binary_gripper_dims == (6,)
    assert (released.vision.width, released.vision.depth, released.perceiver.num_latents) == (
        1024, 24, 64)


def test_config_rejects_bad_values():
    base = get_preset("tiny-roboflamingo")
    for changes in ({"window": 0}, {"head": "gpt"}, {"fusion": "two_way"},
                    {"binary_gripper_dims": [14]}, {"shift_pad": [1, 2]},
                    {"camera_names": ["a", "a", "b"]}):
        with pytest.raises(ValueError):
            base.replace(**changes)
    with pytest.raises(ValueError, match="unknown"):
        RoboFlamingoConfig.from_dict({**base.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        LanguageSpec("llama", 64, 2, 4, 100, 1)


def test_infer_shapes_and_chunk_head():
    chunk = build_roboflamingo(get_preset("tiny-roboflamingo-chunk").replace(window=2))
    images = {c: np.zeros((30, 40, 3), np.uint8) for c in chunk.camera_names}
    result = chunk.infer(images, None, "pick up the cube")
    assert result.actions.shape == (10, 14) and result.actions.dtype == np.float64
    assert np.all(np.abs(result.actions) <= 1.0 + 1e-9)  # identity normalization
    assert set(result.timings) == {"preprocess", "model", "postprocess", "total"}


def test_history_rule_matches_fresh_run_over_last_window(policy):
    """After window+k steps the output is the LSTM run from zero over the last `window`
    features, and step window+1 does not depend on the first frame (fails if the carried
    state is kept past the window)."""
    torch.manual_seed(0)
    d = policy.config.lm.hidden_size
    feats = [torch.randn(1, d) for _ in range(WINDOW + 4)]
    other_first = [torch.randn(1, d)] + feats[1:]

    def run(sequence):
        policy.reset()
        return [policy.step_features(f)[0].clone() for f in sequence]

    a, b = run(feats), run(other_first)
    assert not torch.allclose(a[WINDOW - 1], b[WINDOW - 1])      # frame 1 still in the window
    for t in range(WINDOW, len(feats)):                           # steps window+1 ...
        assert torch.allclose(a[t], b[t], atol=1e-6)
    head = policy.model.head
    with torch.no_grad():
        for t in range(len(feats)):
            start = max(0, t + 1 - WINDOW)
            out, _ = head.rnn(torch.stack(feats[start:t + 1], dim=1), None)
            assert torch.allclose(a[t], head.decode(out[:, -1])[0][0], atol=1e-6)
    assert policy.history_length == WINDOW


def test_reset_and_instruction_change_clear_history(policy):
    policy.reset()
    first = policy.infer(_images(policy, 0), None, "pick up the cube").actions
    for seed in range(1, 5):
        policy.infer(_images(policy, seed), None, "pick up the cube")
    again = policy.infer(_images(policy, 0), None, "pick up the cube").actions
    assert not np.allclose(first, again)      # history matters
    policy.reset()
    assert policy.history_length == 0
    assert np.allclose(policy.infer(_images(policy, 0), None, "pick up the cube").actions, first)
    for seed in range(1, 4):
        policy.infer(_images(policy, seed), None, "pick up the cube")
    # A new instruction starts from an empty history.
    policy.infer(_images(policy, 0), None, "open the drawer")
    assert policy.history_length == 1


def test_bad_observations_raise_clear_errors(policy):
    images = _images(policy, 0)
    with pytest.raises(ObservationError, match="missing camera"):
        policy.infer({"cam_high": images["cam_high"]}, None, "go")
    with pytest.raises(ObservationError, match="uint8"):
        policy.infer({**images, "cam_high": images["cam_high"].astype(np.float32)}, None, "go")
    with pytest.raises(ObservationError, match="reserved"):
        policy.infer(images, None, "pick <image> up")
    with pytest.raises(ObservationError, match="non-empty"):
        policy.infer(images, None, "  ")


def test_zero_gates_leave_the_language_model_unchanged():
    spec = LanguageSpec("mosaic_gpt", 32, 3, 4, 50, 1, xattn_heads=2, xattn_dim_head=8)
    torch.manual_seed(0)
    lm = MosaicGPT(spec, dim_visual=16).eval()
    ids = torch.randint(0, 50, (2, 7))
    ids[:, 0] = 3                                        # the <image> token
    mask = torch.ones(2, 7, dtype=torch.bool)
    media = torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = lm.features(ids, mask, None, ids == 3)
        gated = lm.features(ids, mask, media, ids == 3)
        assert torch.equal(plain, gated)
        for block in lm.xattn:
            block.attn_gate.fill_(0.5)
        assert not torch.allclose(plain, lm.features(ids, mask, media, ids == 3))


def test_cross_attention_only_after_the_image_token():
    block = GatedCrossAttentionBlock(16, 8, 4, 2, 2)
    with torch.no_grad():
        block.attn_gate.fill_(1.0)
    x = torch.randn(1, 5, 16)
    locations = torch.tensor([[False, False, True, False, False]])
    out_a = block.attn(x, torch.randn(1, 3, 8), locations)
    out_b = block.attn(x, torch.randn(1, 3, 8), locations)
    assert torch.equal(out_a[:, :2], torch.zeros_like(out_a[:, :2]))   # before <image>
    assert not torch.allclose(out_a[:, 2:], out_b[:, 2:])


def _reference_mosaic_attention(attn: MosaicAttention, x, heads, bias_max=8):
    """Written from MosaicGPT's description: q/k LayerNorm over the whole width before the
    head split, scores q.k / sqrt(head_dim) - slope_h * (i - j), causal softmax."""
    b, t, d = x.shape
    hd = d // heads
    qkv = x @ attn.Wqkv.weight.T
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    ln = lambda z, w: (z - z.mean(-1, keepdim=True)) / torch.sqrt(  # noqa: E731
        z.var(-1, unbiased=False, keepdim=True) + 1e-5) * w
    q, k = ln(q, attn.q_ln.weight), ln(k, attn.k_ln.weight)
    out = torch.zeros(b, t, d)
    for h in range(heads):
        slope = 2.0 ** (-bias_max * (h + 1) / heads)
        qh, kh, vh = (z[..., h * hd:(h + 1) * hd] for z in (q, k, v))
        for i in range(t):
            scores = torch.stack([(qh[:, i] * kh[:, j]).sum(-1) / math.sqrt(hd)
                                  - slope * (i - j) for j in range(i + 1)], dim=-1)
            weights = scores.softmax(-1)
            out[:, i, h * hd:(h + 1) * hd] = (weights[..., None] * vh[:, :i + 1]).sum(1)
    return out @ attn.out_proj.weight.T


def test_mosaic_attention_matches_reference_alibi_and_qk_layernorm():
    torch.manual_seed(0)
    heads, d, t = 4, 32, 6
    attn = MosaicAttention(d, heads, 1e-5)
    with torch.no_grad():
        attn.q_ln.weight.uniform_(0.5, 1.5)
        attn.k_ln.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, t, d)
    bias = attention_bias(torch.ones(2, t, dtype=torch.bool), heads, 8, torch.float32)
    with torch.no_grad():
        ours = attn(x, bias)
        ref = _reference_mosaic_attention(attn, x, heads)
    assert torch.allclose(ours, ref, atol=1e-5)
    # MosaicGPT's slopes for 16 heads: 1/2^(0.5), ..., 1/2^8.
    slopes = -alibi_bias(16, 2)[0, :, 0, 0]
    assert torch.allclose(slopes, torch.tensor([2 ** (-0.5 * h) for h in range(1, 17)]))
    # Against transformers' MPT ALiBi (slope * (j - (S - 1))), also for a head count that
    # is not a power of two (interleaved slopes, as llm-foundry).
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor
    for heads in (16, 12):
        assert torch.allclose(alibi_bias(heads, 5)[0, :, 0, :],
                              build_mpt_alibi_tensor(heads, 5, 8)[:, 0, :], atol=1e-6)


def test_features_are_the_input_of_the_last_block_without_ln_f():
    spec = LanguageSpec("mosaic_gpt", 32, 4, 4, 50, 1, xattn_heads=2, xattn_dim_head=8)
    torch.manual_seed(0)
    lm = MosaicGPT(spec, 16).eval()
    ids = torch.randint(0, 50, (1, 5))
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        feats = lm.features(ids, mask, None, ids == 3)
        assert torch.equal(feats, lm.features(ids, mask, None, ids == 3, layers=3))
        lm.blocks[3].mlp.mlp_down.weight.mul_(5.0)
        lm.ln_f.weight.mul_(3.0)
        assert torch.equal(feats, lm.features(ids, mask, None, ids == 3))
        assert not torch.allclose(feats, lm.features(ids, mask, None, ids == 3, layers=4))


def test_post_fusion_runs_every_camera_through_one_perceiver(policy):
    model = policy.model
    pixels = torch.randn(2, 3, 3, 56, 56)
    with torch.no_grad():
        media = model.encode_images(pixels)
        n = policy.config.perceiver.num_latents
        assert media.shape == (2, 3 * n, policy.config.vision.width)
        tokens = model.vision(pixel_values=pixels[:, 1]).last_hidden_state[:, 1:]
        assert torch.allclose(media[:, n:2 * n], model.perceiver(tokens), atol=1e-5)


def test_prompt_tokens_and_padding(policy):
    tok = policy.tokenizer
    ids, mask = policy.processor.tokenize(["pick up the cube", "open the drawer now please"])
    for row, m in zip(ids, mask):
        real = row[m].tolist()
        assert real[0] == tok.media_id and real[-2:] == [tok.eoc_id, tok.eos_id]
        assert row[~m].tolist() == [tok.pad_id] * int((~m).sum())
    long_ids, _ = policy.processor.tokenize(["pick up the cube " * 30])
    assert long_ids.shape[1] == policy.config.max_text_tokens


def test_shift_augmentation_is_per_frame_and_a_replicate_padded_crop(policy):
    proc = policy.processor
    pixels = torch.randn(6, 3, 3, 56, 56)
    out = proc.shift_augment(pixels, np.random.default_rng(0))
    pad = round(10 * 56 / 224)
    padded = F.pad(pixels[:, 0], (pad,) * 4, mode="replicate")
    shifts = set()
    for n in range(6):
        match = [(dy, dx) for dy in range(1, 2 * pad + 1) for dx in range(1, 2 * pad + 1)
                 if torch.equal(out[n, 0], padded[n, :, dy:dy + 56, dx:dx + 56])]
        assert match, "not a shifted crop in [1, 2p]"
        shifts.add(match[0])
    assert len(shifts) > 1                            # drawn per frame
    assert not torch.equal(out[:, 1], pixels[:, 1])   # wrist cameras shift too (pad 4 -> 1)


def test_trainable_set_is_the_released_one(policy):
    names = [n for n, _ in policy.model.trainable_named_parameters()]
    assert any(n.startswith("perceiver.") for n in names)
    assert any(".xattn." in f".{n}" for n in names)
    assert "lang.wte.weight" in names and any(n.startswith("head.rnn") for n in names)
    assert not any(n.startswith(("vision.", "lang.blocks.", "lang.ln_f")) for n in names)
    groups = policy.optimizer_groups(1e-4, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    named = dict(policy.model.named_parameters())
    assert id(named["lang.xattn.0.attn.to_q.weight"]) in decayed
    assert id(named["lang.xattn.0.attn_gate"]) not in decayed
    assert id(named["lang.xattn.0.attn.norm.weight"]) not in decayed
    assert id(named["lang.xattn.0.ff.0.weight"]) in decayed      # by name, as released
    assert id(named["lang.xattn.0.ff.0.bias"]) not in decayed
    assert id(named["lang.wte.weight"]) not in decayed


@pytest.mark.parametrize("kind", ["gpt_neox", "mpt"])
def test_transformers_language_models_take_the_cross_attention(kind):
    from vla_policy_node.model.roboflamingo.modeling_roboflamingo import HFLanguageModel
    spec = LanguageSpec(kind, 32, 4, 4, 60, 2, xattn_heads=2, xattn_dim_head=8)
    torch.manual_seed(0)
    lm = HFLanguageModel(spec, dim_visual=16).eval()
    assert [block is not None for block in lm.xattn] == [False, True, False, True]
    ids = torch.randint(0, 60, (2, 6))
    ids[:, 0] = 5
    mask = torch.ones(2, 6, dtype=torch.bool)
    media = torch.randn(2, 4, 16)
    with torch.no_grad():
        plain = lm.features(ids, mask, None, ids == 5)
        assert torch.allclose(plain, lm.features(ids, mask, media, ids == 5))
        lm.xattn[3].ff_gate.fill_(1.0)
        assert not torch.allclose(plain, lm.features(ids, mask, media, ids == 5))


@pytest.mark.parametrize("llm,released_gb", [("mpt_dolly_3b", 17.6), ("mpt_4b", 23.7),
                                             ("mpt_9b", 43.0)])
def test_released_sizes_reproduce_the_checkpoint_file_sizes(llm, released_gb):
    """Outside anchor: the HF file sizes of the released .pth (3B 17.6 GB, 4B 23.7, 9B 43).
    A release file holds, in fp32, the trainable set with its two Adam moments plus the frozen
    LM blocks (old_decoder_blocks); the cross-attention alias shares storage. Built on the
    meta device (no memory): a wrong width, depth, interval or trainable set misses by GBs."""
    from vla_policy_node.model.roboflamingo.modeling_roboflamingo import RoboFlamingoModel
    config = get_preset(f"roboflamingo-{llm}")
    with torch.device("meta"):
        model = RoboFlamingoModel(config, 50278)
    trainable = sum(p.numel() for _, p in model.trainable_named_parameters())
    lm = model.lang
    blocks = lm.blocks if config.lm.kind == "mosaic_gpt" else (
        lm.model.layers if config.lm.kind == "gpt_neox" else lm.model.blocks)
    frozen_blocks = sum(p.numel() for p in blocks.parameters())
    estimate_gb = (3 * trainable + frozen_blocks) * 4 / 1e9
    assert abs(estimate_gb - released_gb) / released_gb < 0.025, estimate_gb


def _head(window, k=1, head="lstm"):
    from vla_policy_node.model.roboflamingo.modeling_roboflamingo import PolicyHead
    config = get_preset("tiny-roboflamingo").replace(window=window, chunk_length=k, head=head,
                                                    lstm_layers=2, lstm_hidden=8,
                                                    mlp_dims=[8], lstm_dropout=0.0)
    torch.manual_seed(window)
    return PolicyHead(config).eval()


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(window=st.integers(1, 6), steps=st.integers(1, 16), resets=st.sets(st.integers(0, 15)),
       seed=st.integers(0, 2**16))
def test_history_rule_property(window, steps, resets, seed):
    """Any window, any number of steps, resets anywhere: the output at every step is the
    LSTM run from zero over the features since the last reset, at most the last `window`."""
    from vla_policy_node.model.roboflamingo.policy_roboflamingo import HeadHistory
    head = _head(window)
    history = HeadHistory(head, window)
    feats = torch.randn(steps, 1, 64, generator=torch.Generator().manual_seed(seed))
    since_reset = []
    for t in range(steps):
        if t in resets:
            history.reset()
            since_reset = []
        since_reset.append(feats[t])
        cont, _ = history.step(feats[t])
        with torch.no_grad():
            out, _ = head.rnn(torch.stack(since_reset[-window:], dim=1), None)
            expected = head.decode(out[:, -1])[0][0]
        assert torch.allclose(cont, expected, atol=1e-5)
        assert len(history) == min(len(since_reset), window)


def test_mlp_head_has_no_history_and_chunk_head_predicts_k():
    from vla_policy_node.model.roboflamingo.policy_roboflamingo import HeadHistory
    history = HeadHistory(_head(3, k=4, head="mlp"), 3)
    feats = torch.randn(5, 1, 64)
    outs = [history.step(f)[0] for f in feats]
    assert outs[0].shape == (4, 14)                      # K x continuous dims (ALOHA: all)
    history.reset()
    assert torch.allclose(history.step(feats[4])[0], outs[4])   # only the current frame


def test_pre_fusion_concatenates_clip_tokens_before_one_perceiver_pass():
    config = get_preset("tiny-roboflamingo").replace(fusion="pre", window=2)
    model = build_roboflamingo(config, seed=0).model
    pixels = torch.randn(1, 3, 3, 56, 56)
    with torch.no_grad():
        media = model.encode_images(pixels)
        tokens = model.vision(pixel_values=pixels[0]).last_hidden_state[:, 1:]
        expected = model.perceiver(tokens.reshape(1, -1, tokens.shape[-1]))
    assert media.shape == (1, config.perceiver.num_latents, config.vision.width)
    assert torch.allclose(media, expected, atol=1e-5)


def test_history_rate_advice(policy):
    from vla_policy_node.model.family import history_rate_advice
    chunky = build_roboflamingo(get_preset("tiny-roboflamingo-chunk").replace(window=2))
    assert history_rate_advice(chunky, "fixed_rate", 5.0, 0.04) is None     # 5 x 0.04 s
    advice = history_rate_advice(chunky, "on_demand", 2.0, 0.04)
    assert advice and "inference_rate_hz 5" in advice
    assert history_rate_advice(policy, "fixed_rate", 25.0, 0.04) is None    # stride 1
    assert history_rate_advice(object(), "on_demand", 2.0, 0.04) is None    # no history


def test_family_contract_and_dispatch(policy, tmp_path):
    from vla_policy_node.model import load_policy
    from vla_policy_node.model.family import history_rate_advice, PolicyFamily, resolve_family
    assert isinstance(policy, PolicyFamily) and policy.family == "roboflamingo"
    assert resolve_family(None, "tiny-roboflamingo") == "roboflamingo"
    assert resolve_family(None, "tiny") == "oft"
    with pytest.raises(ValueError, match="belongs to the oft family"):
        resolve_family(None, "tiny", "roboflamingo")
    with pytest.raises(ValueError, match="policy family must be one of"):
        resolve_family(None, "tiny", "flamingo")
    policy.save_pretrained(tmp_path / "rf")
    assert resolve_family(tmp_path / "rf", "tiny") == "roboflamingo"
    with pytest.raises(ValueError, match="roboflamingo family"):
        load_policy(str(tmp_path / "rf"), family="oft")
    with pytest.raises(ValueError, match="quantization"):
        load_policy(preset="tiny-roboflamingo", quantization="4bit")
    oft = load_policy(preset="tiny")
    assert isinstance(oft, PolicyFamily) and oft.family == "oft" and not oft.keeps_history
    assert policy.keeps_history
    oft.reset()  # no history: a no-op the node may call on every instruction change
    assert history_rate_advice(oft, "on_demand", 2.0, 0.04) is None


def test_non_finite_features_never_enter_the_history(policy, monkeypatch):
    policy.reset()
    images = _images(policy, 0)
    policy.infer(images, None, "pick up the cube")
    real = policy.model.frame_features
    monkeypatch.setattr(policy.model, "frame_features",
                        lambda *a: torch.full_like(real(*a), float("nan")))
    with pytest.raises(FloatingPointError, match="not added to the history"):
        policy.infer(images, None, "pick up the cube")
    assert policy.history_length == 1
    monkeypatch.setattr(policy.model, "frame_features", real)
    assert np.all(np.isfinite(policy.infer(images, None, "pick up the cube").actions))
    assert policy.history_length == 2
