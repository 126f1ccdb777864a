"""Stage ingest: the raw zip archives -> data/interim/{vision,acoustic}/ and metrics/ingest_report.json.

Archives are read in memory and never extracted; the formats are in docs/architecture.md, the limits and
what each hostile input gets in docs/reliability.md, and the knobs are params.yaml's `ingest`,
`vision.classes` and `audio`. The report is rewritten on every run: first, before any output is touched, with
"status": "running" for both datasets; at the end with "ok", or "failed" and the reason. So a run killed at any
point (even by SIGKILL) never leaves an earlier run's "ok" beside missing or partial data, and the next run first
removes what a killed run left half-written (`*.partial`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from vapm.core.errors import VapmError, one_line
from vapm.data.features.records import clip_record, write_record
from vapm.data.ingest.dataset import IngestError, audio_target, ingest_acoustic, ingest_settings, ingest_vision
from vapm.data.ingest.labels import check_class_names
from vapm.data.ingest.layout import Layout
from vapm.config.compute import arrow_on_system_allocator
from vapm.config.seeding import set_global_seed
from vapm.config.settings import load_settings

INTERIM = Path("data/interim")
REPORT = Path("metrics/ingest_report.json")
DATASETS = ("vision", "acoustic")
OUTPUTS = {"vision": ("manifest.parquet", "pixels.npy", "masks.npy"), "acoustic": ("manifest.parquet", "clips.npy", "record.json")}
# `dvc repro` removes a stage's outputs before it runs the command (and before it checks that the
# dependencies exist), so after a failure the previous outputs are gone from the workspace, not lost.
RECOVERY = ("dvc removed the earlier ingest outputs before this run; fix the cause and run dvc repro again, "
            "or restore the last committed ones: dvc checkout ingest && git checkout -- metrics/ingest_report.json")


def write_report(reports: dict[str, Any]) -> None:
    """Write the report atomically, so an interrupted write never leaves half a file."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    partial = REPORT.with_name(REPORT.name + ".partial")
    partial.write_text(json.dumps(reports, sort_keys=True, indent=2) + "\n")
    partial.replace(REPORT)


def running() -> dict[str, Any]:
    return {name: {"status": "running"} for name in DATASETS}


def remove_partial_files() -> list[Path]:
    """What a run killed mid-write left behind (outputs are written as `*.partial`, then renamed)."""
    leftovers = sorted(INTERIM.glob("*/*.partial")) + sorted(REPORT.parent.glob(REPORT.name + ".partial"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def failed(reports: dict[str, Any], error: str) -> dict[str, Any]:
    """The report with every dataset that has none yet marked failed with `error`."""
    return {name: reports.get(name) or {"status": "failed", "error": error} for name in DATASETS}


def summary(name: str, report: dict[str, Any], seconds: float) -> str:
    kept = report["kept"]
    masks = report["decoded"].get("masks")
    paired = f", {masks['paired']} with a defect mask" if masks else ""
    return (f"{name}: {kept['total']} files kept ({kept['train']} train, {kept['test']} test, split from "
            f"{report['split_source']}) of {report['members_seen']} members, {len(report['classes'])} classes"
            f"{paired}; {report['duplicates_count']} "
            f"duplicate(s), {report['bad_count']} bad file(s) skipped, {report['ignored_count']} ignored; "
            f"{seconds:.1f} s")


def remove_outputs() -> None:
    """A run that fails before a dataset starts must not leave an earlier run's outputs looking current."""
    for name, files in OUTPUTS.items():
        for file in files:
            (INTERIM / name / file).unlink(missing_ok=True)


def dataset_jobs(settings: Any) -> dict[str, Callable[[], dict[str, Any]]]:
    """The two datasets' work, from params validated before any work starts (vapm.config.settings)."""
    ingest = ingest_settings(settings)
    if ingest.scheduler:
        print(f"ingest: hashing and decoding on the Dask cluster {ingest.scheduler}", flush=True)
    for modality, key in (("vision", "vision.classes"), ("audio", "audio.classes")):
        if settings.classes(modality) is not None:
            check_class_names(settings.classes(modality), key)
    set_global_seed(ingest.seed, tensorflow=False)
    target = audio_target(settings)
    vision_layout = Layout(settings.classes("vision"), settings.ingest.vision_pattern,
                           settings.ingest.vision_mask_pattern, key="vision")
    audio_layout = Layout(settings.classes("audio"), settings.ingest.audio_pattern, key="audio")

    def acoustic() -> dict[str, Any]:
        report = ingest_acoustic(settings.ingest.acoustic_archive, audio_layout, INTERIM / "acoustic",
                                 ingest, target)
        # What the clips are, for models that read them (and predict, which prepares new files alike).
        write_record(INTERIM / "acoustic", clip_record(settings))
        return report

    return {
        "vision": lambda: ingest_vision(settings.ingest.vision_archive, vision_layout, INTERIM / "vision", ingest),
        "acoustic": acoustic,
    }


def ingest_all(reports: dict[str, Any]) -> list[str]:
    """Run both datasets, filling `reports`; the one-line errors of those that failed."""
    jobs = dataset_jobs(load_settings(models=()))
    arrow_on_system_allocator()  # this process and its decoding processes (vapm.config.compute)
    errors: list[str] = []
    for name, job in jobs.items():
        started = time.perf_counter()
        try:
            reports[name] = job()
            print(summary(name, reports[name], time.perf_counter() - started))
        except IngestError as err:
            reports[name] = err.report
            errors.append(str(err))
        except (VapmError, OSError) as err:
            reports[name] = {"status": "failed", "error": one_line(str(err))}
            errors.append(f"{name}: {one_line(str(err))}")
    return errors


def main() -> int:
    reports: dict[str, Any] = {}
    details = [f"(details in {REPORT})"]
    write_report(running())
    for leftover in remove_partial_files():
        print(f"ingest: removed {leftover}, left half-written by an interrupted run", file=sys.stderr)
    try:
        errors = ingest_all(reports)
    except VapmError as err:  # params or registry: nothing was read yet
        remove_outputs()
        errors, details = [one_line(str(err))], []
    except KeyboardInterrupt:
        write_report(failed(reports, "interrupted"))
        print(f"ingest: interrupted; {REPORT} says which datasets did not finish", file=sys.stderr)
        return 130
    except MemoryError:
        write_report(failed(reports, "out of memory"))
        print("ingest: out of memory; lower ingest.max_member_mb, ingest.max_image_pixels or "
              "ingest.max_source_samples (docs/reliability.md gives the bound they set)", file=sys.stderr)
        return 1
    except BaseException as err:  # a bug: say so in the report, and keep the traceback for the fix
        write_report(failed(reports, f"internal error: {type(err).__name__}: {err}"))
        raise
    write_report(failed(reports, errors[0] if errors else "not run"))
    if not errors:
        return 0
    lines = [f"ingest: {error}" for error in errors] + details
    if os.environ.get("DVC_STAGE"):
        lines.append(f"ingest: {RECOVERY}")
    print("\n".join(lines), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
