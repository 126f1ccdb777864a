"""Grey images resized to the square side the vision models take."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

# Lanczos with Pillow's support scaling low-pass filters when shrinking (no aliasing of the
# fine defect texture) and stays sharp when enlarging.
RESAMPLING = Image.Resampling.LANCZOS


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size) from a 2-D uint8 grey image of any shape; non-square images are stretched."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 grey image, got {image.dtype} with shape {image.shape}")
    if image.shape == (size, size):
        return np.array(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size, size), RESAMPLING)
    return np.asarray(resized, dtype=np.uint8)


def resize_images(images: Iterable[np.ndarray], size: int) -> np.ndarray:
    """uint8 (N, size, size) from grey images that may each have a different shape."""
    resized = [resize_image(image, size) for image in images]
    return np.stack(resized) if resized else np.empty((0, size, size), dtype=np.uint8)
