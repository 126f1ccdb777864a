"""The CI retraining workflow is valid GitHub Actions and calls the make targets a person runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "retrain.yml"


def test_workflow_validates_against_the_github_workflow_schema():
    checker = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path):
    broken = yaml.safe_load(WORKFLOW.read_text())
    broken["jobs"]["retrain"]["steps"][0]["uses"] = 42  # not a string
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    checker = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1


def test_workflow_runs_the_same_make_targets_as_a_person():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["retrain"]["steps"]
    commands = " ".join(step.get("run", "") for step in steps)
    targets = re.findall(r"\bmake (\w+)", commands)
    assert targets == ["setup", "repro", "report"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in targets:
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    uploaded = [step["with"]["path"] for step in steps if "upload-artifact" in step.get("uses", "")]
    assert any("reports/" in path for path in uploaded) and any("models/" in path for path in uploaded)
    assert any("gh pr comment" in step.get("run", "") and "reports/report.md" in step.get("run", "") for step in steps)
