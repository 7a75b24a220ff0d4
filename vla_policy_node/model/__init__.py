"""The OFT model (OpenVLA-OFT): configuration, modeling, processor, checkpoints, inference API.

Pure core: no rclpy. Use :func:`load_policy` to get a :class:`VLAPolicy`.
"""

from vla_policy_node.model.configuration_oft import PRESETS, OFTConfig, get_preset
from vla_policy_node.model.policy import (InferenceResult, ObservationError, VLAPolicy,
                                          build_policy, load_policy)

__all__ = ["PRESETS", "InferenceResult", "OFTConfig", "ObservationError", "VLAPolicy",
           "build_policy", "get_preset", "load_policy"]
