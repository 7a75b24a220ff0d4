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

from param_client import DiagnosticsListener, flatten, level, ParameterClient, values
from ros_harness import python_module, REPO_ROOT, wait_until
from test_policy_node import FakeRobot

OK, WARN, ERROR = 0, 1, 2

CONFIG = str(Path(REPO_ROOT) / "config" / "aloha.yaml")
NODES = {
    "vla_policy": ("vla_policy_node.nodes.vla_policy", {"torch_threads": 1}),
    "chunk_executor": ("vla_policy_node.nodes.chunk_executor", {"realtime_priority": 0}),
    "sim_aloha": ("vla_policy_node.nodes.sim_aloha",
                  {"camera_height": 48, "camera_width": 64}),
    "vla_recorder": ("vla_policy_node.nodes.recorder", {"keyboard": False}),
}
# What `ros2 param set` may change on each node (docs/ros.md); everything else is read-only.
# use_sim_time is rclpy's own and switches the node's clock at run time.
RUNTIME = {
    "vla_policy": {"trigger", "demand_horizon", "inference_rate_hz", "max_observation_age",
                   "status_period", "instruction", "use_sim_time"},
    "chunk_executor": {"use_sim_time"},
    "sim_aloha": {"task", "seed", "use_sim_time"},
    "vla_recorder": {"instruction", "use_sim_time"},
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


@pytest.fixture
def diagnostics(rclpy_context):
    listener = DiagnosticsListener(rclpy_context)
    yield listener
    listener.close()


@pytest.mark.parametrize("name", list(NODES))
def test_param_dump_reloads_into_the_same_node_and_ctrl_c_is_quiet(
        name, spawn, rclpy_context, diagnostics, tmp_path):
    first = start_node(spawn, tmp_path, name, [CONFIG, overrides_file(tmp_path, name)], "a")
    client = ParameterClient(rclpy_context, name)
    try:
        assert client.wait(120.0), first.output()[-3000:]
        names = client.list()
        dumped = client.dump_yaml()
        document = yaml.safe_load(dumped)
        dumped_values = flatten(document)
        # Every listed parameter is in the dump (it printed {} for chunk_executor).
        assert sorted(dumped_values) == names and len(names) > 5, dumped
        assert list(document) == [f"/{name}"]
        if name != "vla_recorder":
            assert dumped_values["robot.arms"] == ["follower_left", "follower_right"]
        for key, value in NODES[name][1].items():
            assert dumped_values[key] == value
        # Nothing is silently ignored: what cannot change at run time is read-only.
        writable = {n for n in names if not client.describe(n).read_only}
        assert writable == RUNTIME[name], writable ^ RUNTIME[name]
        assert not client.set(**{names[0]: dumped_values[names[0]]})[names[0]][0] or \
            names[0] in RUNTIME[name]
        # Every node reports on /diagnostics, OK while idle.
        assert wait_until(lambda: any(n.startswith(f"{name}: ") for n in diagnostics.statuses),
                          30.0, diagnostics.spin), first.output()[-2000:]
        for status_name, statuses in diagnostics.statuses.items():
            if status_name.startswith(f"{name}: "):
                assert level(statuses[-1]) == OK, (status_name, statuses[-1].message)
        if name == "vla_policy":  # the status line before any inference: no made-up values
            assert wait_until(lambda: "waiting_for_instruction: 0 chunks" in first.output(),
                              10.0), first.output()[-2000:]
            assert "-1000" not in first.output()
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
        assert flatten(yaml.safe_load(client.dump_yaml())) == dumped_values
        elapsed = interrupt_like_a_terminal(second)
        assert_quiet_exit(second, elapsed)
    finally:
        client.close()


def lifecycle(context, node_name: str, transition: str) -> bool:
    """`ros2 lifecycle set /<node> <transition>`; True when the transition succeeded."""
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    client_node = rclpy.create_node(f"lifecycle_{transition}", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(client_node)
    try:
        client = client_node.create_client(ChangeState, f"/{node_name}/change_state")
        assert client.wait_for_service(timeout_sec=30.0)
        ids = {"activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE}
        future = client.call_async(ChangeState.Request(transition=Transition(
            id=ids[transition])))
        executor.spin_until_future_complete(future, timeout_sec=10.0)
        return future.done() and future.result().success
    finally:
        executor.shutdown()
        client_node.destroy_node()


def test_policy_parameters_change_at_run_time_and_show_in_diagnostics(
        spawn, rclpy_context, diagnostics, tmp_path):
    node = start_node(spawn, tmp_path, "vla_policy",
                      [CONFIG, overrides_file(tmp_path, "vla_policy")], "a")
    client = ParameterClient(rclpy_context, "vla_policy")
    robot = FakeRobot(rclpy_context)
    try:
        assert client.wait(120.0), node.output()[-3000:]
        # Bad values are refused with a reason; the rest is read-only.
        ok, reason = client.set(trigger="bogus")["trigger"]
        assert not ok and "bogus" in reason and "on_demand" in reason
        assert client.get_values(["trigger"]) == {"trigger": "on_demand"}
        for name, value in (("preset", "openvla-7b"), ("device", "cuda"),
                            ("robot.position_max", [9.0] * 14), ("output_topic", "/x")):
            ok, reason = client.set(**{name: value})[name]
            assert not ok and "read-only" in reason, (name, reason)
        assert not client.set(demand_horizon=-1.0)["demand_horizon"][0]
        assert not client.set(instruction="  ")["instruction"][0]

        # The instruction parameter drives the policy like the topic does.
        assert client.set(instruction="fold the towel")["instruction"][0]
        assert robot.run_until(lambda: any(m.instruction == "fold the towel"
                                           for m in robot.chunks), 60.0), node.output()[-3000:]
        # on_demand without an executor: one chunk per instruction. fixed_rate: a stream.
        assert client.set(trigger="fixed_rate", inference_rate_hz=5.0) == {
            "trigger": (True, ""), "inference_rate_hz": (True, "")}
        count = len(robot.chunks)
        assert robot.run_until(lambda: len(robot.chunks) >= count + 3, 60.0), \
            node.output()[-3000:]

        # Managed node: deactivate stops inferring (from the next inference), activate resumes.
        assert lifecycle(rclpy_context, "vla_policy", "deactivate")
        robot.run(2.0)  # an inference under way may still land
        count = len(robot.chunks)
        robot.run(2.0)
        assert len(robot.chunks) == count
        assert robot.statuses[-1].state == "inactive"
        assert lifecycle(rclpy_context, "vla_policy", "activate")
        assert robot.run_until(lambda: len(robot.chunks) >= count + 2, 60.0)

        def inference_status():
            return diagnostics.latest("vla_policy: inference")
        assert wait_until(lambda: inference_status() is not None and
                          values(inference_status()).get("trigger") == "fixed_rate",
                          10.0, lambda: (robot.run(0.05), diagnostics.spin())), \
            diagnostics.statuses.keys()
        # (Its level depends on this machine's speed: only the content is checked here.)
        assert "latency p95" in inference_status().message
        assert float(values(inference_status())["latency_p95_s"]) > 0

        # A horizon shorter than the model's latency: WARN on /diagnostics, with the reason.
        assert client.set(trigger="on_demand")["trigger"][0]
        assert client.set(demand_horizon=0.001)["demand_horizon"][0]
        assert wait_until(lambda: values(inference_status()).get("demand_horizon_s") == "0.001",
                          10.0, lambda: (robot.run(0.05), diagnostics.spin()))
        assert level(inference_status()) in (WARN, ERROR)  # ERROR: slower than a chunk
        assert "exceeds the" in inference_status().message

        # An instruction from the topic shows in `ros2 param get instruction`.
        assert robot.run_until(
            lambda: client.get_values(["instruction"])["instruction"] == "stack the cups",
            30.0, say="stack the cups")
        # A rejected input turns the inputs check WARN.
        bad = robot.JointState(name=["waist"], position=[float("nan")])
        robot.arms["follower_left"].publish(bad)
        assert wait_until(lambda: diagnostics.latest("vla_policy: inputs") is not None and
                          level(diagnostics.latest("vla_policy: inputs")) == WARN,
                          10.0, lambda: (robot.arms["follower_left"].publish(bad),
                                         diagnostics.spin()))
        assert "rejected joint states" in diagnostics.latest("vla_policy: inputs").message
    finally:
        robot.close()
        client.close()


def test_executor_diagnostics_report_rejected_chunks(spawn, rclpy_context, diagnostics,
                                                     tmp_path):
    from vla_msgs.msg import ActionChunk
    node = start_node(spawn, tmp_path, "chunk_executor",
                      [CONFIG, overrides_file(tmp_path, "chunk_executor")], "a")
    publisher = diagnostics.node.create_publisher(ActionChunk, "/vla/action_chunk", 10)

    def execution():
        return diagnostics.latest("chunk_executor: execution")
    assert wait_until(lambda: execution() is not None, 30.0, diagnostics.spin), \
        node.output()[-2000:]
    assert level(execution()) == OK and execution().message.startswith("idle")
    hostile = ActionChunk(chunk_id=7, chunk_length=3, action_dim=14, actions=[1.0] * 5)

    def rejected():
        publisher.publish(hostile)
        return level(execution()) == WARN and "rejected chunks" in execution().message
    assert wait_until(rejected, 20.0, diagnostics.spin), (execution().message,
                                                          node.output()[-2000:])
    assert int(values(execution())["rejected_chunks"]) >= 1
    # Nothing new in the next period: back to OK.
    count = len(diagnostics.statuses["chunk_executor: execution"])
    assert wait_until(lambda: len(diagnostics.statuses["chunk_executor: execution"])
                      >= count + 2, 10.0, diagnostics.spin)
    assert level(execution()) == OK


def test_status_line_leaves_out_values_that_do_not_exist_yet():
    from vla_msgs.msg import PolicyStatus
    from vla_policy_node.nodes.vla_policy import status_line
    idle = PolicyStatus(state="waiting_for_instruction", inference_latency_p50=-1.0,
                        observation_age=-1.0)
    assert status_line(idle) == "waiting_for_instruction: 0 chunks"
    busy = PolicyStatus(state="ready", chunks_published=3, inference_latency_p50=0.12,
                        observation_age=0.03, rejected_images=2)
    assert status_line(busy) == ("ready: 3 chunks, latency p50 120 ms, observation age 30 ms, "
                                 "rejected images/joints/instructions 2/0/0")


@pytest.mark.parametrize("name", ["vla_policy", "sim_aloha"])
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_ctrl_c_while_starting_is_quiet(name, delay, spawn, tmp_path):
    """Ctrl-C while the node still imports rclpy/torch/MuJoCo or loads its model."""
    node = start_node(spawn, tmp_path, name, [CONFIG, overrides_file(tmp_path, name)], "a")
    time.sleep(delay)
    elapsed = interrupt_like_a_terminal(node)
    assert_quiet_exit(node, elapsed)


def test_executor_shows_the_outputs_it_derived(spawn, rclpy_context, tmp_path):
    """`ros2 param get /chunk_executor output_types` said "Parameter not set"."""
    node = start_node(spawn, tmp_path, "chunk_executor",
                      [CONFIG, overrides_file(tmp_path, "chunk_executor")], "a")
    client = ParameterClient(rclpy_context, "chunk_executor")
    try:
        assert client.wait(60.0), node.output()[-2000:]
        assert client.get_values(["output_types"]) == {
            "output_types": ["interbotix", "interbotix"]}
        assert client.describe("output_types").read_only
    finally:
        client.close()


def test_executor_is_a_managed_node_deactivate_holds(spawn, rclpy_context, tmp_path):
    """`ros2 lifecycle set /chunk_executor deactivate` holds (like ~/pause); activate resumes."""
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from vla_msgs.msg import ExecutorStatus

    node = start_node(spawn, tmp_path, "chunk_executor",
                      [CONFIG, overrides_file(tmp_path, "chunk_executor")], "a")
    client_node = rclpy.create_node("lifecycle_client", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(client_node)
    change = client_node.create_client(ChangeState, "/chunk_executor/change_state")
    get = client_node.create_client(GetState, "/chunk_executor/get_state")
    statuses = []
    client_node.create_subscription(ExecutorStatus, "/vla/executor_status", statuses.append, 10)

    def call(client, request):
        assert client.wait_for_service(timeout_sec=60.0), node.output()[-2000:]
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=10.0)
        assert future.done()
        return future.result()

    def latest_state():
        return statuses[-1].state_name if statuses else None
    try:
        assert call(get, GetState.Request()).current_state.label == "active"
        assert wait_until(lambda: latest_state() == "idle", 30.0,
                          lambda: executor.spin_once(timeout_sec=0.05))
        deactivate = ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
        assert call(change, deactivate).success
        assert call(get, GetState.Request()).current_state.label == "inactive"
        assert wait_until(lambda: latest_state() == "paused", 10.0,
                          lambda: executor.spin_once(timeout_sec=0.05))
        activate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))
        assert call(change, activate).success
        assert call(get, GetState.Request()).current_state.label == "active"
        assert wait_until(lambda: latest_state() == "idle", 10.0,
                          lambda: executor.spin_once(timeout_sec=0.05))
    finally:
        executor.shutdown()
        client_node.destroy_node()
    elapsed = interrupt_like_a_terminal(node)
    assert_quiet_exit(node, elapsed)
