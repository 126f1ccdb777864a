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
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vapm.core.errors import VapmError
from vapm.tracking.postgres import start_postgres
from vapm.tracking.processes import HOST, STARTUP_TIMEOUT_S, ServerError, free_port, log_tail, stop_process

STATE_DIR = Path(".mlflow-server")
PASSWORD_FILE = "db-password"


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
            raise ServerError(f"mlflow server exited with code {server.process.returncode}: {log_tail(server.log)}")
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
