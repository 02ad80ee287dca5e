"""Promptable segmenters: the protocol and the SAM / MobileSAM adapter.

Importing this package does not import torch-heavy SAM packages; ``load_segmenter``
imports the one the configuration names.
"""

from vlsam_ros.core.segmenter.base import PromptableSegmenter, SegmentationBatch
from vlsam_ros.core.segmenter.sam_adapter import SAM_VARIANTS, SamSegmenter, load_segmenter

__all__ = ["PromptableSegmenter", "SegmentationBatch", "SAM_VARIANTS", "SamSegmenter",
           "load_segmenter"]
