"""The preset tool and the k-fold split used by the cross-validation mode."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.helpers import REPO_ROOT
from vapm.evaluation.crossval import summarize
from vapm.training.crossval import CrossvalError, fold_splits
from vapm.config.presets import PresetError, load_preset, override_args
from vapm.config.settings import read_params


@pytest.fixture(scope="module")
def params() -> dict:
    return read_params(REPO_ROOT / "params.yaml")


def test_every_shipped_preset_names_existing_params(params):
    for preset in sorted((REPO_ROOT / "presets").glob("*.yaml")):
        args = override_args(load_preset(preset), params)
        assert args[0::2] == ["-S"] * (len(args) // 2)
        assert not any(ch.isspace() for arg in args for ch in arg), preset


def test_override_args_are_compact_yaml_that_round_trips(params):
    preset = {"acoustic_svm.C_grid": [0.01, 1], "vision_scratch.train": {"epochs": 30, "batch_size": 16},
              "featurize.fmax": None, "ingest.vision_archive": "data/raw/x.zip"}
    args = override_args(preset, params)
    parsed = dict(arg.split("=", 1) for arg in args[1::2])
    # A mapping value stands for its keys: DVC can then override keys that exist (null) in params.yaml.
    assert {key: yaml.safe_load(value) for key, value in parsed.items()} == {
        "acoustic_svm.C_grid": [0.01, 1], "vision_scratch.train.epochs": 30, "vision_scratch.train.batch_size": 16,
        "featurize.fmax": None, "ingest.vision_archive": "data/raw/x.zip"}


def test_unknown_preset_key_is_refused(params):
    with pytest.raises(PresetError, match="train.epoch"):
        override_args({"train.epoch": 3}, params)


def test_preset_cli_prints_arguments_and_fails_cleanly(tmp_path):
    good = subprocess.run([sys.executable, "-m", "vapm", "preset", "presets/book.yaml"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert good.returncode == 0 and "-S vision.image_size=200" in good.stdout
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("nonsense.key: 1\n")
    bad = subprocess.run([sys.executable, "-m", "vapm", "preset", str(bad_file)], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "nonsense" in bad.stderr and "Traceback" not in bad.stderr
    stray = subprocess.run([sys.executable, "-m", "vapm", "preset", "presets/book.yaml", "--name", "x"],
                           cwd=REPO_ROOT, capture_output=True, text=True)
    assert stray.returncode == 2 and "need --run" in stray.stderr


def test_fold_splits_test_every_item_once_and_stay_stratified():
    labels = np.repeat(np.arange(3), 10)
    folds = fold_splits(labels, 5, seed=1)
    assert len(folds) == 5
    tested = np.stack([splits == "test" for splits in folds])
    assert (tested.sum(axis=0) == 1).all()
    for mask in tested:
        assert np.bincount(labels[mask], minlength=3).tolist() == [2, 2, 2]
    assert all((a == b).all() for a, b in zip(folds, fold_splits(labels, 5, seed=1)))


def test_fold_splits_refuse_impossible_folds():
    with pytest.raises(CrossvalError, match="only 3 items"):
        fold_splits(np.array([0, 0, 0, 1, 1, 1, 1]), 4, seed=0)
    with pytest.raises(CrossvalError, match="at least 2"):
        fold_splits(np.array([0, 1]), 1, seed=0)


def test_summarize_reports_each_fold_mean_sample_spread_and_minimum():
    per_fold = [{"accuracy": a, "balanced_accuracy": a - 0.1, "macro_f1": a / 2} for a in (0.9, 1.0, 0.95)]
    result = summarize(per_fold, n_items=30)
    assert result["folds"] == 3 and result["n_items"] == 30
    assert result["accuracy_per_fold"] == [0.9, 1.0, 0.95]
    assert result["accuracy_mean"] == pytest.approx(0.95)
    assert result["accuracy_sd"] == pytest.approx(0.05)  # sample standard deviation (ddof=1), not 0.0408
    assert result["accuracy_min"] == 0.9
    assert result["balanced_accuracy_mean"] == pytest.approx(0.85) and result["macro_f1_sd"] == pytest.approx(0.025)
    assert not any(key.startswith(("unfamiliar", "ece")) for key in result)  # no fold had them


def test_summarize_gives_the_worst_fold_of_a_rate_as_its_highest_and_only_when_every_fold_has_it():
    scores = [{"accuracy": a, "balanced_accuracy": a, "macro_f1": a} for a in (0.9, 1.0, 0.95)]
    rates = [{"unfamiliar_share": u, "ece_calibrated": e} for u, e in ((0.0, 0.02), (0.05, 0.01), (0.025, 0.03))]
    result = summarize([{**s, **r} for s, r in zip(scores, rates)], n_items=30)
    assert result["unfamiliar_share_per_fold"] == [0.0, 0.05, 0.025]
    assert result["unfamiliar_share_mean"] == pytest.approx(0.025) and result["unfamiliar_share_max"] == 0.05
    assert result["unfamiliar_share_sd"] == pytest.approx(0.025)
    assert result["ece_calibrated_max"] == 0.03 and "ece_calibrated_min" not in result
    one_fold_without = [{**s, **r} for s, r in zip(scores, rates)]
    del one_fold_without[1]["ece_calibrated"]
    partial = summarize(one_fold_without, n_items=30)
    assert "unfamiliar_share_mean" in partial and not any(key.startswith("ece") for key in partial)
