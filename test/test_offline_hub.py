"""``vlm.local_files_only: true`` means no network access at all; with it false the download
is announced and the wait is bounded. The socket layer is patched to record (and refuse)
every name lookup and connection attempt."""

from __future__ import annotations

import logging
import shutil
import socket

import pytest

from vlsam_ros.core.config import from_flat
from vlsam_ros.core.errors import ModelNotFoundError
from vlsam_ros.core.vlm import load_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def network_attempts(monkeypatch):
    """Every getaddrinfo / connect / create_connection call, each refused with OSError."""
    attempts: list[tuple[str, object]] = []

    def refuse(kind):
        def call(*args, **kwargs):
            attempts.append((kind, args[:2]))
            raise OSError(f"test: network access refused ({kind})")
        return call

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    return attempts


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # not set by the test
    return cache


def _cfg(model: str, **extra):
    return from_flat({"device": "cpu", "vlm.model": model, "vlm.dtype": "float32", **extra})


def test_missing_hub_id_fails_without_any_network_attempt(network_attempts, empty_hub_cache):
    cfg = _cfg("someorg/not-a-cached-model")
    assert cfg.vlm.local_files_only  # the default
    with pytest.raises(ModelNotFoundError) as info:
        load_vlm(cfg)
    assert network_attempts == []
    message = str(info.value)
    assert "nothing is downloaded while vlm.local_files_only is true" in message
    assert f"not in the Hugging Face cache {empty_hub_cache}" in message
    assert "huggingface-cli download someorg/not-a-cached-model" in message


def test_cached_hub_id_loads_without_any_network_attempt(network_attempts, empty_hub_cache,
                                                         tiny_model_dir, monkeypatch):
    """Offline mode is enforced during loading: transformers gets the cached snapshot folder
    and the hub client refuses any request, and the socket layer sees nothing."""
    repo = empty_hub_cache / "models--vlsam--tiny-llava"
    shutil.copytree(tiny_model_dir / "llava", repo / "snapshots" / ("1" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    import huggingface_hub.constants as hub_constants
    import transformers

    offline_while_loading = []
    real = transformers.AutoProcessor.from_pretrained

    def recording(*args, **kwargs):
        offline_while_loading.append(hub_constants.HF_HUB_OFFLINE)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", recording)
    vlm = load_vlm(_cfg("vlsam/tiny-llava"))
    assert vlm.family == "llava"
    assert network_attempts == []
    assert offline_while_loading == [True]            # the hub client refused any request
    assert hub_constants.HF_HUB_OFFLINE is False      # and the previous mode is back


def test_download_allowed_is_announced_and_bounded(network_attempts, empty_hub_cache,
                                                   caplog):
    """local_files_only false: the log says a download happens, the hub is asked once with
    the configured timeout, and no reachable hub is an immediate, clear error."""
    cfg = _cfg("someorg/not-a-cached-model", **{"vlm.local_files_only": False,
                                               "vlm.hub_timeout_s": 2.5})
    with caplog.at_level(logging.WARNING, logger="vlsam_ros"):
        with pytest.raises(ModelNotFoundError) as info:
            load_vlm(cfg)
    assert "is DOWNLOADED now from" in caplog.text and "vlm.hub_timeout_s=2.5 s" in caplog.text
    assert network_attempts, "the hub was not asked"
    message = str(info.value)
    assert "could not be asked for it" in message and "network access refused" in message
    assert "nothing is downloaded" not in message  # the message no longer contradicts itself
