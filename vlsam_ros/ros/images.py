"""Image messages both ways: ``sensor_msgs/Image`` / ``CompressedImage`` <-> RGB uint8 arrays.

Decoding has one entry point, :func:`decode_image_msg`, with one dispatch rule: a message with
a ``format`` field is a ``CompressedImage`` (:func:`compressed_to_rgb`), any other is a raw
``Image`` (:func:`image_to_rgb`). Building has one entry point, :func:`image_msg`, used by the
node's overlay, the replay and dataset tools, the demo and the tests' publishers.

Every decoder returns a new, writable, C-contiguous ``np.uint8`` array of shape ``(H, W, 3)``
in RGB channel order (never a view of the message's buffer), row 0 at the top (the pixel
frame of ``vlsam_ros.core.results``), or raises ``InvalidImageError`` naming the problem.
Nothing is ever guessed, padded or truncated.

Messages are duck-typed: anything with the fields of the ROS message works (rclpy messages,
rosbags-deserialised messages, ``types.SimpleNamespace``). ``data`` may be ``bytes``,
``bytearray``, ``memoryview``, ``array.array`` (rclpy) or a 1-D uint8 ``np.ndarray``
(rosbags).

Why not ``cv_bridge``: the PyPI ``cv-bridge`` 5.0.0 port in this venv is wrong for the
encodings we need. Measured here: ``rgb8``/``bgr8``/``16UC3`` raise "buffer is too small"
(its table gives them 9 channels), ``16UC1`` decodes as uint8 (garbage), ``yuv422`` raises
``KeyError``, ``step`` padding is ignored and its big-endian path calls the ndarray method
``newbyteorder`` that numpy 2 removed. The conversion below is numpy (layout, byte order,
padding) plus OpenCV (demosaicing, YUV, PNG/JPEG decoding); both are well-kept libraries and
each encoding is checked against hand-built ground truth in ``test/test_image_decoding.py``.

Bit depth policy (documented in ``NodeConfig.uint16_scaling``):

* 8-bit data is used unchanged.
* 16-bit data (``mono16``, ``16UC*``, ``rgb16``..., ``bayer_*16``, 16-bit PNG):
  ``"shift"`` keeps the top byte, ``value >> 8`` (a fixed map, stable across frames, exact
  for full-range 16-bit cameras); ``"minmax"`` maps the frame's own minimum to 0 and maximum
  to 255 (``round(255 * (v - lo) / (hi - lo))``; a constant frame becomes 0), which suits
  12-bit sensors and depth-like data.
* Float data (``32FC1``, ``64FC1``, float compressedDepth) has no natural range and is always
  min-max scaled over its finite pixels; NaN and +-inf pixels become 0. A frame without any
  finite pixel is rejected.

Channel semantics of the generic OpenCV types: ``8UC1``/``16UC1``/``32FC1``/``64FC1`` are
grey, ``8UC3``/``16UC3`` are BGR and ``8UC4``/``16UC4`` are BGRA (OpenCV's convention, as
cv_bridge's ``cvtColorForDisplay``). Two-channel and signed types are unsupported.
"""

from __future__ import annotations

import array
import dataclasses
import struct
from typing import Any

import cv2
import numpy as np

from vlsam_ros.core.config import NodeConfig
from vlsam_ros.core.errors import InvalidImageError

UINT16_SCALINGS = ("shift", "minmax")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one raw encoding is stored: element dtype (numpy kind + size, byte order added
    later), channels per pixel, and what the channels mean (``kind``)."""

    dtype: str
    channels: int
    kind: str  # rgb, rgba, bgr, bgra, gray, bayer, yuv422, nv
    cv_code: int | None = None  # OpenCV conversion to RGB for bayer / yuv422 / nv


def _bayer(dtype: str, code: int) -> _Layout:
    return _Layout(dtype, 1, "bayer", code)


#: Every raw encoding this module decodes (names from sensor_msgs/image_encodings.hpp).
RAW_ENCODINGS: dict[str, _Layout] = {
    "rgb8": _Layout("u1", 3, "rgb"),
    "rgba8": _Layout("u1", 4, "rgba"),
    "bgr8": _Layout("u1", 3, "bgr"),
    "bgra8": _Layout("u1", 4, "bgra"),
    "rgb16": _Layout("u2", 3, "rgb"),
    "rgba16": _Layout("u2", 4, "rgba"),
    "bgr16": _Layout("u2", 3, "bgr"),
    "bgra16": _Layout("u2", 4, "bgra"),
    "mono8": _Layout("u1", 1, "gray"),
    "mono16": _Layout("u2", 1, "gray"),
    "8UC1": _Layout("u1", 1, "gray"),
    "8UC3": _Layout("u1", 3, "bgr"),
    "8UC4": _Layout("u1", 4, "bgra"),
    "16UC1": _Layout("u2", 1, "gray"),
    "16UC3": _Layout("u2", 3, "bgr"),
    "16UC4": _Layout("u2", 4, "bgra"),
    "32FC1": _Layout("f4", 1, "gray"),
    "64FC1": _Layout("f8", 1, "gray"),
    # OpenCV's RGGB/BGGR/... aliases name the pattern from the top-left pixel, as ROS does
    # (the older BayerBG/RG names are shifted by one pixel).
    "bayer_rggb8": _bayer("u1", cv2.COLOR_BayerRGGB2RGB),
    "bayer_bggr8": _bayer("u1", cv2.COLOR_BayerBGGR2RGB),
    "bayer_gbrg8": _bayer("u1", cv2.COLOR_BayerGBRG2RGB),
    "bayer_grbg8": _bayer("u1", cv2.COLOR_BayerGRBG2RGB),
    "bayer_rggb16": _bayer("u2", cv2.COLOR_BayerRGGB2RGB),
    "bayer_bggr16": _bayer("u2", cv2.COLOR_BayerBGGR2RGB),
    "bayer_gbrg16": _bayer("u2", cv2.COLOR_BayerGBRG2RGB),
    "bayer_grbg16": _bayer("u2", cv2.COLOR_BayerGRBG2RGB),
    # 4:2:2, two bytes per pixel. "yuv422" is ROS's (deprecated) name of UYVY and
    # "yuv422_yuy2" of YUYV. OpenCV converts with BT.601 limited range.
    "uyvy": _Layout("u1", 2, "yuv422", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": _Layout("u1", 2, "yuv422", cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": _Layout("u1", 2, "yuv422", cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": _Layout("u1", 2, "yuv422", cv2.COLOR_YUV2RGB_YUYV),
    # 4:2:0 semi-planar: a full-resolution Y plane then an interleaved half-resolution
    # chroma plane, both ``step`` bytes per row: ``step * (height + height / 2)`` bytes.
    "nv12": _Layout("u1", 1, "nv", cv2.COLOR_YUV2RGB_NV12),
    "nv21": _Layout("u1", 1, "nv", cv2.COLOR_YUV2RGB_NV21),
}


# ----------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------

def decode_image_msg(msg: Any, cfg: NodeConfig = NodeConfig()) -> np.ndarray:
    """``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` -> uint8 (H, W, 3) RGB, with
    ``cfg.max_image_pixels`` and ``cfg.uint16_scaling``. The one dispatch rule: only
    CompressedImage has a ``format`` field. Raises InvalidImageError."""
    decoder = compressed_to_rgb if hasattr(msg, "format") else image_to_rgb
    return decoder(msg, max_pixels=cfg.max_image_pixels, uint16_scaling=cfg.uint16_scaling)


# ----------------------------------------------------------------------------------------
# sensor_msgs/Image
# ----------------------------------------------------------------------------------------

def image_to_rgb(msg: Any, *, max_pixels: int, uint16_scaling: str = "shift") -> np.ndarray:
    """Decodes a ``sensor_msgs/Image`` to RGB.

    Args:
        msg: the message (fields ``height``, ``width``, ``encoding``, ``is_bigendian``,
            ``step``, ``data``). ``step`` is the row length in bytes and may exceed
            ``width * channels * bytes_per_channel`` (row padding, ignored); ``data`` must hold
            exactly ``step * height`` bytes (``step * height * 3 / 2`` for nv12/nv21).
            ``is_bigendian`` selects the byte order of 16-bit and float samples.
        max_pixels: largest accepted ``height * width`` (``NodeConfig.max_image_pixels``).
        uint16_scaling: ``"shift"`` or ``"minmax"``, see the module docstring.

    Returns:
        ``np.uint8`` array of shape ``(height, width, 3)``, RGB.

    Raises:
        InvalidImageError: unknown/unsupported encoding, zero or too large dimensions, a step
            shorter than a row or that does not divide the data, a data size other than the
            one the header implies, or no finite pixel in a float image.
    """
    _check_scaling(uint16_scaling)
    encoding = str(msg.encoding)
    layout = RAW_ENCODINGS.get(encoding)
    if layout is None:
        raise InvalidImageError(
            f"unsupported image encoding {encoding!r}; supported: {sorted(RAW_ENCODINGS)}")
    height, width = _check_dims(msg.height, msg.width, max_pixels)
    step = _as_int(msg.step, "step")
    data = _data_bytes(msg.data)
    itemsize = int(layout.dtype[1:])
    row_bytes = width * layout.channels * itemsize
    if step < row_bytes:
        raise InvalidImageError(
            f"step {step} is shorter than one {encoding} row of width {width} "
            f"({row_bytes} bytes)")
    rows = height + height // 2 if layout.kind == "nv" else height
    if layout.kind == "nv" and (height % 2 or width % 2):
        raise InvalidImageError(f"{encoding} needs even width and height, got {width}x{height}")
    if layout.kind == "yuv422" and width % 2:
        raise InvalidImageError(f"{encoding} needs an even width, got {width}")
    if data.size != step * rows:
        raise InvalidImageError(
            f"data holds {data.size} bytes but the header implies step {step} x {rows} rows "
            f"= {step * rows} ({encoding} {width}x{height})")

    packed = data.reshape(rows, step)[:, :row_bytes]  # (rows, row_bytes) uint8, padding cut
    byte_order = ">" if msg.is_bigendian else "<"
    dtype = np.dtype(byte_order + layout.dtype) if itemsize > 1 else np.dtype(np.uint8)
    samples = np.ascontiguousarray(packed).view(dtype).astype(dtype.newbyteorder("="),
                                                              copy=False)
    samples = samples.reshape(rows, width, layout.channels)  # (rows, W, C), native order

    if layout.kind in ("bayer", "yuv422", "nv"):
        plane = samples[..., 0] if layout.channels == 1 else samples
        rgb = _cv_convert(plane, layout.cv_code, encoding)  # (H, W, 3), same depth
        return _to_uint8(rgb, uint16_scaling)
    return _channels_to_rgb(_to_uint8(samples, uint16_scaling), layout.kind)


# ----------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage
# ----------------------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_COMPRESSED_DEPTH_HEADER = struct.Struct("<iff")  # image_transport ConfigHeader: 12 bytes
_SUPPORTED_FORMAT_WORDS = ("jpeg", "jpg", "png", "compresseddepth", "compressed")


def compressed_to_rgb(msg: Any, *, max_pixels: int,
                      uint16_scaling: str = "shift") -> np.ndarray:
    """Decodes a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to RGB.

    Accepted ``format`` strings: plain (``"jpeg"``, ``"png"``, empty), image_transport's
    ``"<encoding>; jpeg compressed bgr8"`` / ``"...; png compressed ..."``, and
    image_transport's ``"16UC1; compressedDepth png"`` / ``"32FC1; compressedDepth png"`` (a
    12-byte header before a 16-bit PNG; 32FC1 is stored as quantised inverse depth,
    ``depth = a / (v - b)`` with ``v == 0`` meaning no depth). The container is recognised
    from its magic bytes, never from the format string alone. OpenCV decodes (``IMREAD_
    UNCHANGED``: no EXIF rotation, 16-bit PNG kept 16-bit, then scaled as raw images are).

    Before decoding, the image size is read from the PNG IHDR chunk or the JPEG SOF segment
    and checked against ``max_pixels``, so a small message cannot make us allocate a huge
    image. A JPEG without an end-of-image marker after its scan is rejected as truncated.
    Corruption inside JPEG entropy-coded data cannot be detected by any decoder (JPEG has no
    checksum) and may decode to wrong pixels; PNG chunks are CRC-checked by libpng.

    Returns:
        ``np.uint8`` array of shape ``(H, W, 3)``, RGB.

    Raises:
        InvalidImageError: unsupported format, bytes that are not a PNG/JPEG, a size above
            ``max_pixels`` or zero, a truncated or undecodable stream.
    """
    _check_scaling(uint16_scaling)
    fmt = str(msg.format).strip().lower()
    data = _data_bytes(msg.data)
    words = fmt.replace(";", " ").split()
    unknown = [w for w in words if w not in _SUPPORTED_FORMAT_WORDS and w not in RAW_ENCODINGS
               and w.upper() not in RAW_ENCODINGS]
    if unknown:
        raise InvalidImageError(f"unsupported compressed image format {msg.format!r} "
                                f"(only jpeg and png are decoded)")
    depth_params = None
    if "compresseddepth" in words:
        if data.size < _COMPRESSED_DEPTH_HEADER.size:
            raise InvalidImageError(f"compressedDepth message of {data.size} bytes is shorter "
                                    f"than its {_COMPRESSED_DEPTH_HEADER.size}-byte header")
        _, quant_a, quant_b = _COMPRESSED_DEPTH_HEADER.unpack(
            data[:_COMPRESSED_DEPTH_HEADER.size].tobytes())
        data = data[_COMPRESSED_DEPTH_HEADER.size:]
        if words and words[0] == "32fc1":
            depth_params = (quant_a, quant_b)
    raw = data.tobytes()

    if raw.startswith(_PNG_MAGIC):
        width, height = _png_size(raw)
    elif raw.startswith(_JPEG_MAGIC):
        width, height = _jpeg_size(raw)
    else:
        raise InvalidImageError(f"compressed data ({len(raw)} bytes, format {msg.format!r}) "
                                f"is neither PNG nor JPEG")
    _check_dims(height, width, max_pixels)

    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise InvalidImageError(f"OpenCV could not decode the {msg.format!r} data "
                                f"({len(raw)} bytes): corrupt or truncated")
    if decoded.shape[:2] != (height, width):
        raise InvalidImageError(f"decoded size {decoded.shape[1]}x{decoded.shape[0]} differs "
                                f"from the header's {width}x{height}")
    if decoded.dtype not in (np.uint8, np.uint16):
        raise InvalidImageError(f"unsupported decoded sample type {decoded.dtype}")
    if depth_params is not None:
        if decoded.ndim != 2 or decoded.dtype != np.uint16:
            raise InvalidImageError("32FC1 compressedDepth must hold a 16-bit grey PNG")
        decoded = _inverse_depth_to_depth(decoded, *depth_params)
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    kinds = {1: "gray", 3: "bgr", 4: "bgra"}
    if decoded.shape[2] not in kinds:
        raise InvalidImageError(f"unsupported number of channels {decoded.shape[2]}")
    return _channels_to_rgb(_to_uint8(decoded, uint16_scaling), kinds[decoded.shape[2]])


# ----------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------

def _check_scaling(uint16_scaling: str) -> None:
    if uint16_scaling not in UINT16_SCALINGS:
        raise ValueError(f"uint16_scaling={uint16_scaling!r}: must be one of {UINT16_SCALINGS}")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidImageError(f"{name}={value!r} is not an integer")
    return int(value)


def _check_dims(height: Any, width: Any, max_pixels: int) -> tuple[int, int]:
    """Returns (height, width) as ints, or raises for zero, negative or too many pixels."""
    height, width = _as_int(height, "height"), _as_int(width, "width")
    if height <= 0 or width <= 0:
        raise InvalidImageError(f"image has no pixels: {width}x{height}")
    if height * width > max_pixels:
        raise InvalidImageError(f"image of {width}x{height} = {height * width} pixels exceeds "
                                f"the limit node.max_image_pixels={max_pixels}")
    return height, width


def _data_bytes(data: Any) -> np.ndarray:
    """Message payload -> 1-D uint8 array (a view where possible, never a silent cast)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise InvalidImageError(f"data has dtype {data.dtype}, expected uint8 bytes")
        return data.reshape(-1)
    if isinstance(data, array.array):
        if data.itemsize != 1:
            raise InvalidImageError(f"data is an array of {data.typecode!r}, expected bytes")
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, (list, tuple)):
        values = np.asarray(data)
        if values.size and (values.dtype.kind not in "iu" or values.min() < 0
                            or values.max() > 255):
            raise InvalidImageError("data list holds values that are not bytes (0..255)")
        return values.astype(np.uint8).reshape(-1)
    raise InvalidImageError(f"data of type {type(data).__name__} is not a byte buffer")


def _cv_convert(plane: np.ndarray, code: int | None, encoding: str) -> np.ndarray:
    try:
        return cv2.cvtColor(np.ascontiguousarray(plane), code)
    except cv2.error as exc:
        raise InvalidImageError(f"OpenCV cannot convert this {encoding} image "
                                f"of shape {plane.shape}: {exc}") from None


def _to_uint8(samples: np.ndarray, uint16_scaling: str) -> np.ndarray:
    """Any supported sample type -> uint8, same shape (policy in the module docstring)."""
    if samples.dtype == np.uint8:
        return samples
    if samples.dtype == np.uint16 and uint16_scaling == "shift":
        return (samples >> 8).astype(np.uint8)
    with np.errstate(invalid="ignore"):  # signalling NaNs in the payload stay NaN
        values = samples.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise InvalidImageError("float image has no finite pixel")
    low, high = values[finite].min(), values[finite].max()
    if high > low:  # halves keep (high - low) finite even for +-float64 max
        scaled = np.rint((values / 2 - low / 2) * (255.0 / (high / 2 - low / 2)))
    else:
        scaled = np.zeros_like(values)
    scaled[~finite] = 0.0
    return scaled.astype(np.uint8)


_TO_RGB = {"gray": cv2.COLOR_GRAY2RGB, "rgba": cv2.COLOR_RGBA2RGB,
           "bgr": cv2.COLOR_BGR2RGB, "bgra": cv2.COLOR_BGRA2RGB}


def _channels_to_rgb(pixels: np.ndarray, kind: str) -> np.ndarray:
    """(H, W, C) uint8 with channel meaning ``kind`` -> new contiguous (H, W, 3) RGB array
    (never a view of the message buffer). OpenCV does the channel shuffles: a numpy
    reversed-stride copy is ~10x slower on a 1600x900 frame."""
    pixels = np.ascontiguousarray(pixels)
    if kind == "rgb":
        return pixels.copy()
    if kind not in _TO_RGB:
        raise InvalidImageError(f"unsupported channel layout {kind!r}")
    if kind == "gray":
        pixels = pixels.reshape(pixels.shape[:2])
    return cv2.cvtColor(pixels, _TO_RGB[kind])


def _inverse_depth_to_depth(quantised: np.ndarray, quant_a: float, quant_b: float) -> np.ndarray:
    """image_transport's compressedDepth 32FC1 code: ``depth = a / (v - b)``, v == 0 -> NaN."""
    values = quantised.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = quant_a / (values - quant_b)
    depth[quantised == 0] = np.nan
    return depth


def _png_size(raw: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk (bytes 8..33)."""
    if len(raw) < 24 or raw[12:16] != b"IHDR":
        raise InvalidImageError("PNG data has no IHDR chunk (truncated or corrupt)")
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}


def _jpeg_size(raw: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame segment; also checks that an end-of-image
    marker follows the first scan (a truncated stream has none: 0xFF is byte-stuffed inside
    entropy-coded data, so 0xFFD9 only occurs as the real marker)."""
    pos, size = 2, None
    while pos < len(raw):
        if raw[pos] != 0xFF:
            raise InvalidImageError(f"JPEG marker expected at byte {pos} (corrupt stream)")
        while pos < len(raw) and raw[pos] == 0xFF:
            pos += 1
        if pos >= len(raw):
            break
        marker = raw[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > len(raw):
            break
        (length,) = struct.unpack(">H", raw[pos:pos + 2])
        if length < 2:
            raise InvalidImageError(f"JPEG segment at byte {pos} has invalid length {length}")
        if marker in _JPEG_SOF:
            if pos + 7 > len(raw):
                break
            height, width = struct.unpack(">HH", raw[pos + 3:pos + 7])
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                raise InvalidImageError("JPEG scan starts before any frame header")
            if raw.rfind(b"\xff\xd9") < pos:
                raise InvalidImageError("JPEG data has no end-of-image marker (truncated)")
            return size
        pos += length
    raise InvalidImageError("JPEG data ends before its first scan (truncated or corrupt)")


# ----------------------------------------------------------------------------------------
# numpy -> sensor_msgs/Image
# ----------------------------------------------------------------------------------------

#: Encodings :func:`image_msg` writes, each from RGB: channel order, alpha 255, or grey.
_FROM_RGB = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGB2RGBA,
             "bgra8": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY}


def image_msg(image_rgb: np.ndarray, header: Any = None, *, encoding: str = "rgb8",
              msg_type: Any = None) -> Any:
    """uint8 (H, W, 3) RGB -> ``sensor_msgs/Image`` in ``encoding`` (rgb8, bgr8, rgba8 with
    alpha 255, bgra8, or mono8 by OpenCV's RGB->grey weights); unpadded rows
    (``step = width * channels``), ``is_bigendian`` 0, ``header`` used unchanged.

    ``msg_type`` is the message class: rclpy's ``sensor_msgs.msg.Image`` by default, or a
    rosbags typestore class (it has ``__msgtype__``; ``header`` is then required), which
    takes ``data`` as a 1-D uint8 array where rclpy takes bytes (numpy is 25x slower there).
    """
    if encoding not in _FROM_RGB:
        raise ValueError(f"encoding {encoding!r}: expected one of {sorted(_FROM_RGB)}")
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image_rgb.shape} "
                         f"{image_rgb.dtype}")
    code = _FROM_RGB[encoding]
    pixels = np.ascontiguousarray(image_rgb if code is None else cv2.cvtColor(image_rgb, code))
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if msg_type is None:
        from sensor_msgs.msg import Image as msg_type
    rosbags = hasattr(msg_type, "__msgtype__")
    fields = {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
              "step": width * channels,
              "data": pixels.reshape(-1) if rosbags else pixels.tobytes()}
    if header is not None or rosbags:
        fields["header"] = header
    return msg_type(**fields)
