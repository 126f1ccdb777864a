"""Reading params.yaml and deriving the few values computed from it."""
from __future__ import annotations

from vapm.errors import VapmError

import copy
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"


class ConfigError(VapmError, ValueError):
    """A parameter is missing or has a value the pipeline cannot use."""


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the stages from the repository root")
    with path.open() as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], dotted: str) -> Any:
    """Return params['a']['b'] for 'a.b', with an error that names the missing key."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"params.yaml has no '{dotted}' (missing '{key}')")
        node = node[key]
    return node


def parse_rate(value: Any) -> float:
    """Sample rates may be written as numbers or exact fractions such as '50000/3'."""
    try:
        rate = float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError) as err:
        raise ConfigError(f"sample rate {value!r} is neither a number nor a fraction like 50000/3") from err
    if rate <= 0:
        raise ConfigError(f"sample rate must be positive, got {value!r}")
    return rate


def audio_sample_rate(params: dict[str, Any]) -> float:
    return parse_rate(section(params, "audio.sample_rate"))


def clip_samples(params: dict[str, Any]) -> int:
    """Number of samples every decoded clip has: sample_rate x clip_seconds, rounded."""
    return int(round(audio_sample_rate(params) * float(section(params, "audio.clip_seconds"))))


def train_settings(params: dict[str, Any], model_section: str) -> dict[str, Any]:
    """The shared `train` section overridden by `<model_section>.train` (e.g. train_vision.scratch.train)."""
    merged = copy.deepcopy(section(params, "train"))
    overrides = section(params, model_section).get("train") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{model_section}.train must be a mapping of overrides, got {overrides!r}")
    unknown = set(overrides) - set(merged)
    if unknown:
        raise ConfigError(f"{model_section}.train overrides unknown keys {sorted(unknown)}; known: {sorted(merged)}")
    merged.update(overrides)
    return merged
