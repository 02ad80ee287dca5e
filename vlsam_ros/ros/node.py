"""The vlsam ROS 2 node: a thin lifecycle shell around ``vlsam_ros.core.pipeline``.

Lifecycle:

* configure: reads the parameters (declared from the config schema) into a validated
  ``VlsamConfig``, resolves the camera topics, creates the publishers and the
  ``/diagnostics`` timer. An invalid configuration fails the transition with its reason.
* activate: loads the models (``build_pipeline``), starts the worker thread and subscribes to
  the cameras. Missing weights fail the transition: the node stays inactive, logs what is
  missing and reports it on ``/diagnostics``.
* deactivate: unsubscribes, stops the worker and frees the models (``torch.cuda.empty_cache``
  when CUDA is in use).
* cleanup / shutdown: also removes publishers and timers.

Any exception in a transition is logged with its reason (file, key, what to do; a traceback
only for unexpected errors), undone, and kept in ``problem`` / on ``/diagnostics``; rclpy
alone would turn it into a silent ERROR. A stop (deactivate, shutdown, SIGINT/SIGTERM
through ``request_stop``) cancels the frame in progress, which ends at its next safe point
(``vlsam_ros.core.cancellation``); the log says which frame was dropped where.

Data flow: each camera callback only stores its message in that camera's latest-frame slot
(``vlsam_ros.ros.latest_frame_slot``). One worker thread takes the newest frame of the next camera
with a fresh frame (round-robin), decodes it, runs the pipeline and publishes. Topics: see
``vlsam_ros.ros.camera_topics``. With ``tracking.mode`` flow or memory the worker follows every
known object on each frame instead and discovery (the pipeline) runs beside it in its own
thread on the newest frames (``vlsam_ros.ros.tracking_worker``).

Failures never stop the node: a malformed frame is logged (throttled) and skipped, a CUDA
out-of-memory error frees cached memory and skips the frame, and any other error of a frame
is logged with its traceback, counted on ``/diagnostics`` and the frame skipped.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from sensor_msgs.msg import CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from vlsam_ros.ros.camera_topics import CameraTopics, all_camera_topics
from vlsam_ros.core.cancellation import CancellationToken, FrameCancelled
from vlsam_ros.core.config import ConfigError, VlsamConfig
from vlsam_ros.core.errors import InvalidImageError, VlsamError
from vlsam_ros.core.results import FrameResult
from vlsam_ros.ros.detections import (frame_result_to_detection2d_array, frame_result_to_msg,
                                      latency_ms, vision_msgs_enabled)
from vlsam_ros.ros.diagnostics import (CameraCounts, CameraReport, CameraStats, CountWindow,
                                   camera_status, diagnostic_array, rate_line)
from vlsam_ros.ros.images import decode_image_msg
from vlsam_ros.ros.latest_frame_slot import FrameSlots, SlotObserver
from vlsam_ros.msg import DetectionArray
from vlsam_ros.ros.parameters import (config_from_parameters, config_with_changes,
                                  declare_schema_parameters)
from vlsam_ros.ros.process_memory import limit_malloc_arenas, trim_free_memory
from vlsam_ros.ros.visualization import markers_msg, overlay_msg

PipelineFactory = Callable[[VlsamConfig], Any]
"""``factory(cfg) -> pipeline`` with ``run(image_rgb_uint8, cancel=token) -> FrameResult``
and ``update_config(cfg)``; ``vlsam_ros.core.pipeline.build_pipeline`` by default. ``run``
raises ``FrameCancelled`` at its next safe point once ``token`` is cancelled."""

EXPECTED_FAILURES = (VlsamError, ConfigError, OSError, ImportError)
"""Errors whose message is the whole story (missing or unusable weights, bad values, an
absent package); anything else is a bug and is logged with its traceback too."""

OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                        reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
"""Outputs are reliable: best-effort and reliable subscribers both receive them."""

WORKER_POLL_S = 0.5  # how often an idle worker re-checks for stop; not a tunable


def default_pipeline_factory(cfg: VlsamConfig) -> Any:
    """Loads the models named in ``cfg`` through the production loaders."""
    from vlsam_ros.core.pipeline import build_pipeline

    return build_pipeline(cfg)


def input_qos(cfg: VlsamConfig) -> QoSProfile:
    """Camera QoS: sensor data (best effort, keep last 1) unless ``node.qos_*`` override it."""
    reliability = (ReliabilityPolicy.BEST_EFFORT if cfg.node.qos_reliability == "best_effort"
                   else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=cfg.node.qos_depth,
                      reliability=reliability, durability=DurabilityPolicy.VOLATILE)


def failure_reason(exc: BaseException) -> str:
    """One line for the log: the message of an expected error, else type and message."""
    text = " ".join(str(exc).split()) or "(no message)"
    return text if isinstance(exc, EXPECTED_FAILURES) else f"{type(exc).__name__}: {text}"


_AFTER_FAILURE = {"configure": " (the node stays unconfigured)",
                  "activate": " (models not loaded; the node stays inactive)"}


def _logged_transition(name: str, failure: TransitionCallbackReturn):
    """Wraps a lifecycle callback so that any exception is logged with its reason (rclpy
    would turn it into a silent ERROR), undone (``_undo_<name>``) and returned as
    ``failure``; the reason stays in ``problem`` and on /diagnostics."""
    def wrap(method: Callable[[Any, LifecycleState], TransitionCallbackReturn]):
        @functools.wraps(method)
        def run(self: "VlsamNode", state: LifecycleState) -> TransitionCallbackReturn:
            try:
                return method(self, state)
            except Exception as exc:  # noqa: BLE001 -- logged with its reason, never hidden
                reason = failure_reason(exc)
                self._problem = f"{name} failed{_AFTER_FAILURE.get(name, '')}: {reason}"
                detail = ("" if isinstance(exc, EXPECTED_FAILURES)
                          else "\n" + traceback.format_exc())
                self.get_logger().error(f"{self._problem}{detail}")
                undo = getattr(self, f"_undo_{name}", None)
                if undo is not None:
                    try:
                        undo()
                    except Exception as undo_exc:  # noqa: BLE001
                        self.get_logger().error(f"cleaning up after the failed {name}: "
                                                f"{failure_reason(undo_exc)}")
                return failure
        return run
    return wrap


def free_torch_memory(device: str) -> None:
    """Collects garbage and returns cached CUDA blocks to the driver (no-op on CPU)."""
    gc.collect()
    if device.startswith("cuda"):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()


class _Camera:
    """Publishers and statistics of one camera (created on configure)."""

    def __init__(self, topics: CameraTopics) -> None:
        self.topics = topics
        self.stats = CameraStats()
        self.detections_pub: Any = None
        self.overlay_pub: Any = None
        self.markers_pub: Any = None
        self.detections_2d_pub: Any = None
        self.subscription: Any = None


class VlsamNode(LifecycleNode):
    """Lifecycle node serving several cameras with one VL-SAM pipeline.

    ``pipeline_factory`` and ``slot_observer`` exist for tests (a slowed-down pipeline, proof
    of newest-frame hand-over); production code uses the defaults.
    """

    def __init__(self, node_name: str = "vlsam", *,
                 pipeline_factory: PipelineFactory | None = None,
                 slot_observer: SlotObserver | None = None, **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        self._pipeline_factory = pipeline_factory or default_pipeline_factory
        self._slot_observer = slot_observer
        declare_schema_parameters(self)
        self._lock = threading.Lock()  # guards _config / _config_changed
        self._config: VlsamConfig | None = None
        self._config_changed = False
        self._cameras: list[_Camera] = []
        self._diagnostics_pub: Any = None
        self._diagnostics_timer: Any = None
        self._rate_timer: Any = None
        self._rate_window = CountWindow()
        self._diagnostics_window = CountWindow()
        self._pipeline: Any = None
        self._slots: FrameSlots | None = None
        self._worker: threading.Thread | None = None
        self._tracking: Any = None  # TrackingWorker when tracking.mode is not off
        self._problem = ""  # shown on /diagnostics while set (e.g. models failed to load)
        self._stop_token = CancellationToken()  # replaced on each activation
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ lifecycle

    @property
    def lifecycle_state(self) -> str:
        """'unconfigured', 'inactive', 'active' or 'finalized' (or a transition label)."""
        return self._state_machine.current_state[1]

    @property
    def config(self) -> VlsamConfig | None:
        with self._lock:
            return self._config

    @property
    def worker_thread(self) -> threading.Thread | None:
        return self._worker

    @property
    def pipeline(self) -> Any:
        return self._pipeline

    @property
    def problem(self) -> str:
        """Why the node cannot serve (e.g. models failed to load); empty when fine."""
        return self._problem

    def camera_counts(self) -> dict[str, dict[str, int]]:
        """Cumulative frame counts per camera input topic: received, taken, dropped (stale,
        replaced before the worker took them; since the last activation) and published,
        malformed, failed (since configure)."""
        slots = self._slots
        counts = slots.counts() if slots is not None else None
        out = {}
        for index, cam in enumerate(self._cameras):
            totals = cam.stats.totals()
            slot = counts[index] if counts else None
            out[cam.topics.input] = {
                "received": slot.received if slot else 0,
                "taken": slot.taken if slot else 0,
                "dropped": slot.dropped if slot else 0,
                **totals,
            }
        return out

    @_logged_transition("configure", TransitionCallbackReturn.FAILURE)
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._problem = ""
        cfg = config_from_parameters(self)
        topics = all_camera_topics(cfg.cameras, self.get_name(), self.get_namespace())
        self._check_expanded_topics(topics)
        detection_2d = self._detection_2d_type(cfg)
        with self._lock:
            self._config, self._config_changed = cfg, False
        limit_malloc_arenas(cfg.node.malloc_arena_max)
        self._cameras = [_Camera(t) for t in topics]
        for cam in self._cameras:
            cam.detections_pub = self.create_publisher(DetectionArray, cam.topics.detections,
                                                       OUTPUT_QOS)
            cam.overlay_pub = self.create_publisher(Image, cam.topics.overlay, OUTPUT_QOS)
            cam.markers_pub = self.create_publisher(MarkerArray, cam.topics.markers, OUTPUT_QOS)
            if detection_2d is not None:
                cam.detections_2d_pub = self.create_publisher(
                    detection_2d, cam.topics.detections_2d, OUTPUT_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_window.restart()
        self._diagnostics_timer = self.create_timer(cfg.node.diagnostics_period_s,
                                                    self._publish_diagnostics)
        if cfg.node.rate_log_period_s > 0:
            self._rate_window.restart()
            self._rate_timer = self.create_timer(cfg.node.rate_log_period_s, self._log_rates)
        self._problem = ""
        self.get_logger().info(
            "configured: " + "; ".join(f"{c.topics.input} -> {c.topics.detections}"
                                       for c in self._cameras))
        return super().on_configure(state)

    @_logged_transition("activate", TransitionCallbackReturn.FAILURE)
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self.config
        if cfg is None:
            raise ConfigError("the node is not configured")
        started = time.perf_counter()
        self._pipeline = self._pipeline_factory(cfg)
        if cfg.tracking.mode != "off":   # failures are undone by _undo_activate
            self._tracking = self._start_tracking(cfg)
        self._problem = ""
        self._stop_token = CancellationToken()
        self.get_logger().info(
            f"models loaded in {time.perf_counter() - started:.1f} s: vlm {cfg.vlm.model} "
            f"({cfg.vlm.family}), sam {cfg.sam.type} {cfg.sam.checkpoint}, on {cfg.device}")
        self._slots = FrameSlots(len(self._cameras), observer=self._slot_observer)
        # The next rate line covers this activation only.
        self._rate_window.restart(self._slots, self.camera_counts_now())
        self._worker = threading.Thread(target=self._worker_loop,
                                        args=(self._slots, self._stop_token),
                                        name="vlsam-worker", daemon=True)
        self._worker.start()
        qos = input_qos(cfg)
        for index, cam in enumerate(self._cameras):
            msg_type = CompressedImage if cam.topics.compressed else Image
            cam.subscription = self.create_subscription(
                msg_type, cam.topics.input, self._frame_callback(index), qos)
        return super().on_activate(state)

    def _start_tracking(self, cfg: VlsamConfig) -> Any:
        """The two-rate worker (``vlsam_ros.ros.tracking_worker``): every camera followed at
        camera rate, discovery beside it."""
        from vlsam_ros.ros.tracking_worker import TrackingWorker

        def on_discovery_error(camera: str, exc: BaseException, trace: str) -> None:
            self.get_logger().error(f"{camera}: discovery failed, frame not discovered: "
                                    f"{exc}\n{trace}",
                                    throttle_duration_sec=self._throttle_s())

        worker = TrackingWorker(cfg, self._pipeline, [c.topics.input for c in self._cameras],
                                on_discovery_error)
        self.get_logger().info(f"tracking: {cfg.tracking.mode}, discovery whenever the VLM "
                               "is free" if cfg.tracking.discovery_period_s == 0 else
                               f"tracking: {cfg.tracking.mode}, discovery at most every "
                               f"{cfg.tracking.discovery_period_s} s per camera")
        return worker

    @property
    def tracking(self) -> Any:
        """The TrackingWorker while active with tracking, else None."""
        return self._tracking

    @_logged_transition("deactivate", TransitionCallbackReturn.ERROR)
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving("deactivate")
        return super().on_deactivate(state)

    @_logged_transition("cleanup", TransitionCallbackReturn.ERROR)
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving("cleanup")
        self._remove_outputs()
        return super().on_cleanup(state)

    @_logged_transition("shutdown", TransitionCallbackReturn.ERROR)
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving("shutdown", abandon=True)
        self._remove_outputs()
        return super().on_shutdown(state)

    @_logged_transition("error processing", TransitionCallbackReturn.FAILURE)
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in state {state.label}"
                                f"{': ' + self._problem if self._problem else ''}; cleaning up")
        self._stop_serving("error", abandon=True)
        self._remove_outputs()
        return TransitionCallbackReturn.SUCCESS

    def _undo_configure(self) -> None:
        self._remove_outputs()

    def _undo_activate(self) -> None:
        cfg = self.config
        self._stop_serving("failed activation")
        self._pipeline = None
        free_torch_memory(cfg.device if cfg is not None else "cpu")

    def _check_expanded_topics(self, topics: list[CameraTopics]) -> None:
        """Every resolved input and output name must be a valid ROS topic (rclpy's own check,
        after the node name and namespace are applied); ConfigError naming it otherwise."""
        from rclpy.validate_full_topic_name import validate_full_topic_name

        for cam in topics:
            for name in (cam.input, cam.detections):
                try:
                    validate_full_topic_name(name)
                except Exception as exc:  # noqa: BLE001 -- rclpy's InvalidTopicNameException
                    first = (str(exc).splitlines() or [""])[0]
                    raise ConfigError(f"cameras: {name!r} is not a valid ROS topic name: "
                                      f"{first}") from None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Asks the frame in progress to stop at its next safe point (signal-safe)."""
        self._stop_token.cancel(reason)

    def _stop_serving(self, reason: str, abandon: bool = False) -> None:
        """Unsubscribes, cancels the frame in progress (it stops at its next safe point),
        joins the worker and frees the models. Idempotent.

        The worker gets ``node.stop_timeout_s`` to reach a safe point. After that, with
        ``abandon`` (shutdown) it is left to finish on its own (a daemon thread whose result
        is discarded), so the process exits in time; otherwise (deactivate) the node waits on
        for it, logging that it does, because the models are freed next."""
        for cam in self._cameras:
            if cam.subscription is not None:
                self.destroy_subscription(cam.subscription)
                cam.subscription = None
        self._stop_token.cancel(reason)
        if self._slots is not None:
            self._slots.close()
        if self._worker is not None:
            cfg = self.config
            timeout = cfg.node.stop_timeout_s if cfg is not None else 1.0
            self._worker.join(timeout)
            if self._worker.is_alive():
                if abandon:
                    self.get_logger().warning(
                        f"{reason}: the frame in progress reached no safe point within "
                        f"{timeout:.1f} s (node.stop_timeout_s); abandoning it, its result "
                        "is discarded")
                else:
                    self.get_logger().warning(
                        f"{reason}: the frame in progress reached no safe point within "
                        f"{timeout:.1f} s (node.stop_timeout_s); waiting for it to end "
                        "before freeing the models")
                    self._worker.join()
        self._worker = None
        self._slots = None
        if self._tracking is not None:
            self._tracking.stop()
            self._tracking = None
        if self._pipeline is not None:
            self._pipeline = None
            cfg = self.config
            free_torch_memory(cfg.device if cfg is not None else "cpu")

    def _remove_outputs(self) -> None:
        for cam in self._cameras:
            for pub in (cam.detections_pub, cam.overlay_pub, cam.markers_pub,
                        cam.detections_2d_pub):
                if pub is not None:
                    self.destroy_publisher(pub)
        self._cameras = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        if self._rate_timer is not None:
            self.destroy_timer(self._rate_timer)
            self._rate_timer = None
        if self._diagnostics_pub is not None:
            self.destroy_publisher(self._diagnostics_pub)
            self._diagnostics_pub = None
        with self._lock:
            self._config = None

    @staticmethod
    def _detection_2d_type(cfg: VlsamConfig) -> Any:
        """vision_msgs/Detection2DArray when ``node.vision_msgs`` enables it, else None;
        ImportError when it is 'on' but vision_msgs is missing."""
        if not vision_msgs_enabled(cfg.node.vision_msgs):
            return None
        from vision_msgs.msg import Detection2DArray

        return Detection2DArray

    # ------------------------------------------------------------------ parameters

    def _on_set_parameters(self, params: list[rclpy.parameter.Parameter]) -> SetParametersResult:
        """Validates changes against the schema; accepted ones apply from the next frame."""
        with self._lock:
            base = self._config
        try:
            new = config_with_changes(base if base is not None else config_from_parameters(self),
                                      params)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if base is not None and new is not base:
            with self._lock:
                self._config, self._config_changed = new, True
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ data path

    def _frame_callback(self, camera_index: int) -> Callable[[Any], None]:
        def store_newest(msg: Any) -> None:
            slots = self._slots
            if slots is not None:
                slots.put(camera_index, msg)
        return store_newest

    def _worker_loop(self, slots: FrameSlots, token: CancellationToken) -> None:
        while True:
            taken = slots.take(timeout_s=WORKER_POLL_S)
            if token.cancelled or (taken is None and slots.closed):  # stopping
                return
            if taken is None:
                continue
            camera_index, msg = taken
            cam = self._cameras[camera_index]
            started = time.monotonic()
            try:
                self._serve_frame(cam, msg, token)
            except FrameCancelled as exc:
                self._log_dropped_frame(cam, msg, exc, token, started)
                return
            except Exception as exc:  # noqa: BLE001 -- logged with traceback, counted, not hidden
                # The worker must survive a bug in one frame's processing (the node would
                # otherwise go silent while looking alive); the failure is logged in full and
                # shown on /diagnostics as frames_failed.
                cam.stats.record_failed()
                self.get_logger().error(
                    f"{cam.topics.input}: frame failed: {exc}\n{traceback.format_exc()}",
                    throttle_duration_sec=self._throttle_s())
            cfg = self.config
            if cfg is not None and cfg.node.malloc_trim_each_frame:
                trim_free_memory()

    def _log_dropped_frame(self, cam: _Camera, msg: Any, exc: FrameCancelled,
                           token: CancellationToken, started: float) -> None:
        now = time.monotonic()
        stamp = msg.header.stamp
        reaction = (f", {now - token.cancelled_at:.2f} s after the stop request"
                    if token.cancelled_at is not None else "")
        self.get_logger().info(
            f"{cam.topics.input}: {exc.reason}: dropped the frame in progress (stamp "
            f"{stamp.sec}.{stamp.nanosec:09d}) {exc.where}, {now - started:.2f} s into it"
            f"{reaction}; nothing published for it")

    def _throttle_s(self) -> float:
        cfg = self.config
        return cfg.node.log_throttle_s if cfg is not None else 5.0

    def _current_config(self) -> VlsamConfig:
        """The config for the next frame; hands accepted parameter changes to the pipeline."""
        with self._lock:
            cfg, changed, self._config_changed = self._config, self._config_changed, False
        if changed:
            try:
                self._pipeline.update_config(cfg)
            except ConfigError as exc:  # only runtime fields are writable; defensive
                self.get_logger().error(f"parameter change not applied: {exc}")
                return self._pipeline.cfg
            if self._tracking is not None:
                self._tracking.update_config(cfg)
            self.get_logger().info("parameter change applied from this frame on")
        return cfg

    def _serve_frame(self, cam: _Camera, msg: Any, token: CancellationToken) -> None:
        """Decode, run, publish one frame; malformed frames and CUDA OOM are skipped; a
        cancelled ``token`` ends the frame at its next safe point (FrameCancelled)."""
        cfg = self._current_config()
        try:
            image = decode_image_msg(msg, cfg.node)
        except InvalidImageError as exc:
            cam.stats.record_malformed()
            self.get_logger().warning(f"{cam.topics.input}: skipped malformed frame: {exc}",
                                      throttle_duration_sec=cfg.node.log_throttle_s)
            return
        try:
            if self._tracking is None:
                result = self._pipeline.run(image, cancel=token)
            else:
                stamp = msg.header.stamp
                result = self._tracking.serve(cam.topics.input, image,
                                              int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec))
        except InvalidImageError as exc:
            cam.stats.record_malformed()
            self.get_logger().warning(f"{cam.topics.input}: skipped frame: {exc}",
                                      throttle_duration_sec=cfg.node.log_throttle_s)
            return
        except torch.cuda.OutOfMemoryError as exc:
            free_torch_memory(cfg.device)
            cam.stats.record_failed()
            self.get_logger().error(f"{cam.topics.input}: CUDA out of memory, frame skipped "
                                    f"(freed cached memory): {exc}",
                                    throttle_duration_sec=cfg.node.log_throttle_s)
            return
        self._publish(cam, msg.header, image, result, cfg)

    def _publish(self, cam: _Camera, header: Any, image: np.ndarray, result: FrameResult,
                 cfg: VlsamConfig) -> None:
        """DetectionArray always (also when empty); overlay/markers/vision_msgs only when
        enabled and subscribed. Every output carries the source header unchanged."""
        latency = latency_ms(header.stamp, self.get_clock().now().nanoseconds)
        cam.detections_pub.publish(frame_result_to_msg(result, header, latency))
        cam.stats.record_published(result.total_ms, latency)
        if (cam.detections_2d_pub is not None
                and cam.detections_2d_pub.get_subscription_count() > 0):
            cam.detections_2d_pub.publish(frame_result_to_detection2d_array(result, header))
        if cfg.node.publish_overlay and cam.overlay_pub.get_subscription_count() > 0:
            cam.overlay_pub.publish(overlay_msg(image, result, header, cfg.node))
        if cfg.node.publish_markers and cam.markers_pub.get_subscription_count() > 0:
            cam.markers_pub.publish(markers_msg(result, header, image.shape[:2], cfg.node))

    # ------------------------------------------------------------------ diagnostics

    def _publish_diagnostics(self) -> None:
        cfg = self.config
        if cfg is None or self._diagnostics_pub is None:
            return
        counts = self.camera_counts_now()
        period, previous = self._diagnostics_window.advance(self._slots, counts)
        statuses = []
        for cam, now, before in zip(self._cameras, counts, previous):
            report = CameraReport(cam.topics.input, cam.stats.snapshot(period), now.received,
                                  now.dropped, received_in_window=now.received - before.received)
            statuses.append(camera_status(
                report, node_name=self.get_fully_qualified_name(), state=self.lifecycle_state,
                device=cfg.device, model=cfg.vlm.model, sam=f"{cfg.sam.type} {cfg.sam.checkpoint}",
                problem=self._problem))
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def camera_counts_now(self) -> list[CameraCounts]:
        """Cumulative counts of every camera (received/dropped since the last activation)."""
        slots = self._slots
        counts = slots.counts() if slots is not None else None
        out = []
        for index, cam in enumerate(self._cameras):
            totals = cam.stats.totals()
            out.append(CameraCounts(counts[index].received if counts else 0,
                                    totals["published"], counts[index].dropped if counts else 0,
                                    totals["malformed"], totals["failed"]))
        return out

    def _log_rates(self) -> None:
        """The periodic rate line (``node.rate_log_period_s``), while serving."""
        if self._slots is None:
            return
        now = self.camera_counts_now()
        period, previous = self._rate_window.advance(self._slots, now)
        self.get_logger().info(rate_line(period, [(cam.topics.input, before, after) for cam,
                                                  before, after in zip(self._cameras, previous,
                                                                       now)]))


def main(args: Sequence[str] | None = None) -> int:
    """Entry point for ``ros2 run vlsam_ros vlsam-node`` / the launch file: starts the node
    unconfigured; a lifecycle manager (the launch file) configures and activates it."""
    from vlsam_ros.ros.spin import spin_until_shutdown

    from vlsam_ros.ros.ros_logging import route_python_logging

    rclpy.init(args=args, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = VlsamNode()
    route_python_logging(node.get_logger())  # core + library logs into the ROS log, no bars
    return spin_until_shutdown(node, activate=False)


def console_main() -> None:
    """The ``vlsam-node`` command (launch file, ``ros2 run``): ``main``, then the process
    ends at once with its code (``spin.exit_process``)."""
    from vlsam_ros.ros.spin import exit_process

    exit_process(main())
