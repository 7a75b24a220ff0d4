"""Environment of the suite's ROS processes (no rclpy import: used by tools and tests)."""

from __future__ import annotations

import os
from typing import MutableMapping

from vla_policy_node.config import package_share_dir

PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def default_dds_profile() -> str:
    """Path of the project's Fast DDS profile (config/fastdds.xml)."""
    return str(package_share_dir() / "config" / "fastdds.xml")


def apply_dds_profile(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Point Fast DDS at the project's profile unless the user chose one (set, even empty)."""
    env = os.environ if env is None else env
    if not any(var in env for var in PROFILE_VARIABLES):
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = default_dds_profile()
    return env
