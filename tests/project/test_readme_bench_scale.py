"""The README's scale benchmark command, exactly as written: N and 4N files (1.1 GB decoded at 4N), every stage
timed at both sizes, featurize on one and on two Dask workers. About half an hour on 2 cores, so it is a soak test
(`pytest -m soak`); tests/bench/test_scale.py runs the same benchmark at two tiny sizes in the slow suite."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import copy_repo
from tests.readme import link_environment, readme_command

pytestmark = pytest.mark.soak


def test_make_bench_scale_measures_n_and_4n_and_two_workers(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    link_environment(repo)
    (repo / "docs" / "benchmarks" / "scale.json").unlink(missing_ok=True)

    readme_command("make bench-scale", repo, timeout=7200)
    result = json.loads((repo / "docs" / "benchmarks" / "scale.json").read_text())
    assert result["factor"] == 4 and result["sizes"]["4n"]["decoded_mb"] >= 1000
    assert set(result["ratios"]) == {"ingest", "featurize", "train@acoustic_cnn", "train@vision_scratch"}
    assert result["dask"]["same_bytes_as_local"]
