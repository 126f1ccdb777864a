"""Pictures of results: confusion matrices, training curves, ROC, noise, reliability and unfamiliar-input charts,
as PNG files with deterministic bytes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vapm.evaluation.metrics import confusion_counts
from vapm.models.vision_anomaly.overlay import (  # noqa: F401 - re-exported: the gallery's panels
    MASK_OUTLINE,
    _anomaly_panel,
    _checked_panels,
    save_anomaly_overlay_png,
)


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


_RELIABILITY_KEYS = ("lower", "upper", "count", "confidence", "accuracy")


def _checked_bins(bins: Sequence[dict[str, Any]], which: str) -> list[dict[str, float]]:
    checked = []
    for position, item in enumerate(bins):
        missing = [key for key in _RELIABILITY_KEYS if key not in item]
        if missing:
            raise ValueError(f"{which} bin {position} lacks {', '.join(missing)}")
        checked.append({key: float(item[key]) for key in _RELIABILITY_KEYS})
    return [item for item in checked if item["count"] > 0]


def _binned_ece(bins: list[dict[str, float]]) -> float | None:
    """The expected calibration error the bins imply: Σ (share of items) x |accuracy - mean confidence|."""
    total = sum(item["count"] for item in bins)
    if not total:
        return None
    return sum(item["count"] / total * abs(item["accuracy"] - item["confidence"]) for item in bins)


def save_reliability_png(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]], path: str | Path,
                         title: str) -> Path:
    """A reliability diagram: accuracy against mean top-class confidence per confidence bin, before (uncalibrated)
    and after temperature scaling, with the diagonal of perfect calibration and the items per bin underneath.

    Each bin is {"lower", "upper", "count", "confidence", "accuracy"}; empty bins may be left out. The legend gives
    the ECE the bins imply (the count-weighted mean gap between accuracy and confidence)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = [(_checked_bins(before, "before"), "before: uncalibrated", "tab:red", "o", -1),
              (_checked_bins(after, "after"), "after: temperature-scaled", "tab:blue", "s", 1)]
    largest = max([item["count"] for bins, *_ in series for item in bins], default=1.0)
    # Fixed panel rectangles (figure fractions) rather than tight_layout, which cannot place a square panel above a
    # wide one: the square's side is 0.8 x 5.6 in = 4.48 in, 0.64 of the figure's 7 in height, and both axes span
    # the same range, so the diagonal is at 45 degrees.
    figure = Figure(figsize=(5.6, 7.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.14, 0.3, 0.8, 0.64))
    counts_axes = figure.add_axes((0.14, 0.085, 0.8, 0.17), sharex=axes)
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for bins, label, colour, marker, side in series:
        ece = _binned_ece(bins)
        label = f"{label} (ECE {ece:.3f})" if ece is not None else f"{label} (no items)"
        confidence = [item["confidence"] for item in bins]
        accuracy = [item["accuracy"] for item in bins]
        axes.plot(confidence, accuracy, color=colour, marker=marker, markersize=4, linewidth=1.2, label=label)
        # Marker area grows with the items in the bin, so a bin of three items does not look like one of 300.
        sizes = [20 + 280 * item["count"] / largest for item in bins]
        axes.scatter(confidence, accuracy, s=sizes, color=colour, marker=marker, alpha=0.35, linewidths=0)
        # Items per bin: before on the bin's left half, after on its right half.
        lefts = [item["lower"] + (item["upper"] - item["lower"]) * (0.05 if side < 0 else 0.5) for item in bins]
        widths = [(item["upper"] - item["lower"]) * 0.45 for item in bins]
        counts_axes.bar(lefts, [item["count"] for item in bins], width=widths, align="edge", color=colour,
                        alpha=0.7)
    axes.set_xlim(-0.02, 1.02)  # a margin, so that points at 0 or 1 are not cut in half by the frame
    axes.set_ylim(-0.02, 1.02)
    axes.set_ylabel("accuracy")
    axes.tick_params(labelbottom=False)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8, title="marker area: items in the bin", title_fontsize=7)
    axes.set_title(title)
    counts_axes.set_xlabel("confidence (top class probability)")
    counts_axes.set_ylabel("items")
    counts_axes.grid(alpha=0.3, axis="y")
    counts_axes.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    counts_axes.set_ylim(bottom=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path



FAMILIAR_KIND = "test (familiar)"
SHIFTED_TARGET = 0.95
FAMILIAR_LIMIT = 0.02


def save_unfamiliar_png(rates: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """The share of inputs each classifier flags as unfamiliar, per kind of input: grouped horizontal bars, the
    familiar test items first (they should stay under FAMILIAR_LIMIT), then each shift (they should reach
    SHIFTED_TARGET). `rates[model][kind]` is a share 0..1; a kind a model lacks gets no bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rates:
        raise ValueError("no models to draw")
    for model, kinds in rates.items():
        for kind, share in kinds.items():
            if not 0.0 <= float(share) <= 1.0:
                raise ValueError(f"{model}'s share flagged for {kind!r} is {share}, not within 0..1")
    models = list(rates)
    kinds = list(dict.fromkeys(kind for model in models for kind in rates[model]))
    if FAMILIAR_KIND in kinds:  # familiar items first: the reference the shifts are read against
        kinds.remove(FAMILIAR_KIND)
        kinds.insert(0, FAMILIAR_KIND)
    bar = 0.8 / len(models)
    legend_height = 0.2 * -(-(len(models) + 2) // 3) + 0.1  # three entries a row
    height = 1.5 + legend_height + len(kinds) * (0.22 * len(models) + 0.2)
    figure = Figure(figsize=(8.0, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if FAMILIAR_KIND in kinds:
        axes.axhspan(-0.5, 0.5, color="grey", alpha=0.1, linewidth=0)
    for index, model in enumerate(models):
        positions, shares = [], []
        for row, kind in enumerate(kinds):
            position = row - 0.4 + bar * (index + 0.5)
            if kind in rates[model]:
                positions.append(position)
                shares.append(float(rates[model][kind]))
            else:
                axes.annotate(f"{model}: not measured", (FAMILIAR_LIMIT, position), xytext=(4, 0),
                              textcoords="offset points", va="center", fontsize=7, color="grey")
        bars = axes.barh(positions, shares, height=bar * 0.92, color=f"C{index}", label=model)
        # The share at the bar's end, inside it when the bar is long; small shares to 0.1 % (is 2.4 % under 2 %?).
        for rectangle, share in zip(bars, shares):
            inside = share > 0.85
            # Short bars: the label starts past the familiar limit's line, so that the line does not cross it.
            end = share if inside else max(share, FAMILIAR_LIMIT)
            axes.annotate(f"{share:.1%}" if share < 0.1 else f"{share:.0%}",
                          (end, rectangle.get_y() + rectangle.get_height() / 2),
                          xytext=(-3 if inside else 3, 0), textcoords="offset points", va="center",
                          ha="right" if inside else "left", fontsize=7, color="white" if inside else "black")
    axes.axvline(SHIFTED_TARGET, color="black", linestyle="--", linewidth=1,
                 label=f"target for shifted inputs ({SHIFTED_TARGET:.0%})")
    axes.axvline(FAMILIAR_LIMIT, color="tab:red", linestyle="--", linewidth=1,
                 label=f"limit for familiar items ({FAMILIAR_LIMIT:.0%})")
    axes.set_yticks(range(len(kinds)), labels=kinds)
    axes.set_ylim(len(kinds) - 0.5, -0.5)  # first kind at the top
    axes.set_xlim(0, 1)
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.set_xlabel("share flagged unfamiliar")
    axes.grid(alpha=0.3, axis="x")
    axes.set_title(title)
    figure.legend(*axes.get_legend_handles_labels(), loc="lower center", ncols=3, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


# Anomaly maps over their images: drawn by vapm.models.vision_anomaly.overlay (the monitor draws them too).


def anomaly_gallery_order(scores: Sequence[float], abnormal: Sequence[bool], threshold: float) -> list[int]:
    """Items worst first: misses (abnormal items scored at or below the threshold) and false alarms (normal items
    scored above it) by how far they lie on the wrong side, then the correct ones, closest to the threshold first.
    Ties keep the items' order. An item is called abnormal when its score is above the threshold."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(abnormal, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ValueError(f"need one score and one label per item, got {scores.shape} and {truth.shape}")
    wrongness = np.where(truth, threshold - scores, scores - threshold)  # >= 0: on the wrong side
    return [int(i) for i in np.argsort(-wrongness, kind="stable")]


def save_anomaly_gallery_png(images: Any, anomaly_maps: Any, masks: Any, scores: Sequence[float],
                             abnormal: Sequence[bool], threshold: float, path: str | Path, title: str,
                             names: Sequence[str] | None = None, limit: int = 12, columns: int = 4,
                             vmin: float | None = None, vmax: float | None = None) -> Path:
    """Test images with their anomaly maps and mask outlines (`save_anomaly_overlay_png`'s panel), worst misses and
    false alarms first (`anomaly_gallery_order`), titled with the truth, the score and the verdict, mistakes in red;
    one colour scale for all panels: the shown maps' range, or from `vmin` (transparent, e.g. a high percentile of
    the normal images' pixel scores, so that only what stands out is coloured) to `vmax`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, maps, masks = _checked_panels(images, anomaly_maps, masks)
    if len(scores) != len(images) or (names is not None and len(names) != len(images)):
        raise ValueError(f"{len(images)} images but {len(scores)} scores"
                         + ("" if names is None else f" and {len(names)} names"))
    order = anomaly_gallery_order(scores, abnormal, threshold)[:limit]
    shown = maps[order]
    vmin = float(shown.min()) if vmin is None else vmin
    vmax = float(shown.max()) if vmax is None else vmax
    columns = max(1, min(columns, len(order)))
    rows = max(1, -(-len(order) // columns))
    width, height, bar_room = columns * 2.5 + 1.2, rows * 3.1 + 0.8, 1.2  # inches; the colour bar's room on the right
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    scale = None
    for position, i in enumerate(order, start=1):
        axes = figure.add_subplot(rows, columns, position)
        scale = _anomaly_panel(axes, images[i], maps[i], None if masks is None else masks[i], vmin, vmax)
        truth, called = bool(abnormal[i]), float(scores[i]) > threshold
        verdict = ("missed" if truth else "false alarm") if truth != called else ("detected" if truth else "normal")
        label = f"{names[i]}\n" if names is not None else ""
        axes.set_title(f"{label}{'defect' if truth else 'normal'}, score {float(scores[i]):.3g}: {verdict}",
                       fontsize=7, color="red" if truth != called else "black",
                       fontweight="bold" if truth != called else "normal")
    figure.suptitle(f"{title}\n(threshold {threshold:.3g}; {MASK_OUTLINE} outline: defect mask)", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - bar_room / width, 1 - 0.6 / height), h_pad=3.0)
    colour_bar = figure.add_axes((1 - 0.95 / width, 0.1, 0.15 / width, 0.75))
    figure.colorbar(scale, cax=colour_bar, label="anomaly score")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path
