"""The README's PatchCore benchmark command, exactly as written, on the real NEU archive.

It fits the detector six times on ~290 images of 224 px and once on 1,000: about half an hour on 2 cores, so
it is a soak test (`pytest -m soak`) and needs the real data beside the checkout (../shared/data).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, copy_repo
from tests.readme import link_environment, readme_command

pytestmark = [pytest.mark.soak,
              pytest.mark.skipif(not (SHARED_DATA / "NEU-data-TrainTest.zip").is_file(),
                                 reason="needs the real NEU archive in ../shared/data")]


def test_make_bench_anomaly_scores_every_neu_class_as_normal_and_times_one_prediction(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    link_environment(repo)
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)  # the command's default archive: ../shared/data/...
    (repo / "docs" / "benchmarks" / "vision-anomaly-neu.json").unlink()

    readme_command("make bench-anomaly", repo, timeout=7200)
    result = json.loads((repo / "docs" / "benchmarks" / "vision-anomaly-neu.json").read_text())
    rows = {row["normal_class"]: row for row in result["one_vs_rest"]}
    assert sorted(rows) == ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]
    for name, row in rows.items():
        assert row["n_test_normal"] == 12 and row["n_test_abnormal"] == 60, name
        assert 0.0 <= row["auroc"] <= 1.0 and row["bank_size"] > 0, name
    assert result["summary"]["mean_auroc"] == pytest.approx(sum(r["auroc"] for r in rows.values()) / 6)
    assert result["latency"]["calls"] > 0 and result["fit_1000"]
