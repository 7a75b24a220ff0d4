"""Environment of the suite's ROS processes (no rclpy import: used by tools and tests)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
import random
from typing import Iterator, MutableMapping

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


LOCK_DIR = Path(os.environ.get("TMPDIR", "/tmp")) / "vla_ros_domains"


@contextlib.contextmanager
def reserve_domain() -> Iterator[int]:
    """Reserve a ROS_DOMAIN_ID (1-101) that no other process on this machine holds.

    Used by tests, benchmarks and the demo: concurrent runs each lock a file per domain, so
    their nodes never discover each other (nor a robot on the user's domain).
    """
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    candidates = list(range(1, 102))
    random.shuffle(candidates)
    for domain in candidates:
        handle = open(LOCK_DIR / f"{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        try:
            yield domain
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError("no free ROS_DOMAIN_ID between 1 and 101")


def isolated_environment(domain: int, base: MutableMapping[str, str] | None = None,
                         dds_profile: bool = True) -> dict[str, str]:
    """Environment for a ROS process on ``domain`` with localhost-only discovery."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    for var in PROFILE_VARIABLES:
        env.pop(var, None)
    if dds_profile:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = default_dds_profile()
    env["PYTHONUNBUFFERED"] = "1"
    return env
