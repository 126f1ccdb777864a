"""Turn a preset file of params into `dvc exp run -S` arguments, checked against params.yaml.

    vapm preset presets/real-data.yaml                       # print the -S arguments
    vapm preset presets/real-data.yaml --run --name real-data   # run `dvc exp run -S ... --name real-data`

A preset is a YAML mapping of dotted param names to values; a mapping value stands for its keys
(`vision_scratch.train: {epochs: 30}` is `vision_scratch.train.epochs: 30`). Every key must exist in
params.yaml, so a typo fails here instead of silently adding an unused param. Arguments after --run
(with or without a `--` before them) go to `dvc exp run`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from vapm.core.errors import VapmError, one_line
from vapm.core.mappings import flatten


class PresetError(VapmError, ValueError):
    """A preset file is missing, malformed, or names a param params.yaml does not have."""


def load_preset(path: str | Path) -> dict[str, Any]:
    """The preset as flat dotted keys -> values."""
    path = Path(path)
    if not path.is_file():
        raise PresetError(f"preset {path} not found")
    try:
        preset = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PresetError(f"preset {path} is not valid YAML: {one_line(str(err))}") from None
    if not isinstance(preset, dict):
        raise PresetError(f"preset {path} must be a mapping of dotted param names to values")
    return flatten(preset)


def check_key(params: dict[str, Any], dotted: str) -> None:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise PresetError(f"params.yaml has no '{dotted}' (no '{key}' there): fix the preset's key")
        node = node[key]


def hydra_value(value: Any) -> str:
    """A value as DVC's `-S` reads it (Hydra's override grammar): strings single-quoted, so a regular expression's
    brackets, parentheses and backslashes arrive as written; lists and mappings in flow syntax; JSON otherwise."""
    if isinstance(value, str):
        # Inside quotes Hydra reads a backslash literally, except in a run of them just before a quote (or the
        # closing quote), which must be doubled.
        text = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", value)
        text = re.sub(r"(\\+)$", lambda match: match.group(1) * 2, text)
        return f"'{text}'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    return json.dumps(value)


def override_args(preset: dict[str, Any], params: dict[str, Any], for_shell: bool = False) -> list[str]:
    """`-S key=value` per preset key. `for_shell`: the arguments will be printed for `$(...)`, where a value with
    white space would be split, so it is refused."""
    args = []
    for key, value in flatten(preset).items():
        check_key(params, key)
        text = hydra_value(value)
        if for_shell and any(ch.isspace() for ch in text):
            raise PresetError(f"{key}: value {text} contains white space; use --run instead of $(...)")
        args += ["-S", f"{key}={text}"]
    return args
