"""vla-finetune's command line: --help explains every option; bad arguments and unusable
directories end with one clear line and exit status 2 (arguments) or 1 (data, OUT)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch
from test_train_loop import make_dataset

from vla_policy_node.model.configuration_oft import PRESETS as OFT_PRESETS
from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
    PRESETS as ROBOFLAMINGO_PRESETS)
from vla_policy_node.tools.finetune import build_parser, main
from vla_policy_node.train.loop import check_resume, TrainConfig, TrainError, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cli"))


def test_help_explains_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.dest
        for option in action.option_strings:
            assert option in text, option
    for topic in ("resume", "torchrun", "exit status", "OUT/checkpoint/"):
        assert topic in text, topic


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str]:
    """(exit status, the only line on stderr) of main(argv)."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return status, lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--backbone-lr", "0"], "--backbone-lr must be > 0, got 0.0"),
    (["--eval-every", "-1"], "argument --eval-every: must be >= 0, got -1"),
    (["--preset", "tiny-roboflamingo", "--backbone-lr", "1e-4"],
     "--backbone-lr is for OFT models: RoboFlamingo trains its released set (perceiver, "
     "cross-attention, embeddings, head) at --lr, its CLIP and language model frozen"),
    (["--preset", "big"], "unknown --preset 'big'; known: "
                          + ", ".join(OFT_PRESETS + ROBOFLAMINGO_PRESETS)),
])
def test_bad_arguments_exit_2(dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                              argv: list[str], message: str) -> None:
    status, line = one_line_error(capsys, [str(dataset_dir), "--out", str(tmp_path), *argv])
    assert status == 2 and line == f"vla-finetune: error: {message} (see vla-finetune --help)"


def test_missing_dataset_directory_exits_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    status, line = one_line_error(capsys, [str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert status == 2
    assert line.startswith(f"vla-finetune: error: dataset directory {tmp_path / 'nope'} does "
                           f"not exist")


def test_dataset_without_statistics_exits_1(tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "data").mkdir()
    status, line = one_line_error(capsys, [str(tmp_path / "data"), "--out", str(tmp_path / "o")])
    assert status == 1
    assert line == (f"vla-finetune: {tmp_path / 'data' / 'dataset_statistics.json'} not found "
                    f"(run vla-convert on the bags first)")


def test_output_of_another_run_exits_1(dataset_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    train(TrainConfig(data_dir=str(dataset_dir), output_dir=str(out), steps=1, batch_size=1,
                      lora_rank=2, lr=1e-3, val_every=0))
    capsys.readouterr()
    status, line = one_line_error(capsys, [
        str(dataset_dir), "--out", str(out), "--steps", "2", "--batch-size", "1",
        "--lora-rank", "2", "--lr", "2e-3", "--val-every", "0", "--device", "cpu", "-q"])
    assert status == 1
    assert line.startswith(f"vla-finetune: {out / 'train_state' / 'step_00000001.pt'} was "
                           f"saved by a run with other settings (lr 0.001 -> 0.002): "), line
    # The same settings continue; another process count or other episodes do not.
    path = out / "train_state" / "step_00000001.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    same = TrainConfig(data_dir=str(dataset_dir), output_dir=str(out), steps=5, batch_size=1,
                       lora_rank=2, lr=1e-3, val_every=0)
    check_resume(state, path, same, 1, state["episodes"])
    with pytest.raises(TrainError, match=r"saved by 1 process\(es\), this run has 2"):
        check_resume(state, path, same, 2, state["episodes"])
    grown = {**state["episodes"], "train": [*state["episodes"]["train"], ["new.hdf5", 50]]}
    with pytest.raises(TrainError, match="other dataset episodes"):
        check_resume(state, path, same, 1, grown)


def test_resume_keeps_the_saved_lora_rank_unless_one_is_given(
        dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    # A run without --base started when --lora-rank defaulted to 32 (now 0 without --base):
    # the same command again must continue it, not refuse "lora_rank 32 -> 0".
    out = tmp_path / "out"
    train(TrainConfig(data_dir=str(dataset_dir), output_dir=str(out), steps=1, batch_size=1,
                      lora_rank=32, lr=1e-3, val_every=0))
    capsys.readouterr()
    argv = [str(dataset_dir), "--out", str(out), "--steps", "2", "--batch-size", "1",
            "--lr", "1e-3", "--val-every", "0", "--device", "cpu", "-q"]
    # An explicit other rank is still refused.
    status, line = one_line_error(capsys, [*argv, "--lora-rank", "8"])
    assert status == 1 and "(lora_rank 32 -> 8)" in line, line
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert "resumed from step 1" in capsys.readouterr().out
    assert any("--lora-rank 32 as saved" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("preset, says, never", [
    ("tiny", "training every parameter", "frozen"),
    ("tiny-roboflamingo", "its CLIP and language model stay frozen", "every parameter"),
])
def test_from_scratch_line_says_what_the_family_trains(
        dataset_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        preset: str, says: str, never: str) -> None:
    # --lr -1 stops main right after the line, before any model is built.
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit):
        main([str(dataset_dir), "--out", str(tmp_path), "--preset", preset, "--lr", "-1"])
    lines = [r.getMessage() for r in caplog.records if "no --base" in r.getMessage()]
    assert len(lines) == 1 and says in lines[0] and never not in lines[0], lines


def test_train_refuses_backbone_lr_for_a_family_with_its_own_groups(
        dataset_dir: Path, tmp_path: Path) -> None:
    # The library path, not only the command line: never silently ignored.
    with pytest.raises(TrainError, match="backbone_lr is for OFT models: roboflamingo"):
        train(TrainConfig(data_dir=str(dataset_dir), output_dir=str(tmp_path),
                          preset="tiny-roboflamingo", steps=1, batch_size=1, lora_rank=0,
                          backbone_lr=1e-4, val_every=0))
