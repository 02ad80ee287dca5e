"""Backend registry and the production VLM loader.

``BACKENDS`` maps ``vlm.family`` to its backend class (a plain dict, no plugin framework).
``load_vlm(cfg)`` loads the weights named by ``vlm.model`` (a local folder, or a hub id
that is already in the local Hugging Face cache) onto ``cfg.device``; while
``vlm.local_files_only`` is true nothing touches the network (see ``load_vlm``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Iterator

from vlsam_ros.core.config import VlmConfig, VlsamConfig
from vlsam_ros.core.device import TORCH_DTYPES, resolve_device
from vlsam_ros.core.errors import ModelLoadError, ModelNotFoundError
from vlsam_ros.core.vlm.hf_backend import (HuggingFaceVlm, Idefics3Vlm, LlavaNextVlm, LlavaVlm,
                                           Qwen2VlVlm)

LOG = logging.getLogger(__name__)

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


def missing_model_message(source: str, family: str, reason: str = "",
                          local_files_only: bool = True) -> str:
    """What is missing, how to get it, and which config key to point at it."""
    is_hub_id = not _looks_like_path(source)
    hub_id = source if is_hub_id else SUGGESTED_CHECKPOINTS[family]
    local = f"models/{hub_id.split('/')[-1]}"
    if is_hub_id:
        reason = (f"if {source!r} is meant as a local folder: it does not exist relative to "
                  f"{Path.cwd()}; " + reason)
    where = ("nothing is downloaded while vlm.local_files_only is true" if local_files_only
             else "and it could not be downloaded")
    return (f"VLM weights not found: vlm.model={source!r} (vlm.family={family!r}) is neither a "
            f"folder on disk nor in the local Hugging Face cache, {where}. Get them on a "
            f"machine with network access, e.g. "
            f"`huggingface-cli download {hub_id} --local-dir {local}`, copy the folder here and "
            f"set vlm.model: {local} (config key vlm.model). For tests and demos, "
            f"`vlsam-make-tiny-models models/tiny --families {family}` writes a tiny random "
            f"model to models/tiny/{family}." + (f" ({reason})" if reason else ""))


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """While ``enabled``: huggingface_hub's offline mode, in which every HTTP request of the
    hub client (and of transformers, which uses it) raises instead of touching the network.
    The previous mode is restored afterwards."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def cached_snapshot(hub_id: str) -> Path | None:
    """The local cache folder of ``hub_id``'s main revision when its config.json is cached,
    else None. Reads the cache only: never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _probe_hub(hub_id: str, timeout_s: float) -> str | None:
    """Asks the hub about ``hub_id`` in a helper thread and waits at most ``timeout_s``
    (name resolution included, which no request timeout bounds). None when the hub answered;
    otherwise why it did not."""
    from huggingface_hub import HfApi

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            HfApi().model_info(hub_id, timeout=timeout_s)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 -- any failure is reported as the reason
            outcome.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")

    thread = threading.Thread(target=ask, name="vlsam-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"no answer within vlm.hub_timeout_s={timeout_s:g} s"
    return outcome[0]


def _resolve_source(vcfg: VlmConfig) -> str:
    """A local folder to load from, or (only with local_files_only false) a hub id the hub
    has confirmed; ModelNotFoundError at once otherwise."""
    if _looks_like_path(vcfg.model):
        source = str(Path(vcfg.model).expanduser())
        if not (Path(source) / "config.json").is_file():
            raise ModelNotFoundError(missing_model_message(
                vcfg.model, vcfg.family, f"{source}/config.json does not exist",
                vcfg.local_files_only))
        return source
    snapshot = cached_snapshot(vcfg.model)
    if snapshot is not None:
        return str(snapshot)
    from huggingface_hub import constants

    if vcfg.local_files_only:
        raise ModelNotFoundError(missing_model_message(
            vcfg.model, vcfg.family, f"not in the Hugging Face cache {constants.HF_HUB_CACHE}"))
    LOG.warning("vlm.model=%r is not in the Hugging Face cache %s; vlm.local_files_only is "
                "false, so it is DOWNLOADED now from %s (can take many minutes for a big "
                "model). Each hub request times out after vlm.hub_timeout_s=%g s. Set "
                "vlm.local_files_only: true to forbid downloads.", vcfg.model,
                constants.HF_HUB_CACHE, constants.ENDPOINT, vcfg.hub_timeout_s)
    problem = _probe_hub(vcfg.model, vcfg.hub_timeout_s)
    if problem is not None:
        raise ModelNotFoundError(missing_model_message(
            vcfg.model, vcfg.family, f"the hub at {constants.ENDPOINT} could not be asked for "
            f"it: {problem}", local_files_only=False))
    return vcfg.model


@contextlib.contextmanager
def _hub_timeouts(timeout_s: float) -> Iterator[None]:
    """hub request timeouts of ``timeout_s`` (huggingface_hub reads these at request time)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_ETAG_TIMEOUT = constants.HF_HUB_DOWNLOAD_TIMEOUT = timeout_s
    try:
        yield
    finally:
        constants.HF_HUB_ETAG_TIMEOUT, constants.HF_HUB_DOWNLOAD_TIMEOUT = saved


def load_vlm(cfg: VlsamConfig) -> HuggingFaceVlm:
    """Loads the VLM of ``cfg.vlm`` on ``cfg.device`` with dtype ``cfg.vlm.dtype``.

    With ``vlm.local_files_only`` (the default) nothing touches the network: a hub id is
    looked up in the local cache only (the hub client is in offline mode meanwhile), and
    one that is not there fails at once. Without it, a missing hub id is logged as a
    download, the hub must answer within ``vlm.hub_timeout_s``, and each of its requests
    times out after that long.

    Raises ModelNotFoundError (weights absent, with a how-to-get-them message),
    ModelLoadError (weights present but unreadable), DeviceUnavailableError (e.g. 'cuda' on
    a machine without CUDA; never falls back to CPU).
    """
    vcfg = cfg.vlm
    backend = BACKENDS[vcfg.family]
    device = resolve_device(cfg.device)
    source = _resolve_source(vcfg)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        with hub_offline(vcfg.local_files_only), _hub_timeouts(vcfg.hub_timeout_s):
            processor = AutoProcessor.from_pretrained(
                source, local_files_only=vcfg.local_files_only)
            model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=TORCH_DTYPES[vcfg.dtype], local_files_only=vcfg.local_files_only,
                attn_implementation="sdpa")
    except OSError as exc:   # transformers' "not in cache / no such file" error
        raise ModelNotFoundError(missing_model_message(
            vcfg.model, vcfg.family, str(exc).splitlines()[0], vcfg.local_files_only)) from exc
    except (ValueError, KeyError) as exc:  # unreadable config/weights, unknown model type
        raise ModelLoadError(
            f"VLM weights at {source} (vlm.model={vcfg.model!r}) cannot be loaded: "
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}; check that "
            f"the folder holds a complete transformers checkpoint of vlm.family="
            f"{vcfg.family!r}") from None
    return backend(model.to(device), processor, device)
