"""``/diagnostics`` for every node, the way robot stacks feed ``rqt_robot_monitor`` and the
diagnostic aggregator (``diagnostic_updater`` is not on PyPI, so this is its small core).

A node lists named checks; each returns a :class:`Check` (level, one-line message, key/values).
:class:`DiagnosticsPublisher` calls them about once a second and publishes one
``diagnostic_msgs/DiagnosticArray`` with a ``DiagnosticStatus`` per check, named
``"<node>: <check>"`` as diagnostic_updater names its tasks. A check that raises is reported as
ERROR with its exception: diagnostics never take a node down.

Levels say what a user should look at: OK (working, or idle and waiting for something normal),
WARN (working but degraded: late inferences, starved ticks, clamps, stale or rejected inputs
in the last period), ERROR (not doing its job: inference failures, control far below rate).
Counters are cumulative on the status topics; diagnostics judge what changed since the last
report (:class:`CounterDeltas`), so one old rejection does not leave a node WARN forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from typing import Any, Callable, Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
TOPIC = "/diagnostics"


@dataclass
class Check:
    """One check's result: ``level`` (OK/WARN/ERROR), a one-line ``message``, ``values``."""

    level: int
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)


class CounterDeltas:
    """How much each cumulative counter grew since the previous :meth:`update`."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def update(self, counters: Mapping[str, int]) -> dict[str, int]:
        deltas = {name: int(value) - self._last.get(name, 0)
                  for name, value in counters.items()}
        self._last = {name: int(value) for name, value in counters.items()}
        return deltas


def summarize(problems: list[tuple[int, str]], ok_message: str,
              values: Mapping[str, Any]) -> Check:
    """The worst level of ``problems`` with their messages joined, or OK with ``ok_message``."""
    if not problems:
        return Check(OK, ok_message, values)
    level = max(level for level, _ in problems)
    return Check(level, "; ".join(message for _, message in problems), values)


def _level_byte(level: int) -> bytes:
    return bytes([level])


class DiagnosticsPublisher:
    """Publishes ``checks`` on /diagnostics every ``period`` seconds of the node's clock."""

    def __init__(self, node: Node, checks: Mapping[str, Callable[[], Check]],
                 period: float = 1.0, hardware_id: str = "") -> None:
        self._node = node
        self._checks = dict(checks)
        self._hardware_id = hardware_id
        self._publisher = node.create_publisher(DiagnosticArray, TOPIC, 10)
        self._timer = node.create_timer(period, self.publish)

    def statuses(self) -> list[DiagnosticStatus]:
        out = []
        for name, check in self._checks.items():
            try:
                result = check()
            except Exception as exc:  # noqa: BLE001 - a broken check is reported, not fatal
                result = Check(ERROR, f"diagnostic check failed: {exc!r}")
            status = DiagnosticStatus()
            status.level = _level_byte(result.level)
            status.name = f"{self._node.get_name()}: {name}"
            status.message = result.message
            status.hardware_id = self._hardware_id
            status.values = [KeyValue(key=str(key), value=_format(value))
                             for key, value in result.values.items()]
            out.append(status)
        return out

    def publish(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = self.statuses()
        self._publisher.publish(msg)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class NodeLog:
    """A node's ROS logger behind the ``log(level, message)`` that
    :class:`vla_policy_node.control.throttle.ThrottledLogger` writes to."""

    def __init__(self, ros_logger: Any) -> None:
        self._logger = ros_logger

    def log(self, level: int, message: str) -> None:
        if level >= logging.ERROR:
            self._logger.error(message)
        elif level >= logging.WARNING:
            self._logger.warning(message)
        elif level >= logging.INFO:
            self._logger.info(message)
        else:
            self._logger.debug(message)


class RosLogHandler(logging.Handler):
    """Forwards the core's Python log records (``logging.getLogger(__name__)`` in
    ``control/``, ``sim/``...) to a node's ROS logger."""

    def __init__(self, ros_logger: Any, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._log = NodeLog(ros_logger)

    def emit(self, record: logging.LogRecord) -> None:
        self._log.log(record.levelno, self.format(record))
