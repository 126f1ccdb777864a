"""The linear SVM on wavelet-packet features: grid search, persistence, feature sources, the stage."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml

from tests.training.test_training import make_job
from vapm.models import acoustic_svm
from vapm.artefacts import ArtefactError
from vapm.artefacts.sklearn import SklearnArtefact
from vapm.models.components.data import TrainingError, load_features

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["Bearing", "Flywheel", "Healthy", "LIV"]
C_GRID = [0.01, 0.1, 1.0]
N_FEATURES = acoustic_svm.N_CSV_FEATURES
FEATURE_NAMES = [f"wp_L{level}_{node}" for level in range(1, 8) for node in range(2 ** level)]
PARAMS = acoustic_svm.Params(C_grid=C_GRID, cv_folds=3, max_iter=5000)


def _separable(n_per_class: int, seed: int, n_classes: int = len(CLASSES)) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around well-separated class centres in 254 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, N_FEATURES))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(size=(y.size, N_FEATURES)), y


def _wavelet_folder(folder: Path, n_train: int = 12, n_test: int = 4, seed: int = 0, level: int = 7) -> Path:
    X, y = _separable(n_train + n_test, seed)
    table = pd.DataFrame(X, columns=FEATURE_NAMES)
    table["class"] = np.asarray(CLASSES)[y]
    table["label"] = y.astype(np.int64)
    position = np.tile(np.arange(n_train + n_test), len(CLASSES))
    table["split"] = np.where(position < n_train, "train", "test")
    table["file"] = [f"AirCompressor_Data/{CLASSES[c]}/preprocess_Reading{i + 1}.dat" for c, i in zip(y, position)]
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "features.parquet", index=False)
    (folder / "record.json").write_text(json.dumps({"kind": "wavelet", "level": level}))
    return folder


def _job(folder: Path, params: acoustic_svm.Params = PARAMS):
    features = load_features(folder, CLASSES)
    job = make_job(features.x, features.labels, features.splits, params)
    return job.__class__(**{**job.__dict__, "features": features, "class_names": CLASSES})


def test_grid_search_separates_classes_and_round_trips(tmp_path):
    trained = acoustic_svm.train(_job(_wavelet_folder(tmp_path / "wavelet")))
    assert trained.details["best_C"] in C_GRID and trained.score_kind == "decision"
    assert len(trained.split.fit) == 48 and len(trained.split.test) == 16
    labels = trained.features.labels
    assert (trained.test_predictions == labels[trained.split.test]).mean() > 0.9
    assert list(trained.tables["cv_results"]["C"]) == C_GRID
    assert "mean_fit_time" not in trained.tables["cv_results"]  # no timings in a DVC output
    adapter = SklearnArtefact()
    adapter.save(trained.model, tmp_path / "saved")
    first = (tmp_path / "saved" / "model.skops").read_bytes()
    adapter.save(trained.model, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.skops").read_bytes() == first  # deterministic bytes
    loaded = adapter.load(tmp_path / "saved")
    x_test = pd.DataFrame(trained.features.x[trained.split.test], columns=FEATURE_NAMES)
    np.testing.assert_allclose(adapter.scores(loaded, x_test), trained.test_scores)


def test_training_is_deterministic_given_the_seed(tmp_path):
    folder = _wavelet_folder(tmp_path / "wavelet", seed=3)
    first, second = acoustic_svm.train(_job(folder)), acoustic_svm.train(_job(folder))
    assert np.array_equal(first.test_scores, second.test_scores)
    pd.testing.assert_frame_equal(first.tables["cv_results"], second.tables["cv_results"])


def test_bad_grid_and_too_few_rows_are_refused():
    X, y = _separable(2, 0)
    with pytest.raises(TrainingError, match="fewer than 3"):
        acoustic_svm.grid_search(X, y, CLASSES, C_GRID, 3, 100, 0)
    with pytest.raises(TrainingError, match="positive"):
        acoustic_svm.grid_search(*_separable(5, 0), CLASSES, [0.0], 3, 100, 0)
    with pytest.raises(ValueError):
        acoustic_svm.Params(C_grid=[], cv_folds=3, max_iter=10)


def test_loading_refuses_types_no_vapm_model_holds(tmp_path):
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "model.skops"
    skops.io.dump(FunctionTransformer(functools.partial(np.add, 1)), path)  # functools.partial is untrusted
    with pytest.raises(ArtefactError, match="refusing"):
        SklearnArtefact().load(tmp_path)


def test_wavelet_columns_must_match_their_record(tmp_path):
    folder = _wavelet_folder(tmp_path / "wavelet", level=6)
    with pytest.raises(TrainingError, match="rerun featurize"):
        acoustic_svm.train(_job(folder))


# ---- the authors' features CSV ---------------------------------------------------------------

def _authors_csv(path: Path, labels: list, header: bool = True, n_features: int = N_FEATURES) -> Path:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(len(labels), n_features)), columns=[f"WPT_{i + 1}" for i in range(n_features)])
    frame["Fault"] = labels
    frame.to_csv(path, index=False, header=header)
    return path


def test_features_csv_with_class_names(tmp_path):
    labels = [name for name in CLASSES for _ in range(5)]
    path = _authors_csv(tmp_path / "WPTFeatures254_FaultStates.csv", labels)
    data = acoustic_svm.load_features_csv(path, CLASSES, test_fraction=0.2, seed=1)
    assert data.columns[0] == "WPT_1" and len(data.columns) == N_FEATURES
    test = data.splits == "test"
    assert test.sum() == 4 and sorted(data.labels[test].tolist()) == [0, 1, 2, 3]  # stratified
    assert data.record["kind"] == "external" and data.record["source"] == str(path)
    # Rows keep their CSV identity and values (header is line 1, data starts on line 2).
    raw = pd.read_csv(path)
    for name, label, row in zip(data.files[test], data.labels[test], data.x[test]):
        line = int(name.split("#row")[1])
        assert raw["Fault"].iloc[line - 2] == CLASSES[label]
        np.testing.assert_allclose(raw.iloc[line - 2, :N_FEATURES].to_numpy(float), row)
    again = acoustic_svm.load_features_csv(path, CLASSES, test_fraction=0.2, seed=1)
    assert again.files[again.splits == "test"].tolist() == data.files[test].tolist()


def test_features_csv_with_integer_codes_and_no_header(tmp_path):
    labels = [code for code in range(len(CLASSES)) for _ in range(5)]
    data = acoustic_svm.load_features_csv(_authors_csv(tmp_path / "codes.csv", labels, header=False), CLASSES,
                                          test_fraction=0.25, seed=0)
    assert len(data) == 20 and sorted(set(data.labels.tolist())) == [0, 1, 2, 3]
    assert data.columns[0] == "feature_0"


@pytest.mark.parametrize("labels, n_features, message", [
    (["Bearing", "Flywheel"] * 5, 253, "254 feature columns"),
    (["Bearing", "Flywheel", "Gearbox"] * 4, N_FEATURES, "unknown labels \\['Gearbox'\\]"),
    ([0, 1, 7] * 4, N_FEATURES, "0..3"),
    (["Bearing"] * 5 + ["Flywheel"], N_FEATURES, "fewer than 2 rows"),
])
def test_features_csv_errors(tmp_path, labels, n_features, message):
    path = _authors_csv(tmp_path / "bad.csv", labels, n_features=n_features)
    with pytest.raises(TrainingError, match=message):
        acoustic_svm.load_features_csv(path, CLASSES, test_fraction=0.2, seed=0)


# ---- the stage -------------------------------------------------------------------------------

def _stage_workspace(tmp_path: Path, features_csv: str | None = None) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["audio"]["classes"] = CLASSES
    params["acoustic_svm"].update({"C_grid": [0.1, 1], "cv_folds": 3, "max_iter": 5000, "features_csv": features_csv})
    params["mlflow"]["experiment"] = "svm-test"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    _wavelet_folder(tmp_path / "data" / "features" / "wavelet")
    manifest = tmp_path / "data" / "interim" / "acoustic" / "manifest.parquet"
    manifest.parent.mkdir(parents=True)
    pd.DataFrame({"item": np.arange(64)}).to_parquet(manifest)
    return tmp_path


def _run_stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env["PYTHONPATH"] = str(REPO_ROOT / "src")
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "train.py"), "acoustic_svm"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_stage_writes_model_outputs_and_mlflow_run(tmp_path):
    workspace = _stage_workspace(tmp_path)
    result = _run_stage(workspace)
    assert result.returncode == 0, result.stderr
    model_dir = workspace / "models" / "acoustic_svm"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "cv_results.csv", "linear.npz", "model.skops", "predictions.parquet", "record.json", "unfamiliar.npz"]
    record = json.loads((model_dir / "record.json").read_text())
    assert record["details"]["best_C"] in [0.1, 1] and record["classes"] == CLASSES and record["input_shape"] == [254]
    assert record["details"]["feature_names"] == FEATURE_NAMES and record["score_kind"] == "decision"
    predictions = pd.read_parquet(model_dir / "predictions.parquet")
    assert list(predictions.columns[:3]) == ["file", "y_true", "y_pred"] and len(predictions) == 16
    assert list(predictions.columns[3:]) == [f"decision_{name}" for name in CLASSES] + ["unfamiliar_score",
                                                                                     "unfamiliar"]
    assert (predictions["y_true"] == predictions["y_pred"]).mean() > 0.9
    test = pd.read_parquet(workspace / "data" / "features" / "wavelet" / "features.parquet").query("split == 'test'")
    model = SklearnArtefact().load(model_dir)
    np.testing.assert_array_equal(model.predict(test[FEATURE_NAMES]), predictions["y_pred"].to_numpy())
    assert pd.read_csv(model_dir / "cv_results.csv")["C"].tolist() == [0.1, 1.0]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["svm-test"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.mlflow.runName"] == "acoustic_svm" and run["tags.stage"] == "train@acoustic_svm"
    assert run["params.acoustic_svm.C_grid"] == "[0.1, 1.0]"
    assert run["metrics.best_C"] == record["details"]["best_C"]
    assert run["metrics.test_accuracy"] == pytest.approx((predictions["y_true"] == predictions["y_pred"]).mean())
    assert "metrics.cv_accuracy/C_0.1" in runs.columns
    assert run["artifact_uri"].startswith(str(workspace.resolve() / "mlruns"))
    # The logged model is the raw-file pyfunc around the whole model folder, registered as the champion.
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("vapm-acoustic_svm", "champion")
    assert champion.run_id == run["run_id"] and float(champion.tags["test_accuracy"]) == pytest.approx(
        run["metrics.test_accuracy"], abs=1e-6)
    folder = Path(mlflow.artifacts.download_artifacts("models:/vapm-acoustic_svm@champion")) / "artifacts"
    logged = SklearnArtefact().load(folder / "acoustic_svm")
    np.testing.assert_array_equal(logged.predict(test[FEATURE_NAMES]), predictions["y_pred"].to_numpy())


def test_stage_trains_on_the_authors_csv_and_records_that_it_takes_no_raw_files(tmp_path):
    workspace = _stage_workspace(tmp_path, features_csv="authors.csv")
    X, y = _separable(10, 5)
    frame = pd.DataFrame(X, columns=[f"WPT_{i + 1}" for i in range(N_FEATURES)])
    frame["Fault"] = np.asarray(CLASSES)[y]
    frame.to_csv(workspace / "authors.csv", index=False)
    result = _run_stage(workspace)
    assert result.returncode == 0, result.stderr
    record = json.loads((workspace / "models" / "acoustic_svm" / "record.json").read_text())
    assert record["input"]["kind"] == "external" and record["input"]["source"] == "authors.csv"
    from vapm.serving.loading import InferenceError, load_model

    model = load_model(workspace / "models" / "acoustic_svm")
    with pytest.raises(InferenceError, match="cannot compute them from a raw file"):
        model.prepare("clip.wav", b"RIFF")


def test_stage_reports_a_bad_features_csv(tmp_path):
    workspace = _stage_workspace(tmp_path, features_csv="authors.csv")
    _authors_csv(workspace / "authors.csv", ["Bearing", "Gearbox"] * 4)
    result = _run_stage(workspace)
    assert result.returncode == 1
    assert "Gearbox" in result.stderr and "Traceback" not in result.stderr


def test_sigmoid_calibration_gives_probabilities_and_their_calibration_error(tmp_path):
    from vapm.config.model_registry import load_registry
    from vapm.training.run import save_outputs

    job = _job(_wavelet_folder(tmp_path / "wavelet", n_train=18), PARAMS.model_copy(update={"calibration": "sigmoid"}))
    trained = acoustic_svm.train(job)
    assert trained.score_kind == "probability" and trained.details["calibration"] == "sigmoid"
    np.testing.assert_allclose(trained.test_scores.sum(axis=1), 1.0, atol=1e-9)
    assert (trained.test_predictions == trained.features.labels[trained.split.test]).mean() > 0.9
    save_outputs(tmp_path / "model", load_registry(REPO_ROOT / "models.yaml")["acoustic_svm"], job, trained)
    calibration = json.loads((tmp_path / "model" / "calibration.json").read_text())
    assert calibration["temperature"] == 1.0 and calibration["why"].startswith("no validation split")
    assert 0 <= calibration["test"]["ece_before"] == calibration["test"]["ece_after"] <= 1
    assert not (tmp_path / "model" / "linear.npz").exists()  # not a plain linear scorer any more: native runtime
    record = json.loads((tmp_path / "model" / "record.json").read_text())
    assert record["score_kind"] == "probability" and record["unfamiliar"]["features"] == N_FEATURES
