"""What the tools that start their own ROS graph share: a private domain, signal handling, and
the choice of policy (the shipped one unless --checkpoint or --preset)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from typing import Any, Iterator

from vla_policy_node.ros_env import isolated_environment, reserve_domain


@contextlib.contextmanager
def private_ros_graph() -> Iterator[tuple[int, dict[str, str], Any]]:
    """A ROS graph nobody else can see: a reserved domain with localhost-only discovery.

    Yields ``(domain, env, context)``: ``env`` is the environment for the node processes the
    tool starts, ``context`` an initialized rclpy context for the tool's own nodes (rclpy's
    signal handlers are off: see :func:`stop_on_signals`). This process's environment is
    switched to the domain too, so the tool's nodes and its children discover each other.
    """
    with reserve_domain() as domain:
        env = isolated_environment(domain)
        os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                "FASTRTPS_DEFAULT_PROFILES_FILE")})
        import rclpy
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain, signal_handler_options=(
            rclpy.signals.SignalHandlerOptions.NO))
        try:
            yield domain, env, context
        finally:
            context.try_shutdown()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while inside (so the tool can stop its children cleanly
    and still write its report); the previous handlers come back on exit."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_policy_arguments(parser: argparse.ArgumentParser) -> Any:
    """--checkpoint DIR / --preset NAME, mutually exclusive; neither: the shipped policy.

    Returns the group (a tool adds its other policy choices to it).
    """
    from vla_policy_node.pretrained import DEFAULT_POLICY
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", default="", metavar="DIR",
                       help="policy checkpoint directory (ours or official OpenVLA-OFT; "
                            f"default: the shipped {DEFAULT_POLICY} policy)")
    group.add_argument("--preset", default="", metavar="NAME",
                       help="model preset with random weights instead (e.g. tiny, sim-s)")
    return group


def resolve_policy(args: argparse.Namespace) -> str:
    """Point ``args.checkpoint`` at the shipped policy when neither --checkpoint nor --preset
    (nor another choice of the group) was given; sets ``args.shipped_policy`` (its name or None).

    Returns:
        How the tool names the policy in its output.

    Raises:
        MissingPolicyError: the shipped policy's files are missing.
    """
    from vla_policy_node.pretrained import DEFAULT_POLICY, shipped_policy_dir
    args.shipped_policy = None
    if getattr(args, "oracle", False):
        return "oracle (scripted teleoperator)"
    if not (args.checkpoint or args.preset):
        args.checkpoint = str(shipped_policy_dir())
        args.shipped_policy = DEFAULT_POLICY
        return f"the shipped {DEFAULT_POLICY} policy"
    return args.checkpoint or f"preset {args.preset} (random weights)"
