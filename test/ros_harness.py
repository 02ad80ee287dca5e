"""Shared helpers of the ROS tests (test_ros_*.py): an rclpy session spinning in a thread,
a DetectionArray collector, the publisher subprocess and the slot-event log.

Every session uses its own rclpy Context; ROS traffic stays on loopback in this run's domain
(set by conftest.py before rclpy is imported).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

TEST_DIR = Path(__file__).resolve().parent
REPO_ROOT = TEST_DIR.parent


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class RosSession:
    """An rclpy context plus an executor spinning in a background thread."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="test-executor", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def add(self, node: Any) -> Any:
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for node in list(self.executor.get_nodes()):
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)


@contextlib.contextmanager
def ros_session() -> Iterator[RosSession]:
    session = RosSession()
    try:
        yield session
    finally:
        session.close()


class Collector:
    """Subscribes to topics and keeps every message with its arrival time (monotonic)."""

    def __init__(self, session: RosSession, msg_type: Any, topics: list[str],
                 name: str = "test_collector") -> None:
        self.node = session.add(rclpy.create_node(name, context=session.context))
        self._lock = threading.Lock()
        self.messages: dict[str, list[tuple[float, Any]]] = {t: [] for t in topics}
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for topic in topics:
            self.node.create_subscription(msg_type, topic, self._store(topic), qos)

    def _store(self, topic: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            with self._lock:
                self.messages[topic].append((time.monotonic(), msg))
        return store

    def received(self, topic: str) -> list[Any]:
        with self._lock:
            return [m for _, m in self.messages[topic]]

    def count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.messages.values())

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def start_publisher(log_path: Path, topics: list[str], *, rate: float, duration: float,
                    encodings: str = "rgb8,bgr8", width: int = 64, height: int = 48,
                    extra: list[str] | None = None) -> subprocess.Popen:
    """Starts test/ros_publisher.py as a separate process (same env: domain, libraries)."""
    cmd = [sys.executable, str(TEST_DIR / "ros_publisher.py"), "--rate", str(rate),
           "--duration", str(duration), "--encodings", encodings, "--width", str(width),
           "--height", str(height), "--log", str(log_path)]
    for topic in topics:
        cmd += ["--topic", topic]
    cmd += extra or []
    return subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def published_frames(log_path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """{(topic, stamp_ns): log record} from the publisher's JSON-lines log."""
    out = {}
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        out[(rec["topic"], rec["stamp_ns"])] = rec
    return out


class SlotEventLog:
    """``FrameSlots`` observer. The slots call it under their lock, so events of all cameras
    arrive in one total order; it remembers the newest put stamp per camera and checks at
    every take that the taken frame is that newest one (constant memory per put)."""

    def __init__(self, num_cameras: int | None = None) -> None:
        self._newest: dict[int, int] = {}
        self._takes: list[tuple[int, int]] = []
        self._stale: list[tuple[int, int, int]] = []
        self.puts = 0
        # Round-robin check (with num_cameras): cameras holding a frame put since their
        # last take, and the camera the next scan starts from (FrameSlots starts at 0).
        self._num_cameras = num_cameras
        self._waiting: set[int] = set()
        self._scan_start = 0
        self._out_of_turn: list[tuple[int, int]] = []

    def __call__(self, event: str, camera: int, msg: Any) -> None:
        stamp = stamp_ns(msg.header.stamp)
        if event == "put":
            self._newest[camera] = stamp
            self._waiting.add(camera)
            self.puts += 1
            return
        self._takes.append((camera, stamp))
        if stamp != self._newest.get(camera):
            self._stale.append((camera, stamp, self._newest.get(camera, -1)))
        if self._num_cameras is not None:
            n = self._num_cameras
            due = next((c for c in ((self._scan_start + k) % n for k in range(n))
                        if c in self._waiting), None)
            if camera != due:
                self._out_of_turn.append((camera, -1 if due is None else due))
            self._waiting.discard(camera)
            self._scan_start = (camera + 1) % n

    def takes(self) -> list[tuple[int, int]]:
        """(camera, stamp_ns) of every taken frame, in take order."""
        return list(self._takes)

    def stale_takes(self) -> list[tuple[int, int, int]]:
        """Takes whose frame was not the newest put on its camera at that moment:
        (camera, taken stamp, newest stamp). Empty when hand-over is newest-only."""
        return list(self._stale)

    def out_of_turn_takes(self) -> list[tuple[int, int]]:
        """Takes that broke round-robin order: (taken camera, the camera that was due: the
        first one holding a fresh frame, scanning on from the one served last; -1 when no
        camera held one). Empty when service is fair. Needs ``num_cameras``."""
        if self._num_cameras is None:
            raise ValueError("SlotEventLog(num_cameras=...) checks the round-robin order")
        return list(self._out_of_turn)
