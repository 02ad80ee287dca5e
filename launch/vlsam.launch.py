"""Starts the vlsam lifecycle node (configured and activated automatically) and optionally RViz.

    ros2 launch vlsam_ros vlsam.launch.py cameras:="[/cam_front/image_raw]"
    ros2 launch vlsam_ros vlsam.launch.py params_file:=/path/my.yaml use_sim_time:=true rviz:=true
    ros2 launch vlsam_ros vlsam.launch.py profile:=paper     # or edge, cpu, /path/overlay.yaml

Without a ROS installation use ``vlsam-node-runner --params-file config/vlsam.yaml`` instead;
it reads the same parameter file. This file only describes processes: no side effects.
"""

from __future__ import annotations

import yaml
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

PACKAGE = "vlsam_ros"
NODE_NAME = "vlsam"


def _as_bool(text: str) -> bool:
    value = yaml.safe_load(text)
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {text!r}")
    return value


def _camera_list(text: str) -> list[str]:
    """'[/a/image_raw, /b/image_raw]' or '/a/image_raw,/b/image_raw' -> list of topics."""
    text = text.strip()
    value = yaml.safe_load(text) if text.startswith("[") else text.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"cameras:={text!r}: expected a list of image topics")
    return [v.strip() for v in value if v.strip()]


def _profile_file(text: str) -> str | None:
    """profile:= value -> the overlay YAML to pass after params_file (None when empty).

    A name is looked up in config/profiles of the installed package share (and the source
    tree), a path is taken as is; an unknown name fails the launch listing the profiles.
    """
    if not text.strip():
        return None
    from vlsam_ros.core.config_files import resolve_profile

    return str(resolve_profile(text.strip()))


def node_parameters(params_file: str, profile: str, use_sim_time: str, cameras: str) -> list:
    """The node's ``parameters=`` list, in layering order: the params file, then the profile
    overlay as a second parameter file (ROS applies later files over earlier ones), then
    the launch arguments use_sim_time and cameras."""
    parameters: list = [params_file]
    overlay = _profile_file(profile)
    if overlay is not None:
        parameters.append(overlay)
    parameters.append({"use_sim_time": _as_bool(use_sim_time)})
    if cameras.strip():
        parameters.append({"cameras": _camera_list(cameras)})
    return parameters


def _node_and_activation(context: LaunchContext) -> list:
    parameters = node_parameters(
        *(LaunchConfiguration(name).perform(context)
          for name in ("params_file", "profile", "use_sim_time", "cameras")))
    node = LifecycleNode(
        package=PACKAGE, executable="vlsam-node", name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"), parameters=parameters, output="screen",
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")])
    actions: list = [node]
    if _as_bool(LaunchConfiguration("autostart").perform(context)):
        configure = EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_CONFIGURE))
        activate_when_configured = RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(node),
                transition_id=Transition.TRANSITION_ACTIVATE))]))
        actions += [activate_when_configured, configure]
    return actions


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription([
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([share, "config", "vlsam.yaml"]),
            description="ROS 2 parameter file of the node (all fields: config/vlsam.yaml)."),
        DeclareLaunchArgument(
            "profile", default_value="",
            description="Profile overlay applied over params_file: a name from "
                        "config/profiles (paper: the paper's recipe; edge: SmolVLM + MobileSAM; "
                        "cpu: edge on the CPU) or the path of an overlay YAML; empty: none."),
        DeclareLaunchArgument(
            "cameras", default_value="",
            description="Image topics to serve, e.g. \"[/cam_front/image_raw, "
                        "/cam_left/image_raw/compressed]\"; empty keeps the parameter file's "
                        "list. Outputs go to <camera namespace>/vlsam/detections etc."),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"],
            description="Follow /clock (e.g. with `ros2 bag play --clock`)."),
        DeclareLaunchArgument(
            "rviz", default_value="false", choices=["true", "false"],
            description="Also open RViz with config/vlsam.rviz (overlay and markers)."),
        DeclareLaunchArgument(
            "rviz_config", default_value=PathJoinSubstitution([share, "config", "vlsam.rviz"]),
            description="RViz configuration opened with rviz:=true."),
        DeclareLaunchArgument(
            "autostart", default_value="true", choices=["true", "false"],
            description="Configure and activate the lifecycle node right away (false: leave "
                        "it unconfigured for an external lifecycle manager)."),
        DeclareLaunchArgument(
            "namespace", default_value="", description="Namespace of the node."),
        DeclareLaunchArgument(
            "log_level", default_value="info",
            choices=["debug", "info", "warn", "error", "fatal"],
            description="Log level of the node."),
        OpaqueFunction(function=_node_and_activation),
        Node(package="rviz2", executable="rviz2", name="vlsam_rviz", output="screen",
             arguments=["-d", LaunchConfiguration("rviz_config")],
             parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
