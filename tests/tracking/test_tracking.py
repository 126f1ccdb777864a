"""MLflow runs written by vapm.tracking.runs, read back through MLflow's own query API."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from vapm.tracking import runs as tracking
from vapm.evaluation.figures import save_confusion_png
from vapm.evaluation.metrics import classification_summary

CLASSES = ["a", "b", "c"]
HISTORY = pd.DataFrame({
    "epoch": [1, 2, 3], "phase": ["head", "head", "fine_tune"],
    "loss": [1.5, 0.9, 0.6], "accuracy": [0.4, 0.7, 0.8],
    "val_loss": [1.6, 1.0, 0.7], "val_accuracy": [float("nan"), 0.6, 0.75],
})
RUN_PARAMS = {"seed": 42, "train": {"epochs": 3, "learning_rate": 0.001},
              "train_vision": {"scratch": {"filters": [32, 64], "train": {}}}, "vision": {"classes": CLASSES}}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A git repository with two finished runs in its default SQLite store."""
    repo = tmp_path_factory.mktemp("repo")
    _git(repo, "init", "-q")
    (repo / "manifest_a.parquet").write_bytes(b"first manifest")
    (repo / "manifest_b.parquet").write_bytes(b"second manifest")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "data")

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo)
        for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_BASELINE_REV"):
            patch.delenv(name, raising=False)
        patch.setenv("DVC_EXP_NAME", "quick-lynx")
        manifests = [Path("manifest_a.parquet"), Path("manifest_b.parquet")]

        y_true, y_pred = [0, 1, 2, 2], [0, 1, 1, 2]
        png = save_confusion_png(y_true, y_pred, CLASSES, repo / "confusion.png", "test")
        summary = classification_summary(y_true, y_pred, CLASSES)
        with tracking.tracked_run("vapm-test", "train_vision", "vision_scratch", RUN_PARAMS, manifests) as run:
            tracking.log_history(HISTORY)
            tracking.log_test_results(summary, png)
        keras_run = run.info.run_id

        with tracking.tracked_run("vapm-test", "train_acoustic_svm", "acoustic_svm", {"C": 1.0}, manifests[:1]) as run:
            tracking.log_metrics({"best_C": 1.0})
        sklearn_run = run.info.run_id

        yield {"repo": repo, "uri": tracking.tracking_uri(), "keras_run": keras_run, "sklearn_run": sklearn_run,
               "summary": summary}


def _client(logged):
    import mlflow

    mlflow.set_tracking_uri(logged["uri"])
    return mlflow.MlflowClient(logged["uri"])


def test_default_store_is_sqlite_in_repo_root(logged):
    assert logged["uri"] == f"sqlite:///{logged['repo'].resolve()}/mlflow.db"
    assert (logged["repo"] / "mlflow.db").is_file()
    run = _client(logged).get_run(logged["keras_run"])
    assert run.info.artifact_uri.startswith(str(logged["repo"].resolve() / "mlruns"))


def test_run_params_and_tags(logged):
    import mlflow

    _client(logged)
    runs = mlflow.search_runs(experiment_names=["vapm-test"], filter_string="tags.model = 'vision_scratch'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "vision_scratch"
    assert run["params.seed"] == "42"
    assert run["params.train.epochs"] == "3" and run["params.train.learning_rate"] == "0.001"
    assert run["params.train_vision.scratch.filters"] == "[32, 64]"
    assert run["params.train_vision.scratch.train"] == "{}"
    assert run["params.vision.classes"] == '["a", "b", "c"]'
    assert run["tags.git_commit"] == _git(logged["repo"], "rev-parse", "HEAD")
    assert run["tags.stage"] == "train_vision" and run["tags.model"] == "vision_scratch"
    assert run["tags.dvc_exp_name"] == "quick-lynx"
    assert "tags.dvc_exp_baseline_rev" not in runs.columns or pd.isna(run["tags.dvc_exp_baseline_rev"])
    expected = hashlib.sha256(b"first manifest" + b"second manifest").hexdigest()
    assert run["tags.data_manifest_sha256"] == expected


def test_history_is_logged_per_epoch(logged):
    client = _client(logged)
    loss = client.get_metric_history(logged["keras_run"], "loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [(1, 1.5), (2, 0.9), (3, 0.6)]
    val_accuracy = client.get_metric_history(logged["keras_run"], "val_accuracy")
    assert sorted((m.step, m.value) for m in val_accuracy) == [(2, 0.6), (3, 0.75)]  # the NaN epoch is skipped
    assert len(client.get_metric_history(logged["keras_run"], "accuracy")) == 3


def test_test_results_metrics_and_artifacts(logged):
    client = _client(logged)
    metrics = client.get_run(logged["keras_run"]).data.metrics
    summary = logged["summary"]
    assert metrics["test_accuracy"] == pytest.approx(0.75)
    assert metrics["test_accuracy_ci95_low"] == pytest.approx(summary["accuracy_ci95_low"])
    assert metrics["test_accuracy_ci95_high"] == pytest.approx(summary["accuracy_ci95_high"])
    assert metrics["test_macro_f1"] == pytest.approx(summary["macro_f1"])
    # y_true [0, 1, 2, 2], y_pred [0, 1, 1, 2]: recalls 1, 1, 1/2; the test split's majority class c is half of it.
    assert metrics["test_balanced_accuracy"] == pytest.approx(2.5 / 3)
    assert metrics["test_majority_baseline"] == pytest.approx(0.5)
    assert metrics["test_f1_b"] == pytest.approx(summary["per_class"]["b"]["f1"])
    artifacts = sorted(a.path for a in client.list_artifacts(logged["keras_run"], "evaluation"))
    assert artifacts == ["evaluation/confusion.png", "evaluation/test_summary.json"]
    import mlflow

    summary_back = mlflow.artifacts.load_dict(f"runs:/{logged['keras_run']}/evaluation/test_summary.json")
    assert summary_back == json.loads(json.dumps(summary))


def test_second_run_is_tagged_with_its_own_manifest(logged):
    client = _client(logged)
    run = client.get_run(logged["sklearn_run"])
    assert run.data.tags["data_manifest_sha256"] == hashlib.sha256(b"first manifest").hexdigest()
    assert run.data.metrics["best_C"] == 1.0


def test_failed_block_marks_run_failed_and_bad_input_is_refused(logged, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    monkeypatch.chdir(logged["repo"])
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.tracked_run("vapm-test", "s", "crashing_model", {}, []):
            raise RuntimeError("boom")
    runs = mlflow.search_runs(experiment_names=["vapm-test"], filter_string="tags.model = 'crashing_model'")
    assert runs["status"].tolist() == ["FAILED"]

    with pytest.raises(tracking.TrackingError, match="not found"):
        with tracking.tracked_run("vapm-test", "s", "m", {}, [Path("absent.parquet")]):
            pass
    with pytest.raises(tracking.TrackingError, match="no active MLflow run"):
        tracking.log_history(HISTORY)
    with pytest.raises(tracking.TrackingError, match="epoch"):
        with tracking.tracked_run("vapm-test", "s", "m2", {}, []):
            tracking.log_history(HISTORY.drop(columns=["epoch"]))


def test_tracking_uri_and_git_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", "/srv/project")  # `dvc exp run --temp` runs in a copy, DVC_ROOT is the real repo
    assert tracking.tracking_uri() == "sqlite:////srv/project/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri() == "http://mlflow.example:5000"
    assert tracking.git_commit(tmp_path) == "unknown"


def test_flatten_params():
    assert tracking.flatten_params({"a": {"b": 1, "c": [0.1, 1]}, "d": None, "e": {}, "f": "x"}) == {
        "a.b": "1", "a.c": "[0.1, 1]", "d": "None", "e": "{}", "f": "x"}


# ---- the champion alias (vapm.tracking.promotion) --------------------------------------------------------------

# A 95/5 test split. Model A always answers the majority class: accuracy 0.95, macro-F1 (0.974 + 0) / 2 = 0.487.
# Model B finds 4 of the 5 faults at the cost of 5 false alarms: accuracy 0.94, macro-F1 about 0.75.
IMBALANCED_TRUTH = [0] * 95 + [1] * 5
ALWAYS_MAJORITY = [0] * 100
FINDS_FAULTS = [0] * 90 + [1] * 5 + [1] * 4 + [0]


@pytest.fixture
def registry_store(tmp_path, monkeypatch):
    """An empty SQLite store with one logged pyfunc model; returns a function that registers it under a name."""
    import mlflow
    from mlflow.pyfunc import PythonModel

    class Constant(PythonModel):
        def predict(self, context, model_input: list[float], params=None) -> list[int]:
            return [0] * len(model_input)

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=["mlflow"])
    return info


def _summaries():
    return (classification_summary(IMBALANCED_TRUTH, ALWAYS_MAJORITY, ["healthy", "faulty"]),
            classification_summary(IMBALANCED_TRUTH, FINDS_FAULTS, ["healthy", "faulty"]))


def test_champion_by_macro_f1_and_by_accuracy_choose_differently(registry_store):
    from mlflow.tracking import MlflowClient

    from vapm.tracking.promotion import register_and_promote

    majority, finder = _summaries()
    assert majority["accuracy"] > finder["accuracy"] and majority["macro_f1"] < finder["macro_f1"]
    outcomes = {}
    for metric in ("accuracy", "macro_f1"):
        model = f"toy_{metric}"
        first = register_and_promote(registry_store, model, majority[metric], "m1", 0.0, metric=metric)
        assert first == ("1", "champion", "the first registered version")
        outcomes[metric] = register_and_promote(registry_store, model, finder[metric], "m1", 0.0, metric=metric)
    assert outcomes["accuracy"] == ("2", "challenger", "test accuracy 0.9400 is below champion version 1's 0.9500 by "
                                    "more than the tolerance 0 (mlflow.champion_tolerance)")
    assert outcomes["macro_f1"][:2] == ("2", "champion")
    assert outcomes["macro_f1"][2] == (f"test macro_f1 {finder['macro_f1']:.4f} >= champion version 1's "
                                       f"{majority['macro_f1']:.4f} - tolerance 0")
    client = MlflowClient()
    champion = client.get_model_version_by_alias("vapm-toy_macro_f1", "champion")
    assert str(champion.version) == "2"
    assert champion.tags["champion_metric"] == "macro_f1"
    assert float(champion.tags["champion_score"]) == pytest.approx(finder["macro_f1"], abs=1e-6)
    assert champion.tags["data_manifest_sha256"] == "m1"
    assert str(client.get_model_version_by_alias("vapm-toy_accuracy", "champion").version) == "1"
    # Scored by accuracy, a version keeps the tag older versions carry.
    assert float(client.get_model_version("vapm-toy_accuracy", "2").tags["test_accuracy"]) == pytest.approx(0.94)


def test_a_champion_scored_by_another_metric_gives_a_challenger(registry_store):
    from mlflow.tracking import MlflowClient

    from vapm.tracking.promotion import register_and_promote

    majority, finder = _summaries()
    register_and_promote(registry_store, "toy", majority["accuracy"], "m1", 0.0, metric="accuracy",
                         tags={"test_accuracy": majority["accuracy"], "test_macro_f1": majority["macro_f1"]})
    version, alias, why = register_and_promote(registry_store, "toy", finder["macro_f1"], "m1", 0.0,
                                               metric="macro_f1")
    assert (version, alias) == ("2", "challenger")
    assert why == ("scored by test macro_f1 but champion version 1 by test accuracy (mlflow.champion_metric "
                   "changed): compare them yourself, then move the alias with "
                   "MlflowClient().set_registered_model_alias('vapm-toy', 'champion', 2)")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("vapm-toy", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("vapm-toy", "challenger").version) == "2"
    tags = client.get_model_version("vapm-toy", "1").tags
    assert float(tags["test_macro_f1"]) == pytest.approx(majority["macro_f1"], abs=1e-6)


def test_a_champion_registered_before_champion_metric_counts_as_scored_by_accuracy(registry_store):
    from mlflow.tracking import MlflowClient

    from vapm.tracking.promotion import register_and_promote

    register_and_promote(registry_store, "old", 0.9, "m1", 0.0)
    client = MlflowClient()
    for key in ("champion_metric", "champion_score"):  # what a version from before champion_metric carries
        client.delete_model_version_tag("vapm-old", "1", key)
    assert client.get_model_version("vapm-old", "1").tags == {"test_accuracy": "0.900000",
                                                              "data_manifest_sha256": "m1"}
    version, alias, why = register_and_promote(registry_store, "old", 0.95, "m1", 0.0, metric="macro_f1")
    assert alias == "challenger" and "champion version 1 by test accuracy" in why
    version, alias, why = register_and_promote(registry_store, "old", 0.91, "m1", 0.0, metric="accuracy")
    assert (version, alias, why) == ("3", "champion", "test accuracy 0.9100 >= champion version 1's 0.9000 - "
                                                      "tolerance 0")
    with pytest.raises(ValueError, match="champion metric must be one of"):
        register_and_promote(registry_store, "old", 0.9, "m1", 0.0, metric="f1")
