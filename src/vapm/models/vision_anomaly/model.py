"""A fitted PatchCore detector: the patch extractor, the memory bank, the threshold; fitting from normal images.

Saved as a folder: patchcore.json (settings, threshold, where the base's weights came from, the bank's shape),
bank.npy (float32 (M, D) patch features) and extractor.keras (the patch extractor with its weights, so that a
model folder scores images without the weights package and gives the same features that built its bank).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vapm.core.errors import VapmError
from vapm.models.components.anomaly_threshold import (
    Threshold,
    alarms,
    choose_method,
    holdout_indices,
    make_threshold,
    out_of_fold_scores,
)
from vapm.models.vision_anomaly.coreset import select_bank
from vapm.models.vision_anomaly.features import extract_patches, patch_extractor
from vapm.models.vision_anomaly.scoring import Bank, anomaly_map, image_scores, nearest_in_bank
from vapm.models.vision_anomaly.settings import Params

MODEL_FILE = "patchcore.json"
BANK_FILE = "bank.npy"
EXTRACTOR_FILE = "extractor.keras"


class PatchCoreError(VapmError, ValueError):
    """A PatchCore model that cannot be fitted or loaded as asked."""


def base_weights(weights: str | None) -> tuple[str | None, dict[str, Any]]:
    """(the file to load into EfficientNet-Lite0 or None, a host-free description of it)."""
    from vapm.core.hashing import file_sha256
    from vapm.models.components.efficientnet_lite import packaged_weights

    requested = "none" if weights is None else str(weights)
    if requested.lower() == "none":
        return None, {"requested": requested, "used": "none (random init, seeded)", "sha256": None}
    if requested.lower() == "imagenet":
        packaged = packaged_weights()
        return str(packaged.path), {"requested": requested, "used": "imagenet", "sha256": packaged.sha256,
                                    "source": f"{packaged.distribution} {packaged.version}"}
    path = Path(requested).expanduser()
    if not path.is_file():
        raise PatchCoreError(f"vision_anomaly.weights: {requested} is not a file (expected imagenet, none, or the "
                             "path of an EfficientNet-Lite0 PyTorch state dict)")
    return str(path), {"requested": requested, "used": "file", "sha256": file_sha256(path), "source": path.name}


def build_extractor(params: Params, image_size: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """The patch extractor on (image_size, image_size) grey images, and what weights its base got."""
    from vapm.models.components.efficientnet_lite import build_efficientnet_lite0

    path, described = base_weights(params.weights)
    base = build_efficientnet_lite0((params.input_size, params.input_size, 3), include_top=False, weights=path,
                                    seed=seed, name="efficientnet_lite0")
    base.trainable = False
    return patch_extractor(base, params.layers, image_size, params.input_size, params.feature_dim), described


@dataclass
class PatchCoreModel:
    extractor: Any                 # keras.Model: grey (S, S) -> (h, w, D) patch features
    bank: np.ndarray               # float32 (M, D)
    threshold: Threshold
    normal_class: str
    n_neighbors: int
    map_sigma: float
    image_size: int
    fit_rows: np.ndarray           # indices (into the arrays given to fit_patchcore) of the images in the bank
    normal_scores: np.ndarray      # the held-out normal scores the threshold was set on
    info: dict[str, Any] = field(default_factory=dict)  # settings, weights, bank sizes: for the record
    batch_size: int = 16

    method = "patchcore"

    def patches(self, images: np.ndarray) -> np.ndarray:
        return extract_patches(self.extractor, np.asarray(images), self.batch_size)

    def prepared_bank(self) -> Bank:
        """The bank with its float64 copy and norms, computed once per bank, not once per image."""
        cached = self.__dict__.get("_prepared")
        if cached is None or cached[0] is not self.bank:
            cached = (self.bank, Bank(self.bank))
            self.__dict__["_prepared"] = cached
        return cached[1]

    def score_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image scores (N,), patch scores (N, h, w)) of patch features (N, h, w, D)."""
        n, h, w, d = patches.shape
        flat = patches.reshape(n * h * w, d)
        bank = self.prepared_bank()
        distances, locations = nearest_in_bank(flat, bank)
        scores = image_scores(distances.reshape(n, h * w), locations.reshape(n, h * w), patches.reshape(n, h * w, d),
                              bank, self.n_neighbors)
        return scores, distances.reshape(n, h, w)

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """float64 anomaly scores of grey (N, S, S) images (higher = more abnormal)."""
        return self.score_patches(self.patches(images))[0]

    def score_with_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N,), anomaly maps (N, S, S) float64 at the images' side)."""
        scores, grids = self.score_patches(self.patches(images))
        side = int(np.shape(images)[1])
        maps = np.stack([anomaly_map(grid, side, self.map_sigma) for grid in grids]) if len(grids) else \
            np.zeros((0, side, side))
        return scores, maps

    def is_abnormal(self, scores: Any) -> np.ndarray:
        return alarms(scores, self.threshold.value)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "normal_class": self.normal_class, "threshold": self.threshold.as_dict(),
                "n_neighbors": self.n_neighbors, "map_sigma": self.map_sigma, "image_size": self.image_size,
                "batch_size": self.batch_size, "bank_shape": list(self.bank.shape),
                "n_fit_images": int(len(self.fit_rows)), **self.info,
                "normal_scores": [float(score) for score in self.normal_scores]}

    def save(self, directory: str | Path) -> Path:
        """The folder's files; the artefact adapter then makes extractor.keras's bytes stable (no zip dates)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / BANK_FILE, np.ascontiguousarray(self.bank, dtype=np.float32), allow_pickle=False)
        self.extractor.save(directory / EXTRACTOR_FILE)
        values = {**self.describe(), "fit_rows": [int(row) for row in self.fit_rows]}
        (directory / MODEL_FILE).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return directory / MODEL_FILE

    @classmethod
    def load(cls, directory: str | Path, extractor: Any = None) -> "PatchCoreModel":
        """The saved detector; with `extractor` (e.g. an ONNX Runtime session of extractor.onnx) instead of the
        folder's extractor.keras, and then without importing Keras."""
        directory = Path(directory)
        path = directory / MODEL_FILE
        if not path.is_file():
            raise PatchCoreError(f"{path} not found: train the vision_anomaly model first (dvc repro)")
        values = json.loads(path.read_text())
        bank = np.load(directory / BANK_FILE, allow_pickle=False)
        if list(bank.shape) != values["bank_shape"] or bank.dtype != np.float32:
            raise PatchCoreError(f"{directory / BANK_FILE} is not the bank {path} describes: retrain the model")
        if extractor is None:
            import keras

            extractor = keras.saving.load_model(directory / EXTRACTOR_FILE, compile=False)
        info = {key: values[key] for key in ("settings", "weights", "n_patches", "grid") if key in values}
        return cls(extractor=extractor, bank=bank, threshold=Threshold.from_dict(values["threshold"]),
                   normal_class=values["normal_class"], n_neighbors=int(values["n_neighbors"]),
                   map_sigma=float(values["map_sigma"]), image_size=int(values["image_size"]),
                   fit_rows=np.asarray(values["fit_rows"], dtype=np.int64),
                   normal_scores=np.asarray(values["normal_scores"], dtype=np.float64), info=info,
                   batch_size=int(values.get("batch_size", 16)))


def normal_train_rows(labels: Any, splits: Any, class_names: Sequence[str], normal_class: str) -> np.ndarray:
    """Indices of the train split's images of the normal class: the only images the bank may learn from."""
    labels, splits = np.asarray(labels), np.asarray(splits).astype(str)
    if normal_class not in class_names:
        raise PatchCoreError(f"vision_anomaly.normal_class {normal_class!r} is not one of the classes "
                             f"{list(class_names)}")
    return np.flatnonzero((splits == "train") & (labels == list(class_names).index(normal_class)))


def resolve_normal_class(labels: Any, splits: Any, class_names: Sequence[str], normal_class: str | None) -> str:
    """`normal_class`, or when it is None the class with the most train images (ties: the first in the list)."""
    if normal_class is not None:
        return normal_class
    labels, splits = np.asarray(labels), np.asarray(splits).astype(str)
    counts = np.bincount(labels[splits == "train"], minlength=len(class_names))
    return str(list(class_names)[int(np.argmax(counts))])


def fit_patchcore(images: np.ndarray, labels: Any, splits: Any, class_names: Sequence[str], *, settings: Params,
                  seed: int) -> PatchCoreModel:
    """The bank from the normal train images, the threshold from normal images it was not built from.

    As acoustic_anomaly (components.anomaly_threshold): a holdout of `validation_fraction` of the normal train
    images when it resolves `false_alarm_rate`, else out-of-fold scores over `cv_folds` folds and a final bank from
    all of them. Each image's patch features are computed once; each fold selects its own coreset.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise PatchCoreError(f"vision_anomaly takes square grey images (N, S, S), got {images.shape}")
    settings = settings.model_copy(update={"normal_class": resolve_normal_class(labels, splits, class_names,
                                                                                settings.normal_class)})
    rows = normal_train_rows(labels, splits, class_names, settings.normal_class)
    n_normal = len(rows)
    if n_normal < 2:
        raise PatchCoreError(f"only {n_normal} {settings.normal_class!r} image in the train split: a threshold needs "
                             "normal images that the bank is not built from")
    image_size = int(images.shape[1])
    extractor, weights = build_extractor(settings, image_size, seed)
    normal = extract_patches(extractor, images[rows], settings.batch_size)
    n, h, w, d = normal.shape

    def fit(indices: np.ndarray, normal_scores: np.ndarray, threshold: Threshold | None) -> PatchCoreModel:
        patches = normal[indices].reshape(-1, d)
        chosen = select_bank(patches, settings.coreset_fraction, settings.max_bank_size, settings.projection_dim,
                             seed)
        info = {"settings": settings.as_dict(), "weights": weights, "n_patches": int(len(patches)),
                "grid": [h, w, d]}
        return PatchCoreModel(extractor=extractor, bank=np.ascontiguousarray(patches[np.sort(chosen)]),
                              threshold=threshold, normal_class=settings.normal_class,  # type: ignore[arg-type]
                              n_neighbors=settings.n_neighbors, map_sigma=settings.map_sigma, image_size=image_size,
                              fit_rows=rows[indices], normal_scores=normal_scores, info=info,
                              batch_size=settings.batch_size)

    method, reason = choose_method(settings.threshold_method, n_normal, settings.validation_fraction,
                                   settings.false_alarm_rate)
    if method == "holdout":
        fit_indices, validation = holdout_indices(n_normal, settings.validation_fraction, seed)
        model = fit(fit_indices, np.zeros(0), None)
        scores = model.score_patches(normal[validation])[0]
        model.threshold = make_threshold(scores, settings.false_alarm_rate, method, reason)
        model.normal_scores = scores
        return model
    if settings.cv_folds > n_normal:
        raise PatchCoreError(f"vision_anomaly.cv_folds = {settings.cv_folds} exceeds the {n_normal} "
                             f"{settings.normal_class!r} train images: lower it")
    scores = out_of_fold_scores(n_normal, settings.cv_folds, seed,
                                lambda part, held: fit(part, np.zeros(0), None).score_patches(normal[held])[0])
    threshold = make_threshold(scores, settings.false_alarm_rate, method, reason, folds=settings.cv_folds)
    return fit(np.arange(n_normal), scores, threshold)
