"""The PostgreSQL cluster behind the team's tracking server: found among Debian's packages, initialised once in
.mlflow-server/, started on 127.0.0.1 with a generated password, and its database created for MLflow."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vapm.tracking.processes import HOST, STARTUP_TIMEOUT_S, ServerError, free_port, log_tail, stop_process

DATABASE = "mlflow"
DB_ROLE = "mlflow"



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
                              f"{log_tail(server.log)}")
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
