"""The hand CDR readers give exactly what rosbags' deserializer gives, and reject bad bytes."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import JointState as RclJointState

from vla_policy_node.data import cdr
from vla_policy_node.data.cdr import (
    CdrError, header_stamps, parse_compressed_image, parse_image, parse_joint_states)
from vla_policy_node.data.images import decode_image, encode_compressed

STORE = get_typestore(Stores.ROS2_JAZZY)
T = STORE.types
JOINTS = ["waist", "shoulder", "elbow", "gripper"]


def header(frame_id: str, sec: int = 7, nanosec: int = 123) -> object:
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
        sec=sec, nanosec=nanosec), frame_id=frame_id)


def image_msg(h: int, w: int, encoding: str, pad: int, frame_id: str) -> object:
    channels = 1 if encoding == "mono8" else 3
    step = w * channels + pad
    data = np.random.default_rng(h * w + pad).integers(0, 256, h * step, dtype=np.uint8)
    return T["sensor_msgs/msg/Image"](header=header(frame_id), height=h, width=w,
                                      encoding=encoding, is_bigendian=0, step=step, data=data)


def serialize(msg: object, msgtype: str, little: bool = True) -> bytes:
    return bytes(STORE.serialize_cdr(msg, msgtype, little_endian=little))


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("frame_id", ["", "c", "cam", "camera_link"])  # every alignment
@pytest.mark.parametrize("shape", [(4, 5, "rgb8", 0), (3, 7, "bgr8", 3), (5, 9, "mono8", 1),
                                   (6, 11, "rgb8", 5)])
def test_image_matches_rosbags_including_odd_widths_and_padded_steps(
        little: bool, frame_id: str, shape: tuple[int, int, str, int]) -> None:
    msg = image_msg(*shape, frame_id=frame_id)
    raw = serialize(msg, "sensor_msgs/msg/Image", little)
    ours = parse_image(raw)
    ref = STORE.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    for field in ("height", "width", "encoding", "is_bigendian", "step"):
        assert getattr(ours, field) == getattr(ref, field), field
    assert ours.header.frame_id == ref.header.frame_id
    assert (ours.header.stamp.sec, ours.header.stamp.nanosec) == (7, 123)
    np.testing.assert_array_equal(np.frombuffer(ours.data, np.uint8), ref.data)
    np.testing.assert_array_equal(decode_image(ours), decode_image(ref))


def test_image_data_is_a_view_of_the_buffer() -> None:
    raw = bytearray(serialize(image_msg(4, 5, "rgb8", 0, "cam"), "sensor_msgs/msg/Image"))
    pixels = decode_image(parse_image(raw))
    raw[-1] ^= 0xFF  # the last pixel byte
    assert pixels[-1, -1, -1] == raw[-1]


def test_compressed_image_matches_rosbags() -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (250, 20, 10)
    jpeg = np.frombuffer(encode_compressed(rgb), np.uint8)
    msg = T["sensor_msgs/msg/CompressedImage"](header=header("wrist"), format="jpeg",
                                               data=jpeg)
    raw = serialize(msg, "sensor_msgs/msg/CompressedImage")
    ours = parse_compressed_image(raw)
    ref = STORE.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage")
    assert ours.format == "jpeg" and ours.header.frame_id == "wrist"
    np.testing.assert_array_equal(np.frombuffer(ours.data, np.uint8), ref.data)
    np.testing.assert_array_equal(decode_image(ours), decode_image(ref))


@pytest.mark.parametrize("parse,msgtype,msg", [
    (parse_image, "sensor_msgs/msg/Image", image_msg(4, 5, "rgb8", 2, "cam")),
    (parse_compressed_image, "sensor_msgs/msg/CompressedImage",
     T["sensor_msgs/msg/CompressedImage"](header=header("c"), format="jpeg",
                                          data=np.arange(40, dtype=np.uint8)))])
def test_truncated_or_corrupt_messages_are_rejected(parse, msgtype: str, msg: object) -> None:
    raw = serialize(msg, msgtype)
    for cut in (3, 11, 20, len(raw) - 1):
        with pytest.raises(CdrError, match="truncated|encapsulation|terminated|length 0"):
            parse(raw[:cut])
    with pytest.raises(CdrError, match="encapsulation"):
        parse(b"\x07\x00" + raw[2:])
    parse(raw + b"\xee" * 8)  # trailing bytes (rclpy's serialize_message leaves some)
    bad = bytearray(raw)
    bad[12:16] = (1 << 30).to_bytes(4, "little")  # frame_id length far past the end
    with pytest.raises(CdrError, match="truncated .*header.frame_id"):
        parse(bytes(bad))


def joint_state(names: list[str], position: list[float], velocity: list[float] | None = None,
                effort: list[float] | None = None, frame_id: str = "", sec: int = 1,
                nanosec: int = 0) -> object:
    return T["sensor_msgs/msg/JointState"](
        header=header(frame_id, sec, nanosec), name=names,
        position=np.array(position, np.float64),
        velocity=np.array(velocity or [], np.float64),
        effort=np.array(effort or [], np.float64))


def reference(raws: list[bytes], joints: list[str]) -> tuple[np.ndarray, ...]:
    msgs = [STORE.deserialize_cdr(r, "sensor_msgs/msg/JointState") for r in raws]
    cols = [[list(m.name).index(j) for j in joints] for m in msgs]
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs])
    pos = np.array([m.position[c] for m, c in zip(msgs, cols)])
    vel = (np.array([m.velocity[c] for m, c in zip(msgs, cols)])
           if all(len(m.velocity) == len(m.name) for m in msgs) else None)
    return stamps, pos, vel


@pytest.mark.parametrize("little", [True, False], ids=["le", "be"])
def test_joint_states_match_rosbags_across_layouts(little: bool) -> None:
    rng = np.random.default_rng(0)
    msgs = []
    for k in range(40):
        names = list(JOINTS) if k % 3 else ["extra"] + JOINTS[::-1]  # other order, more names
        frame_id = "" if k % 5 else "base_link"
        n = len(names)
        msgs.append(joint_state(names, list(rng.normal(size=n)), list(rng.normal(size=n)),
                                list(rng.normal(size=n)), frame_id, sec=k, nanosec=k * 7))
    raws = [serialize(m, "sensor_msgs/msg/JointState", little) for m in msgs]
    states = parse_joint_states(raws, ["elbow", "waist", "gripper"])
    stamps, pos, vel = reference(raws, ["elbow", "waist", "gripper"])
    np.testing.assert_array_equal(states.stamps, stamps)
    np.testing.assert_array_equal(states.position, pos)
    np.testing.assert_array_equal(states.velocity, vel)
    # The one-by-one path (a publisher whose layout changes every message) agrees.
    one_by_one = parse_joint_states(raws, ["elbow", "waist", "gripper"], max_layouts=0)
    np.testing.assert_array_equal(one_by_one.position, pos)
    np.testing.assert_array_equal(one_by_one.effort, states.effort)


def test_joint_states_serialized_by_rclpy_with_empty_sequences() -> None:
    """rclpy's serializer: nothing aligned for an empty sequence, junk padding and tail."""
    msgs, ref = [], []
    for k in range(5):
        msg = RclJointState(name=JOINTS, position=[0.1 * k, 0.2, 0.3, 0.4 + k])
        msg.header.stamp.sec, msg.header.frame_id = k, "x" * k
        msgs.append(bytes(serialize_message(msg)))
        ref.append(deserialize_message(msgs[-1], RclJointState).position)
    states = parse_joint_states(msgs, JOINTS)
    np.testing.assert_array_equal(states.position, ref)
    assert states.velocity is None and states.effort is None
    np.testing.assert_array_equal(states.stamps, np.arange(5) * 10**9)


def test_messages_differing_only_in_padding_share_one_layout(monkeypatch) -> None:
    raw = serialize(joint_state(JOINTS, [1.0, 2.0, 3.0, 4.0], frame_id="ab"),
                    "sensor_msgs/msg/JointState")
    padding = 4 + 8 + 4 + 3  # after frame_id "ab\0": one byte of padding
    raws = []
    for k in range(30):
        junk = bytearray(raw)
        junk[padding] = k
        junk[4:8] = k.to_bytes(4, "little")  # stamp sec
        raws.append(bytes(junk))
    calls = []
    monkeypatch.setattr(cdr, "_joint_layout", lambda r, f=cdr._joint_layout: (
        calls.append(1), f(r))[1])
    states = parse_joint_states(raws, JOINTS)
    assert len(calls) == 1
    np.testing.assert_array_equal(states.position, np.tile([1.0, 2.0, 3.0, 4.0], (30, 1)))
    np.testing.assert_array_equal(states.stamps, np.arange(30) * 10**9)


def test_joint_state_errors_name_the_problem() -> None:
    raws = [serialize(joint_state(["joint1", "joint2"], [0.0, 1.0]),
                      "sensor_msgs/msg/JointState")]
    with pytest.raises(CdrError, match=r"/left: joints \['waist'\] not in the message's "
                                       r"names \['joint1', 'joint2'\]"):
        parse_joint_states(raws, ["waist"], what="/left")
    raws = [serialize(joint_state(["waist", "elbow"], [0.0]), "sensor_msgs/msg/JointState")]
    with pytest.raises(CdrError, match="2 names but 1 positions"):
        parse_joint_states(raws, ["waist"])
    good = serialize(joint_state(JOINTS, [0.0] * 4), "sensor_msgs/msg/JointState")
    with pytest.raises(CdrError, match="truncated"):
        parse_joint_states([good, good[:-9]], JOINTS)


def test_header_stamps() -> None:
    raws = [serialize(image_msg(1, 1, "mono8", 0, "c"), "sensor_msgs/msg/Image"),
            serialize(joint_state(JOINTS, [0.0] * 4, sec=0, nanosec=0),
                      "sensor_msgs/msg/JointState")]
    np.testing.assert_array_equal(header_stamps([r[:12] for r in raws]), [7 * 10**9 + 123, 0])
    with pytest.raises(CdrError, match="truncated"):
        header_stamps([raws[0][:8]])
