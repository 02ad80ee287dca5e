"""Exceptions raised by the core. The ROS shell maps each to a log line and a skipped frame."""


class VlsamError(Exception):
    """Base class of every error the core raises on purpose."""


class ModelNotFoundError(VlsamError):
    """Weights named in the configuration are not on disk. The message says what to get and
    where to put it; nothing is downloaded and nothing falls back to other weights."""


class SpacyModelNotFoundError(ModelNotFoundError):
    """The spaCy English pipeline that extracts object names from the VLM's answer is not
    installed, or is not the pinned version. The message says what to ``pip install``."""


class InvalidImageError(VlsamError):
    """An input image is malformed: wrong shape, dtype, size or encoding."""


class AttentionUnavailableError(VlsamError):
    """The VLM did not expose the attention the method needs (never replaced by zeros)."""


class DeviceUnavailableError(VlsamError):
    """The configured torch device does not exist on this machine."""


class ModelLoadError(VlsamError):
    """Weights named in the configuration exist but cannot be used (not a checkpoint, or a
    checkpoint of another model type). The message names the file, the config key and what
    to do."""
