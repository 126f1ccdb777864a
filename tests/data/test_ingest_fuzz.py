"""The ingest fuzz suite: hostile and broken archives through the real stage (`stages/ingest.py` main()),
in a worker subprocess whose peak memory is measured with os.wait4.

Every run must: exit 1 with a line naming the file (on_bad_file: fail) or report it skipped (skip), or
exit 1 naming the archive's fault when the whole archive is refused; stay under the memory bound of
docs/reliability.md; leave the archive untouched and no partial files; write a report that agrees with
the exit code and the outputs, byte-identical when run again; print no raw control characters.
The catalogue (tests/hostile_archives.py) is the table in docs/reliability.md; seeded random mutations
add more. `pytest -m soak` runs many more seeds.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests import hostile_archives as hostile
from vapm.data.ingest.archive import display_name
from vapm.data.ingest.limits import IngestLimits
from vapm.data.ingest.limits import BOUND_BYTES_PER_MEMBER, member_work_bound

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = REPO_ROOT / "tests" / "data" / "ingest_fuzz_worker.py"
LIMITS = IngestLimits(max_member_bytes=hostile.MAX_MEMBER_BYTES, max_image_pixels=hostile.MAX_IMAGE_PIXELS,
                      max_source_samples=hostile.MAX_SOURCE_SAMPLES)
RANDOM_SEEDS_DEFAULT = range(24)
RANDOM_SEEDS_SOAK = range(24, 1524)
_RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def params_for(vision_archive: Path, acoustic_archive: Path, policy: str, shipped_limits: bool = False
               ) -> dict[str, Any]:
    """The repository's params with two classes each and the suite's limits and clip length (or, with
    `shipped_limits`, params.yaml's own)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["vision"]["classes"] = hostile.VISION_CLASSES
    params["audio"]["classes"] = hostile.AUDIO_CLASSES
    params["ingest"].update({"vision_archive": str(vision_archive), "acoustic_archive": str(acoustic_archive),
                             "on_bad_file": policy, "test_fraction": 0.5, "n_jobs": 1})
    if not shipped_limits:
        params["audio"]["clip_seconds"] = hostile.CLIP_SECONDS
        params["ingest"].update({
            "max_uncompressed_mb": hostile.MAX_UNCOMPRESSED_MB, "max_member_mb": hostile.MAX_MEMBER_MB,
            "max_image_pixels": hostile.MAX_IMAGE_PIXELS, "max_source_samples": hostile.MAX_SOURCE_SAMPLES})
    return params


def run_worker(runs: list[dict[str, Any]], folder: Path) -> tuple[list[dict[str, Any]], int]:
    """Results of every run, and the worker's peak RSS in bytes (it and its children, as the kernel counts)."""
    spec, out = folder / "spec.json", folder / "results.json"
    spec.write_text(json.dumps(runs))
    env = {**os.environ, "VAPM_NO_PROGRESS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    with (folder / "worker.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, str(WORKER), str(spec), str(out)], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, (folder / "worker.log").read_text()[-4000:]
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return json.loads(out.read_text()), usage.ru_maxrss * scale


@pytest.fixture(scope="module")
def benign_archives(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("benign")
    archives = {}
    for dataset in ("vision", "acoustic"):
        archives[dataset] = folder / f"{dataset}.zip"
        hostile.write_zip(archives[dataset], hostile.good_members(dataset))
    return archives


def runs_for(cases: list[hostile.Case], folder: Path, benign: dict[str, Path],
             policies: tuple[str, ...] = ("fail", "skip"), shipped_limits: bool = False) -> list[dict[str, Any]]:
    """Each case under each policy; the `fail` run twice in the same folder, to compare the reports."""
    (folder / "archives").mkdir(exist_ok=True)
    runs = []
    for case in cases:
        archive = hostile.write_case(case, folder / "archives")
        archives = {**benign, case.dataset: archive}
        for policy in policies:
            params = params_for(archives["vision"], archives["acoustic"], policy, shipped_limits)
            workdir = folder / "runs" / case.name / policy
            repeats = 2 if policy == "fail" else 1
            runs += [{"case": case.name, "policy": policy, "workdir": str(workdir), "params": params}] * repeats
    return runs


def baseline_peak(benign: dict[str, Path], folder: Path, shipped_limits: bool = False) -> int:
    """Peak RSS of the same worker ingesting only well-formed archives: imports, pandas, sklearn, pyarrow."""
    params = params_for(benign["vision"], benign["acoustic"], "fail", shipped_limits)
    runs = [{"case": "benign", "policy": "fail", "workdir": str(folder / "runs" / "benign"), "params": params}]
    results, peak = run_worker(runs, folder)
    assert results[0]["code"] == 0, results[0]["stderr"]
    return peak


def memory_bound(baseline: int, members: int, limits: IngestLimits = LIMITS,
                 clip_samples: int = hostile.CLIP_SAMPLES) -> int:
    return baseline + member_work_bound(limits, clip_samples) + BOUND_BYTES_PER_MEMBER * members


# ---- checking one run ----

def invariant_problems(case: hostile.Case, result: dict[str, Any]) -> list[str]:
    """What is wrong with any run, whatever the case."""
    problems = []
    code, stderr = result["code"], result["stderr"]
    if code not in (0, 1) or "Traceback" in stderr:
        return [f"exit {code!r}, stderr: {stderr[-2000:]}"]
    if not result["archives_unchanged"]:
        problems.append("an archive changed")
    if any(".partial" in file for file in result["files"]):
        problems.append(f"partial files left: {result['files']}")
    if _RAW_CONTROL.search(stderr) or _RAW_CONTROL.search(result["stdout"]):
        problems.append(f"raw control characters printed: {stderr!r}")
    if result["warnings"]:
        problems.append(f"warnings: {result['warnings']}")
    if result["report"] is None:
        return problems + ["no report written"]
    report = json.loads(result["report"])
    if result["report"] != json.dumps(report, sort_keys=True, indent=2) + "\n":
        problems.append("report is not sorted, indented JSON")
    other = "acoustic" if case.dataset == "vision" else "vision"
    if report[other]["status"] != "ok":
        problems.append(f"the well-formed {other} dataset failed: {report[other]}")
    entry = report[case.dataset]
    if (entry["status"] == "ok") != (code == 0):
        problems.append(f"exit {code} but report status {entry['status']}")
    interim = Path(result["workdir"]) / "data" / "interim" / case.dataset
    data_file = "pixels.npy" if case.dataset == "vision" else "clips.npy"
    if code == 1:
        if not stderr.startswith("ingest: "):
            problems.append(f"stderr does not start with 'ingest: ': {stderr[:300]!r}")
        if (interim / "manifest.parquet").exists() or (interim / data_file).exists():
            problems.append("a failed dataset left outputs")
        if entry.get("bad") and "bad file(s)" in entry.get("error", ""):
            for bad in sorted(entry["bad"], key=lambda bad: (bad["file"], bad["reason"]))[:20]:
                if f"\n  {bad['file']}: {bad['reason']}\n" not in stderr:
                    problems.append(f"bad file {bad['file']!r} not named in stderr")
    else:
        problems += _output_problems(entry, interim, data_file, case.dataset)
    return problems


def _output_problems(entry: dict[str, Any], interim: Path, data_file: str, dataset: str) -> list[str]:
    manifest = pd.read_parquet(interim / "manifest.parquet")
    data = np.load(interim / data_file)
    problems = []
    if len(manifest) != entry["kept"]["total"]:
        problems.append(f"manifest has {len(manifest)} rows, report says {entry['kept']['total']}")
    if dataset == "vision" and data.size != int((manifest.height * manifest.width).sum()):
        problems.append("pixels.npy does not hold the manifest's images")
    if dataset == "acoustic" and (data.ndim != 2 or data.shape[0] != len(manifest)):
        problems.append(f"clips.npy has shape {data.shape}")
    if data.dtype == np.float32 and not np.all(np.isfinite(data)):
        problems.append("clips.npy holds non-finite values")
    reported = {bad["file"] for bad in entry["bad"]} | {dup["file"] for dup in entry["duplicates"]}
    if reported & {display_name(file) for file in manifest.file}:
        problems.append("a bad or duplicate file was kept")
    return problems


def expectation_problems(case: hostile.Case, policy: str, result: dict[str, Any]) -> list[str]:
    """What is wrong with the run against what the catalogue says the case must get."""
    if case.expect == "any" or result["report"] is None or result["code"] not in (0, 1):
        return []
    entry = json.loads(result["report"])[case.dataset]
    code, stderr = result["code"], result["stderr"]
    if case.expect == "refused":
        first_line = stderr.splitlines()[0] if stderr else ""
        if code != 1 or not re.search(case.reason, first_line) or not re.search(case.reason, entry.get("error", "")):
            return [f"expected the archive refused ({case.reason}), got exit {code}: {stderr[:400]!r}"]
        return []
    if case.expect == "ok":
        return [] if code == 0 and not entry["bad"] else [f"expected ok, got exit {code}, bad {entry.get('bad')}"]
    shown = display_name(case.file)
    if case.expect == "duplicate":
        wanted = {"file": shown, "duplicate_of": display_name(case.reason)}
        return [] if code == 0 and wanted in entry["duplicates"] else [f"expected duplicate {wanted}: {entry}"]
    reasons = [bad["reason"] for bad in entry.get("bad", []) if bad["file"] == shown]
    problems = []
    if len(reasons) != 1 or not re.search(case.reason, reasons[0]):
        problems.append(f"expected {shown!r} bad for {case.reason!r}, report has {reasons} ({entry.get('bad')})")
    if policy == "fail":
        lines = [line for line in stderr.splitlines() if line.startswith(f"  {shown}: ")]
        if code != 1 or len(lines) != 1 or not re.search(case.reason, lines[0]):
            problems.append(f"expected exit 1 and one line naming {shown!r}, got exit {code}: {stderr[:600]!r}")
    elif code != 0:
        problems.append(f"expected a reported skip, got exit {code}: {stderr[:600]!r}")
    return problems


def check_batch(cases: list[hostile.Case], runs: list[dict[str, Any]], results: list[dict[str, Any]]) -> list[str]:
    by_name = {case.name: case for case in cases}
    problems, first_report = [], {}
    for run, result in zip(runs, results, strict=True):
        case, policy = by_name[run["case"]], run["policy"]
        found = invariant_problems(case, result) + expectation_problems(case, policy, result)
        key = (case.name, policy)
        if key in first_report and result["report"] != first_report[key]:
            found.append("the report differs between two runs on the same archive")
        first_report.setdefault(key, result["report"])
        problems += [f"{case.name} [{policy}]: {problem}" for problem in found]
    return problems


# ---- the tests ----

@pytest.fixture(scope="module")
def catalogue_batch(tmp_path_factory, benign_archives):
    folder = tmp_path_factory.mktemp("catalogue")
    cases = hostile.catalogue()
    runs = runs_for(cases, folder, benign_archives)
    results, peak = run_worker(runs, folder)
    return cases, runs, results, peak


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, benign_archives) -> int:
    return baseline_peak(benign_archives, tmp_path_factory.mktemp("baseline"))


def test_every_catalogued_case_gets_what_the_table_says(catalogue_batch):
    cases, runs, results, _ = catalogue_batch
    problems = check_batch(cases, runs, results)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])


def test_peak_memory_of_the_catalogue_stays_under_the_bound(catalogue_batch, baseline):
    cases, _, _, peak = catalogue_batch
    members = max(len(case.members) for case in cases) + 8  # built archives have at most a few more
    bound = memory_bound(baseline, members)
    print(f"\nbaseline {baseline / 2**20:.0f} MiB, catalogue peak {peak / 2**20:.0f} MiB, "
          f"bound {bound / 2**20:.0f} MiB")
    assert peak <= bound


def test_the_catalogue_covers_every_limit_and_format():
    cases = hostile.catalogue()
    reasons = " ".join(case.reason for case in cases)
    for key in ("max_member_mb", "max_image_pixels", "max_source_samples", "32.0 MiB"):
        assert key in reasons.replace("\\", "")
    names = {case.name for case in cases}
    for prefix in ("zip_slip", "symlink", "header_", "jpeg_", "png_", "bmp_", "wav_", "flac_", "dat_", "name_",
                   "duplicate_names"):
        assert any(name.startswith(prefix) for name in names), prefix
    assert {case.expect for case in cases} == {"bad", "refused", "ok", "duplicate"}


def random_batch(seeds: range, folder: Path, benign: dict[str, Path]) -> tuple[list[str], int, int]:
    cases = [hostile.random_case(seed) for seed in seeds]
    runs = runs_for(cases, folder, benign)
    results, peak = run_worker(runs, folder)
    members = max(len(case.members) for case in cases)
    return check_batch(cases, runs, results), peak, members


def test_seeded_random_mutations_keep_every_invariant(tmp_path, benign_archives, baseline):
    problems, peak, members = random_batch(RANDOM_SEEDS_DEFAULT, tmp_path, benign_archives)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert peak <= memory_bound(baseline, members)


@pytest.mark.soak
def test_soak_many_seeded_random_mutations(tmp_path, benign_archives, baseline):
    problems, peak, members = random_batch(RANDOM_SEEDS_SOAK, tmp_path, benign_archives)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert peak <= memory_bound(baseline, members)


@pytest.mark.soak
def test_soak_worst_cases_at_the_shipped_limits_stay_under_the_stated_bound(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    limits = IngestLimits(max_member_bytes=int(params["ingest"]["max_member_mb"] * 2**20),
                          max_image_pixels=params["ingest"]["max_image_pixels"],
                          max_source_samples=params["ingest"]["max_source_samples"])
    clip_samples = round(hostile.TARGET_RATE * params["audio"]["clip_seconds"])
    benign = {"vision": tmp_path / "vision.zip", "acoustic": tmp_path / "acoustic.zip"}
    hostile.write_zip(benign["vision"], hostile.good_members("vision"))
    hostile.write_zip(benign["acoustic"], hostile.good_members("acoustic", clip_samples))
    (tmp_path / "base").mkdir()
    base = baseline_peak(benign, tmp_path / "base", shipped_limits=True)
    cases = hostile.worst_cases_at(limits.max_image_pixels, limits.max_source_samples, limits.max_member_bytes,
                                   params["audio"]["clip_seconds"])
    runs = runs_for(cases, tmp_path, benign, policies=("skip",), shipped_limits=True)

    results, peak = run_worker(runs, tmp_path)

    problems = check_batch(cases, runs, results)
    assert not problems, "\n".join(problems)
    bound = memory_bound(base, 16, limits, clip_samples)
    print(f"\nshipped limits: baseline {base / 2**20:.0f} MiB, worst-case peak {peak / 2**20:.0f} MiB, "
          f"bound {bound / 2**20:.0f} MiB; per case CPU s: {[result['cpu_seconds'] for result in results]}")
    assert peak <= bound


def test_docs_reliability_table_lists_every_catalogued_case():
    text = (REPO_ROOT / "docs" / "reliability.md").read_text().split("## Cases tried")[1]
    listed = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))
    assert listed == {case.name for case in hostile.catalogue()}
