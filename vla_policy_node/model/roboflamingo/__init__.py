"""RoboFlamingo: OpenFlamingo (CLIP ViT-L/14, perceiver, gated cross-attention into a frozen
LM) with a policy head over a history of fused features. See docs/roboflamingo.md.

Pure core: no rclpy. Use :func:`load_roboflamingo` (or ``model.load_policy`` with a
RoboFlamingo preset/checkpoint) to get a :class:`RoboFlamingoPolicy`.
"""

from vla_policy_node.model.roboflamingo.configuration_roboflamingo import (
    PRESETS, RoboFlamingoConfig, get_preset)
from vla_policy_node.model.roboflamingo.policy_roboflamingo import (
    RoboFlamingoPolicy, build_roboflamingo, load_roboflamingo)

__all__ = ["PRESETS", "RoboFlamingoConfig", "RoboFlamingoPolicy", "build_roboflamingo",
           "get_preset", "load_roboflamingo"]
