"""Benchmark: run the pipeline on given archives in a scratch copy of the repo, timing every stage.

    python -m vapm.bench --vision-archive ../shared/data/NEU-data-TrainTest.zip \\
        --acoustic-archive ../shared/data/AirCompressor_Data_wav_subset.zip --preset presets/real-data.yaml

Writes one JSON (stage wall times, peak memory, every model's accuracy) and a markdown table.
Not a test: the real run takes tens of minutes.
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

import yaml

from vapm.preset import flatten, load_preset
from vapm.registry import load_registry

REPO_ROOT = Path.cwd()


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


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| stage | wall time (s) | peak memory (MB) |", "|---|---:|---:|"]
    for stage, timing in result["stages"].items():
        lines.append(f"| {stage} | {timing['wall_s']:.1f} | {timing['peak_rss_mb']:.0f} |")
    lines.append(f"| **whole pipeline** | **{result['total_wall_s']:.1f}** | |")
    if "crossval_timing" in result:
        timing = result["crossval_timing"]
        lines.append(f"| k-fold evaluation (not part of the pipeline) | {timing['wall_s']:.1f} | "
                     f"{timing['peak_rss_mb']:.0f} |")
    lines += ["", "| model | test accuracy | 95 % CI | macro-F1 | n test |", "|---|---:|---|---:|---:|"]
    for model, metrics in result["metrics"].items():
        lines.append(f"| {model} | {100 * metrics['acc']:.2f} % | "
                     f"{100 * metrics['acc_lo']:.1f}-{100 * metrics['acc_hi']:.1f} % | "
                     f"{metrics['f1']:.4f} | {metrics['n']} |")
    for model, cv in result.get("crossval", {}).items():
        lines.append(f"| {model}, {cv['folds']}-fold CV | {100 * cv['accuracy_mean']:.2f} % ± "
                     f"{100 * cv['accuracy_std']:.2f} | | | {cv['n_items']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-archive", type=Path, required=True)
    parser.add_argument("--acoustic-archive", type=Path, required=True)
    parser.add_argument("--preset", type=Path, default=Path("presets/real-data.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="extra param overrides after the preset, e.g. --set train.epochs=3")
    parser.add_argument("--crossval", action="store_true",
                        help="also run the k-fold evaluation of the SVM and the scratch CNN (python -m vapm.crossval)")
    parser.add_argument("--workdir", type=Path, default=Path("bench/work"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)

    for archive in (args.vision_archive, args.acoustic_archive):
        if not archive.is_file():
            parser.error(f"archive {archive} not found")
    changes = load_preset(args.preset)
    for item in args.set:
        key, _, value = item.partition("=")
        changes.update(flatten({key: yaml.safe_load(value)}))
    changes["ingest.vision_archive"] = "data/raw/" + args.vision_archive.name
    changes["ingest.acoustic_archive"] = "data/raw/" + args.acoustic_archive.name

    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    repo = copy_worktree(REPO_ROOT, args.workdir)
    raw = repo / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for archive in (args.vision_archive, args.acoustic_archive):
        shutil.copy2(archive, raw / archive.name)
    set_params(repo / "params.yaml", changes)
    git_commit(repo, "benchmark params")

    env = dict(os.environ, VAPM_NO_PROGRESS="1", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(repo.resolve() / "src"))
    env.pop("MLFLOW_TRACKING_URI", None)
    stages = [s for s in pipeline_stages(repo, env) if s != "sample_data"]
    result: dict[str, Any] = {"preset": str(args.preset), "overrides": changes, "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "stages": {}}
    log_path = args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        for stage in stages:
            print(f"[bench] {stage} ...", flush=True)
            timing = timed_run(["dvc", "repro", "--single-item", "--force", stage], repo, env, log)
            result["stages"][stage] = timing
            print(f"[bench] {stage}: {timing['wall_s']:.1f} s, peak {timing['peak_rss_mb']:.0f} MB", flush=True)
        result["total_wall_s"] = round(sum(t["wall_s"] for t in result["stages"].values()), 1)
        # Every registered model, from the copy's own registry: none can silently drop out.
        result["metrics"] = {m: json.loads((repo / "metrics" / "scores" / f"{m}.json").read_text())
                             for m in load_registry(repo / "models.yaml")}
        write_results(result, args.out)  # the pipeline's numbers are kept even if the k-fold part fails
        if args.crossval:
            print("[bench] crossval ...", flush=True)
            result["crossval_timing"] = timed_run([sys.executable, "-m", "vapm", "crossval"], repo, env, log)
            result["crossval"] = {p.stem: json.loads(p.read_text())
                                  for p in sorted((repo / "metrics" / "crossval").glob("*.json"))}
            write_results(result, args.out)
    print(markdown_table(result))
    return 0


def write_results(result: dict[str, Any], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    out.with_suffix(".md").write_text(markdown_table(result))


if __name__ == "__main__":
    sys.exit(main())
