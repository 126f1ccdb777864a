"""Prints the markdown table of docs/reliability.md: every catalogued hostile archive, run through the stage
under both policies, with the outcome and the reason exactly as reported.

    .venv/bin/python tests/data/reliability_table.py > /tmp/table.md
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests import hostile_archives as hostile  # noqa: E402
from tests.data.test_ingest_fuzz import check_batch, run_worker, runs_for  # noqa: E402
from vapm.data.ingest.archive import display_name

OUTCOME = {
    "bad": ("exit 1, file named", "skipped, reported"),
    "refused": ("exit 1, archive refused", "exit 1, archive refused"),
    "ok": ("accepted", "accepted"),
    "duplicate": ("duplicate reported, first copy kept", "duplicate reported, first copy kept"),
}


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="reliability-"))
    benign = {dataset: folder / f"{dataset}.zip" for dataset in ("vision", "acoustic")}
    for dataset, path in benign.items():
        hostile.write_zip(path, hostile.good_members(dataset))
    cases = hostile.catalogue()
    runs = runs_for(cases, folder, benign)
    results, peak = run_worker(runs, folder)
    problems = check_batch(cases, runs, results)
    if problems:
        sys.exit("\n".join(problems))
    fail_reports = {run["case"]: json.loads(result["report"]) for run, result in zip(runs, results, strict=True)
                    if run["policy"] == "fail"}
    print("| case | input | `on_bad_file: fail` | `skip` | reason, as reported |")
    print("|---|---|---|---|---|")
    for case in cases:
        entry = fail_reports[case.name][case.dataset]
        if case.expect == "bad":
            reason = next(bad["reason"] for bad in entry["bad"] if bad["file"] == display_name(case.file))
            if case.name.startswith("name_"):
                reason = f"shown as `{display_name(case.file)}`: {reason}"
        elif case.expect == "refused":
            reason = entry["error"].replace(str(folder / "archives" / case.archive_name()), "<archive>")
        elif case.expect == "duplicate":
            reason = f"duplicate of {display_name(case.reason)}"
        else:
            reason = "-"
        fail, skip = OUTCOME[case.expect]
        print(f"| `{case.name}` | {cell(case.what)} | {fail} | {skip} | {cell(reason)} |")
    print(f"\n(catalogue peak RSS {peak / 2**20:.0f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
