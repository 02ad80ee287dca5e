"""Unlabelled frames for the tuner: every ``every``-th image of a folder (sorted by name) or
of the camera topics of a rosbag2 (log-time order), at most ``max_frames``, decoded to RGB
uint8 (H, W, 3) and held in memory (a tuning run replays them for every trial)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vlsam_ros.core.config import NodeConfig
from vlsam_ros.core.errors import InvalidImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class FramesError(ValueError):
    """The frames cannot be read (a user error: the message names the file or topic)."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """source: file name, or ``<topic>#<n>`` (n-th message of the topic, 0-based)."""

    source: str
    image: np.ndarray


def frames_fingerprint(frames: Sequence[Frame]) -> str:
    """sha256 over every frame's source, shape and pixels (a checkpoint belongs to it)."""
    digest = hashlib.sha256()
    for f in frames:
        digest.update(f"{f.source}|{f.image.shape}|".encode())
        digest.update(np.ascontiguousarray(f.image).tobytes())
    return digest.hexdigest()


def _pick(index: int, every: int) -> bool:
    return index % every == 0


def frames_from_folder(folder: str | Path, every: int = 1, max_frames: int = 20) -> list[Frame]:
    """Images of ``folder`` (suffixes IMAGE_SUFFIXES, sorted by name). FramesError when the
    folder holds none or one cannot be decoded."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FramesError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    frames = []
    for i, path in enumerate(files):
        if not _pick(i, every):
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FramesError(f"{path}: cannot be decoded as an image")
        frames.append(Frame(path.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        if len(frames) == max_frames:
            break
    return frames


def frames_from_bag(bag: str | Path, topics: Sequence[str], every: int = 1,
                    max_frames: int = 20, node_cfg: NodeConfig = NodeConfig(),
                    node_name: str = "vlsam") -> list[Frame]:
    """Images of the camera ``topics`` of a rosbag2 (the node's decoder), counted over all
    topics together in log-time order. FramesError for a missing topic, a non-image topic
    or an undecodable frame; BagError for an unreadable bag."""
    from vlsam_ros.offline.replay.bag_io import iter_messages, open_reader, vlsam_typestore
    from vlsam_ros.offline.replay.replay_options import ReplayError
    from vlsam_ros.offline.replay.source_frames import select_cameras
    from vlsam_ros.ros.images import decode_image_msg

    store = vlsam_typestore()
    frames: list[Frame] = []
    with open_reader(bag) as reader:
        try:
            cameras = select_cameras(reader, list(topics), node_name, Path(bag))
        except ReplayError as exc:
            raise FramesError(str(exc)) from None
        connections = [c for _, conns in cameras for c in conns]
        counts: dict[str, int] = {}
        for i, (conn, _, raw) in enumerate(iter_messages(reader, connections, bag)):
            n = counts.get(conn.topic, 0)
            counts[conn.topic] = n + 1
            if not _pick(i, every):
                continue
            msg = store.deserialize_cdr(raw, conn.msgtype)
            try:
                rgb = decode_image_msg(msg, node_cfg)
            except InvalidImageError as exc:
                raise FramesError(f"{bag}: {conn.topic} message {n}: {exc}") from None
            frames.append(Frame(f"{conn.topic}#{n}", rgb))
            if len(frames) == max_frames:
                break
    if not frames:
        raise FramesError(f"{bag}: no messages on {', '.join(topics)}")
    return frames
