"""Every node behaves like a ROS 2 node for the ros2 CLI: dump, reload, Ctrl-C.

Each node runs in its own process over real DDS. The test process does what ``ros2 param
dump`` does (ListParameters, then one GetParameters for every name), writes the YAML the CLI
prints, starts the same node from that file alone, and compares. Ctrl-C is a SIGINT to the
node's whole process group, sent twice as a terminal and ``ros2 launch`` do (the terminal
signals the group, launch forwards its own): the node must exit 0 within 2 s without a
traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
import signal
import time

import pytest
import yaml

from param_client import flatten, ParameterClient
from ros_harness import python_module, REPO_ROOT

CONFIG = str(Path(REPO_ROOT) / "config" / "aloha.yaml")
NODES = {
    "vla_policy": ("vla_policy_node.nodes.vla_policy", {"torch_threads": 1}),
    "chunk_executor": ("vla_policy_node.nodes.chunk_executor", {"realtime_priority": 0}),
    "sim_aloha": ("vla_policy_node.nodes.sim_aloha",
                  {"camera_height": 48, "camera_width": 64}),
    "vla_recorder": ("vla_policy_node.nodes.recorder", {"keyboard": False}),
}
NOISE = ("Traceback", "KeyboardInterrupt", "EGLError", "Failed to publish log message")


def start_node(spawn, tmp_path: Path, name: str, params_files: list[str], tag: str):
    module, _ = NODES[name]
    args = ["--ros-args"]
    for path in params_files:
        args += ["--params-file", path]
    return spawn(python_module(module, *args), name=f"{name}-{tag}")


def overrides_file(tmp_path: Path, name: str) -> str:
    settings = dict(NODES[name][1])
    if name == "vla_recorder":
        settings["output_dir"] = str(tmp_path / "bags")
    path = tmp_path / f"{name}-overrides.yaml"
    path.write_text(yaml.safe_dump({name: {"ros__parameters": settings}}))
    return str(path)


def interrupt_like_a_terminal(node) -> float:
    """SIGINT to the process group, again 0.1 s later (launch's own); returns exit time."""
    start = time.monotonic()
    os.killpg(node.process.pid, signal.SIGINT)
    time.sleep(0.1)
    node.send_signal(signal.SIGINT)
    try:
        node.process.wait(timeout=10.0)
    except Exception:  # noqa: BLE001 - reported by the assertion below
        pass
    return time.monotonic() - start


def assert_quiet_exit(node, elapsed: float) -> None:
    output = node.output()
    assert node.poll() == 0, f"exit code {node.poll()}\n{output[-3000:]}"
    assert elapsed < 2.0, f"took {elapsed:.2f} s to exit\n{output[-2000:]}"
    noise = [word for word in NOISE if word in output]
    assert not noise, f"{noise} in the output:\n{output[-3000:]}"


@pytest.mark.parametrize("name", list(NODES))
def test_param_dump_reloads_into_the_same_node_and_ctrl_c_is_quiet(
        name, spawn, rclpy_context, tmp_path):
    first = start_node(spawn, tmp_path, name, [CONFIG, overrides_file(tmp_path, name)], "a")
    client = ParameterClient(rclpy_context, name)
    try:
        assert client.wait(120.0), first.output()[-3000:]
        names = client.list()
        dumped = client.dump_yaml()
        document = yaml.safe_load(dumped)
        values = flatten(document)
        # Every listed parameter is in the dump (it printed {} for chunk_executor).
        assert sorted(values) == names and len(names) > 5, dumped
        assert list(document) == [f"/{name}"]
        if name != "vla_recorder":
            assert values["robot.arms"] == ["follower_left", "follower_right"]
        for key, value in NODES[name][1].items():
            assert values[key] == value
        elapsed = interrupt_like_a_terminal(first)
        assert_quiet_exit(first, elapsed)

        dump_file = tmp_path / f"{name}-dump.yaml"
        dump_file.write_text(dumped)
    finally:
        client.close()
    second = start_node(spawn, tmp_path, name, [str(dump_file)], "b")
    client = ParameterClient(rclpy_context, name)
    try:
        assert client.wait(120.0), second.output()[-3000:]
        assert client.list() == names
        assert flatten(yaml.safe_load(client.dump_yaml())) == values
        elapsed = interrupt_like_a_terminal(second)
        assert_quiet_exit(second, elapsed)
    finally:
        client.close()
