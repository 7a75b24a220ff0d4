"""vla-finetune killed with SIGKILL as a separate process and started again ends exactly where
an uninterrupted run ends (losses, validation losses, weights)."""

from __future__ import annotations

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time
from typing import Iterator

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
from test_train_loop import make_dataset

from vla_policy_node.train.loop import FINAL_DIR, LOG_FILE, STATE_DIR

SAVE_EVERY = 2
STEPS = 8


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("kill"))


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Child processes of a test; whatever still runs when it ends is killed."""
    children: list[subprocess.Popen] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def finetune(dataset_dir: Path, out: Path, log: Path) -> subprocess.Popen:
    """The real CLI in its own process. Augmentation, validation and gradient accumulation
    are on: their random streams must continue exactly after a resume, too."""
    argv = [sys.executable, "-m", "vla_policy_node.tools.finetune", str(dataset_dir),
            "--out", str(out), "--steps", str(STEPS), "--batch-size", "1",
            "--grad-accumulation", "2", "--lora-rank", "4", "--lora-alpha", "8",
            "--lr", "2e-3", "--save-every", str(SAVE_EVERY), "--keep-states", "2",
            "--val-every", "4", "--val-batches", "1", "--threads", "1", "--device", "cpu",
            "-q"]
    with open(log, "wb") as stream:
        return subprocess.Popen(argv, stdout=stream, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def state_steps(out: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (out / STATE_DIR).glob("step_*.pt"))


def test_sigkilled_run_resumes_to_the_same_result(dataset_dir: Path, tmp_path: Path,
                                                  processes: list[subprocess.Popen]) -> None:
    out = tmp_path / "killed"
    victim = finetune(dataset_dir, out, tmp_path / "victim.log")
    processes.append(victim)
    # States appear by rename, complete: kill the moment the first one is there. How far the
    # victim got past it (another state, half of one) does not matter to the result.
    while not state_steps(out):
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    assert not (out / FINAL_DIR).exists() and not (out / LOG_FILE).exists()
    saved = state_steps(out)
    assert saved and SAVE_EVERY <= saved[-1] < STEPS, saved

    # The uninterrupted run and the resumed one share the 2 cores (both single-threaded).
    straight = finetune(dataset_dir, tmp_path / "straight", tmp_path / "straight.log")
    again = finetune(dataset_dir, out, tmp_path / "again.log")
    processes += [straight, again]
    assert again.wait(timeout=300) == 0, (tmp_path / "again.log").read_text()
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()
    output = (tmp_path / "again.log").read_text()
    assert f"resumed from step {saved[-1]}" in output, output
    assert re.findall(r"^step (\d+) loss", output, re.M) == [
        str(step) for step in range(saved[-1] + 1, STEPS + 1)], output

    expected = json.loads((tmp_path / "straight" / LOG_FILE).read_text())
    resumed = json.loads((out / LOG_FILE).read_text())
    assert resumed["resumed_from"] == saved[-1]
    assert len(resumed["losses"]) == STEPS
    np.testing.assert_allclose(resumed["losses"], expected["losses"], rtol=1e-5)
    assert set(resumed["val_losses"]) == {"4", "8"}
    np.testing.assert_allclose([resumed["val_losses"][k] for k in ("4", "8")],
                               [expected["val_losses"][k] for k in ("4", "8")],
                               rtol=1e-5)
    weights = load_file(out / FINAL_DIR / "model.safetensors")
    reference = load_file(tmp_path / "straight" / FINAL_DIR / "model.safetensors")
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    # A save cut by the kill leaves at most a temporary file, which the resume removed.
    assert not list((out / STATE_DIR).glob(".*"))
