"""ROS 2 parameters generated from the one config schema (``vlsam_ros.core.config``).

Every schema leaf becomes a parameter under its dotted name (``prompts.threshold``) with the
field's doc as description, its range as integer/floating-point constraint, its choices in
the description, and ``read_only`` unless the field is marked ``runtime`` (runtime fields
apply from the next frame; the others need a deactivate/cleanup/configure cycle with a new
parameter file, so they are fixed for the node's life).
"""

from __future__ import annotations

from typing import Any, Mapping

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType)
from rclpy.node import Node
from rclpy.parameter import Parameter

from vlsam_ros.core.config import SchemaEntry, VlsamConfig, from_flat, schema, to_flat

# Parameters every rclpy node has, or that launch passes for rclpy itself; they are not
# part of the vlsam schema and pass through unchanged.
ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service")
ROS_OWN_PREFIXES = ("qos_overrides.",)


def is_ros_own_parameter(name: str) -> bool:
    """True for rclpy's own parameters (use_sim_time, qos_overrides.*), which the schema
    does not describe."""
    return name in ROS_OWN_PARAMETERS or name.startswith(ROS_OWN_PREFIXES)


def parameter_type(entry: SchemaEntry) -> int:
    """ParameterType constant of a schema entry (tuple[str, ...] -> STRING_ARRAY)."""
    if entry.type is bool:
        return ParameterType.PARAMETER_BOOL
    if entry.type is int:
        return ParameterType.PARAMETER_INTEGER
    if entry.type is float:
        return ParameterType.PARAMETER_DOUBLE
    if entry.type is str:
        return ParameterType.PARAMETER_STRING
    return ParameterType.PARAMETER_STRING_ARRAY


def parameter_descriptor(entry: SchemaEntry) -> ParameterDescriptor:
    """Descriptor with description, constraints, range and read-only flag of one entry."""
    desc = ParameterDescriptor(name=entry.name, type=parameter_type(entry),
                               description=entry.doc, read_only=not entry.runtime)
    constraints = []
    if entry.choices is not None:
        constraints.append("one of: " + ", ".join(entry.choices))
    constraints.append("changes apply from the next frame" if entry.runtime
                       else "read-only while the node runs")
    desc.additional_constraints = "; ".join(constraints)
    if entry.range is not None:
        low, high = entry.range
        if entry.type is int:
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=0)]
        elif entry.type is float:
            desc.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                            to_value=float(high), step=0.0)]
    return desc


def parameter_value(entry: SchemaEntry, value: Any) -> Any:
    """A config value as rclpy expects it for the entry's type (tuples become lists)."""
    if entry.type is float:
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def parameter_overrides(cfg: VlsamConfig, extra: Mapping[str, Any] | None = None
                        ) -> list[Parameter]:
    """Every field of ``cfg`` as an rclpy Parameter (for ``Node(parameter_overrides=...)``),
    plus ``extra`` ROS-own parameters such as ``use_sim_time``."""
    entries = {e.name: e for e in schema()}
    out = [Parameter(name, value=parameter_value(entries[name], value))
           for name, value in to_flat(cfg).items()]
    for name, value in (extra or {}).items():
        out.append(Parameter(name, value=value))
    return out


def declare_schema_parameters(node: Node) -> None:
    """Declares every schema field on ``node`` with its default; overrides given to the node
    (parameter file, command line, ``parameter_overrides``) take precedence as usual."""
    for entry in schema():
        node.declare_parameter(entry.name, parameter_value(entry, entry.default),
                               parameter_descriptor(entry))


def config_from_parameters(node: Node) -> VlsamConfig:
    """Reads the declared schema parameters back into a validated ``VlsamConfig``.

    Raises ConfigError (naming the field) when a value is invalid.
    """
    values = {e.name: node.get_parameter(e.name).value for e in schema()}
    return from_flat(values)


def config_with_changes(cfg: VlsamConfig, params: list[Parameter]) -> VlsamConfig:
    """``cfg`` with the schema parameters among ``params`` changed; ROS-own parameters are
    ignored. Raises ConfigError when the result is invalid."""
    names = {e.name for e in schema()}
    changes = {p.name: p.value for p in params if p.name in names}
    if not changes:
        return cfg
    return from_flat(changes, base=cfg)
