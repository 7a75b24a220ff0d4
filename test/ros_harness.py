"""Helpers for tests over real ROS 2: isolated domains and child processes that always die.

No fake ROS: tests start real nodes (often in separate processes) on a private
``ROS_DOMAIN_ID`` with localhost-only discovery.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

from vla_policy_node.ros_env import isolated_environment, reserve_domain

REPO_ROOT = Path(__file__).resolve().parent.parent


def private_domain():
    """Reserve a ROS_DOMAIN_ID no other process on this machine holds (context manager)."""
    return reserve_domain()


def ros_environment(domain: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ROS process on ``domain`` with localhost-only discovery."""
    env = isolated_environment(domain, base)
    env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
    return env


class ChildProcess:
    """A child process in its own process group, killed with everything it started.

    Use as a context manager; output goes to ``log_path`` and is printed when the test fails
    (see :meth:`output`).
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            self.argv, env=env, cwd=str(cwd or REPO_ROOT), stdout=self._log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def __enter__(self) -> "ChildProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT the group, then SIGTERM, then SIGKILL; returns the exit code."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0),
                          (signal.SIGKILL, 3.0)):
            if self.process.poll() is not None:
                break
            self.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
        # Reap the rest of the group even when the leader already exited.
        self.send_signal(signal.SIGKILL)
        self._log.close()
        return self.process.returncode


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args`` with the test's interpreter."""
    return [sys.executable, "-m", module, *args]


def wait_until(predicate: Callable[[], bool], timeout: float,
               step: Callable[[], None] | None = None, interval: float = 0.01) -> bool:
    """Call ``step`` (e.g. spin_once) until ``predicate`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if step is not None:
            step()
        else:
            time.sleep(interval)
    return predicate()
