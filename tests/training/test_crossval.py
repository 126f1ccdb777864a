"""`vapm crossval` on tiny sample data, with the real trainers and TensorFlow: every classifier runs, parallel
folds give the bytes serial ones do, the scores are scikit-learn's on the fold predictions, DVC and the report
show them, and the fold times stay out of git."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params
from tests.readme import link_environment, readme_command
from vapm.evaluation.crossval import OUT_DIR, TIMING_DIR, metrics_document, read_summary, summarize

FOLDS = 2
FAST = ["acoustic_svm", "vision_scratch"]  # one scikit-learn model, one Keras model: the fast suite's share


@pytest.fixture(scope="module")
def crossval_repo(tmp_path_factory) -> Path:
    """A copy of the repository with the tiny sample data's features (the demo's stages at the tests' scale)."""
    repo = copy_repo(tmp_path_factory.mktemp("crossval") / "repo")
    update_params(repo, {**TINY_PIPELINE, "crossval.folds": FOLDS})
    git_commit(repo, "tiny params, two folds")
    link_environment(repo)
    for stage in ("sample_data", "ingest", "featurize"):
        run(["python", f"stages/{stage}.py"], repo)
    return repo


@pytest.fixture(scope="module")
def parallel_run(crossval_repo: Path) -> dict[str, bytes]:
    """`vapm crossval acoustic_svm vision_scratch -j 2`: each model's metrics file, as written."""
    # joblib's idle workers once held a finished fold's process for 300 s: a hang fails here, not in CI's clock
    proc = run(["vapm", "crossval", *FAST, "-j", "2"], crossval_repo, timeout=300)
    for name in FAST:
        assert f"{name}: accuracy" in proc.stdout and f"{name} fold {FOLDS}/{FOLDS}:" in proc.stdout
    return {name: (crossval_repo / OUT_DIR / f"{name}.json").read_bytes() for name in FAST}


def serial_folds(repo: Path, name: str, monkeypatch: pytest.MonkeyPatch):
    """The folds as `-j 1` trains them (one after the other, in this process), with their predictions."""
    from vapm.config.settings import load_settings
    from vapm.training.crossval import run_folds

    monkeypatch.chdir(repo)
    settings = load_settings(models=[name])
    return run_folds(name, settings, FOLDS, jobs=1)


@pytest.mark.parametrize("name", FAST)
def test_parallel_folds_write_the_serial_bytes_and_sklearns_scores(crossval_repo, parallel_run, name, monkeypatch):
    folds = serial_folds(crossval_repo, name, monkeypatch)
    labels_seen = np.concatenate([fold.y_true for fold in folds])
    written = json.loads(parallel_run[name])
    summary = read_summary(written, name)
    assert summary["folds"] == FOLDS and summary["n_items"] == len(labels_seen)  # every item tested once
    # The scores, computed here from the fold predictions with scikit-learn and NumPy directly.
    expected = {"accuracy": [accuracy_score(f.y_true, f.y_pred) for f in folds],
                "balanced_accuracy": [balanced_accuracy_score(f.y_true, f.y_pred) for f in folds],
                "macro_f1": [f1_score(f.y_true, f.y_pred, average="macro") for f in folds]}
    for metric, values in expected.items():
        assert summary[f"{metric}_per_fold"] == pytest.approx(values, abs=1e-6), metric
        assert summary[f"{metric}_mean"] == pytest.approx(np.mean(values), abs=1e-6), metric
        assert summary[f"{metric}_sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-6), metric
        assert summary[f"{metric}_min"] == pytest.approx(min(values), abs=1e-6), metric
    # Each fold's flag and temperature were fitted on its other folds; the shares are of the fold's test items.
    for fold in folds:
        assert fold.unfamiliar.dtype == bool and len(fold.unfamiliar) == len(fold.y_true)
        assert (fold.ece is not None) == (name != "acoustic_svm")  # the SVM gives decision scores
    assert summary["unfamiliar_share_per_fold"] == pytest.approx([np.mean(f.unfamiliar) for f in folds], abs=1e-6)
    assert summary["unfamiliar_share_max"] == pytest.approx(max(np.mean(f.unfamiliar) for f in folds), abs=1e-6)
    assert ("ece_calibrated_mean" in summary) == (name != "acoustic_svm")
    # Two folds in two processes wrote, byte for byte, what the same folds trained one after the other give.
    from vapm.evaluation.crossval import fold_scores, trust_scores

    serial = summarize([{**fold_scores(f.y_true, f.y_pred), **trust_scores(f.unfamiliar, f.ece)} for f in folds],
                       len(labels_seen))
    assert parallel_run[name] == (json.dumps(metrics_document(name, serial), indent=2, sort_keys=True) + "\n").encode()


def test_fold_times_stay_out_of_git_and_dvc_shows_the_scores(crossval_repo, parallel_run):
    repo = crossval_repo
    timing = json.loads((repo / TIMING_DIR / "acoustic_svm.json").read_text())
    assert timing["jobs"] == 2 and len(timing["fold_training_seconds"]) == FOLDS
    assert run(["git", "check-ignore", "-q", f"{TIMING_DIR}/acoustic_svm.json"], repo, check=False).returncode == 0
    assert run(["git", "check-ignore", "-q", f"{OUT_DIR}/acoustic_svm.json"], repo, check=False).returncode == 1
    data = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)[""]["data"]
    for name in FAST:
        written = read_summary(json.loads(parallel_run[name]), name)
        shown = data[f"{OUT_DIR}/{name}.json"]["data"][name]["crossval"]
        # every number, under `<model>.crossval.*`; the per-fold lists DVC leaves out
        assert shown == {key: value for key, value in written.items() if not isinstance(value, list)}
    assert not any(str(TIMING_DIR) in path for path in data)


def test_detectors_and_bad_job_counts_are_refused_in_one_line(crossval_repo):
    detector = run(["vapm", "crossval", "acoustic_anomaly"], crossval_repo, check=False)
    assert detector.returncode == 1 and "acoustic_anomaly: not a classifier" in detector.stderr
    assert "Traceback" not in detector.stderr
    zero = run(["vapm", "crossval", "acoustic_svm", "-j", "0"], crossval_repo, check=False)
    assert zero.returncode == 1 and "-j/--jobs must be at least 1" in zero.stderr


@pytest.mark.slow
def test_every_classifier_runs_in_parallel_as_in_series_and_is_reported(crossval_repo):
    """The transfer model (frozen features once per fold, one fine-tuning epoch) and the acoustic CNN too."""
    repo = crossval_repo
    readme_command("vapm crossval vision_transfer -j 2", repo)
    parallel = (repo / OUT_DIR / "vision_transfer.json").read_bytes()
    run(["vapm", "crossval", "acoustic_cnn", "-j", "2"], repo)
    parallel_cnn = (repo / OUT_DIR / "acoustic_cnn.json").read_bytes()
    run(["vapm", "crossval", "vision_transfer", "acoustic_cnn", "-j", "1"], repo)
    assert (repo / OUT_DIR / "vision_transfer.json").read_bytes() == parallel
    assert (repo / OUT_DIR / "acoustic_cnn.json").read_bytes() == parallel_cnn
    shown = readme_command("dvc metrics show -R metrics/crossval", repo, env={"COLUMNS": "4000"}).stdout
    assert "vision_transfer.crossval.accuracy_mean" in shown and "acoustic_cnn.crossval.macro_f1_sd" in shown
    run(["vapm", "report", "--base", "HEAD"], repo)
    markdown = (repo / "reports" / "report.md").read_text()
    assert "## Cross-validation" in markdown
    for name in ("vision_transfer", "acoustic_cnn"):
        summary = read_summary(json.loads((repo / OUT_DIR / f"{name}.json").read_text()), name)
        assert f"{FOLDS} ({summary['n_items']})" in markdown
        assert f"{100 * summary['accuracy_mean']:.1f} % ± {100 * summary['accuracy_sd']:.1f}" in markdown


@pytest.mark.slow
def test_transfer_computes_its_frozen_features_once_per_fold_not_per_epoch(crossval_repo, monkeypatch):
    import vapm.models.components.keras_fit as keras_fit

    calls: list[tuple[str, int]] = []
    predict = keras_fit.predict_in_batches

    def counted(model, x, *args, **kwargs):
        calls.append((model.name, len(x)))
        return predict(model, x, *args, **kwargs)

    monkeypatch.setattr(keras_fit, "predict_in_batches", counted)
    folds = serial_folds(crossval_repo, "vision_transfer", monkeypatch)
    assert TINY_PIPELINE["train.epochs"] > 1  # several head epochs, and still one pass of the base per fold
    base_passes = [n for name, n in calls if name.endswith("_features")]
    # per fold: the fit images once and the validation images once, whatever the number of epochs
    assert len(base_passes) == 2 * len(folds) and len(folds) == FOLDS, calls


def test_a_folds_image_checks_are_fitted_on_its_training_images_and_flag_inverted_test_images():
    """Crossval refits featurize's input checks per fold (the featurized record's saw the fold's test items)."""
    from tests.data.test_image_polarity import pitted_strip
    from tests.training.test_training import make_job
    from vapm.training.crossval import failed_image_checks

    rng = np.random.default_rng(3)
    images = np.stack([pitted_strip(rng) for _ in range(140)])
    test = np.arange(120, 140)
    images[test[10:]] = 255 - images[test[10:]]  # half the fold's test items inverted
    splits = np.where(np.isin(np.arange(140), test), "test", "train")
    job = make_job(images, np.zeros(140, dtype=np.int64), np.full(140, "train"), params=None)
    flagged = failed_image_checks(job, splits, test)
    assert flagged[10:].all() and flagged[:10].sum() <= 1
    acoustic = make_job(np.zeros((140, 4, 4), np.float32), np.zeros(140, dtype=np.int64), np.full(140, "train"),
                        params=None)
    assert failed_image_checks(acoustic, splits, test) is None  # feature images are not checked as images
