"""Files and names that come from outside: read within a size limit without following a link or blocking on a
pipe, refuse what is not a regular file, and escape names before a terminal sees them."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from vapm.data.ingest.limits import mib

READ_BLOCK = 2**20  # a file that grows while it is read is read on in blocks of this size


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


NONBLOCK = getattr(os, "O_NONBLOCK", 0)


CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def shown(text: str) -> str:
    """Untrusted text made safe to print on a terminal: every file name, and every reason or path that may
    quote one, goes through here before it is printed (the alert log is JSON, escaped by json.dumps).

    Text whose every character is printable is shown as it is; any other is shown in Python's quoted form
    with escapes, as ingest shows member names: 'x\\x1b[2K\\rALERT y.wav' or 'gnp.\\u202eevil.wav'.
    str.isprintable is False for C0 and C1 controls (ESC, CR, LF, TAB, CSI U+009B), DEL, format characters
    (bidi overrides such as U+202E, zero-width characters), line and paragraph separators (U+2028, U+2029),
    spaces other than ' ', and the unpaired surrogates that stand for undecodable bytes in a name. So no
    name can move the cursor, erase or recolour a line, reorder it, or start a new one.
    """
    return text if text.isprintable() else repr(text)


def kind_of(mode: int) -> str:
    """What an entry is, from its lstat mode: 'a regular file', 'a symbolic link', 'a named pipe (FIFO)', ..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


def not_regular(mode: int) -> str | None:
    """Why an entry of this kind is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = kind_of(mode)
    return f"{kind}, not a regular file: not opened" if kind != "not a regular file" else f"{kind}: not opened"


def read_bounded(fd: int, limit: int, expected: int) -> bytes | None:
    """The content of an open file, reading at most `limit` + 1 bytes in all: None when it holds more.

    The first read asks for the size `stat` gave (+ 1 byte, to see the end), so a file is held once; a file
    that grew meanwhile is read on in READ_BLOCK blocks until the limit is passed.
    """
    blocks: list[bytes] = []
    total, want = 0, min(max(expected, 0), limit) + 1
    while total <= limit:
        block = os.read(fd, min(want, limit + 1 - total))
        if not block:
            break
        blocks.append(block)
        total += len(block)
        want = READ_BLOCK
    if total > limit:
        return None
    return blocks[0] if len(blocks) == 1 else b"".join(blocks)


def not_through_link(path: Path) -> Path:
    """An absolute path whose folder is resolved but whose last part is kept: a link planted under the alert
    log's or the state's name is then refused or replaced, never written through."""
    path = Path(path)
    return path.parent.resolve() / path.name


def relative_to(folder: Path, path: str | Path) -> str | None:
    """The path relative to the folder, or None for one outside it."""
    try:
        return Path(os.path.abspath(path)).relative_to(folder).as_posix()
    except ValueError:
        return None


def refusal(path: Path, info: os.stat_result, folder: Path, max_bytes: int) -> str | None:
    """Why this entry is not read (from its lstat), or None."""
    if stat.S_ISLNK(info.st_mode):
        if not os.path.exists(path):
            where = "to nothing (dangling, or a loop)"
        elif relative_to(folder, os.path.realpath(path)) is None:
            where = "to outside the folder"
        else:
            where = "to a file in the folder (that file is scored under its own name)"
        return f"a symbolic link {where}: links are not followed"
    reason = not_regular(info.st_mode)
    if reason is None and info.st_size > max_bytes:
        reason = (f"{mib(info.st_size)} ({info.st_size:,} bytes), more than the limit of "
                  f"{mib(max_bytes)} (--max-file-mb): not read")
    return reason

def read_within(path: Path, folder: Path, max_bytes: int) -> tuple[bytes | None, str | None]:
    """(content, None), or (None, why not); (None, None) when it is gone. The entry is opened without
    following a link and without blocking, then checked again from the open file: a regular file, inside
    the folder, within the size limit; and it is read no further than the limit + 1 byte."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        try:
            info = os.lstat(path)
        except OSError:
            return None, None
        return None, refusal(path, info, folder, max_bytes) or f"cannot read it ({err.strerror})"
    try:
        info = os.fstat(fd)
        reason = refusal(path, info, folder, max_bytes)
        if reason is not None:
            return None, reason
        opened = opened_path(fd, path)
        if opened.endswith(" (deleted)"):
            return None, None
        if relative_to(folder, opened) is None:
            return None, "resolves to outside the folder (a folder on its path is a link): not read"
        data = read_bounded(fd, max_bytes, info.st_size)
        if data is None:
            return None, f"grew past the limit of {mib(max_bytes)} (--max-file-mb) while it was read"
        return data, None
    except OSError as err:
        return None, f"cannot read it ({err.strerror})"
    finally:
        os.close(fd)

def opened_path(fd: int, path: Path) -> str:
    """Where the open file really is (Linux: /proc/self/fd), else where its path resolves to now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
