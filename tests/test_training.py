"""Training: validation split, learning, the frozen-feature cache, fine-tuning, early stopping, determinism."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.test_models import ACOUSTIC, AUG_OFF, AUG_ON, SCRATCH, TRANSFER, calibrated_base_weights, pattern_images
from vapm.config import ConfigError
from vapm.models import resolve_base_weights
from vapm.seeding import set_global_seed
from vapm.training import (
    HISTORY_COLUMNS,
    TrainingError,
    check_train_settings,
    history_frame,
    split_indices,
    train_acoustic_cnn,
    train_vision_scratch,
    train_vision_transfer,
    uses_feature_cache,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "validation_fraction": 0.2,
            "early_stopping_patience": 0, "reduce_lr_patience": 0, "reduce_lr_factor": 0.5}
SMALL_SCRATCH = {**SCRATCH, "filters": [8, 16], "dense_units": 32}


def tiny_split(labels: np.ndarray, every: int = 4) -> np.ndarray:
    return np.where(np.arange(len(labels)) % every == 0, "test", "train")


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(3), 40)
    splits = tiny_split(labels, every=5)
    split = split_indices(labels, splits, 0.25, seed=3)
    train = np.flatnonzero(splits == "train")
    assert sorted(np.concatenate([split.fit, split.val]).tolist()) == train.tolist()
    assert set(split.test.tolist()) == set(np.flatnonzero(splits == "test").tolist())
    assert np.bincount(labels[split.val]).tolist() == [8, 8, 8]  # 25 % of each class's 32
    again = split_indices(labels, splits, 0.25, seed=3)
    other = split_indices(labels, splits, 0.25, seed=4)
    assert np.array_equal(again.val, split.val) and not np.array_equal(other.val, split.val)
    assert len(split_indices(labels, splits, 0.0, seed=3).val) == 0


def test_split_and_settings_errors_are_clear():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(TrainingError, match="stratified"):
        split_indices(labels, np.array(["train"] * 11 + ["test"]), 0.1, seed=0)
    with pytest.raises(TrainingError, match="both splits"):
        split_indices(labels, np.array(["train"] * 12), 0.2, seed=0)
    with pytest.raises(ConfigError, match="validation_fraction"):
        check_train_settings({**SETTINGS, "validation_fraction": 0.0, "early_stopping_patience": 2})
    with pytest.raises(ConfigError, match="lack"):
        check_train_settings({"epochs": 1})


def test_history_frame_numbers_epochs_and_fills_missing_validation():
    frame = history_frame({"loss": [1.0, 0.5], "accuracy": [0.4, 0.6]}, "fine_tune", first_epoch=4)
    assert list(frame.columns) == HISTORY_COLUMNS
    assert frame["epoch"].tolist() == [4, 5] and set(frame["phase"]) == {"fine_tune"}
    assert frame["val_loss"].isna().all()


def test_scratch_cnn_learns_a_tiny_pattern_problem():
    set_global_seed(0)
    images, labels = pattern_images(16, 32)
    result = train_vision_scratch(images, labels, tiny_split(labels), n_classes=3, model_params=SMALL_SCRATCH,
                                  augmentation=AUG_OFF, settings={**SETTINGS, "epochs": 6}, seed=0)
    accuracy = (result.test_predictions == labels[result.split.test]).mean()
    assert accuracy >= 0.9, result.history
    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]
    assert result.test_probabilities.shape == (len(result.split.test), 3)


def test_acoustic_cnn_learns_which_rows_carry_energy():
    set_global_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 16)
    images = rng.normal(size=(len(labels), 24, 30)).astype("float32") * 5 - 40  # dB-like offsets
    for i, label in enumerate(labels):
        images[i, 8 * label: 8 * label + 8] += 6
    result = train_acoustic_cnn(images, labels, tiny_split(labels), n_classes=3,
                                model_params={**ACOUSTIC, "dense_units": [32]},
                                settings={**SETTINGS, "epochs": 8}, seed=0)
    assert (result.test_predictions == labels[result.split.test]).mean() >= 0.9, result.history


@pytest.fixture(scope="module")
def transfer_data(tmp_path_factory):
    """Tiny pattern images and a MobileNetV2 (alpha 0.35, 32 px) whose frozen features are informative."""
    images, labels = pattern_images(10, 32, n_classes=2)
    path = tmp_path_factory.mktemp("weights") / "base.weights.h5"
    set_global_seed(0)
    calibrated_base_weights(path, images, alpha=0.35, input_size=32)
    return images, labels, resolve_base_weights(str(path), "fail", 0.35, 32)


def _head_weights(model: keras.Model) -> list[np.ndarray]:
    return [w for name in ("head_dense", "probabilities") for w in model.get_layer(name).get_weights()]


def test_cached_features_train_the_head_exactly_like_the_frozen_full_model(transfer_data):
    images, labels, weights = transfer_data
    runs = {}
    for cached in (True, False):
        set_global_seed(5)
        runs[cached] = train_vision_transfer(images, labels, tiny_split(labels), n_classes=2,
                                             model_params=TRANSFER, augmentation=AUG_OFF, settings=SETTINGS,
                                             seed=5, weights=weights, use_feature_cache=cached)
    with_cache, without = runs[True], runs[False]
    assert with_cache.details["feature_cache"] and not without.details["feature_cache"]
    assert with_cache.history["loss"].iloc[0] != with_cache.history["loss"].iloc[-1]  # the head did learn
    pd.testing.assert_frame_equal(with_cache.history, without.history, rtol=1e-5)
    for a, b in zip(_head_weights(with_cache.model), _head_weights(without.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(with_cache.test_probabilities, without.test_probabilities, rtol=1e-4, atol=1e-6)


def test_fine_tuning_continues_epochs_and_moves_only_the_unfrozen_top(transfer_data):
    images, labels, weights = transfer_data
    set_global_seed(0)
    params = {**TRANSFER, "fine_tune_epochs": 1, "fine_tune_layers": 5}
    result = train_vision_transfer(images, labels, tiny_split(labels), n_classes=2, model_params=params,
                                   augmentation=AUG_OFF, settings={**SETTINGS, "epochs": 1, "validation_fraction": 0.0},
                                   seed=0, weights=weights)
    assert result.history["epoch"].tolist() == [1, 2]
    assert result.history["phase"].tolist() == ["head", "fine_tune"]
    reference = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    reference.load_weights(weights.path)
    base = result.model.get_layer(reference.name)
    moved = {layer.name for layer, ref in zip(base.layers, reference.layers, strict=True)
             if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), ref.get_weights()))}
    top_with_weights = {layer.name for layer in base.layers[-5:]
                        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)}
    assert moved == top_with_weights  # BatchNorm statistics and lower layers untouched
    assert result.details["fine_tuned_layers"] == len(top_with_weights)


def test_augmentation_or_request_turns_the_feature_cache_off():
    assert uses_feature_cache(AUG_OFF, True)
    assert not uses_feature_cache(AUG_ON, True)  # augmented images differ every epoch
    assert not uses_feature_cache(AUG_OFF, False)


def test_early_stopping_stops_and_restores_the_best_epoch():
    set_global_seed(0)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(60, 16, 16)).astype(np.uint8)
    labels = rng.integers(0, 2, size=60)  # random labels: val_loss soon rises
    params = {**SMALL_SCRATCH, "filters": [8], "dropout": 0.0}
    result = train_vision_scratch(images, labels, tiny_split(labels, every=6), n_classes=2, model_params=params,
                                  augmentation=AUG_OFF, seed=0,
                                  settings={**SETTINGS, "epochs": 40, "learning_rate": 1e-2,
                                            "validation_fraction": 0.3, "early_stopping_patience": 2})
    history = result.history
    assert len(history) < 40
    assert history["val_loss"].iloc[-1] > history["val_loss"].min()
    val = result.split.val
    restored_loss = result.model.evaluate(images[val], labels[val], batch_size=256, verbose=0)[0]
    assert restored_loss == pytest.approx(history["val_loss"].min(), rel=1e-4)


def test_training_twice_with_the_same_seed_is_bit_identical():
    images, labels = pattern_images(8, 32)
    runs = []
    for _ in range(2):
        set_global_seed(11)
        runs.append(train_vision_scratch(images, labels, tiny_split(labels), n_classes=3,
                                         model_params=SMALL_SCRATCH, augmentation=AUG_ON, settings=SETTINGS,
                                         seed=11))
    pd.testing.assert_frame_equal(runs[0].history, runs[1].history, check_exact=True)
    assert np.array_equal(runs[0].test_probabilities, runs[1].test_probabilities)


# --------------------------------------------------------------------------- the stage, end to end

def _stage_workdir(tmp_path: Path) -> Path:
    """A working directory with params.yaml, a tiny vision.npz and the manifest the run is tagged with."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"].update(epochs=2, batch_size=8)
    params["train_vision"]["scratch"].update(filters=[8, 16], dense_units=32)
    params["vision"]["classes"] = ["Left", "Top", "Stripes"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    images, labels = pattern_images(12, 32)
    features = tmp_path / "data" / "features"
    features.mkdir(parents=True)
    np.savez(features / "vision.npz", images=images, labels=labels.astype(np.int64),
             splits=tiny_split(labels), files=np.array([f"img_{i}.jpg" for i in range(len(labels))]))
    manifest = tmp_path / "data" / "interim" / "vision" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pd.DataFrame({"item": np.arange(len(labels))}).to_parquet(manifest)
    return tmp_path


def _run_stage(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir),
           "TF_CPP_MIN_LOG_LEVEL": "2", "VAPM_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train_vision.py"), *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)


def test_train_vision_stage_writes_its_outputs_and_repeats_bit_identically(tmp_path):
    workdir = _stage_workdir(tmp_path)
    outputs = []
    for _ in range(2):
        proc = _run_stage(workdir, "scratch")
        assert proc.returncode == 0, proc.stderr[-3000:]
        model_dir = workdir / "models" / "vision_scratch"
        outputs.append({name: (model_dir / name).read_bytes() for name in ("history.csv", "predictions.parquet")})
    assert outputs[0] == outputs[1]
    info = json.loads((model_dir / "info.json").read_text())
    assert info["model"] == "vision_scratch" and info["classes"] == ["Left", "Top", "Stripes"]
    assert info["input_shape"] == [32, 32] and info["preprocessing"]["vision"]["image_size"] == 32
    assert info["training_seconds"] > 0
    history = pd.read_csv(model_dir / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS and history["epoch"].tolist() == [1, 2]
    predictions = pd.read_parquet(model_dir / "predictions.parquet")
    assert len(predictions) == 9 and {"prob_Left", "prob_Top", "prob_Stripes"} <= set(predictions.columns)
    loaded = keras.models.load_model(model_dir / "model.keras")
    assert not loaded.compiled  # saved for inference: no Adam state tripling the file
    images = np.load(workdir / "data" / "features" / "vision.npz")["images"][::4]
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               predictions[["prob_Left", "prob_Top", "prob_Stripes"]].to_numpy(), rtol=1e-5)
    assert (workdir / "mlflow.db").is_file()


def test_train_vision_stage_reports_a_missing_features_file_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    proc = _run_stage(tmp_path, "scratch")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("train_vision: data/features/vision.npz not found")
    assert "Traceback" not in proc.stderr
