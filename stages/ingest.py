"""Stage ingest: the raw zip archives -> data/interim/{vision,acoustic}/ and metrics/ingest_report.json.

Archives are read in memory and never extracted; the formats are in docs/architecture.md and the knobs
are params.yaml's `ingest`, `vision.classes` and `audio`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from vapm.config import ConfigError, load_params, section
from vapm.ingest import (IngestError, audio_target_from_params, classes_from_params, ingest_acoustic,
                         ingest_vision, settings_from_params)
from vapm.seeding import set_global_seed

INTERIM = Path("data/interim")
REPORT = Path("metrics/ingest_report.json")


def write_report(reports: dict[str, Any]) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(reports, sort_keys=True, indent=2) + "\n")


def summary(name: str, report: dict[str, Any], seconds: float) -> str:
    kept = report["kept"]
    return (f"{name}: {kept['total']} files kept ({kept['train']} train, {kept['test']} test, split from "
            f"{report['split_source']}) of {report['members_seen']} members; {len(report['duplicates'])} duplicate(s), "
            f"{len(report['bad'])} bad file(s) skipped, {len(report['ignored'])} ignored; {seconds:.1f} s")


def main() -> None:
    try:
        params = load_params()
        set_global_seed(section(params, "seed"), tensorflow=False)
        settings = settings_from_params(params, n_jobs=int(section(params, "ingest.n_jobs")))
        jobs = {
            "vision": lambda: ingest_vision(section(params, "ingest.vision_archive"),
                                            classes_from_params(params, "vision.classes"),
                                            INTERIM / "vision", settings),
            "acoustic": lambda: ingest_acoustic(section(params, "ingest.acoustic_archive"),
                                                classes_from_params(params, "audio.classes"),
                                                INTERIM / "acoustic", settings, audio_target_from_params(params)),
        }
    except ConfigError as err:
        print(f"ingest: {err}", file=sys.stderr)
        sys.exit(1)

    reports: dict[str, Any] = {}
    errors: list[str] = []
    for name, job in jobs.items():
        started = time.perf_counter()
        try:
            reports[name] = job()
            print(summary(name, reports[name], time.perf_counter() - started))
        except IngestError as err:
            reports[name] = err.report
            errors.append(str(err))
        except (ConfigError, OSError) as err:
            reports[name] = {"status": "failed", "error": str(err)}
            errors.append(f"{name}: {err}")
    write_report(reports)
    if errors:
        print("\n".join(f"ingest: {error}" for error in errors) + f"\n(details in {REPORT})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
