"""The one check of a frame the core accepts: an RGB uint8 numpy array of shape (H, W, 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlsam_ros.core.errors import InvalidImageError


def check_image(image: Any, min_side: int = 1, what: str = "image") -> np.ndarray:
    """Returns ``image`` unchanged if it is an RGB uint8 (H, W, 3) numpy array with both sides
    >= ``min_side``; else raises InvalidImageError naming ``what`` and the problem."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"{what}: expected an RGB uint8 numpy array (H, W, 3), got "
                                f"{type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidImageError(f"{what}: expected dtype uint8 (RGB, 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"{what}: expected shape (H, W, 3) (RGB), got {image.shape}")
    if image.shape[0] < min_side or image.shape[1] < min_side:
        raise InvalidImageError(f"{what} of {image.shape[0]} x {image.shape[1]} pixels is too "
                                f"small (each side must be >= {min_side})")
    return image
