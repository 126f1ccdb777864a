"""What the determinism measures cost: featurize and one training epoch, pinned against native dispatch.

    .venv/bin/python src/vapm/bench/determinism_cost.py --repeats 5 --out benchmarks/determinism_cost.json

Every measurement runs in a fresh process (dispatch is fixed when NumPy and TensorFlow load), the
variants alternate (native, pinned, native, ...) so that a busy machine slows both alike, and the
summary gives the median and the range over the repeats. Variants:
- featurize: the per-clip features of the previous commit's code (BLAS mel projection, NumPy/SVML log10)
  with native dispatch, against this commit's code (fixed-order sums, correctly rounded log10) pinned;
- training: one epoch of each neural model with native oneDNN kernels (AVX-512 where the CPU has it)
  against the pinned AVX2 kernels, both on 2 threads.
Not a test: timings belong here, not in the test suite (docs/determinism.md quotes the results).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BEFORE = "24e32c6"  # the last commit before the determinism work
NATIVE = {"VAPM_CPU_DISPATCH": "native"}
AUG_OFF = {"enabled": False, "flip": True, "shift": 0.05, "rotation": 0.03, "brightness": 0.1}


def worker(task: str, clips_path: str | None) -> dict:
    """Run in the child process: time one task, return seconds."""
    import numpy as np

    import vapm  # noqa: F401  (pins unless VAPM_CPU_DISPATCH=native)

    if task.startswith("featurize"):
        if task == "featurize_before":
            import importlib.util
            source = subprocess.run(["git", "show", f"{BEFORE}:src/vapm/data/features/acoustic.py"], cwd=REPO_ROOT,
                                    check=True, capture_output=True, text=True).stdout
            module_path = Path(tempfile.mkdtemp()) / "acoustic_before.py"
            module_path.write_text(source)
            spec = importlib.util.spec_from_file_location("acoustic_before", module_path)
            acoustic = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = acoustic  # dataclasses look their module up
            spec.loader.exec_module(acoustic)
        else:
            from vapm.data.features import acoustic
        n = len(np.load(clips_path, mmap_mode="r"))
        settings = acoustic.AcousticSettings(50000 / 3, 40, 64, 2048, 512, 50000 / 6, "db4", 7, "symmetric", "log",
                                             True, 1)
        files = [f"clip{i}" for i in range(n)]
        acoustic.clip_range_features(clips_path, 0, 1, files, settings)  # warm up (mel basis, imports)
        # The featurize stage's unit of work, as its worker processes run it.
        start, cpu = time.perf_counter(), time.process_time()
        acoustic.clip_range_features(clips_path, 0, n, files, settings)
        return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "items": n}

    import keras

    from vapm.config.seeding import set_global_seed
    from vapm.models import build_acoustic_cnn, build_vision_scratch
    from vapm.models.components.keras_fit import compile_classifier, make_dataset

    set_global_seed(0)
    rng = np.random.default_rng(0)
    if task.startswith("scratch"):
        size, n = (64, 204) if task == "scratch64" else (200, 300)
        x, y = rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 6
        model = build_vision_scratch(size, 6, {"filters": [32, 64, 128], "kernel_size": 3, "dense_units": 256,
                                               "dropout": 0.2}, AUG_OFF, 0)
    else:
        n = 190
        x, y = (rng.normal(size=(n, 104, 98)) * 10 - 40).astype(np.float32), np.arange(n) % 8
        model = build_acoustic_cnn((104, 98), 8, {"filters": 32, "kernel_size": 4, "strides": 2, "pool_size": 2,
                                                 "dense_units": [512, 64], "dropout": 0.5},
                                   x.mean(axis=(0, 2)), x.var(axis=(0, 2)), 0)
    compile_classifier(model, 1e-3)
    epoch_seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    model.fit(make_dataset(x, y, 32, shuffle_seed=0), epochs=4, verbose=0, callbacks=[Timer()])
    # Epoch 1 includes tracing the training step; the later ones are the steady state a long run sees.
    return {"first_epoch_s": epoch_seconds[0], "wall_s": statistics.median(epoch_seconds[1:]), "items": n}


def run(task: str, env: dict[str, str], clips_path: str | None) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("ONEDNN_", "NPY_", "OPENBLAS_", "TF_ENABLE_ONEDNN", "VAPM_"))}
    done = subprocess.run([sys.executable, __file__, "--worker", task, "--clips-file", clips_path or ""], cwd=REPO_ROOT,
                          env={**clean, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, default=300, help="synthetic clips for the featurize timing")
    parser.add_argument("--tasks", default="featurize,scratch64,scratch200,acoustic")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clips-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.clips_file or None)))
        return

    sys.path.insert(0, str(REPO_ROOT))
    from tests.determinism_probe import synthetic_clips  # noqa: E402

    with tempfile.TemporaryDirectory() as tmp:
        clips_path = str(Path(tmp) / "clips.npy")
        import numpy as np
        np.save(clips_path, synthetic_clips(args.clips).astype(np.float32))
        results: dict[str, dict[str, list[dict]]] = {}
        for repeat in range(args.repeats):
            for task in args.tasks.split(","):
                variants = ({"before_native": ("featurize_before", NATIVE), "after_pinned": ("featurize_after", {})}
                            if task == "featurize" else {"native": (task, NATIVE), "pinned": (task, {})})
                order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
                for name in order:
                    worker_task, env = variants[name]
                    results.setdefault(task, {}).setdefault(name, []).append(run(worker_task, env, clips_path))
                    print(task, name, results[task][name][-1], file=sys.stderr, flush=True)
    summary = {}
    for task, variants in results.items():
        summary[task] = {}
        for name, runs in variants.items():
            walls = [r["wall_s"] for r in runs]
            summary[task][name] = {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
                                   "runs": runs}
        names = list(variants)
        summary[task]["ratio_median"] = summary[task][names[1]]["median_s"] / summary[task][names[0]]["median_s"]
    text = json.dumps({"machine": os.uname().machine, "cpus": os.cpu_count(), "repeats": args.repeats,
                       "summary": summary}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
