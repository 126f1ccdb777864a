"""Anomaly-map overlays and the detector's gallery: what is drawn where, the order of the panels, the same bytes twice."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vapm.evaluation.figures import (_anomaly_panel, anomaly_gallery_order, save_anomaly_gallery_png,
                                     save_anomaly_overlay_png)


def _case(n: int = 6, side: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.integers(90, 110, (n, side, side)).astype(np.uint8)
    maps = rng.random((n, side // 4, side // 4)) * 0.2  # coarser than the images, as a patch detector's
    masks = np.zeros((n, side, side), bool)
    masks[: n // 2, 8:20, 8:20] = True
    maps[: n // 2, 2:5, 2:5] += 1.0
    return images, maps, masks


def test_the_panel_puts_the_heat_where_the_map_is_high_and_outlines_the_mask():
    """One 100 x 100 image drawn on a 100 x 100 pixel canvas, so canvas pixels are image pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.full((100, 100), 128, np.uint8)
    anomaly_map = np.zeros((100, 100))
    anomaly_map[10:30, 10:30] = 1.0  # hot block, top left
    mask = np.zeros((100, 100), bool)
    mask[60:90, 60:90] = True  # defect, bottom right, with a cold map
    figure = Figure(figsize=(1, 1), dpi=100)
    canvas = FigureCanvasAgg(figure)
    _anomaly_panel(figure.add_axes((0, 0, 1, 1)), image, anomaly_map, mask, 0.0, 1.0)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    assert rgb.shape == (100, 100, 3)
    hot = rgb[15:25, 15:25].reshape(-1, 3)
    assert (hot[:, 0] > hot[:, 2] + 60).all()  # warm colour over the grey
    cold = rgb[40:55, 40:55].reshape(-1, 3)
    assert (np.abs(cold - 128) <= 2).all()  # a zero score leaves the image as it is
    edge = rgb[75, 57:63]  # across the mask's left edge (columns 59.5): the outline, cyan
    assert any(g > 180 and b > 180 and r < 100 for r, g, b in edge)
    inside = rgb[70:80, 70:80].reshape(-1, 3)
    assert (np.abs(inside - 128) <= 2).all()  # no fill: the outline only


def test_gallery_order_puts_the_worst_mistakes_first():
    scores = [0.875, 0.25, 0.5625, 0.4375, 0.125, 0.75, 0.5]  # binary fractions: exact differences
    abnormal = [True, True, False, True, False, False, True]
    # Signed distance on the wrong side of 0.5: item 1 (defect at 0.25, a miss) and item 5 (normal at 0.75, a false
    # alarm) 0.25 each, in their order; item 2 (normal at 0.5625, a false alarm) and item 3 (defect at 0.4375, a miss)
    # 0.0625 each; item 6 (defect at exactly 0.5: not above it, a miss) 0; then the correct items 0 and 4 (-0.375).
    order = anomaly_gallery_order(scores, abnormal, 0.5)
    assert order == [1, 5, 2, 3, 6, 0, 4]
    with pytest.raises(ValueError, match="one score and one label"):
        anomaly_gallery_order([0.1, 0.2], [True], 0.5)


def test_overlay_and_gallery_are_written_with_the_same_bytes_twice(tmp_path):
    images, maps, masks = _case()
    scores = maps.max(axis=(1, 2))
    abnormal = masks.any(axis=(1, 2))
    path = save_anomaly_overlay_png(images[0], maps[0], masks[0], tmp_path / "a" / "overlay.png", "one image")
    assert path.read_bytes() == save_anomaly_overlay_png(images[0], maps[0], masks[0], tmp_path / "b.png",
                                                         "one image").read_bytes()
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (520, 440)
    gallery = save_anomaly_gallery_png(images, maps, masks, scores, abnormal, 0.5, tmp_path / "gallery.png", "toy",
                                       names=[f"item_{i}.jpg" for i in range(6)], limit=5, columns=3)
    again = save_anomaly_gallery_png(images, maps, masks, scores, abnormal, 0.5, tmp_path / "again.png", "toy",
                                     names=[f"item_{i}.jpg" for i in range(6)], limit=5, columns=3)
    assert gallery.read_bytes() == again.read_bytes()
    with Image.open(gallery) as png:
        assert png.size == (int(round((3 * 2.5 + 1.2) * 100)), int(round((2 * 3.1 + 0.8) * 100)))
    scaled = save_anomaly_gallery_png(images, maps, masks, scores, abnormal, 0.5, tmp_path / "scaled.png", "toy",
                                      names=[f"item_{i}.jpg" for i in range(6)], limit=5, columns=3, vmin=0.2, vmax=1.2)
    assert scaled.read_bytes() != gallery.read_bytes()


@pytest.mark.parametrize("change, message", [
    (lambda i, m, k, s: (i, m[:3], k, s), "one anomaly map each"),
    (lambda i, m, k, s: (i, m, k[:, :10], s), "one mask per image"),
    (lambda i, m, k, s: (i, np.where(m > 1, np.nan, m), k, s), "NaN or infinite"),
    (lambda i, m, k, s: (i, m, k, s[:4]), "6 images but 4 scores"),
])
def test_gallery_refuses_mismatched_inputs(tmp_path, change, message):
    images, maps, masks = _case()
    scores = maps.max(axis=(1, 2))
    images, maps, masks, scores = change(images, maps, masks, scores)
    with pytest.raises(ValueError, match=message):
        save_anomaly_gallery_png(images, maps, masks, scores, [True] * 3 + [False] * 3, 0.5, tmp_path / "g.png", "x")
