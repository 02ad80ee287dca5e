"""Debug outputs for RViz: an overlay image and a MarkerArray. Pure functions; the node
decides whether anyone subscribes before calling them.

Pixel frame as in ``vlsam_ros.core.results`` (x right, y down, origin top-left). The message
builders take detections in publication order (``detections.ranked_detections``,
as in the DetectionArray), and detection ``i`` is drawn in :func:`detection_colour` ``(i)``
in both outputs, so the overlay, the markers and ``detections[i]`` agree. With tracking
the colour follows the track id instead (:func:`colour_key`), so an object keeps its
colour from frame to frame.
"""

from __future__ import annotations

import colorsys
import math
from typing import Any, Sequence

import cv2
import numpy as np

from vlsam_ros.core.config import NodeConfig
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.ros.detections import ranked_detections
from vlsam_ros.ros.images import image_msg

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949  # hue step that keeps neighbours far apart
MARKER_NAMESPACES = ("vlsam/boxes", "vlsam/labels")


def detection_colour(index: int) -> tuple[int, int, int]:
    """Distinct, deterministic RGB uint8 colour for detection ``index``: hues stepped by the
    golden ratio around the HSV circle at saturation 0.85, value 1."""
    hue = (index * _GOLDEN_RATIO_CONJUGATE) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def colour_key(detection: Detection, rank: int) -> int:
    """The index :func:`detection_colour` takes for a detection: its track id with
    tracking (the object keeps its colour from frame to frame), else its rank."""
    return int(detection.track_id) if detection.track_id > 0 else rank


def label_text(detection: Detection) -> str:
    """``"<label> <score>"`` as drawn, ``"#<track id> <label> <score>"`` with tracking;
    non-ASCII characters become '?' (OpenCV's Hershey fonts have ASCII only)."""
    text = f"{detection.label} {detection.score:.2f}"
    if detection.track_id > 0:
        text = f"#{detection.track_id} {text}"
    return text.encode("ascii", errors="replace").decode("ascii")


def draw_overlay(image_rgb: np.ndarray, detections: Sequence[Detection],
                 cfg: NodeConfig = NodeConfig()) -> np.ndarray:
    """Masks alpha-blended in their colours, boxes and ``label score`` tags on a copy.

    Args:
        image_rgb: uint8 (H, W, 3) RGB source image (not modified).
        detections: masks bool (H, W); boxes (x0, y0, x1, y1), x1/y1 exclusive.
        cfg: ``overlay_alpha`` (mask opacity), ``overlay_line_px`` (box width),
            ``overlay_font_px`` (text height).

    Returns:
        uint8 (H, W, 3) RGB. Pixel = (1 - alpha) * pixel + alpha * colour inside each mask
        (later detections blend over earlier ones). Box lines are centred on the box's
        outermost pixels; each tag sits above its box (inside it when there is no room).

    Raises:
        ValueError: the image is not uint8 (H, W, 3) or a mask is not (H, W).
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image_rgb.shape} "
                         f"{image_rgb.dtype}")
    height, width = image_rgb.shape[:2]
    out = image_rgb.copy()
    alpha = float(cfg.overlay_alpha)
    for i, det in enumerate(detections):
        mask = np.asarray(det.mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask of {det.label!r} has shape {mask.shape}, image is "
                             f"{(height, width)}")
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            continue
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        crop = out[window]  # (h, w, 3) view: only the mask's extent is touched
        paint = np.empty_like(crop)
        paint[:] = detection_colour(colour_key(det, i))
        blended = cv2.addWeighted(crop, 1.0 - alpha, paint, alpha, 0.0)  # rounds, saturates
        np.copyto(crop, blended, where=mask[window][:, :, None])
    font_scale = _font_scale(cfg.overlay_font_px)
    for i, det in enumerate(detections):
        colour = detection_colour(colour_key(det, i))
        x0, y0, x1, y1 = (int(v) for v in det.box_xyxy)
        cv2.rectangle(out, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), colour,
                      int(cfg.overlay_line_px))
        _draw_tag(out, label_text(det), (x0, y0), colour, font_scale)
    return out


def _font_scale(font_px: int) -> float:
    """Hershey font scale whose capital-letter height is ``font_px`` pixels."""
    (_, unit_height), _ = cv2.getTextSize("H", _FONT, 1.0, 1)
    return font_px / unit_height


def _draw_tag(out: np.ndarray, text: str, corner: tuple[int, int],
              colour: tuple[int, int, int], font_scale: float) -> None:
    """Filled tag in ``colour`` with black or white text (whichever contrasts more)."""
    thickness = max(1, int(round(font_scale)))
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
    tag_h = text_h + baseline + 2
    x0, y0 = corner
    top = y0 - tag_h if y0 - tag_h >= 0 else y0
    cv2.rectangle(out, (x0, top), (x0 + text_w + 2, top + tag_h), colour, cv2.FILLED)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 127 else (255, 255, 255)
    cv2.putText(out, text, (x0 + 1, top + text_h + 1), _FONT, font_scale, ink, thickness,
                cv2.LINE_AA)


def overlay_msg(image_rgb: np.ndarray, result: FrameResult, header: Any,
                cfg: NodeConfig = NodeConfig(), encoding: str = "rgb8") -> Any:
    """The ``~/overlay`` message: :func:`draw_overlay` of the detections in publication order
    (``ranked_detections``: colour ``i`` = ``detections[i]`` of the DetectionArray), then
    :func:`vlsam_ros.ros.images.image_msg`."""
    detections = ranked_detections(result.detections)
    return image_msg(draw_overlay(image_rgb, detections, cfg), header, encoding=encoding)


def metres_per_pixel(image_width: int, cfg: NodeConfig = NodeConfig()) -> float:
    """Marker scale: the image width spans ``marker_horizontal_fov_deg`` at distance
    ``marker_plane_distance_m``, so one pixel is 2 d tan(fov / 2) / W metres."""
    half_fov = math.radians(cfg.marker_horizontal_fov_deg) / 2.0
    return 2.0 * cfg.marker_plane_distance_m * math.tan(half_fov) / image_width


def pixel_to_marker_point(x: float, y: float, image_size: tuple[int, int],
                          cfg: NodeConfig = NodeConfig()) -> tuple[float, float, float]:
    """Pixel (x, y) -> (X, Y, Z) metres in the camera optical frame (X right, Y down, Z
    forward): X = (x - W / 2) s, Y = (y - H / 2) s, Z = d with s from
    :func:`metres_per_pixel`. The image centre lies on the optical axis; no intrinsics are
    used, so this is an approximate placement for viewing, not a measurement."""
    height, width = image_size
    scale = metres_per_pixel(width, cfg)
    return ((x - width / 2.0) * scale, (y - height / 2.0) * scale,
            float(cfg.marker_plane_distance_m))


def markers_msg(result: FrameResult, header: Any, image_size: tuple[int, int],
                cfg: NodeConfig = NodeConfig()) -> Any:
    """The ``~/markers`` message: a ``visualization_msgs/MarkerArray``.

    Markers live in ``header.frame_id`` (the camera's optical frame) with the source stamp,
    on the plane ``Z = marker_plane_distance_m`` (see :func:`pixel_to_marker_point`):

    * marker 0: ``DELETEALL`` (removes the previous frame's markers, so none go stale);
    * per detection ``i`` (publication order, as in the DetectionArray and the overlay):
      ns ``vlsam/boxes`` id ``i``, a closed ``LINE_STRIP`` around the
      box (width ``overlay_line_px`` pixels in metres), and ns ``vlsam/labels`` id ``i``, a
      ``TEXT_VIEW_FACING`` ``"label score"`` centred above the box (height
      ``overlay_font_px`` pixels in metres). Colours as in the overlay, opaque; lifetime 0.

    Args:
        image_size: (H, W) of the source image in pixels.
    """
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size {image_size}: expected positive (H, W)")
    scale = metres_per_pixel(width, cfg)
    clear = Marker(header=header, action=Marker.DELETEALL)
    markers = [clear]
    for i, det in enumerate(ranked_detections(result.detections)):
        r, g, b = detection_colour(colour_key(det, i))
        colour = ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=1.0)
        x0, y0, x1, y1 = (float(v) for v in det.box_xyxy)
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        box = Marker(header=header, ns=MARKER_NAMESPACES[0], id=i, type=Marker.LINE_STRIP,
                     action=Marker.ADD, color=colour)
        box.pose.orientation.w = 1.0
        box.scale.x = cfg.overlay_line_px * scale
        box.points = [Point(x=px, y=py, z=pz) for px, py, pz in
                      (pixel_to_marker_point(cx, cy, (height, width), cfg) for cx, cy in corners)]
        text = Marker(header=header, ns=MARKER_NAMESPACES[1], id=i,
                      type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, color=colour,
                      text=label_text(det))
        tx, ty, tz = pixel_to_marker_point((x0 + x1) / 2.0, y0 - cfg.overlay_font_px,
                                           (height, width), cfg)
        text.pose.position.x, text.pose.position.y, text.pose.position.z = tx, ty, tz
        text.pose.orientation.w = 1.0
        text.scale.z = cfg.overlay_font_px * scale
        markers += [box, text]
    return MarkerArray(markers=markers)
