"""Deterministic model files: the same weights give the same bytes, so DVC keeps a model's hash when its
meaning did not change. Keras and skops stamp the save time into their zip archives and name objects by
memory address; these helpers rewrite such archives with fixed timestamps, sorted members and numbered ids.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def repack_zip(path: Path, rewrite: dict[str, Any] | None = None, rename: dict[str, str] | None = None) -> None:
    """Rewrite a zip with fixed timestamps and members in name order, optionally editing or renaming some.

    Keras and skops stamp the save time into their archives, and name objects by memory address.
    """
    rewrite, rename = rewrite or {}, rename or {}
    with zipfile.ZipFile(path) as source:
        members = [(info, rename.get(info.filename, info.filename), source.read(info.filename))
                   for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info, name, data in sorted(members, key=lambda member: member[1]):
            if info.filename in rewrite:
                data = rewrite[info.filename](data)
            fixed = zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            target.writestr(fixed, data)
    path.write_bytes(buffer.getvalue())


def write_npz(path: Path, arrays: dict[str, Any]) -> Path:
    """An .npz that `np.load(allow_pickle=False)` reads, with bytes that depend only on the arrays: members in
    name order, uncompressed, with a fixed date (`np.savez` stamps the current time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    Path(path).write_bytes(buffer.getvalue())
    return Path(path)


def without_save_date(data: bytes) -> bytes:
    metadata = json.loads(data)
    metadata.pop("date_saved", None)
    return json.dumps(metadata, sort_keys=True).encode()


def stable_shared_ids(data: bytes) -> bytes:
    """Keras names objects shared between layers by their memory address (`shared_object_id`); number them
    in order of appearance instead, so the same model gives the same config.json."""
    config = json.loads(data)
    numbers: dict[Any, int] = {}

    def renumber(node: Any) -> Any:
        if isinstance(node, dict):
            if "shared_object_id" in node:
                node["shared_object_id"] = numbers.setdefault(node["shared_object_id"], len(numbers) + 1)
            for value in node.values():
                renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)
        return node

    return json.dumps(renumber(config)).encode()


def stable_keras_file(path: Path) -> None:
    """Rewrite a `.keras` file so that the same model always gives the same bytes."""
    repack_zip(path, {"metadata.json": without_save_date, "config.json": stable_shared_ids})


def stable_skops_file(path: Path) -> None:
    """skops names every object (`__id__`) and array file (`<id>.npy`) by memory address; number them in order
    of appearance in schema.json instead, so the same model gives the same file."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    numbers: dict[int, int] = {}

    def number(value: Any) -> int:
        return numbers.setdefault(int(value), len(numbers) + 1)

    def renumber(node: Any) -> None:
        if isinstance(node, dict):
            if "__id__" in node:
                node["__id__"] = number(node["__id__"])
            if isinstance(node.get("file"), str) and node["file"].endswith(".npy"):
                node["file"] = f"{number(node['file'][:-4])}.npy"
            for value in node.values():
                renumber(value)
        elif isinstance(node, list):
            for value in node:
                renumber(value)

    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(".npy")]
    renumber(schema)
    rename = {name: f"{numbers[int(name[:-4])]}.npy" for name in names if int(name[:-4]) in numbers}
    repack_zip(path, {"schema.json": lambda _: json.dumps(schema).encode()}, rename)
