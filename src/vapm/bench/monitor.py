"""Benchmark of `vapm monitor`: latency from a file's close to its alert line, and files per second in bursts.

    vapm bench-monitor --model models/vision_scratch --model models/acoustic_cnn --files 30 --burst 60

Files are taken from the pipeline's own archives (the sample data by default), written into a watched temporary
folder the way a camera or a recorder would (write, close), one at a time for latency and many at once for
throughput. The latency includes the monitor's settle time (--settle, 0.25 s by default): the wait that makes
sure a file is complete. Models are loaded once, before any file arrives, as the monitor does.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from vapm.bench.results import write_report
from vapm.core.errors import VapmError, one_line


def sample_files(archives: list[Path], suffixes: tuple[str, ...], count: int) -> list[tuple[str, bytes]]:
    """Up to `count` (name, bytes) members of the archives whose names end in one of `suffixes`, in order."""
    files = []
    for archive in archives:
        with zipfile.ZipFile(archive) as zf:
            for name in sorted(zf.namelist()):
                if name.lower().endswith(suffixes) and len(files) < count:
                    files.append((Path(name).name, zf.read(name)))
    return files


def read_lines(log: Path) -> list[dict[str, Any]]:
    """The log's complete lines: the monitor may be writing the last one as it is read."""
    if not log.is_file():
        return []
    text = log.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def wait_for(log: Path, count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_lines(log)
        if len(lines) >= count:
            return lines
        time.sleep(0.005)
    raise VapmError(f"the monitor wrote {len(read_lines(log))} of {count} lines within {timeout:g} s")


def line_time(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["time"]).timestamp()


def run_benchmark(models: list[Any], archives: list[Path], files: int, burst: int, settle: float) -> dict[str, Any]:
    from vapm.data.features.records import raw_suffixes
    from vapm.serving.monitor import ALERT_LOG, Monitor

    results: dict[str, Any] = {"settle_s": settle, "models": [m.name for m in models]}
    kinds = {"images": (".jpg", ".jpeg", ".png", ".bmp"), "clips": (".dat", ".wav", ".flac")}
    with tempfile.TemporaryDirectory(prefix="vapm-monitor-bench-") as scratch:
        for kind, suffixes in kinds.items():
            if not any(set(suffixes) & set(raw_suffixes(m.input)) for m in models):
                continue
            pool = sample_files(archives, suffixes, max(files, burst))
            if not pool:
                continue
            folder = Path(scratch) / kind
            folder.mkdir()
            monitor = Monitor(folder, models, settle=settle, out=open("/dev/null", "w"))
            stop = threading.Event()
            thread = threading.Thread(target=monitor.run, kwargs={"stop": stop}, daemon=True)
            thread.start()
            time.sleep(1.0)  # the observer is watching
            latencies = []
            log = folder / ALERT_LOG
            try:
                for i in range(files):
                    name, data = pool[i % len(pool)]
                    path = folder / f"single_{i:04d}_{name}"
                    with path.open("wb") as writer:
                        writer.write(data)
                    closed = time.time()
                    line = wait_for(log, i + 1)[-1]
                    latencies.append(line_time(line) - closed)
                before = len(read_lines(log))
                started = time.time()
                for i in range(burst):
                    name, data = pool[i % len(pool)]
                    (folder / f"burst_{i:04d}_{name}").write_bytes(data)
                lines = wait_for(log, before + burst)
                elapsed = max(line_time(line) for line in lines[before:]) - started
            finally:
                stop.set()
                thread.join(timeout=30)
            errors = [line["error"] for line in read_lines(log) if line["error"]]
            values = np.asarray(latencies)
            results[kind] = {"files": files, "latency_median_s": round(float(np.median(values)), 3),
                             "latency_p95_s": round(float(np.percentile(values, 95)), 3),
                             "latency_max_s": round(float(values.max()), 3), "burst_files": burst,
                             "burst_seconds": round(elapsed, 3), "files_per_second": round(burst / elapsed, 1),
                             "errors": errors[:3]}
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Monitor with {', '.join(results['models'])} (settle {results['settle_s']} s)", "",
             "| files | latency median (s) | p95 (s) | max (s) | burst | files per second |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind in ("images", "clips"):
        if kind in results:
            r = results[kind]
            lines.append(f"| {kind} | {r['latency_median_s']:.3f} | {r['latency_p95_s']:.3f} | {r['latency_max_s']:.3f} "
                         f"| {r['burst_files']} | {r['files_per_second']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vapm bench-monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", metavar="MODEL_DIR",
                        help="trained model folders (default: models/vision_scratch and models/acoustic_cnn)")
    parser.add_argument("--archive", action="append", type=Path, metavar="ZIP",
                        help="where the files come from (default: the sample archives in data/sample/)")
    parser.add_argument("--files", type=int, default=30, help="files written one at a time, per kind (30)")
    parser.add_argument("--burst", type=int, default=60, help="files written at once, per kind (60)")
    parser.add_argument("--settle", type=float, default=0.25)
    parser.add_argument("--runtime", choices=["onnx", "keras"], default="onnx",
                        help="onnx (default, as vapm monitor) or keras: the models as trained")
    parser.add_argument("--out", type=Path, default=Path("bench/monitor"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    from vapm.serving.warm_models import load_models

    try:
        models = load_models(args.model or ["models/vision_scratch", "models/acoustic_cnn"],
                             "native" if args.runtime == "keras" else "onnx")
        archives = args.archive or sorted(Path("data/sample").glob("*.zip"))
        if not archives:
            raise VapmError("no archives to take files from: run dvc repro (sample data) or give --archive")
        results = {**run_benchmark(models, archives, args.files, args.burst, args.settle), "runtime": args.runtime}
    except VapmError as err:
        print(f"bench-monitor: {one_line(str(err))}", file=sys.stderr)
        return 1
    write_report(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
