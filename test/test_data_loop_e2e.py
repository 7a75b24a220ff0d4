"""The whole data loop on the tiny preset: synthetic bags -> vla-convert -> LoRA fine-tuning
(vla-finetune CLI) -> checkpoint -> load_policy -> the vla_policy node serving it over DDS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from test_policy_node import FakeRobot, policy_node_argv

from vla_policy_node.data.convert import convert_bags
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag
from vla_policy_node.model import load_policy
from vla_policy_node.tools.finetune import main as finetune_main

torch.set_num_threads(1)


def test_bags_to_finetuned_checkpoint_to_node(tmp_path: Path, spawn, rclpy_context) -> None:
    spec = DataSpec.from_file()
    bags = [write_episode_bag(tmp_path / "bags" / f"ep{i}", spec,
                              SyntheticEpisode(seed=i, duration=1.5, image_size=(32, 40)))
            for i in range(3)]
    reports = convert_bags(bags, spec, tmp_path / "data")
    assert [r.status for r in reports] == ["converted"] * 3, reports

    out = tmp_path / "run"
    rc = finetune_main([str(tmp_path / "data"), "--out", str(out), "--steps", "30",
                        "--batch-size", "4", "--lora-rank", "4", "--lora-alpha", "8",
                        "--lr", "2e-3", "--save-every", "0", "--val-every", "0",
                        "--no-augment", "--threads", "1", "--device", "cpu", "-q"])
    assert rc == 0
    losses = np.array(json.loads((out / "training_log.json").read_text())["losses"])
    assert len(losses) == 30 and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses

    checkpoint = out / "checkpoint"
    policy = load_policy(checkpoint)
    assert policy.processor.statistics is not None  # the dataset's, for un-normalization
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 255, (32, 40, 3), np.uint8)
              for name in policy.camera_names}
    result = policy.infer(images, np.zeros(14, np.float32), "pick up the cube")
    assert result.actions.shape == (25, 14) and np.all(np.isfinite(result.actions))

    robot = FakeRobot(rclpy_context)
    try:
        node = spawn(policy_node_argv(tmp_path, checkpoint=str(checkpoint),
                                      trigger="fixed_rate", inference_rate_hz=4.0,
                                      max_observation_age=5.0), name="vla_policy")
        assert robot.run_until(lambda: len(robot.chunks) >= 1, 60.0,
                               say="pick up the cube"), node.output()
        msg = robot.chunks[0]
        assert (msg.chunk_length, msg.action_dim) == (25, 14)
        assert np.all(np.isfinite(msg.actions))
    finally:
        robot.close()
