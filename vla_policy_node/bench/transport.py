"""vla-bench transport: one-way latency and loss of camera streams between two processes.

Three 640x480 rgb8 ``sensor_msgs/Image`` streams at 30 Hz go from a publisher process to a
subscriber process (sensor-data QoS, as the policy node subscribes to cameras), once with the
project's Fast DDS profile (config/fastdds.xml) and once with Fast DDS defaults. Latency is
receive time minus the header stamp (both on this machine's clock).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from vla_policy_node.bench import report
from vla_policy_node.ros_env import isolated_environment, reserve_domain

DESCRIPTION = ("one-way latency and loss of three 640x480 rgb8 image streams at 30 Hz between "
               "two processes, project DDS profile vs Fast DDS defaults")
TOPIC_PREFIX = "/bench/camera"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of streaming per configuration (default 10)")
    parser.add_argument("--streams", type=int, default=3, help="camera streams (default 3)")
    parser.add_argument("--rate", type=float, default=30.0, help="frames/s per stream")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--profiles", nargs="+", default=["project", "default"],
                        choices=["project", "default"],
                        help="DDS configurations to measure (default: both)")


def _publisher(streams: int, rate: float, width: int, height: int, duration: float,
               warmup: float) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("bench_camera_publisher")
    publishers = [node.create_publisher(Image, f"{TOPIC_PREFIX}{i}", qos_profile_sensor_data)
                  for i in range(streams)]
    frame = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8).tobytes()
    messages = []
    for _ in range(streams):
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.data = frame
        messages.append(msg)
    # Wait for the subscriber to match every stream before counting.
    deadline = time.monotonic() + 20.0
    while (any(p.get_subscription_count() == 0 for p in publishers)
           and time.monotonic() < deadline):
        rclpy.spin_once(node, timeout_sec=0.05)
    period = 1.0 / rate
    start = time.monotonic() + warmup
    sent = 0
    tick = 0
    while True:
        deadline = start - warmup + tick * period
        now = time.monotonic()
        if deadline > now:
            time.sleep(deadline - now)
        if time.monotonic() - start > duration:
            break
        counting = time.monotonic() >= start
        for msg, publisher in zip(messages, publishers):
            stamp = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = "count" if counting else "warmup"
            publisher.publish(msg)
            sent += counting
        tick += 1
    time.sleep(1.0)  # let the last frames arrive
    print(json.dumps({"sent": sent}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def _subscriber(streams: int, out_path: str, stop_file: str) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("bench_camera_subscriber")
    latencies: list[float] = []

    def on_image(msg: Image) -> None:
        if msg.header.frame_id != "count":
            return
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latencies.append((time.time_ns() - sent) * 1e-6)

    for i in range(streams):
        node.create_subscription(Image, f"{TOPIC_PREFIX}{i}", on_image,
                                 qos_profile_sensor_data)
    while not os.path.exists(stop_file):
        rclpy.spin_once(node, timeout_sec=0.05)
    with open(out_path, "w") as f:
        json.dump({"latencies_ms": latencies}, f)
    node.destroy_node()
    rclpy.try_shutdown()


def _measure(profile: str, args: argparse.Namespace) -> dict[str, Any]:
    with reserve_domain() as domain, tempfile.TemporaryDirectory() as tmp:
        env = isolated_environment(domain, dds_profile=(profile == "project"))
        out_path, stop_file = os.path.join(tmp, "sub.json"), os.path.join(tmp, "stop")
        role = [sys.executable, "-m", __name__]
        subscriber = subprocess.Popen(
            role + ["_subscriber", str(args.streams), out_path, stop_file], env=env)
        publisher = subprocess.run(
            role + ["_publisher", str(args.streams), str(args.rate), str(args.width),
                    str(args.height), str(args.duration), "2.0"],
            env=env, capture_output=True, text=True, timeout=args.duration + 60)
        open(stop_file, "w").close()
        subscriber.wait(timeout=30)
        if publisher.returncode != 0:
            raise RuntimeError(f"publisher failed: {publisher.stderr[-2000:]}")
        sent = json.loads(publisher.stdout.strip().splitlines()[-1])["sent"]
        with open(out_path) as f:
            latencies = np.array(json.load(f)["latencies_ms"])
    received = int(latencies.size)
    return {
        "profile": profile, "streams": args.streams, "rate_hz": args.rate,
        "resolution": f"{args.width}x{args.height}", "sent": sent, "received": received,
        "loss_percent": 100.0 * max(0, sent - received) / max(sent, 1),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if received else float("nan"),
        "latency_ms_p95": float(np.percentile(latencies, 95)) if received else float("nan"),
        "latency_ms_max": float(latencies.max()) if received else float("nan"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = [_measure(profile, args) for profile in args.profiles]
    headers = ["DDS profile", "streams", "sent", "received", "loss %", "p50 ms", "p95 ms",
               "max ms"]
    names = {"project": "project (config/fastdds.xml)", "default": "Fast DDS defaults"}
    rows = [[names[r["profile"]], f"{r['streams']} x {r['resolution']} @ {r['rate_hz']:g} Hz",
             r["sent"], r["received"], round(r["loss_percent"], 2),
             round(r["latency_ms_p50"], 2), round(r["latency_ms_p95"], 2),
             round(r["latency_ms_max"], 2)] for r in results]
    table = report.format_table(headers, rows)
    print(table)
    result = {"benchmark": "transport", "machine": report.machine_description(),
              "duration_s": args.duration, "results": results}
    if args.update_docs:
        report.update_docs_section("transport", "\n".join([
            "## Transport: camera images between two processes",
            "",
            f"`vla-bench transport --duration {args.duration:g}` on {result['machine']}: "
            "sensor-data QoS (best effort), one-way latency = receive time - header stamp. "
            "Target: median <= 5 ms, 0 loss with the project profile.",
            "", table]))
    return result


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "_publisher":
        _publisher(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                   float(sys.argv[6]), float(sys.argv[7]))
    elif role == "_subscriber":
        _subscriber(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown role {role!r}")
