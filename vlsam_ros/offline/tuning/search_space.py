"""The tuner's search space, as data.

A space is a list of dimensions. Each dimension is one mapping with the dotted config key
(``vlsam_ros.core.config``) and exactly one of three kinds::

    - {key: prompts.threshold, uniform: [0.2, 0.8]}          # float, low <= x < high
    - {key: prompts.refinement_rounds, integers: [0, 3]}     # int, both ends included
    - {key: attention.head_weighting, choice: [meanmax, mean]}

``vlsam-tune --space FILE`` reads such a list from YAML (a top-level list, or a mapping
with a ``dimensions`` list); ``vlsam-tune --print-space`` prints ``DEFAULT_SPACE`` in that
form, ready to edit. To tune a new option, add one entry (here or in the file).

Every key must be a field of the schema that applies at run time (``runtime=True``), so one
loaded pair of models serves every trial; ranges must lie inside the field's range and
choices must be values the field accepts. A violation is a ConfigError naming the entry.

Trial i draws its values from ``numpy.random.default_rng([seed, i])``, one draw per
dimension in order: a trial's parameters depend only on (seed, i, space), never on the
trials before it, which makes a resumed search identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from vlsam_ros.core.config import ConfigError, from_flat, schema
from vlsam_ros.core.config_files import read_yaml_file

KINDS = ("uniform", "integers", "choice")

WHEN_AVAILABLE = "when_available"
"""Flag of a DEFAULT_SPACE entry whose key may not be in the schema yet (an option another
change adds): ``default_space`` drops it while the key is unknown. Files given with
``--space`` have no such flag: an unknown key there is an error."""

DEFAULT_SPACE: tuple[dict[str, Any], ...] = (
    # Threshold on the min-max normalised map (PnP-OVSS searched 0.05-0.5 on raw attention).
    {"key": "prompts.threshold", "uniform": [0.2, 0.8]},
    # Refinement rounds (paper: 2).
    {"key": "prompts.refinement_rounds", "integers": [0, 3]},
    # Head weighting (paper: MeanMax) and where its max is taken.
    {"key": "attention.head_weighting", "choice": ["meanmax", "mean"]},
    {"key": "attention.meanmax_image_keys_only", "choice": [False, True]},
    # Layers used: the flow over all layers, or the last layer alone (the schema's only
    # layer choice).
    {"key": "attention.use_flow", "choice": [True, False]},
    # LENS keypoint options of the prompt step.
    {"key": "prompts.subpixel_peak", "choice": ["off", "quadratic", "gaussian"]},
    {"key": "prompts.positive_points", "integers": [1, 3]},
    {"key": "prompts.positive_separation_cells", "uniform": [1.0, 4.0]},
    # PnP-OVSS options of issue 19's other half (GradCAM weighting, Salience DropOut):
    # searched once the schema has them (WHEN_AVAILABLE), left out before.
    {"key": "attention.gradcam", "choice": [False, True], WHEN_AVAILABLE: True},
    {"key": "prompts.dropout_iterations", "integers": [0, 3], WHEN_AVAILABLE: True},
    {"key": "prompts.dropout_patches", "choice": [4, 8, 16, 32], WHEN_AVAILABLE: True},
)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched config field. kind: one of KINDS; values: (low, high) for 'uniform'
    and 'integers', the allowed values for 'choice'."""

    key: str
    kind: str
    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """One value drawn from ``rng`` (uniform over the range or the choices)."""
        if self.kind == "uniform":
            return float(rng.uniform(self.values[0], self.values[1]))
        if self.kind == "integers":
            return int(rng.integers(self.values[0], self.values[1], endpoint=True))
        return self.values[int(rng.integers(len(self.values)))]

    def as_data(self) -> dict[str, Any]:
        return {"key": self.key, self.kind: list(self.values)}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dimensions)

    def trial_params(self, seed: int, index: int) -> dict[str, Any]:
        """The parameters of trial ``index`` (0-based) of the search seeded ``seed``."""
        rng = np.random.default_rng([int(seed), int(index)])
        return {d.key: d.sample(rng) for d in self.dimensions}

    def as_data(self) -> list[dict[str, Any]]:
        return [d.as_data() for d in self.dimensions]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.as_data(), sort_keys=False, default_flow_style=None)


def parse_space(entries: Any, source: str = "search space") -> SearchSpace:
    """Validated SearchSpace from a list of dimension mappings (see the module docstring).

    Raises ConfigError naming ``source`` and the entry when an entry is malformed, names an
    unknown or model-defining key, or leaves the field's range or choices."""
    if isinstance(entries, Mapping) and "dimensions" in entries:
        entries = entries["dimensions"]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(f"{source}: expected a non-empty list of dimensions such as "
                          "{key: prompts.threshold, uniform: [0.2, 0.8]}")
    fields = {e.name: e for e in schema()}
    dims: list[Dimension] = []
    for n, entry in enumerate(entries, 1):
        where = f"{source}: dimension {n}"
        if not isinstance(entry, Mapping) or "key" not in entry:
            raise ConfigError(f"{where}: expected a mapping with 'key' and one of {KINDS}")
        key = entry["key"]
        where = f"{source}: dimension {n} ({key})"
        kinds = [k for k in KINDS if k in entry]
        extra = sorted(set(entry) - {"key", *KINDS})
        if len(kinds) != 1 or extra:
            raise ConfigError(f"{where}: give exactly one of {KINDS} (and nothing else)")
        if key not in fields:
            raise ConfigError(f"{where}: not a configuration key (see vlsam-tune --list-keys)")
        field = fields[key]
        if not field.runtime:
            raise ConfigError(f"{where}: not a run-time field; the models would have to be "
                              "reloaded for each trial")
        if key in (d.key for d in dims):
            raise ConfigError(f"{where}: the key appears twice")
        kind = kinds[0]
        values = entry[kind]
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list")
        values = tuple(values)
        if kind in ("uniform", "integers"):
            _check_range(where, kind, values, field)
        for value in (values if kind == "choice" else values[:1] + values[-1:]):
            try:
                from_flat({key: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        if kind == "choice":
            values = tuple(getattr_path(from_flat({key: v}), key) for v in values)
        dims.append(Dimension(key, kind, values))
    return SearchSpace(tuple(dims))


def getattr_path(cfg: Any, dotted: str) -> Any:
    """``cfg.prompts.threshold`` for ``"prompts.threshold"``."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_range(where: str, kind: str, values: Sequence[Any], field: Any) -> None:
    if len(values) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high]")
    expected = float if kind == "uniform" else int
    if field.type is not expected:
        raise ConfigError(f"{where}: {kind} needs a field of type {expected.__name__}; use "
                          "'choice' for this field")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"{where}: {kind} bounds must be numbers")
    if kind == "integers" and any(int(v) != v for v in values):
        raise ConfigError(f"{where}: integers bounds must be whole numbers")
    low, high = values
    if not (low < high if kind == "uniform" else low <= high):
        raise ConfigError(f"{where}: low {low} must be below high {high}")


def load_space(path: str | Path) -> SearchSpace:
    """SearchSpace from a YAML file; ConfigError when unreadable or invalid."""
    return parse_space(read_yaml_file(path, "search space file"), str(path))


def default_space() -> SearchSpace:
    """DEFAULT_SPACE, without the WHEN_AVAILABLE entries whose key the schema lacks."""
    known = {e.name for e in schema()}
    entries = [{k: v for k, v in d.items() if k != WHEN_AVAILABLE} for d in DEFAULT_SPACE
               if not d.get(WHEN_AVAILABLE) or d["key"] in known]
    return parse_space(entries, "default search space")
