"""The first ten minutes: a periodic rate line in the node's log, no WARN for a camera that
simply has no frames, the core's and libraries' log lines in the ROS log without progress
bars, each replay skip logged once. (--print-config / --list-keys and help on every option:
test_tool_errors.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (make setup)")
pytest.importorskip("vlsam_ros.msg", reason="messages not built")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402

from test_replay import write_image_bag  # noqa: E402
from vlsam_ros.ros.diagnostics import (CameraCounts, CameraReport, CameraStats,  # noqa: E402
                                   camera_status, rate_line)

pytestmark = pytest.mark.ros
SUCCESS = TransitionCallbackReturn.SUCCESS


def _status(received: int, received_in_window: int, published: int, state: str = "active"):
    stats = CameraStats()
    for _ in range(published):
        stats.record_published(100.0, 120.0)
    report = CameraReport("/cam/image_raw", stats.snapshot(1.0), received, 0,
                          received_in_window=received_in_window)
    return camera_status(report, node_name="/vlsam", state=state, device="cpu", model="m",
                         sam="vit_t", problem="")


@pytest.mark.parametrize("received, in_window, published, level, message", [
    (0, 0, 0, DiagnosticStatus.OK, "no frames received yet"),
    (5, 0, 0, DiagnosticStatus.OK, "no new frame in the last period (input idle)"),
    (5, 2, 0, DiagnosticStatus.WARN, "frames arrived but none was processed"),
    (5, 2, 2, DiagnosticStatus.OK, "2.00 Hz"),
])
def test_an_idle_camera_is_not_a_warning(received, in_window, published, level, message):
    status = _status(received, in_window, published)
    assert status.level == level and status.message.startswith(message)


def test_rate_line_reports_rates_and_drops_per_camera():
    line = rate_line(10.0, [
        ("/a/image_raw", CameraCounts(10, 2, 5, 0, 0), CameraCounts(110, 7, 95, 1, 0)),
        ("/b/image_raw", CameraCounts(), CameraCounts()),
    ])
    assert line == ("last 10.0 s: /a/image_raw: in 10.00 Hz, processed 0.50 Hz, dropped "
                    "stale 90, malformed 1, failed 0; /b/image_raw: no frames yet")


class _EmptyPipeline:
    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def run(self, image, cancel=None):
        from vlsam_ros.core.results import FrameResult

        return FrameResult((), "nothing", 1.0, 1.0, 2.0)

    def update_config(self, cfg) -> None:
        self.cfg = cfg


def test_node_logs_a_periodic_rate_line(tiny_config, capfd):
    import time

    import rclpy
    from sensor_msgs.msg import Image

    from ros_harness import ros_session
    from test_node_failures import _node

    cameras = ["/rate_a/image_raw", "/rate_b/image_raw"]
    with ros_session() as session:
        node = _node(session, tiny_config(cameras=cameras, node__rate_log_period_s=0.5),
                     pipeline_factory=_EmptyPipeline)
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        sender = session.add(rclpy.create_node("rate_sender", context=session.context))
        pub = sender.create_publisher(Image, cameras[0], 10)
        deadline = time.monotonic() + 30
        while node.camera_counts()[cameras[0]]["published"] < 3:
            assert time.monotonic() < deadline
            msg = Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(48))
            pub.publish(msg)
            time.sleep(0.1)
        time.sleep(1.2)  # at least one more rate line
        quiet = _node(session, tiny_config(cameras=["/rate_c/image_raw"],
                                           node__rate_log_period_s=0.0),
                      pipeline_factory=_EmptyPipeline)
        assert quiet.trigger_configure() == SUCCESS
        assert quiet._rate_timer is None  # 0 turns the line off
    lines = [line for line in capfd.readouterr().err.splitlines() if "] [vlsam]: last " in line]
    assert lines, "no rate line"
    assert any("/rate_a/image_raw: in " in line and "processed" in line
               and "/rate_b/image_raw: no frames yet" in line for line in lines), lines


def _runner(args: list[str], tiny, env_extra: dict | None = None) -> str:
    flags = []
    for key, value in {"device": "cpu", "vlm.model": str(tiny / "llava"),
                       "vlm.dtype": "float32", "sam.checkpoint": str(tiny / "sam_vit_t.pt"),
                       }.items():
        flags += ["--set", f"{key}={value}"]
    result = subprocess.run([sys.executable, "-m", "vlsam_ros.ros.run_node", *flags, *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})},
                            capture_output=True, text=True, timeout=180)
    return result.stdout + result.stderr


def test_runner_log_has_no_progress_bars_and_carries_core_warnings(tiny_model_dir, tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 100)
    log = _runner(["--set", f"sam.checkpoint={tmp_path / 'garbage.pt'}"], tiny_model_dir)
    assert "activate failed" in log  # the VLM weights were loaded before the SAM failure
    assert "Loading weights" not in log and "it/s" not in log and "%|" not in log
    # A core warning (the download notice) reaches the ROS log, prefixed like every line.
    log = _runner(["--set", "vlm.model=someorg/not-cached", "--set",
                   "vlm.local_files_only=false"], tiny_model_dir,
                  {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "c")})
    notices = [line for line in log.splitlines() if "is DOWNLOADED now" in line]
    assert len(notices) == 1 and notices[0].startswith("[WARN]") and "[vlsam]:" in notices[0]
    assert notices[0].endswith("(vlsam_ros.core.vlm.registry)")


def test_replay_logs_each_skip_once(tmp_path):
    write_image_bag(tmp_path / "in", 4, bad_encoding_at=(1, 3))
    script = textwrap.dedent(f"""
        import sys
        import vlsam_ros.core.pipeline as p
        from test_replay import BrightestBlobPipeline
        p.build_pipeline = lambda cfg: BrightestBlobPipeline()
        from vlsam_ros.offline.replay.replay_bag import main
        sys.exit(main([{str(tmp_path / 'in')!r}, {str(tmp_path / 'out')!r},
                       "--set", "device=cpu"]))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    for frame in (2, 4):
        assert result.stderr.count(f"skipping /cam_front/image_raw frame {frame} ") == 1, \
            result.stderr
