"""The real `dvc repro` / `dvc exp run` / `dvc metrics diff` / `dvc plots` in a temporary copy of the repository."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import TINY_PIPELINE, copy_repo, git_commit, run, update_params
from vapm.registry import load_registry

pytestmark = pytest.mark.slow

MODELS = list(load_registry(Path(__file__).resolve().parents[1] / "models.yaml"))
NEURAL_STAGES = {"train@vision_scratch", "train@vision_transfer", "train@acoustic_cnn"}


def stages_run(dvc_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


def read_scores(repo: Path) -> dict[str, bytes]:
    return {m: (repo / "metrics" / "scores" / f"{m}.json").read_bytes() for m in MODELS}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("vapm") / "repo")
    update_params(repo, TINY_PIPELINE)
    git_commit(repo, "tiny params for tests")
    first = run(["dvc", "repro"], repo)
    assert stages_run(first.stdout) >= {"sample_data", "ingest", "featurize", "evaluate"} | {
        f"train@{model}" for model in MODELS}
    git_commit(repo, "reproduced")
    return repo


def test_repro_builds_every_output_and_beats_chance(pipeline: Path):
    for name in ["data/interim/vision/manifest.parquet", "data/features/wavelet/features.parquet",
                 "data/features/image/record.json", "metrics/ingest_report.json",
                 "metrics/plots/images/confusion/acoustic_svm.png"]:
        assert (pipeline / name).is_file(), name
    for model in MODELS:
        scores = json.loads((pipeline / "metrics" / "scores" / f"{model}.json").read_text())
        assert scores["n"] > 0 and 0.0 <= scores["acc_lo"] <= scores["acc"] <= scores["acc_hi"] <= 1.0
    # Two epochs on tiny data: only the SVM is asked to be clearly better than chance (1/8) here;
    # the full-size demo's accuracies are the committed metrics.
    assert json.loads((pipeline / "metrics" / "scores" / "acoustic_svm.json").read_text())["acc"] > 0.25


def test_second_repro_does_nothing(pipeline: Path):
    proc = run(["dvc", "repro"], pipeline)
    assert stages_run(proc.stdout) == set()
    assert "Data and pipelines are up to date" in proc.stdout


def test_forced_repro_is_bit_identical_and_leaves_git_clean(pipeline: Path):
    before = read_scores(pipeline)
    run(["dvc", "repro", "-f"], pipeline)
    assert read_scores(pipeline) == before
    # dvc.lock, the metrics and every plot file in git are unchanged: no times or host facts anywhere
    assert run(["git", "status", "--porcelain"], pipeline).stdout == ""


def test_featurize_param_change_reruns_featurize_not_ingest(pipeline: Path):
    update_params(pipeline, {"featurize.n_mels": 48})
    try:
        status = run(["dvc", "status"], pipeline).stdout
        assert "featurize" in status and "ingest:" not in status
        proc = run(["dvc", "repro", "featurize"], pipeline)
        assert stages_run(proc.stdout) == {"featurize"}
    finally:
        run(["git", "checkout", "params.yaml"], pipeline)
        run(["dvc", "checkout", "-q", "--force"], pipeline)


def test_exp_run_epochs_retrains_only_the_neural_models_and_changes_one_line(pipeline: Path):
    proc = run(["dvc", "exp", "run", "-S", "train.epochs=3", "--name", "three-epochs"], pipeline)
    assert stages_run(proc.stdout) == NEURAL_STAGES | {"evaluate"}
    # DVC writes params.yaml back in its own style; ours is already in it, so one value changed = one line.
    numstat = run(["git", "diff", "--numstat", "params.yaml"], pipeline).stdout.split()
    assert numstat == ["1", "1", "params.yaml"]
    loss = json.loads((pipeline / "metrics" / "plots" / "custom" / "loss" / "vision_scratch.json").read_text())
    assert [point["epoch"] for point in loss] == [1, 2, 3]
    env = {"COLUMNS": "400"}  # wide enough that nothing is squeezed: the table's own width is measured
    shown = run(["dvc", "exp", "show", "--only-changed", "--no-pager"], pipeline, env=env).stdout
    assert "three-epochs" in shown and "train.epochs" in shown
    assert max(len(line) for line in shown.splitlines()) <= 160, shown
    metrics = run(["dvc", "metrics", "show"], pipeline, env=env).stdout.splitlines()
    assert len(metrics) <= 1 + len(MODELS) and max(map(len, metrics)) <= 100, "\n".join(metrics)
    run(["dvc", "exp", "remove", "three-epochs"], pipeline, check=False)
    run(["git", "checkout", "--", "."], pipeline)
    run(["dvc", "checkout", "-q", "--force"], pipeline)


def test_metrics_and_params_diff_between_branches(pipeline: Path):
    run(["git", "checkout", "-q", "-b", "fewer-c"], pipeline)
    try:
        update_params(pipeline, {"acoustic_svm.C_grid": [0.001]})
        proc = run(["dvc", "repro"], pipeline)
        assert stages_run(proc.stdout) == {"train@acoustic_svm", "evaluate"}
        git_commit(pipeline, "tiny C grid")
        params_diff = run(["dvc", "params", "diff", "main", "--md"], pipeline).stdout
        assert "acoustic_svm.C_grid" in params_diff
        metrics_diff = run(["dvc", "metrics", "diff", "main", "--md", "--all"], pipeline).stdout
        assert "metrics/scores/acoustic_svm.json" in metrics_diff and "acc" in metrics_diff
    finally:
        run(["git", "checkout", "-q", "main"], pipeline)
        run(["dvc", "checkout", "-q", "--force"], pipeline)


def test_plots_and_metrics_work_in_a_fresh_clone_without_a_pull(pipeline: Path, tmp_path: Path):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pipeline), str(clone)], tmp_path)
    shown = run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], clone)
    page = (tmp_path / "plots" / "index.html").read_text()
    for model in MODELS:
        assert f"metrics/plots/sklearn/confusion/{model}.json" in page
    assert "loss (cross-entropy)" in page and "Failed" not in shown.stderr
    assert "cdn.jsdelivr" not in page and "vega-embed" in page  # the chart library is inside: renders offline
    run(["dvc", "plots", "diff", "HEAD~1", "-o", str(tmp_path / "diff")], clone)
    assert (tmp_path / "diff" / "index.html").is_file()
    diff = run(["dvc", "metrics", "diff", "HEAD~1", "--all"], clone).stdout
    assert "metrics/scores/vision_scratch.json" in diff


def test_every_training_stage_logged_one_mlflow_run(pipeline: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{pipeline}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["vapm"], output_format="pandas")
    first_runs = runs.sort_values("start_time").groupby("tags.model").head(1)
    assert set(first_runs["tags.model"]) == set(MODELS)
    head = run(["git", "rev-parse", "HEAD~1"], pipeline).stdout.strip()  # the commit `dvc repro` ran on
    for _, row in first_runs.iterrows():
        assert row["tags.git_commit"] == head
        assert len(row["tags.data_manifest_sha256"]) == 64
        logged_params = [c for c in row.index if c.startswith("params.") and row[c] is not None]
        assert "params.seed" in logged_params and len(logged_params) >= 5
        assert 0.0 <= row["metrics.test_accuracy"] <= 1.0
    assert set(first_runs["tags.stage"]) == {f"train@{model}" for model in MODELS}


def test_predict_classifies_new_files_like_the_pipeline(pipeline: Path, tmp_path: Path):
    import zipfile

    with zipfile.ZipFile(pipeline / "data" / "sample" / "NEU-data-TrainTest.zip") as archive:
        member = next(n for n in archive.namelist() if "/test/" in n)
        (tmp_path / "strip.jpg").write_bytes(archive.read(member))
    with zipfile.ZipFile(pipeline / "data" / "sample" / "AirCompressor_Data.zip") as archive:
        member = next(n for n in archive.namelist() if n.endswith(".dat"))
        (tmp_path / "clip.dat").write_bytes(archive.read(member))
    for model, new_file in [("vision_scratch", "strip.jpg"), ("acoustic_cnn", "clip.dat")]:
        result = json.loads(run(["vapm", "predict", f"models/{model}", str(tmp_path / new_file), "--json"],
                                pipeline).stdout)
        classes = json.loads((pipeline / "models" / model / "record.json").read_text())["classes"]
        assert result[0]["class"] in classes
        assert sum(result[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    svm = run(["vapm", "predict", "models/acoustic_svm", str(tmp_path / "clip.dat")], pipeline)
    assert "decision score" in svm.stdout and "not probabilities" in svm.stdout
    missing = run(["vapm", "predict", "models/vision_scratch", str(tmp_path / "nope.jpg"), str(tmp_path / "strip.jpg")],
                  pipeline, check=False)
    assert missing.returncode == 1 and "nope.jpg: cannot read it" in missing.stderr
    assert "strip.jpg: " in missing.stdout and "Traceback" not in missing.stderr  # the other file still classified


def test_toy_model_added_by_one_entry_one_section_and_its_trainer(pipeline: Path, tmp_path: Path):
    """The registry's promise: a new model needs models.yaml, params.yaml and its trainer module, nothing else."""
    repo = tmp_path / "toy"
    run(["git", "clone", "-q", str(pipeline), str(repo)], tmp_path)
    shutil.copytree(pipeline / ".dvc" / "cache", repo / ".dvc" / "cache", dirs_exist_ok=True)
    run(["dvc", "checkout", "-q"], repo)
    touched_before = set(run(["git", "ls-files"], repo).stdout.split())
    (repo / "src" / "vapm" / "models" / "acoustic_logreg.py").write_text(TOY_TRAINER)
    with (repo / "models.yaml").open("a") as registry:
        registry.write(TOY_ENTRY)
    with (repo / "params.yaml").open("a") as params:
        params.write(TOY_PARAMS)
    status = run(["git", "status", "--porcelain"], repo).stdout
    assert {line[3:] for line in status.splitlines()} == {"models.yaml", "params.yaml",
                                                          "src/vapm/models/acoustic_logreg.py"}
    proc = run(["dvc", "repro"], repo)
    assert stages_run(proc.stdout) == {"train@acoustic_logreg", "evaluate"}
    scores = json.loads((repo / "metrics" / "scores" / "acoustic_logreg.json").read_text())
    assert scores["acc"] > 0.25 and scores["n"] > 0
    assert (repo / "metrics" / "plots" / "sklearn" / "confusion" / "acoustic_logreg.json").is_file()
    clip = tmp_path / "clip.dat"
    import zipfile

    with zipfile.ZipFile(repo / "data" / "sample" / "AirCompressor_Data.zip") as archive:
        clip.write_bytes(archive.read(next(n for n in archive.namelist() if n.endswith(".dat"))))
    served = json.loads(run(["vapm", "predict", "models/acoustic_logreg", str(clip), "--json"], repo).stdout)
    assert sum(served[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    crossval = run(["vapm", "crossval", "acoustic_logreg"], repo)
    assert "acoustic_logreg: accuracy" in crossval.stdout
    assert touched_before <= set(run(["git", "ls-files"], repo).stdout.split())


TOY_ENTRY = """  acoustic_logreg:
    modality: audio
    input: data/features/wavelet
    artefact: sklearn
    task: classifier
    trainer: src/vapm/models/acoustic_logreg.py
    defaults: acoustic_logreg
"""

TOY_PARAMS = """
acoustic_logreg:
  C: 1.0
"""

TOY_TRAINER = '''"""acoustic_logreg: a toy model, a logistic regression on the wavelet-packet energies."""
from __future__ import annotations

from pydantic import Field

from vapm.settings import ModelParams
from vapm.training.data import train_test_only
from vapm.training.job import Trained, TrainingJob


class Params(ModelParams):
    C: float = Field(gt=0)


def train(job: TrainingJob) -> Trained:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    split = train_test_only(job.features.splits)
    x = pd.DataFrame(job.features.x, columns=list(job.features.columns))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=job.params.C, max_iter=2000))
    model.fit(x.iloc[split.fit], job.features.labels[split.fit])
    return Trained(model=model, split=split, test_scores=model.predict_proba(x.iloc[split.test]),
                   score_kind="probability")
'''
