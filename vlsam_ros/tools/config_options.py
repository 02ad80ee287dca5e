"""``--print-config`` and ``--list-keys`` for the tools that take a configuration
(``vlsam-node-runner``, ``vlsam-replay-bag``): one helper, one output format.

* ``--list-keys`` prints every key of the schema with its type, default, range or choices,
  whether it can change at run time, and its documentation; then exits 0.
* ``--print-config`` prints the effective configuration (schema defaults, then the
  parameter file, then ``--set``) as a ROS 2 parameter file, the format ``--params-file`` /
  ``--config`` read; then exits 0. An invalid configuration is the usual one-line error.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from vlsam_ros.core.config import SchemaEntry, VlsamConfig, schema
from vlsam_ros.core.config_files import available_profiles, load_config, parse_set_flags
from vlsam_ros.tools.cli import check_input


def profile_help(after: str) -> str:
    """``--profile`` help naming the profiles that exist (so the list cannot drift)."""
    names = ", ".join(available_profiles()) or "none installed"
    return (f"profile overlay applied after {after} and before --set: a name from "
            f"config/profiles ({names}) or a YAML path")


def add_config_source_options(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, ``--profile NAME|FILE`` and repeatable ``--set KEY=VALUE``: the
    layered configuration of the offline tools (file, then profile, then overrides)."""
    parser.add_argument("--config", help="ROS parameter YAML (e.g. config/vlsam.yaml)")
    parser.add_argument("--profile", metavar="NAME|FILE", help=profile_help("--config"))
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config value, e.g. --set device=cpu (repeatable)")


def config_from_source_options(args: argparse.Namespace) -> VlsamConfig:
    """The configuration ``add_config_source_options`` describes: ``--config`` (checked to be
    a readable file; its ``/**`` entry, then the entry of ``--node-name`` when the tool has
    one, else of ``vlsam``), then ``--profile``, then ``--set``. Errors are ``ToolError`` /
    ``ValueError`` with a one-line reason, as the tools report them."""
    if args.config is not None:
        check_input(Path(args.config), "--config", folder=False)
    return load_config(args.config, parse_set_flags(args.set),
                       getattr(args, "node_name", "vlsam"), profile=args.profile)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration (defaults, file, --set) as a "
                             "parameter file and exit")
    parser.add_argument("--list-keys", action="store_true",
                        help="list every configuration key with its type, default, range and "
                             "documentation, and exit")


def _type_name(entry: SchemaEntry) -> str:
    if typing.get_origin(entry.type) is tuple:
        return "list of strings"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(entry.type,
                                                                         str(entry.type))


def _value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str) and len(value) > 60:
        return repr(value[:57] + "...")
    return repr(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def list_keys_text() -> str:
    """Every schema key, one block each: ``key  (type, default ..., [range], runtime)`` and
    its documentation indented below."""
    blocks = []
    for entry in schema():
        facts = [_type_name(entry), f"default {_value(entry.default)}"]
        if entry.range is not None:
            facts.append(f"range [{entry.range[0]}, {entry.range[1]}]")
        if entry.choices is not None:
            facts.append("one of " + "|".join(entry.choices))
        facts.append("changes apply at run time" if entry.runtime else "fixed while running")
        blocks.append(f"{entry.name}  ({'; '.join(facts)})\n    {entry.doc}")
    return "\n".join(blocks)


def config_text(cfg: VlsamConfig, node_name: str, prog: str) -> str:
    """The effective configuration as a ROS 2 parameter file (``vlsam-write-params-yaml``'s
    format, with each key's documentation), headed by where it comes from."""
    from vlsam_ros.tools.write_params_yaml import params_yaml

    return f"# effective configuration printed by {prog} --print-config\n" + params_yaml(
        cfg, node_name)
