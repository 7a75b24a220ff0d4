"""vla-finetune as a user runs it: stopped by SIGTERM it leaves a checkpoint (not only a resume
state) and its running log; --eval-every evaluates in the simulator and keeps the best."""

from __future__ import annotations

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from test_train_loop import make_dataset
from vla_policy_node.train.recipe import lr_factor, LOG_JSONL, PROVENANCE_FILE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("stop"))


def _finetune(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vla_policy_node.tools.finetune", *argv],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _log(out: Path) -> list[dict]:
    path = out / LOG_JSONL
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_sigterm_saves_a_checkpoint_and_the_log(dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = _finetune(str(dataset_dir), "--out", str(out), "--steps", "100000", "--batch-size",
                    "1", "--save-every", "0", "--val-every", "0", "--no-cache-images",
                    "--threads", "1", "-q")
    try:
        deadline = time.monotonic() + 240
        while len([r for r in _log(out) if "loss" in r]) < 2:
            assert run.poll() is None, run.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no training steps logged"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM" in output
    records = _log(out)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # written as it went, one line a step
    assert all(r["samples_per_second"] > 0 for r in records if "loss" in r)
    [checkpoint] = [r for r in records if r.get("event") == "checkpoint"]
    assert checkpoint["interrupted"] is True and checkpoint["step"] == steps[-1]
    provenance = json.loads((out / "checkpoint" / PROVENANCE_FILE).read_text())
    assert provenance["step"] == steps[-1] and provenance["settings"]["lora_rank"] == 0
    assert (out / "train_state" / f"step_{steps[-1]:08d}.pt").is_file()
    from vla_policy_node.model import load_policy
    load_policy(str(out / "checkpoint"))  # the deployable result loads


def test_eval_every_keeps_the_best_checkpoint(dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = _finetune(str(dataset_dir), "--out", str(out), "--steps", "2", "--batch-size", "1",
                    "--val-every", "0", "--no-cache-images", "--eval-every", "2",
                    "--eval-episodes", "1", "--eval-max-steps", "10", "-q")
    output = run.communicate(timeout=400)[0]
    assert run.returncode == 0, output[-3000:]
    report = json.loads((out / "best_checkpoint" / "eval.json").read_text())
    assert report["step"] == 2 and report["episodes"] == 1 and report["seeds"] == [1_000_000]
    assert (out / "best_checkpoint" / PROVENANCE_FILE).is_file()
    [evaluation] = [r for r in _log(out) if r.get("event") == "eval"]
    assert evaluation["step"] == 2 and evaluation["success_rate"] == report["success_rate"]
    assert "best checkpoint:" in output


def test_schedules():
    assert [lr_factor(s, "step", 0, 10, 5) for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]
    assert [lr_factor(s, "step", 4, 10, 0) for s in (0, 1, 3, 4)] == [0.25, 0.5, 1.0, 1.0]
    cosine = [lr_factor(s, "cosine", 2, 12, 0) for s in range(13)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:]))  # decreasing after warm-up


def test_demo_seeds_from_bag_names_and_the_sim_demos_index(tmp_path: Path) -> None:
    import h5py
    from vla_policy_node.train.recipe import demo_seeds
    bags = tmp_path / "bags"
    bags.mkdir()
    (bags / "sim_seeds.json").write_text(json.dumps({"episode_3_20260101": 17}))
    paths = []
    for i, source in enumerate([tmp_path / "direct" / "transfer_cube_seed0042",
                                bags / "episode_3_20260101", bags / "episode_9_unknown"]):
        paths.append(tmp_path / f"e{i}.hdf5")
        with h5py.File(paths[-1], "w") as f:
            f.attrs["source_bag"] = str(source)
    assert demo_seeds(paths) == [17, 42]
