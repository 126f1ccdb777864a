"""Content fingerprints: the sha256 of files, read in blocks by the standard library (hashlib.file_digest)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable


def files_sha256(paths: Iterable[str | Path]) -> str:
    """sha256 over the bytes of the given files, one after the other, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            hashlib.file_digest(fh, lambda: digest)  # feeds this one digest, file after file
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return files_sha256([path])
