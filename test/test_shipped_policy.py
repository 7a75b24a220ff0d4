"""The policy shipped inside the package (vla_policy_node/pretrained/sim_transfer_cube): it loads
with its statistics and provenance, a damaged copy is refused with what is missing, and in the
simulator it reaches for the cube where random weights of the same model do not."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vla_policy_node import pretrained
from vla_policy_node.config import default_config_path, load_node_params, RobotConfig
from vla_policy_node.model.policy import load_policy
from vla_policy_node.pretrained import MissingPolicyError, shipped_policy_dir
from vla_policy_node.sim import AlohaSim, INSTRUCTIONS, SimConfig
from vla_policy_node.sim.rollout import run_policy_in_sim
from vla_policy_node.sim.scripted import DEMO_SEED_LIMIT, EVAL_SEED_START


@pytest.fixture(scope="module")
def policy_params() -> dict:
    return load_node_params(default_config_path(), "vla_policy")


@pytest.fixture(scope="module")
def shipped():
    return load_policy(shipped_policy_dir())


def test_the_shipped_policy_loads_with_statistics_and_provenance(shipped, policy_params):
    directory = shipped_policy_dir()
    assert shipped.family == "oft"
    assert list(shipped.camera_names) == list(policy_params["cameras.names"])
    assert (shipped.chunk_length, shipped.action_dim, shipped.proprio_dim) == (25, 14, 14)
    assert shipped.processor.statistics is not None  # un-normalizes to the demonstrations' range
    provenance = json.loads((directory / "training_provenance.json").read_text())
    seeds = provenance["demo_seeds"]
    assert seeds and max(seeds) < DEMO_SEED_LIMIT <= EVAL_SEED_START  # evaluation is held out
    assert provenance["step"] > 0
    readme = (directory / "README.md").read_text()
    assert "held-out" in readme and "vla-finetune" in readme
    size = sum(p.stat().st_size for p in directory.iterdir())
    assert size < 40e6  # "tens of MB at most"


def test_a_damaged_copy_is_refused_with_what_is_missing(tmp_path, monkeypatch):
    copy = tmp_path / "sim_transfer_cube"
    shutil.copytree(shipped_policy_dir(), copy)
    (copy / "dataset_statistics.json").unlink()
    monkeypatch.setitem(pretrained.SHIPPED, pretrained.DEFAULT_POLICY, copy)
    with pytest.raises(MissingPolicyError, match="dataset_statistics.json"):
        shipped_policy_dir()
    with pytest.raises(MissingPolicyError, match="no shipped policy 'nope'"):
        shipped_policy_dir("nope")


def test_python_m_prints_the_directory_for_launch_arguments(capsys):
    from vla_policy_node.pretrained.__main__ import main
    assert main([]) == 0
    assert capsys.readouterr().out.strip() == str(shipped_policy_dir())
    assert main(["nope"]) == 1
    assert "no shipped policy 'nope'" in capsys.readouterr().err


#: Held-out placements of the closed-loop check and its length (5 s of the 8 s episode: the
#: demonstrations reach the cube after ~3 s).
CHECK_SEEDS = range(EVAL_SEED_START, EVAL_SEED_START + 6)
CHECK_STEPS = 250
#: Mean over CHECK_SEEDS of the closest approach of the right fingers to the cube. Measured
#: when the policy was shipped: 0.11 m (the fingers at the cube in 3 of 6, the cube pushed or
#: lifted in 2), random weights of the same model 0.23 m (the arms swing to a fixed pose).
REACHES_CUBE = 0.15


def _reach(policy) -> tuple[float, int]:
    """(mean closest right-finger-to-cube distance, episodes that moved the cube > 1 cm)."""
    params = load_node_params(default_config_path(), "sim_aloha")
    camera_map = dict(zip(params["cameras.names"], params["cameras.sim_names"]))
    step_period = load_node_params(default_config_path(), "vla_policy")["step_period"]
    robot = RobotConfig.from_params(params)
    closest, moved = [], 0
    with AlohaSim(robot, SimConfig(camera_height=params["camera_height"],
                                   camera_width=params["camera_width"])) as sim:
        for seed in CHECK_SEEDS:
            sim.reset("transfer_cube", seed=seed)
            trace = run_policy_in_sim(policy, sim, INSTRUCTIONS["transfer_cube"], CHECK_STEPS,
                                      camera_map, step_period, execute_steps=10)
            closest.append(trace.gripper_object_distance[:, 1].min())
            moved += int(trace.object_displacement.max() > 0.01)
    return float(np.mean(closest)), moved


def test_the_shipped_policy_reaches_for_the_cube_where_random_weights_do_not(shipped):
    """The issue's check that fails for random weights: in short held-out episodes the right
    gripper closes in on the cube and moves it; the same model with random weights does
    neither (so a shipped file that lost its training, or stats that un-normalize wrongly,
    fail here)."""
    distance, moved = _reach(shipped)
    random_distance, random_moved = _reach(load_policy(None, preset="sim-s"))
    assert distance < REACHES_CUBE <= random_distance, (distance, random_distance)
    assert moved >= 1 and random_moved == 0, (moved, random_moved)
