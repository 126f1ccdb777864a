"""The linear SVM on wavelet-packet features: grid search, persistence, feature sources, the stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vapm.evaluation import read_predictions
from vapm.svm import (
    N_WAVELET_FEATURES,
    FeatureDataError,
    cv_results_table,
    load_features_csv,
    load_svm,
    load_wavelet_features,
    save_svm,
    train_svm,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Bearing", "Flywheel", "Healthy", "LIV"]
C_GRID = [0.01, 0.1, 1.0]
FEATURE_NAMES = [f"wp_L{level}_{node}" for level in range(1, 8) for node in range(2 ** level)]


def _separable(n_per_class: int, seed: int, n_classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around well-separated class centres in 254 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, N_WAVELET_FEATURES))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + rng.normal(size=(y.size, N_WAVELET_FEATURES))
    return X, y


def _wavelet_parquet(path: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    X, y = _separable(n_train + n_test, seed)
    table = pd.DataFrame(X, columns=FEATURE_NAMES)
    table["class"] = np.asarray(CLASSES)[y]
    table["label"] = y.astype(np.int64)
    position = np.tile(np.arange(n_train + n_test), len(CLASSES))
    table["split"] = np.where(position < n_train, "train", "test")
    table["file"] = [f"AirCompressor_Data/{CLASSES[c]}/preprocess_Reading{i + 1}.dat" for c, i in zip(y, position)]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path


def test_grid_search_separates_classes_and_round_trips(tmp_path):
    data = load_wavelet_features(_wavelet_parquet(tmp_path / "wp.parquet"), CLASSES)
    assert data.feature_names == FEATURE_NAMES
    assert len(data.y_train) == 48 and len(data.y_test) == 16
    result = train_svm(data.X_train, data.y_train, CLASSES, C_grid=C_GRID, cv_folds=3, max_iter=5000, seed=0, n_jobs=1)
    assert result.best_C in C_GRID
    assert result.cv_best_accuracy > 0.9
    predicted = result.model.predict(data.X_test)
    assert np.mean(predicted == data.y_test) > 0.9  # chance is 0.25

    table = cv_results_table(result.search)
    assert table["C"].tolist() == C_GRID
    assert [c for c in table.columns if c.startswith("split")] == [f"split{i}_test_score" for i in range(3)]
    assert table.loc[table["rank_test_score"] == 1, "mean_test_score"].max() == pytest.approx(result.cv_best_accuracy)

    loaded = load_svm(save_svm(result.model, tmp_path / "model" / "model.skops"))
    np.testing.assert_array_equal(loaded.predict(data.X_test), predicted)
    np.testing.assert_allclose(loaded.decision_function(data.X_test), result.model.decision_function(data.X_test))


def test_training_is_deterministic_given_the_seed(tmp_path):
    X, y = _separable(10, seed=3)
    X = pd.DataFrame(X + np.random.default_rng(9).normal(scale=4.0, size=X.shape), columns=FEATURE_NAMES)
    first = train_svm(X, y, CLASSES, C_grid=C_GRID, cv_folds=3, max_iter=2000, seed=5, n_jobs=1)
    second = train_svm(X, y, CLASSES, C_grid=C_GRID, cv_folds=3, max_iter=2000, seed=5, n_jobs=1)
    np.testing.assert_array_equal(first.search.cv_results_["mean_test_score"],
                                  second.search.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(first.model.decision_function(X), second.model.decision_function(X))


def test_train_svm_rejects_bad_settings():
    X, y = _separable(3, seed=1)
    X = pd.DataFrame(X, columns=FEATURE_NAMES)
    with pytest.raises(FeatureDataError, match="C_grid"):
        train_svm(X, y, CLASSES, C_grid=[], cv_folds=2, max_iter=100, seed=0)
    with pytest.raises(FeatureDataError, match="C_grid"):
        train_svm(X, y, CLASSES, C_grid=[0.1, -1], cv_folds=2, max_iter=100, seed=0)
    with pytest.raises(FeatureDataError, match="fewer than 5 rows"):
        train_svm(X, y, CLASSES, C_grid=[1], cv_folds=5, max_iter=100, seed=0)


def test_load_svm_refuses_unexpected_types(tmp_path):
    import functools

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "other.skops"
    skops.io.dump(FunctionTransformer(functools.partial(np.add, 1)), path)  # functools.partial is untrusted
    assert skops.io.get_untrusted_types(file=path) == ["functools.partial"]
    with pytest.raises(ValueError, match="refusing"):
        load_svm(path)


def test_wavelet_features_validation(tmp_path):
    path = _wavelet_parquet(tmp_path / "wp.parquet")
    table = pd.read_parquet(path)
    table.drop(columns=["wp_L7_127"]).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(FeatureDataError, match="253"):
        load_wavelet_features(tmp_path / "short.parquet", CLASSES)
    with pytest.raises(FeatureDataError, match="audio.classes"):
        load_wavelet_features(path, list(reversed(CLASSES)))
    table.assign(split="train").to_parquet(tmp_path / "nosplit.parquet")
    with pytest.raises(FeatureDataError, match="split"):
        load_wavelet_features(tmp_path / "nosplit.parquet", CLASSES)
    with pytest.raises(FeatureDataError, match="featurize"):
        load_wavelet_features(tmp_path / "absent.parquet", CLASSES)


def test_wavelet_features_follow_the_featurize_level(tmp_path):
    table = pd.read_parquet(_wavelet_parquet(tmp_path / "wp.parquet"))
    level_six = table.drop(columns=[c for c in table.columns if c.startswith("wp_L7_")])
    level_six.to_parquet(tmp_path / "level6.parquet")
    data = load_wavelet_features(tmp_path / "level6.parquet", CLASSES)
    assert len(data.feature_names) == 126 and data.feature_names[-1] == "wp_L6_63"


# ---- the authors' features CSV ---------------------------------------------------------------

def _authors_csv(path: Path, labels: list, header: bool = True, n_features: int = N_WAVELET_FEATURES) -> Path:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(len(labels), n_features))
    frame = pd.DataFrame(X, columns=[f"WPT_{i + 1}" for i in range(n_features)])
    frame["Fault"] = labels
    frame.to_csv(path, index=False, header=header)
    return path


def test_features_csv_with_class_names(tmp_path):
    labels = [name for name in CLASSES for _ in range(5)]
    path = _authors_csv(tmp_path / "WPTFeatures254_FaultStates.csv", labels)
    data = load_features_csv(path, CLASSES, test_fraction=0.2, seed=1)
    assert data.feature_names[0] == "WPT_1" and len(data.feature_names) == N_WAVELET_FEATURES
    assert len(data.y_test) == 4 and sorted(data.y_test.tolist()) == [0, 1, 2, 3]  # stratified
    assert len(data.y_train) == 16
    # Rows keep their CSV identity and values (header is line 1, data starts on line 2).
    raw = pd.read_csv(path)
    for name, label, row in zip(data.files_test, data.y_test, data.X_test.itertuples(index=False)):
        line = int(name.split("#row")[1])
        assert raw["Fault"].iloc[line - 2] == CLASSES[label]
        np.testing.assert_allclose(raw.iloc[line - 2, :N_WAVELET_FEATURES].to_numpy(float), np.asarray(row))
    again = load_features_csv(path, CLASSES, test_fraction=0.2, seed=1)
    assert again.files_test == data.files_test


def test_features_csv_with_integer_codes_and_no_header(tmp_path):
    labels = [code for code in range(len(CLASSES)) for _ in range(5)]
    path = _authors_csv(tmp_path / "codes.csv", labels, header=False)
    data = load_features_csv(path, CLASSES, test_fraction=0.25, seed=0)
    assert len(data.y_train) + len(data.y_test) == 20
    assert sorted(set(data.y_train.tolist())) == [0, 1, 2, 3]
    assert data.feature_names[0] == "feature_0"


@pytest.mark.parametrize("labels, n_features, message", [
    (["Bearing", "Flywheel"] * 5, 253, "253 feature columns|254 columns"),
    (["Bearing", "Flywheel", "Gearbox"] * 4, N_WAVELET_FEATURES, "unknown labels \\['Gearbox'\\]"),
    ([0, 1, 7] * 4, N_WAVELET_FEATURES, "0..3"),
    (["Bearing"] * 5 + ["Flywheel"], N_WAVELET_FEATURES, "fewer than 2 rows"),
])
def test_features_csv_errors(tmp_path, labels, n_features, message):
    path = _authors_csv(tmp_path / "bad.csv", labels, n_features=n_features)
    with pytest.raises(FeatureDataError, match=message):
        load_features_csv(path, CLASSES, test_fraction=0.2, seed=0)


# ---- the stage -------------------------------------------------------------------------------

def _stage_workspace(tmp_path: Path, features_csv: str | None = None) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["audio"]["classes"] = CLASSES
    params["train_acoustic_svm"].update(
        {"C_grid": [0.1, 1], "cv_folds": 3, "max_iter": 5000, "features_csv": features_csv})
    params["mlflow"]["experiment"] = "svm-test"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _wavelet_parquet(tmp_path / "data" / "features" / "wavelet_packet.parquet")
    return tmp_path


def _run_stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train_acoustic_svm.py")], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_stage_writes_model_outputs_and_mlflow_run(tmp_path):
    workspace = _stage_workspace(tmp_path)
    result = _run_stage(workspace)
    assert result.returncode == 0, result.stderr
    model_dir = workspace / "models" / "acoustic_svm"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "cv_results.csv", "info.json", "model.skops", "predictions.parquet"]
    info = json.loads((model_dir / "info.json").read_text())
    assert info["best_C"] in [0.1, 1] and info["classes"] == CLASSES and info["input_shape"] == [254]
    assert info["feature_names"] == FEATURE_NAMES and info["training_seconds"] > 0
    predictions = read_predictions(model_dir / "predictions.parquet")
    assert list(predictions.columns) == ["file", "y_true", "y_pred"] and len(predictions) == 16
    assert (predictions["y_true"] == predictions["y_pred"]).mean() > 0.9
    test = pd.read_parquet(workspace / "data" / "features" / "wavelet_packet.parquet").query("split == 'test'")
    model = load_svm(model_dir / "model.skops")
    np.testing.assert_array_equal(model.predict(test[FEATURE_NAMES]), predictions["y_pred"].to_numpy())
    assert pd.read_csv(model_dir / "cv_results.csv")["C"].tolist() == [0.1, 1.0]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["svm-test"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.mlflow.runName"] == "acoustic_svm" and run["tags.stage"] == "train_acoustic_svm"
    assert run["params.train_acoustic_svm.C_grid"] == "[0.1, 1]"
    assert run["metrics.best_C"] == info["best_C"]
    assert run["metrics.test_accuracy"] == pytest.approx((predictions["y_true"] == predictions["y_pred"]).mean())
    assert "metrics.cv_accuracy/C_0.1" in runs.columns
    assert run["artifact_uri"].startswith(str(workspace.resolve() / "mlruns"))
    logged = mlflow.sklearn.load_model(f"runs:/{run['run_id']}/model")
    np.testing.assert_array_equal(logged.predict(test[FEATURE_NAMES]), predictions["y_pred"].to_numpy())


def test_stage_reports_a_bad_features_csv(tmp_path):
    workspace = _stage_workspace(tmp_path, features_csv="authors.csv")
    _authors_csv(workspace / "authors.csv", ["Bearing", "Gearbox"] * 4)
    result = _run_stage(workspace)
    assert result.returncode == 1
    assert "Gearbox" in result.stderr and "Traceback" not in result.stderr
