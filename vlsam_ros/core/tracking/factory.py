"""Builds the follower that ``tracking.mode`` names."""

from __future__ import annotations

from typing import Any

from vlsam_ros.core.config import ConfigError, VlsamConfig
from vlsam_ros.core.tracking.followers import FlowFollower, Follower


def build_follower(cfg: VlsamConfig, segmenter: Any, video_model: Any = None) -> Follower:
    """A new follower (one per camera: followers may hold per-track state).

    flow: a FlowFollower over ``segmenter`` (the pipeline's SAM / MobileSAM, shared).
    memory: a MemoryFollower over ``video_model`` (``load_video_tracker(cfg)``, shared by
    every camera; loaded here when None). Raises ConfigError for mode ``off``.
    """
    mode = cfg.tracking.mode
    if mode == "flow":
        return FlowFollower(segmenter, cfg.sam)
    if mode == "memory":
        from vlsam_ros.core.tracking.memory_follower import MemoryFollower, load_video_tracker

        return MemoryFollower(video_model if video_model is not None
                              else load_video_tracker(cfg))
    raise ConfigError(f"tracking.mode={mode!r}: no follower (tracking is off)")
