"""decode_image: every supported encoding, rclpy and rosbags messages, and every rejection."""

from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage as RclCompressed
from sensor_msgs.msg import Image as RclImage

from vla_policy_node.data.images import ImageDecodeError, decode_image, encode_compressed

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
BagImage = TYPESTORE.types["sensor_msgs/msg/Image"]
BagCompressed = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
BagHeader = TYPESTORE.types["std_msgs/msg/Header"]
BagTime = TYPESTORE.types["builtin_interfaces/msg/Time"]


def rgb_image(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def as_encoding(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, C) pixel array in ``encoding``'s channel order."""
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return rgb[..., ::-1]
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2)
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], alpha], axis=2)
    if encoding == "mono8":
        return rgb[..., :1]
    raise AssertionError(encoding)


def raw_bytes(pixels: np.ndarray, pad: int = 0) -> tuple[bytes, int]:
    h, w, c = pixels.shape
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, :w * c] = pixels.reshape(h, w * c)
    rows[:, w * c:] = 0xEE  # padding must never leak into the picture
    return rows.tobytes(), w * c + pad


def rcl_image(pixels: np.ndarray, encoding: str, pad: int = 0) -> RclImage:
    data, step = raw_bytes(pixels, pad)
    msg = RclImage(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, step=step)
    msg.data = data
    return msg


def bag_image(pixels: np.ndarray, encoding: str, pad: int = 0) -> object:
    data, step = raw_bytes(pixels, pad)
    return BagImage(header=BagHeader(stamp=BagTime(sec=1, nanosec=2), frame_id="cam"),
                    height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                    is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8).copy())


def expected_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    return np.repeat(rgb[..., :1], 3, axis=2) if encoding == "mono8" else rgb


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("make", [rcl_image, bag_image], ids=["rclpy", "rosbags"])
def test_raw_encodings_decode_to_rgb(encoding: str, pad: int, make) -> None:
    rgb = rgb_image()
    out = decode_image(make(as_encoding(rgb, encoding), encoding, pad))
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected_rgb(rgb, encoding))


def test_packed_rgb8_is_a_read_only_view_without_copy() -> None:
    rgb = rgb_image(48, 64)
    msg = bag_image(rgb, "rgb8")
    out = decode_image(msg)
    assert np.shares_memory(out, msg.data)
    assert not out.flags.writeable
    np.testing.assert_array_equal(out, rgb)


def test_rclpy_and_rosbags_messages_of_the_same_bytes_decode_identically() -> None:
    """The node (rclpy) and the converter (rosbags) must see identical pixels."""
    rgb = rgb_image(12, 16, seed=3)
    rcl = rcl_image(as_encoding(rgb, "bgr8"), "bgr8", pad=4)
    from_bag = TYPESTORE.deserialize_cdr(serialize_message(rcl), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(decode_image(rcl), decode_image(from_bag))
    np.testing.assert_array_equal(decode_image(from_bag), rgb)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("declared", ["", "{fmt}", "rgb8; {fmt} compressed bgr8"])
def test_compressed_round_trip(fmt: str, declared: str) -> None:
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[:, :20] = (200, 30, 10)  # red left half: catches a BGR/RGB swap
    rgb[:, 20:] = (10, 40, 220)
    data = encode_compressed(rgb, fmt)
    for msg in (RclCompressed(format=declared.format(fmt=fmt), data=data),
                BagCompressed(header=BagHeader(stamp=BagTime(sec=0, nanosec=0), frame_id=""),
                              format=declared.format(fmt=fmt),
                              data=np.frombuffer(data, np.uint8).copy())):
        out = decode_image(msg)
        assert out.shape == (32, 40, 3) and out.dtype == np.uint8
        if fmt == "png":
            np.testing.assert_array_equal(out, rgb)
        else:
            # Away from the colour edge (chroma subsampling blurs it) JPEG is near-exact.
            error = np.abs(out.astype(int) - rgb)
            assert error[:, :16].max() <= 8 and error[:, 24:].max() <= 8


@pytest.mark.parametrize("encoding,height,width,step,size,match", [
    ("rgb8", 4, 4, 12, 47, "needs 48 bytes, data has 47"),
    ("rgb8", 4, 4, 11, 48, "step 11 < width 4"),
    ("rgba8", 4, 4, 12, 64, "step 12 < width 4"),
    ("rgb8", 0, 4, 12, 0, "empty rgb8 image"),
    ("rgb8", 4, 0, 0, 0, "empty rgb8 image"),
    ("16UC1", 4, 4, 8, 32, "unsupported image encoding '16UC1'"),
    ("yuv422", 4, 4, 8, 32, "unsupported image encoding 'yuv422'"),
])
def test_raw_rejections_name_the_bad_value(encoding, height, width, step, size, match) -> None:
    msg = RclImage(height=height, width=width, encoding=encoding, step=step)
    msg.data = bytes(size)
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(msg)


def test_compressed_rejections() -> None:
    rgb = rgb_image(16, 16)
    jpeg = encode_compressed(rgb, "jpeg")
    png = encode_compressed(rgb, "png")
    cases = [
        (RclCompressed(format="jpeg", data=jpeg[:len(jpeg) // 2]), "truncated JPEG"),
        (RclCompressed(format="png", data=png[:len(png) // 2]), "truncated PNG"),
        (RclCompressed(format="jpeg", data=b"not an image at all"), "neither JPEG nor PNG"),
        (RclCompressed(format="jpeg", data=b""), "has no data"),
        (RclCompressed(format="png", data=jpeg), "declares format 'png' but holds JPEG"),
        (RclCompressed(format="h264", data=jpeg), "unsupported compressed image format 'h264'"),
        (RclCompressed(format="16UC1; compressedDepth", data=png), "unsupported compressed"),
        # Valid markers around garbage: OpenCV cannot decode it.
        (RclCompressed(format="jpeg", data=jpeg[:3] + bytes(100) + b"\xff\xd9"), "cannot decode"),
    ]
    for msg, match in cases:
        with pytest.raises(ImageDecodeError, match=match):
            decode_image(msg)


def test_not_an_image_message() -> None:
    with pytest.raises(ImageDecodeError, match="neither a sensor_msgs/Image"):
        decode_image(object())
    with pytest.raises(ImageDecodeError, match="dtype float32"):
        decode_image(BagImage(header=BagHeader(stamp=BagTime(sec=0, nanosec=0), frame_id=""),
                              height=1, width=1, encoding="rgb8", is_bigendian=0, step=3,
                              data=np.zeros(3, np.float32)))
