"""vla-bringup: start the suite's nodes without ``ros2 launch`` (pip installs).

Starts the same node set as ``aloha.launch.py`` (both come from
:mod:`vla_policy_node.launch_spec`), each node in its own process, prefixes their output with
the node name, forwards SIGINT/SIGTERM, stops everything when one node dies, and leaves no
orphans (children get SIGTERM if the bringup itself is killed).
"""

from __future__ import annotations

import argparse
import ctypes
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Sequence

import yaml

from vla_policy_node.launch_spec import (
    LAUNCH_ARGUMENTS, node_descriptions, NodeDescription, overrides_document, ros_arguments)
from vla_policy_node.ros_env import apply_dds_profile

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class NodeProcesses:
    """A set of node processes started from :class:`NodeDescription` s.

    Use as a context manager: leaving it stops every process (SIGINT, then SIGTERM, SIGKILL).
    """

    def __init__(self, nodes: Sequence[NodeDescription], env: dict[str, str] | None = None,
                 output: IO[str] | None = sys.stdout, log_dir: str | None = None) -> None:
        self.nodes = list(nodes)
        self.env = dict(os.environ if env is None else env)
        apply_dds_profile(self.env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.output = output
        self.log_dir = Path(log_dir) if log_dir else None
        self.processes: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="vla-bringup-")
        self._lock = threading.Lock()

    def command(self, node: NodeDescription) -> list[str]:
        """argv of one node: ``python -m module --ros-args ...`` with its overrides file."""
        overrides_file = None
        if node.overrides:
            overrides_file = os.path.join(self._tmp.name, f"{node.name}.overrides.yaml")
            with open(overrides_file, "w") as f:
                yaml.safe_dump(overrides_document(node), f)
        return [sys.executable, "-m", node.module, *ros_arguments(node, overrides_file)]

    def start(self) -> "NodeProcesses":
        for node in self.nodes:
            argv = self.command(node)
            process = subprocess.Popen(
                argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, text=True,
                errors="replace")
            self.processes[node.name] = process
            thread = threading.Thread(target=self._relay, args=(node.name, process),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{name}.log", "w")
        assert process.stdout is not None
        for line in process.stdout:
            if log is not None:
                log.write(line)
                log.flush()
            if self.output is not None:
                with self._lock:
                    self.output.write(f"[{name}] {line}")
                    self.output.flush()
        if log is not None:
            log.close()

    def __enter__(self) -> "NodeProcesses":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def exited(self) -> dict[str, int]:
        """Nodes that have exited, with their exit codes."""
        return {name: p.returncode for name, p in self.processes.items()
                if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Stop all nodes (SIGINT, then SIGTERM, then SIGKILL); returns exit codes."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0),
                          (signal.SIGKILL, 3.0)):
            alive = [p for p in self.processes.values() if p.poll() is None]
            if not alive:
                break
            for process in alive:
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for process in alive:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._tmp.cleanup()
        return {name: p.returncode for name, p in self.processes.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-bringup",
        description="Start the VLA suite's nodes (policy, executor, and the simulated ALOHA "
                    "with --sim true) from config/aloha.yaml, like `ros2 launch "
                    "vla_policy_node aloha.launch.py` on installs without ros2 launch. "
                    "Ctrl-C stops everything.")
    for arg in LAUNCH_ARGUMENTS:
        parser.add_argument(f"--{arg.name.replace('_', '-')}", dest=arg.name,
                            default=arg.default, choices=list(arg.choices) or None,
                            help=arg.description)
    parser.add_argument("--log-dir", default=None, help="also write each node's output here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    log_dir = args.pop("log_dir")
    try:
        nodes = node_descriptions(**args)
    except ValueError as exc:
        print(f"vla-bringup: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    names = ", ".join(node.name for node in nodes)
    print(f"vla-bringup: starting {names} (Ctrl-C to stop)", flush=True)
    with NodeProcesses(nodes, log_dir=log_dir) as processes:
        while not stop.wait(0.2):
            exited = processes.exited()
            if exited:
                print(f"vla-bringup: node(s) exited {exited}; stopping the others",
                      file=sys.stderr, flush=True)
                break
        codes = processes.stop()
    # Everything is stopped. A second Ctrl-C (a terminal sends one per key press) must not
    # land while the interpreter finalizes: Python restores the default handlers there, and
    # the bringup would die by SIGINT (exit -2) instead of returning 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    failed = {name: code for name, code in codes.items() if code not in (0, -2, -15)}
    return 1 if (failed and not stop.is_set()) else 0


if __name__ == "__main__":
    sys.exit(main())
