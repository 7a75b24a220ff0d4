"""Fixtures shared by all tests: private ROS domains and child processes."""

from __future__ import annotations

import os
from pathlib import Path
import sys
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_harness import (  # noqa: E402
    ChildProcess, private_domain, REPO_ROOT, ros_environment)

# Keep torch from fighting the ROS processes for the 2 cores of CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A private ROS_DOMAIN_ID with localhost discovery, set in this process's environment."""
    with private_domain() as domain:
        for key, value in ros_environment(domain).items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        yield domain


@pytest.fixture
def rclpy_context(ros_domain: int) -> Iterator[object]:
    """An initialized rclpy Context on the private domain, shut down afterwards."""
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def spawn(ros_domain: int, tmp_path: Path, request: pytest.FixtureRequest):
    """Start child processes on the private domain; all are stopped after the test.

    ``spawn(argv, name="talker", env_extra={...})`` returns a :class:`ChildProcess`.
    On failure the output of every child is attached to the report.
    """
    children: list[ChildProcess] = []

    def start(argv: list[str], name: str = "child",
              env_extra: dict[str, str] | None = None) -> ChildProcess:
        env = ros_environment(ros_domain)
        env.update(env_extra or {})
        child = ChildProcess(argv, env, tmp_path / f"{name}-{len(children)}.log", REPO_ROOT)
        children.append(child)
        return child

    yield start
    for child in children:
        child.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for child in children:
            sys.stderr.write(f"\n----- {' '.join(child.argv)} -----\n{child.output()[-4000:]}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
