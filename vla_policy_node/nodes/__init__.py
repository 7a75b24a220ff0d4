"""The suite's ROS nodes.

A node process can be interrupted while it is still importing (rclpy, numpy, MuJoCo: a second
or more): a Ctrl-C then must not print an import traceback either. When this package is
imported by a node's own process (its console script, or ``python -m`` of its module),
SIGINT/SIGTERM end the process quietly with exit code 0 until ``runner.run_node`` installs the
handlers that shut the node down properly. Any other process (tests, tools) is left alone.
"""

from __future__ import annotations

import os
import signal
import sys

NODE_EXECUTABLES = {"vla_policy", "chunk_executor", "sim_aloha", "vla-record"}
NODE_MODULES = {"vla_policy_node.nodes.vla_policy", "vla_policy_node.nodes.chunk_executor",
                "vla_policy_node.nodes.sim_aloha", "vla_policy_node.nodes.recorder"}


def _is_node_process() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    if os.path.basename(sys.argv[0]) in NODE_EXECUTABLES:
        return True
    return any(a == "-m" and b in NODE_MODULES for a, b in zip(argv, argv[1:]))


def _exit_quietly(signum: int, frame: object) -> None:
    # Nothing has started yet (no rclpy context, no files): end now, without the
    # interpreter's teardown, during which a second Ctrl-C would kill the process (-2).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if _is_node_process():
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _exit_quietly)
