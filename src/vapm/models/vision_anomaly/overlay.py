"""An anomaly map drawn over its image: the heat colour's opacity grows with the score, so low scores leave the image
visible; a defect mask, where there is one, is outlined in a colour the heat map does not use. Used by the evaluate
stage's gallery, `vapm predict --heatmap` and `vapm monitor` (so it lives below all of them: matplotlib is imported
only when a picture is drawn)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

ANOMALY_CMAP = "inferno"
ANOMALY_MAX_ALPHA = 0.7
MASK_OUTLINE = "cyan"


def _anomaly_panel(axes: Any, image: Any, anomaly_map: Any, mask: Any, vmin: float, vmax: float) -> Any:
    """Draw one grey image, its anomaly map as a semi-transparent heat colour and its mask's outline on `axes`;
    return the colour scale (for a colour bar). A map of another size than the image is stretched over it."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image = np.asarray(image)
    height, width = image.shape
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0, clip=True)
    level = norm(np.asarray(anomaly_map, dtype=np.float64))
    heat = colormaps[ANOMALY_CMAP](level)
    heat[..., 3] = ANOMALY_MAX_ALPHA * level
    axes.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes.imshow(heat, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="bilinear")
    if mask is not None and np.asarray(mask).any():
        axes.contour(np.asarray(mask, dtype=np.float64), levels=[0.5], colors=MASK_OUTLINE, linewidths=1.2)
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    return ScalarMappable(norm=norm, cmap=ANOMALY_CMAP)


def _checked_panels(images: Any, anomaly_maps: Any, masks: Any) -> tuple[Any, Any, Any]:
    import numpy as np

    images, maps = np.asarray(images), np.asarray(anomaly_maps, dtype=np.float64)
    if images.ndim != 3 or maps.ndim != 3 or len(maps) != len(images):
        raise ValueError(f"need grey images (N, H, W) and one anomaly map each (N, h, w), got shapes {images.shape} "
                         f"and {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps hold NaN or infinite values")
    if masks is not None:
        masks = np.asarray(masks).astype(bool)
        if masks.shape != images.shape:
            raise ValueError(f"masks have shape {masks.shape}, the images {images.shape}: one mask per image, its size")
    return images, maps, masks


def save_anomaly_overlay_png(image: Any, anomaly_map: Any, mask: Any, path: str | Path | BinaryIO, title: str,
                             vmin: float | None = None, vmax: float | None = None) -> Path | BinaryIO:
    """One grey image with its anomaly map as a semi-transparent heat colour (transparent at `vmin`, the map's
    minimum by default, most opaque at `vmax`), the outline of its defect mask (None or empty: none) and a colour bar
    of the anomaly score; to a file path (its folder made) or an open binary file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images, maps, masks = _checked_panels([image], [anomaly_map], None if mask is None else [mask])
    figure = Figure(figsize=(5.2, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    scale = _anomaly_panel(axes, images[0], maps[0], None if masks is None else masks[0],
                           float(maps.min()) if vmin is None else vmin, float(maps.max()) if vmax is None else vmax)
    figure.colorbar(scale, ax=axes, fraction=0.046, pad=0.04, label="anomaly score")
    axes.set_title(title.replace("$", r"\$"), fontsize=10)  # plain text: a '$' in a file name is no mathtext
    figure.tight_layout()
    if isinstance(path, (str, Path)):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def save_answer_overlay_png(image: Any, anomaly_map: Any, answer: dict[str, Any], title: str,
                            path: str | Path | BinaryIO) -> Path | BinaryIO:
    """A detector's answer drawn: the colour starts at its threshold (a normal part shows little or no heat) and
    reaches full strength at the map's largest score or 1.5 times the threshold, whichever is higher; `title` on
    one line, the verdict with score and threshold on the next."""
    import numpy as np

    threshold = float(answer["threshold"])
    return save_anomaly_overlay_png(image, anomaly_map, None, path,
                                    f"{title}\n{answer['status']} (score {answer['score']:.4g}, threshold "
                                    f"{threshold:.4g})", vmin=threshold,
                                    vmax=max(float(np.max(anomaly_map)), 1.5 * threshold))
