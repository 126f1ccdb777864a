"""Any class list runs the whole DAG from the sample data: `dvc repro` with three classes of names the book never
used (sample_data draws stand-ins for them), then `dvc exp run -S vision.classes=auto` taking the names from the
archive (the book's six, which sample_data draws when it has no list)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params
from tests.readme import link_environment

pytestmark = pytest.mark.slow

VISION = ["Dent", "Rust spot", "Oil"]
AUDIO = ["Healthy", "Knock", "Hiss"]
BOOK_VISION = ["Crazing", "Inclusion", "Patches", "Pitted", "Rolled", "Scratches"]  # acoustic_anomaly.normal_class stays Healthy


def test_three_custom_classes_run_every_stage_through_dvc_repro(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    link_environment(repo)
    update_params(repo, {**TINY_PIPELINE, "vision.classes": VISION, "audio.classes": AUDIO})
    git_commit(repo, "three classes of our own")

    proc = run(["dvc", "repro"], repo, timeout=3600)
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    assert {"sample_data", "ingest", "featurize", "evaluate", "train@vision_scratch", "train@acoustic_svm"} <= ran
    report = json.loads((repo / "metrics" / "ingest_report.json").read_text())
    assert report["vision"]["classes"] == VISION and report["acoustic"]["classes"] == AUDIO
    for model, classes in (("vision_scratch", VISION), ("vision_transfer", VISION), ("acoustic_svm", AUDIO),
                           ("acoustic_cnn", AUDIO)):
        assert json.loads((repo / "models" / model / "record.json").read_text())["classes"] == classes
        scores = json.loads((repo / "metrics" / "scores" / f"{model}.json").read_text())
        assert scores["n"] > 0 and {"acc", "bal_acc", "baseline", "f1"} <= set(scores)
    assert (repo / "metrics" / "plots" / "images" / "confusion" / "vision_scratch.png").is_file()
    git_commit(repo, "reproduced")

    # auto: the classes the archive holds, sorted; with no list to draw, sample_data draws the book's six.
    run(["dvc", "exp", "run", "-S", "vision.classes=auto", "--name", "auto"], repo, timeout=3600)
    report = json.loads((repo / "metrics" / "ingest_report.json").read_text())
    assert report["vision"]["classes"] == BOOK_VISION
    assert json.loads((repo / "models" / "vision_scratch" / "record.json").read_text())["classes"] == BOOK_VISION
