"""Every failure of the node is explained: lifecycle transitions log their reason, and a stop
request ends the frame in progress at its next safe point.

* activation with a garbage SAM checkpoint, or with a checkpoint of another SAM type, fails
  with a log line naming the file (and the node stays inactive);
* an invalid camera topic fails at configure, before any model is loaded;
* an unexpected error in a transition is logged with its traceback instead of vanishing;
* SIGINT while a deliberately long frame runs ends the runner's process promptly, and the
  log says which frame was dropped where.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (make setup)")
pytest.importorskip("vlsam_ros.msg", reason="messages not built: bash scripts/build_ros.sh "
                    "&& source scripts/ros_env.sh")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ros_harness import ros_session  # noqa: E402
from vlsam_ros.ros.node import VlsamNode  # noqa: E402
from vlsam_ros.ros.parameters import parameter_overrides  # noqa: E402

pytestmark = pytest.mark.ros

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
TEST_DIR = Path(__file__).resolve().parent


def _node(session, cfg, replace: dict | None = None, **kwargs) -> VlsamNode:
    params = [p for p in parameter_overrides(cfg) if p.name not in (replace or {})]
    params += [Parameter(name, value=value) for name, value in (replace or {}).items()]
    return session.add(VlsamNode("vlsam", context=session.context, parameter_overrides=params,
                                 **kwargs))


def _garbage_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "garbage_sam.pt"
    path.write_bytes(bytes(range(256)) * 40)
    return path


@pytest.mark.parametrize("case", ["garbage", "wrong_type"])
def test_bad_sam_checkpoint_fails_activation_with_a_log_line_naming_the_file(
        case, tiny_config, tiny_model_dir, tmp_path, capfd):
    if case == "garbage":
        checkpoint, sam_type = _garbage_checkpoint(tmp_path), "vit_t"
        expected = "is not a PyTorch checkpoint"
    else:  # MobileSAM weights under sam.type=vit_b
        checkpoint, sam_type = tiny_model_dir / "sam_vit_t.pt", "vit_b"
        expected = "holds vit_t weights (mobile_sam), but sam.type is vit_b: set sam.type: vit_t"
    cfg = tiny_config(cameras=["/bad_sam/image_raw"], sam__checkpoint=str(checkpoint),
                      sam__type=sam_type)
    with ros_session() as session:
        node = _node(session, cfg)
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == FAILURE
        assert node.lifecycle_state == "inactive"
        assert node.pipeline is None and node.worker_thread is None
        problem = node.problem
        assert node.trigger_cleanup() == SUCCESS
    log = capfd.readouterr().err
    lines = [line for line in log.splitlines() if "activate failed" in line]
    assert lines, log[-2000:]
    assert f"'{checkpoint}' (sam.checkpoint)" in lines[0] and expected in lines[0]
    assert "Traceback" not in log  # an expected failure: the reason, not a stack
    assert str(checkpoint) in problem


def test_invalid_camera_topic_fails_configure_before_any_model_loads(tiny_config, capfd):
    loads = []
    cfg = tiny_config(cameras=["/ok/image_raw"])
    with ros_session() as session:
        node = _node(session, cfg, replace={"cameras": ["not a topic!"]},
                     pipeline_factory=lambda c: loads.append(c))
        assert node.trigger_configure() == FAILURE
        assert node.lifecycle_state == "unconfigured"
        problem = node.problem
    log = capfd.readouterr().err
    assert ("configure failed (the node stays unconfigured): cameras: 'not a topic!' is not "
            "a valid ROS topic name: it contains ' ', '!'") in log
    assert "not a topic!" in problem and not loads


def test_unexpected_error_in_a_transition_is_logged_with_its_traceback(tiny_config, capfd):
    def broken_factory(cfg):
        raise KeyError("a bug in a model loader")

    cfg = tiny_config(cameras=["/bug_cam/image_raw"])
    with ros_session() as session:
        node = _node(session, cfg, pipeline_factory=broken_factory)
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == FAILURE
        assert node.lifecycle_state == "inactive"
        assert node.trigger_activate() == FAILURE  # still usable: tries again, fails again
    log = capfd.readouterr().err
    assert "activate failed (models not loaded; the node stays inactive): KeyError: " \
           "'a bug in a model loader'" in log
    assert "Traceback" in log and "broken_factory" in log


# ---------------------------------------------------------------------------------------
# SIGINT during a deliberately long frame
# ---------------------------------------------------------------------------------------

STOP_LIMIT_S = 2.0
"""The issue's bound from SIGINT to the end of the process. A behaviour check, not a
benchmark: each slowed frame would otherwise run for a minute or more."""

SLOW_STAGES = {  # stage: (sleep per step, extra --set flags, where the log says it stopped,
    #                  the slowed step during which SIGINT is sent)
    # vlm: with vlm.share_image_prefix (default) step 1 is the image prefix's prefill and
    # step 2 the questions' prefill (both stop between decoder layers: test_cancellation.py);
    # step 3 is the first one-token step of generation, after which a safe point comes
    # every token: the behaviour under test.
    "vlm": (0.3, ["vlm.max_new_tokens=512"], "during VLM generation after", 3),
    "encoder": (0.3, [], "in the SAM image encoder", 1),
    "decoder": (0.3, [], "between SAM decoder calls", 1),
}
# The frame gets this long to reach its next safe point (node.stop_timeout_s): on a loaded
# 2-core machine one more encoder block can take most of a second, and the default (1 s)
# would then abandon the frame instead of dropping it at the safe point.
STOP_TIMEOUT_S = 1.5


def _read_lines(proc: subprocess.Popen, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line)


@pytest.mark.alone
@pytest.mark.parametrize("stage", sorted(SLOW_STAGES))
def test_sigint_during_a_long_frame_ends_the_process_promptly(stage, tiny_model_dir):
    import threading

    import numpy as np
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from vlsam_ros.testing.make_tiny_models import tiny_model_overrides

    delay, extra, where, signal_step = SLOW_STAGES[stage]
    in_step = f"SLOW STEP {signal_step} "
    camera = f"/slow_{stage}/image_raw"
    flags = []
    for key, value in {**tiny_model_overrides(tiny_model_dir), "cameras": f"[{camera}]"}.items():
        flags += ["--set", f"{key}={value}"]
    flags += ["--set", f"node.stop_timeout_s={STOP_TIMEOUT_S}"]
    for item in extra:
        flags += ["--set", item]
    proc = subprocess.Popen([sys.executable, str(TEST_DIR / "slow_frame_runner.py"), stage,
                             str(delay), *flags], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
    reader.start()
    try:
        with ros_session() as session:
            import rclpy

            sender = session.add(rclpy.create_node("slow_sender", context=session.context))
            pub = sender.create_publisher(Image, camera, QoSProfile(
                depth=1, reliability=ReliabilityPolicy.RELIABLE))
            rng = np.random.default_rng(3)
            deadline = time.monotonic() + 180.0
            while not any(in_step in line for line in lines):
                assert proc.poll() is None, "".join(lines)[-3000:]
                assert time.monotonic() < deadline, "no frame reached the slowed stage"
                msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3)
                msg.data = rng.integers(0, 256, 48 * 64 * 3, dtype=np.uint8).tobytes()
                pub.publish(msg)
                for _ in range(10):
                    if any(in_step in line for line in lines):
                        break
                    time.sleep(0.02)
        # Inside a slowed step: the frame is surely in progress, and it has at least one more
        # safe point ahead (more tokens, encoder blocks, or round 1's decoder call).
        time.sleep(delay / 3)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        elapsed = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
    log = "".join(lines)
    print(f"{stage}: process ended {elapsed:.2f} s after SIGINT")
    assert proc.returncode == 0, log[-3000:]
    dropped = [line for line in log.splitlines() if "dropped the frame in progress" in line]
    assert len(dropped) == 1, log[-3000:]
    assert "SIGINT received" in dropped[0] and where in dropped[0]
    assert "Traceback" not in log, log[-3000:]
    assert elapsed < STOP_LIMIT_S, f"{stage}: {elapsed:.2f} s from SIGINT to exit\n{log[-2000:]}"
