"""Byte-reproducible zip archives, so DVC sees no change when the same data is written again."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np

from vapm.core.errors import VapmError

# 1980-01-01 is the earliest time a zip header can hold; any fixed value would do.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_REGULAR_FILE_RW_R_R = (0o100644 << 16)


class SynthError(VapmError, ValueError):
    """The sample data cannot be built as asked (a class name ingest could not read back, too small an image ...)."""

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


def name_digest(domain: str, name: str) -> bytes:
    """32 bytes that depend only on `domain` and the class name: what a class the builders have no
    hand-made look for derives its look from. SHA-256, so it is the same on every run, machine and
    Python (never `hash()`, which is salted per process)."""
    return hashlib.sha256(f"vapm.synth.{domain}\0{name}".encode("utf-8")).digest()


def digest_unit(digest: bytes, index: int) -> float:
    """A number in [0, 1) from bytes index, index + 1 of a digest (65,536 steps)."""
    return int.from_bytes(digest[index:index + 2], "big") / 65536.0


_SLUG_LENGTH = 40


def slug(name: str) -> str:
    """A lower-case file-name prefix for a class name: runs of characters other than letters and
    digits (any script) become one '-'; 'Rust spot' -> 'rust-spot', 'Öl/Fett' would be 'öl-fett'.
    Never contains '_' (ingest splits a NEU-style prefix from the number at the first '_' it knows)
    and never is empty: a name with no letter or digit gets 'class-' and 8 hex digits of its hash."""
    text = unicodedata.normalize("NFC", name).lower()
    words = re.findall(r"[^\W_]+", text)
    tag = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    if not words:
        return f"class-{tag}"
    joined = "-".join(words)
    if len(joined) > _SLUG_LENGTH:
        joined = f"{joined[:_SLUG_LENGTH].rstrip('-')}-{tag}"
    return joined


def unsafe_class_reason(name: object) -> str | None:
    """Why `name` cannot be a class folder in a zip archive, or None when it can be used as it is."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "is a relative folder reference"
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        return "contains a control character (NUL, tab, newline ...) or a lone surrogate"
    return None


def check_class_list(kind: str, classes: Sequence[str], example_paths: Callable[[str], list[tuple[str, str | None]]],
                     extensions: tuple[str, ...]) -> None:
    """The one check of a class list before anything is built: names usable as zip folders, distinct
    regardless of case, and every member path read back by ingest as its own class and split.

    `example_paths(name)` gives (member path, split folder or None) for the paths a class's members take.
    Raises one SynthError naming the first bad class.
    """
    from vapm.data.ingest.labels import UnknownClass, class_from_path, ignore_reason, split_from_path

    classes = list(classes)
    if not classes:
        raise SynthError(f"no {kind} classes given")
    for name in classes:
        reason = unsafe_class_reason(name)
        if reason:
            raise SynthError(f"{kind} class {name!r} {reason}: it names the class folder in the archive; "
                             "rename the class")
    folded = [name.lower() for name in classes]
    if len(set(folded)) != len(classes):
        twice = sorted({name for name in classes if folded.count(name.lower()) > 1})
        raise SynthError(f"{kind} classes must be distinct regardless of case (class folders match in any case), "
                         f"got {twice} in {classes}")
    for name in classes:
        for path, split in example_paths(name):
            try:
                ignored = ignore_reason(path, extensions)
                found_split = split_from_path(path)
                found = class_from_path(path, classes) if ignored is None else None
            except UnknownClass as err:
                raise SynthError(f"{kind} class {name!r}: ingest could not read back {path!r}: {err}") from None
            if ignored is not None:
                raise SynthError(f"{kind} class {name!r}: ingest would skip {path!r} ({ignored}); rename the class")
            if found != name or found_split != split:
                raise SynthError(f"{kind} class {name!r}: ingest would read {path!r} as class {found!r}, split "
                                 f"{found_split!r}; rename the class")


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
