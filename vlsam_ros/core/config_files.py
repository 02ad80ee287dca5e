"""Configuration files: ROS 2 parameter YAML files, named profiles and ``--set`` flags, in the
one layering order of every tool (params file, profile overlay, overrides). The schema they
fill is ``config.py``; everything here returns dotted parameters or a validated config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from vlsam_ros.core.config import ConfigError, VlsamConfig, from_flat


def _flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten_dict(v, prefix + str(k) + "."))
        else:
            out[prefix + str(k)] = v
    return out


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """The YAML document in ``path``. ConfigError "<what> not found: PATH" when it is
    missing, "PATH: not valid YAML: ..." (one line) when it does not parse."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def parameters_from_yaml(path: str | Path, node_name: str = "vlsam") -> dict[str, Any]:
    """Reads a ROS 2 parameter file and returns its dotted parameters for ``node_name``.

    Accepts the ROS layout (``<node or /**>: {ros__parameters: {...}}``); wildcard
    (``/**``) entries apply first, then the node's own entry.
    """
    path = Path(path)
    data = read_yaml_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of node names to ros__parameters")
    flat: dict[str, Any] = {}
    for key in ("/**", node_name, "/" + node_name):
        entry = data.get(key)
        if entry is None:
            continue
        params = entry.get("ros__parameters") if isinstance(entry, Mapping) else None
        if not isinstance(params, Mapping):
            raise ConfigError(f"{path}: entry {key!r} has no ros__parameters mapping")
        flat.update(_flatten_dict(params))
    if not flat:
        raise ConfigError(f"{path}: no ros__parameters for '/**' or {node_name!r}")
    return flat


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                node_name: str = "vlsam", *, profile: str | Path | None = None) -> VlsamConfig:
    """Schema defaults, then the YAML file (if given), then the profile overlay (if given,
    see ``resolve_profile``), then ``overrides`` (dotted keys); validated."""
    return from_flat(layered_parameters(path, profile, overrides, node_name))


# ----------------------------------------------------------------------------------------
# Profiles: named overlay YAML files (config/profiles/<name>.yaml)
# ----------------------------------------------------------------------------------------

PACKAGE_NAME = "vlsam_ros"
PROFILE_SUFFIX = ".yaml"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def profile_dirs() -> list[Path]:
    """Existing folders searched for named profiles, in order:

    1. ``config/profiles`` of the source tree holding this package (a checkout or an
       editable install);
    2. ``<prefix>/share/vlsam_ros/config/profiles`` of the install prefix holding this
       module (``<prefix>/lib/pythonX.Y/site-packages/vlsam_ros/core/config_files.py``, as colcon
       installs it), then of every prefix in ``AMENT_PREFIX_PATH`` (a sourced ROS 2
       workspace).
    """
    here = Path(__file__).resolve()
    candidates = [here.parents[2] / "config" / "profiles"]
    prefixes = [here.parents[5]] if len(here.parents) > 5 else []
    prefixes += [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [p / "share" / PACKAGE_NAME / "config" / "profiles" for p in prefixes]
    out: list[Path] = []
    for folder in candidates:
        if folder.is_dir() and folder not in out:
            out.append(folder)
    return out


def available_profiles() -> dict[str, Path]:
    """``{name: file}`` of every named profile; the first folder of ``profile_dirs`` wins."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        for file in sorted(folder.glob("*" + PROFILE_SUFFIX)):
            found.setdefault(file.name[:-len(PROFILE_SUFFIX)], file)
    return dict(sorted(found.items()))


def resolve_profile(profile: str | Path) -> Path:
    """The YAML file of a profile given by name (``paper`` -> ``.../profiles/paper.yaml``,
    looked up in ``profile_dirs``) or by path (anything with a ``/`` or a ``.yaml``/``.yml``
    suffix). Raises ConfigError for a missing file or an unknown name; the latter lists the
    available profiles."""
    text = str(profile).strip()
    if not text:
        raise ConfigError("profile: empty name")
    if isinstance(profile, Path) or "/" in text or os.sep in text \
            or text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"profile file not found: {path}")
        return path
    if not _PROFILE_NAME.match(text):
        raise ConfigError(f"profile {text!r}: a name is letters, digits, '_' and '-', or "
                          "give the path of a profile YAML")
    available = available_profiles()
    if text in available:
        return available[text]
    searched = ", ".join(str(d) for d in profile_dirs()) or "no profile folder found"
    raise ConfigError(f"unknown profile {text!r}: available profiles are "
                      f"{', '.join(available) or 'none'} (searched {searched}); or give the "
                      "path of a profile YAML")


def layered_parameters(path: str | Path | None = None, profile: str | Path | None = None,
                       overrides: Mapping[str, Any] | None = None,
                       node_name: str = "vlsam") -> dict[str, Any]:
    """Dotted parameters in the one layering order of every tool, not yet validated:
    the params file ``path`` (if given), then the profile overlay (if given), then
    ``overrides`` (e.g. ``--set`` flags); schema defaults fill the rest in ``from_flat``.
    Profile files use the ROS parameter-file layout (``/**`` or the node's entry)."""
    flat: dict[str, Any] = {}
    if path is not None:
        flat.update(parameters_from_yaml(path, node_name))
    if profile is not None:
        flat.update(parameters_from_yaml(resolve_profile(profile), node_name))
    if overrides:
        flat.update(overrides)
    return flat


def parse_set_flags(items: list[str] | None) -> dict[str, Any]:
    """``["prompts.threshold=0.4", ...]`` -> ``{"prompts.threshold": "0.4"}``.

    Values stay strings here; the schema coerces them to the field's type.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = raw
    return out
