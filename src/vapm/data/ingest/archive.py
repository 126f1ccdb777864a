"""Reading zip archives safely: members are streamed within their limits, never extracted to disk.

`safe_members` refuses archives that are unsafe as a whole; `member_blocks` / `read_member` stream one
member and raise `MemberError` (a per-file reason) when it is over its size limit, lies about its size,
is encrypted, or uses a compression whose output cannot be bounded. Member names are shown through
`display_name`, since a name can hold terminal escapes or newlines.
"""
from __future__ import annotations

import io
import re
import stat
import zipfile
from pathlib import Path
from typing import Iterator

from vapm.core.errors import VapmError
from vapm.data.ingest.errors import MemberError
from vapm.data.ingest.limits import mib

READ_BLOCK_BYTES = 2**20  # a member is streamed in blocks of this much uncompressed data
DISPLAY_NAME_CHARS = 240  # longer names are cut in reports and messages

# zipfile bounds what one read of a deflated member may inflate to; for bzip2 and LZMA it does not (a
# 177-byte bzip2 stream inflates to 200 MiB in one call), so members compressed so are refused.
READABLE_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_COMPRESSION_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 9: "Deflate64"}


class ArchiveError(VapmError, ValueError):
    """The archive is missing, is not a zip, or holds a member that is unsafe to read."""


_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+")


def display_name(name: str) -> str:
    """A member name safe to print: as it is when every character is printable, else quoted with escapes
    (ANSI escapes, newlines, bidi overrides ...), so a name can neither forge a line nor recolour one."""
    shown = name if len(name) <= DISPLAY_NAME_CHARS else name[:DISPLAY_NAME_CHARS]
    shown = shown if shown.isprintable() else repr(shown)
    return shown if len(name) <= DISPLAY_NAME_CHARS else f"{shown}... ({len(name)} characters)"


def quoted_name(name: str) -> str:
    """A member name quoted for a message, with the same escapes as `display_name`."""
    shown = display_name(name)
    return shown if shown != name else repr(name)


def clean_reason(text: str) -> str:
    """A library's error text made fit for a report: one line, no object addresses (they change from run to
    run), no control characters."""
    text = _ADDRESS.sub("", _OBJECT_REPR.sub("", text))
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text).strip()


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


def open_archive(archive: str | Path) -> zipfile.ZipFile:
    """The archive opened for reading (its directory parsed once), or an ArchiveError saying why not."""
    archive = Path(archive)
    if not archive.exists():
        raise ArchiveError(f"archive not found: {archive}")
    if not archive.is_file():
        raise ArchiveError(f"archive is not a file: {archive}")
    try:
        return zipfile.ZipFile(archive)
    except Exception as err:  # BadZipFile, OSError, and on malformed directories UnicodeDecodeError, ValueError ...
        raise ArchiveError(f"not a readable zip archive: {archive} ({clean_reason(str(err)) or type(err).__name__})"
                           ) from err


def check_members(archive: str | Path, members: list[zipfile.ZipInfo], max_uncompressed_bytes: int) -> None:
    """Refuse the archive when a member is unsafe or the whole unpacks to more than the limit."""
    for info in members:
        reason = unsafe_reason(info)
        if reason:
            raise ArchiveError(f"refusing {archive}: unsafe member {quoted_name(info.filename)} ({reason})")
    total = sum(info.file_size for info in members)
    if total > max_uncompressed_bytes:
        largest = max(members, key=lambda info: info.file_size)
        raise ArchiveError(
            f"refusing {archive}: it unpacks to {mib(total)}, more than the limit of "
            f"{mib(max_uncompressed_bytes)} (ingest.max_uncompressed_mb); "
            f"largest member {quoted_name(largest.filename)} ({mib(largest.file_size)})")


def safe_members(archive: str | Path, max_uncompressed_bytes: int) -> list[zipfile.ZipInfo]:
    """All members of `archive`, after refusing archives that are unsafe or too big to unpack."""
    with open_archive(archive) as zf:
        members = zf.infolist()
    check_members(archive, members, max_uncompressed_bytes)
    return members


def _check_readable(info: zipfile.ZipInfo, max_bytes: int) -> None:
    if info.file_size > max_bytes:
        raise MemberError(f"unpacks to {mib(info.file_size)}, more than the limit of {mib(max_bytes)} "
                          f"(ingest.max_member_mb)")
    if info.flag_bits & 0x1:
        raise MemberError("encrypted (password-protected members are not read)")
    if info.compress_type not in READABLE_COMPRESSION:
        method = _COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
        raise MemberError(f"compressed with {method}: only stored and deflate members are read "
                          "(re-create the archive with ordinary zip compression)")


def member_blocks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> Iterator[bytes]:
    """The member's bytes in blocks of at most READ_BLOCK_BYTES, checked against its declared size and
    `max_bytes` before reading and while streaming: at most one block is held here at a time."""
    _check_readable(info, max_bytes)
    allowed = min(info.file_size, max_bytes)
    total = 0
    try:
        with zf.open(info) as stream:
            while block := stream.read(READ_BLOCK_BYTES):
                total += len(block)
                if total > allowed:  # zipfile stops at the declared size; this guards that promise
                    raise MemberError(f"holds more than the {allowed} bytes its header declares")
                yield block
    except MemberError:
        raise
    except Exception as err:  # bad CRC, corrupt deflate stream, a local header that disagrees, truncation ...
        raise MemberError(f"cannot read from archive: {clean_reason(str(err)) or type(err).__name__}") from err
    if total != info.file_size:
        raise MemberError(f"its header declares {info.file_size} bytes but it holds {total}")


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> io.BytesIO:
    """The whole member in one buffer (grown block by block, so it is never held twice), positioned at 0."""
    buffer = io.BytesIO()
    for block in member_blocks(zf, info, max_bytes):
        buffer.write(block)
    buffer.seek(0)
    return buffer
