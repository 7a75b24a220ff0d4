"""config/fastdds.xml is localhost-only: every UDP socket of a running node is on 127.0.0.1.

Sockets are read from /proc (the node's socket inodes in /proc/<pid>/fd, their addresses in
/proc/<pid>/net/udp{,6}), as an attacker on the network would see them with ``ss -uanp``.
"""

from __future__ import annotations

import os
from pathlib import Path
import socket
import subprocess
import sys

from ros_harness import python_module, REPO_ROOT, ros_environment, wait_until

from vla_policy_node.ros_env import network_dds_profile


def udp_sockets(pid: int) -> list[tuple[str, int]]:
    """(local address, port) of every UDP socket process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    found = []
    for table, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) not in inodes:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, words), int(port, 16)))
    return sorted(found)


PROBE = """
import os, sys, time
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("probe")
node.create_publisher(String, "/probe", 10)
node.create_subscription(String, "/probe", lambda msg: None, 10)
print("up", flush=True)
time.sleep(60)
"""


def test_udp_socket_parser_reads_what_the_kernel_lists():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert ("127.0.0.1", sock.getsockname()[1]) in udp_sockets(os.getpid())


def test_every_udp_socket_of_a_node_is_bound_to_loopback(spawn, tmp_path):
    """With the suite's environment (what vla-bringup, the launch file and the tests set),
    a node's sockets were bound to 0.0.0.0 and to the non-loopback address: rmw_fastrtps's
    LOCALHOST discovery range adds an unrestricted UDP transport, and the profile listened
    on the multicast group."""
    node = spawn(python_module("vla_policy_node.nodes.recorder", "--ros-args", "-p",
                               f"output_dir:={tmp_path}", "-p", "keyboard:=false"),
                 name="vla_recorder")
    assert wait_until(lambda: "recording " in node.output(), 60.0), node.output()
    assert wait_until(lambda: len(udp_sockets(node.process.pid)) >= 3, 10.0)
    sockets = udp_sockets(node.process.pid)
    assert sockets and all(address == "127.0.0.1" for address, _ in sockets), sockets


def test_the_nodes_still_find_each_other(rclpy_context, spawn, tmp_path):
    """Localhost-only discovery (initial peers on 127.0.0.1, no multicast) finds the node's
    services from this process; this process's sockets are on loopback too."""
    from rclpy.node import Node
    node = spawn(python_module("vla_policy_node.nodes.recorder", "--ros-args", "-p",
                               f"output_dir:={tmp_path}", "-p", "keyboard:=false"),
                 name="vla_recorder")
    probe = Node("probe", context=rclpy_context)
    try:
        def found():
            return "/vla_recorder/start" in dict(probe.get_service_names_and_types())
        assert wait_until(found, 60.0), node.output()
        mine = udp_sockets(os.getpid())
        assert mine and all(address == "127.0.0.1" for address, _ in mine), mine
    finally:
        probe.destroy_node()


def test_the_network_profile_reaches_other_computers(ros_domain, tmp_path):
    """config/fastdds_network.xml (cameras on another computer) parses and listens on every
    interface, with the same shared memory."""
    env = ros_environment(ros_domain)
    env.update(FASTRTPS_DEFAULT_PROFILES_FILE=network_dds_profile(),
               ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET")
    with subprocess.Popen([sys.executable, "-c", PROBE], env=env, cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "up"
            assert wait_until(lambda: len(udp_sockets(child.pid)) >= 3, 10.0)
            sockets = udp_sockets(child.pid)
            assert any(address == "0.0.0.0" for address, _ in sockets), sockets
        finally:
            child.kill()
    assert "segment_size" in Path(network_dds_profile()).read_text()
