"""Fine-tuning on converted synthetic bags: the loss goes down; a resumed run is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vla_policy_node.data.convert import convert_bags
from vla_policy_node.data.spec import DataSpec
from vla_policy_node.data.synthetic import SyntheticEpisode, write_episode_bag
from vla_policy_node.train.dataset import DatasetError, EpisodeDataset, split_episodes
from vla_policy_node.train.loop import STATE_DIR, TrainConfig, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    spec = DataSpec.from_file()
    bags = [write_episode_bag(root / "bags" / f"ep{i}", spec,
                              SyntheticEpisode(seed=i, duration=1.5, image_size=(32, 40)))
            for i in range(3)]
    reports = convert_bags(bags, spec, root / "data")
    assert all(r.status == "converted" for r in reports)
    return root / "data"


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


def test_resume_after_interruption_repeats_the_same_steps(dataset_dir: Path,
                                                          tmp_path: Path) -> None:
    straight = train(config(dataset_dir, tmp_path / "a"), stop_after=5)
    # The interrupted run saved a state at step 3 (save_every) and died at step 4.
    first = train(config(dataset_dir, tmp_path / "b"), stop_after=4)
    assert [p.name for p in (tmp_path / "b" / STATE_DIR).glob("step_*.pt")] == [
        "step_00000003.pt"]
    resumed = train(config(dataset_dir, tmp_path / "b"), stop_after=5)
    assert resumed.resumed_from == 3
    assert resumed.losses[:3] == first.losses[:3]
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)


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
