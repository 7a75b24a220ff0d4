"""The OFT model (OpenVLA-OFT): configuration, modeling, processor, checkpoints, inference API.

Pure core: no rclpy. Use :func:`load_policy` to get a :class:`VLAPolicy`.
"""

import logging

from vla_policy_node.model.configuration_oft import PRESETS, OFTConfig, get_preset
from vla_policy_node.model.policy import (InferenceResult, ObservationError, VLAPolicy,
                                          build_policy, load_policy)

# bitsandbytes (imported by peft for LoRA, and for quantization) warns at import that an
# optional package for 4-bit matmuls on CPU is missing: noise for every LoRA user, since 4-bit
# inference runs on CUDA.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = ["PRESETS", "InferenceResult", "OFTConfig", "ObservationError", "VLAPolicy",
           "build_policy", "get_preset", "load_policy"]
