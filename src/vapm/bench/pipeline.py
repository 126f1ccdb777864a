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
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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


def timed_run(command: list[str], cwd: Path, env: dict[str, str], log) -> dict[str, float]:
    """Run a command, returning its wall seconds and the peak RSS of it and its descendants."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log.name}")
    # ru_maxrss is in KiB on Linux (bytes on macOS) and covers waited-for descendants too.
    scale = 1 if sys.platform == "darwin" else 1024
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss * scale / 2**20, 1)}


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
                        help="also run the k-fold evaluation of the SVM and the scratch CNN (python -m vapm.training.crossval)")
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
    for key, archive in (("ingest.vision_archive", args.vision_archive),
                         ("ingest.acoustic_archive", args.acoustic_archive)):
        if archive is not None:
            changes[key] = "data/raw/" + archive.name

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

    env = dict(os.environ, VAPM_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(repo.resolve() / "src"))
    env.pop("MLFLOW_TRACKING_URI", None)
    if not args.no_pin:
        env.update(PINNED_ENV)
    result: dict[str, Any] = {"preset": str(preset) if preset else None, "overrides": changes,
                              "data": "sample" if sample_data else "archives", "machine": machine_facts(),
                              "pinned_env": {} if args.no_pin else PINNED_ENV, "stages": {}}
    log_path = args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        if not args.skip_pipeline:
            run_pipeline(repo, env, log, result, sample_data, args.crossval, args.out)
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
                 out: Path) -> None:
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
    print("[bench] monitor (latency and bursts) ...", flush=True)
    archives = [str(p.resolve()) for p in sorted((repo / "data" / ("sample" if sample_data else "raw")).glob("*.zip"))]
    monitor_out = Path(f"{out.with_suffix('')}-monitor").resolve()
    command = [sys.executable, "-m", "vapm.bench.monitor", "--out", str(monitor_out)]
    for archive in archives:
        command += ["--archive", archive]
    timed_run(command, repo, env, log)
    result["monitor"] = json.loads(monitor_out.with_suffix(".json").read_text())
    write_results(result, out)
    if crossval:
        print("[bench] crossval ...", flush=True)
        result["crossval_timing"] = timed_run([sys.executable, "-m", "vapm", "crossval"], repo, env, log)
        result["crossval"] = {p.stem: json.loads(p.read_text())
                              for p in sorted((repo / "metrics" / "crossval").glob("*.json"))}
        write_results(result, out)


# --------------------------------------------------------------------------- roofline and comparisons

class Runs:
    """Measurement workers, each a fresh process in the benchmark's copy, each leaving one JSON file."""

    def __init__(self, repo: Path, env: dict[str, str], log, prefix: Path):
        self.repo, self.env, self.log = repo, env, log
        self.folder = Path(f"{prefix}-runs").resolve()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.count = 0
        self.images: Path | None = None

    def run(self, label: str, command: list[str]) -> dict[str, Any]:
        self.count += 1
        out = self.folder / f"{self.count:03d}-{label}.json"
        load = os.getloadavg()[0]
        print(f"[bench] {label} (load {load:.1f}) ...", flush=True)
        timing = timed_run([sys.executable, "-m", *command, "--out", str(out)], self.repo, self.env, self.log)
        measured = json.loads(out.read_text())
        measured.update(process_wall_s=timing["wall_s"], peak_rss_mb=timing["peak_rss_mb"], load_before=load)
        out.write_text(json.dumps(measured, indent=1) + "\n")
        return measured

    def peak(self) -> dict[str, Any]:
        return self.run("peak", ["vapm.bench.roofline", "peak"])

    def vapm(self, model: str, epochs: int, before: bool = False) -> dict[str, Any]:
        extra = ["--as-before"] if before else []
        return self.run(f"{'before' if before else 'vapm'}-{model}",
                        ["vapm.bench.roofline", "model", model, "--epochs", str(epochs), *extra])

    def book(self, model: str, epochs: int) -> dict[str, Any]:
        command = ["vapm.bench.book_baseline", model, "--epochs", str(epochs)]
        if model.startswith("vision"):
            command += ["--images", str(self.book_images())]
        return self.run(f"book-{model}", command)

    def book_images(self) -> Path:
        """The vision archive in force, extracted once (the book's loader reads the JPEG folders)."""
        if self.images is None:
            from vapm.bench.book_baseline import extract_train_folder
            from vapm.config.settings import read_params

            archive = self.repo / read_params(self.repo / "params.yaml")["ingest"]["vision_archive"]
            self.images = extract_train_folder(archive, self.folder / "book-images")
        return self.images


def steady_epochs(phase: dict[str, Any], key: str = "epoch_wall") -> list[float]:
    """The epochs after the first (which also traces and warms up), or the only one."""
    values = phase[key]
    return values[1:] if len(values) > 1 else values


def spread(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "min": float(array.min()), "max": float(array.max()),
            "q1": float(np.percentile(array, 25)), "q3": float(np.percentile(array, 75)), "n": int(array.size)}


def phase_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase, over several runs of one model: steady epoch seconds (wall, CPU) and what was fitted."""
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        for phase in run["phases"]:
            row = table.setdefault(phase["phase"], {"wall": [], "cpu": [], "epoch_flops": phase["epoch_flops"],
                                                    "model": phase["model"], "n_fit": phase["n_fit"],
                                                    "n_val": phase["n_val"], "batch_size": phase["batch_size"],
                                                    "run_medians": []})
            row["wall"] += steady_epochs(phase)
            row["cpu"] += steady_epochs(phase, "epoch_cpu")
            row["run_medians"].append(float(np.median(steady_epochs(phase))))
    return table


def roofline_rows(label: str, runs: list[dict[str, Any]], peak: float, peak_per_cpu_second: float,
                  threads: int) -> list[dict[str, Any]]:
    """Achieved GFLOP/s per phase, against the wall-clock peak; and FLOPs per CPU-second against the matmul's
    FLOPs per CPU-second (the "CPU basis": what the load of other processes on a shared machine changes least;
    it overstates an idle machine's wall-clock share when threads wait on each other)."""
    rows = []
    for phase, row in phase_table(runs).items():
        wall, cpu = float(np.median(row["wall"])), float(np.median(row["cpu"]))
        achieved = row["epoch_flops"] / wall / 1e9
        per_cpu_second = row["epoch_flops"] / cpu / 1e9 if cpu > 0 else float("nan")
        rows.append({"model": label, "phase": phase, "fitted": row["model"], "n_fit": row["n_fit"],
                     "n_val": row["n_val"], "epoch_tflop": row["epoch_flops"] / 1e12,
                     "epoch_s": spread(row["wall"]), "epoch_cpu_s": spread(row["cpu"]),
                     "gflops": achieved, "percent_of_peak": 100 * achieved / peak,
                     "gflops_per_cpu_second": per_cpu_second,
                     "percent_of_peak_cpu_basis": 100 * per_cpu_second / peak_per_cpu_second,
                     "cpu_share": cpu / wall / threads})
    return rows


def roofline(runs: Runs, registry: dict[str, Any], models: list[str], epochs: int, result: dict[str, Any],
             vapm_runs: dict[str, list[dict[str, Any]]], book_runs: dict[str, list[dict[str, Any]]]) -> None:
    """Peak, then every Keras model (reusing the vapm runs of a comparison), the peak again after each model.
    Every registered model gets a row or a reason."""
    section = result.setdefault("roofline", {"peak_runs": [], "rows": [], "not_measured": {}})
    vapm_runs = dict(vapm_runs)
    section["peak_runs"].append(runs.peak())
    for name in models:
        entry = registry[name]
        if entry.artefact != "keras":
            section["not_measured"][name] = f"artefact {entry.artefact}: no Keras network fitted by vapm's loop"
            continue
        if name not in vapm_runs:
            vapm_runs[name] = [runs.vapm(name, epochs)]
            section["peak_runs"].append(runs.peak())
    peak = max(rate for run in section["peak_runs"] for rate in run["peak_gflops"])
    per_cpu_second = max(rate for run in section["peak_runs"] for rate in run["peak_gflops_per_cpu_second"])
    threads = section["peak_runs"][0]["threads"]
    section.update(peak_gflops=peak, peak_gflops_per_cpu_second=per_cpu_second, threads=threads,
                   peak_spread=spread([max(run["peak_gflops"]) for run in section["peak_runs"]]))
    for name in models:
        if name in vapm_runs:
            section["rows"] += roofline_rows(name, vapm_runs[name], peak, per_cpu_second, threads)
    for name, model_runs in book_runs.items():
        section["rows"] += roofline_rows(f"book: {name}", model_runs, peak, per_cpu_second, threads)


def compare(runs: Runs, registry: dict[str, Any], models: list[str], args, result: dict[str, Any]
            ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    """Alternate the book's loop (or vapm as it was) with vapm's, --pairs times per model, each pair in the
    opposite order to the last; returns every vapm run and every book run (for the roofline)."""
    from vapm.bench.book_baseline import BOOK_MODELS

    keras_models = [m for m in models if registry[m].artefact == "keras"]
    comparisons: list[tuple[str, list[str]]] = []
    if args.compare_book:
        comparisons.append(("book", [m for m in keras_models if m in BOOK_MODELS]))
    if args.before_after:
        comparisons.append(("before", keras_models))
    vapm_runs: dict[str, list[dict[str, Any]]] = {}
    pairs: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for pair in range(args.pairs):
        for kind, names in comparisons:
            for name in names:
                def theirs() -> dict[str, Any]:
                    return runs.book(name, args.epochs) if kind == "book" else \
                        runs.vapm(name, args.epochs, before=True)

                if pair % 2 == 0:
                    other = theirs()
                    ours = runs.vapm(name, args.epochs)
                else:
                    ours = runs.vapm(name, args.epochs)
                    other = theirs()
                pairs.setdefault((kind, name), []).append((other, ours))
                vapm_runs.setdefault(name, []).append(ours)
    for (kind, name), measured in pairs.items():
        result.setdefault(kind, {})[name] = ratio_summary(measured)
    if args.compare_book:
        result.setdefault("book", {})["no_book_loop"] = [m for m in models if m not in BOOK_MODELS]
    book_runs = {name: [other for other, _ in measured] for (kind, name), measured in pairs.items() if kind == "book"}
    return vapm_runs, book_runs


def ratio_summary(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Per phase and pair: their median steady epoch / ours; the median and spread of those ratios."""
    phases: dict[str, list[float]] = {}
    whole: list[float] = []
    for their_run, our_run in pairs:
        their_phases, our_phases = phase_table([their_run]), phase_table([our_run])
        for phase in their_phases:
            if phase in our_phases:
                phases.setdefault(phase, []).append(their_phases[phase]["run_medians"][0] /
                                                    our_phases[phase]["run_medians"][0])
        whole.append(their_run["total_seconds"] / our_run["total_seconds"])
    return {"pairs": len(pairs),
            "phases": {phase: spread(ratios) | {"ratios": ratios} for phase, ratios in phases.items()},
            "whole_run": spread(whole) | {"ratios": whole},
            "load_average": spread([run["load_before"] for pair in pairs for run in pair])}


def markdown_table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result.get("stages"):
        lines += ["| stage | wall time (s) | peak memory (MB) |", "|---|---:|---:|"]
        for stage, timing in result["stages"].items():
            lines.append(f"| {stage} | {timing['wall_s']:.1f} | {timing['peak_rss_mb']:.0f} |")
        lines.append(f"| **whole pipeline** | **{result['total_wall_s']:.1f}** | |")
        if "crossval_timing" in result:
            timing = result["crossval_timing"]
            lines.append(f"| k-fold evaluation (not part of the pipeline) | {timing['wall_s']:.1f} | "
                         f"{timing['peak_rss_mb']:.0f} |")
        lines += ["", "| model | test accuracy | 95 % CI | macro-F1 | n test |", "|---|---:|---|---:|---:|"]
        for model, metrics in result["metrics"].items():
            if "acc" not in metrics:
                lines.append(f"| {model} | (detector: {', '.join(f'{k} {v:.3g}' for k, v in metrics.items() if isinstance(v, (int, float)))}) | | | |")
                continue
            lines.append(f"| {model} | {100 * metrics['acc']:.2f} % | "
                         f"{100 * metrics['acc_lo']:.1f}-{100 * metrics['acc_hi']:.1f} % | "
                         f"{metrics['f1']:.4f} | {metrics['n']} |")
        for model, cv in result.get("crossval", {}).items():
            lines.append(f"| {model}, {cv['folds']}-fold CV | {100 * cv['accuracy_mean']:.2f} % ± "
                         f"{100 * cv['accuracy_std']:.2f} | | | {cv['n_items']} |")
    if "monitor" in result:
        from vapm.bench.monitor import markdown as monitor_markdown

        lines += ["", monitor_markdown(result["monitor"]).rstrip("\n")]
    lines += roofline_markdown(result.get("roofline"))
    for kind, title in (("book", "the book's training loop"), ("before", "vapm before this change (Keras's Adam)")):
        if kind in result:
            lines += comparison_markdown(result[kind], title)
    return "\n".join(lines) + "\n"


def roofline_markdown(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    peak = section["peak_spread"]
    lines = ["", f"Matmul peak (fp32, {section['threads']} threads, best of {len(section['peak_runs'])} runs): "
                 f"**{section['peak_gflops']:.1f} GFLOP/s** (best per run: median {peak['median']:.1f}, "
                 f"{peak['min']:.1f}-{peak['max']:.1f}); per CPU-second: "
                 f"{section['peak_gflops_per_cpu_second']:.1f} GFLOP", "",
             "| model | phase | TFLOP / epoch | epoch (s), median (min-max) | GFLOP/s | % of peak | "
             "% of peak, CPU basis | CPU share |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in section["rows"]:
        s = row["epoch_s"]
        lines.append(f"| {row['model']} | {row['phase']} | {row['epoch_tflop']:.3f} | {s['median']:.2f} "
                     f"({s['min']:.2f}-{s['max']:.2f}, n={s['n']}) | {row['gflops']:.1f} | "
                     f"{row['percent_of_peak']:.0f} % | {row['percent_of_peak_cpu_basis']:.0f} % | "
                     f"{row['cpu_share']:.2f} |")
    for name, reason in section.get("not_measured", {}).items():
        lines.append(f"| {name} | not measured: {reason} | | | | | | |")
    return lines


def comparison_markdown(section: dict[str, Any], title: str) -> list[str]:
    lines = ["", f"Per-epoch time of {title} / vapm's (> 1: vapm is faster), median of the pairs (min-max):", "",
             "| model | phase | ratio | spread | pairs | whole run ratio | load average |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, summary in section.items():
        if name == "no_book_loop":
            continue
        for phase, stats in summary["phases"].items():
            whole = summary["whole_run"]
            load = summary["load_average"]
            lines.append(f"| {name} | {phase} | **{stats['median']:.2f}x** | {stats['min']:.2f}-{stats['max']:.2f} | "
                         f"{stats['n']} | {whole['median']:.2f}x | {load['min']:.1f}-{load['max']:.1f} |")
    if section.get("no_book_loop"):
        lines.append(f"| {', '.join(section['no_book_loop'])} | no book loop (not Keras classifiers of the book) | | | | | |")
    return lines


def write_results(result: dict[str, Any], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    out.with_suffix(".md").write_text(markdown_table(result))


if __name__ == "__main__":
    sys.exit(main())
