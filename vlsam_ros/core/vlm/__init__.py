"""Vision-language models: protocol, Hugging Face backends, registry and loader."""

from vlsam_ros.core.vlm.base import VisionLanguageModel
from vlsam_ros.core.vlm.registry import BACKENDS, load_vlm

__all__ = ["BACKENDS", "VisionLanguageModel", "load_vlm"]
