"""vla-bench finetune: runs the real loop and reports steps/s per batch size."""

from __future__ import annotations

import argparse
import math

import pytest

from vla_policy_node.bench import finetune


def args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    finetune.add_arguments(parser)
    namespace = parser.parse_args(["--steps", "2", "--warmup", "1", "--batch-size", "1",
                                   "--threads", "1", "--image-size", "24", "32",
                                   "--lora-rank", "4"])
    namespace.update_docs = False
    vars(namespace).update(kw)
    return namespace


def test_reports_steps_per_second(capsys: pytest.CaptureFixture) -> None:
    result = finetune.run(args())
    [case] = result["cases"]
    assert case["steps"] == 2 and case["batch_size"] == 1 and case["lora_rank"] == 4
    assert math.isfinite(case["steps_per_s"]) and case["steps_per_s"] > 0
    assert case["bf16"] is False
    assert "| tiny | cpu | fp32 | no | 1 | 4 | 2 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        finetune.run(args(steps=0))
