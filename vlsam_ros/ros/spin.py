"""Running a lifecycle node until SIGINT/SIGTERM, then shutting it down cleanly."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

SPIN_PERIOD_S = 0.1  # how often the loop notices a stop request; not a tunable


def spin_until_shutdown(node: LifecycleNode, *, activate: bool,
                        stop: threading.Event | None = None) -> int:
    """Spins ``node`` until SIGINT/SIGTERM (or ``stop`` is set), then runs the lifecycle
    shutdown transition (worker stopped, models freed), destroys the node and shuts rclpy down.

    With ``activate``, configures and activates the node first and returns 1 without spinning
    when either transition fails (the node has logged why). Returns 0 otherwise. Expects
    ``rclpy.init(..., signal_handler_options=SignalHandlerOptions.NO)`` so that the signals
    reach the handlers installed here.
    """
    stop = stop or threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()
        # The frame in progress stops at its next safe point (VlsamNode.request_stop).
        request = getattr(node, "request_stop", None)
        if request is not None:
            request(f"{signal.Signals(signum).name} received")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if activate:
            for name, transition in (("configure", node.trigger_configure),
                                     ("activate", node.trigger_activate)):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    reason = getattr(node, "problem", "") or f"{name} failed (see above)"
                    node.get_logger().fatal(f"exiting: {reason}")
                    code = 1
                    break
        while code == 0 and not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    finally:
        if node._state_machine.current_state[1] != "finalized":
            node.trigger_shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def exit_process(code: int) -> None:
    """Ends the process now with ``code``, after flushing logs and standard streams.

    Called once the node is shut down, destroyed and rclpy is shut down: Python's own
    interpreter teardown of torch/transformers then only costs time (measured 1-3 s with the
    tiny models, more with big ones), which would push a SIGINT/SIGTERM stop past what
    ``ros2 launch`` waits before escalating to SIGKILL. A frame abandoned at shutdown
    (``node.stop_timeout_s``) ends with the process.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to keep
            pass
    os._exit(code)
