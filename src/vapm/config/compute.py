"""Where the heavy per-file and per-fold work runs: local worker processes, or a Dask cluster.

`Executor(n_jobs, scheduler)` maps a top-level function over tasks and yields the results in input order:

- no scheduler (params.yaml `compute.scheduler` empty and no `DASK_SCHEDULER_ADDRESS`): `n_jobs` spawned local
  processes (or this process when n_jobs is 1), as before;
- a scheduler address (`tcp://host:8786`): a `distributed.Client`, and the cluster's workers compute.

Either way the caller (the stage) receives the results in order and writes the outputs, so they are the same
bytes wherever they were computed. Tasks carry references (an archive's path and its members' directory
entries, a .npy path and a row range), never file contents: a worker reads the files itself, so it needs the
same files at the same absolute paths (shared storage) and the same vapm, libraries and CPU-dispatch pins
(checked before any work is sent: `worker_fingerprint`).

When a worker dies, the scheduler runs its tasks again on another worker (the results do not depend on where
a task ran); when a task killed its workers `distributed.scheduler.allowed-failures` times, or no worker is
left for NO_WORKER_SECONDS, the stage fails with one line (`ComputeError`) and, as on any failure, writes nothing.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from importlib.util import find_spec
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from vapm.config.settings import check_address
from vapm.core.errors import VapmError

T = TypeVar("T")
R = TypeVar("R")

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_SECONDS = 20        # to reach the scheduler
NO_WORKER_SECONDS = 60      # a cluster with no worker for this long fails the stage instead of waiting forever
POLL_SECONDS = 2.0


class ComputeError(VapmError, RuntimeError):
    """The cluster could not be reached, has no workers, runs other code, or lost a task."""


# glibc's allocator returns every freed block above 128 KiB to the system at once and maps the next one afresh, so
# a process that makes and drops arrays of a few MB per item (featurize's spectrograms: a 1025 x 98 power array
# per clip) spends most of its time in page faults: measured 10-12 ms of CPU per clip in a fresh worker process
# against 4.2 ms with these two settings (the same bytes out). Setting either one also turns off glibc's own
# adjustment of them, so both are set. A process keeps up to the trim threshold of freed memory for reuse.
# Arrow's own default allocator (mimalloc) keeps what a parquet read freed: reading a 216 KB manifest left 18 MB
# resident at 1,848 files and 28 MB at 7,392 (`make bench-scale`); on glibc's, 14 and 16.
ARROW_POOL = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
ALLOCATOR_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20), **ARROW_POOL}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def arrow_on_system_allocator() -> None:
    """ARROW_POOL for this process and those it starts (a value the user set stays)."""
    for name, value in ARROW_POOL.items():
        os.environ.setdefault(name, value)
    if os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system":  # Arrow reads the variable once, maybe already did
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def tune_allocator(environ: dict[str, str] | None = None) -> bool:
    """ALLOCATOR_TUNING for the worker processes this process starts (their environment; a value the user set
    stays) and, through glibc's mallopt and pyarrow's set_memory_pool, for this process (only when `environ` is this
    process's own). False where the C library has no mallopt."""
    own = environ is None
    environ = os.environ if environ is None else environ
    for name, value in ALLOCATOR_TUNING.items():
        environ.setdefault(name, value)
    if not own:
        return False
    arrow_on_system_allocator()
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(environ["MALLOC_MMAP_THRESHOLD_"]))) and \
        bool(mallopt(_M_TRIM_THRESHOLD, int(environ["MALLOC_TRIM_THRESHOLD_"])))


def scheduler_address(configured: str | None) -> str | None:
    """The scheduler to use: params.yaml's compute.scheduler, else $DASK_SCHEDULER_ADDRESS, else None (local)."""
    if configured:
        return configured
    from_env = os.environ.get(SCHEDULER_ENV, "").strip()
    if not from_env:
        return None
    try:
        return check_address(from_env)
    except ValueError as err:
        raise ComputeError(f"{SCHEDULER_ENV}={from_env!r} {err}") from None


def worker_fingerprint() -> dict[str, str]:
    """What decides a worker's bytes: vapm's source (a SHA-256 over its files' names and bytes), the versions of
    the libraries that compute, and the CPU-dispatch pins in effect (vapm.config.cpu_dispatch).

    A worker whose fingerprint differs from the stage's would compute other bytes: `connect` refuses it."""
    from importlib.metadata import PackageNotFoundError, version

    from vapm.config.cpu_dispatch import _numpy_dispatch

    digest = hashlib.sha256()
    root = Path(find_spec("vapm").origin).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    fingerprint = {"vapm source sha256": digest.hexdigest()}
    for package in ("numpy", "scipy", "pillow", "soundfile", "soxr", "PyWavelets", "scikit-learn",
                    "tensorflow-cpu", "tensorflow", "keras"):
        try:
            fingerprint[package] = version(package)
        except PackageNotFoundError:
            fingerprint[package] = "absent"
    fingerprint.update(_effective_pins())
    fingerprint["NumPy dispatch"] = str(_numpy_dispatch())
    return fingerprint


def _effective_pins() -> dict[str, str]:
    """The CPU-dispatch variables as NumPy and TensorFlow saw them when they loaded: this environment's, or, when
    they loaded before vapm could pin (a `dask worker` imports NumPy first), the environment the process started
    with (Linux: /proc/self/environ). A worker started without the pins in its environment thus differs."""
    from vapm.config.cpu_dispatch import ALWAYS_PINNED, OPT_OUT_VARIABLE, dispatch_pins

    environment: Any = os.environ
    if dispatch_pins().loaded_too_early:
        try:
            raw = Path("/proc/self/environ").read_bytes().decode(errors="replace")
            environment = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        except OSError:
            pass
    return {f"${name}": environment.get(name, "") for name in (*ALWAYS_PINNED, "OPENBLAS_CORETYPE", OPT_OUT_VARIABLE)}


class Executor:
    """Maps a function over tasks in input order: locally in `n_jobs` processes, or on a Dask cluster.

    Local workers are spawned, not forked: forking a process that has started threads (TensorFlow in a test
    session, tqdm's monitor) can deadlock. Spawning costs a second or two of imports per worker, so callers use
    them only for work that takes much longer. At most two tasks per worker (local process or cluster thread)
    are in flight, which bounds the memory held by results waiting to be consumed. `fresh_process`: one new
    local process per task (the folds of `vapm crossval`); a cluster's workers are long-lived processes.
    """

    def __init__(self, n_jobs: int = 1, scheduler: str | None = None, fresh_process: bool = False,
                 what: str = "tasks"):
        self.n_jobs = max(1, n_jobs)
        self.scheduler = scheduler
        self.fresh_process = fresh_process
        self.what = what
        self._pool: ProcessPoolExecutor | None = None
        self._client: Any = None

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None

    @property
    def workers(self) -> int:
        """Tasks that run at once: the cluster's worker threads, or the local processes (1: this process)."""
        if self._client is not None:
            return max(1, sum(worker["nthreads"] for worker in self._client.scheduler_info()["workers"].values()))
        return self.n_jobs

    def __enter__(self) -> "Executor":
        if self.scheduler is not None:
            self._client = connect(self.scheduler)
        elif self.n_jobs > 1:
            self._pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                             max_tasks_per_child=1 if self.fresh_process else None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def map(self, function: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        if self._client is not None:
            yield from self._map_distributed(function, tasks)
            return
        if self._pool is None:
            yield from map(function, tasks)
            return
        in_flight: deque[Future[R]] = deque()
        pending = iter(tasks)
        for task in islice(pending, 2 * self.n_jobs):
            in_flight.append(self._pool.submit(function, task))
        while in_flight:
            result = in_flight.popleft().result()
            for task in islice(pending, 1):
                in_flight.append(self._pool.submit(function, task))
            yield result

    def _map_distributed(self, function: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        client = self._client
        in_flight: deque[Any] = deque()
        pending = iter(tasks)
        try:
            for task in islice(pending, 2 * self.workers):
                in_flight.append(client.submit(function, task, pure=False))
            while in_flight:
                result = self._result(in_flight[0])
                in_flight.popleft()
                for task in islice(pending, 1):
                    in_flight.append(client.submit(function, task, pure=False))
                yield result
        finally:
            for future in in_flight:
                future.cancel()

    def _result(self, future: Any) -> Any:
        """The task's result, its own exception re-raised, or ComputeError when the cluster cannot give one."""
        from distributed import TimeoutError as DaskTimeout
        from distributed.scheduler import KilledWorker

        alone_since: float | None = None
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except (DaskTimeout, TimeoutError):
                pass
            except KilledWorker as err:
                raise ComputeError(f"Dask cluster {self.scheduler}: {self.what}: a task's workers died repeatedly "
                                   f"({err}); check the workers' memory and logs") from None
            except Exception as err:
                if future.status in ("cancelled", "lost") or type(err).__name__ == "CancelledError":
                    raise ComputeError(f"Dask cluster {self.scheduler}: {self.what}: lost the scheduler or the "
                                       f"task ({type(err).__name__}: {err})") from None
                raise
            try:
                workers = self._client.scheduler_info()["workers"]
            except Exception as err:  # noqa: BLE001 - the scheduler went away
                raise ComputeError(f"Dask cluster {self.scheduler}: {self.what}: lost the scheduler "
                                   f"({type(err).__name__}: {err})") from None
            if workers:
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > NO_WORKER_SECONDS:
                raise ComputeError(f"Dask cluster {self.scheduler}: {self.what}: no worker for "
                                   f"{NO_WORKER_SECONDS} s; start workers (vapm cluster start) or unset the scheduler")


def connect(address: str, timeout: float = CONNECT_SECONDS) -> Any:
    """A `distributed.Client` of the scheduler at `address`, with at least one worker that runs this vapm."""
    try:
        from distributed import Client
    except ImportError as err:  # a dependency of vapm, so only a broken environment gets here
        raise ComputeError(f"a Dask scheduler is set ({address}) but the distributed package is missing: {err}") \
            from None
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ComputeError(f"cannot reach the Dask scheduler at {address} (compute.scheduler or {SCHEDULER_ENV}): "
                           f"{type(err).__name__}: {err}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=NO_WORKER_SECONDS)
        except (TimeoutError, OSError) as err:
            raise ComputeError(f"the Dask scheduler at {address} has no worker after {NO_WORKER_SECONDS} s "
                               f"({type(err).__name__}); start some (vapm cluster start)") from None
        here = worker_fingerprint()
        for worker, there in sorted(client.run(worker_fingerprint).items()):
            differ = [f"{key} {there.get(key)!r} (here {value!r})" for key, value in here.items()
                      if there.get(key) != value]
            if differ:
                raise ComputeError(f"Dask worker {worker} would compute other bytes than this stage: "
                                   f"{'; '.join(differ[:3])}; start workers from the same revision and environment "
                                   "with `vapm cluster worker ADDRESS` (docs/scaling.md)")
    except BaseException:
        client.close()
        raise
    return client


def executor(n_jobs: int, scheduler: str | None, **options: Any) -> Executor:
    """An Executor for the configured scheduler (compute.scheduler / $DASK_SCHEDULER_ADDRESS), else local."""
    return Executor(n_jobs, scheduler_address(scheduler), **options)
