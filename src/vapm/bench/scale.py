"""Benchmark: how time and memory grow with the data, and what a second Dask worker buys.

    python -m vapm.bench.scale                       # N: 156 clips and 100 images per class; then 4N
    make bench-scale SCALE_ARGS="--clips-per-class 40 --images-per-class 20"

Builds synthetic datasets of N and FACTOR x N files with the sample_data stage (8 compressor states, 6 steel
classes), each in its own scratch copy of the repository, and times ingest, featurize and one epoch of each neural
classifier of the sample data (`dvc repro --single-item --force`), with the peak resident memory of each stage's
process. At FACTOR x N it then runs featurize on a local Dask cluster (`vapm cluster start`) with one worker and
with two. The defaults make the decoded arrays at 4N about 1.1 GB (5,000 clips of 50,000 float32 samples and
2,400 grey 200 x 200 images).

Reports, side by side, the wall time and peak memory per stage at N and 4N, their ratios, and the speed-up of two
workers over one, against the targets of docs/scaling.md (memory at 4N within 10 % of N's, time at most 4.4 x, two
workers at least 1.7 x faster on featurize). A benchmark, not a test: the defaults take about 10 minutes on
2 cores. Each Dask setting runs --repeats times and its median counts. Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vapm.bench.pipeline import REPO_ROOT, bench_environment, copy_worktree, git_commit, set_params
from vapm.bench.results import write_report
from vapm.bench.timing import timed_run
from vapm.core.hashing import files_sha256

TIMED_STAGES = ("ingest", "featurize", "train@acoustic_cnn", "train@vision_scratch")
MEMORY_TARGET = 1.10  # peak RSS at FACTOR x N over that at N
TIME_TARGET_PER_FACTOR = 1.1  # wall time at FACTOR x N at most 1.1 x FACTOR that at N
WORKER_TARGET = 1.7  # featurize with two Dask workers against one
DECODED = ("data/interim/acoustic/clips.npy", "data/interim/vision/pixels.npy")


def size_params(clips_per_class: int, images_per_class: int, epochs: int) -> dict[str, Any]:
    """The sample data's size, one epoch, and limits wide enough for the largest dataset measured."""
    test = max(1, images_per_class // 5)
    return {"sample_data.clips_per_class": clips_per_class,
            "sample_data.train_per_class": images_per_class - test,
            "sample_data.test_per_class": test,
            "vision_scratch.train.epochs": epochs,
            "acoustic_cnn.train.epochs": epochs,
            # the .dat text of 5,000 clips unpacks to about 2.5 GB, their decoded samples to 1 GB
            "ingest.max_uncompressed_mb": 65536,
            "ingest.max_total_decoded_mb": 65536}


def environment(repo: Path) -> dict[str, str]:
    """The pipeline benchmark's pinned environment, and no cluster: featurize_on_cluster names one when wanted."""
    env = bench_environment(repo, pin=True)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def decoded_mb(repo: Path) -> float:
    return round(sum((repo / name).stat().st_size for name in DECODED if (repo / name).is_file()) / 1e6, 1)


def measure_size(source: Path, folder: Path, changes: dict[str, Any], log) -> tuple[Path, dict[str, Any]]:
    """A scratch copy with `changes`, its sample data built, then every timed stage forced in DAG order."""
    if folder.exists():
        shutil.rmtree(folder)
    repo = copy_worktree(source, folder)
    set_params(repo / "params.yaml", changes)
    git_commit(repo, "scale benchmark params")
    env = environment(repo)
    print(f"[scale] {folder.name}: building the sample data ...", flush=True)
    built = timed_run(["dvc", "repro", "--single-item", "sample_data"], repo, env, log)
    stages: dict[str, dict[str, float]] = {}
    for stage in TIMED_STAGES:
        print(f"[scale] {folder.name}: {stage} ...", flush=True)
        stages[stage] = timed_run(["dvc", "repro", "--single-item", "--force", stage], repo, env, log)
        print(f"[scale] {folder.name}: {stage}: {stages[stage]['wall_s']:.1f} s, "
              f"peak {stages[stage]['peak_rss_mb']:.0f} MB", flush=True)
    return repo, {"params": changes, "sample_data": built, "decoded_mb": decoded_mb(repo), "stages": stages,
                  "total_wall_s": round(sum(t["wall_s"] for t in stages.values()), 1)}


def features_digest(repo: Path) -> str:
    """SHA-256 over the names and bytes of every file featurize wrote, to compare a cluster run with the local one."""
    import hashlib

    files = sorted(p for p in (repo / "data" / "features").rglob("*") if p.is_file())
    names = "\0".join(str(p.relative_to(repo)) for p in files).encode()
    return hashlib.sha256(names + files_sha256(files).encode()).hexdigest()


def featurize_on_cluster(repo: Path, workers: int, log, repeats: int = 1) -> dict[str, Any]:
    """featurize forced `repeats` times, its per-clip work on a fresh local Dask cluster of `workers` one-thread
    workers: the median wall time (runs of one setting differed by up to 20 % on the 2-core machine), every run's,
    and the largest peak memory."""
    env = environment(repo)
    state = repo / ".vapm" / f"scale-cluster-{workers}.json"
    started = subprocess.run([sys.executable, "-m", "vapm", "cluster", "start", "--workers", str(workers),
                              "--state", str(state)], cwd=repo, env=env, check=True, capture_output=True,
                             text=True)
    address = started.stdout.strip().splitlines()[-1]
    try:
        runs = [timed_run(["dvc", "repro", "--single-item", "--force", "featurize"], repo,
                          dict(env, DASK_SCHEDULER_ADDRESS=address), log) for _ in range(repeats)]
        walls = [run["wall_s"] for run in runs]
        return {"wall_s": float(np.median(walls)), "runs_wall_s": walls,
                "peak_rss_mb": max(run["peak_rss_mb"] for run in runs), "features_digest": features_digest(repo)}
    finally:
        subprocess.run([sys.executable, "-m", "vapm", "cluster", "stop", "--state", str(state)], cwd=repo, env=env,
                       check=False, capture_output=True)


def compare(result: dict[str, Any], factor: int) -> dict[str, Any]:
    """Per stage: the ratios of wall time and peak memory (FACTOR x N over N) and whether the targets hold."""
    small, large = result["sizes"]["n"]["stages"], result["sizes"][f"{factor}n"]["stages"]
    rows = {}
    for stage in TIMED_STAGES:
        time_ratio = large[stage]["wall_s"] / max(small[stage]["wall_s"], 1e-9)
        memory_ratio = large[stage]["peak_rss_mb"] / max(small[stage]["peak_rss_mb"], 1e-9)
        rows[stage] = {"time_ratio": round(time_ratio, 2), "memory_ratio": round(memory_ratio, 2),
                       "time_met": time_ratio <= TIME_TARGET_PER_FACTOR * factor,
                       "memory_met": memory_ratio <= MEMORY_TARGET}
    return rows


def markdown(result: dict[str, Any]) -> str:
    factor = result["factor"]
    small, large = result["sizes"]["n"], result["sizes"][f"{factor}n"]
    lines = [f"Scale: N and {factor}N files ({small['files']} and {large['files']}; decoded arrays "
             f"{small['decoded_mb']:.0f} MB and {large['decoded_mb']:.0f} MB), {result['cpus']} CPUs, load average "
             f"at start {result['load_average_start'][0]:.2f}",
             "",
             f"| stage | wall N (s) | wall {factor}N (s) | ratio (target <= {TIME_TARGET_PER_FACTOR * factor:.1f}) "
             f"| peak RSS N (MB) | peak RSS {factor}N (MB) | ratio (target <= {MEMORY_TARGET:.2f}) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for stage, row in result["ratios"].items():
        lines.append(f"| {stage} | {small['stages'][stage]['wall_s']:.1f} | {large['stages'][stage]['wall_s']:.1f} "
                     f"| {row['time_ratio']:.2f} {'met' if row['time_met'] else '**not met**'} "
                     f"| {small['stages'][stage]['peak_rss_mb']:.0f} | {large['stages'][stage]['peak_rss_mb']:.0f} "
                     f"| {row['memory_ratio']:.2f} {'met' if row['memory_met'] else '**not met**'} |")
    lines.append(f"| **ingest + featurize + one epoch** | **{small['total_wall_s']:.1f}** | "
                 f"**{large['total_wall_s']:.1f}** | {large['total_wall_s'] / small['total_wall_s']:.2f} | | | |")
    if result.get("dask"):
        dask = result["dask"]
        lines += ["", f"featurize at {factor}N on a local Dask cluster (`vapm cluster start`, one-thread workers):", "",
                  "| workers | wall, median (s) | each run (s) | stage's peak RSS (MB) |", "|---:|---:|---|---:|"]
        for workers in ("1", "2"):
            runs = ", ".join(f"{wall:.1f}" for wall in dask[workers]["runs_wall_s"])
            lines.append(f"| {workers} | {dask[workers]['wall_s']:.1f} | {runs} | {dask[workers]['peak_rss_mb']:.0f} |")
        lines.append(f"| speed-up | {dask['speedup']:.2f} x (target >= {WORKER_TARGET}: "
                     f"{'met' if dask['speedup_met'] else '**not met**'}) | | |")
        lines += ["", "The features written on the cluster are " +
                  ("the same bytes as the local run's." if dask["same_bytes_as_local"] else
                   "**not** the same bytes as the local run's.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-class", type=int, default=156, help="clips per compressor state at N (156)")
    parser.add_argument("--images-per-class", type=int, default=100, help="images per steel class at N (100)")
    parser.add_argument("--factor", type=int, default=4, help="the larger dataset is FACTOR x N (4)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each neural classifier (1)")
    parser.add_argument("--no-dask", action="store_true", help="skip featurize on one and on two Dask workers")
    parser.add_argument("--repeats", type=int, default=3, help="featurize runs per Dask cluster; the median counts (3)")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="the working tree to copy (this one)")
    parser.add_argument("--workdir", type=Path, default=Path("bench/scale"))
    parser.add_argument("--out", type=Path, default=Path("bench/scale-results"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if min(args.clips_per_class, args.images_per_class, args.epochs, args.repeats) < 1 or args.images_per_class < 2 \
            or args.factor < 2:
        parser.error("--clips-per-class, --epochs and --repeats must be at least 1, --images-per-class and --factor "
                     "at least 2")

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"factor": args.factor, "cpus": os.cpu_count(), "platform": platform.platform(),
                              "load_average_start": list(os.getloadavg()), "sizes": {}}
    started = time.perf_counter()
    with args.out.with_suffix(".log").open("w") as log:
        repo = None
        for name, multiple in (("n", 1), (f"{args.factor}n", args.factor)):
            clips, images = args.clips_per_class * multiple, args.images_per_class * multiple
            repo, measured = measure_size(args.source, args.workdir / name,
                                          size_params(clips, images, args.epochs), log)
            result["sizes"][name] = {"files": clips * 8 + images * 6, **measured}
        result["ratios"] = compare(result, args.factor)
        if not args.no_dask and repo is not None:
            local = features_digest(repo)
            dask: dict[str, Any] = {}
            for workers in (1, 2):
                print(f"[scale] featurize at {args.factor}N on {workers} Dask worker(s) ...", flush=True)
                dask[str(workers)] = featurize_on_cluster(repo, workers, log, args.repeats)
            dask["speedup"] = round(dask["1"]["wall_s"] / max(dask["2"]["wall_s"], 1e-9), 2)
            dask["speedup_met"] = dask["speedup"] >= WORKER_TARGET
            dask["same_bytes_as_local"] = all(dask[w]["features_digest"] == local for w in ("1", "2"))
            result["dask"] = dask
    result["load_average_end"] = list(os.getloadavg())
    result["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    write_report(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
