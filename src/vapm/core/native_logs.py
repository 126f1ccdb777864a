"""Keep TensorFlow's native log lines off the terminal, and pass everything else on untouched.

TensorFlow 2.21 writes its C++ logs through absl (`I0000 00:00:1796379333.187701 6313 port.cc:153] oneDNN custom
operations are on ...`, grappler's `E0000 ... NodeDef mentions attribute use_unbounded_threadpool`, preceded by
`WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`), and some of them ignore
TF_CPP_MIN_LOG_LEVEL. They go straight to file descriptor 2, below Python, so `filter_native_logs` puts a pipe on
descriptor 2 and a thread that forwards every line to the real stderr except those. Partial lines that cannot
be the start of such a line (progress bars redrawn with \\r) are forwarded at once.
"""
from __future__ import annotations

import atexit
import io
import os
import re
import sys
import threading

NATIVE_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] "
                             rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
                             # the second line of cpu_feature_guard's message
                             rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate)")
# A partial line is held back only while it may still become a native log line.
_MAYBE_NATIVE = re.compile(rb"^(?:[IWEF]\d{0,4}(?: [\d:. ]*(?:[\w./-]+(?::\d*)?)?)?|W(?:A(?:R(?:N(?:I(?:N(?:G(?::.*)?)?)?)?)?)?)?)$",
                           re.DOTALL)
_READ_BYTES = 65536


def is_native_log_line(line: bytes) -> bool:
    return bool(NATIVE_LOG_LINE.match(line))


def split_forwardable(pending: bytes) -> tuple[bytes, bytes]:
    """(what to write now, what to hold) for data read from the pipe: whole lines minus native log lines, and a
    trailing partial line unless it may still become one."""
    *lines, tail = pending.split(b"\n")
    out = b"".join(line + b"\n" for line in lines if not is_native_log_line(line))
    if tail and not _MAYBE_NATIVE.match(tail):
        return out + tail, b""
    return out, tail


def _forward(read_fd: int, real_fd: int) -> None:
    pending = b""
    while chunk := os.read(read_fd, _READ_BYTES):
        out, pending = split_forwardable(pending + chunk)
        if out:
            os.write(real_fd, out)
    if pending and not is_native_log_line(pending):
        os.write(real_fd, pending)
    os.close(read_fd)


def filter_native_logs() -> None:
    """From now until the process exits, native log lines on descriptor 2 are dropped (see the module's docstring)."""
    try:
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        real_fd = os.dup(2)
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:  # no descriptor 2 (a daemon): nothing to filter
        return
    # Python's stderr was opened on what descriptor 2 was (a file, say: seekable); a pipe is not, and a stream
    # that still believes it can seek fails in reconfigure() and tell(). A new one on the same descriptor knows.
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=sys.stderr.encoding,
                                  errors=sys.stderr.errors, line_buffering=True, write_through=True)
    thread = threading.Thread(target=_forward, args=(read_fd, real_fd), name="native-log-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(real_fd, 2)  # closes this process's write end: the thread drains what is left and stops
        thread.join(timeout=2.0)

    atexit.register(restore)


def quiet_native_logs() -> None:
    """What `vapm` commands and the train stage do unless asked to be verbose: TensorFlow's C++ logs and absl's
    Python logs kept off stderr. Called before TensorFlow is first imported; a TF_CPP_MIN_LOG_LEVEL the user
    exported wins."""
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    filter_native_logs()
