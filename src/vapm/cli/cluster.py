"""`vapm cluster start|stop|status|worker|env|slurm`: a Dask cluster for `compute.scheduler` (docs/scaling.md).

    vapm cluster start --workers 2     a scheduler and 2 one-thread workers on 127.0.0.1; prints the address
    vapm cluster status                the address and which of its processes are alive
    vapm cluster stop                  stops them, by the process ids in the state file
    vapm cluster worker ADDRESS        one worker (in the foreground) for a scheduler elsewhere: run it on another
                                       machine that sees the same files at the same paths
    vapm cluster env                   the environment lines such a worker needs when something else starts it
                                       (a SLURM job through dask-jobqueue, a Kubernetes pod): eval them first
    vapm cluster slurm --jobs N        a scheduler here and N one-worker SLURM jobs, until Ctrl-C (vapm.cli.slurm)

The state (address, process ids, log files) is in .vapm/cluster.json. Every process gets vapm's CPU-dispatch
pins and PYTHONPATH in its environment, so the workers import this vapm and compute the bytes a stage computes
here; a stage checks that before it sends any work (vapm.config.compute.worker_fingerprint).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from vapm.config.compute import ALLOCATOR_TUNING
from vapm.core.errors import VapmError, one_line
from vapm.core.processes import pid_alive

STATE = Path(".vapm/cluster.json")
START_SECONDS = 60


class ClusterError(VapmError, RuntimeError):
    """The local cluster could not be started or stopped as asked."""


def _dask() -> list[str]:
    """The `dask` command of this environment (beside this Python, else on PATH)."""
    beside = Path(sys.executable).with_name("dask")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("dask")
    if found is None:
        raise ClusterError("the `dask` command is not installed in this environment: run make setup")
    return [found]


def worker_environment() -> dict[str, str]:
    """This process's environment (which `import vapm` pinned), with vapm's source folder on PYTHONPATH, one
    thread per BLAS pool (a worker runs one task at a time; results do not depend on it) and the allocator tuned
    (vapm.config.compute.ALLOCATOR_TUNING)."""
    import vapm

    source = str(Path(vapm.__file__).resolve().parent.parent)
    environment = dict(os.environ)
    path = environment.get("PYTHONPATH", "")
    environment["PYTHONPATH"] = source if not path else f"{source}{os.pathsep}{path}"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        environment.setdefault(name, "1")
    for name, value in ALLOCATOR_TUNING.items():  # 2.5x less CPU per clip in featurize (vapm.config.compute)
        environment.setdefault(name, value)
    return environment


def worker_exports() -> str:
    """Shell lines that give a process started some other way (a batch job, a container) the environment of
    `worker_environment`: vapm's pins, its source on PYTHONPATH, one BLAS thread, the allocator's tuning. Run on
    the worker's own machine: the pins depend on its CPU."""
    import shlex

    from vapm.config.cpu_dispatch import OPT_OUT_VARIABLE, dispatch_pins

    environment = worker_environment()
    names = [*sorted(dispatch_pins().environment), "PYTHONPATH", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", *ALLOCATOR_TUNING, *([OPT_OUT_VARIABLE] if OPT_OUT_VARIABLE in environment else [])]
    return "\n".join(f"export {name}={shlex.quote(environment[name])}" for name in names)


def worker_command(address: str, host: str = "127.0.0.1") -> list[str]:
    # No nanny: each worker is one process, so its process id is the one that computes (and that `stop` ends).
    return [*_dask(), "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--host", host,
            "--no-dashboard", "--dashboard-address", f"{host}:0",  # its HTTP server (health) runs regardless
            "--name", f"vapm-{host}-{os.getpid()}-{time.monotonic_ns()}"]




def read_state(state: Path = STATE) -> dict | None:
    try:
        return json.loads(state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ClusterError(f"{state} is unreadable ({err}); remove it after stopping its processes by hand") from None


def start(workers: int, state: Path = STATE, host: str = "127.0.0.1") -> dict:
    """Start a scheduler and `workers` one-thread workers on `host` (a free port); write and return the state."""
    if workers < 1:
        raise ClusterError(f"--workers must be at least 1, got {workers}")
    previous = read_state(state)
    if previous is not None and any(pid_alive(pid) for pid in previous["pids"].values()):
        raise ClusterError(f"a cluster is running at {previous['address']} ({state}): vapm cluster stop first")
    state.parent.mkdir(parents=True, exist_ok=True)
    logs = state.parent / "cluster-logs"
    logs.mkdir(exist_ok=True)
    scheduler_file = state.parent / "cluster-scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    environment = worker_environment()
    pids: dict[str, int] = {}

    def spawn(name: str, command: list[str]) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=environment, start_new_session=True)
        pids[name] = process.pid

    try:
        spawn("scheduler", [*_dask(), "scheduler", "--host", host, "--port", "0", "--no-dashboard",
                            "--dashboard-address", f"{host}:0",
                            "--scheduler-file", str(scheduler_file)])
        address = _wait_for_address(scheduler_file, pids["scheduler"], logs / "scheduler.log")
        for number in range(1, workers + 1):
            spawn(f"worker-{number}", worker_command(address, host))
        _wait_for_workers(address, workers, pids, logs)
    except BaseException:
        stop_pids(pids)
        raise
    document = {"address": address, "pids": pids, "logs": str(logs), "workers": workers}
    state.write_text(json.dumps(document, indent=2) + "\n")
    return document


def _wait_for_address(scheduler_file: Path, pid: int, log: Path) -> str:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            pass
        if not pid_alive(pid):
            raise ClusterError(f"the Dask scheduler exited at start; its log: {log}")
        time.sleep(0.2)
    raise ClusterError(f"the Dask scheduler gave no address within {START_SECONDS} s; its log: {log}")


def _wait_for_workers(address: str, workers: int, pids: dict[str, int], logs: Path) -> None:
    from distributed import Client

    deadline = time.monotonic() + START_SECONDS
    with Client(address, timeout=START_SECONDS, set_as_default=False) as client:
        while len(client.scheduler_info()["workers"]) < workers:
            dead = [name for name, pid in pids.items() if not pid_alive(pid)]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited at start; see the logs in {logs}")
            if time.monotonic() > deadline:
                raise ClusterError(f"only {len(client.scheduler_info()['workers'])} of {workers} workers joined "
                                   f"within {START_SECONDS} s; see the logs in {logs}")
            time.sleep(0.2)


def stop_pids(pids: dict[str, int], grace: float = 10.0) -> list[str]:
    """SIGTERM each process (workers first), SIGKILL those left after `grace` seconds; the names it stopped."""
    order = sorted(pids, key=lambda name: name == "scheduler")
    stopped = []
    for name in order:
        try:
            os.kill(pids[name], signal.SIGTERM)
            stopped.append(name)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for name in order:
        while pid_alive(pids[name]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pids[name]):
            try:
                os.kill(pids[name], signal.SIGKILL)
            except ProcessLookupError:
                pass
    return stopped


def stop(state: Path = STATE) -> dict | None:
    document = read_state(state)
    if document is None:
        return None
    stop_pids({name: int(pid) for name, pid in document["pids"].items()})
    state.unlink(missing_ok=True)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm cluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start a scheduler and N workers on 127.0.0.1")
    start_parser.add_argument("--workers", type=int, default=2, metavar="N", help="one-thread workers (default 2)")
    commands.add_parser("stop", help="stop the cluster started here, by its process ids")
    commands.add_parser("status", help="the address and which processes are alive")
    worker_parser = commands.add_parser("worker", help="run one worker for a scheduler, in the foreground")
    worker_parser.add_argument("address", help="the scheduler, tcp://host:port")
    worker_parser.add_argument("--host", default="127.0.0.1", help="the address this worker listens on")
    commands.add_parser("env", help="print the environment a worker started by other means needs "
                                    "(eval \"$(vapm cluster env)\" in a batch job or container)")
    for sub in commands.choices.values():
        sub.add_argument("--state", type=Path, default=STATE, help=f"state file (default {STATE})")
    from vapm.cli import slurm

    slurm.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            document = start(args.workers, args.state)
            print(f"Dask cluster at {document['address']}: scheduler pid {document['pids']['scheduler']}, "
                  f"{document['workers']} worker(s); logs in {document['logs']}; state in {args.state}",
                  file=sys.stderr)
            print(f"use it: export DASK_SCHEDULER_ADDRESS={document['address']}   (stop: vapm cluster stop)",
                  file=sys.stderr)
            print(document["address"])
        elif args.command == "stop":
            document = stop(args.state)
            print(f"stopped the Dask cluster at {document['address']}" if document else
                  f"no cluster: {args.state} does not exist")
        elif args.command == "env":
            print(worker_exports())
        elif args.command == "slurm":
            return slurm.run(args.jobs, args.queue, args.memory, args.walltime, args.host, args.worker_host,
                             args.log_directory, args.job_directive)
        elif args.command == "status":
            document = read_state(args.state)
            if document is None:
                print(f"no cluster: {args.state} does not exist")
                return 1
            states = ", ".join(f"{name} {pid} {'alive' if pid_alive(pid) else 'gone'}"
                               for name, pid in document["pids"].items())
            print(f"{document['address']}: {states}")
        else:
            from vapm.config.settings import check_address

            try:
                check_address(args.address)
            except ValueError as err:
                raise ClusterError(f"{args.address!r} {err}") from None
            return subprocess.call(worker_command(args.address, args.host), env=worker_environment())
    except VapmError as err:
        print(f"cluster: {one_line(str(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
