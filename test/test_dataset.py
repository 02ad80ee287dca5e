"""CODA-layout dataset: generation, validation, stamps and conversion to a bag."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from vlsam_ros.offline.replay.bag_io import (FRAME_INDEX_KEY, open_reader, read_custom_data,
                                             vlsam_typestore)
from vlsam_ros.offline.datasets import coda_dataset as cd
from vlsam_ros.offline.datasets.dataset_to_bag import dataset_to_bag, main as dataset_to_bag_main
from vlsam_ros.offline.datasets.make_demo_dataset import make_demo_dataset

NUM_FRAMES = 6


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "coda"
    make_demo_dataset(root, num_frames=NUM_FRAMES, width=64, height=48, seed=3)
    return root


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_demo_dataset_layout_and_masks(demo_root):
    gt = json.loads((demo_root / "corner_case.json").read_text())
    names = [img["file_name"] for img in gt["images"]]
    assert names[0].startswith("n008-") and "__CAM_FRONT__" in names[0]  # nuScenes style
    assert len(Path(names[1]).stem) == 13 and Path(names[1]).stem.isdigit()  # ONCE style
    assert names[2] == "000002.png" and "timestamp" in gt["images"][2]  # KITTI style
    assert {c["supercategory"] for c in gt["categories"]} == {"common", "novel"}
    assert all((demo_root / "images" / n).is_file() for n in names)
    # frame 4 (index % 5 == 4) is empty: images without objects are exercised
    assert not [a for a in gt["annotations"] if a["image_id"] == 5]
    coco = COCO(str(demo_root / "corner_case.json"))
    for ann in gt["annotations"]:
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        assert mask.sum() == ann["area"]
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(),
                               ys.max() + 1 - ys.min()]


def test_demo_dataset_is_deterministic(tmp_path):
    a = make_demo_dataset(tmp_path / "a", num_frames=3, width=32, height=24, seed=1)
    b = make_demo_dataset(tmp_path / "b", num_frames=3, width=32, height=24, seed=1)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("stamps", ["order", "metadata"])
def test_load_assigns_stamps_in_frame_order(demo_root, stamps):
    ds = cd.load_coda_dataset(demo_root, stamps=stamps, rate_hz=10.0, start_s=2.0)
    assert [f.image_id for f in ds.frames] == list(range(1, NUM_FRAMES + 1))
    first = 2_000_000_000 if stamps == "order" else 1_600_000_000_000_000_000
    assert [f.stamp_ns for f in ds.frames] == [first + i * 100_000_000
                                               for i in range(NUM_FRAMES)]


@pytest.mark.parametrize("entry, expected", [
    ({"file_name": "n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg"},
     1532402927612460000),
    ({"file_name": "1616005747999.jpg"}, 1616005747999000000),
    ({"file_name": "000123.png", "timestamp": 1616005747.5}, 1616005747500000000),
    ({"file_name": "000123.png", "timestamp": "1616005747.000000001"}, 1616005747000000001),
    ({"file_name": "x.png", "timestamp": 1616005747999}, 1616005747999000000),  # ms
    ({"file_name": "x.png", "timestamp": 1616005747999000111}, 1616005747999000111),  # ns
])
def test_stamp_from_metadata(entry, expected):
    assert cd.stamp_from_metadata(entry, "images[0]") == expected


@pytest.mark.parametrize("entry, message", [
    ({"file_name": "000123.png"}, "no timestamp in the entry and none in the file name"),
    ({"file_name": "x.png", "timestamp": 123456789012}, "cannot tell the unit"),
    ({"file_name": "x.png", "timestamp": -5}, "not a non-negative number"),
])
def test_stamp_from_metadata_errors(entry, message):
    with pytest.raises(cd.DatasetError, match=f"images\\[7\\].*{message}"):
        cd.stamp_from_metadata(entry, "images[7]")


def test_missing_image_names_file_and_entry(demo_root, tmp_path):
    root = copy_dataset(demo_root, tmp_path / "coda")
    gt = json.loads((root / "corner_case.json").read_text())
    victim = gt["images"][3]["file_name"]
    (root / "images" / victim).unlink()
    with pytest.raises(cd.DatasetError,
                       match=rf"corner_case.json: images\[3\] \(id 4\): image file "
                             rf"'{victim}' not found"):
        cd.load_coda_dataset(root)


def test_malformed_json_names_file(demo_root, tmp_path):
    root = copy_dataset(demo_root, tmp_path / "coda")
    (root / "corner_case.json").write_text('{"images": [}')
    with pytest.raises(cd.DatasetError, match="corner_case.json: not valid JSON"):
        cd.load_coda_dataset(root)


@pytest.mark.parametrize("mutate, message", [
    (lambda gt: gt["images"][2].pop("file_name"), r"images\[2\] \(id 3\): needs a string "
                                                  r"'file_name'"),
    (lambda gt: gt["images"][1].update(width="64"), r"images\[1\] \(id 2\): needs a positive "
                                                    r"integer 'width'"),
    (lambda gt: gt["annotations"][0].update(image_id=999), r"annotations\[0\]: image_id 999"),
    (lambda gt: gt["images"][1].update(id=1), r"images\[1\]: duplicate image id 1"),
])
def test_malformed_entries_are_named(demo_root, tmp_path, mutate, message):
    root = copy_dataset(demo_root, tmp_path / "coda")
    gt = json.loads((root / "corner_case.json").read_text())
    mutate(gt)
    (root / "corner_case.json").write_text(json.dumps(gt))
    with pytest.raises(cd.DatasetError, match=message):
        cd.load_coda_dataset(root)


def test_duplicate_metadata_stamps_are_an_error(demo_root, tmp_path):
    root = copy_dataset(demo_root, tmp_path / "coda")
    gt = json.loads((root / "corner_case.json").read_text())
    gt["images"][2]["timestamp"] = gt["images"][1]["file_name"].split(".")[0]
    (root / "corner_case.json").write_text(json.dumps(gt))
    with pytest.raises(cd.DatasetError, match="have the same stamp"):
        cd.load_coda_dataset(root, stamps="metadata")


def test_size_mismatch_names_file(demo_root, tmp_path):
    root = copy_dataset(demo_root, tmp_path / "coda")
    gt = json.loads((root / "corner_case.json").read_text())
    gt["images"][0]["width"] = 65
    (root / "corner_case.json").write_text(json.dumps(gt))
    ds = cd.load_coda_dataset(root)
    with pytest.raises(cd.DatasetError, match=r"is 64x48 but images\[0\] \(id 1\) says 65x48"):
        dataset_to_bag(ds, tmp_path / "bag")
    assert not (tmp_path / "bag").exists()  # no half-written bag


def _read_bag(bag: Path):
    store = vlsam_typestore()
    with open_reader(bag) as reader:
        (conn,) = reader.connections
        return conn, [(t, store.deserialize_cdr(raw, conn.msgtype))
                      for _, t, raw in reader.messages()]


@pytest.mark.parametrize("storage, compressed", [("mcap", False), ("sqlite3", False),
                                                 ("mcap", True)])
def test_dataset_to_bag_round_trip(demo_root, tmp_path, storage, compressed):
    ds = cd.load_coda_dataset(demo_root, stamps="metadata")
    bag = dataset_to_bag(ds, tmp_path / "bag", storage, compressed=compressed)
    conn, msgs = _read_bag(bag)
    assert conn.topic == "/cam_front/image_raw" + ("/compressed" if compressed else "")
    assert len(msgs) == NUM_FRAMES
    for frame, (log_time, msg) in zip(ds.frames, msgs):
        assert log_time == frame.stamp_ns
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == frame.stamp_ns
        assert msg.header.frame_id == "cam_front"
        if compressed:
            assert msg.format == ("png" if frame.file_name.endswith(".png") else "jpeg")
            assert msg.data.tobytes() == frame.path.read_bytes()
        else:
            assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", 48, 64, 192)
            expected = cv2.imread(str(frame.path))[:, :, ::-1]
            assert np.array_equal(msg.data.reshape(48, 64, 3), expected)
    index = json.loads(read_custom_data(bag)[FRAME_INDEX_KEY])
    assert [e["image_id"] for e in index] == [f.image_id for f in ds.frames]


def test_conversion_holds_one_decoded_frame_at_a_time(demo_root, tmp_path, monkeypatch):
    """A CODA-size dataset (thousands of 1920 x 1280 frames) must not be held in memory:
    whenever a frame is decoded, at most one earlier decoded frame is still alive."""
    import weakref

    import vlsam_ros.offline.datasets.dataset_to_bag as module

    decoded: list[weakref.ref] = []
    alive_at_decode: list[int] = []
    real_read = module.read_frame_rgb

    def counting_read(frame):
        alive_at_decode.append(sum(ref() is not None for ref in decoded))
        rgb = real_read(frame)
        decoded.append(weakref.ref(rgb))
        return rgb

    monkeypatch.setattr(module, "read_frame_rgb", counting_read)
    dataset_to_bag(cd.load_coda_dataset(demo_root), tmp_path / "bag")
    assert len(alive_at_decode) == 2 * NUM_FRAMES  # checked, then read again to write
    assert max(alive_at_decode) <= 1, alive_at_decode


def test_cli_reports_missing_image_and_leaves_no_bag(demo_root, tmp_path, capsys):
    root = copy_dataset(demo_root, tmp_path / "coda")
    gt = json.loads((root / "corner_case.json").read_text())
    (root / "images" / gt["images"][0]["file_name"]).unlink()
    code = dataset_to_bag_main([str(root), str(tmp_path / "bag")])
    assert code == 2
    err = capsys.readouterr().err
    assert "images[0] (id 1)" in err and gt["images"][0]["file_name"] in err
    assert not (tmp_path / "bag").exists()
    assert dataset_to_bag_main([str(demo_root), str(tmp_path / "ok"), "--storage",
                                "sqlite3", "--stamps", "metadata"]) == 0
    assert (tmp_path / "ok" / "metadata.yaml").is_file()
