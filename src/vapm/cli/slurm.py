"""`vapm cluster slurm`: a Dask cluster whose workers are SLURM jobs (dask-jobqueue), for `compute.scheduler`.

    vapm cluster slurm --jobs 8 --queue compute --memory 4GiB --walltime 02:00:00
    # prints tcp://<this host>:<port>; in another shell: export DASK_SCHEDULER_ADDRESS=<it>; dvc repro
    # Ctrl-C (or SIGTERM) closes the cluster: the jobs are cancelled

The scheduler runs in this process (keep it running while stages use it); each job runs one one-thread worker.
A job starts with `--export=NONE` and `eval "$(vapm cluster env)"` on its own node, so it has that CPU's pins,
vapm's source on PYTHONPATH and the allocator settings, whatever the submitting shell had (a stage refuses a worker
without them: vapm.config.compute.worker_fingerprint). Nodes need this repository and its `.venv` at the same
path (shared storage), as docs/scaling.md says.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from vapm.core.errors import VapmError


class SlurmError(VapmError, RuntimeError):
    """dask-jobqueue is missing, or SLURM refused the jobs."""


def job_settings(jobs: int, queue: str | None, memory: str, walltime: str, host: str | None,
                 worker_host: str | None, log_directory: Path, directives: list[str]) -> dict[str, Any]:
    """SLURMCluster's keyword arguments: one single-thread worker per job, started with vapm's environment."""
    if jobs < 1:
        raise SlurmError(f"--jobs must be at least 1, got {jobs}")
    vapm_command = Path(sys.executable).with_name("vapm")
    worker_args = ["--host", worker_host, "--dashboard-address", f"{worker_host}:0"] if worker_host else []
    scheduler: dict[str, Any] = {"host": host, "dashboard_address": f"{host}:0"} if host else {}
    return dict(cores=1, processes=1, memory=memory, walltime=walltime, queue=queue, python=sys.executable,
                scheduler_options=scheduler, worker_extra_args=worker_args,
                job_extra_directives=["--export=NONE", *directives],
                job_script_prologue=[f'eval "$({vapm_command} cluster env)"'],
                log_directory=str(log_directory), job_name="vapm-dask")


def run(jobs: int, queue: str | None, memory: str, walltime: str, host: str | None, worker_host: str | None,
        log_directory: Path, directives: list[str]) -> int:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SlurmError("dask-jobqueue is not installed: pip install dask-jobqueue (or make setup)") from None
    log_directory.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        cluster = SLURMCluster(**job_settings(jobs, queue, memory, walltime, host, worker_host, log_directory,
                                              directives))
    except Exception as err:  # noqa: BLE001 - a scheduler that cannot start, a bad option: one line
        raise SlurmError(f"cannot start the scheduler: {type(err).__name__}: {err}") from None
    try:
        cluster.scale(jobs=jobs)
        print(cluster.scheduler_address, flush=True)
        print(f"Dask scheduler at {cluster.scheduler_address}, {jobs} SLURM job(s) submitted (job logs in "
              f"{log_directory}); use it: export DASK_SCHEDULER_ADDRESS={cluster.scheduler_address}; "
              "Ctrl-C closes it and cancels the jobs", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        cluster.close()
    print("closed the cluster; its SLURM jobs are cancelled", file=sys.stderr)
    return 0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("slurm", help="a scheduler here and N one-worker SLURM jobs (dask-jobqueue), "
                                               "until Ctrl-C")
    parser.add_argument("--jobs", type=int, default=2, metavar="N", help="SLURM jobs, one worker each (default 2)")
    parser.add_argument("--queue", help="the SLURM partition (default: the cluster's default)")
    parser.add_argument("--memory", default="4GiB", help="memory per job (default 4GiB)")
    parser.add_argument("--walltime", default="01:00:00", help="time limit per job (default 01:00:00)")
    parser.add_argument("--host", help="the address the scheduler listens on (default: this host's)")
    parser.add_argument("--worker-host", help="the address each worker listens on (default: its node's)")
    parser.add_argument("--log-directory", type=Path, default=Path(".vapm/slurm-logs"),
                        help="where the jobs' output goes (default .vapm/slurm-logs)")
    parser.add_argument("--job-directive", action="append", default=[], metavar="OPTION",
                        help="a further #SBATCH option, e.g. --job-directive=--account=plant (repeatable)")
