"""Turn a preset file of dotted params into `dvc exp run -S` arguments.

    dvc exp run $(python -m vapm.preset presets/real-data.yaml)
    python -m vapm.preset presets/real-data.yaml --run -- --name real   # the same, run for you

A preset is a flat YAML mapping such as `train.epochs: 30`; every key must exist in params.yaml,
so a typo fails here instead of silently adding an unused param.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vapm.config import ConfigError, load_params, section


def load_preset(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset {path} not found")
    preset = yaml.safe_load(path.read_text()) or {}
    if not isinstance(preset, dict):
        raise ConfigError(f"preset {path} must be a mapping of dotted param names to values")
    return preset


def override_args(preset: dict[str, Any], params: dict[str, Any]) -> list[str]:
    args = []
    for key, value in preset.items():
        section(params, key)  # raises ConfigError naming the unknown key
        # Compact JSON is valid YAML flow syntax (what `-S` parses) and has no spaces, so the
        # printed arguments survive the shell's word splitting in `$(...)` unquoted.
        text = json.dumps(value, separators=(",", ":"))
        if any(ch.isspace() for ch in text):
            raise ConfigError(f"{key}: value {text} contains white space; use --run instead of $(...)")
        args += ["-S", f"{key}={text}"]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="YAML file of dotted params, e.g. presets/real-data.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--run", action="store_true", help="run `dvc exp run` with the preset (extra args after --)")
    parser.add_argument("extra", nargs="*", help="with --run: more `dvc exp run` arguments, after --")
    args = parser.parse_args(argv)
    try:
        overrides = override_args(load_preset(args.preset), load_params(args.params))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.run:
        command = ["dvc", "exp", "run", *overrides, *args.extra]
        print("+ " + " ".join(shlex.quote(arg) for arg in command), file=sys.stderr, flush=True)
        return subprocess.call(command)
    print(" ".join(overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
