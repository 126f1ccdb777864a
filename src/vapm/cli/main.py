"""The `vapm` command: one entry point for what a user runs by hand (`python -m vapm` works too).

    vapm predict MODEL_DIR FILE...     classify images or recordings with a trained model
    vapm export MODEL_DIR DEST         a network as a folder for a small box (ONNX, predict.py; --int8)
    vapm monitor DIR --model MODEL_DIR watch a folder, score new files once each, log and print alerts
    vapm report [--base REF]           what a change did to the models: reports/report.md and .html
    vapm preset PRESET [--run ...]     a preset as `dvc exp run -S` arguments (or run it)
    vapm crossval [MODEL...]           k-fold evaluation of registered classifiers
    vapm cluster start|stop            a local Dask cluster for compute.scheduler (docs/scaling.md)
    vapm bench [...]                   time the pipeline on given archives
    vapm bench-predict                 cold `vapm predict` of one file per model, each runtime: time and memory

The pipeline itself runs through DVC (`dvc repro`, `dvc exp run`). TensorFlow's and absl's own log lines
(oneDNN notices, grappler errors about its own graphs) are kept off stderr unless `--verbose` is given.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "predict": ("vapm.cli.predict", "classify images or recordings with a trained model"),
    "export": ("vapm.cli.export", "a trained network as a self-contained folder: ONNX model, predict.py, README"),
    "monitor": ("vapm.cli.monitor", "watch a folder and score every new image or recording, with alerts"),
    "report": ("vapm.cli.report", "compare the workspace's models with a git ref: reports/report.md and .html"),
    "preset": ("vapm.cli.preset", "turn a preset into dvc exp run -S arguments, or run it"),
    "crossval": ("vapm.cli.crossval", "k-fold evaluation of registered classifiers"),
    "cluster": ("vapm.cli.cluster", "a local Dask cluster (scheduler + workers) for compute.scheduler"),
    "bench": ("vapm.bench.pipeline", "time the pipeline on given archives"),
    "bench-monitor": ("vapm.bench.monitor", "latency and throughput of the folder monitor"),
    "bench-predict": ("vapm.bench.cold_start", "cold `vapm predict` per model and runtime: wall time and memory"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "usage: vapm COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines) + \
        "\n\n`vapm COMMAND --help` describes one; --verbose (anywhere) shows TensorFlow's own log lines."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" in argv:
        argv = [arg for arg in argv if arg != "--verbose"]
    else:
        from vapm.core.native_logs import quiet_native_logs

        quiet_native_logs()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vapm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)
