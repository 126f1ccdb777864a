"""train@vision_anomaly through the real pipeline: `dvc repro` of the sample data, ingest, featurize and the train
stage in a copy of the repository; then the saved folder loaded as the line loads it, and the evaluate stage's
detector outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("vapm") / "repo")
    update_params(repo, {**TINY_PIPELINE, "vision_anomaly.normal_class": "Rolled"})
    git_commit(repo, "tiny params for tests")
    proc = run(["dvc", "repro", "train@vision_anomaly"], repo, timeout=1200)
    assert "Running stage 'train@vision_anomaly'" in proc.stdout
    return repo


def test_the_stage_saves_a_detector_that_loads_and_scores_as_trained(trained: Path):
    from vapm.artefacts import ArtefactError, artefact

    folder = trained / "models" / "vision_anomaly"
    record = json.loads((folder / "record.json").read_text())
    assert (record["task"], record["artefact"], record["score_kind"]) == ("detector", "patchcore", "anomaly")
    assert record["details"]["normal_class"] == "Rolled" and record["input"]["kind"] == "image"
    with np.load(trained / "data" / "features" / "image" / "features.npz") as features:
        images, labels, splits = features["images"], features["labels"], features["splits"]
    rolled = record["classes"].index("Rolled")
    normal_train = set(np.flatnonzero((splits == "train") & (labels == rolled)).tolist())
    patchcore = json.loads((folder / "patchcore.json").read_text())
    assert set(patchcore["fit_rows"]) <= normal_train  # the bank saw normal train images only
    assert patchcore["bank_shape"][0] <= patchcore["settings"]["max_bank_size"]
    predictions = pd.read_parquet(folder / "predictions.parquet")
    test = np.flatnonzero(splits == "test")
    assert len(predictions) == len(test) and predictions["normal"].tolist() == (labels[test] == rolled).tolist()
    with pytest.raises(ArtefactError, match="runtime native"):
        artefact("patchcore").load(folder)
    model = artefact("patchcore").load(folder, "native")
    scores = artefact("patchcore").scores(model, images[test])
    assert scores.tobytes() == predictions["score"].to_numpy(np.float64).tobytes()  # bit-identical after loading
    assert np.array_equal(model.is_abnormal(scores), predictions["abnormal"].to_numpy())
    evaluation = json.loads((folder / "evaluation.json").read_text())["clean"]
    assert 0.0 <= evaluation["overall"]["auc"] <= 1.0
    assert set(evaluation["per_fault"]) == set(record["classes"]) - {"Rolled"}


def test_a_forced_rerun_writes_the_same_bytes(trained: Path):
    folder = trained / "models" / "vision_anomaly"
    before = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
    run(["dvc", "repro", "-f", "-s", "train@vision_anomaly"], trained, timeout=1200)
    after = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
    assert after.keys() == before.keys() and Path("extractor.keras") in after and Path("bank.npy") in after
    assert [name for name in after if after[name] != before[name]] == []  # no dates, no host facts, same bank


def test_the_evaluate_stage_writes_the_detector_scores(trained: Path, tmp_path: Path):
    from vapm.evaluation.evaluate import evaluate_detector, open_live

    folder = trained / "models" / "vision_anomaly"
    classes = json.loads((folder / "record.json").read_text())["classes"]
    scores = evaluate_detector("vision_anomaly", folder, classes, tmp_path, open_live(tmp_path))
    assert scores["n"] == len(pd.read_parquet(folder / "predictions.parquet"))
    assert scores["auc_lo"] <= scores["auc"] <= scores["auc_hi"] and 0 <= scores["far"] <= 1
    assert (tmp_path / "plots" / "images" / "roc" / "vision_anomaly.png").is_file()
    assert not (tmp_path / "plots" / "images" / "noise" / "vision_anomaly.png").exists()  # no noise sweep
