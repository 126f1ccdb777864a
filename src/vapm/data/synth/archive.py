"""Byte-reproducible zip archives, so DVC sees no change when the same data is written again."""
from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from vapm.core.errors import VapmError

# 1980-01-01 is the earliest time a zip header can hold; any fixed value would do.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_REGULAR_FILE_RW_R_R = (0o100644 << 16)



class SynthError(VapmError, ValueError):
    """The sample data cannot be built as asked (unknown class, too small an image ...)."""

@dataclass(frozen=True)
class BuiltArchive:
    path: Path
    members: int
    bytes: int


def member_rng(seed: int, *labels: str | int) -> np.random.Generator:
    """A random stream of its own for one archive member.

    Keyed on names rather than positions, so a member's content depends only on the seed and its
    own identity: adding test images or reordering classes leaves the other members unchanged.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    key = [label if isinstance(label, int) else zlib.crc32(str(label).encode()) for label in labels]
    return np.random.default_rng([int(seed), *key])


def _check_member_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or name.endswith("/") or "\\" in name or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"zip member name {name!r} must be a relative POSIX file path without '..'")


def write_zip(
    path: str | Path,
    members: Iterable[tuple[str, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
    compresslevel: int = 6,
) -> int:
    """Write (name, bytes) members, in the order given, to `path` atomically; return the member count.

    Timestamps, permissions and the creating system are fixed, so equal members give equal bytes.
    The archive appears under `path` only once it is complete (written beside it, then renamed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    seen: set[str] = set()
    try:
        with zipfile.ZipFile(tmp_name, "w") as archive:
            for name, data in members:
                _check_member_name(name)
                if name in seen:
                    raise ValueError(f"zip member {name!r} given twice")
                seen.add(name)
                info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
                info.create_system = _UNIX
                info.external_attr = _REGULAR_FILE_RW_R_R
                info.compress_type = compression
                archive.writestr(info, data, compress_type=compression, compresslevel=compresslevel)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return len(seen)
