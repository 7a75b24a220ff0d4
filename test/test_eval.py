"""vla-eval: closed-loop evaluation through the real node set (sim_aloha, vla_policy,
chunk_executor over DDS on simulated time), its report, seeds and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
import sys

import pytest

from vla_policy_node.pretrained import DEFAULT_POLICY, shipped_policy_dir
from vla_policy_node.tools import eval as vla_eval

EPISODE_FIELDS = {"seed", "success", "max_reward", "time_to_success", "sim_seconds",
                  "wall_seconds", "chunks", "clamped_commands", "rejected_chunks",
                  "starved_ticks"}


def test_wilson_interval_matches_the_closed_form():
    # Reference values (statsmodels proportion_confint(method="wilson")).
    assert vla_eval.wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert vla_eval.wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    assert vla_eval.wilson_interval(8, 10) == pytest.approx((0.49016, 0.94333), abs=1e-4)
    assert vla_eval.wilson_interval(0, 0) == (0.0, 1.0)


def test_seeds_of_the_training_demonstrations_are_refused(tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / vla_eval.PROVENANCE_FILE).write_text(json.dumps({"demo_seeds": [3, 4, 5]}))
    with pytest.raises(SystemExit) as exit_info:
        vla_eval.main(["--checkpoint", str(checkpoint), "--seed-start", "4", "--episodes", "3"])
    assert exit_info.value.code == 2
    assert "[4, 5] were demonstration seeds" in capsys.readouterr().err
    note, overlap = vla_eval.seed_check(list(range(10, 12)), str(checkpoint))
    assert overlap == [] and "WARNING" in note  # below the demonstration range: warned
    note, overlap = vla_eval.seed_check([1_000_000], str(checkpoint))
    assert overlap == [] and "held-out" in note and "3 demonstration seeds" in note


@pytest.mark.parametrize("argv", [["--episodes", "0"], ["--max-steps", "0"],
                                  ["--seed-start", "-1"], ["--oracle", "--preset", "tiny"],
                                  ["--direct", "--oracle"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        vla_eval.main(argv)
    assert exit_info.value.code == 2


def _run(spawn, tmp_path: Path, *argv: str, timeout: float = 400) -> tuple[int, dict, str]:
    out = tmp_path / "eval"
    tool = spawn([sys.executable, "-m", "vla_policy_node.tools.eval", "--quiet",
                  "--output-dir", str(out), *argv], name="vla-eval")
    code = tool.process.wait(timeout=timeout)
    report = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    logs = {p.name: p.read_text()[-1500:] for p in (out / "logs").glob("*.log")}
    return code, report, f"{tool.output()[-4000:]}\n{logs}"


def test_default_policy_two_short_episodes(spawn, tmp_path):
    """Two 0.6 s episodes of the default (shipped) policy, too short to succeed: fields, seeds,
    media, exit status 0 on a zero score."""
    code, report, context = _run(spawn, tmp_path, "--episodes", "2", "--seed-start", "2000000",
                                 "--max-steps", "30", "--videos", "1")
    assert code == 0, context
    assert report["seeds"] == [2_000_000, 2_000_001], context
    assert report["episodes"] == 2 and report["policy"] == "checkpoint", context
    assert report["shipped_policy"] == DEFAULT_POLICY, context
    assert report["checkpoint"] == str(shipped_policy_dir()) and report["preset"] is None
    assert report["success_rate"] == 0.0 and report["success_rate_ci95"][0] == 0.0
    assert "held-out" in report["seed_note"]
    for episode in report["results"]:
        assert set(episode) == EPISODE_FIELDS, context
        assert episode["success"] is False and episode["time_to_success"] is None
        assert 0.6 <= episode["sim_seconds"] < 1.5, context
        assert episode["chunks"] >= 1, context  # the policy acted in every episode
    names = sorted(Path(p).name for p in report["media"])
    assert names == ["episode_2000000.gif", "episode_2000000_run.png"], context
    assert all(Path(p).stat().st_size > 1000 for p in report["media"])


def test_direct_mode_runs_in_process_with_the_same_report(tmp_path, capsys):
    """--direct (no ROS): same seeds and episode fields; the executor's counters are absent."""
    out = tmp_path / "direct"
    code = vla_eval.main(["--direct", "--preset", "sim-s", "--episodes", "2", "--max-steps", "30",
                          "--seed-start", "2000000", "--quiet", "--output-dir", str(out)])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["mode"] == "direct" and report["policy"] == "preset"
    assert report["seeds"] == [2_000_000, 2_000_001] and report["media"] == []
    for episode in report["results"]:
        assert set(episode) == EPISODE_FIELDS
        assert episode["sim_seconds"] == pytest.approx(0.6) and episode["chunks"] >= 2
        assert episode["clamped_commands"] is None and episode["success"] is False
    assert "no ROS" in capsys.readouterr().out


def test_oracle_succeeds_through_the_same_command(spawn, tmp_path):
    """The scripted teleoperator's chunks go through executor and simulator: the evaluator must
    see its success (a broken reset, success topic or executor hand-over fails this)."""
    code, report, context = _run(spawn, tmp_path, "--oracle", "--episodes", "2", "--videos",
                                 "0")
    assert code == 0, context
    assert report["successes"] == 2, context
    for episode in report["results"]:
        assert episode["max_reward"] == 4.0 and 3.0 < episode["time_to_success"] < 8.0
        assert episode["rejected_chunks"] == 0, context


def test_a_policy_that_cannot_start_exits_1(spawn, tmp_path):
    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    code, report, context = _run(spawn, tmp_path, "--checkpoint", str(empty), "--episodes", "1",
                                 "--startup-timeout", "120")
    assert code == 1, context
    assert "exited" in context
