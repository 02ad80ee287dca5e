"""Running a lifecycle node until SIGINT/SIGTERM, then shutting it down cleanly."""

from __future__ import annotations

import signal
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

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if activate:
            for name, transition in (("configure", node.trigger_configure),
                                     ("activate", node.trigger_activate)):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().fatal(f"{name} failed; exiting")
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
