"""The README's benchmark command, exactly as written, on a copy of the demo at the test suite's tiny scale.

Only the copy's sample data is small; the command, its epochs, pairs and 200 px images are the README's.
The numbers it measures are not asserted (they are timings): only that every model was measured and compared.
Its 24 worker processes take 3-4 minutes even at this scale, so it is a soak test (`pytest -m soak`), which
keeps .ci/run within 40 minutes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, update_params
from tests.readme import link_environment, readme_command

pytestmark = pytest.mark.soak

KERAS_PHASES = {("vision_scratch", "train"), ("vision_transfer", "head"), ("vision_transfer", "fine_tune"),
                ("acoustic_cnn", "train")}


def test_make_bench_measures_the_roofline_and_the_books_loops_of_every_keras_model(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    update_params(repo, TINY_PIPELINE)
    git_commit(repo, "tiny params for tests")
    link_environment(repo)

    readme_command('make bench BENCH_ARGS="--skip-pipeline --roofline --compare-book --pairs 3 --epochs 2 '
                   '--set vision.image_size=200"', repo, timeout=3600)
    result = json.loads((repo / "bench" / "results.json").read_text())
    assert result["overrides"]["vision.image_size"] == 200
    roofline = result["roofline"]
    assert roofline["peak_gflops"] > 0
    measured = {(row["model"], row["phase"]): row for row in roofline["rows"] if not row["model"].startswith("book")}
    assert KERAS_PHASES <= set(measured)
    for key in KERAS_PHASES:
        row = measured[key]
        assert row["epoch_tflop"] > 0 and row["epoch_s"]["n"] == 3 and 0 < row["percent_of_peak"], key
    book = result["book"]
    assert set(book["no_book_loop"]) == {"acoustic_svm", "acoustic_anomaly"}
    for model, phase in KERAS_PHASES:
        ratios = book[model]["phases"][phase]
        assert book[model]["pairs"] == 3 and ratios["n"] == 3 and all(r > 0 for r in ratios["ratios"]), model
    table = (repo / "bench" / "results.md").read_text()
    assert "Matmul peak" in table and "book's training loop / vapm's" in table
