"""The explore stage's pictures (the book's figures of the data): all of them, the same bytes on every run."""
from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import TINY_PIPELINE, copy_repo, run, update_params

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_explore_writes_every_picture_with_the_same_bytes_each_run(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    update_params(repo, {key: value for key, value in TINY_PIPELINE.items() if key.startswith("sample_data.")})
    for stage in ("sample_data", "ingest", "explore"):
        run(["python", f"stages/{stage}.py"], repo)
    folder = repo / "metrics" / "explore"
    first = {path.name: path.read_bytes() for path in sorted(folder.glob("*.png"))}
    # One class-count chart, a sample grid per NEU class (6) and a waveform + log-mel per compressor state (8).
    assert len(first) == 1 + 6 + 8, sorted(first)
    assert all(data.startswith(PNG_SIGNATURE) and len(data) > 5000 for data in first.values())
    shutil.rmtree(folder)
    run(["python", "stages/explore.py"], repo)  # another process: no state carries over
    assert {path.name: path.read_bytes() for path in sorted(folder.glob("*.png"))} == first


def test_a_class_grid_outlines_the_defect_masks_it_has(tmp_path: Path):
    import numpy as np
    from PIL import Image

    from vapm.data.explore import neu_grid_png

    images = [np.full((20, 30), 120, np.uint8) for _ in range(3)]
    mask = np.zeros((20, 30), np.uint8)
    mask[5:12, 8:20] = 1
    plain = np.asarray(Image.open(neu_grid_png(images, "Dent", tmp_path / "plain.png")).convert("RGB"), dtype=int)
    outlined = np.asarray(Image.open(neu_grid_png(images, "Dent", tmp_path / "masked.png", [mask, None, None]))
                          .convert("RGB"), dtype=int)
    red = (outlined[..., 0] > 180) & (outlined[..., 1] < 100) & (outlined[..., 2] < 100)
    assert red.sum() > 20 and not ((plain[..., 0] > 180) & (plain[..., 1] < 100)).any()  # red only round the mask
