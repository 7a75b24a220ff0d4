"""vla-bringup starts the node set, forwards signals and leaves no orphans; vla-instruct."""

import os
from pathlib import Path
import signal
import subprocess
import sys

import pytest
from ros_harness import ros_environment, wait_until


def children_of(pid):
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def status_listener(rclpy_context):
    import rclpy
    from vla_msgs.msg import ExecutorStatus, PolicyStatus
    node = rclpy.create_node("bringup_listener", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    received = {"policy": [], "executor": []}
    node.create_subscription(PolicyStatus, "/vla/policy_status", received["policy"].append, 10)
    node.create_subscription(ExecutorStatus, "/vla/executor_status",
                             received["executor"].append, 10)
    yield received, lambda: executor.spin_once(timeout_sec=0.05)
    node.destroy_node()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGKILL])
def test_bringup_runs_the_nodes_and_leaves_no_orphans(spawn, status_listener, ros_domain,
                                                      stop_signal):
    received, spin = status_listener
    bringup = spawn([sys.executable, "-m", "vla_policy_node.tools.bringup"], name="bringup")
    assert wait_until(lambda: received["policy"] and received["executor"], 120.0, spin), \
        bringup.output()[-4000:]
    nodes = children_of(bringup.process.pid)
    assert len(nodes) == 2, nodes  # vla_policy and chunk_executor

    # vla-instruct reaches the policy node (as `ros2 topic pub` would).
    sent = subprocess.run([sys.executable, "-m", "vla_policy_node.tools.instruct",
                           "fold the towel"], env=ros_environment(ros_domain),
                          capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: received["policy"][-1].instruction == "fold the towel", 30.0,
                      spin)

    os.kill(bringup.process.pid, stop_signal)  # the bringup alone, not its process group
    bringup.process.wait(timeout=30)
    assert wait_until(lambda: not any(alive(pid) for pid in nodes), 20.0), \
        [pid for pid in nodes if alive(pid)]
    if stop_signal == signal.SIGINT:
        assert bringup.process.returncode == 0, bringup.output()[-3000:]


def test_instruct_without_subscriber_says_so(ros_domain):
    result = subprocess.run([sys.executable, "-m", "vla_policy_node.tools.instruct", "go",
                             "--timeout", "1"], env=ros_environment(ros_domain),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no subscriber" in result.stderr


def test_bringup_rejects_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "vla_policy_node.tools.bringup",
                             "--config", "/nonexistent.yaml"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.mark.parametrize("module", ["vla_policy_node.nodes.vla_policy",
                                    "vla_policy_node.nodes.chunk_executor"])
def test_node_without_config_names_the_missing_parameter(module, ros_domain):
    result = subprocess.run([sys.executable, "-m", module], env=ros_environment(ros_domain),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "robot.joint_names is not set" in result.stderr + result.stdout
    assert "--params-file" in result.stderr + result.stdout
