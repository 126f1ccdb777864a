"""Epochs of the registered Keras models, timed in fresh processes: against the CPU's roofline (`--roofline`)
and against the book's own training loop (`--compare-book`), pair by pair."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vapm.bench.timing import timed_run


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
