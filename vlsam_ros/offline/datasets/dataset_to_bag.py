"""Converts a COCO-format corner-case dataset in CODA's layout to a rosbag2 (mcap or sqlite3).

One camera topic; each image becomes a ``sensor_msgs/Image`` (rgb8, decoded from the file)
or, with ``--compressed``, a ``sensor_msgs/CompressedImage`` carrying the file's own JPEG or
PNG bytes unchanged (format ``jpeg``/``png``). The header stamp and the bag's log time are
the frame's stamp: from the frame order at ``--rate`` Hz starting at ``--start`` seconds
(default), or from the file metadata (``--stamps metadata``: the entry's ``timestamp`` or a
nuScenes/ONCE file name; see ``vlsam_ros.offline.datasets.coda_dataset``). The bag's
``metadata.yaml`` ``custom_data`` keeps the frame index (stamp -> image id) used by
``vlsam-evaluate``.

Everything is validated before the bag is created: a malformed JSON, a missing image file,
an image whose size differs from its entry, or unreadable timestamps stop the conversion
with an error naming the file and the entry, and no bag is left behind.

Usage::

    vlsam-dataset-to-bag DATASET_ROOT OUT_BAG [--annotation FILE] [--storage mcap|sqlite3]
        [--topic /cam_front/image_raw] [--frame-id cam_front] [--compressed]
        [--stamps order|metadata] [--rate 10] [--start 1.0]
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from vlsam_ros.offline.replay.bag_io import (FRAME_INDEX_KEY, BagError, frame_index_json,
                                             open_writer, vlsam_typestore)
from vlsam_ros.offline.datasets.coda_dataset import STAMP_SOURCES, CodaDataset, DatasetError, \
    frame_index, load_coda_dataset, read_frame_rgb
from vlsam_ros.core.topic_names import topic_name_problem
from vlsam_ros.ros.images import image_msg
from vlsam_ros.tools.cli import (EXIT_OK, ToolError, ToolParser, check_new_output,
                                 positive_float, run_tool)

DEFAULT_TOPIC = "/cam_front/image_raw"
DEFAULT_FRAME_ID = "cam_front"
_MAGIC_FORMATS = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"))


def _header(store, stamp_ns: int, frame_id: str):
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                  frame_id=frame_id)


def _checked_format(frame, compressed: bool) -> str | None:
    """Decodes ``frame``'s file to check it (decodable, the size its entry states) and,
    when ``compressed``, returns its format (``jpeg``/``png``) from the file's magic bytes;
    None otherwise. Raises DatasetError naming the file and the entry."""
    read_frame_rgb(frame)
    if not compressed:
        return None
    with frame.path.open("rb") as file:
        head = file.read(max(len(magic) for magic, _ in _MAGIC_FORMATS))
    fmt = next((f for magic, f in _MAGIC_FORMATS if head.startswith(magic)), None)
    if fmt is None:
        raise DatasetError(f"{frame.path}: --compressed needs JPEG or PNG files "
                           f"(images[{frame.index}], id {frame.image_id})")
    return fmt


def dataset_to_bag(dataset: CodaDataset, out_bag: str | Path, storage: str = "mcap",
                   topic: str | None = None, frame_id: str = DEFAULT_FRAME_ID,
                   compressed: bool = False) -> Path:
    """Writes every frame of ``dataset`` (in stamp order) to a new bag at ``out_bag``.

    ``topic`` defaults to ``/cam_front/image_raw`` (``.../compressed`` when ``compressed``).
    Image files are checked before the bag is created, then read again one at a time while
    writing (memory holds one frame, whatever the dataset's size); on any error the partial
    bag is removed and DatasetError/BagError propagates.
    """
    out_bag = Path(out_bag)
    if topic is None:
        topic = DEFAULT_TOPIC + ("/compressed" if compressed else "")
    # Check every file before the bag exists, keeping only the formats.
    formats = [_checked_format(frame, compressed) for frame in dataset.frames]
    store = vlsam_typestore()
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    writer = open_writer(out_bag, storage,
                         {FRAME_INDEX_KEY: frame_index_json(frame_index(dataset.frames))})
    try:
        conn = writer.add_connection(topic, msgtype, typestore=store)
        for i, frame in enumerate(dataset.frames):
            header = _header(store, frame.stamp_ns, frame_id)
            if compressed:
                msg = store.types[msgtype](header=header, format=formats[i],
                                           data=np.frombuffer(frame.path.read_bytes(),
                                                              dtype=np.uint8))
            else:
                msg = image_msg(read_frame_rgb(frame), header, msg_type=store.types[msgtype])
            writer.write(conn, frame.stamp_ns, store.serialize_cdr(msg, msgtype))
        writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(out_bag, ignore_errors=True)
        raise
    return out_bag


def build_parser() -> ToolParser:
    parser = ToolParser(prog="vlsam-dataset-to-bag", description=__doc__.splitlines()[0],
                        epilog="Exit status: 0 written, 2 bad arguments, dataset or output "
                               "(nothing is left behind), 130 interrupted.")
    parser.add_argument("dataset", help="dataset root (holding corner_case.json and images/) "
                                        "or the annotation JSON itself")
    parser.add_argument("out_bag", help="output bag folder (must not exist)")
    parser.add_argument("--annotation", help="annotation JSON (default ROOT/corner_case.json)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="rosbag2 storage format (default %(default)s)")
    parser.add_argument("--topic", help=f"camera topic (default {DEFAULT_TOPIC}, "
                                        "+/compressed with --compressed)")
    parser.add_argument("--frame-id", default=DEFAULT_FRAME_ID,
                        help="header frame_id (default %(default)s)")
    parser.add_argument("--compressed", action="store_true",
                        help="write CompressedImage with the files' own JPEG/PNG bytes")
    parser.add_argument("--stamps", choices=STAMP_SOURCES, default="order",
                        help="frame stamps from the JSON order or from file metadata")
    parser.add_argument("--rate", type=positive_float, default=10.0,
                        help="frames per second for --stamps order (default %(default)s)")
    parser.add_argument("--start", type=float, default=1.0,
                        help="first stamp in seconds for --stamps order (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        out_bag = Path(args.out_bag)
        check_new_output(out_bag, "output bag")  # before reading every image
        if args.topic is not None and topic_name_problem(args.topic) is not None:
            raise ToolError(f"--topic {args.topic!r} is not a valid ROS topic name: "
                            f"{topic_name_problem(args.topic)}")
        dataset = load_coda_dataset(args.dataset, args.annotation, args.stamps, args.rate,
                                    args.start)
        out = dataset_to_bag(dataset, out_bag, args.storage, args.topic, args.frame_id,
                             args.compressed)
        print(f"wrote {len(dataset.frames)} frames to {out} ({args.storage})")
        return EXIT_OK

    return run_tool("vlsam-dataset-to-bag", body, (DatasetError, BagError))


if __name__ == "__main__":
    raise SystemExit(main())
