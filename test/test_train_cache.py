"""The training image cache: frames decoded and resized once give byte-identical batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_train_loop import make_dataset
from vla_policy_node.model import load_policy
from vla_policy_node.train.dataset import (EpisodeDataset, from_cached_stage, ImageCache,
                                           split_episodes)
from vla_policy_node.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def policy():
    return load_policy(None, preset="tiny", seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: building it runs the whole image chain on every frame."""
    return tmp_path_factory.mktemp("image_cache")


def _datasets(dataset_dir: Path, policy) -> tuple[EpisodeDataset, EpisodeDataset]:
    paths, _ = split_episodes(dataset_dir, 0)
    return tuple(EpisodeDataset(paths, policy.camera_names, policy.chunk_length,
                                policy.action_dim) for _ in range(2))


@pytest.mark.parametrize("augment", [False, True])
def test_cached_batches_are_byte_identical(dataset_dir, policy, cache_dir, augment):
    from vla_policy_node.data.stats import STATISTICS_FILE
    import json
    policy.set_statistics(json.loads((dataset_dir / STATISTICS_FILE).read_text()))
    plain, cached = _datasets(dataset_dir, policy)
    cached.image_cache = ImageCache.build(cached, policy.processor, cache_dir)
    processor = from_cached_stage(policy.processor)
    indices = [0, 5, len(plain) - 1, 17]
    a, b = plain.batch(indices), cached.batch(indices)
    size = policy.processor.config.image_size
    assert all(img.shape == (size, size, 3) for sample in b["images"] for img in sample.values())
    batch_a = policy.processor.build_training_batch(
        a["images"], a["proprio"], a["actions"], a["instructions"], augment=augment,
        generator=np.random.default_rng(7))
    batch_b = processor.build_training_batch(
        b["images"], b["proprio"], b["actions"], b["instructions"], augment=augment,
        generator=np.random.default_rng(7))
    assert batch_a.keys() == batch_b.keys()
    for key in batch_a:
        assert torch.equal(batch_a[key], batch_b[key]), key
    plain.close()
    cached.close()


def test_cache_is_keyed_by_files_and_settings(dataset_dir, policy, cache_dir):
    import copy
    import dataclasses
    dataset, _ = _datasets(dataset_dir, policy)
    first = ImageCache.build(dataset, policy.processor, cache_dir)
    assert ImageCache.build(dataset, policy.processor, cache_dir).path == first.path  # reused
    other = copy.copy(policy.processor)  # another preprocessing: another cache
    other.config = dataclasses.replace(policy.processor.config,
                                       resize_size=policy.processor.config.resize_size + 8)
    assert ImageCache.path_for(dataset, other, cache_dir) != first.path
    assert not list(cache_dir.glob(".*.tmp"))  # built through a temporary name


def test_training_with_the_cache_equals_training_without(dataset_dir, tmp_path):
    def run(out: str, cache: bool):
        return train(TrainConfig(data_dir=str(dataset_dir), output_dir=str(tmp_path / out),
                                 steps=2, batch_size=2, lora_rank=0, lr=1e-3, save_every=0,
                                 val_every=0, val_episodes=1, cache_images=cache))
    with_cache, without = run("cached", True), run("plain", False)
    assert with_cache.losses == without.losses
    assert len(list((tmp_path / "cached" / "image_cache").glob("images_*.npy"))) == 2  # +val


def test_window_datasets_never_get_the_image_cache(dataset_dir, policy, tmp_path):
    # A history family's windows are read frame by frame by sample(): the cache must be
    # refused by the dataset itself, whatever the processor (OFT's is cacheable).
    from vla_policy_node.train.loop import _image_cache
    from vla_policy_node.train.windows import WindowDataset
    paths, _ = split_episodes(dataset_dir, 0)
    windows = WindowDataset(paths, policy.camera_names, 2, 1, policy.chunk_length,
                            policy.action_dim)
    assert EpisodeDataset.supports_image_cache and not windows.supports_image_cache
    config = TrainConfig(data_dir=str(dataset_dir), output_dir=str(tmp_path),
                         cache_images=True, cache_dir=str(tmp_path / "cache"))
    assert _image_cache(policy, config, tmp_path, 0, 1, [windows]) is policy.processor
    assert windows.image_cache is None and not (tmp_path / "cache").exists()
