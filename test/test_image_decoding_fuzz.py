"""Generated malformed Image / CompressedImage messages (hypothesis, derandomised).

Contract under test: the decoders either return exactly what an independent oracle predicts or
raise InvalidImageError; no other exception type, no silently wrong pixels. Case counts:
``RAW_EXAMPLES`` + ``COMPRESSED_EXAMPLES`` x 2 generated messages per run.
"""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vlsam_ros.core.errors import InvalidImageError
from vlsam_ros.ros.images import RAW_ENCODINGS, compressed_to_rgb, image_to_rgb

RAW_EXAMPLES = 1500
COMPRESSED_EXAMPLES = 500
MAX_PIXELS = 4096
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

ENCODINGS = sorted(RAW_ENCODINGS) + ["rgb9", "", "RGB8", "8SC1", "32SC1", "16UC2", "jpeg"]
# 8-bit encodings whose expected RGB the test computes independently of the decoder.
SIMPLE_ORACLE = {"rgb8": (3, [0, 1, 2]), "bgr8": (3, [2, 1, 0]), "rgba8": (4, [0, 1, 2]),
                 "bgra8": (4, [2, 1, 0]), "mono8": (1, [0, 0, 0]), "8UC1": (1, [0, 0, 0]),
                 "8UC3": (3, [2, 1, 0])}


def _expected_validity(msg) -> bool:
    """Independent statement of when a raw message is well formed."""
    layout = RAW_ENCODINGS.get(msg.encoding)
    if layout is None or msg.height <= 0 or msg.width <= 0:
        return False
    if msg.height * msg.width > MAX_PIXELS:
        return False
    row = msg.width * layout.channels * int(layout.dtype[1:])
    rows = msg.height * 3 // 2 if layout.kind == "nv" else msg.height
    if layout.kind == "nv" and (msg.height % 2 or msg.width % 2):
        return False
    if layout.kind == "yuv422" and msg.width % 2:
        return False
    return msg.step >= row and len(msg.data) == msg.step * rows


@st.composite
def raw_messages(draw):
    """A third well formed, a third well formed with one field broken, a third random."""
    encoding = draw(st.sampled_from(ENCODINGS))
    layout = RAW_ENCODINGS.get(encoding)
    bpp = layout.channels * int(layout.dtype[1:]) if layout else draw(st.integers(1, 8))
    nv = layout is not None and layout.kind == "nv"
    mode = draw(st.sampled_from(["well formed", "one broken field", "random"]))
    if mode == "random":
        height = draw(st.one_of(st.integers(0, 12), st.sampled_from([2**16, 2**31, 2**32 - 1])))
        width = draw(st.one_of(st.integers(0, 12), st.sampled_from([2**16, 2**32 - 1])))
        step = draw(st.integers(0, 200))
        size = draw(st.integers(0, 400))
    else:
        height, width = 2 * draw(st.integers(1, 6)), 2 * draw(st.integers(1, 6))
        step = width * bpp + draw(st.sampled_from([0, 0, 1, 3, 8]))
        size = step * (height * 3 // 2 if nv else height)
    if mode == "one broken field":
        field = draw(st.sampled_from(["height", "width", "step", "size"]))
        delta = draw(st.sampled_from([-2, -1, 1, 2, 2**31]))
        height, width, step, size = (max(v + delta, 0) if f == field else v for f, v in
                                     (("height", height), ("width", width), ("step", step),
                                      ("size", size)))
    data = draw(st.binary(min_size=min(size, 20000), max_size=min(size, 20000)))
    return SimpleNamespace(height=height, width=width, encoding=encoding, step=step,
                           is_bigendian=draw(st.integers(0, 1)), data=data)


@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(msg=raw_messages(), scaling=st.sampled_from(["shift", "minmax"]))
def test_raw_fuzz_raises_or_matches_oracle(msg, scaling):
    valid = _expected_validity(msg)
    event("well formed" if valid else "malformed")
    try:
        out = image_to_rgb(msg, max_pixels=MAX_PIXELS, uint16_scaling=scaling)
    except InvalidImageError as exc:
        # The only valid message allowed to fail: a float image without a finite pixel.
        assert not valid or "finite" in str(exc), f"valid message rejected: {exc}"
        return
    assert valid, "malformed message decoded without error"
    assert out.shape == (msg.height, msg.width, 3) and out.dtype == np.uint8
    if msg.encoding in SIMPLE_ORACLE:
        channels, order = SIMPLE_ORACLE[msg.encoding]
        rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
        px = rows[:, : msg.width * channels].reshape(msg.height, msg.width, channels)
        np.testing.assert_array_equal(out, px[:, :, order])


def _original_rgb() -> np.ndarray:
    """(24, 20, 3) uint8 smooth gradient (JPEG reproduces it closely; noise it would not)."""
    y, x = np.mgrid[0:24, 0:20]
    return np.stack([x * 12, y * 10, 255 - x * 6 - y * 4], axis=2).astype(np.uint8)


def _encoded(ext: str) -> bytes:
    return bytes(cv2.imencode(ext, _original_rgb()[:, :, ::-1])[1])


ORIGINALS = {ext: _encoded(ext) for ext in (".png", ".jpg")}
DECODED = {ext: compressed_to_rgb(SimpleNamespace(format=ext[1:], data=data),
                                  max_pixels=MAX_PIXELS) for ext, data in ORIGINALS.items()}
FORMATS = ["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png",
           "h264", "theora", "zstd", "PNG", "bayer_rggb8; png compressed mono8", "x; y"]


@st.composite
def mutated(draw):
    """(ext, mutation kind, data): truncation, byte flips, insertion or garbage."""
    ext = draw(st.sampled_from(sorted(ORIGINALS)))
    data = bytearray(ORIGINALS[ext])
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "garbage"]))
    if kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
    elif kind == "insert":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    else:
        data = bytearray(draw(st.binary(max_size=300)))
    return ext, kind, bytes(data)


@settings(FUZZ, max_examples=COMPRESSED_EXAMPLES)
@given(case=mutated())
def test_compressed_fuzz_never_returns_wrong_pixels(case):
    """Truncations always fail. PNG chunks are CRC- and adler-checked, so a PNG that decodes
    must equal the original. JPEG has no checksum: a corrupted scan may decode, but then only
    to a well-formed RGB image of the size its header states."""
    ext, kind, data = case
    msg = SimpleNamespace(format=ext[1:], data=data)
    try:
        out = compressed_to_rgb(msg, max_pixels=MAX_PIXELS)
    except InvalidImageError:
        event(f"{ext} {kind}: rejected")
        return
    event(f"{ext} {kind}: decoded")
    assert kind != "truncate", "a truncated stream decoded"
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert 0 < out.shape[0] * out.shape[1] <= MAX_PIXELS
    if ext == ".png":
        np.testing.assert_array_equal(out, DECODED[ext])


@settings(FUZZ, max_examples=COMPRESSED_EXAMPLES)
@given(fmt=st.one_of(st.sampled_from(FORMATS), st.text(max_size=20)),
       ext=st.sampled_from(sorted(ORIGINALS)))
def test_compressed_format_strings(fmt, ext):
    msg = SimpleNamespace(format=fmt, data=ORIGINALS[ext])
    try:
        out = compressed_to_rgb(msg, max_pixels=MAX_PIXELS)
    except InvalidImageError:
        return
    np.testing.assert_array_equal(out, DECODED[ext])


def test_decoded_originals_are_right():
    """The fuzz oracle itself: the unmutated PNG decodes losslessly."""
    np.testing.assert_array_equal(DECODED[".png"], _original_rgb())
    assert np.abs(DECODED[".jpg"].astype(int) - _original_rgb()).mean() < 3


@pytest.mark.parametrize("data", [None, 3.5, "abc", [1, 2, 300], np.zeros(3, np.float32)])
def test_non_byte_payloads_are_rejected(data):
    msg = SimpleNamespace(height=1, width=1, encoding="rgb8", step=3, is_bigendian=0,
                          data=data)
    with pytest.raises(InvalidImageError):
        image_to_rgb(msg, max_pixels=MAX_PIXELS)
