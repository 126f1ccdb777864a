"""Real servers for the team tests, on 127.0.0.1 only, each stopped by its process id.

- `Sshd`: Debian's OpenSSH server with a throwaway host key and client key pair in a temp dir.
- `http_status_server`: a tiny HTTP server that answers every request with one status (a broken
  MLflow server behind a proxy answers 503).
- `closed_port`: a port that refuses connections (bound, never listening) for as long as it is held.
- `fixed_port_held`: the README's servers listen on a fixed port (5000): tests running in parallel processes
  (make test-slow) take turns on it.
PostgreSQL and `mlflow server` come from `vapm.tracking.server`, the code behind `make mlflow-server`.
"""
from __future__ import annotations

import fcntl
import getpass
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from vapm.tracking.processes import HOST, free_port, stop_process

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def sshd_binary() -> str | None:
    found = shutil.which("sshd")
    candidates = ([found] if found else []) + [c for c in SSHD_CANDIDATES if os.path.isfile(c)]
    # sshd must be started by its absolute path (it re-executes itself for every connection).
    return os.path.abspath(candidates[0]) if candidates else None


@dataclass
class Sshd:
    port: int
    user: str
    client_key: Path        # private key the client logs in with
    process: subprocess.Popen
    log: Path

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@{HOST}:{self.port}{path}"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vapm-test", "-f", str(path)], check=True)


@contextmanager
def running_sshd(folder: Path, timeout: float = 30.0) -> Iterator[Sshd]:
    """sshd -D on 127.0.0.1:<free port>: key login for this user only, no passwords, no ~/.ssh involved.

    No known_hosts file: DVC's SSH remote does not check host keys (sshfs connects with
    known_hosts=None; dvc-ssh 4.3 has no option for it), see docs/team.md.
    """
    binary = sshd_binary()
    if binary is None:
        raise FileNotFoundError("sshd not found: install openssh-server")
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = folder / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port, user = free_port(), getpass.getuser()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {HOST}", f"Port {port}", f"HostKey {host_key}", f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}", f"AllowUsers {user}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
        "Subsystem sftp internal-sftp", "LogLevel VERBOSE", ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    log = folder / "sshd.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection((HOST, port), timeout=1) as conn:
                    if conn.recv(8).startswith(b"SSH-"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen on {HOST}:{port} within {timeout} s") from None
                time.sleep(0.1)
        yield Sshd(port, user, client_key, process, log)
    finally:
        stop_process(process)


@dataclass
class StatusServer:
    uri: str
    requests: list[tuple[str, str]]  # (method, path) of every request received, in order


@contextmanager
def http_status_server(status: int | Callable[[str, str], int]) -> Iterator[StatusServer]:
    """http://127.0.0.1:<port> answering every request with `status` (or `status(method, path)`).

    A 200 carries `{}` as its JSON body (an empty MLflow answer); other statuses an empty body.
    """
    received: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.command, self.path))
            code = status(self.command, self.path) if callable(status) else status
            body = b"{}" if code == 200 else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StatusServer(f"http://{HOST}:{server.server_address[1]}", received)
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound by us (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` among this machine's processes, released when the holder ends, even
    killed."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def fixed_port_held(port: int) -> Iterator[None]:
    """Exclusive use of a fixed port among this machine's test processes: `make ui` and `make mlflow-server` both
    listen on 5000."""
    import tempfile

    with file_lock(Path(tempfile.gettempdir()) / f"vapm-tests-port-{port}.lock"):
        yield
