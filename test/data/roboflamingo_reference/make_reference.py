"""Write expected.npz: outputs of the OFFICIAL open_flamingo / RoboFlamingo modules.

Run against the official sources (not part of this project, not imported by the tests):
    open_flamingo @655f693: open_flamingo/src/helpers.py
    RoboFlamingo @1475a07:  robot_flamingo/models/action_head.py (+ normalizer.py; zarr and
                            trajectory_gpt2 stubbed: unused by DeterministicDecoder)
    open_clip v2.20.0:      src/open_clip/transformer.py (utils.to_2tuple without torchvision)
with einops 0.8.1 and einops-exts 0.0.4 on PYTHONPATH:
    PYTHONPATH=<deps>:<official sources> python make_reference.py
Weights come from ``reference_weights`` (a seeded tensor per parameter name), so the test can
build the same weights for our modules from the names alone; inputs are seeded too.
"""

import json
import zlib

import numpy as np
import torch


def reference_weights(state: dict) -> dict:
    """A seeded tensor per parameter name (same recipe in the test)."""
    out = {}
    for name in sorted(state):
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        out[name] = torch.randn(state[name].shape, generator=generator) * 0.2
    return out


def inputs() -> dict:
    g = torch.Generator().manual_seed(1234)
    locations = torch.zeros(2, 7, dtype=torch.bool)
    locations[0, 0] = True
    locations[1, 3] = True            # tokens 0-2 of row 1 come before <image>
    return {"perceiver_x": torch.randn(3, 10, 32, generator=g),
            "xattn_text": torch.randn(2, 7, 24, generator=g),
            "xattn_media": torch.randn(2, 5, 32, generator=g),
            "xattn_locations": locations,
            # LM token features (frames, tokens, D): the head max-pools over the tokens.
            "head_steps": torch.randn(9, 5, 32, generator=g),
            "head_window": torch.randn(2 * 4, 5, 32, generator=g),
            "clip_pixels": torch.randn(2, 3, 56, 56, generator=g)}


def main() -> None:
    from open_clip.transformer import QuickGELU, VisionTransformer
    from open_flamingo.src.helpers import GatedCrossAttentionBlock, PerceiverResampler
    from robot_flamingo.models.action_head import DeterministicDecoder
    x = inputs()
    out = {k: v.numpy() for k, v in x.items()}
    with torch.no_grad():
        perceiver = PerceiverResampler(dim=32, depth=2, dim_head=8, heads=4,
                                       num_latents=6).eval()
        perceiver.load_state_dict(reference_weights(perceiver.state_dict()))
        out["perceiver_out"] = perceiver(x["perceiver_x"][:, None, None])[:, 0].numpy()
        xattn = GatedCrossAttentionBlock(dim=24, dim_visual=32, dim_head=8, heads=2).eval()
        xattn.load_state_dict(reference_weights(xattn.state_dict()))
        out["xattn_out"] = xattn(x["xattn_text"], x["xattn_media"][:, None],
                                 media_locations=x["xattn_locations"]).numpy()
        head = DeterministicDecoder(32, 4, out_features=6, hidden_size=16, num_layers=4,
                                    policy_rnn_dropout_p=0.0).eval()
        head.load_state_dict(reference_weights(head.state_dict()))
        pose, grip = head(x["head_window"])        # training path: 2 windows of W = 4 frames
        out["head_window_pose"], out["head_window_gripper"] = pose.numpy(), grip.numpy()
        head.window_size = 1                                  # the eval's per-step path
        head.hidden_state, head.history_memory = None, []     # the eval's reset()
        steps = [head(f[None]) for f in x["head_steps"]]   # one frame per call
        out["head_steps_pose"] = np.stack([p[0, -1].numpy() for p, _ in steps])
        out["head_steps_gripper"] = np.stack([g[0, -1].numpy() for _, g in steps])
        # open_clip's ViT as RoboFlamingo builds it (QuickGELU, output_tokens): visual(x)[1]
        # = the patch tokens of the last block, no CLS, no ln_post, no proj.
        visual = VisionTransformer(56, 14, 32, 2, 2, 2.0, output_dim=16, act_layer=QuickGELU,
                                   output_tokens=True).eval()
        clip_weights = reference_weights(visual.state_dict())
        visual.load_state_dict(clip_weights)
        out["clip_tokens"] = visual(x["clip_pixels"])[1].numpy()
        # open_clip's parameter names and shapes, for the test to rebuild the same weights.
        out["clip_state"] = np.array(json.dumps(
            {k: list(v.shape) for k, v in visual.state_dict().items()}))
    np.savez_compressed("expected.npz", **out)


if __name__ == "__main__":
    main()
