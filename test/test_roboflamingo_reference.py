"""Our RoboFlamingo modules against outputs of the official ones (test/data/
roboflamingo_reference: produced by running open_flamingo / RoboFlamingo code, not ours)."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_policy_node.model.roboflamingo import get_preset
from vla_policy_node.model.roboflamingo.modeling_roboflamingo import (
    GatedCrossAttentionBlock, PerceiverResampler, PolicyHead)
from vla_policy_node.model.roboflamingo.policy_roboflamingo import HeadHistory

DATA = Path(__file__).parent / "data" / "roboflamingo_reference"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("make_reference", DATA / "make_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)       # defines the weight recipe; imports nothing official
    expected = np.load(DATA / "expected.npz")
    inputs = module.inputs()
    for name, value in inputs.items():    # the recipe still draws the inputs of the file
        np.testing.assert_array_equal(value.numpy(), expected[name])
    return module.reference_weights, inputs, expected


def _load(module, weights):
    state = module.state_dict()
    module.load_state_dict(weights(state), strict=True)
    return module.eval()


def test_perceiver_matches_open_flamingo(ref):
    weights, x, expected = ref
    ours = _load(PerceiverResampler(32, 2, 8, 4, 6, 4), weights)
    with torch.no_grad():
        out = ours(x["perceiver_x"]).numpy()
    np.testing.assert_allclose(out, expected["perceiver_out"], atol=2e-6)


def test_gated_cross_attention_matches_open_flamingo(ref):
    weights, x, expected = ref
    ours = _load(GatedCrossAttentionBlock(24, 32, 8, 2, 4), weights)
    with torch.no_grad():
        out = ours(x["xattn_text"], x["xattn_media"], x["xattn_locations"]).numpy()
    np.testing.assert_allclose(out, expected["xattn_out"], atol=2e-6)


def _head():
    config = get_preset("tiny-roboflamingo")
    lm = dataclasses.asdict(config.lm) | {"hidden_size": 32}
    config = config.replace(lm=lm, window=4, action_dim=7, binary_gripper_dims=[6],
                            lstm_hidden=16, lstm_layers=4, lstm_dropout=0.0,
                            mlp_dims=[1024, 512, 256], camera_names=["static", "gripper"],
                            shift_pad=[10, 4])
    return PolicyHead(config)


def test_lstm_head_training_path_matches_roboflamingo(ref):
    """Max-pool over all tokens, LSTM over the window from zero, Tanh / Sigmoid heads."""
    weights, x, expected = ref
    head = _load(_head(), weights)
    with torch.no_grad():
        pooled = x["head_window"].max(dim=1).values.view(2, 4, 32)
        cont, grip, _ = head(pooled)
    np.testing.assert_allclose(cont[:, :, 0].numpy(), expected["head_window_pose"], atol=2e-6)
    np.testing.assert_allclose(torch.sigmoid(grip[:, :, 0]).numpy(),
                               expected["head_window_gripper"], atol=2e-6)


def test_history_rule_matches_roboflamingo_eval(ref):
    """One frame per call for 9 calls with window 4: carried state, then the refresh."""
    weights, x, expected = ref
    history = HeadHistory(_load(_head(), weights), 4)
    outs = [history.step(tokens.max(dim=0).values[None]) for tokens in x["head_steps"]]
    np.testing.assert_allclose(np.stack([c[0].numpy() for c, _ in outs]),
                               expected["head_steps_pose"], atol=2e-6)
    np.testing.assert_allclose(np.stack([g[0].numpy() for _, g in outs]),
                               expected["head_steps_gripper"], atol=2e-6)


def test_clip_tokens_match_open_clip_through_our_key_map(ref):
    """open_clip's ViT (QuickGELU, output_tokens) as RoboFlamingo builds it: visual(x)[1], the
    raw patch tokens of the last block; ours: CLIPVisionModel loaded through our open_clip key
    map (in_proj split into q/k/v), last_hidden_state without CLS."""
    import json

    from vla_policy_node.model.roboflamingo.checkpoint_roboflamingo import map_open_clip
    from vla_policy_node.model.roboflamingo.configuration_roboflamingo import CLIPVisionSpec
    from vla_policy_node.model.roboflamingo.modeling_roboflamingo import build_vision_tower
    weights, x, expected = ref
    shapes = json.loads(str(expected["clip_state"]))
    official = weights({k: torch.empty(v) for k, v in shapes.items()})
    config = get_preset("tiny-roboflamingo").replace(
        vision=dataclasses.asdict(CLIPVisionSpec(width=32, depth=2, heads=2, mlp_dim=64,
                                                 image_size=56)))
    tower = build_vision_tower(config).eval()
    prefix = "vision_model." if any(k.startswith("vision_model.")
                                    for k in tower.state_dict()) else ""
    state, ignored = {}, []
    for key, value in official.items():
        mapped, reason = map_open_clip(key, value, prefix)
        state.update(mapped)
        if not mapped:
            ignored.append((key, reason))
    assert ignored == [("proj", "CLIP projection (RoboFlamingo reads the raw patch tokens)")]
    tower.load_state_dict(state, strict=True)
    with torch.no_grad():
        tokens = tower(pixel_values=x["clip_pixels"]).last_hidden_state[:, 1:].numpy()
    np.testing.assert_allclose(tokens, expected["clip_tokens"], atol=2e-5)
