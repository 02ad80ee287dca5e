"""Python logging and third-party output in the ROS log of a node process.

The core and the libraries it uses log through Python's ``logging`` (``vlsam_ros.*``,
``transformers``, ``huggingface_hub``, warnings); without this, their lines reach stderr
unprefixed (or not at all below WARNING), and transformers / huggingface_hub draw tqdm
progress bars into the log. ``route_python_logging(node_logger)`` sends those records to
the node's rclpy logger (name of the Python logger appended) and turns the progress bars
off. Process-wide: the node's entry points call it once.
"""

from __future__ import annotations

import logging
from typing import Any

FORWARDED = {"vlsam_ros": logging.INFO, "transformers": logging.WARNING,
             "huggingface_hub": logging.WARNING, "py.warnings": logging.WARNING}
"""Python loggers sent to the ROS log, with the lowest level forwarded."""


class RosLogHandler(logging.Handler):
    """Emits Python log records through an rclpy logger, at the matching severity."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{record.getMessage()} ({record.name})"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            if record.levelno >= logging.CRITICAL:
                self.ros_logger.fatal(text)
            elif record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 -- logging must never take the node down
            self.handleError(record)


def disable_progress_bars() -> None:
    """transformers' and huggingface_hub's tqdm bars (weight loading, downloads) off."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars as hub_disable

        hub_disable()
    except ImportError:
        pass


def route_python_logging(ros_logger: Any) -> RosLogHandler:
    """Sends the ``FORWARDED`` Python loggers to ``ros_logger`` (and nowhere else), captures
    ``warnings`` into logging, and disables third-party progress bars. Returns the handler."""
    handler = RosLogHandler(ros_logger)
    logging.captureWarnings(True)
    for name, level in FORWARDED.items():
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, RosLogHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    disable_progress_bars()
    return handler
