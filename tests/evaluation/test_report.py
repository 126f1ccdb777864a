"""The retraining report: params that changed, McNemar on paired predictions, pictures, an offline HTML page."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vapm.evaluation.figures import save_confusion_png

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def write_side(repo: Path, learning_rate: float, predicted: list[str], manifest: str = "ab" * 32,
               balanced: bool = True) -> None:
    """What `dvc repro` leaves in git for one model: params, registry, scores, details, predictions, pictures."""
    (repo / "params.yaml").write_text(yaml.safe_dump({"train": {"learning_rate": learning_rate, "epochs": 3}}))
    (repo / "models.yaml").write_text(yaml.safe_dump({"models": {"toy": {}}}))
    actual = ["a", "a", "b", "b", "c", "c", "a", "b", "c", "a", "b", "c"]
    metrics = repo / "metrics"
    pd.DataFrame({"file": [f"item_{i:02d}.jpg" for i in range(len(actual))], "actual": actual,
                  "predicted": predicted}).to_csv(_mkdir(metrics / "predictions") / "toy.csv", index=False)
    right = sum(a == p for a, p in zip(actual, predicted))
    scores = {"acc": right / len(actual), "acc_lo": 0.1, "acc_hi": 0.9, "f1": 0.5, "n": len(actual)}
    if balanced:  # scores from before balanced accuracy and the baseline were added have neither
        recalls = [sum(a == p == name for a, p in zip(actual, predicted)) / actual.count(name) for name in CLASSES]
        scores |= {"bal_acc": round(sum(recalls) / len(CLASSES), 4), "baseline": round(4 / 12, 4),
                   "ece": 0.0412, "unfl_test": 0.0139, "unfl_val": 0.0058,
                   "unfl_min": 0.25}  # and the flag's shares (issue 26)
    (_mkdir(metrics / "scores") / "toy.json").write_text(json.dumps(scores))
    (_mkdir(metrics / "details") / "toy.json").write_text(json.dumps({"data_manifest_sha256": manifest}))
    index = {name: i for i, name in enumerate(CLASSES)}
    save_confusion_png([index[a] for a in actual], [index[p] for p in predicted], CLASSES,
                       _mkdir(metrics / "plots" / "images" / "confusion") / "toy.png", title=f"lr {learning_rate}")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def branch_with_a_changed_learning_rate(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    #                  a    a    b    b    c    c    a    b    c    a    b    c
    write_side(repo, 0.001, ["a", "b", "b", "a", "c", "a", "a", "c", "c", "b", "b", "a"],  # 6 of 12 right
               balanced=False)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "checkout", "-q", "-b", "faster")
    write_side(repo, 0.01, ["a", "a", "b", "b", "c", "c", "a", "b", "c", "a", "b", "a"])   # 11 of 12 right
    return repo


def run_report(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(repo),
           "PYTHONPATH": str(REPO_ROOT / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'none.db'}"}
    return subprocess.run([sys.executable, "-m", "vapm", "report", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)


def test_report_pairs_predictions_and_computes_mcnemar_by_hand(branch_with_a_changed_learning_rate):
    repo = branch_with_a_changed_learning_rate
    proc = run_report(repo, "--base", "main")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((repo / "reports" / "report.json").read_text())
    assert data["params"] == [{"param": "train.learning_rate", "before": 0.001, "after": 0.01}]
    test = data["models"]["toy"]["test"]
    # By hand: before is wrong on items 1, 3, 5, 7, 9, 11 and after only on 11, so 5 items flipped to right,
    # none to wrong, item 11 is wrong on both and 6 are right on both. Exact McNemar on the 5 discordant
    # items: 2 * P(X <= 0 | n=5, p=1/2) = 2 / 32 = 0.0625.
    assert (test["only_head_right"], test["only_base_right"], test["both_wrong"], test["both_right"]) == (5, 0, 1, 6)
    assert test["p_value"] == pytest.approx(2 / 32) and test["n"] == 12
    markdown = (repo / "reports" / "report.md").read_text()
    assert "McNemar p = 0.0625 (not significant at 0.05)" in markdown
    # After: recalls a 4/4, b 4/4, c 3/4, so balanced accuracy 11/12; the baseline is 4 of 12 (classes are even);
    # the base side's scores predate both and show a dash.
    assert "| balanced acc. before | after | majority baseline |" in markdown
    assert "| 0.500 | 0.500 | — | 0.917 | 0.333 |" in markdown
    assert data["models"]["toy"]["after"]["bal_acc"] == 0.9167
    assert "`train.learning_rate` | 0.001 | 0.01" in markdown
    # The calibration error and the unfamiliar-input shares, which the base side's scores predate.
    assert "| toy | — → 0.041 | — → 1.4 % | — → 0.6 % | — → 25.0 % |" in markdown
    assert "\n|---|---:|---:|---:|---:|\n| toy | — → 0.041" in markdown  # a column mark per column
    assert "![confusion before](pictures/toy-confusion-base.png)" in markdown
    assert (repo / "reports" / "pictures" / "toy-confusion-head.png").is_file()
    page = (repo / "reports" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page and "http" not in page
    assert "<td>— → 0.041</td><td>— → 1.4 %</td>" in page


def test_different_test_sets_are_compared_by_their_intervals_only(branch_with_a_changed_learning_rate):
    repo = branch_with_a_changed_learning_rate
    details = repo / "metrics" / "details" / "toy.json"
    details.write_text(json.dumps({"data_manifest_sha256": "cd" * 32}))  # the data changed
    proc = run_report(repo, "--base", "main")
    assert proc.returncode == 0, proc.stderr
    test = json.loads((repo / "reports" / "report.json").read_text())["models"]["toy"]["test"]
    assert test == {"paired": False, "why": "the test sets differ: compare the intervals only"}


def test_unknown_base_is_one_line(branch_with_a_changed_learning_rate):
    proc = run_report(branch_with_a_changed_learning_rate, "--base", "no-such-branch")
    assert proc.returncode == 1 and "unknown base ref 'no-such-branch'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_crossval_table_shows_mean_and_spread_of_each_score(branch_with_a_changed_learning_rate):
    from vapm.evaluation.crossval import metrics_document, summarize

    repo = branch_with_a_changed_learning_rate
    proc = run_report(repo, "--base", "main")
    assert proc.returncode == 0, proc.stderr
    assert "Cross-validation" not in (repo / "reports" / "report.md").read_text()  # neither side has any
    per_fold = [{"accuracy": a, "balanced_accuracy": b, "macro_f1": f, "unfamiliar_share": u, "ece_calibrated": e}
                for a, b, f, u, e in ((0.9, 0.88, 0.87, 0.0, 0.02), (1.0, 1.0, 1.0, 0.05, 0.01),
                                      (0.95, 0.94, 0.93, 0.025, 0.03))]
    (_mkdir(repo / "metrics" / "crossval") / "toy.json").write_text(
        json.dumps(metrics_document("toy", summarize(per_fold, n_items=60))))
    assert run_report(repo, "--base", "main").returncode == 0
    markdown = (repo / "reports" / "report.md").read_text()
    # mean ± sample sd: accuracy 0.95 ± 0.05, balanced (0.88, 1, 0.94) 0.94 ± 0.06, macro-F1 (0.87, 1, 0.93) 0.933 ± 0.065
    # flagged share: mean 2.5 %, worst fold 5 %; ECE after T: mean 0.02, worst 0.03
    assert ("| toy | — → 3 (60) | — → 95.0 % ± 5.0 | — → 90.0 % | — → 0.940 ± 0.060 | — → 0.933 ± 0.065 "
            "| — → 2.5 % (5.0 %) | — → 0.020 (0.030) |" in markdown), markdown
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "crossval")
    assert run_report(repo, "--base", "HEAD").returncode == 0  # the same on both sides: no arrows
    assert "| toy | 3 (60) | 95.0 % ± 5.0 | 90.0 % | 0.940 ± 0.060 | 0.933 ± 0.065 | 2.5 % (5.0 %) | 0.020 (0.030) |" \
        in (repo / "reports" / "report.md").read_text()
    assert "<td>95.0 % ± 5.0</td>" in (repo / "reports" / "report.html").read_text()
    data = json.loads((repo / "reports" / "report.json").read_text())
    assert data["models"]["toy"]["crossval"]["after"]["accuracy_per_fold"] == [0.9, 1.0, 0.95]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_html_report_renders_offline_in_headless_chromium(branch_with_a_changed_learning_rate, tmp_path):
    repo = branch_with_a_changed_learning_rate
    assert run_report(repo, "--base", "main").returncode == 0
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1600",
                    f"--screenshot={shot}", (repo / "reports" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and both confusion pictures, not a blank page
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile2'}",
                          "--virtual-time-budget=2000", "--dump-dom", (repo / "reports" / "report.html").as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 2 and "McNemar p = 0.0625" in dom
