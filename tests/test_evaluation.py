"""Metrics, confusion outputs, predictions files and the evaluate stage."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vapm.evaluation import (
    EvaluationError,
    classification_summary,
    confusion_counts,
    confusion_rows,
    read_predictions,
    save_confusion_png,
    wilson_interval,
    write_metrics_json,
    write_predictions,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
VISION = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
AUDIO = ["Bearing", "Flywheel", "Healthy", "LIV", "LOV", "NRV", "Piston", "Riderbelt"]


# ---- Wilson interval -------------------------------------------------------------------------

@pytest.mark.parametrize("successes, n, low, high", [
    (8, 10, 0.4902, 0.9433),       # textbook example
    (81, 263, 0.2553, 0.3662),     # Wilson (1927) / Newcombe (1998) worked example
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_known_values(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=5e-5)
    assert got_high == pytest.approx(high, abs=5e-5)


def test_wilson_interval_edges_and_confidence():
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0
    narrow, wide = wilson_interval(8, 10, 0.80), wilson_interval(8, 10, 0.99)
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]
    # Symmetric counts give mirrored intervals.
    a, b = wilson_interval(3, 20), wilson_interval(17, 20)
    assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])


@pytest.mark.parametrize("successes, n, confidence", [(0, 0, 0.95), (3, 2, 0.95), (-1, 5, 0.95), (1, 5, 1.0)])
def test_wilson_interval_rejects_bad_input(successes, n, confidence):
    with pytest.raises(ValueError):
        wilson_interval(successes, n, confidence)


# ---- classification summary ------------------------------------------------------------------

def test_classification_summary_matches_hand_counts():
    classes = ["a", "b", "c"]
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 1, 2, 2, 2, 0, 1]
    summary = classification_summary(y_true, y_pred, classes)
    # a: TP 2, predicted 3 (2 + one c), actual 3 -> P 2/3, R 2/3, F1 2/3
    # b: TP 2, predicted 4, actual 2 -> P 1/2, R 1, F1 2/3
    # c: TP 3, predicted 3, actual 5 -> P 1, R 3/5, F1 3/4
    assert summary["accuracy"] == pytest.approx(0.7)
    assert summary["n_test"] == 10
    assert summary["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert summary["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert summary["per_class"]["c"] == pytest.approx({"precision": 1.0, "recall": 0.6, "f1": 0.75, "support": 5})
    assert summary["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.75) / 3)
    low, high = wilson_interval(7, 10)
    assert (summary["accuracy_ci95_low"], summary["accuracy_ci95_high"]) == (low, high)
    # Plain JSON types only.
    assert json.loads(json.dumps(summary)) == summary
    assert type(summary["n_test"]) is int and type(summary["per_class"]["a"]["support"]) is int


def test_classification_summary_class_absent_from_test_split():
    summary = classification_summary(np.array([0, 0, 1]), np.array([0, 0, 1]), ["a", "b", "c"])
    assert summary["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert summary["macro_f1"] == 1.0  # the absent class does not drag macro-F1 down


@pytest.mark.parametrize("y_true, y_pred, message", [
    ([0, 1], [0], "items"),
    ([], [], "no test items"),
    ([0, 3], [0, 1], "outside 0..2"),
    ([0.5, 1.0], [0, 1], "integer"),
])
def test_classification_summary_rejects_bad_labels(y_true, y_pred, message):
    with pytest.raises(EvaluationError, match=message):
        classification_summary(y_true, y_pred, ["a", "b", "c"])


def test_confusion_counts_and_rows():
    counts = confusion_counts([0, 0, 1, 2], [0, 1, 1, 0], ["a", "b", "c"])
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    rows = confusion_rows([0, 2], [1, 2], ["a", "b", "c"])
    assert rows.to_dict("list") == {"actual": ["a", "c"], "predicted": ["b", "c"]}


def test_confusion_png_is_written(tmp_path):
    from PIL import Image

    path = save_confusion_png([0, 1, 2, 2], [0, 1, 1, 2], ["a", "b", "c"], tmp_path / "sub" / "c.png", "title")
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 300
    again = save_confusion_png([0, 1, 2, 2], [0, 1, 1, 2], ["a", "b", "c"], tmp_path / "again.png", "title")
    assert again.read_bytes() == path.read_bytes()  # deterministic bytes, so DVC sees no change


# ---- predictions files -----------------------------------------------------------------------

def test_predictions_round_trip_with_probabilities(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32)
    path = write_predictions(tmp_path / "m" / "predictions.parquet", ["x.jpg", "y.jpg"], [0, 1], [0, 1],
                             ["a", "b", "c"], probabilities=probs)
    table = read_predictions(path)
    assert list(table.columns) == ["file", "y_true", "y_pred", "prob_a", "prob_b", "prob_c"]
    assert table["y_true"].dtype == np.int64 and table["y_pred"].dtype == np.int64
    assert table["file"].tolist() == ["x.jpg", "y.jpg"]
    np.testing.assert_allclose(table[["prob_a", "prob_b", "prob_c"]].to_numpy(), probs, rtol=1e-6)


def test_predictions_without_probabilities_and_errors(tmp_path):
    path = write_predictions(tmp_path / "p.parquet", ["x"], np.array([2]), np.array([1]), ["a", "b", "c"])
    assert list(read_predictions(path).columns) == ["file", "y_true", "y_pred"]
    with pytest.raises(EvaluationError, match="shape"):
        write_predictions(tmp_path / "q.parquet", ["x"], [0], [0], ["a", "b"], probabilities=[[1.0, 0, 0]])
    with pytest.raises(EvaluationError, match="file names"):
        write_predictions(tmp_path / "q.parquet", ["x", "y"], [0], [0], ["a", "b"])
    with pytest.raises(EvaluationError, match="not found"):
        read_predictions(tmp_path / "absent.parquet")
    pd.DataFrame({"file": ["x"], "y_true": [0]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(EvaluationError, match="y_pred"):
        read_predictions(tmp_path / "bad.parquet")


def test_metrics_json_is_rounded_and_sorted(tmp_path):
    path = write_metrics_json(tmp_path / "m.json", {"b": 1 / 3, "a": {"z": np.float32(0.5), "y": np.int64(3)}})
    assert path.read_text() == '{\n  "a": {\n    "y": 3,\n    "z": 0.5\n  },\n  "b": 0.333333\n}\n'


# ---- the evaluate stage ----------------------------------------------------------------------

def _fake_model_dir(root: Path, name: str, classes: list[str], seed: int, with_history: bool,
                    with_probabilities: bool, info: dict | None = None) -> None:
    rng = np.random.default_rng(seed)
    n = 3 * len(classes)
    y_true = np.repeat(np.arange(len(classes)), 3)
    y_pred = np.where(rng.random(n) < 0.75, y_true, rng.integers(0, len(classes), n))
    probs = None
    if with_probabilities:
        logits = rng.normal(size=(n, len(classes)))
        logits[np.arange(n), y_pred] += 5
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    model_dir = root / "models" / name
    write_predictions(model_dir / "predictions.parquet", [f"{classes[t]}/item_{i}" for i, t in enumerate(y_true)],
                      y_true, y_pred, classes, probabilities=probs)
    if with_history:
        pd.DataFrame({
            "epoch": [1, 2, 3], "phase": ["head", "head", "fine_tune"],
            "loss": [1.9, 1.2, 0.8123456789], "accuracy": [0.3, 0.55, 0.71],
            "val_loss": [2.0, 1.4, 1.0], "val_accuracy": [0.25, 0.5, 0.66],
        }).to_csv(model_dir / "history.csv", index=False)
    if info is not None:
        (model_dir / "info.json").write_text(json.dumps(info))


def _evaluate_workspace(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"vision": {"classes": VISION}, "audio": {"classes": AUDIO}}))
    _fake_model_dir(tmp_path, "vision_scratch", VISION, 1, with_history=True, with_probabilities=True)
    _fake_model_dir(tmp_path, "vision_transfer", VISION, 2, with_history=True, with_probabilities=True,
                    info={"model": "vision_transfer", "weights": {"used": "none (random init)", "reason": "imagenet unavailable"}})
    _fake_model_dir(tmp_path, "acoustic_svm", AUDIO, 3, with_history=False, with_probabilities=False,
                    info={"model": "acoustic_svm", "best_C": 0.1})
    _fake_model_dir(tmp_path, "acoustic_cnn", AUDIO, 4, with_history=True, with_probabilities=True)
    return tmp_path


def _run_evaluate(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "evaluate.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_evaluate_stage_writes_all_metrics(tmp_path):
    workspace = _evaluate_workspace(tmp_path)
    result = _run_evaluate(workspace)
    assert result.returncode == 0, result.stderr
    metrics = workspace / "metrics"
    for name, classes in [("vision_scratch", VISION), ("vision_transfer", VISION),
                          ("acoustic_svm", AUDIO), ("acoustic_cnn", AUDIO)]:
        predictions = read_predictions(workspace / "models" / name / "predictions.parquet")
        summary = json.loads((metrics / f"{name}.json").read_text())
        expected = classification_summary(predictions["y_true"], predictions["y_pred"], classes)
        assert summary["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        assert summary["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-6)
        assert summary["n_test"] == len(predictions)
        assert sorted(summary["per_class"]) == sorted(classes)
        confusion = pd.read_csv(metrics / "confusion" / f"{name}.csv")
        assert list(confusion.columns) == ["actual", "predicted"]
        names = np.asarray(classes)
        assert confusion["actual"].tolist() == names[predictions["y_true"]].tolist()
        assert confusion["predicted"].tolist() == names[predictions["y_pred"]].tolist()
        assert (metrics / "confusion" / f"{name}.png").stat().st_size > 1000
        assert name in result.stdout
    assert json.loads((metrics / "vision_transfer.json").read_text())["weights_used"].startswith("none")
    assert "weights_used" not in json.loads((metrics / "acoustic_svm.json").read_text())
    curves = pd.read_csv(metrics / "curves" / "acoustic_cnn.csv")
    assert list(curves.columns) == ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert curves["epoch"].tolist() == [1, 2, 3] and curves["loss"].iloc[2] == pytest.approx(0.812346, abs=1e-9)
    assert not (metrics / "curves" / "acoustic_svm.csv").exists()

    # A second run gives byte-identical files, so `dvc metrics diff` and `dvc status` stay clean.
    before = {p: p.read_bytes() for p in metrics.rglob("*") if p.is_file()}
    assert _run_evaluate(workspace).returncode == 0
    assert {p: p.read_bytes() for p in metrics.rglob("*") if p.is_file()} == before


def test_evaluate_stage_reports_missing_model(tmp_path):
    workspace = _evaluate_workspace(tmp_path)
    for path in (workspace / "models" / "acoustic_cnn").iterdir():
        path.unlink()
    (workspace / "models" / "acoustic_cnn").rmdir()
    result = _run_evaluate(workspace)
    assert result.returncode == 1
    assert "models/acoustic_cnn" in result.stderr and "train_acoustic_cnn" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_stage_reports_class_list_mismatch(tmp_path):
    workspace = _evaluate_workspace(tmp_path)
    params = {"vision": {"classes": VISION[:5]}, "audio": {"classes": AUDIO}}
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    result = _run_evaluate(workspace)
    assert result.returncode == 1
    assert "vision_scratch" in result.stderr and "Traceback" not in result.stderr
