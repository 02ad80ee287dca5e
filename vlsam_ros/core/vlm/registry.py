"""Backend registry and the production VLM loader.

``BACKENDS`` maps ``vlm.family`` to its backend class (a plain dict, no plugin framework).
``load_vlm(cfg)`` loads the weights named by ``vlm.model`` (a local folder, or a hub id
that is already in the local Hugging Face cache) onto ``cfg.device``; nothing is downloaded
while ``vlm.local_files_only`` is true.
"""

from __future__ import annotations

from pathlib import Path

from vlsam_ros.core.config import VlsamConfig
from vlsam_ros.core.device import resolve_device
from vlsam_ros.core.errors import ModelNotFoundError
from vlsam_ros.core.vlm.hf_backend import (HuggingFaceVlm, Idefics3Vlm, LlavaNextVlm, LlavaVlm,
                                           Qwen2VlVlm, _DTYPES)

BACKENDS: dict[str, type[HuggingFaceVlm]] = {
    "llava": LlavaVlm,
    "llava_next": LlavaNextVlm,
    "qwen2_vl": Qwen2VlVlm,
    "idefics3": Idefics3Vlm,
}

# A real checkpoint per family, named in "how to get it" messages.
SUGGESTED_CHECKPOINTS: dict[str, str] = {
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava_next": "llava-hf/llava-v1.6-mistral-7b-hf",
    "qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct",
    "idefics3": "HuggingFaceTB/SmolVLM-Instruct",
}


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or Path(source).exists()


def missing_model_message(source: str, family: str, reason: str = "") -> str:
    """What is missing, how to get it, and which config key to point at it."""
    is_hub_id = not _looks_like_path(source)
    hub_id = source if is_hub_id else SUGGESTED_CHECKPOINTS[family]
    local = f"models/{hub_id.split('/')[-1]}"
    if is_hub_id:
        reason = (f"if {source!r} is meant as a local folder: it does not exist relative to "
                  f"{Path.cwd()}; " + reason)
    return (f"VLM weights not found: vlm.model={source!r} (vlm.family={family!r}) is neither a "
            f"folder on disk nor in the local Hugging Face cache, and nothing is downloaded at "
            f"run time. Get them on a machine with network access, e.g. "
            f"`huggingface-cli download {hub_id} --local-dir {local}`, copy the folder here and "
            f"set vlm.model: {local} (config key vlm.model). For tests and demos, "
            f"`vlsam-make-tiny-models models/tiny --families {family}` writes a tiny random "
            f"model to models/tiny/{family}." + (f" ({reason})" if reason else ""))


def load_vlm(cfg: VlsamConfig) -> HuggingFaceVlm:
    """Loads the VLM of ``cfg.vlm`` on ``cfg.device`` with dtype ``cfg.vlm.dtype``.

    Raises ModelNotFoundError (weights absent, with a how-to-get-them message),
    DeviceUnavailableError (e.g. 'cuda' on a machine without CUDA; never falls back to CPU).
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    vcfg = cfg.vlm
    backend = BACKENDS[vcfg.family]
    device = resolve_device(cfg.device)
    source = str(Path(vcfg.model).expanduser()) if _looks_like_path(vcfg.model) else vcfg.model
    if _looks_like_path(vcfg.model) and not (Path(source) / "config.json").is_file():
        raise ModelNotFoundError(missing_model_message(vcfg.model, vcfg.family,
                                                       f"{source}/config.json does not exist"))
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=vcfg.local_files_only)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=_DTYPES[vcfg.dtype], local_files_only=vcfg.local_files_only,
            attn_implementation="sdpa")
    except OSError as exc:   # transformers' "not in cache / no such file" error
        raise ModelNotFoundError(missing_model_message(vcfg.model, vcfg.family,
                                                       str(exc).splitlines()[0])) from exc
    return backend(model.to(device), processor, device)
