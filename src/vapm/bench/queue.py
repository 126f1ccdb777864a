"""DVC's experiment queue: queue experiments, run them with N workers, wait; and a throughput benchmark.

    python -m vapm.bench.queue                       # = make bench-queue
    python -m vapm.bench.queue --vary acoustic_cnn.dropout=0.3,0.4,0.5,0.6 --jobs 1 2

The benchmark copies the working tree into `bench/queue/baseline/` and reproduces a small pipeline
there (`SMALL_BASELINE`); for each `--jobs` value it copies that baseline to `bench/queue/j<N>/`,
queues one experiment per `--vary` value and times `dvc queue start -j N` until every experiment is
done. Every copy starts from the same baseline, so DVC's run cache cannot skip work in one and not
in another. Writes `bench/queue.json`: wall
times, experiments per minute and the throughput ratio. A benchmark, not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from vapm.bench.pipeline import copy_worktree, git_commit, set_params
from vapm.core.processes import pid_alive

REPO_ROOT = Path.cwd()
# Small enough for minutes on 2 cores: the same scale as the test suite's tiny pipeline.
SMALL_BASELINE = {
    "sample_data.image_size": 64,
    "sample_data.train_per_class": 16,
    "sample_data.test_per_class": 6,
    "sample_data.clips_per_class": 12,
    "vision.image_size": 32,
    "train.epochs": 2,
    "train.batch_size": 16,
    "vision_transfer.input_size": 32,
    "vision_transfer.alpha": 0.35,
    "vision_transfer.weights": "none",
    "vision_transfer.fine_tune_epochs": 1,
    "acoustic_svm.C_grid": [0.1, 1.0],
    "acoustic_svm.cv_folds": 3,
    "vision_anomaly.input_size": 64,
}
DEFAULT_VARY = "acoustic_cnn.dropout=0.3,0.4,0.5,0.6"
POLL_S = 5.0
ACTIVE_STATES = ("Queued", "Running")


class QueueError(RuntimeError):
    """An experiment in the queue failed or the queue did not finish in time."""


@dataclass
class QueueResult:
    names: list[str]
    jobs: int
    wall_s: float          # from `dvc queue start` to the last experiment done
    statuses: dict[str, str]


def dvc(args: list[str], repo: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise QueueError(f"dvc {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def queue_experiment(repo: Path, name: str, settings: dict[str, object], env: dict[str, str] | None = None) -> None:
    """`dvc exp run --queue -S key=value ... --name name`."""
    args = ["exp", "run", "--queue", "--name", name]
    for key, value in settings.items():
        args += ["-S", f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"]
    dvc(args, repo, env)


def queue_statuses(repo: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed ...} from `dvc queue status`."""
    out = dvc(["queue", "status"], repo, env).stdout
    statuses = {}
    for line in out.splitlines():
        columns = line.split()
        # Task  Name  Created (1 to 3 words)  Status
        if len(columns) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", columns[0]):
            statuses[columns[1]] = columns[-1]
    return statuses


def run_queue(repo: Path, names: list[str], jobs: int, env: dict[str, str] | None = None,
              timeout: float = 1800) -> QueueResult:
    """`dvc queue start -j jobs`, then wait until none of `names` is queued or running."""
    start = time.perf_counter()
    dvc(["queue", "start", "-j", str(jobs)], repo, env)
    statuses = wait_for_queue(repo, names, env, timeout)
    wall = time.perf_counter() - start
    return QueueResult(names, jobs, wall, statuses)


def wait_for_queue(repo: Path, names: list[str], env: dict[str, str] | None = None,
                   timeout: float = 1800) -> dict[str, str]:
    """After `dvc queue start`: wait until none of `names` is queued or running, stop the workers, and return
    their statuses; QueueError (with their logs) unless all succeeded."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            statuses = queue_statuses(repo, env)
            pending = [n for n in names if statuses.get(n, "Queued") in ACTIVE_STATES]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise QueueError(f"experiments {pending} not done after {timeout:.0f} s: see `dvc queue logs <name>`")
            time.sleep(POLL_S)
    finally:
        stop_workers(repo, env)
    failed = {n: s for n, s in statuses.items() if n in names and s != "Success"}
    if failed:
        logs = {n: dvc(["queue", "logs", n], repo, env, check=False).stdout[-1500:] for n in failed}
        raise QueueError(f"queued experiments did not succeed: {failed}; logs: {logs}")
    return {n: statuses[n] for n in names}


def stop_workers(repo: Path, env: dict[str, str] | None = None, timeout: float = 30) -> None:
    """`dvc queue stop`, then any worker we started that is still alive, by its process id."""
    dvc(["queue", "stop"], repo, env, check=False)
    deadline = time.monotonic() + timeout
    for info in (repo / ".dvc" / "tmp" / "exps" / "run").glob("dvc-exp-worker-*/*.json"):
        try:
            pid = int(json.loads(info.read_text()).get("pid"))
        except (OSError, ValueError, TypeError):
            continue
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)




def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VAPM_NO_PROGRESS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    for name in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_ROOT"):
        env.pop(name, None)
    return env


def prepare_baseline(dest: Path, settings: dict[str, object], env: dict[str, str]) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    repo = copy_worktree(REPO_ROOT, dest)
    env = dict(env, PYTHONPATH=str(repo / "src"))
    set_params(repo / "params.yaml", settings)
    git_commit(repo, "queue benchmark baseline")
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise QueueError(f"baseline dvc repro failed: {proc.stderr.strip()[-2000:]}")
    git_commit(repo, "reproduced")
    return repo


def parse_vary(text: str) -> tuple[str, list[object]]:
    key, _, values = text.partition("=")
    if not key or not values:
        raise argparse.ArgumentTypeError(f"--vary wants key=v1,v2,...; got {text!r}")
    return key, [yaml.safe_load(v) for v in values.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vary", type=parse_vary, default=parse_vary(DEFAULT_VARY),
                        help=f"one queued experiment per value (default {DEFAULT_VARY})")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts to compare (default 1 2)")
    parser.add_argument("--work", type=Path, default=Path("bench/queue"), help="scratch folder (default bench/queue)")
    parser.add_argument("--out", type=Path, default=Path("bench/queue.json"))
    args = parser.parse_args(argv)
    key, values = args.vary
    env = bench_env()
    load_at_start = os.getloadavg()  # the machine may be shared: say how busy it was
    results = []
    baseline = prepare_baseline(args.work / "baseline", SMALL_BASELINE, env)
    for jobs in args.jobs:
        repo = args.work / f"j{jobs}"
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(baseline, repo, symlinks=True)
        # Its own MLflow store: the copied one records the baseline's folder as the artifact location.
        (repo / "mlflow.db").unlink(missing_ok=True)
        shutil.rmtree(repo / "mlruns", ignore_errors=True)
        run_env = dict(env, PYTHONPATH=str(repo / "src"))
        names = [f"q{i}" for i in range(len(values))]
        for name, value in zip(names, values):
            queue_experiment(repo, name, {key: value}, run_env)
        result = run_queue(repo, names, jobs, run_env)
        per_minute = len(names) / result.wall_s * 60
        print(f"-j {jobs}: {len(names)} experiments in {result.wall_s:.1f} s ({per_minute:.2f} per minute)", flush=True)
        results.append({"jobs": jobs, "experiments": len(names), "wall_s": round(result.wall_s, 1),
                        "experiments_per_minute": round(per_minute, 3)})
    report = {"vary": {key: values}, "baseline": SMALL_BASELINE, "cpu_count": os.cpu_count(),
              "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
              "poll_interval_s": POLL_S, "platform": platform.platform(), "results": results}
    if len(results) >= 2:
        report["throughput_ratio"] = round(results[-1]["experiments_per_minute"] / results[0]["experiments_per_minute"], 3)
        print(f"throughput -j {results[-1]['jobs']} / -j {results[0]['jobs']}: {report['throughput_ratio']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
