"""What ``ros2 param list/get/set/dump/describe`` do, over the same rcl parameter services.

The ros2 CLI is not installable from PyPI; these helpers call the node's
``~/list_parameters``, ``~/get_parameters``, ``~/set_parameters`` and
``~/describe_parameters`` services from the test process, as the CLI's verbs do, and build
the dump YAML the way ``ros2 param dump`` does (dotted names nested, the node's absolute name
as the top key).
"""

from __future__ import annotations

import time
from typing import Any

import yaml

PARAMETER_SEPARATOR = "."


class ParameterClient:
    """Parameter service clients of one remote node, spun by a private executor."""

    def __init__(self, context: Any, node_name: str) -> None:
        import rclpy
        from rcl_interfaces.srv import (
            DescribeParameters, GetParameters, ListParameters, SetParameters)
        self.node_name = node_name if node_name.startswith("/") else "/" + node_name
        self.node = rclpy.create_node(f"param_client_{int(time.monotonic() * 1e6)}",
                                      context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._clients = {
            "list": self.node.create_client(ListParameters,
                                            f"{self.node_name}/list_parameters"),
            "get": self.node.create_client(GetParameters, f"{self.node_name}/get_parameters"),
            "set": self.node.create_client(SetParameters, f"{self.node_name}/set_parameters"),
            "describe": self.node.create_client(DescribeParameters,
                                                f"{self.node_name}/describe_parameters"),
        }

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    def wait(self, timeout: float) -> bool:
        """Wait until the node's parameter services answer.

        (They exist from the node's first line, but are served only once its constructor
        returned: the policy node loads its model in between.)
        """
        from rcl_interfaces.srv import ListParameters
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.service_is_ready() for c in self._clients.values()):
                # Short tries: a request sent while discovery still shows a previous instance
                # of the node (or before the new one matched) is never answered.
                try:
                    self._call("list", ListParameters.Request(),
                               timeout=min(3.0, max(0.1, deadline - time.monotonic())))
                    return True
                except TimeoutError:
                    continue
            self.executor.spin_once(timeout_sec=0.05)
        return False

    def _call(self, kind: str, request: Any, timeout: float = 10.0) -> Any:
        client = self._clients[kind]
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"{self.node_name}: {kind} service not available")
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        if not future.done():
            client.remove_pending_request(future)
            raise TimeoutError(f"{self.node_name}: {kind} call timed out")
        return future.result()

    def list(self) -> list[str]:
        """``ros2 param list <node>``."""
        from rcl_interfaces.srv import ListParameters
        return sorted(self._call("list", ListParameters.Request()).result.names)

    def get_values(self, names: list[str]) -> dict[str, Any]:
        """``ros2 param get`` of several names in one GetParameters call (as dump does)."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        response = self._call("get", GetParameters.Request(names=names))
        if len(response.values) != len(names):
            raise AssertionError(f"{self.node_name}: GetParameters answered "
                                 f"{len(response.values)} values for {len(names)} names")
        return {name: _plain(parameter_value_to_python(value))
                for name, value in zip(names, response.values)}

    def dump(self) -> dict[str, Any]:
        """The document ``ros2 param dump <node>`` prints."""
        values = self.get_values(self.list())
        parameters: dict[str, Any] = {}
        for name, value in values.items():
            _insert(parameters, name, value)
        return {self.node_name: {"ros__parameters": parameters}}

    def dump_yaml(self) -> str:
        return yaml.dump(self.dump(), default_flow_style=False)

    def set(self, **values: Any) -> dict[str, tuple[bool, str]]:
        """``ros2 param set``, one parameter per call; returns {name: (successful, reason)}."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        results = {}
        for name, value in values.items():
            request = SetParameters.Request(
                parameters=[Parameter(name, value=value).to_parameter_msg()])
            result = self._call("set", request).results[0]
            results[name] = (result.successful, result.reason)
        return results

    def describe(self, name: str) -> Any:
        from rcl_interfaces.srv import DescribeParameters
        return self._call("describe", DescribeParameters.Request(names=[name])).descriptors[0]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
        return list(value)
    return value


def _insert(tree: dict[str, Any], name: str, value: Any) -> None:
    head, _, rest = name.partition(PARAMETER_SEPARATOR)
    if rest:
        _insert(tree.setdefault(head, {}), rest, value)
    else:
        tree[head] = value


def flatten(document: dict[str, Any]) -> dict[str, Any]:
    """{node: {ros__parameters: nested}} -> {dotted name: value} of its only node."""
    (section,) = document.values()
    flat: dict[str, Any] = {}

    def walk(prefix: str, tree: dict[str, Any]) -> None:
        for key, value in tree.items():
            name = f"{prefix}{PARAMETER_SEPARATOR}{key}" if prefix else key
            if isinstance(value, dict):
                walk(name, value)
            else:
                flat[name] = value
    walk("", section["ros__parameters"])
    return flat


class DiagnosticsListener:
    """Collects /diagnostics statuses by name (``"<node>: <check>"``)."""

    def __init__(self, context: Any) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        self.node = rclpy.create_node(f"diagnostics_listener_{int(time.monotonic() * 1e6)}",
                                      context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.statuses: dict[str, list[Any]] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_array, 50)

    def _on_array(self, msg: Any) -> None:
        for status in msg.status:
            self.statuses.setdefault(status.name, []).append(status)

    def spin(self) -> None:
        self.executor.spin_once(timeout_sec=0.05)

    def latest(self, name: str) -> Any | None:
        found = self.statuses.get(name)
        return found[-1] if found else None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def level(status: Any) -> int:
    """DiagnosticStatus.level (a byte in Python) as an int."""
    value = status.level
    return value[0] if isinstance(value, (bytes, bytearray)) else int(value)


def values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}
