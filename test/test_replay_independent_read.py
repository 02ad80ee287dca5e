"""Output bags of ``vlsam-replay-bag`` read back without the project's reader.

The replayed bag is read with the ``mcap`` and ``mcap-ros2-support`` packages (the message
definitions come from the schemas stored in the bag, not from rosbags or vlsam_ros), and
every RLE is decoded with pycocotools. The scene is non-square (64 x 48) with off-centre
objects whose masks are not symmetric under a transpose, so a row-major or transposed RLE,
swapped box axes or a lost header would all fail here (whole-frame masks would not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from pycocotools import mask as coco_mask

from oracle import OracleSegmenter, PlantedVlm, make_scene
from vlsam_ros.core.pipeline import Pipeline
from vlsam_ros.offline.replay import replay_bag as rb
from vlsam_ros.offline.replay.bag_io import open_writer, vlsam_typestore

HEIGHT, WIDTH = 48, 64
# (topic, frame_id, encoding): one raw camera in each byte order
CAMERAS = (("/cam_front/image_raw", "cam_front_optical", "rgb8"),
           ("/cam_left/image_raw", "cam_left_optical", "bgr8"))
START_NS = 1_700_000_123_000_000_007
PERIOD_NS = 100_000_000
FRAMES = 2


@pytest.fixture(scope="module")
def scene():
    """A wide box low on the left and a tall thin box high on the right (x1/y1 exclusive)."""
    return make_scene(HEIGHT, WIDTH, [("car", (5, 29, 27, 41)), ("sign", (44, 3, 52, 25))])


def stamp_of(index: int, camera: int) -> int:
    return START_NS + index * PERIOD_NS + camera * 1_000


def write_input_bag(path: Path, image: np.ndarray) -> None:
    """FRAMES frames per camera of ``image`` (RGB uint8 (H, W, 3)), distinct header stamps."""
    store = vlsam_typestore()
    types = store.types
    writer = open_writer(path, "mcap")
    for camera, (topic, frame_id, encoding) in enumerate(CAMERAS):
        conn = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=store)
        pixels = image if encoding == "rgb8" else image[:, :, ::-1]
        for i in range(FRAMES):
            stamp = stamp_of(i, camera)
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                           nanosec=stamp % 10**9),
                frame_id=frame_id)
            msg = types["sensor_msgs/msg/Image"](
                header=header, height=HEIGHT, width=WIDTH, encoding=encoding, is_bigendian=0,
                step=WIDTH * 3, data=np.ascontiguousarray(pixels).reshape(-1))
            writer.write(conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    writer.close()


def read_detections(out_bag: Path) -> dict[str, list[tuple[int, object]]]:
    """{topic: [(log time ns, decoded DetectionArray)]} of every */vlsam/detections topic,
    read with mcap + mcap-ros2-support only."""
    files = sorted(out_bag.glob("*.mcap"))
    assert len(files) == 1, files
    out: dict[str, list[tuple[int, object]]] = {}
    with files[0].open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            if channel.topic.endswith("/vlsam/detections"):
                assert schema.name == "vlsam_ros/msg/DetectionArray"
                out.setdefault(channel.topic, []).append((message.log_time, decoded))
    return out


def coco_decode(height: int, width: int, counts) -> np.ndarray:
    """bool (H, W) from COCO uncompressed RLE counts, by pycocotools."""
    rle = coco_mask.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]},
                                height, width)
    return coco_mask.decode(rle).astype(bool)


def test_replayed_bag_read_with_mcap_and_pycocotools(tmp_path, monkeypatch, scene):
    write_input_bag(tmp_path / "in", scene.image)
    cfg_values = ["device=cpu", "vlm.question=list the objects", "prompts.refinement_rounds=0",
                  "ensemble.tiles=false", "ensemble.num_questions=1",
                  "ensemble.question_source=config"]
    monkeypatch.setattr("vlsam_ros.core.pipeline.build_pipeline",
                        lambda cfg: Pipeline(cfg, PlantedVlm(scene), OracleSegmenter()))
    argv = [str(tmp_path / "in"), str(tmp_path / "out"), "--no-progress",
            "--topics", *[topic for topic, _, _ in CAMERAS]]
    for value in cfg_values:
        argv += ["--set", value]
    assert rb.main(argv) == rb.EXIT_OK

    expected = {obj.name: obj for obj in scene.objects}
    outputs = read_detections(tmp_path / "out")
    assert sorted(outputs) == sorted(t.replace("/image_raw", "/vlsam/detections")
                                     for t, _, _ in CAMERAS)
    for camera, (topic, frame_id, _) in enumerate(CAMERAS):
        messages = outputs[topic.replace("/image_raw", "/vlsam/detections")]
        stamps = [stamp_of(i, camera) for i in range(FRAMES)]
        assert [log_time for log_time, _ in messages] == stamps
        for (_, msg), stamp in zip(messages, stamps):
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
            assert msg.header.frame_id == frame_id
            assert sorted(d.label for d in msg.detections) == sorted(expected)
            for det in msg.detections:
                assert (det.mask_height, det.mask_width) == (HEIGHT, WIDTH)
                mask = coco_decode(det.mask_height, det.mask_width, det.mask_rle)
                want = expected[det.label]
                assert np.array_equal(mask, want.mask), det.label
                ys, xs = np.nonzero(mask)
                box = det.box
                assert (box.x_offset, box.y_offset, box.width, box.height) == (
                    xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
                x0, y0, x1, y1 = want.box_xyxy
                assert (box.x_offset, box.y_offset, box.width, box.height) == (
                    x0, y0, x1 - x0, y1 - y0)
