"""The package's layers hold: nothing imports upward (import-linter's contracts in pyproject.toml), and a logged
MLflow model carries exactly the code serving imports."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

from vapm.serving.pyfunc import SERVED_CODE, copy_served_code

REPO_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_every_import_contract_is_kept():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The contracts bite: a lower layer that imports a higher one is reported, naming both."""
    shutil.copytree(REPO_ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    progress = tmp_path / "src" / "vapm" / "core" / "progress.py"
    progress.write_text(progress.read_text() + "\n\ndef _upward():\n    from vapm.training import run  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "vapm.core.progress -> vapm.training.run" in result.stdout


def test_the_served_model_carries_all_the_code_serving_imports_and_no_more():
    graph = grimp.build_graph("vapm")
    needed = graph.find_upstream_modules("vapm.serving", as_package=True) | graph.find_children("vapm.serving")
    served = tuple(part.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for part in SERVED_CODE)

    def carried(module: str) -> bool:
        relative = module.removeprefix("vapm.")
        return module == "vapm" or any(relative == part or relative.startswith(part + ".") for part in served)

    missing = sorted(m for m in needed if m.startswith("vapm") and not carried(m))
    assert not missing, f"serving imports {missing}, which pyfunc.SERVED_CODE leaves out of the logged model"
    for layer in ("training", "tracking", "bench", "cli", "evaluation"):
        assert not any(m.startswith(f"vapm.{layer}") for m in needed), f"serving imports vapm.{layer}"


def test_the_copied_code_runs_alone_without_benchmarks_or_training(tmp_path):
    code = copy_served_code(tmp_path)
    assert not (code / "bench").exists() and not (code / "training").exists() and not (code / "cli").exists()
    probe = ("import importlib, pkgutil, vapm, vapm.serving.pyfunc, vapm.serving.monitor\n"
             "assert vapm.__file__.startswith(%r), vapm.__file__\n"
             "for module in pkgutil.walk_packages(vapm.__path__, 'vapm.'):\n"
             "    importlib.import_module(module.name)\n"
             "try:\n    import vapm.bench\nexcept ModuleNotFoundError:\n    print('no benchmarks')\n") % str(code)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no benchmarks" in result.stdout
