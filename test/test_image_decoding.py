"""Image and CompressedImage -> RGB uint8, against hand-built ground truth per encoding."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vlsam_ros.core.errors import InvalidImageError
from vlsam_ros.ros.images import RAW_ENCODINGS, compressed_to_rgb, image_to_rgb

MAX_PIXELS = 10_000_000
H, W = 6, 8


def make_image(samples: np.ndarray, encoding: str, *, pad: int = 0,
               bigendian: bool = False) -> Image:
    """(H, W[, C]) samples -> Image with ``pad`` garbage bytes at the end of every row."""
    rows = samples.shape[0]
    dtype = samples.dtype.newbyteorder(">" if bigendian else "<")
    packed = samples.astype(dtype).reshape(rows, -1).view(np.uint8)  # (rows, row_bytes)
    garbage = np.full((rows, pad), 0xAB, np.uint8)
    msg = Image()
    msg.height = rows
    msg.width = samples.shape[1]
    msg.encoding = encoding
    msg.is_bigendian = int(bigendian)
    msg.step = packed.shape[1] + pad
    msg.data = np.concatenate([packed, garbage], axis=1).tobytes()
    return msg


def decode(msg, scaling="shift"):
    return image_to_rgb(msg, max_pixels=MAX_PIXELS, uint16_scaling=scaling)


@pytest.fixture
def rgb():
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _low_byte():
    return np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint16)


# (encoding, function rgb (H, W, 3) uint8 -> (samples, expected RGB))
def _colour8(order, alpha):
    def build(rgb):
        px = rgb if order == "rgb" else rgb[:, :, ::-1]
        if alpha:
            px = np.concatenate([px, np.full((H, W, 1), 77, np.uint8)], axis=2)
        return px, rgb
    return build


def _colour16(order, alpha):
    def build(rgb):
        px = rgb.astype(np.uint16) * 256 + _low_byte()
        px = px if order == "rgb" else px[:, :, ::-1]
        if alpha:
            px = np.concatenate([px, np.full((H, W, 1), 999, np.uint16)], axis=2)
        return px, rgb
    return build


def _grey8(rgb):
    return rgb[:, :, 0], np.repeat(rgb[:, :, :1], 3, axis=2)


def _grey16(rgb):
    return rgb[:, :, 0].astype(np.uint16) * 256 + _low_byte()[:, :, 0], \
        np.repeat(rgb[:, :, :1], 3, axis=2)


def _float(dtype):
    def build(rgb):
        grey = rgb[:, :, 0].copy()
        grey[0, 0], grey[0, 1] = 0, 255  # the frame's min and max map to exactly 0 and 255
        values = (grey.astype(np.float64) * 0.0137 - 2.5).astype(dtype)
        return values, np.repeat(grey[:, :, None], 3, axis=2)
    return build


PLAIN_CASES = {
    "rgb8": _colour8("rgb", False), "rgba8": _colour8("rgb", True),
    "bgr8": _colour8("bgr", False), "bgra8": _colour8("bgr", True),
    "8UC3": _colour8("bgr", False), "8UC4": _colour8("bgr", True),
    "rgb16": _colour16("rgb", False), "rgba16": _colour16("rgb", True),
    "bgr16": _colour16("bgr", False), "bgra16": _colour16("bgr", True),
    "16UC3": _colour16("bgr", False), "16UC4": _colour16("bgr", True),
    "mono8": _grey8, "8UC1": _grey8, "mono16": _grey16, "16UC1": _grey16,
    "32FC1": _float(np.float32), "64FC1": _float(np.float64),
}


@pytest.mark.parametrize("pad", [0, 3, 64])
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", sorted(PLAIN_CASES))
def test_plain_encodings_match_ground_truth(encoding, bigendian, pad, rgb):
    samples, expected = PLAIN_CASES[encoding](rgb)
    out = decode(make_image(samples, encoding, pad=pad, bigendian=bigendian))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_uint16_minmax_scaling_stretches_the_frame_range():
    raw = np.array([[1000, 1500], [2000, 3000]], np.uint16)  # a 12-bit-like frame
    out = decode(make_image(raw, "mono16"), scaling="minmax")[:, :, 0]
    np.testing.assert_array_equal(out, np.rint((raw - 1000) * 255.0 / 2000).astype(np.uint8))
    assert decode(make_image(raw, "mono16"), scaling="shift").max() == 3000 >> 8


def test_float_non_finite_pixels_become_zero_and_all_nan_is_rejected():
    values = np.array([[np.nan, 1.0], [np.inf, 3.0]], np.float32)
    out = decode(make_image(values, "32FC1"))[:, :, 0]
    np.testing.assert_array_equal(out, [[0, 0], [0, 255]])
    with pytest.raises(InvalidImageError, match="finite"):
        decode(make_image(np.full((2, 2), np.nan, np.float32), "32FC1"))


BAYER_PHASES = {"rggb": ((0, 0), (0, 1), (1, 1)), "bggr": ((1, 1), (0, 1), (0, 0)),
                "gbrg": ((1, 0), (0, 0), (0, 1)), "grbg": ((0, 1), (0, 0), (1, 0))}


def _mosaic(colour, pattern, dtype):
    """Flat colour -> Bayer mosaic (H, W); phases = (row, col) of R, one G and B in 2x2."""
    r_at, g_at, b_at = BAYER_PHASES[pattern]
    mosaic = np.full((H, W), colour[1], dtype)  # both green sites
    mosaic[r_at[0]::2, r_at[1]::2] = colour[0]
    mosaic[b_at[0]::2, b_at[1]::2] = colour[2]
    assert mosaic[g_at] == colour[1]
    return mosaic


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", sorted(BAYER_PHASES))
def test_bayer_flat_colour_is_recovered(pattern, bits, pad, bigendian):
    colour = np.array([200, 110, 30])
    dtype = np.uint8 if bits == 8 else np.uint16
    raw = colour if bits == 8 else colour * 256 + 17
    msg = make_image(_mosaic(raw, pattern, dtype), f"bayer_{pattern}{bits}", pad=pad,
                     bigendian=bigendian)
    out = decode(msg)
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(colour, (H, W, 3)))


# BT.601 limited range: pure red is Y=81, U(Cb)=90, V(Cr)=240; Y=16/235 are black/white.
YUV_COLOURS = [((81, 90, 240), (255, 0, 0)), ((145, 54, 34), (0, 255, 0)),
               ((41, 240, 110), (0, 0, 255)), ((16, 128, 128), (0, 0, 0)),
               ((235, 128, 128), (255, 255, 255))]


def _yuv_image(encoding, yuv):
    y, u, v = yuv
    if encoding in ("uyvy", "yuv422"):
        row = np.tile(np.array([u, y, v, y], np.uint8), W // 2)
        return make_image(row.reshape(1, W, 2).repeat(H, axis=0), encoding, pad=2)
    if encoding in ("yuyv", "yuv422_yuy2"):
        row = np.tile(np.array([y, u, y, v], np.uint8), W // 2)
        return make_image(row.reshape(1, W, 2).repeat(H, axis=0), encoding, pad=2)
    chroma = np.tile(np.array([u, v] if encoding == "nv12" else [v, u], np.uint8), W // 2)
    planes = np.concatenate([np.full((H, W), y, np.uint8),
                             np.tile(chroma, (H // 2, 1))], axis=0)  # (H * 3/2, W)
    msg = make_image(planes, encoding, pad=2)
    msg.height = H
    return msg


@pytest.mark.parametrize("yuv,expected", YUV_COLOURS)
@pytest.mark.parametrize("encoding", ["uyvy", "yuv422", "yuyv", "yuv422_yuy2", "nv12", "nv21"])
def test_yuv_flat_colours(encoding, yuv, expected):
    out = decode(_yuv_image(encoding, yuv))
    assert out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - expected).max() <= 3


def test_every_raw_encoding_is_covered_by_a_ground_truth_test():
    covered = set(PLAIN_CASES) | {f"bayer_{p}{b}" for p in BAYER_PHASES for b in (8, 16)} \
        | {"uyvy", "yuv422", "yuyv", "yuv422_yuy2", "nv12", "nv21"}
    assert covered == set(RAW_ENCODINGS)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_output_owns_its_memory(encoding, rgb):
    samples = rgb if encoding != "mono8" else rgb[:, :, 0]
    msg = make_image(samples, encoding)
    data = np.frombuffer(msg.data, np.uint8)
    out = decode(msg)
    assert out.flags.writeable
    assert not np.shares_memory(out, data)


@pytest.mark.parametrize("data_kind", ["bytes", "array", "ndarray", "list"])
def test_data_container_types(data_kind, rgb):
    from types import SimpleNamespace
    msg = make_image(rgb, "rgb8")
    raw = bytes(msg.data)
    data = {"bytes": raw, "array": msg.data, "ndarray": np.frombuffer(raw, np.uint8),
            "list": list(raw)}[data_kind]
    ns = SimpleNamespace(height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3,
                         data=data)
    np.testing.assert_array_equal(decode(ns), rgb)


# ------------------------------------------------------------------------ malformed raw

def _good(encoding="rgb8"):
    return make_image(np.zeros((H, W, 3), np.uint8), encoding)


def _with(**fields):
    msg = _good()
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


MALFORMED = {
    "unknown encoding": (_with(encoding="rgb9"), "unsupported image encoding"),
    "empty encoding": (_with(encoding=""), "unsupported image encoding"),
    "two-channel type": (_with(encoding="8UC2"), "unsupported image encoding"),
    "zero height": (_with(height=0, data=b""), "no pixels"),
    "zero width": (_with(width=0, step=0, data=b""), "no pixels"),
    "huge dimensions": (_with(height=2**31, width=2**31), "exceeds"),
    "step too short": (_with(step=W * 3 - 1), "shorter than one"),
    "step zero": (_with(step=0), "shorter than one"),
    "data one byte short": (_with(data=bytes(H * W * 3 - 1)), "data holds"),
    "data one byte long": (_with(data=bytes(H * W * 3 + 1)), "data holds"),
    "step larger than data": (_with(step=W * 3 + 4), "data holds"),
    "empty data": (_with(data=b""), "data holds"),
    "mono16 with 8-bit step": (_with(encoding="mono16", step=W), "shorter than one"),
    "yuv422 odd width": (make_image(np.zeros((2, 3, 2), np.uint8), "yuyv"), "even width"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_images_raise_invalid_image_error(case):
    msg, message = MALFORMED[case]
    with pytest.raises(InvalidImageError, match=message):
        decode(msg)


def test_max_pixels_is_enforced_exactly():
    msg = _good()
    assert decode(msg).shape == (H, W, 3)
    assert image_to_rgb(msg, max_pixels=H * W).shape == (H, W, 3)
    with pytest.raises(InvalidImageError, match="max_image_pixels"):
        image_to_rgb(msg, max_pixels=H * W - 1)


def test_unknown_scaling_is_a_programming_error():
    with pytest.raises(ValueError):
        decode(_good(), scaling="log")


# ------------------------------------------------------------------------ compressed

def make_compressed(array: np.ndarray, ext: str, fmt: str, **params) -> CompressedImage:
    flags = [cv2.IMWRITE_JPEG_QUALITY, params["quality"]] if "quality" in params else []
    ok, buf = cv2.imencode(ext, array, flags)
    assert ok
    msg = CompressedImage()
    msg.format = fmt
    msg.data = buf.tobytes()
    return msg


def cdecode(msg, scaling="shift", max_pixels=MAX_PIXELS):
    return compressed_to_rgb(msg, max_pixels=max_pixels, uint16_scaling=scaling)


@pytest.fixture
def smooth_rgb():
    """A smooth image JPEG reproduces closely (random noise would not)."""
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, 255 - x * 3], axis=2).astype(np.uint8)  # (48, 64, 3)


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "", "rgb8; jpeg compressed bgr8",
                                 "bgr8; jpeg compressed bgr8"])
def test_jpeg_decodes_to_rgb(fmt, smooth_rgb):
    msg = make_compressed(smooth_rgb[:, :, ::-1], ".jpg", fmt, quality=95)
    out = cdecode(msg)
    assert out.shape == smooth_rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth_rgb).mean() < 2.0


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", ""])
@pytest.mark.parametrize("layout", ["bgr", "bgra", "grey"])
def test_png_8bit_is_lossless(layout, fmt, rgb):
    if layout == "bgr":
        stored, expected = rgb[:, :, ::-1], rgb
    elif layout == "bgra":
        stored = np.concatenate([rgb[:, :, ::-1], np.full((H, W, 1), 9, np.uint8)], axis=2)
        expected = rgb
    else:
        stored, expected = rgb[:, :, 0], np.repeat(rgb[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(cdecode(make_compressed(stored, ".png", fmt)), expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_16bit_uses_the_uint16_policy(channels, rgb):
    raw = rgb.astype(np.uint16) * 256 + _low_byte()  # (H, W, 3) RGB, 16-bit
    stored = raw[:, :, 0] if channels == 1 else raw[:, :, ::-1]
    expected = rgb[:, :, :1].repeat(3, axis=2) if channels == 1 else rgb
    msg = make_compressed(stored, ".png", "16UC1; png compressed" if channels == 1 else "png")
    np.testing.assert_array_equal(cdecode(msg), expected)
    minmax = cdecode(msg, scaling="minmax")
    assert minmax.min() == 0 and minmax.max() == 255


def _compressed_depth(png_array, fmt, quant=(0.0, 0.0)):
    ok, buf = cv2.imencode(".png", png_array)
    msg = CompressedImage()
    msg.format = fmt
    msg.data = struct.pack("<iff", 0, *quant) + buf.tobytes()
    return msg


def test_compressed_depth_16uc1():
    depth = np.array([[500, 1000], [1500, 2500]], np.uint16)  # millimetres
    out = cdecode(_compressed_depth(depth, "16UC1; compressedDepth png"), scaling="minmax")
    np.testing.assert_array_equal(out[:, :, 0], [[0, 64], [128, 255]])


def test_compressed_depth_32fc1_inverse_depth():
    quant_a, quant_b = 100.0, 10.0  # depth = a / (v - b)
    depth = np.array([[1.0, 2.0], [4.0, np.nan]])
    quantised = np.where(np.isnan(depth), 0, np.rint(quant_a / depth + quant_b))
    msg = _compressed_depth(quantised.astype(np.uint16), "32FC1; compressedDepth png",
                            (quant_a, quant_b))
    out = cdecode(msg)[:, :, 0]
    np.testing.assert_array_equal(out, [[0, 85], [255, 0]])  # min-max over 1, 2, 4 m


def _garbage_after(msg, offset, value=0x5A):
    data = bytearray(bytes(msg.data))
    data[offset:] = bytes([value]) * (len(data) - offset)
    return data


def _compressed_malformed():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    jpeg = bytes(make_compressed(img, ".jpg", "jpeg").data)
    png = bytes(make_compressed(img, ".png", "png").data)
    big_png = bytearray(png)
    big_png[16:24] = struct.pack(">II", 100_000, 100_000)
    zero_png = bytearray(png)
    zero_png[16:24] = struct.pack(">II", 0, 32)
    return {
        "empty": ("jpeg", b"", "neither PNG nor JPEG"),
        "random bytes": ("jpeg", rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
                         "neither PNG nor JPEG"),
        "png magic only": ("png", png[:8], "IHDR"),
        "truncated png": ("png", png[: len(png) // 2], "could not decode"),
        "truncated jpeg": ("jpeg", jpeg[: len(jpeg) // 2], "truncated"),
        "jpeg header only": ("jpeg", jpeg[:4], "truncated or corrupt"),
        "png bad crc": ("png", png[:40] + bytes([png[40] ^ 0xFF]) + png[41:],
                        "could not decode"),
        "png huge header": ("png", bytes(big_png), "exceeds"),
        "png zero width": ("png", bytes(zero_png), "no pixels"),
        "unsupported format": ("h264", jpeg, "unsupported compressed image format"),
        "rvl depth": ("16UC1; compressedDepth rvl", png, "unsupported compressed"),
        "tiff": ("tiff", bytes(cv2.imencode(".tiff", img)[1]), "unsupported"),
        "bmp bytes as jpeg": ("jpeg", bytes(cv2.imencode(".bmp", img)[1]),
                              "neither PNG nor JPEG"),
        "short compressedDepth": ("16UC1; compressedDepth png", b"\x00" * 5, "header"),
    }


@pytest.mark.parametrize("case", sorted(_compressed_malformed()))
def test_malformed_compressed_raise_invalid_image_error(case):
    fmt, data, message = _compressed_malformed()[case]
    msg = CompressedImage()
    msg.format = fmt
    msg.data = data
    with pytest.raises(InvalidImageError, match=message):
        cdecode(msg)


def test_compressed_size_limit_is_checked_before_decoding(smooth_rgb):
    msg = make_compressed(smooth_rgb, ".png", "png")
    with pytest.raises(InvalidImageError, match="max_image_pixels"):
        cdecode(msg, max_pixels=48 * 64 - 1)
