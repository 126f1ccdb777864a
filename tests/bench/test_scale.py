"""The scale benchmark (vapm.bench.scale) at two tiny sizes: real sample data, real DVC stages, a real Dask cluster.

The ratios it reports are measurements of this machine and are not asserted here; the test checks that every
stage was run at both sizes on datasets of the asked sizes, that the table says what it compares, and that the
targets are judged from the numbers in the JSON.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_scale_benchmark_runs_every_stage_at_n_and_2n_and_featurize_on_one_and_two_workers(tmp_path: Path):
    out = tmp_path / "results" / "scale"
    subprocess.run([sys.executable, "-m", "vapm.bench.scale", "--clips-per-class", "10", "--images-per-class", "10",
                    "--factor", "2", "--repeats", "2", "--workdir", str(tmp_path / "work"), "--out", str(out)],
                   cwd=REPO_ROOT, check=True, timeout=3600)
    result = json.loads(out.with_suffix(".json").read_text())
    small, large = result["sizes"]["n"], result["sizes"]["2n"]
    assert small["files"] == 10 * 8 + 10 * 6 and large["files"] == 2 * small["files"]
    # the decoded arrays double with the files (same clip length, same image size)
    assert large["decoded_mb"] == pytest.approx(2 * small["decoded_mb"], rel=0.05)
    for stage in ("ingest", "featurize", "train@acoustic_cnn", "train@vision_scratch"):
        for size in (small, large):
            assert size["stages"][stage]["wall_s"] > 0 and size["stages"][stage]["peak_rss_mb"] > 0, stage
        row = result["ratios"][stage]
        assert row["memory_ratio"] == pytest.approx(
            large["stages"][stage]["peak_rss_mb"] / small["stages"][stage]["peak_rss_mb"], abs=0.01)
        assert row["memory_met"] == (row["memory_ratio"] <= 1.10) and row["time_met"] == (row["time_ratio"] <= 2.2)
    dask = result["dask"]
    for workers in ("1", "2"):  # two runs on each cluster, the median counts
        runs = dask[workers]["runs_wall_s"]
        assert len(runs) == 2 and min(runs) > 0 and dask[workers]["wall_s"] == pytest.approx(sum(runs) / 2)
    assert dask["speedup_met"] == (dask["speedup"] >= 1.7)
    assert dask["same_bytes_as_local"]  # the workers computed what the local processes did
    table = out.with_suffix(".md").read_text()
    assert "| featurize |" in table and "Dask" in table and "140 and 280" in table
