"""Turns the configured device name into a torch device, or fails loudly.

There is never a silent CPU fallback: a vehicle that was configured for 'cuda' and runs on
the CPU would miss its deadlines without anyone noticing.
"""

from __future__ import annotations

import torch

from vlsam_ros.core.errors import DeviceUnavailableError


TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
"""The dtype names of the config's ``*dtype`` fields and their torch dtypes."""


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' -> torch.device.

    Raises DeviceUnavailableError when CUDA is not available or the index does not exist.
    """
    if name == "cpu":
        return torch.device("cpu")
    if not (name == "cuda" or name.startswith("cuda:")):
        raise DeviceUnavailableError(f"device {name!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {name!r} was configured but CUDA is not available on this machine; "
            "set device: cpu to run on the CPU")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device
