"""Fine-tuning on converted synthetic bags: the loss goes down; a resumed run is exact, also
after a kill while saving; bf16 autocast on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
import torch

from vla_policy_node.data.convert import convert_bags
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag
from vla_policy_node.train.dataset import DatasetError, EpisodeDataset, split_episodes
from vla_policy_node.train.loop import STATE_DIR, TrainConfig, train

torch.set_num_threads(1)


def make_dataset(root: Path) -> Path:
    """Three converted synthetic episodes of 1.5 s at 32x40 (shared by the test_train_* files)."""
    spec = DataSpec.from_file()
    bags = [write_episode_bag(root / "bags" / f"ep{i}", spec,
                              SyntheticEpisode(seed=i, duration=1.5, image_size=(32, 40)))
            for i in range(3)]
    reports = convert_bags(bags, spec, root / "data")
    assert all(r.status == "converted" for r in reports)
    return root / "data"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("train"))


def config(dataset_dir: Path, out: Path, **kw) -> TrainConfig:
    values = dict(data_dir=str(dataset_dir), output_dir=str(out), steps=100, batch_size=2,
                  lora_rank=0, lr=1e-3, save_every=3, val_every=0, val_episodes=1)
    values.update(kw)
    return TrainConfig(**values)


def test_training_loss_goes_down(dataset_dir: Path, tmp_path: Path) -> None:
    result = train(config(dataset_dir, tmp_path, batch_size=4, save_every=0, val_every=16,
                          val_batches=1), stop_after=16)
    losses = np.array(result.losses)
    assert len(losses) == 16 and np.all(np.isfinite(losses))
    assert losses[-4:].mean() < 0.8 * losses[:4].mean(), losses
    assert set(result.val_losses) == {16}


@pytest.mark.parametrize("settings", [
    {},
    # Random draws inside the step: diffusion noise and timesteps, LoRA dropout.
    {"preset": "tiny-diffusion", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.2},
], ids=["l1", "diffusion-dropout"])
def test_resume_after_interruption_repeats_the_same_steps(dataset_dir: Path, tmp_path: Path,
                                                          settings: dict) -> None:
    straight = train(config(dataset_dir, tmp_path / "a", **settings), stop_after=5)
    # The interrupted run saved a state at step 3 (save_every) and died at step 4.
    first = train(config(dataset_dir, tmp_path / "b", **settings), stop_after=4)
    assert [p.name for p in (tmp_path / "b" / STATE_DIR).glob("step_*.pt")] == [
        "step_00000003.pt"]
    resumed = train(config(dataset_dir, tmp_path / "b", **settings), stop_after=5)
    assert resumed.resumed_from == 3
    assert resumed.losses[:3] == first.losses[:3]
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException: no handler catches it)."""


def test_kill_while_saving_leaves_no_state_that_resume_would_pick(
        dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    straight = train(config(dataset_dir, tmp_path / "straight"), stop_after=5)
    train(config(dataset_dir, out), stop_after=3)  # state 3 (save_every)

    def save_and_die(obj: object, stream, *args, **kwargs) -> None:
        stream.write(b"PK\x03\x04 the first bytes of a state")
        raise Killed

    monkeypatch.setattr(torch, "save", save_and_die)
    with pytest.raises(Killed):
        train(config(dataset_dir, out), stop_after=6)  # dies in the middle of saving state 6
    monkeypatch.undo()
    states = out / STATE_DIR
    assert sorted(p.name for p in states.iterdir()) == [".step_00000006.pt.tmp",
                                                       "step_00000003.pt"]
    resumed = train(config(dataset_dir, out), stop_after=5)
    assert resumed.resumed_from == 3
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)
    assert sorted(p.name for p in states.iterdir()) == ["step_00000003.pt"]  # tmp removed

    # A damaged newest state (a disk that lost data; kills cannot make one) is skipped.
    (states / "step_00000006.pt").write_bytes(b"not a state")
    with caplog.at_level(logging.WARNING, logger="vla_policy_node.train.loop"):
        assert train(config(dataset_dir, out), stop_after=4).resumed_from == 3
    assert "cannot read" in caplog.text and "step_00000006.pt" in caplog.text


def test_bf16_autocast_on_cpu_keeps_float32_weights(dataset_dir: Path, tmp_path: Path) -> None:
    fp32 = train(config(dataset_dir, tmp_path / "fp32", steps=8, lora_rank=4, lora_alpha=8,
                        lr=3e-3, batch_size=4, save_every=0, bf16=False), stop_after=2)
    bf16 = train(config(dataset_dir, tmp_path / "bf16", steps=10, lora_rank=4, lora_alpha=8,
                        lr=3e-3, batch_size=4, save_every=0, bf16=True))
    losses = np.array(bf16.losses)
    assert len(losses) == 10 and np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.8 * losses[:3].mean(), losses
    # Autocast really ran (bf16 rounding shows in the loss) and stayed close to float32.
    assert bf16.losses[:2] != fp32.losses[:2]
    np.testing.assert_allclose(bf16.losses[:2], fp32.losses[:2], rtol=0.05)
    weights = load_file(bf16.checkpoint / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    [state_path] = (tmp_path / "bf16" / STATE_DIR).glob("step_*.pt")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state["model"].values()} == {torch.float32}
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items()
               if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {t.dtype for t in moments} == {torch.float32}


def test_dataset_errors(dataset_dir: Path) -> None:
    train_paths, val_paths = split_episodes(dataset_dir, 1)
    assert len(train_paths) == 2 and len(val_paths) == 1
    with pytest.raises(DatasetError, match="cannot hold out 3 of 3"):
        split_episodes(dataset_dir, 3)
    with pytest.raises(DatasetError, match=r"cameras \['cam_low'\] missing"):
        EpisodeDataset(train_paths, ["cam_high", "cam_low"], 25, 14)
    with pytest.raises(DatasetError, match="action dimension 14, the model needs 7"):
        EpisodeDataset(train_paths, ["cam_high"], 8, 7)
    dataset = EpisodeDataset(train_paths, ["cam_high"], 25, 14)
    sample = dataset.sample(len(dataset) - 1)  # last frame: window padded with its action
    assert sample["actions"].shape == (25, 14)
    np.testing.assert_array_equal(sample["actions"][0], sample["actions"][-1])
    dataset.close()
