"""Per-frame cost of the ROS shell's conversions on a 1600x900 frame (CPU).

Prints one line per measurement and, last, one line of JSON with every figure in
milliseconds (median of ``--repeat`` calls after one warm-up call). Run:

    source scripts/ros_env.sh && .venv/bin/python bench/conversions.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vlsam_ros.core.masks import box_from_mask
from vlsam_ros.core.results import Detection, FrameResult
from vlsam_ros.ros.detections import MessageTypes, frame_result_to_msg
from vlsam_ros.ros.images import compressed_to_rgb, image_to_rgb
from vlsam_ros.ros.visualization import markers_msg, overlay_msg

HEIGHT, WIDTH = 900, 1600
LIMIT = 10**8


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--detections", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    smooth = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)

    def raw(encoding: str, array: np.ndarray, pad: int = 0) -> Image:
        rows = array.reshape(HEIGHT, -1)
        padded = np.concatenate([rows, np.zeros((HEIGHT, pad), np.uint8)], axis=1)
        return Image(height=HEIGHT, width=WIDTH, encoding=encoding, step=padded.shape[1],
                     data=padded.tobytes())

    mono16 = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    inputs = {
        "decode_rgb8": raw("rgb8", rgb),
        "decode_bgr8": raw("bgr8", rgb),
        "decode_bgr8_padded": raw("bgr8", rgb, pad=64),
        "decode_mono16": raw("mono16", mono16.view(np.uint8)),
        "decode_bayer_rggb8": raw("bayer_rggb8", rgb[:, :, 0]),
        "decode_yuyv": raw("yuyv", rgb[:, :, :2]),
    }
    figures = {name: _median_ms(lambda m=msg: image_to_rgb(m, max_pixels=LIMIT), args.repeat)
               for name, msg in inputs.items()}
    for ext, name in ((".jpg", "decode_jpeg"), (".png", "decode_png")):
        msg = CompressedImage(format=ext[1:], data=cv2.imencode(ext, smooth)[1].tobytes())
        figures[name] = _median_ms(lambda m=msg: compressed_to_rgb(m, max_pixels=LIMIT),
                                   args.repeat)

    dets = []
    for i in range(args.detections):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        mask[40 * i:40 * i + 300, 90 * i:90 * i + 400] = True
        dets.append(Detection(f"object {i}", 1.0 - 0.05 * i, mask, box_from_mask(mask),
                              np.zeros((2, 2), np.float32), np.array([1, 0], np.int8)))
    result = FrameResult(tuple(dets), "objects", 1.0, 1.0, 2.0)
    header = Header(frame_id="camera_optical")
    try:
        types = MessageTypes.ros()
    except ImportError:  # no colcon build: rosbags' classes from msg/*.msg
        from vlsam_ros.offline.replay.bag_io import vlsam_typestore
        types = MessageTypes.from_typestore(vlsam_typestore())
        store_header = vlsam_typestore().types["std_msgs/msg/Header"]
        header = store_header(stamp=vlsam_typestore().types["builtin_interfaces/msg/Time"](
            sec=0, nanosec=0), frame_id="camera_optical")
    n = args.detections
    figures[f"detection_array_{n}_masks"] = _median_ms(
        lambda: frame_result_to_msg(result, header, 0.0, types), args.repeat)
    ros_header = Header(frame_id="camera_optical")
    figures[f"overlay_msg_{n}_masks"] = _median_ms(
        lambda: overlay_msg(rgb, result, ros_header), args.repeat)
    figures[f"markers_{n}"] = _median_ms(
        lambda: markers_msg(result, ros_header, (HEIGHT, WIDTH)), args.repeat)
    for name, ms in figures.items():
        print(f"{name:28s} {ms:8.2f} ms")
    print(json.dumps({"frame": f"{WIDTH}x{HEIGHT}", "unit": "ms", **{k: round(v, 3) for k, v
                                                                    in figures.items()}}))


if __name__ == "__main__":
    main()
