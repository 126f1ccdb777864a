"""Test-set metrics, confusion matrices and the predictions files every trainer writes.

Trainers call `write_predictions` and `classification_summary`; the evaluate stage reads the
predictions back and writes the DVC metrics and plots files (docs/architecture.md, "metrics").
"""
from __future__ import annotations

from vapm.errors import VapmError

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

METRICS_DECIMALS = 6
HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]
PREDICTION_COLUMNS = ["file", "y_true", "y_pred"]


class EvaluationError(VapmError, ValueError):
    """Predictions, histories or model folders that cannot be evaluated as they are."""


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (stays inside [0, 1], sane at 0/n and n/n)."""
    if n <= 0:
        raise ValueError(f"the Wilson interval needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..n={n}, got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The exact bounds at 0/n and n/n are 0 and 1; rounding would leave them a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return low, high


def _labels(values: Any, name: str, n_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise EvaluationError(f"{name} must be one label per item (1-D), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.number) or not np.all(np.equal(np.mod(array, 1), 0)):
            raise EvaluationError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = array[(array < 0) | (array >= n_classes)]
    if outside.size:
        raise EvaluationError(
            f"{name} holds labels {sorted(set(outside.tolist()))} outside 0..{n_classes - 1} "
            f"(there are {n_classes} class names)")
    return array


def _checked_pair(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if len(class_names) < 2:
        raise EvaluationError(f"need at least two class names, got {list(class_names)}")
    truth = _labels(y_true, "y_true", len(class_names))
    predicted = _labels(y_pred, "y_pred", len(class_names))
    if truth.shape != predicted.shape:
        raise EvaluationError(f"y_true has {truth.size} items but y_pred has {predicted.size}")
    if truth.size == 0:
        raise EvaluationError("no test items to evaluate")
    return truth, predicted


def classification_summary(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy with its 95 % Wilson interval, macro-F1 and per-class scores, as plain JSON types.

    Macro-F1 averages over the classes that occur in the test labels or the predictions (as
    scikit-learn does), so a class absent from a small test split does not count as F1 = 0.
    """
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    all_labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=all_labels, zero_division=0)
    seen = sorted(set(truth.tolist()) | set(predicted.tolist()))
    correct = int(np.sum(truth == predicted))
    low, high = wilson_interval(correct, truth.size)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": correct / truth.size,
        "accuracy_ci95_low": low,
        "accuracy_ci95_high": high,
        "macro_f1": float(np.mean(f1[seen])),
        "n_test": int(truth.size),
        "per_class": per_class,
    }


def confusion_counts(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = actual class, columns = predicted class."""
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    counts = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


def save_confusion_png(y_true: Any, y_pred: Any, class_names: Sequence[str], path: str | Path,
                       title: str) -> Path:
    # The object API with an Agg canvas leaves pyplot's global state (and backend) alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = confusion_counts(y_true, y_pred, class_names)
    n = len(class_names)
    side = max(4.0, 0.6 * n + 2.5)
    figure = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(class_names))
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("Actual class")
    axes.set_title(title)
    threshold = counts.max() / 2 if counts.max() else 1
    for row in range(n):
        for col in range(n):
            axes.text(col, row, str(counts[row, col]), ha="center", va="center",
                      color="white" if counts[row, col] > threshold else "black")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No software/date metadata, so the same predictions give byte-identical files.
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def probability_column(class_name: str) -> str:
    return f"prob_{class_name}"


def write_predictions(path: str | Path, files: Sequence[str], y_true: Any, y_pred: Any,
                      class_names: Sequence[str], probabilities: Any = None) -> Path:
    """models/<model>/predictions.parquet: file, y_true, y_pred (int64) and prob_<class> columns."""
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    files = [str(f) for f in files]
    if len(files) != truth.size:
        raise EvaluationError(f"{len(files)} file names for {truth.size} predictions")
    table = pd.DataFrame({"file": files, "y_true": truth, "y_pred": predicted})
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.shape != (truth.size, len(class_names)):
            raise EvaluationError(
                f"probabilities must have shape ({truth.size}, {len(class_names)}) "
                f"(items, classes), got {probs.shape}")
        for i, name in enumerate(class_names):
            table[probability_column(name)] = probs[:, i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return path


def read_predictions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path} not found: run the model's training stage first")
    table = pd.read_parquet(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in table.columns]
    if missing:
        raise EvaluationError(f"{path} lacks columns {missing}; it has {list(table.columns)}")
    for column in ("y_true", "y_pred"):
        if not pd.api.types.is_integer_dtype(table[column]):
            raise EvaluationError(f"{path}: column {column} must be int64 labels, got {table[column].dtype}")
        table[column] = table[column].astype(np.int64)
    return table


def check_probability_columns(predictions: pd.DataFrame, class_names: Sequence[str], source: str) -> None:
    """Probability columns, when present, must name exactly the configured classes."""
    present = [c for c in predictions.columns if c.startswith("prob_")]
    expected = [probability_column(name) for name in class_names]
    if present and present != expected:
        raise EvaluationError(
            f"{source} has probability columns {present} but the classes in params.yaml give "
            f"{expected}: retrain the model after changing the class list")


def confusion_rows(y_true: Any, y_pred: Any, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per test item with actual and predicted class names: DVC's confusion template input."""
    truth, predicted = _checked_pair(y_true, y_pred, class_names)
    names = np.asarray(class_names, dtype=object)
    return pd.DataFrame({"actual": names[truth], "predicted": names[predicted]})


def read_history(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    try:
        history = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise EvaluationError(f"{path} is not a readable history CSV: {err}") from err
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise EvaluationError(f"{path} lacks columns {missing}; it has {list(history.columns)}")
    if history.empty:
        raise EvaluationError(f"{path} has no epochs")
    return history[HISTORY_COLUMNS].sort_values("epoch", kind="stable").reset_index(drop=True)


def rounded(value: Any, decimals: int = METRICS_DECIMALS) -> Any:
    """Floats rounded (recursively), numpy scalars made plain, so metric files diff cleanly."""
    if isinstance(value, dict):
        return {str(k): rounded(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, decimals) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            raise EvaluationError(f"metric value {value} is not finite")
        return round(value, decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return value


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(metrics), sort_keys=True, indent=2) + "\n")
    return path


def evaluate_model(model_dir: str | Path, model_name: str, class_names: Sequence[str],
                   metrics_dir: str | Path) -> dict[str, Any]:
    """Write metrics/<model>.json, metrics/confusion/<model>.{csv,png}, metrics/curves/<model>.csv."""
    model_dir, metrics_dir = Path(model_dir), Path(metrics_dir)
    predictions_path = model_dir / "predictions.parquet"
    predictions = read_predictions(predictions_path)
    check_probability_columns(predictions, class_names, str(predictions_path))
    y_true, y_pred = predictions["y_true"].to_numpy(), predictions["y_pred"].to_numpy()

    summary = classification_summary(y_true, y_pred, class_names)
    info_path = model_dir / "info.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise EvaluationError(f"{info_path} is not valid JSON: {err}") from err
        weights = info.get("weights")
        if isinstance(weights, dict):  # the transfer model's base: what was really loaded, and why
            summary["weights_used"] = str(weights.get("used"))
            summary["weights_reason"] = str(weights.get("reason"))
    write_metrics_json(metrics_dir / f"{model_name}.json", summary)

    confusion_dir = metrics_dir / "confusion"
    confusion_dir.mkdir(parents=True, exist_ok=True)
    confusion_rows(y_true, y_pred, class_names).to_csv(confusion_dir / f"{model_name}.csv", index=False)
    save_confusion_png(y_true, y_pred, class_names, confusion_dir / f"{model_name}.png",
                       title=f"{model_name}: accuracy {summary['accuracy']:.3f} (n={summary['n_test']})")

    history_path = model_dir / "history.csv"
    if history_path.is_file():
        curves_dir = metrics_dir / "curves"
        curves_dir.mkdir(parents=True, exist_ok=True)
        curves = read_history(history_path).round(METRICS_DECIMALS)
        curves.to_csv(curves_dir / f"{model_name}.csv", index=False)
    return summary
