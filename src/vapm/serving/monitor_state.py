"""The folder monitor's memory of what it scored (its state file: file -> [size, mtime_ns]), so that a restart
scores nothing twice. Whatever the file holds, reading it never fails: a state that is not ours only costs
rescoring. Writing is atomic and never goes through a link planted under its name."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from vapm.data.ingest.limits import mib
from vapm.serving.alerts import json_kind
from vapm.serving.untrusted_files import CLOEXEC, NONBLOCK, kind_of, read_bounded

STATE_MAX_BYTES = 256 * 2**20  # a larger state file is ignored (about 4 million files remembered)


def valid_signature(value: Any) -> bool:
    """[size, mtime_ns], as the monitor writes them (mtime may be negative: a file dated before 1970)."""
    return (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
            and value[0] >= 0)


def read_state(path: Path) -> tuple[dict[str, list[int]], str | None]:
    """(what was scored, None), or (what could be kept of it, what is wrong with the file)."""
    problem, content = None, None
    try:
        fd = os.open(path, os.O_RDONLY | NONBLOCK | CLOEXEC)  # a pipe never blocks
    except FileNotFoundError:
        return {}, None
    except OSError as err:
        return {}, f"cannot be read ({err.strerror})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            problem = f"is {kind_of(info.st_mode)}, not a regular file"
        elif info.st_size > STATE_MAX_BYTES:
            problem = f"is {mib(info.st_size)}, more than the {mib(STATE_MAX_BYTES)} a state may take"
        else:
            raw = read_bounded(fd, STATE_MAX_BYTES, info.st_size)
            if raw is None:
                problem = f"grew past {mib(STATE_MAX_BYTES)} while it was read"
            else:
                content = json.loads(raw)
    except OSError as err:
        problem = f"cannot be read ({err.strerror})"
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8, nested too deep
        problem = f"is not valid JSON ({type(err).__name__})"
    finally:
        os.close(fd)
    if problem is not None:
        return {}, problem
    if not isinstance(content, dict):
        return {}, f"holds {json_kind(content)}, not an object of file -> [size, mtime_ns]"
    bad = [name for name, value in content.items() if not valid_signature(value)]
    done = {name: value for name, value in content.items() if name not in bad}
    return done, (f"has {len(bad)} of {len(content)} entries that are not [size, mtime_ns]" if bad else None)


def write_state(path: Path, done: dict[str, list[int]]) -> None:
    """Write the state atomically: a new temporary file in the same folder, then os.replace (a crash leaves the
    old state or the new, never half of one; a link under its name is replaced, not followed). Raises OSError."""
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o644)  # as the state was written before (mkstemp makes it 0600)
            handle.write(json.dumps(done, sort_keys=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
