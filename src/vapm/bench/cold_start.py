"""Benchmark of a cold `vapm predict`: one file per model, a fresh process each time, with each runtime.

    vapm bench-predict [--models-dir models] [--runs 5] [--out bench/cold-start]

What a plant's script pays when it calls the command once per file: interpreter start, imports, model load,
decoding, features and the answer. Each model answers one file (a test image of the sample or real archive, or
a WAV made from its first clip) `--runs` times with the light runtime (ONNX Runtime, NumPy) and as many times with
the training libraries (`--runtime keras`: Keras, scikit-learn), alternated so that a busy moment hits both;
wall time and peak RSS (of the process and its children, from wait4) are reported as medians.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from vapm.artefacts import artefact
from vapm.bench.results import write_report
from vapm.core.errors import VapmError, one_line

RUNTIMES = ("onnx", "keras")
# The targets on an idle 2-core machine (docs/performance.md): what the README's table is checked against.
TARGET_SECONDS = {"acoustic_svm": 1.0, "acoustic_anomaly": 1.0}
TARGET_ONNX_SECONDS = 1.5
TARGET_RSS_MB = 300.0


def vapm_command() -> list[str]:
    """The `vapm` console script beside this interpreter (what a user types), else `python -m vapm`."""
    script = Path(sys.executable).with_name("vapm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vapm"]


def first_member(archives: list[Path], suffixes: tuple[str, ...], where: str = "") -> tuple[str, bytes] | None:
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            for name in sorted(zf.namelist()):
                if name.lower().endswith(suffixes) and where in name.lower():
                    return Path(name).name, zf.read(name)
    return None


def as_wav(name: str, data: bytes, sample_rate: float) -> tuple[str, bytes]:
    """A .dat clip (text samples at the model's rate) as the 16-bit WAV a recorder on the line would write."""
    import numpy as np
    import soundfile as sf

    samples = np.loadtxt(io.StringIO(data.decode()), delimiter=",", ndmin=1).ravel()
    buffer = io.BytesIO()
    sf.write(buffer, samples / np.abs(samples).max() * 0.9, round(sample_rate), format="WAV", subtype="PCM_16")
    return Path(name).with_suffix(".wav").name, buffer.getvalue()


def input_files(archives: list[Path], folder: Path) -> dict[str, Path]:
    """One image and one recording to answer, written into `folder`."""
    image = first_member(archives, (".jpg", ".jpeg", ".png", ".bmp"), "/test/") or \
        first_member(archives, (".jpg", ".jpeg", ".png", ".bmp"))
    sound = first_member(archives, (".wav", ".flac"))
    if sound is None and (clip := first_member(archives, (".dat",))) is not None:
        sound = as_wav(*clip, sample_rate=50000 / 3)
    files = {}
    for modality, member in (("vision", image), ("audio", sound)):
        if member is not None:
            files[modality] = folder / member[0]
            files[modality].write_bytes(member[1])
    return files


def run_once(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of the process tree, and stdout, of one cold run."""
    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=write_fd, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        stdout = reader.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise VapmError(f"{' '.join(command)} failed with exit code {process.returncode}")
    scale = 1 if sys.platform == "darwin" else 1024
    return wall, usage.ru_maxrss * scale / 2**20, stdout.decode()


def target_for(model: str, runtime: str, record: dict[str, Any]) -> float | None:
    if runtime != "onnx":
        return None
    return TARGET_SECONDS.get(model, TARGET_ONNX_SECONDS if record.get("runtimes", {}).get("onnx") else None)


def run_benchmark(model_dirs: list[Path], files: dict[str, Path], runs: int, cwd: Path) -> dict[str, Any]:
    rows = []
    for folder in model_dirs:
        record = json.loads((folder / "record.json").read_text())
        modality = "vision" if record["input"]["kind"] == "image" else "audio"
        if modality not in files:
            continue
        # An artefact without a light runtime is timed with the one it has.
        runtimes = [r for r in RUNTIMES if r != "onnx" or getattr(artefact(record["artefact"]), "light_runtime", True)]
        samples: dict[str, list[tuple[float, float]]] = {runtime: [] for runtime in runtimes}
        answers: dict[str, str] = {}
        for _ in range(runs):
            for runtime in runtimes:
                wall, rss, out = run_once([*vapm_command(), "predict", str(folder), str(files[modality]),
                                           "--runtime", runtime], cwd)
                samples[runtime].append((wall, rss))
                answers[runtime] = out.split(":", 1)[-1].strip()
        for runtime in runtimes:
            walls, rsss = [w for w, _ in samples[runtime]], [r for _, r in samples[runtime]]
            target = target_for(record["model"], runtime, record)
            rows.append({"model": record["model"], "runtime": runtime, "file": files[modality].name,
                         "wall_median_s": round(statistics.median(walls), 2),
                         "wall_runs_s": [round(w, 2) for w in walls],
                         "peak_rss_median_mb": round(statistics.median(rsss), 0), "answer": answers[runtime],
                         "target_s": target,
                         "meets_target": None if target is None else bool(statistics.median(walls) <= target
                                                                           and statistics.median(rsss) <= TARGET_RSS_MB)})
    return {"runs": runs, "cpus": os.cpu_count(), "load_average_start": list(os.getloadavg()), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [(f"Cold `vapm predict` of one file, median of {results['runs']} runs "
              f"({results['cpus']} CPUs, load average at start {results['load_average_start'][0]:.2f})"), "",
             "| model | runtime | wall (s) | peak RSS (MB) | target | answer |", "|---|---|---:|---:|---|---|"]
    for row in results["rows"]:
        target = "" if row["target_s"] is None else \
            f"<= {row['target_s']} s, <= {TARGET_RSS_MB:.0f} MB: {'met' if row['meets_target'] else 'MISSED'}"
        lines.append(f"| {row['model']} | {row['runtime']} | {row['wall_median_s']:.2f} | "
                     f"{row['peak_rss_median_mb']:.0f} | {target} | {row['answer']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm bench-predict", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="trained model folders (models/)")
    parser.add_argument("--archive", action="append", type=Path, metavar="ZIP",
                        help="where the input files come from (default: data/sample/*.zip, else data/raw/*.zip)")
    parser.add_argument("--runs", type=int, default=5, help="cold runs per model and runtime (5)")
    parser.add_argument("--out", type=Path, default=Path("bench/cold-start"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    import tempfile

    try:
        model_dirs = sorted(p.parent for p in args.models_dir.glob("*/record.json"))
        if not model_dirs:
            raise VapmError(f"no trained model folders in {args.models_dir}: run dvc repro first")
        archives = args.archive or sorted(Path("data/sample").glob("*.zip")) or sorted(Path("data/raw").glob("*.zip"))
        if not archives:
            raise VapmError("no archives to take files from: run dvc repro (sample data) or give --archive")
        with tempfile.TemporaryDirectory(prefix="vapm-cold-start-") as scratch:
            files = input_files(archives, Path(scratch))
            results = run_benchmark(model_dirs, files, args.runs, Path.cwd())
    except VapmError as err:
        print(f"bench-predict: {one_line(str(err))}", file=sys.stderr)
        return 1
    write_report(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
