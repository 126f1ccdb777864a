"""The book notebooks' training loops, for timing vapm against them on the same data, models and epochs.

What the notebooks do, and vapm does not:
- vision: `tf.keras.utils.image_dataset_from_directory` on the extracted `train/<Class>/*.jpg` folders, RGB,
  every JPEG read and decoded again every epoch, `validation_split` with `subset=...` and a seed, a
  `Rescaling(1/255)` layer on 3-channel input, the model built as a `Sequential`, `optimizer="adam"`, no op
  determinism;
- transfer: the same loader at the base's input size, the frozen base run on every image every epoch (no
  feature cache), then fine-tuning of its top layers with a low learning rate;
- acoustic: the MFCC + log-mel images as NumPy arrays straight into `model.fit(x, y, validation_split=...)`.
The architectures (layer sizes, head, base and its weights) come from vapm's params, so both sides train the
same network; only the loop differs. The threads are those of `compute.threads`, like the stages.

    python -m vapm.bench.book_baseline vision_scratch --images /tmp/neu/NEU-data-TrainTest/train --epochs 2
    python -m vapm.bench.book_baseline acoustic_cnn --epochs 2

prints JSON in the schema of `python -m vapm.bench.roofline model` (phases with per-epoch wall and CPU seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vapm.core.errors import VapmError

BOOK_SEED = 123   # the notebooks' `seed=` of image_dataset_from_directory


class BookCodeError(VapmError, ValueError):
    """The book's loop cannot run as asked (no image folders, a model it has no loop for)."""


def extract_train_folder(archive: str | Path, dest: str | Path) -> Path:
    """Extract an NEU archive and return its `train` folder of class sub-folders (the book's layout)."""
    dest = Path(dest)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (dest / member.filename).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise BookCodeError(f"{archive}: member {member.filename} would land outside {dest}")
        zf.extractall(dest)
    candidates = sorted(p for p in dest.rglob("train") if p.is_dir() and any(c.is_dir() for c in p.iterdir()))
    if not candidates:
        raise BookCodeError(f"{archive} has no train/<Class>/ folders (the book's layout)")
    return candidates[0]


def book_image_datasets(train_dir: str | Path, image_size: int, batch_size: int, validation_fraction: float,
                        class_names: Sequence[str]):
    """The notebooks' loader: RGB images decoded from the files every epoch, a seeded validation subset."""
    import tensorflow as tf

    kwargs = dict(image_size=(image_size, image_size), batch_size=batch_size, seed=BOOK_SEED,
                  class_names=list(class_names), label_mode="int", color_mode="rgb")
    if validation_fraction > 0:
        return tf.keras.utils.image_dataset_from_directory(str(train_dir), validation_split=validation_fraction,
                                                           subset="both", **kwargs)
    return tf.keras.utils.image_dataset_from_directory(str(train_dir), **kwargs), None


def book_scratch_model(image_size: int, n_classes: int, params: Any):
    """The notebook's Sequential CNN on RGB input, with vapm's layer sizes."""
    import keras
    from keras import layers

    stack: list[Any] = [keras.Input(shape=(image_size, image_size, 3)), layers.Rescaling(1.0 / 255)]
    for n_filters in params.filters:
        stack += [layers.Conv2D(n_filters, params.kernel_size, activation="relu"), layers.MaxPooling2D()]
    stack += [layers.Flatten(), layers.Dense(params.dense_units, activation="relu"), layers.Dropout(params.dropout),
              layers.Dense(n_classes, activation="softmax")]
    return keras.Sequential(stack, name="book_scratch")


def book_transfer_model(image_size: int, n_classes: int, params: Any, seed: int):
    """The notebook's transfer model on RGB input: the base (vapm's choice and weights), frozen, and the head."""
    import keras
    from keras import layers

    from vapm.models.vision_transfer.bases import build_base, resolve_weights

    weights = resolve_weights(params.base, params.weights, params.offline_fallback, alpha=params.alpha,
                              input_size=params.input_size)
    base = build_base(weights, params.input_size, params.alpha, seed)
    base.trainable = False
    inputs = keras.Input(shape=(image_size, image_size, 3))
    x = inputs
    if weights.base == "mobilenet_v2":
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)  # keras.applications.mobilenet_v2.preprocess_input
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(params.dense_units, activation="relu")(x)
    x = layers.Dropout(params.dropout)(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="book_transfer"), base


def _compile(model: Any, learning_rate: float | None = None) -> None:
    import keras

    optimizer = "adam" if learning_rate is None else keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])


def _fit_phase(recorder: Any, phase: str, model: Any, fit: Callable[[list[Any]], Any], n_fit: int, n_val: int,
               batch_size: int, epochs: int) -> None:
    from vapm.models.components.keras_fit import FitInfo

    callback = recorder.fit_callback(model, FitInfo(phase, n_fit, n_val, batch_size, batch_size, epochs))
    fit([callback])


def run_book(name: str, settings: Any, epochs: int, images: str | Path | None = None,
             count_flops: bool = True) -> dict[str, Any]:
    """Train registered model `name` the book's way for `epochs` epochs per phase; the Recorder's dict."""
    import tensorflow as tf

    from vapm.bench.fit_timing import Recorder
    from vapm.config.seeding import set_global_seed

    started = time.perf_counter()
    # The notebooks neither seed TensorFlow's ops nor make them deterministic; they run on the same threads.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings.compute.threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.compute.threads)
    except RuntimeError:
        pass  # TensorFlow already started in this process (tests): its pools stay as they are
    set_global_seed(settings.seed, tensorflow=False)
    recorder = Recorder(count_flops)
    params, train = settings.model(name), settings.train_for(name)
    classes = settings.classes("vision" if name.startswith("vision") else "audio")
    if classes is None:
        raise BookCodeError("the book's loops take their classes from params: list them (vision.classes / "
                            "audio.classes) instead of auto")
    if name in ("vision_scratch", "vision_transfer"):
        if images is None:
            raise BookCodeError(f"the book's {name} loop reads JPEG folders: pass --images <train folder>")
        size = settings.vision.image_size if name == "vision_scratch" else params.input_size
        train_ds, val_ds = book_image_datasets(images, size, train.batch_size, train.validation_fraction, classes)
        n_fit = len(train_ds.file_paths)
        n_val = len(val_ds.file_paths) if val_ds is not None else 0
        if name == "vision_scratch":
            model = book_scratch_model(size, len(classes), params)
            _compile(model)
            _fit_phase(recorder, "train", model, lambda cb: model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                                                                       callbacks=cb, verbose=2),
                       n_fit, n_val, train.batch_size, epochs)
        else:
            from vapm.models.vision_transfer.trainer import unfreeze_top_layers

            model, base = book_transfer_model(size, len(classes), params, settings.seed)
            _compile(model, train.learning_rate)
            _fit_phase(recorder, "head", model, lambda cb: model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                                                                      callbacks=cb, verbose=2),
                       n_fit, n_val, train.batch_size, epochs)
            if params.fine_tune_epochs > 0:
                unfreeze_top_layers(base, params.fine_tune_layers)
                _compile(model, params.fine_tune_learning_rate)
                _fit_phase(recorder, "fine_tune", model,
                           lambda cb: model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cb,
                                                verbose=2),
                           n_fit, n_val, train.batch_size, epochs)
    elif name == "acoustic_cnn":
        from vapm.config.model_registry import get_entry
        from vapm.models.acoustic_cnn import build, row_statistics
        from vapm.models.components.data import load_features

        features = load_features(get_entry(name).input, classes)
        train_rows = features.splits == "train"
        x = np.asarray(features.x[train_rows], dtype=np.float32)
        y = features.labels[train_rows]
        n_val = int(len(x) * train.validation_fraction)  # Keras's validation_split: the last rows
        mean, variance = row_statistics(x[: len(x) - n_val])
        model = build(x.shape[1:], len(classes), params, mean, variance, settings.seed)
        _compile(model, train.learning_rate)
        _fit_phase(recorder, "train", model,
                   lambda cb: model.fit(x, y, batch_size=train.batch_size, epochs=epochs, callbacks=cb,
                                        validation_split=train.validation_fraction, verbose=2),
                   len(x) - n_val, n_val, train.batch_size, epochs)
    else:
        raise BookCodeError(f"the book has no training loop for {name}: it has them for vision_scratch, "
                            "vision_transfer and acoustic_cnn")
    return {"runner": "book", "model": name, "epochs": epochs, "total_seconds": time.perf_counter() - started,
            "threads": settings.compute.threads, **recorder.as_dict()}


BOOK_MODELS = ("vision_scratch", "vision_transfer", "acoustic_cnn")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="vision_scratch | vision_transfer | acoustic_cnn")
    parser.add_argument("--images", help="the extracted train/ folder of class sub-folders (vision models)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="write the JSON here (default: stdout)")
    args = parser.parse_args(argv)

    from vapm.core.errors import run_stage

    with run_stage(f"bookcode {args.model}"):
        from vapm.bench.fit_timing import measurement_settings
        from vapm.config.settings import load_settings

        settings = measurement_settings(load_settings(models=[args.model]), args.model, args.epochs)
        result = run_book(args.model, settings, args.epochs, args.images)
        result["load_average"] = list(os.getloadavg())
        text = json.dumps(result, indent=1, default=float)
        if args.out:
            Path(args.out).write_text(text + "\n")
        else:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
