"""The one image decoder of the suite: ROS image messages -> (H, W, 3) uint8 RGB arrays.

The live policy node and the bag converter both call :func:`decode_image`, so the model sees
identical pixels in training and in deployment. It is duck-typed and accepts

* ``sensor_msgs/Image`` (fields ``encoding, height, width, step, is_bigendian, data``) and
* ``sensor_msgs/CompressedImage`` (fields ``format, data``)

from rclpy (``data`` is an ``array.array``) as well as from the ``rosbags`` library (``data``
is a ``np.ndarray``). No rclpy import: this module belongs to the ROS-free core.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Raw encodings accepted by :func:`decode_image`, with their channel count.
RAW_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

# OpenCV conversion from each encoding to RGB (None: already RGB).
_TO_RGB: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}

#: imdecode flag that decodes straight to RGB (None: OpenCV too old, decode BGR and convert).
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into an RGB array (the message says why)."""


def _as_bytes_view(data: Any) -> np.ndarray:
    """(N,) uint8 view of a message's ``data`` without copying where the buffer allows it."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageDecodeError(f"image data must be uint8, got dtype {data.dtype}")
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        # A plain list of ints (a hand-built message): one copy is unavoidable.
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageDecodeError(
                f"image data of type {type(data).__name__} is not a byte buffer: {exc}") from None


def decode_image(msg: Any) -> np.ndarray:
    """Decode a ROS image message into an RGB array.

    Args:
        msg: a ``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) or a
            ``sensor_msgs/CompressedImage`` (jpeg, png), from rclpy or rosbags.

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous. For a tightly packed rgb8 image this is a read-only
        view of the message's buffer (no copy); copy it before modifying.

    Raises:
        ImageDecodeError: unknown encoding or format, inconsistent sizes, undecodable data.
    """
    if hasattr(msg, "encoding"):
        return _decode_raw(msg)
    if hasattr(msg, "format"):
        return _decode_compressed(msg)
    raise ImageDecodeError(
        f"{type(msg).__name__} is neither a sensor_msgs/Image (no 'encoding') nor a "
        f"sensor_msgs/CompressedImage (no 'format')")


def _decode_raw(msg: Any) -> np.ndarray:
    encoding = str(msg.encoding).strip().lower()
    channels = RAW_ENCODINGS.get(encoding)
    if channels is None:
        raise ImageDecodeError(
            f"unsupported image encoding {msg.encoding!r}; supported: "
            f"{', '.join(RAW_ENCODINGS)} (or a CompressedImage with jpeg/png)")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty {encoding} image: {width}x{height} (width x height)")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageDecodeError(
            f"{encoding} image step {step} < width {width} * {channels} channels = {row_bytes}")
    data = _as_bytes_view(msg.data)
    needed = step * height
    if data.size < needed:
        raise ImageDecodeError(
            f"{encoding} {width}x{height} image with step {step} needs {needed} bytes, "
            f"data has {data.size}")
    # Rows may be padded (step > width * channels): view with the step, then cut the padding.
    rows = data[:needed].reshape(height, step)
    pixels = rows[:, :row_bytes].reshape(height, width, channels) if channels > 1 else (
        rows[:, :row_bytes])
    conversion = _TO_RGB[encoding]
    if conversion is None:
        if not pixels.flags.c_contiguous:
            return np.ascontiguousarray(pixels)
        if pixels.flags.writeable:
            # Views of the message buffer are read-only so nobody edits the message by accident.
            pixels = pixels.view()
            pixels.setflags(write=False)
        return pixels
    # OpenCV handles padded rows and converts in C (no per-pixel Python work).
    return cv2.cvtColor(pixels, conversion)


def _decode_compressed(msg: Any) -> np.ndarray:
    fmt = str(msg.format).strip().lower()
    data = _as_bytes_view(msg.data)
    if data.size == 0:
        raise ImageDecodeError(f"compressed image (format {msg.format!r}) has no data")
    head = data[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        kind = "jpeg"
    elif head.startswith(_PNG_MAGIC):
        kind = "png"
    else:
        kind = None
    # image_transport writes e.g. "jpeg", "png", "rgb8; jpeg compressed bgr8".
    declared = "jpeg" if ("jpeg" in fmt or "jpg" in fmt) else "png" if "png" in fmt else None
    if "compresseddepth" in fmt or (fmt and declared is None):
        raise ImageDecodeError(
            f"unsupported compressed image format {msg.format!r}; supported: jpeg, png")
    if kind is None:
        raise ImageDecodeError(
            f"compressed image (format {msg.format!r}, {data.size} bytes) is neither JPEG nor "
            f"PNG: starts with {head.hex()}")
    if declared is not None and declared != kind:
        raise ImageDecodeError(
            f"compressed image declares format {msg.format!r} but holds {kind.upper()} data")
    # libjpeg decodes a truncated JPEG into a grey-padded picture with only a warning; a
    # truncated frame must not become training data, so insist on the end marker.
    tail = data[-64:].tobytes().rstrip(b"\x00")
    if kind == "jpeg" and not tail.endswith(_JPEG_EOI):
        raise ImageDecodeError(
            f"truncated JPEG ({data.size} bytes): no end-of-image marker")
    if kind == "png" and _PNG_IEND not in tail:
        raise ImageDecodeError(f"truncated PNG ({data.size} bytes): no IEND chunk")
    # compressed_image_transport stores colour JPEG/PNG in the standard order, which OpenCV
    # returns as BGR; IMREAD_COLOR_RGB (OpenCV >= 4.10) has libjpeg/libpng write RGB directly,
    # the same pixels without a second pass over the image (test_data_images checks both).
    if _IMREAD_RGB is not None:
        rgb = cv2.imdecode(data, _IMREAD_RGB)
    else:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ImageDecodeError(
            f"cannot decode {kind.upper()} image ({data.size} bytes, format {msg.format!r})")
    return rgb


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Compress an (H, W, 3) uint8 RGB array as image_transport does (for tests and recording).

    Raises:
        ImageDecodeError: ``rgb`` is not (H, W, 3) uint8 or ``fmt`` is not jpeg/png.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageDecodeError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    if fmt not in ("jpeg", "png"):
        raise ImageDecodeError(f"unsupported compression {fmt!r}; use jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if fmt == "jpeg" else ".png",
                           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ImageDecodeError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()
