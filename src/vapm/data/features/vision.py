"""Grey images made square and resized to the side the vision models take.

How a non-square image becomes square is `vision.resize`: `squash` stretches it (the book's way), `pad` keeps the
aspect ratio and extends the short side with the image's edge pixels, `crop` keeps the centre square. A defect
mask takes the same geometry (padded with zeros, resized by nearest neighbour so it stays binary).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Lanczos with Pillow's support scaling low-pass filters when shrinking (no aliasing of the
# fine defect texture) and stays sharp when enlarging.
RESAMPLING = Image.Resampling.LANCZOS
RESIZE_MODES = ("squash", "pad", "crop")


def _square(image: np.ndarray, mode: str, fill: str) -> np.ndarray:
    height, width = image.shape
    if mode == "squash" or height == width:
        return image
    if mode == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return image[top:top + side, left:left + side]
    if mode == "pad":
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        padding = ((top, side - height - top), (left, side - width - left))
        return np.pad(image, padding, mode="edge") if fill == "edge" else np.pad(image, padding)
    raise ValueError(f"vision.resize must be one of {RESIZE_MODES}, got {mode!r}")


def _checked(image: np.ndarray) -> None:
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {image.dtype} with shape {image.shape}")


def resize_image(image: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """uint8 (size, size) from a 2-D uint8 grey image of any shape, made square as `mode` says."""
    _checked(image)
    square = _square(image, mode, fill="edge")
    if square.shape == (size, size):
        return np.array(square)
    resized = Image.fromarray(np.ascontiguousarray(square)).resize((size, size), RESAMPLING)
    return np.asarray(resized, dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """uint8 0/1 (size, size) from a 0/1 mask of its image's shape, with the image's geometry (resize_image)."""
    _checked(mask)
    square = _square(mask, mode, fill="zero")
    if square.shape == (size, size):
        return np.array(square)
    resized = Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(resized, dtype=np.uint8)


def resize_images(images: Iterable[np.ndarray], size: int, mode: str = "squash") -> np.ndarray:
    """uint8 (N, size, size) from grey images that may each have a different shape."""
    resized = [resize_image(image, size, mode) for image in images]
    return np.stack(resized) if resized else np.empty((0, size, size), dtype=np.uint8)


@dataclass(frozen=True)
class ImageRange:
    """One task of featurize: some images (or their defect masks) of a pixels.npy (masks.npy), each at a row of
    `geometry` (offset, height, width; height 0: no mask, a zero image), made square and resized. By the file's
    absolute path: the process that runs it (this one, or a Dask worker on shared storage) reads them itself."""
    path: Path
    geometry: np.ndarray
    size: int
    mode: str
    masks: bool = False


def image_range_task(task: ImageRange) -> np.ndarray:
    """uint8 (K, size, size): the task's images resized as the image record says (resize_image, resize_mask)."""
    from vapm.core.npy_rows import NpyRows

    source = NpyRows(task.path)
    resize = resize_mask if task.masks else resize_image
    out = np.zeros((len(task.geometry), task.size, task.size), dtype=np.uint8)
    try:
        for i, (offset, height, width) in enumerate(np.asarray(task.geometry, dtype=np.int64)):
            if height:
                out[i] = resize(source[offset:offset + height * width].reshape(height, width), task.size, task.mode)
    finally:
        source.close()
    return out


@dataclass(frozen=True)
class TrainingImages:
    """One task of featurize's image statistics: rows of a features.npz's images, read by the process that runs it."""
    path: Path
    rows: np.ndarray


def image_statistics_task(task: TrainingImages) -> np.ndarray:
    """float64 (K, N_FEATURES): vapm.data.image_polarity.polarity_features of the task's images."""
    from vapm.core.npy_rows import NpyRows
    from vapm.data.image_polarity import N_FEATURES, polarity_features

    images = NpyRows(task.path, "images")
    try:
        return np.array([polarity_features(images[row]) for row in np.asarray(task.rows, dtype=np.int64)],
                        dtype=np.float64).reshape(-1, N_FEATURES)
    finally:
        images.close()
