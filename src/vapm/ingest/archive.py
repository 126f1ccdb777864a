"""Reading zip archives safely: members are read into memory, never extracted to disk."""
from __future__ import annotations

from vapm.errors import VapmError

import re
import stat
import zipfile
from pathlib import Path


class ArchiveError(VapmError, ValueError):
    """The archive is missing, is not a zip, or holds a member that is unsafe to read."""


_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


def path_parts(member_name: str) -> list[str]:
    """Components of a member path; backslashes count as separators (archives made on Windows)."""
    return [part for part in re.split(r"[/\\]", member_name) if part not in ("", ".")]


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member must not be read (it could escape a folder or point elsewhere), or None."""
    name = info.filename
    if name.startswith(("/", "\\")):
        return "absolute path"
    if _DRIVE_LETTER.match(name):
        return "drive letter in path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def safe_members(archive: str | Path, max_uncompressed_bytes: int) -> list[zipfile.ZipInfo]:
    """All members of `archive`, after refusing archives that are unsafe or too big to unpack."""
    archive = Path(archive)
    if not archive.exists():
        raise ArchiveError(f"archive not found: {archive}")
    if not archive.is_file():
        raise ArchiveError(f"archive is not a file: {archive}")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ArchiveError(f"not a readable zip archive: {archive} ({err})") from err
    for info in members:
        reason = unsafe_reason(info)
        if reason:
            raise ArchiveError(f"refusing {archive}: unsafe member {info.filename!r} ({reason})")
    total = sum(info.file_size for info in members)
    if total > max_uncompressed_bytes:
        largest = max(members, key=lambda info: info.file_size)
        raise ArchiveError(
            f"refusing {archive}: it unpacks to {total / 2**20:.1f} MiB, more than the limit of "
            f"{max_uncompressed_bytes / 2**20:.1f} MiB (ingest.max_uncompressed_mb); "
            f"largest member {largest.filename!r} ({largest.file_size / 2**20:.1f} MiB)")
    return members

