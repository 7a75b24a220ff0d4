"""Managed-node (lifecycle) interface for nodes that start working on their own.

The policy and the executor are built, validated and running when their constructor returns
(a bad configuration is one fatal line, as before), and ``ros2 launch`` / ``vla-bringup`` start
them as plain processes. :class:`AutoActive` adds the standard lifecycle services on top, so a
robot's bringup or an operator can still drive them with ``ros2 lifecycle``:

* at start the node walks ``unconfigured -> inactive -> active`` by itself;
* ``deactivate`` calls the node's :meth:`AutoActive.lifecycle_hold` (the executor holds its
  last command, the policy stops inferring); ``activate`` calls
  :meth:`AutoActive.lifecycle_resume`, which undoes only what the hold did (an executor
  paused or stopped by its operator stays so);
* ``cleanup`` keeps holding (the node stays built: there is nothing to unload), ``configure``
  then succeeds at once; ``shutdown`` calls ``lifecycle_hold(SHUTDOWN)`` and holds for good
  (the executor refuses ``~/resume`` and chunks; the process ends on Ctrl-C).

Publishers stay ordinary publishers: an inactive node keeps publishing its status and
diagnostics, which is what tells an operator why it holds.
"""

from __future__ import annotations

from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE
SHUTDOWN = "shut down"  # the reason lifecycle_hold gets on shutdown: hold for good


class AutoActive(LifecycleNodeMixin):
    """Mix into a :class:`rclpy.node.Node` subclass (before ``Node`` in the bases).

    Call :meth:`init_lifecycle` right after ``Node.__init__`` and :meth:`activate_lifecycle`
    at the end of the constructor; implement :meth:`lifecycle_hold` and
    :meth:`lifecycle_resume`.
    """

    def init_lifecycle(self) -> None:
        assert isinstance(self, Node)
        LifecycleNodeMixin.__init__(self)

    def activate_lifecycle(self) -> None:
        self.trigger_configure()
        self.trigger_activate()

    def lifecycle_hold(self, reason: str) -> tuple[bool, str]:
        raise NotImplementedError

    def lifecycle_resume(self) -> tuple[bool, str]:
        raise NotImplementedError

    def _transition(self, action: str, result: tuple[bool, str]) -> TransitionCallbackReturn:
        ok, message = result
        log = self.get_logger().info if ok else self.get_logger().error  # type: ignore
        log(f"lifecycle {action}: {message}")
        return SUCCESS if ok else FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return SUCCESS  # built and validated in the constructor

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if getattr(self, "_lifecycle_started", False):
            return self._transition("activate", self.lifecycle_resume())
        self._lifecycle_started = True  # the automatic activation at start: already working
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self.lifecycle_hold("deactivated"))

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return SUCCESS  # still holding; nothing to unload

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.lifecycle_hold(SHUTDOWN)
        return SUCCESS
