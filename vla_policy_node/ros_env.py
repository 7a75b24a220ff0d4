"""Environment of the suite's ROS processes (no rclpy import: used by tools and tests)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
import random
from typing import Iterator, Mapping, MutableMapping

from vla_policy_node.config import package_share_dir

PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
DISCOVERY_RANGE_VARIABLE = "ROS_AUTOMATIC_DISCOVERY_RANGE"


def default_dds_profile() -> str:
    """Path of the project's Fast DDS profile (config/fastdds.xml, localhost only)."""
    return str(package_share_dir() / "config" / "fastdds.xml")


def network_dds_profile() -> str:
    """Path of the profile for robots whose cameras or arms are on other computers."""
    return str(package_share_dir() / "config" / "fastdds_network.xml")


def project_profile_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that make Fast DDS use config/fastdds.xml, and nothing else.

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST makes rmw_fastrtps add a UDP transport of its own
    to the profile's, bound to 0.0.0.0 and to every interface; SYSTEM_DEFAULT leaves the
    transports to the profile (which keeps everything on 127.0.0.1). OFF stays OFF.
    """
    variables = {"FASTRTPS_DEFAULT_PROFILES_FILE": default_dds_profile()}
    if env.get(DISCOVERY_RANGE_VARIABLE) != "OFF":
        variables[DISCOVERY_RANGE_VARIABLE] = "SYSTEM_DEFAULT"
    return variables


def apply_dds_profile(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Point Fast DDS at the project's profile unless the user chose one (set, even empty)."""
    env = os.environ if env is None else env
    if not any(var in env for var in PROFILE_VARIABLES):
        env.update(project_profile_variables(env))
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
        env.update(project_profile_variables(env))
    env["PYTHONUNBUFFERED"] = "1"
    return env
