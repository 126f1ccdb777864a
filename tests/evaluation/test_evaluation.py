"""Metrics, McNemar, confusion pictures, predictions files and the evaluate stage."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vapm.evaluation.evaluate import read_predictions
from vapm.evaluation.figures import save_confusion_png
from vapm.evaluation.metrics import (EvaluationError, classification_summary, confusion_counts, confusion_rows,
                                     mcnemar_exact, wilson_interval, write_metrics_json)

REPO_ROOT = Path(__file__).resolve().parents[2]
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
    # Balanced accuracy: mean recall (2/3 + 1 + 3/5) / 3; majority baseline: c, the most frequent test class, 5/10.
    assert summary["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0.6) / 3)
    assert (summary["majority_baseline"], summary["majority_class"], summary["majority_from"]) == (0.5, "c", "test")


def test_balanced_accuracy_and_majority_baseline_on_an_imbalanced_split():
    # 95 healthy and 5 faulty test items, and a model that always answers healthy: 95 % accurate, and no better
    # than the majority baseline; balanced accuracy (recall 1 on healthy, 0 on faulty) shows it: 0.5.
    from sklearn.metrics import balanced_accuracy_score

    y_true = np.array([0] * 95 + [1] * 5)
    y_pred = np.zeros(100, dtype=np.int64)
    summary = classification_summary(y_true, y_pred, ["healthy", "faulty"], train_counts=[380, 20])
    assert summary["accuracy"] == pytest.approx(0.95)
    assert summary["balanced_accuracy"] == pytest.approx(0.5) == balanced_accuracy_score(y_true, y_pred)
    assert summary["majority_baseline"] == pytest.approx(0.95)
    assert (summary["majority_class"], summary["majority_from"]) == ("healthy", "train")
    # A model that finds 4 of the 5 faults at the cost of 5 false alarms: accuracy 0.94 is below the baseline,
    # balanced accuracy (90/95 + 4/5) / 2 is far above 0.5.
    y_pred = np.array([0] * 90 + [1] * 5 + [1] * 4 + [0])
    summary = classification_summary(y_true, y_pred, ["healthy", "faulty"], train_counts=[380, 20])
    assert summary["accuracy"] == pytest.approx(0.94) and summary["majority_baseline"] == pytest.approx(0.95)
    assert summary["balanced_accuracy"] == pytest.approx((90 / 95 + 4 / 5) / 2) == balanced_accuracy_score(
        y_true, y_pred)


def test_majority_baseline_takes_the_training_split_majority_not_the_test_one():
    # Training was mostly b, the test split is mostly a: always answering b scores b's share of the test split.
    summary = classification_summary([0, 0, 0, 1], [0, 0, 0, 1], ["a", "b"], train_counts=[10, 30])
    assert (summary["majority_baseline"], summary["majority_class"], summary["majority_from"]) == (0.25, "b", "train")
    summary = classification_summary([0, 0, 0, 1], [0, 0, 0, 1], ["a", "b"])
    assert (summary["majority_baseline"], summary["majority_class"], summary["majority_from"]) == (0.75, "a", "test")
    # A tie goes to the first class in class order.
    assert classification_summary([0, 1], [0, 1], ["a", "b"], train_counts=[4, 4])["majority_class"] == "a"


@pytest.mark.parametrize("train_counts, message", [([1, 2], "one integer count per class"),
                                                   ([0, 0, 0], "not all zero"), ([1, -1, 2], "non-negative"),
                                                   ([0.5, 1, 1], "one integer count per class")])
def test_classification_summary_rejects_bad_train_counts(train_counts, message):
    with pytest.raises(EvaluationError, match=message):
        classification_summary([0, 1], [0, 1], ["a", "b", "c"], train_counts=train_counts)


def test_classification_summary_class_absent_from_test_split():
    summary = classification_summary(np.array([0, 0, 1]), np.array([0, 0, 1]), ["a", "b", "c"])
    assert summary["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert summary["macro_f1"] == 1.0  # the absent class does not drag macro-F1 down
    assert summary["balanced_accuracy"] == 1.0  # nor balanced accuracy (the mean recall of the classes present)


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


# ---- McNemar ---------------------------------------------------------------------------------

def test_mcnemar_exact_matches_a_hand_computed_binomial():
    # 10 discordant items, 8 flipped one way and 2 the other: P(X <= 2 or X >= 8 | n=10, p=1/2)
    # = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2**10 = 2 * 56 / 1024 = 0.109375
    assert mcnemar_exact(8, 2) == pytest.approx(0.109375, rel=1e-12)
    assert mcnemar_exact(2, 8) == pytest.approx(0.109375, rel=1e-12)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)  # both tails of the all-one-way split
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


# ---- predictions files -----------------------------------------------------------------------

def write_predictions(path: Path, files, y_true, y_pred, classes, probabilities=None, prefix: str = "prob_"):
    """The predictions.parquet contract every trainer writes (vapm.training.run.write_predictions)."""
    table = pd.DataFrame({"file": list(files), "y_true": np.asarray(y_true, np.int64),
                          "y_pred": np.asarray(y_pred, np.int64)})
    for i, name in enumerate(classes):
        if probabilities is not None:
            table[f"{prefix}{name}"] = np.asarray(probabilities)[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path


def test_read_predictions_checks_the_contract(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    path = write_predictions(tmp_path / "m" / "predictions.parquet", ["x.jpg", "y.jpg"], [0, 1], [0, 1],
                             ["a", "b", "c"], probabilities=probs)
    table = read_predictions(path, ["a", "b", "c"])
    assert list(table.columns) == ["file", "y_true", "y_pred", "prob_a", "prob_b", "prob_c"]
    with pytest.raises(EvaluationError, match="retrain the model after changing the class list"):
        read_predictions(path, ["a", "b", "d"])
    with pytest.raises(EvaluationError, match="not found"):
        read_predictions(tmp_path / "absent.parquet", ["a"])
    pd.DataFrame({"file": ["x"], "y_true": [0]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(EvaluationError, match="y_pred"):
        read_predictions(tmp_path / "bad.parquet", ["a"])


def test_metrics_json_is_rounded_and_sorted(tmp_path):
    path = write_metrics_json(tmp_path / "m.json", {"b": 1 / 3, "a": {"z": np.float32(0.5), "y": np.int64(3)}})
    assert path.read_text() == '{\n  "a": {\n    "y": 3,\n    "z": 0.5\n  },\n  "b": 0.333333\n}\n'


# ---- the evaluate stage ----------------------------------------------------------------------

def _fake_model_dir(root: Path, name: str, classes: list[str], seed: int, with_history: bool, score_kind: str,
                    details: dict | None = None, train_class_counts: dict | None = None) -> None:
    rng = np.random.default_rng(seed)
    n = 3 * len(classes)
    y_true = np.repeat(np.arange(len(classes)), 3)
    y_pred = np.where(rng.random(n) < 0.75, y_true, rng.integers(0, len(classes), n))
    scores = rng.normal(size=(n, len(classes)))
    scores[np.arange(n), y_pred] += 5
    if score_kind == "probability":
        scores = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    model_dir = root / "models" / name
    write_predictions(model_dir / "predictions.parquet", [f"{classes[t]}/item_{i}" for i, t in enumerate(y_true)],
                      y_true, y_pred, classes, probabilities=scores,
                      prefix="prob_" if score_kind == "probability" else "decision_")
    if with_history:
        pd.DataFrame({
            "epoch": [1, 2, 3], "phase": ["head", "head", "fine_tune"],
            "loss": [1.9, 1.2, 0.8123456789], "accuracy": [0.3, 0.55, 0.71],
            "val_loss": [2.0, 1.4, 1.0], "val_accuracy": [0.25, 0.5, 0.66],
        }).to_csv(model_dir / "history.csv", index=False)
    record = {"model": name, "task": "classifier", "score_kind": score_kind, "input": {"kind": "test"},
              "n_fit": 10, "n_val": 2, "details": details or {}, "data_manifest_sha256": "ab" * 32}
    if train_class_counts is not None:
        record["train_class_counts"] = train_class_counts
    (model_dir / "record.json").write_text(json.dumps(record))


# acoustic_svm's record says NRV was the most frequent class in training; the other models' records predate
# train_class_counts, so their baseline takes the test split's most frequent class.
TRAIN_COUNTS = {name: 3 for name in AUDIO} | {"NRV": 5}


def _evaluate_workspace(tmp_path: Path, vision_classes: list[str] = VISION) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["vision"]["classes"], params["audio"]["classes"] = vision_classes, AUDIO
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    _fake_model_dir(tmp_path, "vision_scratch", VISION, 1, True, "probability")
    _fake_model_dir(tmp_path, "vision_transfer", VISION, 2, True, "probability",
                    {"weights": {"used": "none (random init)", "reason": "weights: none in params"}})
    _fake_model_dir(tmp_path, "acoustic_svm", AUDIO, 3, False, "decision", {"best_C": 0.1},
                    train_class_counts=TRAIN_COUNTS)
    _fake_model_dir(tmp_path, "acoustic_cnn", AUDIO, 4, True, "probability")
    _fake_detector_dir(tmp_path / "models" / "acoustic_anomaly")
    _fake_detector_dir(tmp_path / "models" / "vision_anomaly", noise=False)
    _fake_anomaly_images(tmp_path / "data" / "features" / "anomaly_image",
                         pd.read_parquet(tmp_path / "models" / "vision_anomaly" / "predictions.parquet")["file"])
    return tmp_path


def _fake_anomaly_images(folder: Path, files) -> None:
    """vision_anomaly's input as anomaly_data writes it from an archive without defect masks (NEU's): images only, so
    the evaluate stage scores no anomaly maps (tests/training/test_vision_anomaly_stage.py scores them with masks)."""
    folder.mkdir(parents=True)
    n = len(files)
    np.savez(folder / "features.npz", images=np.zeros((n, 8, 8), np.uint8), labels=np.zeros(n, np.int64),
             splits=np.asarray(["test"] * n), files=np.asarray(list(files)), classes=np.asarray(VISION))


def _fake_detector_dir(model_dir: Path, noise: bool = True) -> None:
    """What train@acoustic_anomaly leaves: the verdicts, and its evaluation, ROC points and noise sweep (train@
    vision_anomaly: the same without a noise sweep)."""
    model_dir.mkdir(parents=True)
    scores = [0.1, 0.3, 0.2, 0.9, 0.8, 0.25, 0.7, 0.95]
    normal = [True, True, True, False, False, False, False, False]
    pd.DataFrame({"file": [f"AirCompressor_Data/x/{i}.dat" for i in range(8)], "y_true": [2, 2, 2, 0, 1, 3, 4, 5],
                  "normal": normal, "score": scores, "abnormal": [s > 0.5 for s in scores]}).to_parquet(
        model_dir / "predictions.parquet")
    overall = {"auc": 0.9333, "auc_ci": [0.7, 1.0], "pauc": 0.8, "pauc_ci": [0.5, 1.0]}
    (model_dir / "evaluation.json").write_text(json.dumps({"method": "mahalanobis", "clean": {
        "overall": overall, "false_alarm": {"rate": 0.0, "count": 0, "n": 3}, "per_fault": {},
        "max_fpr": 0.1, "target_false_alarm_rate": 0.05}, "noise": {}}))
    (model_dir / "roc.json").write_text(json.dumps([{"curve": "overall", "fpr": f, "tpr": t}
                                                    for f, t in [(0, 0), (0, 0.8), (1 / 3, 0.8), (1, 1)]]))
    (model_dir / "noise.json").write_text(json.dumps(
        [{"noise": kind, "snr_db": snr, "auc": auc, "false_alarm_rate": far}
         for kind in ("white", "pink") for snr, auc, far in ((20, 0.9, 0.33), (0, 0.6, 1.0))] if noise else []))
    (model_dir / "record.json").write_text(json.dumps({"model": model_dir.name, "task": "detector",
                                                       "score_kind": "anomaly",
                                                       "artefact": "anomaly" if noise else "patchcore",
                                                       "classes": AUDIO[:6] if noise else ["Normal", *VISION[:5]],
                                                       "input": {"kind": "clip" if noise else "image"},
                                                       "modality": "audio" if noise else "vision",
                                                       "details": {"n_fit_clips": 20} if noise else
                                                       {"n_fit_images": 20}}))


def _run_evaluate(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(cwd),
           "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "evaluate.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_evaluate_stage_writes_scores_details_and_plots(tmp_path):
    workspace = _evaluate_workspace(tmp_path)
    result = _run_evaluate(workspace)
    assert result.returncode == 0, result.stderr
    metrics = workspace / "metrics"
    for name, classes in [("vision_scratch", VISION), ("vision_transfer", VISION),
                          ("acoustic_svm", AUDIO), ("acoustic_cnn", AUDIO)]:
        predictions = read_predictions(workspace / "models" / name / "predictions.parquet", classes)
        train_counts = [TRAIN_COUNTS[c] for c in classes] if name == "acoustic_svm" else None
        expected = classification_summary(predictions["y_true"], predictions["y_pred"], classes, train_counts)
        scores = json.loads((metrics / "scores" / f"{name}.json").read_text())
        assert scores == {"acc": round(expected["accuracy"], 4), "acc_lo": round(expected["accuracy_ci95_low"], 4),
                          "acc_hi": round(expected["accuracy_ci95_high"], 4), "f1": round(expected["macro_f1"], 4),
                          "bal_acc": round(expected["balanced_accuracy"], 4),
                          "baseline": round(expected["majority_baseline"], 4), "n": len(predictions)}
        # Each class has 3 test items: every majority class scores 3 of 3 * n_classes.
        assert scores["baseline"] == round(1 / len(classes), 4)
        headline = json.loads((metrics / "headline.json").read_text())
        # the numbers dvc metrics show and dvc exp show give per classifier
        assert headline[name] == {key: scores[key] for key in ("acc", "bal_acc", "baseline")}
        details = json.loads((metrics / "details" / f"{name}.json").read_text())
        assert (details["majority_class"], details["majority_from"]) == (
            ("NRV", "train") if name == "acoustic_svm" else (classes[0], "test"))
        assert details["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"], abs=1e-6)
        assert sorted(details["per_class"]) == sorted(classes)
        assert details["data_manifest_sha256"] == "ab" * 32
        confusion = json.loads((metrics / "plots" / "sklearn" / "confusion" / f"{name}.json").read_text())
        names = np.asarray(classes)
        assert [row["actual"] for row in confusion] == names[predictions["y_true"]].tolist()
        assert [row["predicted"] for row in confusion] == names[predictions["y_pred"]].tolist()
        assert (metrics / "plots" / "images" / "confusion" / f"{name}.png").stat().st_size > 1000
        assert name in result.stdout
    details = json.loads((metrics / "details" / "vision_transfer.json").read_text())
    assert details["training"]["weights"]["used"].startswith("none")
    loss = json.loads((metrics / "plots" / "custom" / "loss" / "acoustic_cnn.json").read_text())
    assert [point["epoch"] for point in loss] == [1, 2, 3]
    assert loss[2] == {"epoch": 3, "train": pytest.approx(0.812346, abs=1e-9), "validation": 1.0}
    assert (metrics / "plots" / "images" / "curves" / "acoustic_cnn.png").is_file()
    assert not (metrics / "plots" / "custom" / "loss" / "acoustic_svm.json").exists()  # no epochs, no curves
    assert not (metrics / "metrics.json").exists()  # DVCLive writes plot data only; DVC's metrics are ours
    detector = json.loads((metrics / "scores" / "acoustic_anomaly.json").read_text())
    assert detector == {"auc": 0.9333, "auc_lo": 0.7, "auc_hi": 1.0, "pauc": 0.8, "far": 0.0, "n": 8}
    roc = json.loads((metrics / "plots" / "sklearn" / "roc" / "acoustic_anomaly.json").read_text())["roc"]
    assert roc[0]["fpr"] == 0.0 and roc[-1]["tpr"] == 1.0  # from the saved scores of the test clips
    noise = json.loads((metrics / "plots" / "custom" / "noise_far" / "acoustic_anomaly.json").read_text())
    assert noise == [{"snr_db": 20, "pink": 0.33, "white": 0.33}, {"snr_db": 0, "pink": 1.0, "white": 1.0}]
    assert (metrics / "predictions" / "acoustic_anomaly.csv").read_text().splitlines()[4] == \
        "AirCompressor_Data/x/3.dat,abnormal,abnormal"
    for picture in ("roc", "noise", "confusion"):
        assert (metrics / "plots" / "images" / picture / "acoustic_anomaly.png").is_file()
    # vision_anomaly: a detector without a noise sweep: its scores, ROC and confusion, no noise plots
    assert json.loads((metrics / "scores" / "vision_anomaly.json").read_text()) == detector
    assert json.loads((metrics / "details" / "vision_anomaly.json").read_text())["n_fit"] == 20
    assert json.loads((metrics / "headline.json").read_text())["vision_anomaly"] == {"auc": 0.9333}
    for picture in ("roc", "confusion"):
        assert (metrics / "plots" / "images" / picture / "vision_anomaly.png").is_file()
    assert not (metrics / "plots" / "images" / "noise" / "vision_anomaly.png").exists()
    assert not (metrics / "plots" / "custom" / "noise_far" / "vision_anomaly.json").exists()

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
    assert "models/acoustic_cnn" in result.stderr and "train@acoustic_cnn" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_stage_reports_class_list_mismatch(tmp_path):
    workspace = _evaluate_workspace(tmp_path, vision_classes=VISION[:5])
    result = _run_evaluate(workspace)
    assert result.returncode == 1
    assert "vision_scratch" in result.stderr and "Traceback" not in result.stderr
