"""Input topic -> message type and output topics of one camera (pure, no ROS import).

Mapping (documented in README, "Topics"):

* ``/cam_front/image_raw`` is a ``sensor_msgs/Image`` topic;
  ``/cam_front/image_raw/compressed`` is a ``sensor_msgs/CompressedImage`` topic.
* The camera namespace is the topic without a trailing ``/compressed`` and without its last
  name: ``/cam_front``. A relative topic is first resolved in the node's namespace.
* Outputs go to ``<camera namespace>/<node name>/<output>``, e.g. for a node named
  ``vlsam``: ``/cam_front/vlsam/detections`` (DetectionArray), ``/cam_front/vlsam/overlay``
  (Image), ``/cam_front/vlsam/markers`` (MarkerArray), ``/cam_front/vlsam/detections_2d``
  (vision_msgs/Detection2DArray). The node name keeps them apart from other detectors'
  outputs on the same camera. A topic directly under ``/`` maps to ``/vlsam/...``.
"""

from __future__ import annotations

import dataclasses

from vlsam_ros.core.config import ConfigError
from vlsam_ros.core.topic_names import topic_name_problem

COMPRESSED_SUFFIX = "/compressed"
OUTPUTS = ("detections", "overlay", "markers", "detections_2d")


@dataclasses.dataclass(frozen=True)
class CameraTopics:
    """Resolved input and output topic names of one camera (all absolute)."""

    input: str
    compressed: bool
    namespace: str  # camera namespace, '' for a topic directly under '/'
    detections: str
    overlay: str
    markers: str
    detections_2d: str


def camera_topics(topic: str, node_name: str, node_namespace: str = "/") -> CameraTopics:
    """Resolves one entry of the ``cameras`` parameter; raises ConfigError when malformed."""
    name = topic
    problem = topic_name_problem(name)
    if problem is not None:
        raise ConfigError(f"cameras: {topic!r} is not a valid ROS topic name: {problem}")
    if not name.startswith("/"):
        name = node_namespace.rstrip("/") + "/" + name
    compressed = name.endswith(COMPRESSED_SUFFIX)
    base = name[: -len(COMPRESSED_SUFFIX)] if compressed else name
    if not base:
        raise ConfigError(f"cameras: {topic!r} names no image topic before /compressed")
    namespace = base.rsplit("/", 1)[0]
    prefix = f"{namespace}/{node_name}/"
    return CameraTopics(name, compressed, namespace,
                        **{output: prefix + output for output in OUTPUTS})


def check_distinct_outputs(cameras: list[CameraTopics], what: str = "cameras") -> None:
    """ConfigError when two cameras would write the same outputs (the one collision check
    of the node and of every replay path); ``what`` names the parameter or option."""
    seen: dict[str, str] = {}
    for cam in cameras:
        if cam.detections in seen:
            raise ConfigError(
                f"{what}: {seen[cam.detections]!r} and {cam.input!r} would both publish "
                f"{cam.detections}; put each camera's image topic in its own namespace")
        seen[cam.detections] = cam.input


def all_camera_topics(topics: tuple[str, ...] | list[str], node_name: str,
                      node_namespace: str = "/") -> list[CameraTopics]:
    """Resolves every camera; two cameras that would share outputs raise ConfigError."""
    cameras = [camera_topics(t, node_name, node_namespace) for t in topics]
    check_distinct_outputs(cameras)
    return cameras
