"""The README's "Using the real datasets" commands, as written, on archives a user copied into data/raw/.

The archives here are the sample_data stage's stand-ins in exactly the real layout and names (the real ones
take the same commands, for an hour); params shrink only the stand-ins, never the preset's settings.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params
from tests.readme import link_environment, readme_command

pytestmark = pytest.mark.slow

ARCHIVES = ["NEU-data-TrainTest.zip", "AirCompressor_Data.zip"]


def test_the_real_data_preset_runs_as_an_experiment_and_is_applied(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    link_environment(repo)
    update_params(repo, {key: value for key, value in TINY_PIPELINE.items() if key.startswith("sample_data.")})
    run(["python", "stages/sample_data.py"], repo)
    (repo / "data" / "raw").mkdir(parents=True, exist_ok=True)
    for name in ARCHIVES:  # step 1 of the README: copy the archives into data/raw/
        shutil.copy2(repo / "data" / "sample" / name, repo / "data" / "raw" / name)
    git_commit(repo, "archives in data/raw")

    proc = readme_command("vapm preset presets/real-data.yaml --run --name real-data", repo, timeout=3600)
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    assert {"ingest", "featurize", "train@vision_scratch", "train@vision_transfer", "evaluate"} <= ran
    # A preset changes many params, data and models: the table is wide; a wide terminal shows all of it.
    shown = readme_command("dvc exp show --only-changed", repo, env={"COLUMNS": "4000"}).stdout
    assert "real-data" in shown and "vision_transfer.input_size" in shown

    readme_command("dvc exp apply real-data", repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["ingest"]["vision_archive"] == "data/raw/NEU-data-TrainTest.zip"
    assert params["vision_transfer"]["input_size"] == 224 and params["vision_scratch"]["train"]["epochs"] == 30
    assert run(["dvc", "status"], repo).stdout.strip().endswith("up to date.")  # outputs are the experiment's
    for model in ["vision_scratch", "vision_transfer", "acoustic_svm", "acoustic_cnn"]:
        scores = json.loads((repo / "metrics" / "scores" / f"{model}.json").read_text())
        assert scores["n"] > 0 and 0 <= scores["acc"] <= 1, model

    update_params(repo, {"crossval.folds": 2})  # the user's own choice of k; k-fold of the preset's settings
    crossval = readme_command("vapm crossval", repo, timeout=3600).stdout
    assert "acoustic_svm: accuracy" in crossval and "vision_scratch: accuracy" in crossval
