"""Promptable segmenters: the protocol, the SAM / MobileSAM adapter, the SAM 2.1 / EdgeTAM /
SAM-HQ adapter through transformers (``hf_sam``) and SAM 3's concept segmenter
(``concept``).

Importing this package does not import the SAM packages or transformers; ``load_segmenter``
imports the one the configuration names (``sam.backend``).
"""

from vlsam_ros.core.segmenter.base import PromptableSegmenter, SegmentationBatch
from vlsam_ros.core.segmenter.sam_adapter import SAM_VARIANTS, SamSegmenter, load_segmenter

__all__ = ["PromptableSegmenter", "SegmentationBatch", "SAM_VARIANTS", "SamSegmenter",
           "load_segmenter"]
