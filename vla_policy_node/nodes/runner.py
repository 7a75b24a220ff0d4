"""The life cycle every node's ``main()`` shares (Jazzy idiom, no rclpy context manager).

Shutdown is quiet and fast, as a terminal Ctrl-C or ``ros2 launch`` expects:

* SIGINT/SIGTERM go through rclpy's handler (on Jazzy it shuts the context down, so ``spin``
  returns with ExternalShutdownException and custom loops see ``context.ok()`` turn False) and
  then to ours, which records the signal and shuts the context down where rclpy did not
  (Humble), instead of raising KeyboardInterrupt. A second Ctrl-C (a terminal signals the
  whole process group, then ``ros2 launch`` forwards its own) therefore cannot raise
  KeyboardInterrupt in the middle of ``destroy_node``; only one that arrives while the node
  is still being built (loading a model) interrupts the start.
* After a signal the process ends right after ``destroy_node`` and rclpy's shutdown
  (atexit handlers and log flushing included), without the interpreter's teardown of torch,
  transformers and MuJoCo, which takes seconds and was what a user waited for after Ctrl-C.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _SignalState:
    """What the Python-level handlers saw; ``starting`` lets a signal interrupt start-up."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.starting = True

    def handler(self, signum: int, frame: object) -> None:
        first = self.received is None
        self.received = signum if first else self.received
        if first and self.starting and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt  # still building the node: stop building it
        if first:
            # Jazzy's handler has shut the context down already; Humble's only woke the
            # executor (and relied on KeyboardInterrupt): end the spin the same way there.
            rclpy.try_shutdown()


def _install_handlers(state: _SignalState) -> None:
    # Installed before rclpy.init: rclpy's handler shuts the context down and then calls
    # these (it chains to the handler it found).
    for sig in STOP_SIGNALS:
        signal.signal(sig, state.handler)


def _exit_now(code: int) -> None:
    """End the process now: atexit handlers, flushed logs and streams, no teardown."""
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_node(factory: Callable[[], Node], name: str,
             spin: Callable[[Node], None] = rclpy.spin, args: list[str] | None = None,
             exit_on_signal: bool = True) -> int:
    """Init rclpy, build the node, spin it until Ctrl-C / shutdown, clean up.

    A start-up error (bad configuration, missing checkpoint...) is logged as one fatal line
    naming the problem, without a traceback, and gives exit code 1. Ctrl-C and SIGTERM give
    exit code 0; with ``exit_on_signal`` (console scripts) the process then ends at once.
    """
    state = _SignalState()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        _install_handlers(state)
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        state.starting = False
        spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - every start-up error ends with its reason
        if state.received is None:
            if node is not None:
                raise
            rclpy.logging.get_logger(name).fatal(f"{name} cannot start: {exc}")
            code = 1
        # else: interrupted while starting (the context was shut down under the factory)
    finally:
        state.starting = False
        try:
            if node is not None:
                node.destroy_node()
            rclpy.try_shutdown()
        except KeyboardInterrupt:  # only without our handlers (not on the main thread)
            pass
    if exit_on_signal and in_main and state.received is not None:
        _exit_now(code)
    return code
