"""The book's pictures of the data, made after ingest: what the pipeline is about to learn from.

    metrics/explore/class_counts.png           items per class and split, both datasets
    metrics/explore/neu_<Class>.png            a 4x4 grid of training images of each image class (their defect
                                               masks outlined, when ingest paired some)
    metrics/explore/compressor_<State>.png     waveform and log-mel spectrogram of one clip per compressor state

Deterministic: the same data give the same bytes (first items in manifest order, no timestamps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GRID = 4


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def class_counts_png(vision: pd.DataFrame, acoustic: pd.DataFrame, path: Path) -> Path:
    """Stacked train/test bars of items per class, one panel per dataset."""
    figure = _figure(11, 4)
    for position, (manifest, title) in enumerate([(vision, "images (vision.classes)"),
                                                  (acoustic, "sound clips (audio.classes)")], start=1):
        axes = figure.add_subplot(1, 2, position)
        counts = manifest.groupby(["class", "split"]).size().unstack(fill_value=0).reindex(
            columns=["train", "test"], fill_value=0)
        classes = list(counts.index)
        axes.bar(classes, counts["train"], label="train", color="#4c72b0")
        axes.bar(classes, counts["test"], bottom=counts["train"], label="test", color="#dd8452")
        for i, total in enumerate(counts.sum(axis=1)):
            axes.text(i, total, str(int(total)), ha="center", va="bottom", fontsize=8)
        axes.set_title(title)
        axes.set_xlabel("class")
        axes.set_ylabel("items")
        axes.set_ylim(0, counts.sum(axis=1).max() * 1.3)  # room for the legend above the bars
        axes.tick_params(axis="x", rotation=45)
        axes.legend(loc="upper right", ncol=2)
    figure.tight_layout()
    return _save(figure, path)


def neu_grid_png(images: list[np.ndarray], class_name: str, path: Path,
                 masks: list[np.ndarray | None] | None = None) -> Path:
    """A grid of a class's images; a defect mask, where there is one, outlined in red."""
    figure = _figure(6, 6.4)
    masks = masks or [None] * len(images)
    for i in range(GRID * GRID):
        axes = figure.add_subplot(GRID, GRID, i + 1)
        axes.axis("off")
        if i < len(images):
            axes.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            if masks[i] is not None and masks[i].any():
                axes.contour(masks[i], levels=[0.5], colors="#e03030", linewidths=0.8)
    shown = min(len(images), GRID * GRID)
    outlined = sum(1 for mask in masks[:shown] if mask is not None)
    note = f", {outlined} with a defect mask (outlined)" if outlined else ""
    figure.suptitle(f"{class_name}: {shown} training images{note}")
    figure.tight_layout()
    return _save(figure, path)


def compressor_png(clip: np.ndarray, log_mel: np.ndarray, sample_rate: float, hop_length: int, fmax: float,
                   state: str, path: Path) -> Path:
    figure = _figure(10, 5.5)
    wave, spectrogram = figure.add_subplot(2, 1, 1), figure.add_subplot(2, 1, 2)
    wave.plot(np.arange(len(clip)) / sample_rate, clip, linewidth=0.4, color="#4c72b0")
    wave.set_xlim(0, len(clip) / sample_rate)
    wave.set_xlabel("time (s)")
    wave.set_ylabel("amplitude")
    wave.set_title(f"{state}: waveform of one training clip")
    extent = (0, log_mel.shape[1] * hop_length / sample_rate, 0, log_mel.shape[0])
    image = spectrogram.imshow(log_mel, origin="lower", aspect="auto", cmap="magma", extent=extent)
    figure.colorbar(image, ax=spectrogram, label="dB (re amplitude 1)")
    spectrogram.set_xlabel("time (s)")
    spectrogram.set_ylabel(f"mel band (0 to {fmax:.0f} Hz)")
    spectrogram.set_title("log-mel spectrogram")
    figure.tight_layout()
    return _save(figure, path)


def first_per_class(manifest: pd.DataFrame, split: str, count: int) -> dict[str, list[int]]:
    """The first `count` items of each class in the split, in manifest (item) order."""
    chosen = manifest[manifest["split"] == split].sort_values("item", kind="stable")
    return {name: group["item"].head(count).tolist() for name, group in chosen.groupby("class", sort=False)}


def explore(vision_dir: Path, acoustic_dir: Path, image_record: Any, out_dir: Path) -> list[Path]:
    """Write every picture; returns their paths."""
    vision = pd.read_parquet(vision_dir / "manifest.parquet").sort_values("item").reset_index(drop=True)
    acoustic = pd.read_parquet(acoustic_dir / "manifest.parquet").sort_values("item").reset_index(drop=True)
    written = [class_counts_png(vision, acoustic, out_dir / "class_counts.png")]
    pixels = np.load(vision_dir / "pixels.npy", mmap_mode="r")
    mask_path = vision_dir / "masks.npy"
    masks = np.load(mask_path, mmap_mode="r") if mask_path.is_file() else None
    for name, items in first_per_class(vision, "train", GRID * GRID).items():
        rows = vision.loc[items]
        where = list(zip(rows["offset"], rows["height"], rows["width"]))
        images = [np.asarray(pixels[o:o + h * w]).reshape(h, w) for o, h, w in where]
        has_mask = rows["mask_file"].astype(str).ne("").tolist() if "mask_file" in rows else [False] * len(rows)
        image_masks = [np.asarray(masks[o:o + h * w]).reshape(h, w) if masks is not None and paired else None
                       for (o, h, w), paired in zip(where, has_mask)]
        written.append(neu_grid_png(images, name, out_dir / f"neu_{name}.png", image_masks))
    clips = np.load(acoustic_dir / "clips.npy", mmap_mode="r")
    for name, items in first_per_class(acoustic, "train", 1).items():
        clip = np.asarray(clips[items[0]], dtype=np.float64)
        log_mel = image_record.from_clip(clip)[image_record.n_mfcc:]
        written.append(compressor_png(clip, log_mel, image_record.audio.sample_rate, image_record.hop_length,
                                      image_record.fmax, name, out_dir / f"compressor_{name}.png"))
    return written
