"""Benchmark: run the pipeline on given archives (or the demo's sample data) in a scratch copy of the repo,
timing every stage; optionally a roofline of every Keras model and the book's training loops side by side.

    python -m vapm.bench --vision-archive ../shared/data/NEU-data-TrainTest.zip \\
        --acoustic-archive ../shared/data/AirCompressor_Data_wav_subset.zip --preset presets/real-data.yaml
    python -m vapm.bench --skip-pipeline --roofline --compare-book --pairs 3 --epochs 2    # demo sample data

Writes one JSON (stage wall times, peak memory, every model's accuracy; the roofline and the ratios against the
book's code when asked) and markdown tables. Every process it starts runs with the CPU-dispatch pins of
`PINNED_ENV` (oneDNN capped at AVX2, NumPy without AVX-512, OpenBLAS as Haswell) and `compute.threads`
threads, as the stages will; `--no-pin` leaves the environment as it is. Not a test: real runs take tens of
minutes, and on a shared machine only the alternated, repeated measurements mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vapm.bench.epochs import Runs, compare, roofline
from vapm.bench.results import markdown_table, write_results
from vapm.bench.timing import timed_run
from vapm.config.model_registry import load_registry
from vapm.config.presets import load_preset
from vapm.core.mappings import flatten

REPO_ROOT = Path.cwd()

# CPU dispatch pinned for cross-machine identity: what the stages run with by default (the compute settings).
PINNED_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL "
                                "AVX512_ICL AVX512_SPR",
    "OPENBLAS_CORETYPE": "Haswell",
}


def bench_environment(repo: Path, pin: bool) -> dict[str, str]:
    """What the benchmarked commands run with: this Python's tools first, the copy's source, no progress bars, the
    repository's own MLflow store, and the CPU-dispatch pins unless `pin` is False."""
    env = dict(os.environ, VAPM_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(repo.resolve() / "src"))
    env.pop("MLFLOW_TRACKING_URI", None)
    if pin:
        env.update(PINNED_ENV)
    return env


def worktree_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a clone plus local edits would hold."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=root, check=True, capture_output=True, text=True).stdout
    return [name for name in out.split("\0") if name and (root / name).is_file()]


def copy_worktree(root: Path, dest: Path) -> Path:
    """Copy the working tree into `dest` and commit it there, so DVC sees a clean git repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in worktree_files(root):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    git_commit(dest, "copy of the working tree")
    return dest


def git_commit(repo: Path, message: str) -> None:
    git = ["git", "-c", "user.name=vapm", "-c", "user.email=vapm@localhost"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", message, "--allow-empty"], cwd=repo, check=True)


def set_params(params_file: Path, changes: dict[str, Any]) -> None:
    """Set dotted keys in a params.yaml, every key existing already, the way `dvc exp run -S` does: through
    DVC's round-trip YAML writer, so comments and layout stay and each change is one line."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params_file) as params:
        for dotted, value in changes.items():
            node = params
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            if leaf not in node:
                raise KeyError(f"{params_file} has no {dotted}")
            node[leaf] = value


def pipeline_stages(repo: Path, env: dict[str, str]) -> list[str]:
    """Stage names (foreach stages expanded) in dvc.yaml order, which is the DAG's order."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=repo, env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-archive", type=Path,
                        help="NEU archive (default: the demo's sample data, built by the sample_data stage)")
    parser.add_argument("--acoustic-archive", type=Path,
                        help="compressor archive (default: the demo's sample data)")
    parser.add_argument("--preset", type=Path,
                        help="params preset (default: presets/real-data.yaml with archives, none for the sample data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="extra param overrides after the preset, e.g. --set train.epochs=3")
    parser.add_argument("--crossval", action="store_true",
                        help="also run the k-fold evaluation `vapm crossval` (the models in crossval.models)")
    # 3, not vapm bench-predict's 5: here the cold starts are one part of a whole-pipeline run (7 models x 2
    # runtimes, a Keras start 6-8 s); `vapm bench-predict` is the reference measurement of them
    parser.add_argument("--cold-start-runs", type=int, default=3, metavar="N",
                        help="cold predict runs per model and runtime (3; their median is reported)")
    parser.add_argument("--skip-pipeline", action="store_true",
                        help="do not time every stage: only build the features the roofline and comparison need")
    parser.add_argument("--roofline", action="store_true",
                        help="matmul peak, FLOPs per epoch and achieved GFLOP/s of every registered Keras model")
    parser.add_argument("--compare-book", action="store_true",
                        help="the book notebooks' training loops against vapm's, alternated, --pairs times")
    parser.add_argument("--before-after", action="store_true",
                        help="vapm's fit as it was (Keras's own Adam) against vapm's, alternated, --pairs times")
    parser.add_argument("--pairs", type=int, default=3, help="alternated pairs per comparison (default 3)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per phase in the roofline and comparisons; the first is warm-up (default 3)")
    parser.add_argument("--models", help="comma-separated registered models (default: every Keras model)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the CPU dispatch (PINNED_ENV)")
    parser.add_argument("--source", type=Path, default=REPO_ROOT,
                        help="the working tree to copy and measure (default: this one)")
    parser.add_argument("--workdir", type=Path, default=Path("bench/work"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    for archive in (args.vision_archive, args.acoustic_archive):
        if archive is not None and not archive.is_file():
            parser.error(f"archive {archive} not found")
    if args.pairs < 1 or args.epochs < 1:
        parser.error("--pairs and --epochs must be at least 1")
    sample_data = args.vision_archive is None or args.acoustic_archive is None
    preset = args.preset or (None if sample_data else Path("presets/real-data.yaml"))
    if preset is not None and not preset.is_file() and (args.source / preset).is_file():
        preset = args.source / preset
    changes = load_preset(preset) if preset else {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes.update(flatten({key: yaml.safe_load(value)}))
    # The copy has no data/sample when archives are given (sample_data is not run): anomaly_data reads the NEU one too.
    for key, archive in (("ingest.vision_archive", args.vision_archive), ("anomaly_data.archive", args.vision_archive),
                         ("ingest.acoustic_archive", args.acoustic_archive)):
        if archive is not None:
            changes[key] = "data/raw/" + archive.name
    if args.vision_archive is not None:
        # The sample anomaly archive's defect-free class is not one of the archive's: unset, the detector takes the
        # class with the most train images as normal (a preset or --set may name one).
        changes.setdefault("vision_anomaly.normal_class", None)

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    repo = copy_worktree(args.source, args.workdir)
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for archive in (args.vision_archive, args.acoustic_archive):
        if archive is not None:
            shutil.copy2(archive, raw / archive.name)
    if changes:
        set_params(repo / "params.yaml", changes)
    git_commit(repo, "benchmark params")

    env = bench_environment(repo, pin=not args.no_pin)
    result: dict[str, Any] = {"preset": str(preset) if preset else None, "overrides": changes,
                              "data": "sample" if sample_data else "archives", "machine": machine_facts(),
                              "pinned_env": {} if args.no_pin else PINNED_ENV, "stages": {}}
    log_path = args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        if not args.skip_pipeline:
            run_pipeline(repo, env, log, result, sample_data, args.crossval, args.out, args.cold_start_runs)
        elif args.roofline or args.compare_book or args.before_after:
            print("[bench] building the features (dvc repro featurize) ...", flush=True)
            timed_run(["dvc", "repro", "featurize"], repo, env, log)
        registry = load_registry(repo / "models.yaml")
        models = args.models.split(",") if args.models else list(registry)
        unknown = [m for m in models if m not in registry]
        if unknown:
            parser.error(f"--models: {unknown} not in models.yaml ({', '.join(registry)})")
        runs = Runs(repo, env, log, args.out.with_suffix(""))
        vapm_runs: dict[str, list[dict[str, Any]]] = {}
        book_runs: dict[str, list[dict[str, Any]]] = {}
        if args.compare_book or args.before_after:
            vapm_runs, book_runs = compare(runs, registry, models, args, result)
            write_results(result, args.out)
        if args.roofline:
            roofline(runs, registry, models, args.epochs, result, vapm_runs, book_runs)
        result["load_average_end"] = list(os.getloadavg())
        write_results(result, args.out)
    print(markdown_table(result))
    return 0


def machine_facts() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_start": list(os.getloadavg())}


def run_pipeline(repo: Path, env: dict[str, str], log, result: dict[str, Any], sample_data: bool, crossval: bool,
                 out: Path, cold_start_runs: int = 3) -> None:
    stages = [s for s in pipeline_stages(repo, env) if sample_data or s != "sample_data"]
    for stage in stages:
        print(f"[bench] {stage} ...", flush=True)
        timing = timed_run(["dvc", "repro", "--single-item", "--force", stage], repo, env, log)
        result["stages"][stage] = timing
        print(f"[bench] {stage}: {timing['wall_s']:.1f} s, peak {timing['peak_rss_mb']:.0f} MB", flush=True)
    result["total_wall_s"] = round(sum(t["wall_s"] for t in result["stages"].values()), 1)
    # Every registered model, from the copy's own registry: none can silently drop out.
    result["metrics"] = {m: json.loads((repo / "metrics" / "scores" / f"{m}.json").read_text())
                         for m in load_registry(repo / "models.yaml")}
    write_results(result, out)  # the pipeline's numbers are kept even if the later parts fail
    archives = [str(p.resolve()) for p in sorted((repo / "data" / ("sample" if sample_data else "raw")).glob("*.zip"))]
    for key, module, what in (("monitor", "monitor", "monitor (latency and bursts)"),
                              ("cold_start", "cold_start", "cold predict (each model, each runtime)")):
        print(f"[bench] {what} ...", flush=True)
        part_out = Path(f"{out.with_suffix('')}-{key.replace('_', '-')}").resolve()
        command = [sys.executable, "-m", f"vapm.bench.{module}", "--out", str(part_out)]
        for archive in archives:
            command += ["--archive", archive]
        if module == "cold_start":
            command += ["--runs", str(cold_start_runs)]
        timed_run(command, repo, env, log)
        result[key] = json.loads(part_out.with_suffix(".json").read_text())
        write_results(result, out)
    if crossval:
        print("[bench] crossval ...", flush=True)
        result["crossval_timing"] = timed_run([sys.executable, "-m", "vapm", "crossval"], repo, env, log)
        result["crossval"] = {p.stem: json.loads(p.read_text())
                              for p in sorted((repo / "metrics" / "crossval").glob("*.json"))}
        write_results(result, out)


# --------------------------------------------------------------------------- roofline and comparisons


if __name__ == "__main__":
    sys.exit(main())
