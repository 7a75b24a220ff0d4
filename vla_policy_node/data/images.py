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


#: The format image_transport's compressed plugin writes for an rgb8 camera (JPEG).
JPEG_TRANSPORT_FORMAT = "rgb8; jpeg compressed bgr8"

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


# ====================================================================== policy image chain
# One function turns a camera frame into the 224x224 uint8 image the OFT model sees, in
# training (with augmentation) and in deployment: the official OpenVLA-OFT chain, step by step
# (openvla-oft 213c5ff; TensorFlow is not in our stack, so its ops are reproduced in numpy):
#   1. PIL bicubic resize to 256x256, as ALOHA frames were stored for training
#      (experiments/robot/aloha/aloha_utils.py:39-48). LIBERO renders 256x256: a no-op there.
#   2. JPEG round trip at TF's default quality 95 (4:2:0, baseline; decoded with TF's default
#      fast integer DCT), then an antialiased
#      Lanczos-3 resize to 224 as tf.image.resize(method="lanczos3", antialias=True) computes it,
#      round half to even, clip, uint8 (openvla_utils.py:520-543).
#   3. Crop of 90% of the area (side sqrt(0.9)) resized back to 224 with the sampling grid of
#      tf.image.crop_and_resize (bilinear): centred at inference (openvla_utils.py:546-626), at
#      a random offset in training (random_resized_crop scale 0.9, ratio 1), then, in training,
#      colour jitter (prismatic/vla/datasets/datasets.py:150-165, dlimp's augment_image); clip
#      to [0, 1]; uint8 as convert_image_dtype(saturate=True): x * 255.5 truncated.
JPEG_QUALITY = 95          # tf.image.encode_jpeg's default
_LANCZOS_RADIUS = 3.0
_TF_PI = np.float32(3.14159265359)   # the constant in TF's LanczosKernelFunc


def _lanczos3(x: np.ndarray) -> np.ndarray:
    x = np.abs(x).astype(np.float32)
    r = np.float32(_LANCZOS_RADIUS)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (r * np.sin(_TF_PI * x) * np.sin(_TF_PI * x / r) / (_TF_PI * _TF_PI * x * x))
    value = np.where(x <= np.float32(1e-3), np.float32(1.0), value)
    return np.where(x > r, np.float32(0.0), value).astype(np.float32)


def _tf_resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float32 weights of TF's ScaleAndTranslate (lanczos3, antialias, translate 0):
    spans and per-row normalization as tensorflow/core/kernels/image/scale_and_translate_op.cc."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))
    radius = np.float32(_LANCZOS_RADIUS) * kernel_scale
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for x in range(out_size):
        sample = (np.float32(x) + np.float32(0.5)) * inv_scale
        if sample < 0 or sample > in_size:
            continue
        start = int(np.clip(np.ceil(sample - radius - np.float32(0.5)), 0, in_size - 1))
        end = int(np.clip(np.floor(sample + radius - np.float32(0.5)), 0, in_size - 1)) + 1
        source = np.arange(start, end, dtype=np.float32)
        w = _lanczos3((source + np.float32(0.5) - sample) * (np.float32(1.0) / kernel_scale))
        total = w.sum(dtype=np.float32)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            weights[x, start:end] = w * (np.float32(1.0) / total)
    return weights


_WEIGHTS_CACHE: dict[tuple[int, int], np.ndarray] = {}


def tf_lanczos3_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 as ``tf.image.resize(..., "lanczos3",
    antialias=True)`` followed by round (half to even), clip to [0, 255], uint8."""
    h, w = image.shape[:2]
    for n in (h, w):
        if (n, size) not in _WEIGHTS_CACHE:
            _WEIGHTS_CACHE[(n, size)] = _tf_resize_weights(n, size)
    wy, wx = _WEIGHTS_CACHE[(h, size)], _WEIGHTS_CACHE[(w, size)]
    c = image.shape[2]
    pixels = image.astype(np.float32).transpose(0, 2, 1)            # (h, c, w)
    # TF resizes along the width first, then along the height (two float32 matmuls).
    across = pixels @ wx.T                                           # (h, c, size)
    out = (wy @ across.reshape(h, c * size)).reshape(size, c, size)  # (size, c, size)
    return np.clip(np.round(out), 0, 255).astype(np.uint8).transpose(0, 2, 1).copy()


def jpeg_round_trip(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode and decode as tf.image.encode_jpeg / tf.io.decode_image do.

    Encoding: libjpeg quality 95, 4:2:0, baseline, accurate integer DCT (Pillow's defaults are
    the same settings). Decoding: TF's default DCT is the *fast* integer one (JDCT_IFAST) with
    fancy upsampling; the accurate DCT that Pillow/OpenCV use is off by up to 10 grey levels
    after the later resizes, so decode with simplejpeg's fastdct (libjpeg-turbo)."""
    import io

    from PIL import Image
    import simplejpeg
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    return simplejpeg.decode_jpeg(buffer.getvalue(), colorspace="RGB", fastdct=True,
                                  fastupsample=False)


def pil_bicubic_resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((size, size), resample=Image.BICUBIC))


def crop_and_resize(image: np.ndarray, top: float, left: float, side: float,
                    size: int) -> np.ndarray:
    """tf.image.crop_and_resize (bilinear) of one box [top, left, top+side, left+side]
    (normalized coordinates) of a float32 (H, W, C) image to (size, size, C)."""
    h, w = image.shape[:2]
    f = np.float32
    y1, x1 = f(top), f(left)
    y2, x2 = f(top) + f(side), f(left) + f(side)

    def grid(a: np.float32, b: np.float32, n: int) -> np.ndarray:
        scale = (b - a) * f(n - 1) / f(size - 1) if size > 1 else f(0)
        return (a * f(n - 1) + np.arange(size, dtype=f) * scale).astype(f)

    ys, xs = grid(y1, y2, h), grid(x1, x2, w)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y_lerp, x_lerp = (ys - y0).astype(f), (xs - x0).astype(f)
    y_hi, x_hi = np.ceil(ys).astype(np.int64), np.ceil(xs).astype(np.int64)
    y0, y_hi = np.clip(y0, 0, h - 1), np.clip(y_hi, 0, h - 1)
    x0, x_hi = np.clip(x0, 0, w - 1), np.clip(x_hi, 0, w - 1)
    rows_top, rows_bottom = image[y0], image[y_hi]
    top_left, top_right = rows_top[:, x0], rows_top[:, x_hi]
    bottom_left, bottom_right = rows_bottom[:, x0], rows_bottom[:, x_hi]
    xl = x_lerp[None, :, None]
    top_row = top_left + (top_right - top_left) * xl
    bottom_row = bottom_left + (bottom_right - bottom_left) * xl
    return (top_row + (bottom_row - top_row) * y_lerp[:, None, None]).astype(f)


def _to_uint8_saturate(pixels: np.ndarray) -> np.ndarray:
    """tf.image.convert_image_dtype(float -> uint8, saturate=True): x * 255.5, truncated."""
    scaled = np.clip(pixels, 0.0, 1.0).astype(np.float32) * np.float32(255.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def color_jitter(image: np.ndarray, u: float) -> np.ndarray:
    """OpenVLA's training colour augmentation on float32 RGB in [0, 1], in its order, each op
    clipped to [0, 1] as dlimp's augment_image does: brightness +-0.2, contrast [0.8, 1.2]
    about each channel's mean, saturation [0.8, 1.2] and hue +-0.05 of the circle in HSV.

    ``u`` in [0, 1) sets every factor: dlimp passes the same seed to each tf.image
    stateless_random_* op, so they all scale one Philox draw (see prepare_policy_image)."""
    f = np.float32
    image = np.clip(image + f(-0.2 + 0.4 * u), 0.0, 1.0)
    mean = image.mean(axis=(0, 1), keepdims=True, dtype=f)
    image = np.clip((image - mean) * f(0.8 + 0.4 * u) + mean, 0.0, 1.0).astype(f)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1] * f(0.8 + 0.4 * u), 0.0, 1.0)
    image = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + f(-0.05 + 0.1 * u) * f(360.0)) % f(360.0)
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)


def prepare_policy_image(image: np.ndarray, image_size: int = 224, resize_size: int = 256,
                         crop_scale: float = 0.9, center_crop: bool = True,
                         augment: bool = False,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """A camera frame (H, W, 3) uint8 RGB -> the model's (image_size, image_size, 3) uint8 image.

    The official OpenVLA-OFT chain (see the comment above): PIL bicubic to ``resize_size``,
    JPEG q95 round trip + TF lanczos3 antialiased resize to ``image_size`` (skipped for a
    frame already at ``image_size``), then the ``crop_scale`` area crop resized back: centred
    (``center_crop``) at inference, random + colour jitter with ``augment`` (training).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if resize_size and image.shape[:2] != (resize_size, resize_size):
        image = pil_bicubic_resize(image, resize_size)
    if image.shape[:2] != (image_size, image_size):
        image = tf_lanczos3_resize(jpeg_round_trip(image), image_size)
    if not augment and not (center_crop and crop_scale < 1.0):
        return np.ascontiguousarray(image)
    side = float(np.clip(np.sqrt(np.float32(crop_scale)), 0.0, 1.0))
    if augment:
        # dlimp's random_resized_crop and the colour ops all draw from the same seed
        # (dlimp/augmentations.py: one seed per image, passed to every op), so one uniform
        # number sets the crop offset, equal for rows and columns (a crop on the diagonal),
        # and every jitter factor. We reproduce that distribution.
        rng = rng if rng is not None else np.random.default_rng()
        u = float(rng.uniform(0.0, 1.0))
        top = left = float(np.float32(u) * (np.float32(1.0) - np.float32(side)))
    else:
        top = left = float((np.float32(1.0) - np.float32(side)) / np.float32(2.0))
    # convert_image_dtype(uint8 -> float32): x * (1 / 255) in float32.
    pixels = image.astype(np.float32) * np.float32(1.0 / 255.0)
    pixels = crop_and_resize(pixels, top, left, side, image_size)
    if augment:
        pixels = color_jitter(np.clip(pixels, 0.0, 1.0), u)
    return _to_uint8_saturate(pixels)
