"""A team's MLflow tracking server on this machine: PostgreSQL backend store, served artifacts.

`make mlflow-server` (= `python -m vapm.tracking.server`) initialises a PostgreSQL cluster in
`.mlflow-server/` on first use, starts it and `mlflow server --serve-artifacts` on 127.0.0.1, and
stops both on Ctrl-C or SIGTERM. The stages log to it when `MLFLOW_TRACKING_URI` names it.
The tests start the same servers through `start_postgres` and `start_mlflow`.

PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as, the `postgres`
system user that Debian's package creates (`VAPM_PG_USER` names another). The server binaries are
taken from `VAPM_PG_BINDIR`, else the newest `/usr/lib/postgresql/<version>/bin`, else `PATH`.
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vapm.core.errors import VapmError

HOST = "127.0.0.1"
DATABASE = "mlflow"
DB_ROLE = "mlflow"
STATE_DIR = Path(".mlflow-server")
PASSWORD_FILE = "db-password"
STARTUP_TIMEOUT_S = 120.0   # MLflow creates its ~40 tables on first start; slow on a busy machine
STOP_TIMEOUT_S = 20.0


class ServerError(VapmError, RuntimeError):
    """A local server could not be set up or started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path:
    """Where initdb and postgres live."""
    if os.environ.get("VAPM_PG_BINDIR"):
        candidates = [Path(os.environ["VAPM_PG_BINDIR"])]
    else:
        def version(path: Path) -> tuple[int, ...]:
            return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
        on_path = shutil.which("postgres")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    raise ServerError("PostgreSQL server binaries (initdb, postgres) not found: install Debian's `postgresql` "
                      "package (apt-get install postgresql) or set VAPM_PG_BINDIR to their folder")


def postgres_os_user() -> str | None:
    """The user PostgreSQL runs as: None (this user) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("VAPM_PG_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ServerError(f"PostgreSQL cannot run as root and there is no `{name}` user to run it as: install "
                          "Debian's `postgresql` package (it creates one) or set VAPM_PG_USER") from None
    return name


def _give_to(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


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


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Postgres:
    """A running PostgreSQL cluster on 127.0.0.1 that we started (stop it with `stop`)."""

    datadir: Path
    port: int
    password: str
    process: subprocess.Popen
    log: Path

    def uri(self, database: str = DATABASE, with_password: bool = True) -> str:
        """SQLAlchemy/libpq URI; without the password, give it as PGPASSWORD (kept out of `ps`)."""
        secret = f":{self.password}" if with_password else ""
        return f"postgresql://{DB_ROLE}{secret}@{HOST}:{self.port}/{database}"

    def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of waiting for them.
        stop_process(self.process, first_signal=signal.SIGINT)


def init_cluster(datadir: Path, password: str) -> None:
    """initdb a new cluster with one password-protected superuser role, `mlflow`."""
    bindir, user = postgres_bindir(), postgres_os_user()
    datadir.mkdir(parents=True, exist_ok=True)
    datadir.chmod(0o700)
    _give_to(datadir, user)
    with tempfile.NamedTemporaryFile("w", dir=datadir.parent, delete=False) as handle:  # initdb wants datadir empty
        handle.write(password + "\n")
    pwfile = Path(handle.name)
    _give_to(pwfile, user)
    try:
        proc = subprocess.run([str(bindir / "initdb"), "-D", str(datadir), "-U", DB_ROLE, f"--pwfile={pwfile}",
                               "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                              capture_output=True, text=True, user=user, check=False)
    finally:
        pwfile.unlink()
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ServerError(f"initdb {datadir} failed: {tail}")


def start_postgres(datadir: Path, password: str, port: int | None = None, log: Path | None = None) -> Postgres:
    """Start the cluster in `datadir` (initialising it first when empty) on 127.0.0.1 only, no Unix socket."""
    if not (datadir / "PG_VERSION").is_file():
        init_cluster(datadir, password)
    port = port or free_port()
    log = log or datadir.parent / "postgres.log"
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            [str(postgres_bindir() / "postgres"), "-D", str(datadir), "-p", str(port),
             "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=", "-c", "max_connections=50"],
            stdout=sink, stderr=subprocess.STDOUT, user=postgres_os_user(), start_new_session=True)
    server = Postgres(datadir, port, password, process, log)
    try:
        _wait_for_postgres(server)
        _create_database(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_postgres(server: Postgres) -> None:
    import psycopg

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise ServerError(f"PostgreSQL on {HOST}:{server.port} exited with code {server.process.returncode}: "
                              f"{_log_tail(server.log)}")
        try:
            psycopg.connect(server.uri("postgres"), connect_timeout=2).close()
            return
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise ServerError(f"PostgreSQL on {HOST}:{server.port} did not accept connections within "
                                  f"{STARTUP_TIMEOUT_S:.0f} s: {str(err).strip()}") from None
            time.sleep(0.2)


def _create_database(server: Postgres) -> None:
    import psycopg

    # autocommit: CREATE DATABASE cannot run inside a transaction
    with psycopg.connect(server.uri("postgres"), autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            connection.execute(f"CREATE DATABASE {DATABASE}")


@dataclass
class MlflowServer:
    """A running `mlflow server` that we started (stop it with `stop`)."""

    port: int
    process: subprocess.Popen
    log: Path

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def start_mlflow(backend_store_uri: str, artifacts_dir: Path, port: int | None = None, log: Path | None = None,
                 workers: int = 1, db_password: str | None = None) -> MlflowServer:
    """`mlflow server` on 127.0.0.1 with the given backend store and served artifacts in `artifacts_dir`.

    One web worker serves concurrent clients (MLflow runs its handlers in a thread pool); each extra
    worker is another process importing MLflow (about 1 s of CPU and 200 MB).
    """
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = log or artifacts_dir.parent / "mlflow-server.log"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    if db_password is not None:
        env["PGPASSWORD"] = db_password  # libpq reads it; a password in the URI would show in `ps`
    with open(log, "ab") as sink:
        # Its own process group, so that stopping it by its id also stops its web workers.
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
             "--serve-artifacts", "--artifacts-destination", str(artifacts_dir.resolve()),
             "--host", HOST, "--port", str(port), "--workers", str(workers)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = MlflowServer(port, process, log)
    try:
        _wait_for_mlflow(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_mlflow(server: MlflowServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise ServerError(f"mlflow server exited with code {server.process.returncode}: {_log_tail(server.log)}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server on {server.uri} did not answer within {STARTUP_TIMEOUT_S:.0f} s; "
                              f"see {server.log}")
        time.sleep(0.5)


def _password(state_dir: Path) -> str:
    path = state_dir / PASSWORD_FILE
    if not path.is_file():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def serve(state_dir: Path, port: int, pg_port: int | None, workers: int) -> None:
    """Start PostgreSQL and MLflow, wait until either stops or we are told to stop, stop both."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        state_dir.chmod(0o755)  # the postgres user must reach its cluster inside
    postgres = start_postgres(state_dir / "pgdata", _password(state_dir), pg_port, log=state_dir / "postgres.log")
    mlflow_server = None
    stop = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        mlflow_server = start_mlflow(postgres.uri(with_password=False), state_dir / "artifacts", port,
                                     log=state_dir / "mlflow-server.log", workers=workers,
                                     db_password=postgres.password)
        print(f"MLflow tracking server on {mlflow_server.uri} (PostgreSQL on {HOST}:{postgres.port}, artifacts in "
              f"{state_dir / 'artifacts'}, logs in {state_dir}).\n"
              f"Log to it: export MLFLOW_TRACKING_URI={mlflow_server.uri}   Stop: Ctrl-C", flush=True)
        while stop["signal"] is None and mlflow_server.process.poll() is None and postgres.process.poll() is None:
            time.sleep(0.5)
        if stop["signal"] is None:
            raise ServerError(f"a server stopped on its own; see {state_dir}/mlflow-server.log and postgres.log")
    finally:
        if mlflow_server:
            mlflow_server.stop()
        postgres.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR,
                        help="PostgreSQL cluster, artifacts and logs (default .mlflow-server/)")
    parser.add_argument("--port", type=int, default=5000, help="MLflow's port on 127.0.0.1 (default 5000)")
    parser.add_argument("--pg-port", type=int, default=None, help="PostgreSQL's port (default: a free one)")
    parser.add_argument("--workers", type=int, default=2, help="MLflow web worker processes (default 2)")
    args = parser.parse_args(argv)
    try:
        serve(args.state_dir, args.port, args.pg_port, args.workers)
    except VapmError as err:
        print(f"mlflow-server: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
