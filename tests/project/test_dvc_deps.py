"""dvc.yaml lists exactly the library code each stage imports, so editing code reruns exactly its stages.

The import closure is computed statically (every `import vapm...` in a module, also inside functions),
starting from the stage script and, for train@<model>, from the model's trainer named in models.yaml.
A code dependency that is a folder must be imported whole, or dvc.yaml would rerun stages for code they
do not use.
"""
from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from vapm.config.model_registry import load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC = REPO_ROOT / "src"


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def parents_of(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_modules(path: Path) -> set[str]:
    """vapm modules a file imports anywhere in it (importing a.b.c runs a, a.b and a.b.c)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] == "vapm":
                found.update(part for part in parents_of(name) if module_file(part))
    return found


@lru_cache(maxsize=None)
def closure_of(path: Path) -> frozenset[Path]:
    """Every vapm source file that running `path` can import."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [module_file(name) for name in imported_modules(current)]
    return frozenset(p for p in seen if SRC in p.parents)


def trainer_entry_file(trainer: str) -> Path:
    path = REPO_ROOT / trainer
    return path if path.suffix == ".py" else path / "__init__.py"


def expand(stage: dict, item: dict, key: str) -> list[str]:
    deps = []
    for dep in stage.get("deps", []):
        for field, value in item.items():
            dep = dep.replace(f"${{item.{field}}}", str(value))
        deps.append(dep.replace("${key}", key))
    return deps


def stage_instances() -> dict[str, list[tuple[list[str], set[Path]]]]:
    """stage -> [(code deps, import closure)], one pair per foreach item (one for a plain stage)."""
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    registry = load_registry(REPO_ROOT / "models.yaml")
    instances = {}
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            assert stage["foreach"] == "${models}", f"{name}: only the registry drives foreach stages"
            body = stage["do"]
            pairs = []
            for key, entry in registry.items():
                script = REPO_ROOT / body["cmd"].split()[1]
                closure = set(closure_of(script)) | set(closure_of(trainer_entry_file(entry.trainer))) | {script}
                pairs.append((expand(body, entry.__dict__, key), closure))
            instances[name] = pairs
        else:
            script = REPO_ROOT / stage["cmd"].split()[1]
            instances[name] = [(stage.get("deps", []), set(closure_of(script)) | {script})]
    return instances


def code_deps(deps: list[str]) -> list[str]:
    return [dep for dep in deps if dep.startswith(("src/", "stages/"))]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO_ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(stage_instances()))
def test_stage_depends_on_all_the_code_it_imports(stage):
    for deps, closure in stage_instances()[stage]:
        missing = sorted(str(p.relative_to(REPO_ROOT)) for p in closure if not covered(p, code_deps(deps)))
        assert not missing, f"{stage} imports {missing} but dvc.yaml does not list them as deps"


@pytest.mark.parametrize("stage", sorted(stage_instances()))
def test_stage_depends_on_no_code_it_does_not_import(stage):
    instances = stage_instances()[stage]
    used = set().union(*(closure for _, closure in instances))
    for deps, _ in instances:
        for dep in code_deps(deps):
            path = REPO_ROOT / dep
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            unused = [str(f.relative_to(REPO_ROOT)) for f in files if f not in used and f.name != "__main__.py"]
            assert not unused, f"{stage} depends on {dep}, but never imports {unused}: list files, not the folder"


def test_every_stage_script_is_a_stage():
    listed = {stage.get("cmd", stage.get("do", {}).get("cmd", "")).split()[1]
              for stage in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"].values()}
    assert {f"stages/{p.name}" for p in (REPO_ROOT / "stages").glob("*.py")} == listed


def modified_deps(status: dict) -> list[str]:
    """`stage: path` for every code file, param or output kept in git (metrics, plots) that `dvc status --json`
    finds changed since dvc.lock was written (data that is absent in a fresh clone reads 'deleted' or 'not in
    cache', and is no concern here)."""
    found = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            for dep, state in {**change.get("changed deps", {}), **change.get("changed outs", {})}.items():
                states = {f"{dep}:{key}": s for key, s in state.items()} if isinstance(state, dict) else {dep: state}
                found += [f"{stage}: {name}" for name, s in states.items()  # params: key -> state
                          if s not in ("deleted", "not in cache")]
    return found


def test_dvc_lock_records_the_code_and_params_of_this_commit():
    """Code, params or metrics committed without the pipeline rerun leave dvc.lock stale: a fresh clone's `dvc repro` would
    rerun those stages, and a worker cluster's featurize would not match dvc.lock."""
    from tests.helpers import run

    status = json.loads(run(["dvc", "status", "--json"], REPO_ROOT).stdout)
    stale = modified_deps(status)
    assert not stale, f"dvc.lock predates {stale}: run `dvc repro` (make repro) and commit dvc.lock"
