"""Benchmark the PatchCore detector (vision_anomaly) on the real NEU images: one class normal, the others defects.

    nice -n 10 python -m vapm.bench.anomaly_neu ../shared/data/NEU-data-TrainTest.zip \
        --out docs/benchmarks/vision-anomaly-neu.json

A measurement, not a pipeline stage (issue 21). The archive goes through `vapm.data.ingest` as in the pipeline
(byte-identical duplicates dropped; the archive's own train/ and test/ folders are the split), each grey image is
resized bilinearly to `--size` (224 by default) and the detector gets `params.yaml`'s `vision_anomaly` section
(read through the typed settings) with `input_size` set to `--size`, the thread count of `compute.threads`.

1. one class vs rest: for each class (`--classes`, default all 6) as normal, `fit_patchcore` on that class's
   train images only (bank + threshold, exactly as the trainer), then every test image of every class is scored;
   image AUROC and pAUC at `evaluation.max_fpr` with their bootstrap intervals come from
   `components.anomaly_metrics` (the trainer's own evaluation); fit time and bank size per class.
2. latency: the first class's model is saved and loaded in a fresh process, which predicts one image at a time
   (`--latency-calls` calls after `--warmup` ones) and times the feature extraction and the nearest-bank search
   separately; that process's peak RSS, the bank's bytes and the extractor's weights are the detector's memory.
3. fit time on `--fit-images` (1,000) images: the first train images of the archive, whatever their class, all
   taken as normal (bank from 80 %, threshold from the held-out 20 %, as `threshold_method: auto` picks).

Times are wall-clock on a machine that may be shared: the load average is recorded at the start, after each
step, and at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_ARCHIVE = Path("../shared/data/NEU-data-TrainTest.zip")
DEFAULT_OUT = Path("docs/benchmarks/vision-anomaly-neu.json")


# ---- pure parts -------------------------------------------------------------------------------------------------

def detector_params(size: int, params_file: str | Path = "params.yaml", **overrides: Any) -> Any:
    """params.yaml's `vision_anomaly` section, validated, with `input_size` = size (and any overrides)."""
    from vapm.config.settings import load_settings

    settings = load_settings(params_file, models=["vision_anomaly"])
    return settings.model("vision_anomaly").model_copy(update={"input_size": size, **overrides})


def one_vs_rest_split(labels: Any, splits: Any, class_names: Sequence[str], normal: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train rows of the normal class, test rows of every class, the test rows' class names)."""
    labels, splits = np.asarray(labels), np.asarray(splits).astype(str)
    train = np.flatnonzero((splits == "train") & (labels == list(class_names).index(normal)))
    test = np.flatnonzero(splits == "test")
    return train, test, np.asarray(class_names, dtype=object)[labels[test]].astype(str)


def evaluate_class(images: np.ndarray, labels: Any, splits: Any, class_names: Sequence[str], normal: str,
                   params: Any, seed: int, test_patches: np.ndarray | None = None) -> tuple[dict[str, Any], Any]:
    """Fit with `normal` as the normal class, score all test images: (the row for the table, the model)."""
    from vapm.models.components.anomaly_metrics import anomaly_metrics
    from vapm.models.vision_anomaly import fit_patchcore

    train, test, test_classes = one_vs_rest_split(labels, splits, class_names, normal)
    started = time.perf_counter()
    model = fit_patchcore(images, labels, splits, class_names, settings=params.model_copy(update={"normal_class": normal}),
                          seed=seed)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    if test_patches is None:
        scores = model.score_images(images[test])
    else:  # the test images' patches, computed once with an identical extractor (same weights, checked by caller)
        scores = model.score_patches(test_patches)[0]
    score_s = time.perf_counter() - started
    evaluation = params.evaluation
    metrics = anomaly_metrics(scores, test_classes, normal, model.threshold.value, max_fpr=evaluation.max_fpr,
                              n_resamples=evaluation.bootstrap_resamples, confidence=evaluation.confidence,
                              seed=seed, class_names=class_names,
                              target_false_alarm_rate=model.threshold.false_alarm_rate)
    overall = metrics["overall"]
    row = {"normal_class": normal, "n_train_normal": int(len(train)), "n_fit_images": int(len(model.fit_rows)),
           "n_test": int(len(test)), "n_test_normal": overall["n_normal"], "n_test_abnormal": overall["n_abnormal"],
           "auroc": overall["auc"], "auroc_ci": overall["auc_ci"], "pauc": overall["pauc"],
           "pauc_ci": overall["pauc_ci"], "max_fpr": evaluation.max_fpr,
           "auroc_per_defect": {name: value["auc"] for name, value in metrics["per_fault"].items()},
           "threshold": model.threshold.as_dict(), "false_alarm": metrics["false_alarm"],
           "detection": overall["detection"], "bank_size": int(len(model.bank)), "bank_dim": int(model.bank.shape[1]),
           "n_patches": int(model.info["n_patches"]), "fit_s": round(fit_s, 2), "score_test_s": round(score_s, 2)}
    return row, model


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"classes": len(rows), "mean_auroc": float(np.mean([r["auroc"] for r in rows])) if rows else None,
            "mean_pauc": float(np.mean([r["pauc"] for r in rows])) if rows else None,
            "mean_fit_s": float(np.mean([r["fit_s"] for r in rows])) if rows else None}


def markdown_table(result: dict[str, Any]) -> str:
    lines = []
    rows = result.get("one_vs_rest", [])
    if rows:
        max_fpr = rows[0]["max_fpr"]
        lines += [f"| normal class | fit images (bank / all normal train) | test normal / defect | image AUROC (95 % CI) "
                  f"| pAUC at FPR <= {max_fpr:g} (95 % CI) | false alarms at threshold | defects detected | bank "
                  "| fit (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lo, hi = r["auroc_ci"]
            plo, phi = r["pauc_ci"]
            lines.append(f"| {r['normal_class']} | {r['n_fit_images']} / {r['n_train_normal']} | "
                         f"{r['n_test_normal']} / {r['n_test_abnormal']} | {r['auroc']:.3f} ({lo:.3f}-{hi:.3f}) | "
                         f"{r['pauc']:.3f} ({plo:.3f}-{phi:.3f}) | {r['false_alarm']['count']}/{r['false_alarm']['n']} | "
                         f"{r['detection']['count']}/{r['detection']['n']} | {r['bank_size']} x {r['bank_dim']} | "
                         f"{r['fit_s']:.0f} |")
        s = summarize(rows)
        lines.append(f"| **mean of {s['classes']}** | | | **{s['mean_auroc']:.3f}** | **{s['mean_pauc']:.3f}** | | | | "
                     f"{s['mean_fit_s']:.0f} |")
    for key in ("latency", "latency_keras"):
        latency = result.get(key)
        if not latency:
            continue
        side = latency["image_shape"][0]
        runtime = latency.get("runtime", "keras")
        runtime = {"onnx": "runtime onnx (the default): ONNX Runtime + NumPy",
                   "native": "runtime keras (--runtime native)"}.get(runtime, runtime)
        lines += ["", f"| one {side} px image after load, {runtime}, {latency['threads']} threads, {latency['calls']} "
                      "calls | median (ms) | p90 (ms) |", "|---|---:|---:|"]
        names = {"total": "**predict (score and anomaly map)**", "extract": "feature extraction",
                 "search": "nearest-bank search and image score", "map": "anomaly map at the image's side"}
        for part, name in names.items():
            if part in latency:
                lines.append(f"| {name} | {latency[part]['median_ms']:.1f} | {latency[part]['p90_ms']:.1f} |")
    memory = result.get("memory")
    if memory:
        lines += ["", f"Memory: bank {memory['bank_mb']:.1f} MB, extractor weights {memory['extractor_weights_mb']:.1f} MB "
                      f"({memory['extractor_params']} parameters; extractor.keras {memory['extractor_file_mb']:.1f} MB); "
                      f"peak RSS of a process that loads the model and predicts: {memory['predict_process_peak_rss_mb']:.0f} MB "
                      f"(runtime onnx; keras: {memory.get('predict_process_peak_rss_mb_keras', float('nan')):.0f} MB); "
                      f"peak RSS of the whole benchmark: {memory['benchmark_peak_rss_mb']:.0f} MB."]
    fit = result.get("fit_1000")
    if fit:
        lines += ["", f"Fit on {fit['n_images']} images of {fit['size']} px ({fit['images']}): **{fit['fit_s']:.0f} s** "
                      f"(bank {fit['bank_size']} from {fit['n_patches']} patches, threshold {fit['threshold_method']})."]
    return "\n".join(lines) + "\n"


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"median_ms": round(float(np.median(ms)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
            "min_ms": round(float(ms.min()), 2), "max_ms": round(float(ms.max()), 2), "n": int(len(ms))}


# ---- machine, data ----------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own address space; ru_maxrss
    carries over the forking parent's peak through exec (a latency process started by a 2 GB benchmark reported
    2 GB whatever it used)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "machine": platform.machine(), "python": sys.version.split()[0]}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


CLASSES = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]


def load_neu(archive: Path, settings: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Grey uint8 images (N, H, W), labels, splits and the ingest report, via the pipeline's ingest (params'
    `ingest` section; the archive's train/ and test/ folders give the split)."""
    import pandas as pd

    from vapm.data.ingest.dataset import ingest_settings, ingest_vision

    with tempfile.TemporaryDirectory(prefix="vapm-anomaly-bench-") as folder:
        report = ingest_vision(archive, CLASSES, folder, ingest_settings(settings))
        manifest = pd.read_parquet(Path(folder) / "manifest.parquet")
        pixels = np.load(Path(folder) / "pixels.npy")
    images = np.stack([pixels[o:o + h * w].reshape(h, w)
                       for o, h, w in zip(manifest["offset"], manifest["height"], manifest["width"])])
    return images, manifest["label"].to_numpy(), manifest["split"].to_numpy().astype(str), report


def resize(images: np.ndarray, size: int, batch: int = 64) -> np.ndarray:
    """Grey (N, H, W) -> float32 (N, size, size), bilinear (half-pixel centres, as Keras's Resizing)."""
    import tensorflow as tf

    if images.shape[1:] == (size, size):
        return images.astype(np.float32)
    return np.concatenate([np.asarray(tf.image.resize(images[i:i + batch, :, :, None].astype(np.float32),
                                                      (size, size), method="bilinear"))[..., 0]
                           for i in range(0, len(images), batch)])


def weights_digest(extractor: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for weight in extractor.weights:
        digest.update(np.asarray(weight).tobytes())
    return digest.hexdigest()


# ---- latency, in a fresh process --------------------------------------------------------------------------------

def latency_main(model_dir: Path, images_file: Path, calls: int, warmup: int, threads: int, seed: int,
                 runtime: str = "onnx") -> dict:
    from vapm.config.seeding import set_global_seed

    set_global_seed(seed, threads=threads)
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    from vapm.artefacts import artefact
    from vapm.models.vision_anomaly.scoring import anomaly_map

    model = artefact("patchcore").load(model_dir, runtime)  # as vapm predict loads it
    load_s = time.perf_counter() - started
    images = np.load(images_file)
    extract, search, mapping, total = [], [], [], []
    for i in range(warmup + calls):
        image = images[i % len(images)][None]
        t0 = time.perf_counter()
        patches = model.patches(image)
        t1 = time.perf_counter()
        score, grids = model.score_patches(patches)
        t2 = time.perf_counter()
        heatmap = anomaly_map(grids[0], image.shape[1], model.map_sigma)
        t3 = time.perf_counter()
        assert score.shape == (1,) and heatmap.shape == image.shape[1:]
        if i >= warmup:
            extract.append(t1 - t0)
            search.append(t2 - t1)
            mapping.append(t3 - t2)
            total.append(t3 - t0)
    t0 = time.perf_counter()
    for i in range(min(calls, 20)):  # the public call, as a user makes it
        model.score_images(images[i % len(images)][None])
    score_images_s = (time.perf_counter() - t0) / min(calls, 20)
    return {"runtime": runtime, "calls": calls, "warmup": warmup, "threads": threads, "load_s": round(load_s, 2),
            "total": percentiles(total), "extract": percentiles(extract), "search": percentiles(search),
            "map": percentiles(mapping),
            "score_images_mean_ms": round(score_images_s * 1000, 2),
            "bank_shape": list(model.bank.shape), "image_shape": list(images.shape[1:]),
            "peak_rss_mb": round(peak_rss_mb(), 1), "peak_rss_before_import_mb": round(rss_before, 1)}


def measure_latency(model: Any, images: np.ndarray, calls: int, warmup: int, threads: int, seed: int) -> dict:
    """Per runtime (onnx, the line's default, and keras), the latency of a fresh process that loads the saved model
    (with its checked ONNX export, as training writes it) and predicts one image at a time."""
    from vapm.artefacts.patchcore import PatchCoreArtefact

    results = {}
    with tempfile.TemporaryDirectory(prefix="vapm-anomaly-bench-") as folder:
        PatchCoreArtefact().save(model, Path(folder) / "model")
        PatchCoreArtefact().export(model, Path(folder) / "model", images)
        np.save(Path(folder) / "images.npy", images.astype(np.float32))
        file_mb = (Path(folder) / "model" / "extractor.keras").stat().st_size / 2**20
        for runtime in ("onnx", "keras"):
            command = [sys.executable, "-m", "vapm.bench.anomaly_neu", "--latency-only", str(Path(folder) / "model"),
                       "--latency-images", str(Path(folder) / "images.npy"), "--latency-calls", str(calls),
                       "--warmup", str(warmup), "--threads", str(threads), "--seed", str(seed),
                       "--latency-runtime", "native" if runtime == "keras" else runtime]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
            results[runtime]["extractor_file_mb"] = round(file_mb, 2)
    return results


# ---- main -------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, nargs="?", default=DEFAULT_ARCHIVE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, default=224, help="images resized to this side, the detector's input")
    parser.add_argument("--classes", nargs="*", default=None, help="normal classes to run (default: all)")
    parser.add_argument("--latency-calls", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--fit-images", type=int, default=1000, help="0: skip the fit-time measurement")
    parser.add_argument("--threads", type=int, default=None, help="default: params.yaml compute.threads")
    parser.add_argument("--seed", type=int, default=None, help="default: params.yaml seed")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--latency-only", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--latency-images", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--latency-runtime", default="onnx", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.latency_only is not None:
        print(json.dumps(latency_main(args.latency_only, args.latency_images, args.latency_calls, args.warmup,
                                      args.threads, args.seed, args.latency_runtime)))
        return 0

    from vapm.config.seeding import set_global_seed
    from vapm.config.settings import load_settings

    settings = load_settings(args.params, models=["vision_anomaly"])
    seed = settings.seed if args.seed is None else args.seed
    threads = settings.compute.threads if args.threads is None else args.threads
    params = detector_params(args.size, args.params)
    result: dict[str, Any] = {
        "command": " ".join(["python -m vapm.bench.anomaly_neu"] + sys.argv[1:]), "machine": machine(),
        "load_average": {"start": load_average()}, "threads": threads, "seed": seed,
        "params": params.as_dict(), "one_vs_rest": []}
    compute = set_global_seed(seed, threads=threads)
    result["compute_pinned"] = bool(compute.pinned)
    started = time.perf_counter()

    def write() -> None:
        result["summary"] = summarize(result["one_vs_rest"])
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["load_average"]["end"] = load_average()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    grey, labels, splits, report = load_neu(args.archive, settings)
    images = resize(grey, args.size)
    del grey
    result["data"] = {"archive": args.archive.name, "images": int(len(images)),
                      "train": int((splits == "train").sum()), "test": int((splits == "test").sum()),
                      "test_per_class": {c: int(((splits == "test") & (labels == i)).sum()) for i, c in enumerate(CLASSES)},
                      "duplicates_dropped": report.get("duplicates"), "size": args.size, "resize": "bilinear (tf.image.resize), from the archive's 200 px"}
    print(f"NEU: {len(images)} images ({result['data']['train']} train, {result['data']['test']} test: every test image "
          f"is scored for each normal class), resized to {args.size} px; {threads} threads; load {load_average()}",
          flush=True)

    classes = args.classes or CLASSES
    test_rows = np.flatnonzero(splits == "test")
    test_patches, digest = None, None
    for index, normal in enumerate(classes):
        row, model = evaluate_class(images, labels, splits, CLASSES, normal, params, seed, test_patches)
        this_digest = weights_digest(model.extractor)
        if test_patches is None:  # the extractor is the same for every class (same weights): test patches once
            test_patches, digest = model.patches(images[test_rows]), this_digest
        elif this_digest != digest:
            raise RuntimeError("the extractor's weights differ between classes: the cached test patches do not apply")
        row["load_average_after"] = load_average()
        result["one_vs_rest"].append(row)
        print(f"{normal} normal: AUROC {row['auroc']:.4f}, pAUC {row['pauc']:.4f}, bank {row['bank_size']}, "
              f"fit {row['fit_s']:.0f} s; load {row['load_average_after']}", flush=True)
        if index == 0:
            measured = measure_latency(model, images[test_rows], args.latency_calls, args.warmup, threads, seed)
            weights_bytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.extractor.weights)
            keys = ("runtime", "calls", "warmup", "threads", "load_s", "total", "extract", "search", "map",
                    "score_images_mean_ms", "bank_shape", "image_shape", "peak_rss_mb")
            result["latency"] = {key: measured["onnx"][key] for key in keys}
            result["latency_keras"] = {key: measured["keras"][key] for key in keys}
            result["latency"]["normal_class"] = normal
            result["latency"]["load_average_after"] = load_average()
            latency = measured["onnx"]
            result["memory"] = {"bank_mb": round(model.bank.nbytes / 2**20, 2),
                                "extractor_params": int(sum(int(np.prod(w.shape)) for w in model.extractor.weights)),
                                "extractor_weights_mb": round(weights_bytes / 2**20, 2),
                                "extractor_file_mb": latency["extractor_file_mb"],
                                "predict_process_peak_rss_mb": latency["peak_rss_mb"],
                                "predict_process_peak_rss_mb_keras": measured["keras"]["peak_rss_mb"]}
            for runtime, latency in measured.items():
                t = latency["total"]
                print(f"latency, runtime {runtime} (one {args.size} px image after load, {threads} threads): median "
                      f"{t['median_ms']:.1f} ms, p90 {t['p90_ms']:.1f} ms (extract {latency['extract']['median_ms']:.1f},"
                      f" search {latency['search']['median_ms']:.1f}, map {latency['map']['median_ms']:.1f}); "
                      f"load {load_average()}", flush=True)
        del model
        write()

    if args.fit_images:
        rows = np.flatnonzero(splits == "train")[:args.fit_images]
        subset = images[rows]
        t0 = time.perf_counter()
        from vapm.models.vision_anomaly import fit_patchcore

        model = fit_patchcore(subset, np.zeros(len(rows), dtype=np.int64), np.full(len(rows), "train"), ["normal"],
                              settings=params.model_copy(update={"normal_class": "normal"}), seed=seed)
        fit_s = time.perf_counter() - t0
        present = {c: int((labels[rows] == i).sum()) for i, c in enumerate(CLASSES)}
        result["fit_1000"] = {"n_images": int(len(rows)), "size": args.size, "fit_s": round(fit_s, 1),
                              "images": "the first train images of NEU in ingest order, all classes taken as normal: "
                                        + ", ".join(f"{c} {n}" for c, n in present.items() if n),
                              "bank_size": int(len(model.bank)), "n_patches": int(model.info["n_patches"]),
                              "threshold_method": model.threshold.method, "load_average_after": load_average()}
        print(f"fit on {len(rows)} images of {args.size} px: {fit_s:.0f} s; load {load_average()}", flush=True)
        del model
    result["memory"] = {**result.get("memory", {}), "benchmark_peak_rss_mb": round(peak_rss_mb(), 1)}
    write()
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
