"""Nested mappings as dotted keys: params.yaml, presets and MLflow params all speak `a.b.c`."""
from __future__ import annotations

from typing import Any


def flatten(mapping: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1, 'c': {}}} -> {'a.b': 1, 'a.c': {}}: an empty mapping stays a value, so it stays visible."""
    if not isinstance(mapping, dict):
        return {prefix.rstrip("."): mapping}
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
