"""Overlay image and RViz MarkerArray."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from vlsam_ros.core.config import NodeConfig
from vlsam_ros.core.masks import box_from_mask
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.ros.images import image_msg, image_to_rgb
from vlsam_ros.ros.visualization import (
    MARKER_NAMESPACES,
    detection_colour,
    draw_overlay,
    label_text,
    markers_msg,
    metres_per_pixel,
    overlay_msg,
    pixel_to_marker_point,
)

H, W = 100, 120
HEADER = Header(stamp=Time(sec=5, nanosec=6), frame_id="cam_front_optical")


def _det(mask, label, score):
    return Detection(label=label, score=score, mask=mask, box_xyxy=box_from_mask(mask),
                     prompt_points=np.zeros((1, 2), np.float32),
                     prompt_labels=np.ones(1, np.int8))


@pytest.fixture
def scene():
    image = np.random.default_rng(0).integers(60, 200, (H, W, 3), dtype=np.uint8)
    rect = np.zeros((H, W), bool)
    rect[60:90, 40:90] = True
    y, x = np.mgrid[0:H, 0:W]
    disc = (y - 45) ** 2 + (x - 20) ** 2 < 10 ** 2  # tags (above each box) overlap no mask
    result = FrameResult(detections=(_det(rect, "box", 0.8), _det(disc, "ball", 0.4)),
                         description="box, ball", vlm_ms=1.0, segment_ms=1.0, total_ms=2.0)
    return image, result


def _interior(mask, margin):
    """Mask pixels at least ``margin`` pixels from the box border (no line or tag there)."""
    x0, y0, x1, y1 = box_from_mask(mask)
    inner = np.zeros_like(mask)
    inner[y0 + margin:y1 - margin, x0 + margin:x1 - margin] = True
    return mask & inner


def test_overlay_blends_masks_and_leaves_the_rest(scene):
    image, result = scene
    original = image.copy()
    cfg = NodeConfig(overlay_alpha=0.4)
    out = draw_overlay(image, result.detections, cfg)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(image, original)  # input untouched
    for i, det in enumerate(result.detections):
        inner = _interior(det.mask, 3)
        assert inner.sum() > 20
        expected = np.rint(0.6 * image[inner] + 0.4 * np.array(detection_colour(i)))
        assert np.abs(out[inner].astype(int) - expected).max() <= 1
        assert (out[inner] != image[inner]).any(axis=1).mean() > 0.9
    # Far from every box and tag nothing changes.
    untouched = np.ones((H, W), bool)
    for det in result.detections:
        x0, y0, x1, y1 = det.box_xyxy
        untouched[max(y0 - 30, 0):y1 + 3, max(x0 - 3, 0):] = False
    assert untouched.sum() > 100
    np.testing.assert_array_equal(out[untouched], image[untouched])


def test_overlay_box_lines_and_tags_use_the_detection_colour(scene):
    image, result = scene
    out = draw_overlay(image, result.detections, NodeConfig(overlay_alpha=0.0))
    x0, y0, x1, y1 = result.detections[0].box_xyxy
    assert tuple(out[(y0 + y1) // 2, x0]) == detection_colour(0)  # left edge, mid-height
    assert tuple(out[y1 - 1, (x0 + x1) // 2]) == detection_colour(0)  # bottom edge
    tag = out[max(y0 - 12, 0):y0, x0:x1]
    assert (tag == detection_colour(0)).all(axis=2).sum() > 20  # the filled tag


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_overlay_alpha_extremes(scene, alpha):
    image, result = scene
    out = draw_overlay(image, result.detections, NodeConfig(overlay_alpha=alpha))
    inner = _interior(result.detections[0].mask, 3)
    expected = image[inner] if alpha == 0.0 else np.broadcast_to(detection_colour(0),
                                                                 image[inner].shape)
    np.testing.assert_array_equal(out[inner], expected)


def test_overlay_without_detections_is_the_image(scene):
    image, _ = scene
    np.testing.assert_array_equal(draw_overlay(image, ()), image)


@pytest.mark.parametrize("bad_image", [np.zeros((H, W), np.uint8),
                                       np.zeros((H, W, 3), np.float32),
                                       np.zeros((H, W, 4), np.uint8)])
def test_overlay_rejects_bad_images(bad_image):
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(bad_image, ())


def test_overlay_rejects_masks_of_another_size(scene):
    image, result = scene
    small = dataclasses.replace(result.detections[0], mask=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="shape"):
        draw_overlay(image, (small,))


def test_colours_are_distinct():
    colours = np.array([detection_colour(i) for i in range(16)], dtype=float)
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=2)
    assert dist[np.triu_indices(16, 1)].min() > 15


def test_colours_follow_the_documented_hue_steps():
    """Colour i is HSV(hue = i * golden-ratio conjugate mod 1, s 0.85, v 1), here converted
    by OpenCV rather than colorsys; a changed formula or channel order fails."""
    hues = (np.arange(16) * 0.6180339887498949) % 1.0 * 360.0  # degrees: float HSV in OpenCV
    hsv = np.stack([hues, np.full(16, 0.85), np.ones(16)], axis=1).astype(np.float32)
    expected = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0] * 255.0
    colours = np.array([detection_colour(i) for i in range(16)])
    assert all(isinstance(c, int) for i in range(16) for c in detection_colour(i))
    assert np.abs(colours - expected).max() <= 1.0
    assert detection_colour(0) == (255, 38, 38)


def test_label_text_is_ascii():
    det = Detection(label="caf\u00e9", score=0.456, mask=np.ones((1, 1), bool),
                    box_xyxy=(0, 0, 1, 1), prompt_points=np.zeros((0, 2), np.float32),
                    prompt_labels=np.zeros(0, np.int8))
    assert label_text(det) == "caf? 0.46"


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_msg_round_trip(scene, encoding):
    image, result = scene
    msg = overlay_msg(image, result, HEADER, encoding=encoding)
    assert msg.header == HEADER and msg.encoding == encoding and msg.step == 3 * W
    decoded = image_to_rgb(msg, max_pixels=H * W)
    np.testing.assert_array_equal(decoded, draw_overlay(image, result.detections))


def test_image_msg_rejects_other_encodings(scene):
    with pytest.raises(ValueError, match="encoding '16UC1'"):
        image_msg(scene[0], HEADER, encoding="16UC1")


def test_marker_geometry():
    cfg = NodeConfig(marker_plane_distance_m=2.0, marker_horizontal_fov_deg=60.0)
    scale = metres_per_pixel(W, cfg)
    assert W * scale == pytest.approx(2 * 2.0 * math.tan(math.radians(30)))
    assert pixel_to_marker_point(W / 2, H / 2, (H, W), cfg) == (0.0, 0.0, 2.0)
    x, y, z = pixel_to_marker_point(0, 0, (H, W), cfg)
    assert (x, y, z) == pytest.approx((-W / 2 * scale, -H / 2 * scale, 2.0))


def test_marker_array_content(scene):
    from visualization_msgs.msg import Marker
    _, result = scene
    cfg = NodeConfig()
    scale = metres_per_pixel(W, cfg)
    markers = markers_msg(result, HEADER, (H, W), cfg).markers
    assert markers[0].action == Marker.DELETEALL
    assert len(markers) == 1 + 2 * len(result.detections)
    assert all(m.header == HEADER for m in markers)
    for i, det in enumerate(result.detections):
        box, text = markers[1 + 2 * i], markers[2 + 2 * i]
        assert (box.ns, box.id, box.type) == (MARKER_NAMESPACES[0], i, Marker.LINE_STRIP)
        assert (text.ns, text.id, text.type) == (MARKER_NAMESPACES[1], i,
                                                 Marker.TEXT_VIEW_FACING)
        assert box.action == text.action == Marker.ADD
        points = np.array([(p.x, p.y, p.z) for p in box.points])
        assert points.shape == (5, 3)
        np.testing.assert_allclose(points[0], points[-1])  # closed
        np.testing.assert_allclose(points[:, 2], cfg.marker_plane_distance_m)
        x0, y0, x1, y1 = det.box_xyxy
        np.testing.assert_allclose(points[0, :2], pixel_to_marker_point(x0, y0, (H, W))[:2])
        np.testing.assert_allclose(points[2, :2], pixel_to_marker_point(x1, y1, (H, W))[:2])
        assert box.scale.x == pytest.approx(cfg.overlay_line_px * scale)
        assert text.text == label_text(det)
        assert text.scale.z == pytest.approx(cfg.overlay_font_px * scale)
        assert text.pose.position.y < points[0, 1]  # above the box (y down)
        colour = tuple(round(c * 255) for c in (box.color.r, box.color.g, box.color.b))
        assert colour == detection_colour(i) and box.color.a == 1.0


def test_marker_array_for_an_empty_frame_only_clears(scene):
    from visualization_msgs.msg import Marker
    empty = FrameResult(detections=(), description="", vlm_ms=0.0, segment_ms=0.0,
                        total_ms=0.0)
    markers = markers_msg(empty, HEADER, (H, W)).markers
    assert [m.action for m in markers] == [Marker.DELETEALL]


def test_marker_array_rejects_empty_image_size(scene):
    with pytest.raises(ValueError):
        markers_msg(scene[1], HEADER, (0, W))


def test_outputs_use_publication_order(scene):
    """Unsorted input: marker id i, overlay colour i and DetectionArray entry i are the
    same (highest score first)."""
    image, result = scene
    flipped = dataclasses.replace(result, detections=result.detections[::-1])  # 0.4, 0.8
    markers = markers_msg(flipped, HEADER, (H, W)).markers
    assert markers[2].text == label_text(result.detections[0])  # id 0 = best ("box")
    np.testing.assert_array_equal(
        image_to_rgb(overlay_msg(image, flipped, HEADER), max_pixels=H * W),
        draw_overlay(image, result.detections))
