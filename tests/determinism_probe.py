"""Digests of the pipeline's CPU-sensitive pieces, for comparing bytes across dispatch settings.

    python -m tests.determinism_probe synth features svm train

prints one JSON object: a sha256 per array (synthetic clips and images, MFCC + log-mel images, wavelet
energies, resized images, SVM coefficients and decision values, trained weights and test probabilities
of the three neural models and the scratch recipe, the PatchCore detector's patch features, bank, scores and
anomaly maps) and the compute report. tests/config/test_determinism.py runs it in subprocesses
under different environments and core affinities and compares the digests.
"""
from __future__ import annotations

import vapm  # noqa: F401  (first: pins CPU dispatch before NumPy and TensorFlow load)

import hashlib
import json
import sys

import numpy as np

PIECES = ("synth", "features", "svm", "train", "anomaly")
AUDIO_CLASSES = ["Bearing", "Flywheel", "Healthy", "LIV", "LOV", "NRV", "Piston", "Riderbelt"]
VISION_CLASSES = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
RATE = 50000 / 3
SETTINGS = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "validation_fraction": 0.2,
            "early_stopping_patience": 0, "reduce_lr_patience": 0, "reduce_lr_factor": 0.5}


def digest(*arrays: np.ndarray | bytes) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(array if isinstance(array, bytes) else np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()


def synthetic_clips(n: int) -> np.ndarray:
    from vapm.data.synth.acoustic import render_clip
    from vapm.data.synth.archive import member_rng

    names = [AUDIO_CLASSES[i % len(AUDIO_CLASSES)] for i in range(n)]
    return np.stack([render_clip(name, 50_000, RATE, member_rng(42, "acoustic", name, i)) for i, name in enumerate(names)])


def synthetic_images(n: int) -> np.ndarray:
    from vapm.data.synth.archive import member_rng
    from vapm.data.synth.vision import render_defect

    names = [VISION_CLASSES[i % len(VISION_CLASSES)] for i in range(n)]
    return np.stack([render_defect(name, 200, member_rng(42, "vision", name, i)) for i, name in enumerate(names)])


def probe_synth(out: dict) -> None:
    from vapm.data.synth.acoustic import encode_dat
    from vapm.data.synth.vision import encode_jpeg

    clips, images = synthetic_clips(8), synthetic_images(6)
    out["synth_clips"] = digest(clips, *(encode_dat(clip) for clip in clips))
    out["synth_images"] = digest(images, *(encode_jpeg(image) for image in images))


def probe_features(out: dict) -> None:
    from vapm.data.features.acoustic import mfcc_logmel_image, wavelet_packet_energies
    from vapm.data.features.vision import resize_image

    clips = synthetic_clips(8)
    out["acoustic_images"] = digest(np.stack([mfcc_logmel_image(clip, RATE, 40, 64, 2048, 512, None, True)
                                              for clip in clips]))
    out["wavelet_energies"] = digest(np.stack([wavelet_packet_energies(clip, "db4", 7, "symmetric", "log", True)
                                               for clip in clips]))
    images = synthetic_images(6)
    out["resized_images"] = digest(*(resize_image(image, size) for image in images for size in (64, 96)))


def probe_svm(out: dict) -> None:
    from vapm.models.acoustic_svm import build_pipeline as build_svm_pipeline

    rng = np.random.default_rng(1)
    labels = np.arange(240) % 8
    features = rng.normal(size=(240, 254))
    features[np.arange(240), labels] += 2.0
    for C in (0.01, 1.0):
        pipeline = build_svm_pipeline(C, 20_000, seed=0).fit(features, labels)
        out[f"svm_C{C}"] = digest(pipeline[-1].coef_, pipeline.decision_function(features))


def job(x: np.ndarray, labels: np.ndarray, splits: np.ndarray, params, n_classes: int, **train):
    from vapm.config.settings import TrainSettings
    from vapm.models.components.data import FeatureSet
    from vapm.models.components.job import TrainingJob

    features = FeatureSet(x, labels.astype(np.int64), splits, np.array([f"item_{i}" for i in range(len(x))]),
                          {"kind": "probe"})
    return TrainingJob(name="probe", params=params, train=TrainSettings(**{**SETTINGS, **train}), features=features,
                       class_names=[f"c{i}" for i in range(n_classes)], seed=0)


def probe_train(out: dict) -> None:
    from vapm.models import acoustic_cnn, vision_scratch
    from vapm.models.vision_transfer import trainer as vision_transfer
    from vapm.models.vision_transfer.bases import BaseWeights, resolve_weights
    from vapm.config.seeding import set_global_seed

    rng = np.random.default_rng(0)
    splits = np.where(np.arange(60) % 5 == 0, "test", "train")

    def record(name: str, result) -> None:
        weights = [np.asarray(w) for w in result.model.get_weights()]
        out[f"{name}_weights"] = digest(*weights)
        out[f"{name}_test_probabilities"] = digest(result.test_scores)

    set_global_seed(0)  # also configures compute (threads), as every stage does
    images, labels = rng.integers(0, 256, (60, 64, 64), dtype=np.uint8), np.arange(60) % 6
    record("vision_scratch", vision_scratch.train(job(images, labels, splits, vision_scratch.Params(
        filters=[32, 64, 128], kernel_size=3, dense_units=256, dropout=0.2), 6)))
    # The real-data preset's recipe (docs/vision_scratch.md): pooled input, same padding, BatchNorm, average head,
    # a cosine schedule with warm-up and label smoothing: other kernels (BatchNorm, global pooling) than the book's.
    record("vision_scratch_recipe", vision_scratch.train(job(images, labels, splits, vision_scratch.Params(
        filters=[32, 64, 128, 256], kernel_size=3, dense_units=256, dropout=0.2, input_pool=2, padding="same",
        batch_norm=True, head="global_average"), 6, learning_rate=3e-3, lr_schedule="cosine", label_smoothing=0.1)))
    features = (rng.normal(size=(60, 104, 98)) * 10 - 40).astype(np.float32)
    record("acoustic_cnn", acoustic_cnn.train(job(features, np.arange(60) % 8, splits, acoustic_cnn.Params(
        filters=32, kernel_size=4, strides=2, pool_size=2, dense_units=[512, 64], dropout=0.5), 8)))
    transfer = dict(input_size=96, alpha=0.35, dense_units=64, dropout=0.5, fine_tune_layers=10, fine_tune_epochs=1,
                    fine_tune_learning_rate=1e-4)
    record("vision_transfer", vision_transfer.train_transfer(
        job(images, labels, splits, vision_transfer.Params(base="mobilenet_v2", **transfer), 6, epochs=1),
        BaseWeights("none", "none (random init)", None, None, "probe")))
    efficientnet = resolve_weights("efficientnet_lite0", "imagenet", "fail", alpha=1.0, input_size=96)
    record("vision_transfer_efficientnet", vision_transfer.train_transfer(
        job(images, labels, splits, vision_transfer.Params(base="efficientnet_lite0", **transfer), 6, epochs=1),
        efficientnet))


def probe_anomaly(out: dict) -> None:
    """vision_anomaly (PatchCore) on the offline ImageNet EfficientNet-Lite0 at 64 px: what its numbers hang on."""
    from vapm.config.seeding import set_global_seed
    from vapm.models.vision_anomaly import Params, fit_patchcore

    set_global_seed(0)
    images = np.stack([np.asarray(image, dtype=np.float32) for image in synthetic_images(12)])[:, ::3, ::3][:, :64, :64]
    labels, splits = np.array([0] * 8 + [1] * 4), np.array(["train"] * 6 + ["test"] * 6)
    params = Params(normal_class="ok", input_size=64, max_bank_size=100, threshold_method="holdout",
                    validation_fraction=0.34)
    model = fit_patchcore(images, labels, splits, ["ok", "defect"], settings=params, seed=0)
    scores, maps = model.score_with_maps(images[6:])
    out["patchcore_patches"] = digest(model.patches(images[:6]))
    out["patchcore_bank"] = digest(model.bank)
    out["patchcore_scores"] = digest(scores, maps)


def main(pieces: list[str]) -> dict:
    from vapm.config.cpu_dispatch import configure_compute

    unknown = sorted(set(pieces) - set(PIECES))
    if unknown:
        raise SystemExit(f"unknown pieces {unknown}; choose from {PIECES}")
    out: dict = {}
    for piece in pieces:
        globals()[f"probe_{piece}"](out)
    report = configure_compute()  # after the pieces, so it sees every library they loaded
    out["compute"] = {"pinned": report.pinned, "problems": report.problems, "blas": report.blas,
                      "numpy_dispatch": report.numpy_dispatch, "tensorflow_threads": report.tensorflow_threads}
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:] or list(PIECES))))
