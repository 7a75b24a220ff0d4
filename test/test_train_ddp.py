"""Multi-process fine-tuning: torchrun with 2 CPU processes (DDP, gloo) trains on disjoint
halves of every global batch, keeps both ranks' weights identical, lets only rank 0 write,
resumes, and ends where one process with the whole global batch ends."""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
from test_train_loop import make_dataset

from vla_policy_node.model import load_policy
from vla_policy_node.train.dataset import batch_indices
from vla_policy_node.train.loop import FINAL_DIR, LOG_FILE, STATE_DIR, TrainConfig, train
from vla_policy_node.train.recipe import LOG_JSONL

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ddp"))


def test_ranks_draw_disjoint_slices_of_the_global_batch() -> None:
    for step in range(40):  # 40 x 8 samples: several epochs of 37 frames, and their seams
        whole = batch_indices(37, 8, seed=3, step=step)
        ranks = [batch_indices(37, 2, seed=3, step=step, rank=r, world=4) for r in range(4)]
        np.testing.assert_array_equal(np.concatenate(ranks), whole)
    epoch = np.concatenate([batch_indices(37, 1, 3, i, r, 2) for i in range(37) for r in (0, 1)])
    # Every frame once per epoch (37 frames = the first 37 positions), no rank repeats another.
    assert sorted(epoch[:37]) == list(range(37))
    with pytest.raises(ValueError):
        batch_indices(37, 2, 0, 0, rank=2, world=2)


def torchrun(dataset_dir: Path, out: Path, logs: Path, steps: int) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "--log-dir", str(logs), "--redirects", "3",
            "-m", "vla_policy_node.tools.finetune", str(dataset_dir), "--out", str(out),
            "--steps", str(steps), "--batch-size", "1", "--grad-accumulation", "2",
            "--lora-rank", "4", "--lora-alpha", "8", "--lr", "2e-3", "--save-every", "2",
            "--val-every", "2", "--val-batches", "2", "--no-augment", "--device", "cpu", "-q"]
    # Own process group: on a hang, kill torchrun and its workers, not only torchrun.
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        ranks = "".join(f"--- rank {r}:\n{rank_output(logs, r)[-3000:]}" for r in (0, 1)
                        if list(logs.glob(f"*/attempt_0/{r}")))
        pytest.fail(f"torchrun did not finish in 180 s\n{stderr[-3000:]}\n{ranks}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def rank_output(logs: Path, rank: int) -> str:
    """What one rank printed: torchrun --redirects writes LOGS/<run>/attempt_0/<rank>/."""
    [directory] = logs.glob(f"*/attempt_0/{rank}")
    return (directory / "stdout.log").read_text() + (directory / "stderr.log").read_text()


@pytest.mark.timeout(420)  # two torchruns of at most 180 s each, then clean-up
def test_torchrun_two_cpu_processes(dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    first = torchrun(dataset_dir, out, tmp_path / "logs1", steps=2)
    assert first.returncode == 0, first.stdout + first.stderr
    # More steps on the same OUT: every rank continues from the state rank 0 picked.
    second = torchrun(dataset_dir, out, tmp_path / "logs2", steps=4)
    assert second.returncode == 0, second.stdout + second.stderr

    rank0, rank1 = (rank_output(tmp_path / "logs2", r) for r in (0, 1))
    assert re.findall(r"^step (\d+) loss", rank0, re.M) == ["3", "4"], rank0
    assert "resumed from step 2" in rank0 and "checkpoint:" in rank0
    # Rank 1 trains silently: no progress, no INFO log, nothing written.
    assert "step " not in rank1 and "INFO" not in rank1 and "checkpoint" not in rank1, rank1
    # The image cache is built by rank 0 alone (the others wait, then map it); one log.
    assert {p.name for p in out.iterdir()} == {FINAL_DIR, LOG_FILE, STATE_DIR, LOG_JSONL,
                                               "image_cache"}
    assert len(list((out / "image_cache").glob("images_*.npy"))) == 2  # train and val
    assert not list((out / "image_cache").glob(".*.tmp"))
    assert sorted(p.name for p in (out / STATE_DIR).iterdir()) == [
        "step_00000002.pt", "step_00000004.pt"]

    log = json.loads((out / LOG_FILE).read_text())
    assert log["world_size"] == 2 and log["resumed_from"] == 2
    [fingerprint] = set(log["rank_weights_sha256"])  # both ranks hold the same bytes
    assert len(log["rank_weights_sha256"]) == 2 and len(fingerprint) == 64
    assert set(log["val_losses"]) == {"2", "4"}

    # One process with the global batch (2 per micro-batch) draws the samples both ranks drew
    # together, so it ends at the same losses and weights: the ranks saw different samples.
    single = train(TrainConfig(
        data_dir=str(dataset_dir), output_dir=str(tmp_path / "single"), steps=4,
        batch_size=2, grad_accumulation=2, lora_rank=4, lora_alpha=8, lr=2e-3, save_every=0,
        val_every=0, augment=False))
    np.testing.assert_allclose(log["losses"], single.losses, rtol=1e-4)
    weights = load_file(out / FINAL_DIR / "model.safetensors")
    reference = load_file(single.checkpoint / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)

    policy = load_policy(out / FINAL_DIR)
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 255, (32, 40, 3), np.uint8)
              for name in policy.camera_names}
    result = policy.infer(images, np.zeros(14, np.float32), "pick up the cube")
    assert result.actions.shape == (25, 14) and np.all(np.isfinite(result.actions))
