"""RoboFlamingo through the fine-tuning loop: windows, the loss goes down with only the
released set trained, exact resume, and the result is a checkpoint the node can load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_train_loop import make_dataset
import torch

from vla_policy_node.data.episodes import action_window, Episode, list_episodes
from vla_policy_node.model import load_policy
from vla_policy_node.model.roboflamingo import build_roboflamingo, get_preset
from vla_policy_node.train.dataset import DatasetError
from vla_policy_node.train.loop import STATE_DIR, TrainConfig, train
from vla_policy_node.train.windows import WindowDataset

torch.set_num_threads(1)
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("rf_train"))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoboFlamingo with a short window (CPU time), in our format."""
    directory = tmp_path_factory.mktemp("rf_base") / "base"
    config = get_preset("tiny-roboflamingo").replace(window=4, lstm_dropout=0.0)
    build_roboflamingo(config, seed=0).save_pretrained(directory)
    return directory


def config(dataset_dir: Path, base: Path, out: Path, **kw) -> TrainConfig:
    values = dict(data_dir=str(dataset_dir), output_dir=str(out), base=str(base), steps=100,
                  batch_size=2, lora_rank=32, lr=1e-3, weight_decay=0.1, save_every=3,
                  val_every=0, val_episodes=1)
    values.update(kw)
    return TrainConfig(**values)


def test_windows_fit_inside_episodes_and_carry_per_frame_chunks(dataset_dir: Path) -> None:
    paths = list_episodes(dataset_dir)
    data = WindowDataset(paths, CAMERAS, window=4, frame_stride=3, chunk_length=5,
                         action_dim=14)
    lengths = [len(Episode(p)) for p in paths]
    assert len(data) == sum(n - 9 for n in lengths)
    last = data.sample(len(data) - 1)
    episode = Episode(paths[-1])
    t = len(episode) - 10
    for i, frame in enumerate(range(t, t + 12, 3)):
        np.testing.assert_array_equal(last["actions"][i], action_window(episode.action, frame, 5))
        np.testing.assert_array_equal(last["images"][i]["cam_high"],
                                      episode.image("cam_high", frame))
    assert last["actions"].shape == (4, 5, 14) and len(last["images"]) == 4
    with pytest.raises(DatasetError, match="no episode holds a window"):
        WindowDataset(paths, CAMERAS, window=500, frame_stride=1, chunk_length=1,
                      action_dim=14)


def test_training_lowers_the_loss_and_trains_only_the_released_set(
        dataset_dir: Path, base: Path, tmp_path: Path) -> None:
    before = load_policy(str(base)).model.state_dict()
    result = train(config(dataset_dir, base, tmp_path, batch_size=4, steps=24, lr=3e-3,
                          save_every=0,
                          val_every=24, val_batches=1))
    losses = np.array(result.losses)
    assert len(losses) == 24 and np.all(np.isfinite(losses))
    assert losses[-4:].mean() < 0.8 * losses[:4].mean(), losses
    trained = load_policy(str(result.checkpoint))
    assert trained.family == "roboflamingo" and trained.config.window == 4
    after = trained.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("perceiver.") for k in changed)
    assert any(k.startswith("lang.xattn.") for k in changed)
    assert "lang.wte.weight" in changed and any(k.startswith("head.") for k in changed)
    frozen = [k for k in changed if k.startswith(("vision.", "lang.blocks.", "lang.ln_f"))]
    assert not frozen, frozen
    images = {c: np.zeros((32, 40, 3), np.uint8) for c in trained.camera_names}
    actions = trained.infer(images, None, "transfer the cube").actions
    assert actions.shape == (1, 14) and np.all(np.isfinite(actions))


def test_resume_after_interruption_repeats_the_same_steps(dataset_dir: Path, base: Path,
                                                          tmp_path: Path) -> None:
    straight = train(config(dataset_dir, base, tmp_path / "a"), stop_after=5)
    first = train(config(dataset_dir, base, tmp_path / "b"), stop_after=4)
    assert [p.name for p in (tmp_path / "b" / STATE_DIR).glob("step_*.pt")] == [
        "step_00000003.pt"]
    resumed = train(config(dataset_dir, base, tmp_path / "b"), stop_after=5)
    assert resumed.resumed_from == 3 and resumed.losses[:3] == first.losses[:3]
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)


@pytest.mark.timeout(300)
def test_torchrun_two_cpu_processes_match_one_process(dataset_dir: Path, base: Path,
                                                      tmp_path: Path) -> None:
    """DDP (gloo) with the family's hooks: two ranks with half the global batch end at the
    losses and weights of one process with the whole batch."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    from vla_policy_node.train.loop import FINAL_DIR, LOG_FILE
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "vla_policy_node.tools.finetune", str(dataset_dir), "--out", str(out),
            "--base", str(base), "--steps", "3", "--batch-size", "1", "--lr", "3e-3",
            "--weight-decay", "0.1", "--save-every", "0", "--val-every", "0", "--no-augment",
            "--device", "cpu", "-q"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun did not finish\n{stderr[-3000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    log = json.loads((out / LOG_FILE).read_text())
    assert log["world_size"] == 2 and len(set(log["rank_weights_sha256"])) == 1
    single = train(config(dataset_dir, base, tmp_path / "single", steps=3, lr=3e-3,
                          save_every=0, augment=False))
    np.testing.assert_allclose(log["losses"], single.losses, rtol=1e-4)
    weights = load_file(out / FINAL_DIR / "model.safetensors")
    for name, tensor in load_file(single.checkpoint / "model.safetensors").items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
