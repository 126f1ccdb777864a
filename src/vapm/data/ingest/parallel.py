"""Reading and decoding members in chunks, in worker processes or on a Dask cluster (vapm.config.compute.Executor),
with results in input order.

Each process parses the archive's directory once (`cached_archive`) and tasks carry the archive's path and the
members' ZipInfo (references, never the bytes), so the work is linear in the number of members: opening the zip
per chunk made it quadratic. A long-lived worker (a Dask worker) reopens an archive whose file changed.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

from PIL import Image

from vapm.data.ingest.archive import member_blocks, open_archive, read_member
from vapm.data.ingest.decode import AudioTarget, decode_audio, decode_image
from vapm.data.ingest.errors import BadFile
from vapm.data.ingest.limits import IngestLimits

T = TypeVar("T")

CHUNK_ITEMS = 32  # members per task: large enough to hide the cost of a task, small enough to bound memory
# What the decoded results of one task may add up to at most (each member's worst case counts): with
# 16-Mpx images that is two per task, with clips the full CHUNK_ITEMS.
CHUNK_RESULT_BYTES = 32 * 2**20


def chunked(items: Sequence[T], size: int = CHUNK_ITEMS) -> list[Sequence[T]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def decode_chunk_items(limits: IngestLimits, audio_target: AudioTarget | None) -> int:
    """Members per decoding task, so one task's results stay within CHUNK_RESULT_BYTES (at least one)."""
    worst_result = limits.max_image_pixels if audio_target is None else 4 * audio_target.samples
    return max(1, min(CHUNK_ITEMS, CHUNK_RESULT_BYTES // worst_result))


# ---- one open archive per process ----

_ARCHIVES: dict[Path, tuple[zipfile.ZipFile, tuple[int, ...]]] = {}


def _identity(path: Path) -> tuple[int, ...]:
    """What tells one version of a file from another at the same path (DVC checks out by replacing files)."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def remember_archive(path: Path, zf: zipfile.ZipFile) -> None:
    """Let tasks run in this process use `zf`, already open, for `path`."""
    _ARCHIVES[path] = zf, _identity(path)


def forget_archives() -> None:
    """Close every archive this process holds open (the caller that opened them closes them)."""
    while _ARCHIVES:
        _ARCHIVES.popitem()[1][0].close()


def cached_archive(path: Path) -> zipfile.ZipFile:
    """The archive opened once in this process (a worker opens it on its first task and keeps it, and opens it
    again when the file at `path` was replaced since)."""
    cached = _ARCHIVES.get(path)
    if cached is not None and cached[1] != _identity(path):
        _ARCHIVES.pop(path)[0].close()
        cached = None
    if cached is None:
        identity = _identity(path)
        cached = _ARCHIVES[path] = open_archive(path), identity
    return cached[0]


# ---- tasks ----

# Enough of a file's start for every image header we decode (a JPEG's SOF can follow a large EXIF block).
HEADER_BYTES = 1 << 20

@dataclass(frozen=True)
class MemberTask:
    """Members of one archive to hash or decode; the ZipInfo entries come from the parent's directory."""

    archive: Path
    members: Sequence[zipfile.ZipInfo]
    limits: IngestLimits
    audio_target: AudioTarget | None = None
    image_sizes: bool = False   # hashing: also read each image's width x height from its header


def hash_chunk(task: MemberTask) -> list[tuple[str | None, str | None, int]]:
    """(sha256 hex, None, pixels) per member, or (None, reason, 0) when it cannot be read within limits or is
    empty. Pixels: an image's width x height from its header (with `image_sizes`; 0 when unreadable)."""
    zf = cached_archive(task.archive)
    results: list[tuple[str | None, str | None, int]] = []
    for info in task.members:
        digest = hashlib.sha256()
        head = bytearray()
        try:
            for block in member_blocks(zf, info, task.limits.max_member_bytes):
                digest.update(block)
                if task.image_sizes and len(head) < HEADER_BYTES:
                    head += block[:HEADER_BYTES - len(head)]
        except BadFile as err:
            results.append((None, str(err), 0))
            continue
        if not info.file_size:
            results.append((None, "empty file", 0))
            continue
        results.append((digest.hexdigest(), None, image_pixels(bytes(head)) if task.image_sizes else 0))
    return results


def image_pixels(head: bytes) -> int:
    """width x height from the start of an image file (Pillow reads only the header), 0 if it cannot tell."""
    try:
        with Image.open(io.BytesIO(head)) as image:
            width, height = image.size
        return int(width) * int(height)
    except Exception:  # noqa: BLE001 - an unreadable header: decoding will say why, with the file's name
        return 0


def decode_chunk(task: MemberTask) -> list[tuple[Any, str | None]]:
    """(decoded, None) per member, or (None, reason) when it fails validation.

    Decoded is a grey uint8 image, or a `Clip` when an audio target is given.
    """
    zf = cached_archive(task.archive)
    limits = task.limits
    results: list[tuple[Any, str | None]] = []
    for info in task.members:
        try:
            data = read_member(zf, info, limits.max_member_bytes)
            if task.audio_target is None:
                decoded = decode_image(data, info.filename, limits.max_image_pixels)
            else:
                decoded = decode_audio(info.filename, data, task.audio_target, limits.max_source_samples)
            del data
            results.append((decoded, None))
        except BadFile as err:
            results.append((None, str(err)))
    return results
