"""RoboFlamingo checkpoints: our format round trip, and the released layout.

No released checkpoint can be downloaded here. The release-layout files below are written by
hand from the key names documented in ../shared/design/FACTS_roboflamingo.md section 5
(``model_state_dict`` with ``module.``, the cross-attention under both names,
``old_decoder_blocks``, ``lm_head.*``), the MosaicGPT names of section 1, open_clip's
``visual.*`` names and an LM directory, NOT with our own key map, so that a wrong map fails.
"""

import json

import numpy as np
import pytest
import torch

from vla_policy_node.model.checkpoint import CheckpointError
from vla_policy_node.model.roboflamingo import build_roboflamingo, get_preset, load_roboflamingo

RELEASE_NAME = "checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_12_mpt_dolly_3b_2.pth"
OVERRIDES = {"preset": "tiny-roboflamingo", "camera_names": ["rgb_static", "rgb_gripper"],
             "action_dim": 7, "binary_gripper_dims": [6], "normalization": "none",
             "shift_pad": [10, 4]}


def _source_policy():
    config = get_preset("tiny-roboflamingo").replace(**{k: v for k, v in OVERRIDES.items()
                                                         if k != "preset"})
    policy = build_roboflamingo(config, seed=3)
    with torch.no_grad():
        for block in policy.model.lang.xattn:       # open the gates: cross-attention matters
            block.attn_gate.fill_(0.7)
            block.ff_gate.fill_(-0.4)
    return policy


def _release_files(policy, directory, drop=(), extra=None, alias_noise=False):
    """Write the release layout by hand from the documented names."""
    s = {k: v.clone() for k, v in policy.model.state_dict().items()}
    cfg = policy.config
    rf = {}
    for key, value in s.items():
        if key.startswith("perceiver."):
            rf[f"module.{key}"] = value
        elif key.startswith("head."):
            rf[f"module.lm_head.{key[len('head.'):]}"] = value
    rf["module.lang_encoder.transformer.wte.weight"] = s["lang.wte.weight"]
    for i in range(cfg.lm.num_layers):
        for name in ("attn_gate", "ff_gate", "attn.norm.weight", "attn.norm.bias",
                     "attn.to_q.weight", "attn.to_kv.weight", "attn.to_out.weight",
                     "ff.0.weight", "ff.0.bias", "ff.1.weight", "ff.3.weight"):
            value = s[f"lang.xattn.{i}.{name}"]
            rf[f"module.lang_encoder.transformer.blocks.{i}.gated_cross_attn_layer.{name}"] = value
            twin = value + 1.0 if (alias_noise and i == 1 and name == "attn_gate") else value
            rf[f"module.lang_encoder.gated_cross_attn_layers.{i}.{name}"] = twin
        for name in ("ln_1.weight", "attn.Wqkv.weight", "attn.q_ln.weight", "attn.k_ln.weight",
                     "attn.out_proj.weight", "ln_2.weight", "mlp.mlp_up.weight",
                     "mlp.mlp_down.weight"):
            rf[f"module.lang_encoder.old_decoder_blocks.{i}.{name}"] = s[f"lang.blocks.{i}.{name}"]
    for key in drop:
        del rf[key]
    rf.update(extra or {})
    torch.save({"epoch": 2, "model_state_dict": rf, "optimizer_state_dict": {},
                "lr_scheduler_state_dict": {}}, directory / RELEASE_NAME)
    # The LM's own directory: the HF MosaicGPT names (transformer.*), a padded vocabulary.
    lang = directory / "lang"
    lang.mkdir()
    policy.tokenizer.save(lang)
    wte = torch.cat([s["lang.wte.weight"], torch.randn(8, cfg.lm.hidden_size)])
    base = {"transformer.wte.weight": wte, "transformer.ln_f.weight": s["lang.ln_f.weight"]}
    for i in range(cfg.lm.num_layers):
        base[f"transformer.blocks.{i}.ln_1.weight"] = torch.randn(cfg.lm.hidden_size)
    torch.save(base, lang / "pytorch_model.bin")
    (lang / "config.json").write_text(json.dumps(
        {"d_model": cfg.lm.hidden_size, "n_layers": cfg.lm.num_layers,
         "n_heads": cfg.lm.num_heads, "attn_qk_ln": True, "alibi": True}))
    # open_clip's ViT names (visual.*), in_proj as one (3W, W) block.
    v = "vision."
    clip = {"visual.class_embedding": s[v + "embeddings.class_embedding"],
            "visual.positional_embedding": s[v + "embeddings.position_embedding.weight"],
            "visual.conv1.weight": s[v + "embeddings.patch_embedding.weight"],
            "visual.ln_pre.weight": s[v + "pre_layrnorm.weight"],
            "visual.ln_pre.bias": s[v + "pre_layrnorm.bias"],
            "visual.ln_post.weight": s[v + "post_layernorm.weight"],
            "visual.ln_post.bias": s[v + "post_layernorm.bias"],
            "visual.proj": torch.randn(cfg.vision.width, 16)}
    for i in range(cfg.vision.depth):
        p, r = f"{v}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            clip[f"{r}attn.in_proj_{kind}"] = torch.cat(
                [s[f"{p}self_attn.{n}_proj.{kind}"] for n in "qkv"])
            clip[f"{r}attn.out_proj.{kind}"] = s[f"{p}self_attn.out_proj.{kind}"]
            clip[f"{r}ln_1.{kind}"] = s[f"{p}layer_norm1.{kind}"]
            clip[f"{r}ln_2.{kind}"] = s[f"{p}layer_norm2.{kind}"]
            clip[f"{r}mlp.c_fc.{kind}"] = s[f"{p}mlp.fc1.{kind}"]
            clip[f"{r}mlp.c_proj.{kind}"] = s[f"{p}mlp.fc2.{kind}"]
    (directory / "clip").mkdir()
    torch.save(clip, directory / "clip" / "open_clip_pytorch_model.bin")
    (directory / "roboflamingo.json").write_text(json.dumps(OVERRIDES))
    return directory


def _run(policy, steps=4):
    policy.reset()
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        images = {c: rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                  for c in policy.camera_names}
        out.append(policy.infer(images, None, "push the red block").actions)
    return np.stack(out)


@pytest.fixture(scope="module")
def source():
    return _source_policy()


def test_release_layout_loads_with_full_coverage(source, tmp_path):
    loaded = load_roboflamingo(_release_files(source, tmp_path))
    report = loaded.coverage
    assert report.ok, report.format()
    assert set(report.sources) == {"clip/open_clip_pytorch_model.bin", "lang/pytorch_model.bin",
                                   RELEASE_NAME}
    assert report.sources["lang/pytorch_model.bin"] == 1          # only ln_f is left to it
    assert "clip/open_clip_pytorch_model.bin:visual.proj" in report.ignored
    assert loaded.config.binary_gripper_dims == (6,) and loaded.config.window == 12
    for key, value in source.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    ours, theirs = _run(source), _run(loaded)
    assert np.array_equal(ours, theirs)
    assert set(np.unique(theirs[..., 6])) <= {-1.0, 1.0}       # binary gripper as released


def test_missing_unexpected_and_conflicting_keys_are_reported(source, tmp_path):
    (tmp_path / "a").mkdir()
    directory = _release_files(
        source, tmp_path / "a",
        drop=("module.lang_encoder.old_decoder_blocks.2.attn.q_ln.weight",),
        extra={"module.lang_encoder.transformer.blocks.0.mystery.weight": torch.ones(2),
               "module.frame_embs": torch.ones(2)})
    with pytest.raises(CheckpointError) as err:
        load_roboflamingo(directory)
    text = str(err.value)
    assert "lang.blocks.2.attn.q_ln.weight" in text
    assert "module.frame_embs" in text and "lang.blocks.0.mystery.weight" in text
    (tmp_path / "b").mkdir()
    with pytest.raises(CheckpointError, match="aliases differ"):
        load_roboflamingo(_release_files(source, tmp_path / "b", alias_noise=True))
    # strict=False loads anyway, but the report says what is wrong.
    loose = load_roboflamingo(directory, strict=False)
    assert "lang.blocks.2.attn.q_ln.weight" in loose.coverage.missing


def test_release_files_are_read_without_unpickling_code(source, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    _release_files(source, tmp_path)
    with open(tmp_path / RELEASE_NAME, "wb") as handle:
        pickle.dump({"model_state_dict": Evil()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_roboflamingo(tmp_path)


def test_language_model_config_must_match(source, tmp_path):
    _release_files(source, tmp_path)
    (tmp_path / "lang" / "config.json").write_text(json.dumps({"d_model": 96, "n_layers": 4}))
    with pytest.raises(CheckpointError, match="d_model: 96"):
        load_roboflamingo(tmp_path)


def test_release_directory_without_language_model_is_a_clear_error(tmp_path):
    torch.save({"model_state_dict": {}}, tmp_path / RELEASE_NAME)
    with pytest.raises(CheckpointError, match="lang/"):
        load_roboflamingo(tmp_path)
    (tmp_path / "x_llama_9b.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="expected one"):
        load_roboflamingo(tmp_path)


def test_our_format_round_trip(source, tmp_path):
    stats = {"demo": {"action": {"q01": [-2.0] * 7, "q99": [2.0] * 7, "min": [-3.0] * 7,
                                 "max": [3.0] * 7}}}
    policy = build_roboflamingo(source.config.replace(normalization="bounds_q99"), seed=5)
    policy.set_statistics(stats)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = load_roboflamingo(tmp_path / "ckpt")
    assert loaded.config == policy.config and loaded.processor.unnorm_key == "demo"
    ours, theirs = _run(policy), _run(loaded)
    assert np.array_equal(ours, theirs)
    assert np.allclose(loaded.processor.action_normalizer.high[:6], 2.0)   # q99 restored
    plain = build_roboflamingo(policy.config, seed=5)                       # no statistics
    assert np.allclose(theirs[..., :6], 2.0 * _run(plain)[..., :6], atol=1e-6)
    torch.save({"x": 1}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_roboflamingo(tmp_path / "ckpt")


def test_openflamingo_base_directory_loads_with_a_fresh_head(source, tmp_path):
    """Training starts from OpenFlamingo as released: checkpoint.pt (flat: perceiver.*,
    lang_encoder.transformer.{wte, blocks.i.gated_cross_attn_layer.*}), the LM's own blocks
    from lang/, CLIP from clip/; only the policy head is new (and reported as such)."""
    _release_files(source, tmp_path)
    (tmp_path / RELEASE_NAME).unlink()
    s = source.model.state_dict()
    cfg = source.config
    flat = {k: v for k, v in s.items() if k.startswith("perceiver.")}
    flat["lang_encoder.transformer.wte.weight"] = s["lang.wte.weight"]
    lm = {"transformer.wte.weight": s["lang.wte.weight"],
          "transformer.ln_f.weight": s["lang.ln_f.weight"]}
    for i in range(cfg.lm.num_layers):
        for key, value in s.items():
            if key.startswith(f"lang.xattn.{i}."):
                inner = key[len(f"lang.xattn.{i}."):]
                flat[f"lang_encoder.transformer.blocks.{i}.gated_cross_attn_layer.{inner}"] = value
            if key.startswith(f"lang.blocks.{i}."):
                lm[f"transformer.blocks.{i}.{key[len(f'lang.blocks.{i}.'):]}"] = value
    (tmp_path / "openflamingo").mkdir()
    torch.save(flat, tmp_path / "openflamingo" / "checkpoint.pt")
    torch.save(lm, tmp_path / "lang" / "pytorch_model.bin")
    loaded = load_roboflamingo(tmp_path)
    report = loaded.coverage
    assert report.ok, report.format()
    assert report.initialized and all(k.startswith("head.") for k in report.initialized)
    mine = loaded.model.state_dict()
    for key, value in s.items():
        if not key.startswith("head."):
            assert torch.equal(value, mine[key]), key
    (tmp_path / "roboflamingo.json").unlink()
    with pytest.raises(CheckpointError, match="naming the preset"):
        load_roboflamingo(tmp_path)


def test_gpt_neox_release_layout_and_hf_clip_load(tmp_path):
    """The 4B layout (RedPajama-INCITE / GPT-NeoX): gpt_neox.* names, cross-attention every
    2nd layer, final_layer_norm from lang/; CLIP as a transformers CLIPModel (vision_model.*)."""
    lm = {"kind": "gpt_neox", "hidden_size": 32, "num_layers": 4, "num_heads": 4,
          "vocab_size": 512, "cross_attn_every_n_layers": 2, "max_seq_len": 64,
          "xattn_heads": 2, "xattn_dim_head": 8}
    overrides = {**OVERRIDES, "lm": lm}
    config = get_preset("tiny-roboflamingo").replace(
        **{k: v for k, v in overrides.items() if k != "preset"})
    policy = build_roboflamingo(config, seed=4)
    with torch.no_grad():
        for block in policy.model.lang.xattn:
            if block is not None:
                block.attn_gate.fill_(0.5)
    s = policy.model.state_dict()
    rf = {f"module.lm_head.{k[5:]}": v for k, v in s.items() if k.startswith("head.")}
    rf.update({f"module.{k}": v for k, v in s.items() if k.startswith("perceiver.")})
    rf["module.lang_encoder.gpt_neox.embed_in.weight"] = s["lang.model.embed_in.weight"]
    for i in range(4):
        for key, value in s.items():
            if key.startswith(f"lang.xattn.{i}."):
                inner = key[len(f"lang.xattn.{i}."):]
                layer = f"module.lang_encoder.gpt_neox.layers.{i}"
                rf[f"{layer}.gated_cross_attn_layer.{inner}"] = value
                rf[f"module.lang_encoder.gated_cross_attn_layers.{i}.{inner}"] = value
            if key.startswith(f"lang.model.layers.{i}."):
                inner = key[len(f"lang.model.layers.{i}."):]
                rf[f"module.lang_encoder.old_decoder_blocks.{i}.{inner}"] = value
    assert not any(".layers.0.gated" in k for k in rf)       # only every 2nd layer
    torch.save({"model_state_dict": rf}, tmp_path /
               "checkpoint_gripper_post_hist_1_aug_10_4_traj_cons_ws_12_mpt_4b_3.pth")
    (tmp_path / "lang").mkdir()
    policy.tokenizer.save(tmp_path / "lang")
    torch.save({"gpt_neox.final_layer_norm.weight": s["lang.model.final_layer_norm.weight"],
                "gpt_neox.final_layer_norm.bias": s["lang.model.final_layer_norm.bias"],
                "gpt_neox.layers.0.attention.rotary_emb.inv_freq": torch.ones(4),
                "embed_out.weight": torch.randn(600, 32)}, tmp_path / "lang" / "pytorch_model.bin")
    (tmp_path / "clip").mkdir()
    clip = {f"vision_model.{k[len('vision.'):]}": v for k, v in s.items()
            if k.startswith("vision.")}
    clip["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
    clip["logit_scale"] = torch.tensor(1.0)
    from safetensors.torch import save_file
    save_file(clip, str(tmp_path / "clip" / "model.safetensors"))
    (tmp_path / "roboflamingo.json").write_text(json.dumps(overrides))
    loaded = load_roboflamingo(tmp_path)
    assert loaded.coverage.ok, loaded.coverage.format()
    assert loaded.config.lm.kind == "gpt_neox"
    assert np.array_equal(_run(policy), _run(loaded))


@pytest.mark.parametrize("text, message", [
    ("{not json", "roboflamingo_config.json"),
    (json.dumps({"format": "vla_policy_node/oft", "config": {}}), "format"),
    (json.dumps({"format": "vla_policy_node/roboflamingo", "config": {"bogus": 1}}), "bogus"),
])
def test_damaged_config_of_our_format_is_a_clear_error(source, tmp_path, text, message):
    source.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "roboflamingo_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_roboflamingo(tmp_path / "ckpt")
