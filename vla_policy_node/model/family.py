"""The contract every policy family implements (OpenVLA-OFT, RoboFlamingo, ...).

The vla_policy node, vla-bench and vla-finetune only use what is listed here. A family is its
own room under ``model/`` (configuration, modeling, processor, checkpoint mapping); what the
families share (image decoding, normalization statistics, :class:`InferenceResult`, the
ActionChunk contract) lives once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

FAMILIES = ("oft", "roboflamingo")


@runtime_checkable
class PolicyFamily(Protocol):
    """Observations in, un-normalized (K, D) action chunks out.

    ``infer`` may keep history (RoboFlamingo: one frame per call, forgotten by ``infer``
    itself when the instruction changes); ``reset`` forgets it (the node calls it on its
    ``~/reset`` service and after its warm-up inference). Families without history
    implement ``reset`` as a no-op.
    """

    family: str

    @property
    def camera_names(self) -> tuple[str, ...]: ...

    @property
    def chunk_length(self) -> int: ...

    @property
    def action_dim(self) -> int: ...

    @property
    def proprio_dim(self) -> int: ...

    def infer(self, images: Mapping[str, np.ndarray], proprio: np.ndarray | None,
              instruction: str) -> Any: ...

    def reset(self) -> None: ...

    def set_statistics(self, stats: Mapping[str, Any], unnorm_key: str | None = None
                       ) -> None: ...

    def save_pretrained(self, directory: str | os.PathLike) -> Path: ...


class PolicyBase:
    """What every family's policy object shares: its description, read from ``config``;
    statistics handed to ``processor``; and no history unless the family keeps one.

    Subclasses set ``family``, ``model``, ``processor`` and ``config`` and implement ``infer``
    and ``save_pretrained``; a family with history sets ``keeps_history`` and overrides
    :meth:`reset`.
    """

    family: str = ""
    keeps_history: bool = False
    model: Any
    processor: Any
    config: Any

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.config.camera_names

    @property
    def chunk_length(self) -> int:
        return self.config.chunk_length

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def proprio_dim(self) -> int:
        return self.config.proprio_dim

    @property
    def device(self) -> Any:
        return self.model.device

    def set_statistics(self, stats: Mapping[str, Any], unnorm_key: str | None = None) -> None:
        """Use dataset_statistics.json content for (un)normalization."""
        self.processor.set_statistics(stats, unnorm_key)

    def reset(self) -> None:
        """Forget the history; nothing to forget for a family without one."""


def resolve_family(checkpoint: str | os.PathLike | None, preset: str,
                   family: str = "auto") -> str:
    """Which family a checkpoint or preset belongs to (``family``: "auto", "oft" or
    "roboflamingo"; an explicit value that contradicts the checkpoint is an error)."""
    from vla_policy_node.model.roboflamingo.checkpoint_roboflamingo import (
        is_roboflamingo_checkpoint)
    from vla_policy_node.model.roboflamingo.configuration_roboflamingo import PRESETS
    if family not in ("auto",) + FAMILIES:
        raise ValueError(f"policy family must be one of {('auto',) + FAMILIES}, got "
                         f"{family!r}")
    if checkpoint:
        found = "roboflamingo" if is_roboflamingo_checkpoint(checkpoint) else "oft"
        if family not in ("auto", found):
            raise ValueError(f"checkpoint {checkpoint} holds a policy of the {found} family, but "
                             f"policy_family is {family!r}")
        return found
    found = "roboflamingo" if preset in PRESETS else "oft"
    if family not in ("auto", found):
        raise ValueError(f"preset {preset!r} belongs to the {found} family, but policy_family is "
                         f"{family!r}")
    return found


def history_rate_advice(policy: Any, trigger: str, rate_hz: float,
                        step_period: float) -> str | None:
    """A warning when a family with history is triggered at another spacing than its
    training frames (``frame_stride`` dataset steps of ``step_period`` s); None when fine."""
    stride = getattr(getattr(policy, "config", None), "frame_stride", None)
    if stride is None or not getattr(policy, "keeps_history", False):
        return None
    period = stride * step_period
    if trigger == "fixed_rate" and rate_hz > 0 and abs(1.0 / rate_hz - period) <= 0.1 * period:
        return None
    return (f"{policy.family} adds one frame to its history per inference and was trained "
            f"on frames {period:.3g} s apart (frame_stride {stride} x step_period "
            f"{step_period:g} s); with trigger {trigger!r} at {rate_hz:g} Hz the history is "
            f"spaced differently: set trigger fixed_rate and inference_rate_hz "
            f"{1.0 / period:.3g}")
