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

from tests.models.test_models import ACOUSTIC, AUG_ON, SCRATCH, TRANSFER, calibrated_base_weights, pattern_images
from vapm.models import acoustic_cnn, vision_scratch
from vapm.models.vision_transfer import trainer as vision_transfer
from vapm.models.vision_transfer.bases import resolve_base_weights
from vapm.config.seeding import set_global_seed
from vapm.config.settings import TrainSettings
from vapm.models.components.data import FeatureSet, TrainingError, split_indices
from vapm.models.components.job import TrainingJob
from vapm.models.components.keras_fit import HISTORY_COLUMNS, history_frame

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = TrainSettings(epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.2,
                         early_stopping_patience=0, reduce_lr_patience=0, reduce_lr_factor=0.5)
SMALL_SCRATCH = SCRATCH.model_copy(update={"filters": [8, 16], "dense_units": 32})


def tiny_split(labels: np.ndarray, every: int = 4) -> np.ndarray:
    return np.where(np.arange(len(labels)) % every == 0, "test", "train")


def make_job(x: np.ndarray, labels: np.ndarray, splits: np.ndarray, params, train: TrainSettings = SETTINGS,
             seed: int = 0, **changes) -> TrainingJob:
    """A TrainingJob over in-memory arrays, as the train stage builds one from a features folder."""
    features = FeatureSet(x, labels.astype(np.int64), splits, np.array([f"item_{i}" for i in range(len(labels))]),
                          {"kind": "test"})
    classes = [f"c{i}" for i in range(int(labels.max()) + 1)]
    return TrainingJob(name="test", params=params, train=train.model_copy(update=changes), features=features,
                       class_names=classes, seed=seed)


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
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainSettings(**{**SETTINGS.model_dump(), "validation_fraction": 0.0, "early_stopping_patience": 2})
    with pytest.raises(ValueError, match="missing"):
        TrainSettings(epochs=1)


def test_history_frame_numbers_epochs_and_fills_missing_validation():
    frame = history_frame({"loss": [1.0, 0.5], "accuracy": [0.4, 0.6]}, "fine_tune", first_epoch=4)
    assert list(frame.columns) == HISTORY_COLUMNS
    assert frame["epoch"].tolist() == [4, 5] and set(frame["phase"]) == {"fine_tune"}
    assert frame["val_loss"].isna().all()


def test_scratch_cnn_learns_a_tiny_pattern_problem():
    set_global_seed(0)
    images, labels = pattern_images(16, 32)
    result = vision_scratch.train(make_job(images, labels, tiny_split(labels), SMALL_SCRATCH, epochs=6))
    accuracy = (result.test_predictions == labels[result.split.test]).mean()
    assert accuracy >= 0.9, result.history
    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]
    assert result.test_scores.shape == (len(result.split.test), 3) and result.score_kind == "probability"


def test_acoustic_cnn_learns_which_rows_carry_energy():
    set_global_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 16)
    images = rng.normal(size=(len(labels), 24, 30)).astype("float32") * 5 - 40  # dB-like offsets
    for i, label in enumerate(labels):
        images[i, 8 * label: 8 * label + 8] += 6
    params = ACOUSTIC.model_copy(update={"dense_units": [32]})
    result = acoustic_cnn.train(make_job(images, labels, tiny_split(labels), params, epochs=8))
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
    # Exactly, bit for bit, on every CPU -- given one condition on the batch size. The cache runs the frozen
    # base once on all fit images; the full model runs it on every training batch. oneDNN picks how it
    # blocks a convolution's input-channel sum from the batch size and the CPU's L1 cache size, so
    # per-image features from a batch of 8 and of 12 may differ in their last bits on some CPUs (an AMD EPYC
    # did). No float32 error bound then carries over to the weights: Adam's step m/sqrt(v) has size ~1 for
    # any gradient above its epsilon, so a near-zero gradient that changes sign moves a weight by up to the
    # learning rate per step. With a batch size above the number of fit images both paths run the base on
    # one batch holding all of them (in the same seeded order), so they compute the same bits.
    images, labels, weights = transfer_data
    batch_size = 16
    runs = {}
    for cached in (True, False):
        set_global_seed(5)
        params = TRANSFER.model_copy(update={"cache_frozen_features": cached})
        runs[cached] = vision_transfer.train_transfer(make_job(images, labels, tiny_split(labels), params, seed=5,
                                                               batch_size=batch_size), weights)
    with_cache, without = runs[True], runs[False]
    assert len(with_cache.split.fit) < batch_size
    assert with_cache.details["feature_cache"] and not without.details["feature_cache"]
    assert with_cache.history["loss"].iloc[0] != with_cache.history["loss"].iloc[-1]  # the head did learn
    pd.testing.assert_frame_equal(with_cache.history, without.history, check_exact=True)
    for a, b in zip(_head_weights(with_cache.model), _head_weights(without.model), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(with_cache.test_scores, without.test_scores)


def test_fine_tuning_continues_epochs_and_moves_only_the_unfrozen_top(transfer_data):
    images, labels, weights = transfer_data
    set_global_seed(0)
    params = TRANSFER.model_copy(update={"fine_tune_epochs": 1, "fine_tune_layers": 5})
    result = vision_transfer.train_transfer(make_job(images, labels, tiny_split(labels), params, epochs=1,
                                                     validation_fraction=0.0), weights)
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
    assert vision_transfer.uses_feature_cache(TRANSFER)
    assert not vision_transfer.uses_feature_cache(TRANSFER.model_copy(update={"augmentation": AUG_ON}))
    assert not vision_transfer.uses_feature_cache(TRANSFER.model_copy(update={"cache_frozen_features": False}))


def test_early_stopping_stops_and_restores_the_best_epoch():
    set_global_seed(0)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(60, 16, 16)).astype(np.uint8)
    labels = rng.integers(0, 2, size=60)  # random labels: val_loss soon rises
    params = SMALL_SCRATCH.model_copy(update={"filters": [8], "dropout": 0.0})
    result = vision_scratch.train(make_job(images, labels, tiny_split(labels, every=6), params, epochs=40,
                                           learning_rate=1e-2, validation_fraction=0.3, early_stopping_patience=2))
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
        params = SMALL_SCRATCH.model_copy(update={"augmentation": AUG_ON})
        runs.append(vision_scratch.train(make_job(images, labels, tiny_split(labels), params, seed=11)))
    pd.testing.assert_frame_equal(runs[0].history, runs[1].history, check_exact=True)
    assert np.array_equal(runs[0].test_scores, runs[1].test_scores)


# --------------------------------------------------------------------------- the stage, end to end

def _stage_workdir(tmp_path: Path) -> Path:
    """params.yaml, models.yaml, a tiny image features folder and the manifest the run is tagged with."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train"].update(epochs=2, batch_size=8)
    params["vision_scratch"].update(filters=[8, 16], dense_units=32)
    params["vision"]["classes"] = ["Left", "Top", "Stripes"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    images, labels = pattern_images(12, 32)
    features = tmp_path / "data" / "features" / "image"
    features.mkdir(parents=True)
    np.savez(features / "features.npz", images=images, labels=labels.astype(np.int64),
             splits=tiny_split(labels), files=np.array([f"img_{i}.jpg" for i in range(len(labels))]))
    (features / "record.json").write_text(json.dumps({"kind": "image", "image_size": 32}))
    manifest = tmp_path / "data" / "interim" / "vision" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pd.DataFrame({"item": np.arange(len(labels))}).to_parquet(manifest)
    return tmp_path


def _run_stage(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir),
           "TF_CPP_MIN_LOG_LEVEL": "2", "VAPM_NO_PROGRESS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train.py"), *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=300)


def test_train_stage_writes_its_outputs_and_repeats_bit_identically(tmp_path):
    workdir = _stage_workdir(tmp_path)
    outputs = []
    model_dir = workdir / "models" / "vision_scratch"
    for _ in range(2):
        proc = _run_stage(workdir, "vision_scratch")
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append({path.relative_to(model_dir): path.read_bytes()
                        for path in sorted(model_dir.rglob("*")) if path.is_file()})
    assert outputs[0] == outputs[1]  # every file, the model's bytes included: no times or host facts
    record = json.loads((model_dir / "record.json").read_text())
    assert record["model"] == "vision_scratch" and record["classes"] == ["Left", "Top", "Stripes"]
    assert record["input"] == {"kind": "image", "image_size": 32} and record["input_shape"] == [32, 32]
    assert (record["task"], record["artefact"], record["score_kind"]) == ("classifier", "keras", "probability")
    with np.load(workdir / "data" / "features" / "image" / "features.npz") as features:
        in_training = features["labels"][features["splits"] == "train"]
        in_test = features["labels"][features["splits"] == "test"]
    assert record["train_class_counts"] == {name: int(np.sum(in_training == i))  # the evaluate stage's baseline
                                            for i, name in enumerate(["Left", "Top", "Stripes"])}
    history = pd.read_csv(model_dir / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS and history["epoch"].tolist() == [1, 2]
    live_loss = pd.read_csv(model_dir / "live" / "plots" / "metrics" / "train" / "loss.tsv", sep="\t")
    np.testing.assert_allclose(live_loss["loss"], history["loss"], rtol=1e-6)  # DVCLive logged every epoch
    predictions = pd.read_parquet(model_dir / "predictions.parquet")
    assert len(predictions) == 9 and {"prob_Left", "prob_Top", "prob_Stripes"} <= set(predictions.columns)
    loaded = keras.models.load_model(model_dir / "model.keras")
    assert not loaded.compiled  # saved for inference: no Adam state tripling the file
    images = np.load(workdir / "data" / "features" / "image" / "features.npz")["images"][::4]
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               predictions[["prob_Left", "prob_Top", "prob_Stripes"]].to_numpy(), rtol=1e-5)
    assert (workdir / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("vapm-vision_scratch", "champion")  # version 1: the first
    metrics = client.get_run(champion.run_id).data.metrics
    assert champion.tags["champion_metric"] == "macro_f1"  # params.yaml mlflow.champion_metric
    assert float(champion.tags["champion_score"]) == pytest.approx(metrics["test_macro_f1"], abs=1e-6)
    assert float(champion.tags["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert 0 <= metrics["test_balanced_accuracy"] <= 1
    # Always answering the training split's most frequent class (the first of a tie):
    majority = int(np.argmax(np.bincount(in_training, minlength=3)))
    assert metrics["test_majority_baseline"] == pytest.approx(float(np.mean(in_test == majority)))


def test_train_stage_reports_a_missing_features_folder_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    proc = _run_stage(tmp_path, "vision_scratch")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "train@vision_scratch: data/features/image/record.json not found"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_stage_names_an_unknown_model(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    proc = _run_stage(tmp_path, "vision_scrach")
    assert proc.returncode == 1 and "no model ['vision_scrach'] in models.yaml" in proc.stderr


# --------------------------------------------------------------------------- schedule and label smoothing

def test_cosine_schedule_warms_up_for_one_epoch_then_decays_to_a_hundredth():
    from vapm.models.components.keras_fit import learning_rate_schedule

    train = SETTINGS.model_copy(update={"epochs": 5, "batch_size": 8, "learning_rate": 0.01, "lr_schedule": "cosine"})
    schedule = learning_rate_schedule(train, n_fit=36)          # 5 steps per epoch, 25 steps in all
    rates = [float(schedule(step)) for step in range(25)]
    assert rates[0] == pytest.approx(0.001) and rates[5] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(rates[:5], rates[1:6]))        # warm-up rises
    assert all(a > b for a, b in zip(rates[5:24], rates[6:25]))     # then only falls
    assert float(schedule(25)) == pytest.approx(0.0001)
    assert learning_rate_schedule(SETTINGS, n_fit=36) == SETTINGS.learning_rate


def test_smoothed_loss_is_the_cross_entropy_of_the_smoothed_targets():
    from vapm.models.components.keras_fit import smoothed_sparse_crossentropy

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = np.array([0, 1])
    targets = np.full((2, 3), 0.3 / 3) + 0.7 * np.eye(3)[labels]
    expected = -(targets * np.log(probabilities)).sum(axis=1)
    got = np.asarray(smoothed_sparse_crossentropy(0.3)(labels, probabilities))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_cosine_schedule_cannot_be_cut_on_plateaus_too():
    with pytest.raises(ValueError, match="reduce_lr_patience to 0"):
        TrainSettings(**{**SETTINGS.model_dump(), "lr_schedule": "cosine", "reduce_lr_patience": 2})


def test_the_scratch_recipe_learns_and_repeats_bit_identically():
    from tests.models.test_models import RECIPE

    images, labels = pattern_images(16, 32)
    train = SETTINGS.model_copy(update={"epochs": 8, "learning_rate": 0.01, "lr_schedule": "cosine",
                                        "label_smoothing": 0.1})
    runs = []
    for _ in range(2):
        set_global_seed(3)
        runs.append(vision_scratch.train(make_job(images, labels, tiny_split(labels),
                                                  RECIPE.model_copy(update={"filters": [8, 16]}), train, seed=3)))
    accuracy = (runs[0].test_predictions == labels[runs[0].split.test]).mean()
    assert accuracy >= 0.9, runs[0].history
    pd.testing.assert_frame_equal(runs[0].history, runs[1].history, check_exact=True)
    assert np.array_equal(runs[0].test_scores, runs[1].test_scores)
