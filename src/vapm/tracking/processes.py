"""Server processes on 127.0.0.1: a free port, the one error for a server that will not start, stopping a process
by its id (and its group), the tail of its log for the error."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from vapm.core.errors import VapmError

HOST = "127.0.0.1"


STARTUP_TIMEOUT_S = 120.0   # MLflow creates its ~40 tables on first start; slow on a busy machine


STOP_TIMEOUT_S = 20.0


class ServerError(VapmError, RuntimeError):
    """A local server could not be set up or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, first_signal: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a server we started, by its process id (its whole process group when it leads one)."""
    if process.poll() is not None:
        return

    def send(sig: int) -> None:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, sig)
            else:
                os.kill(process.pid, sig)
        except ProcessLookupError:
            pass

    send(first_signal)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(timeout)


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""
