"""Pictures of results: confusion matrices and training curves, as PNG files with deterministic bytes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vapm.evaluation.metrics import confusion_counts


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
    from matplotlib.ticker import MaxNLocator

    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, ticks=MaxNLocator(integer=True))
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


def save_curves_png(history: Any, path: str | Path, title: str) -> Path:
    """Loss and accuracy per epoch, training and validation, on two panels with named axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    for position, (metric, label) in enumerate([("loss", "loss (cross-entropy)"), ("accuracy", "accuracy")], start=1):
        axes = figure.add_subplot(1, 2, position)
        axes.plot(history["epoch"], history[metric], marker="o", markersize=3, label="training")
        if history[f"val_{metric}"].notna().any():
            axes.plot(history["epoch"], history[f"val_{metric}"], marker="o", markersize=3, label="validation")
        starts = history[history["phase"] != history["phase"].shift()].iloc[1:]
        for epoch, phase in zip(starts["epoch"], starts["phase"]):  # e.g. where fine-tuning starts
            axes.axvline(epoch - 0.5, color="grey", linestyle=":", linewidth=1)
            axes.annotate(str(phase).replace("_", "-"), (epoch - 0.5, 1.0), xycoords=("data", "axes fraction"),
                          xytext=(3, -12), textcoords="offset points", color="grey", fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def save_gallery_png(images: Any, actual: Sequence[str], predicted: Sequence[str], path: str | Path, title: str,
                     limit: int = 36) -> Path:
    """Test images titled with their actual and predicted class, mistakes first and in red (the book's gallery)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = sorted(range(len(actual)), key=lambda i: (actual[i] == predicted[i], i))[:limit]
    columns = 6
    rows = max(1, -(-len(order) // columns))
    figure = Figure(figsize=(columns * 1.9, rows * 2.1 + 0.6), dpi=100)
    FigureCanvasAgg(figure)
    for position, i in enumerate(order, start=1):
        axes = figure.add_subplot(rows, columns, position)
        axes.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes.axis("off")
        wrong = actual[i] != predicted[i]
        axes.set_title(f"actual {actual[i]}\npredicted {predicted[i]}", fontsize=8,
                       color="red" if wrong else "black", fontweight="bold" if wrong else "normal")
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (rows * 2.1 + 0.6)))  # keep the title clear of the first row
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def save_roc_png(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, title: str,
                 max_fpr: float | None = None) -> Path:
    """ROC curves (one per fault type and overall), with the partial-AUC region shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, (fpr, tpr) in curves.items():
        axes.step(fpr, tpr, where="post", linewidth=2.5 if name == "overall" else 1.2, label=name)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    if max_fpr:
        axes.axvspan(0, max_fpr, color="grey", alpha=0.12, label=f"partial AUC region (FPR <= {max_fpr:g})")
    axes.set_xlabel("false-alarm rate (healthy clips flagged)")
    axes.set_ylabel("detection rate (fault clips flagged)")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def save_noise_png(rows: Sequence[dict[str, Any]], path: str | Path, title: str, target_rate: float) -> Path:
    """AUC and false-alarm rate against signal-to-noise ratio, one line per kind of noise."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    kinds = list(dict.fromkeys(row["noise"] for row in rows))
    for position, (metric, label) in enumerate([("auc", "AUC"), ("false_alarm_rate", "false-alarm rate")], start=1):
        axes = figure.add_subplot(1, 2, position)
        for kind in kinds:
            points = sorted((row["snr_db"], row[metric]) for row in rows if row["noise"] == kind)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{kind} noise")
        if metric == "false_alarm_rate":
            axes.axhline(target_rate, color="grey", linestyle=":", label=f"target {target_rate:.0%}")
        axes.invert_xaxis()  # left to right: more and more noise
        axes.set_xlabel("signal-to-noise ratio (dB)")
        axes.set_ylabel(label)
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
