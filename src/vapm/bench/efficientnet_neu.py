"""Measure transfer learning from the packaged ImageNet EfficientNet-Lite0 on the real NEU images.

    .venv/bin/python src/vapm/bench/efficientnet_neu.py ../shared/data/NEU-data-TrainTest.zip \
        --out docs/benchmarks/efficientnet-lite0-neu.json

A measurement, not a pipeline stage. The archive goes through `vapm.data.ingest` exactly as in the pipeline
(so byte-identical duplicates are dropped), then:

1. frozen base: each grey image resized (bilinear, as the transfer model's Resizing layer) to S x S,
   repeated to RGB, through EfficientNet-Lite0 with global average pooling -> 1280 features, computed
   once; a standardised multinomial logistic regression on them (C chosen by 5-fold CV on the training
   part only). Scored on the book's split (72 test images, with a 95 % Wilson interval) and by
   stratified 5-fold over all images.
2. fine-tuning: the base's lower blocks stay frozen in inference mode, so their output is computed
   once per image and per augmentation (flips and 180-degree turn: the defects have no orientation the
   labels depend on); blocks `--first-trainable-block`.. and the head convolution are trained (their
   BatchNorm kept in inference mode, as in the pipeline) with a new dropout + softmax head, first the
   head alone, then together. Same two scorings.

Times are wall-clock on the machine that runs it; peak memory is the process's maximum RSS.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
AUGMENTATIONS = ("identity", "flip_left_right", "flip_up_down", "rotate_180")


def load_neu(archive: Path, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey uint8 images (N, H, W), labels, and the archive's train/test split, via the pipeline's ingest."""
    import pandas as pd

    from vapm.data.ingest import IngestSettings, ingest_vision

    with tempfile.TemporaryDirectory() as folder:
        settings = IngestSettings(on_bad_file="fail", test_fraction=0.2, seed=seed,
                                  max_uncompressed_bytes=2 << 30, n_jobs=2)
        report = ingest_vision(archive, CLASSES, folder, settings)
        manifest = pd.read_parquet(Path(folder) / "manifest.parquet")
        pixels = np.load(Path(folder) / "pixels.npy")
    images = np.stack([pixels[o:o + h * w].reshape(h, w)
                       for o, h, w in zip(manifest["offset"], manifest["height"], manifest["width"])])
    print(f"ingested {len(images)} images; duplicates dropped: {report['duplicates']}", flush=True)
    return images, manifest["label"].to_numpy(), manifest["split"].to_numpy()


def augment(images: np.ndarray, name: str) -> np.ndarray:
    return {"identity": images, "flip_left_right": images[:, :, ::-1], "flip_up_down": images[:, ::-1, :],
            "rotate_180": images[:, ::-1, ::-1]}[name]


def rgb_batches(images: np.ndarray, size: int, batch: int = 32):
    import tensorflow as tf

    for start in range(0, len(images), batch):
        grey = tf.convert_to_tensor(images[start:start + batch, :, :, None], tf.float32)
        if grey.shape[1:3] != (size, size):
            grey = tf.image.resize(grey, (size, size), method="bilinear")
        yield tf.repeat(grey, 3, axis=-1)


def run_model(model, images: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([np.asarray(model(x, training=False)) for x in rgb_batches(images, size)])


def logistic_head_accuracy(x_train, y_train, x_test, y_test, seed: int) -> tuple[float, dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                          {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]},
                          cv=StratifiedKFold(5, shuffle=True, random_state=seed), n_jobs=1)
    search.fit(x_train, y_train)
    accuracy = float((search.predict(x_test) == y_test).mean())
    return accuracy, {"C": search.best_params_["logisticregression__C"]}


def fine_tune_accuracy(cached: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                       state_dict, size: int, first_trainable_block: int, head_epochs: int, tune_epochs: int,
                       seed: int) -> tuple[float, dict]:
    """Train a fresh copy of the top on cached lower-block outputs; accuracy on `test` (identity view)."""
    import keras

    from vapm.config.seeding import set_global_seed
    from vapm.models.components.efficientnet_lite import build_efficientnet_lite0, split_at_block

    set_global_seed(seed)
    base = build_efficientnet_lite0((size, size, 3), include_top=False, pooling="avg", weights=state_dict, seed=seed)
    _, top = split_at_block(base, first_trainable_block)
    inputs = keras.Input(top.input_shape[1:])
    x = top(inputs)
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)

    def fit(epochs: int, learning_rate: float) -> None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        for _ in range(epochs):  # each epoch sees every training image under one random augmentation
            views = rng.integers(len(cached), size=len(train))
            model.fit(cached[views, train], labels[train], batch_size=32, epochs=1, shuffle=True, verbose=0)

    top.trainable = False
    fit(head_epochs, 1e-3)
    top.trainable = True
    for layer in top.layers:  # BatchNorm stays in inference mode (frozen statistics), as in the pipeline
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    fit(tune_epochs, 1e-4)
    probabilities = model.predict(cached[0, test], batch_size=64, verbose=0)
    accuracy = float((probabilities.argmax(axis=1) == labels[test]).mean())
    averaged = np.mean([model.predict(cached[v, test], batch_size=64, verbose=0) for v in range(len(cached))], axis=0)
    return accuracy, {"accuracy_averaged_over_augmentations": float((averaged.argmax(axis=1) == labels[test]).mean()),
                      "trainable_weights": int(sum(np.prod(w.shape) for w in model.trainable_weights))}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="*", default=[224, 200],
                        help="input sizes to score the frozen base at (none: only fine-tune)")
    parser.add_argument("--finetune-size", type=int, default=224)
    parser.add_argument("--first-trainable-block", type=int, default=13)
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--tune-epochs", type=int, default=10)
    parser.add_argument("--finetune-folds", action="store_true", help="also fine-tune in each of the 5 folds")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="keep only this many training images per class (a quick smoke run)")
    args = parser.parse_args(argv)

    from vapm.config.seeding import set_global_seed
    from vapm.evaluation.metrics import wilson_interval
    from vapm.models.components.efficientnet_lite import build_efficientnet_lite0, packaged_weights, split_at_block
    from vapm.models.components.torch_pickle import read_state_dict
    from vapm.training.crossval import fold_splits

    set_global_seed(args.seed)
    started = time.perf_counter()
    images, labels, splits = load_neu(args.archive, args.seed)
    if args.train_per_class is not None:
        keep = (splits == "test") | (np.array([np.sum((labels[:i] == labels[i]) & (splits[:i] == "train"))
                                               for i in range(len(labels))]) < args.train_per_class)
        images, labels, splits = images[keep], labels[keep], splits[keep]
    folds = fold_splits(labels, 5, args.seed)
    weights = packaged_weights()
    state_dict = read_state_dict(weights.path)
    results: dict = {"data": {"archive": args.archive.name, "images": len(images), "test_images": int((splits == "test").sum()),
                              "image_shape": list(images.shape[1:])},
                     "weights": {"distribution": weights.distribution, "version": weights.version,
                                 "file": weights.path.name, "sha256": weights.sha256},
                     "command": " ".join(["python"] + sys.argv), "seed": args.seed, "frozen": {}, "host": {"machine": platform.machine(), "python": sys.version.split()[0]}}

    def score(fit_fold) -> dict:
        book_accuracy, detail = fit_fold(splits == "train", splits == "test")
        n_test = int((splits == "test").sum())
        low, high = wilson_interval(round(book_accuracy * n_test), n_test)
        per_fold = [fit_fold(fold == "train", fold == "test")[0] for fold in folds]
        return {"book_split_test_accuracy": round(book_accuracy, 6), "book_split_wilson_95": [round(low, 4), round(high, 4)],
                "book_split_detail": detail, "fold5_accuracy_mean": round(float(np.mean(per_fold)), 6),
                "fold5_accuracy_per_fold": [round(a, 6) for a in per_fold],
                "fold5_errors": int(round(sum((1 - a) * int((f == "test").sum()) for a, f in zip(per_fold, folds))))}

    cached_views = None
    for size in args.sizes:
        t0 = time.perf_counter()
        base = build_efficientnet_lite0((size, size, 3), include_top=False, pooling="avg", weights=state_dict)
        if size == args.finetune_size:  # one pass gives the features and the fine-tuning cache
            bottom, top = split_at_block(base, args.first_trainable_block)
            cached_views = run_model(bottom, images, size)[None]  # the identity view; the others come later
            features = np.concatenate([np.asarray(top(cached_views[0][i:i + 256], training=False))
                                       for i in range(0, len(images), 256)])
        else:
            features = run_model(base, images, size)
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        entry = score(lambda tr, te: logistic_head_accuracy(features[tr], labels[tr], features[te], labels[te], args.seed))
        entry.update({"feature_seconds": round(seconds, 1), "head_seconds_all_fits": round(time.perf_counter() - t0, 1),
                      "features_per_image": int(features.shape[1])})
        results["frozen"][f"input_{size}"] = entry
        print(f"frozen, input {size}: {json.dumps(entry)}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    if args.tune_epochs or args.head_epochs:
        size = args.finetune_size
        t0 = time.perf_counter()
        bottom, _ = split_at_block(build_efficientnet_lite0((size, size, 3), include_top=False, pooling="avg",
                                                        weights=state_dict), args.first_trainable_block)
        done = [] if cached_views is None else [cached_views]
        cached_views = np.concatenate(done + [run_model(bottom, augment(images, name), size)[None]
                                              for name in AUGMENTATIONS[len(done):]])
        cache_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()

        def fit_fold(train, test):
            return fine_tune_accuracy(cached_views, labels, np.flatnonzero(train), np.flatnonzero(test), state_dict,
                                      size, args.first_trainable_block, args.head_epochs, args.tune_epochs, args.seed)

        if args.finetune_folds:
            entry = score(fit_fold)
        else:
            accuracy, detail = fit_fold(splits == "train", splits == "test")
            n_test = int((splits == "test").sum())
            low, high = wilson_interval(round(accuracy * n_test), n_test)
            entry = {"book_split_test_accuracy": round(accuracy, 6), "book_split_wilson_95": [round(low, 4), round(high, 4)],
                     "book_split_detail": detail}
        entry.update({"input_size": size, "first_trainable_block": args.first_trainable_block,
                      "augmentations": list(AUGMENTATIONS), "head_epochs": args.head_epochs,
                      "tune_epochs": args.tune_epochs, "cache_seconds": round(cache_seconds, 1),
                      "train_seconds_all_fits": round(time.perf_counter() - t0, 1),
                      "cache_mb": round(cached_views.nbytes / 2**20, 1)})
        results["fine_tuned"] = entry
        print(f"fine-tuned: {json.dumps(entry)}", flush=True)

    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["peak_rss_mb"] = round(peak_rss_mb(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("total_seconds", "peak_rss_mb")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
