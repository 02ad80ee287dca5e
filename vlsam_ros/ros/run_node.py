"""Runs the vlsam node from a ROS 2 parameter file, without ``ros2 launch``.

    vlsam-node-runner --params-file config/vlsam.yaml [--profile NAME|FILE]
        [--set key=value ...]

Reads the same YAML the launch file passes (``<node>: ros__parameters: ...``), then the
profile overlay (``--profile paper``: ``config/profiles/paper.yaml``; the launch file's
``profile:=``), then the ``--set`` overrides (dotted schema keys, e.g.
``--set prompts.threshold=0.4``), validates everything against the config schema before
starting, then configures and activates the node itself and serves until SIGINT/SIGTERM,
when it deactivates, frees the models and exits 0. Exits 1 when the node cannot be
configured or activated (e.g. missing weights: the log says which file is missing), 2 on an
invalid configuration (including an unknown profile; one line, before ROS starts).
``--print-config`` prints the effective configuration, ``--list-keys`` every key.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from vlsam_ros.core.config import ConfigError, from_flat
from vlsam_ros.core.config_files import layered_parameters, parse_set_flags
from vlsam_ros.tools.cli import EXIT_OK, ToolError, ToolParser, check_input, run_tool
from vlsam_ros.ros.spin import exit_process
from vlsam_ros.tools.config_options import (
    add_config_options,
    config_text,
    list_keys_text,
    profile_help,
)

DEFAULT_NODE_NAME = "vlsam"


def split_ros_parameters(flat: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separates rclpy's own parameters (use_sim_time, qos_overrides.*) from schema keys."""
    from vlsam_ros.ros.parameters import is_ros_own_parameter

    ros = {k: v for k, v in flat.items() if is_ros_own_parameter(k)}
    return {k: v for k, v in flat.items() if k not in ros}, ros


def build_parser() -> ToolParser:
    parser = ToolParser(
        prog="vlsam-node-runner", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--params-file", type=Path, default=None,
                        help="ROS 2 parameter YAML (as for ros2 launch); schema defaults if "
                             "omitted")
    parser.add_argument("--profile", default=None, metavar="NAME|FILE",
                        help=profile_help("--params-file"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override one parameter (repeatable), e.g. "
                        "--set device=cpu --set cameras=[/cam/image_raw]")
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME,
                        help="node name; also selects the YAML entry (default: %(default)s)")
    parser.add_argument("--use-sim-time", action="store_true",
                        help="follow /clock (e.g. with `ros2 bag play --clock`)")
    add_config_options(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_keys:
        print(list_keys_text())
        return EXIT_OK

    def load() -> int:
        if args.params_file is not None:
            check_input(args.params_file, "--params-file", folder=False)
        flat = layered_parameters(args.params_file, args.profile,
                                  parse_set_flags(args.overrides), args.node_name)
        schema_values, ros_values = split_ros_parameters(flat)
        try:
            loaded.append((from_flat(schema_values), ros_values))
        except ConfigError as exc:
            raise ToolError(f"invalid configuration: {exc}") from None
        return EXIT_OK

    loaded: list[tuple[Any, dict[str, Any]]] = []
    code = run_tool("vlsam-node-runner", load)
    if code != EXIT_OK:
        return code
    cfg, ros_values = loaded[0]
    if args.print_config:
        print(config_text(cfg, args.node_name, "vlsam-node-runner"), end="")
        return EXIT_OK
    if args.use_sim_time:
        ros_values["use_sim_time"] = True
    return run_tool("vlsam-node-runner", lambda: _serve(args, cfg, ros_values))


def _serve(args: argparse.Namespace, cfg: Any, ros_values: dict[str, Any]) -> int:
    """Starts rclpy and the node, serves until SIGINT/SIGTERM, then ends the process with
    0, or 1 when configure/activate failed (the log says why)."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from vlsam_ros.ros.node import VlsamNode
    from vlsam_ros.ros.parameters import parameter_overrides
    from vlsam_ros.ros.spin import spin_until_shutdown

    from vlsam_ros.ros.ros_logging import route_python_logging

    rclpy.init(args=None, signal_handler_options=SignalHandlerOptions.NO)
    node = VlsamNode(args.node_name,
                     parameter_overrides=parameter_overrides(cfg, extra=ros_values))
    route_python_logging(node.get_logger())  # core + library logs into the ROS log, no bars
    node.get_logger().info(f"pid {os.getpid()}: starting with "
                           f"{args.params_file or 'schema defaults'}; profile: "
                           f"{args.profile or 'none'}; overrides: "
                           f"{args.overrides or 'none'}")
    return spin_until_shutdown(node, activate=True)


def console_main() -> None:
    """The ``vlsam-node-runner`` command: ``main``, then the process ends at once with its
    code (``spin.exit_process``: no slow interpreter teardown after the node is down)."""
    exit_process(main())


if __name__ == "__main__":
    console_main()
