"""The life cycle every node's ``main()`` shares (Jazzy idiom, no rclpy context manager)."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def run_node(factory: Callable[[], Node], name: str,
             spin: Callable[[Node], None] = rclpy.spin, args: list[str] | None = None) -> int:
    """Init rclpy, build the node, spin it until Ctrl-C / shutdown, clean up.

    A start-up error (bad configuration, missing checkpoint...) is logged as one fatal line
    naming the problem, without a traceback, and gives exit code 1.
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
        spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - every start-up error ends with its reason
        if node is not None:
            raise
        rclpy.logging.get_logger(name).fatal(f"{name} cannot start: {exc}")
        code = 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code
