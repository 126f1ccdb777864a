"""Stage anomaly_data: one image archive -> data/interim/vision_anomaly/, data/features/anomaly_image/ and
metrics/anomaly_data_report.json: the anomaly detectors' images, with their defect masks where the archive has them.

The archive (`anomaly_data.archive`: sample_data's NEU-anomaly.zip, a normal class beside the defect classes with every
defect image's mask; or a real one, such as NEU's, without masks) is read by ingest's code with the `ingest` limits
and `anomaly_data`'s classes and patterns, then made square at `anomaly_data.image_size` by featurize's code
(`masks` and `has_mask` in features.npz when masks were paired). The formats are ingest's and featurize's
(docs/architecture.md). Whole or nothing: the report says "running" before any output is touched, both folders are
written beside their places (`*.partial`) and moved in at the end, then the report says "ok"; a run that fails, or
is killed, leaves neither folder and a report saying why (a killed one: "running"). The classifiers' ingest and
featurize stages, and so their data, are untouched by this one.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vapm.config import paths
from vapm.core.errors import VapmError, one_line, run_stage
from vapm.data.ingest.layout import Layout

DATASET = "vision_anomaly"  # the report's key, as ingest's report names its datasets
OUTPUTS = (paths.VISION_ANOMALY_INTERIM, paths.ANOMALY_IMAGE_FEATURES)


@dataclass(frozen=True)
class AnomalyLayout(Layout):
    """ingest's layout rules, whose messages name this stage's params."""

    @property
    def pattern_key(self) -> str:
        return "anomaly_data.pattern"

    @property
    def classes_key(self) -> str:
        return "anomaly_data.classes"


def staging(folder: Path) -> Path:
    return folder.with_name(folder.name + ".partial")


def write_report(report: dict[str, Any]) -> None:
    """The report, written atomically: never half a file."""
    path = paths.ANOMALY_DATA_REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({DATASET: report}, sort_keys=True, indent=2) + "\n")
    partial.replace(path)


def remove_outputs() -> None:
    """The outputs and what a killed run left half-written: no earlier run's data may look current."""
    for folder in OUTPUTS:
        for path in (folder, staging(folder)):
            shutil.rmtree(path, ignore_errors=True)


def build() -> dict[str, Any]:
    """Ingest the archive and featurize it into the staging folders, then move both in; the report."""
    from vapm.config.seeding import set_global_seed
    from vapm.config.settings import AUTO, load_settings
    from vapm.data.features.build import featurize_vision
    from vapm.data.features.records import ImageRecord
    from vapm.data.ingest.dataset import ingest_settings, ingest_vision
    from vapm.data.ingest.labels import check_class_names

    settings = load_settings(models=())
    section = settings.anomaly_data
    classes = None if section.classes == AUTO else list(section.classes)
    if classes is not None:
        check_class_names(classes, "anomaly_data.classes")
    ingest = ingest_settings(settings)
    set_global_seed(ingest.seed, tensorflow=False)
    interim, features = (staging(folder) for folder in OUTPUTS)

    started = time.perf_counter()
    report = ingest_vision(section.archive, AnomalyLayout(classes, section.pattern, section.mask_pattern), interim,
                           ingest)
    kept, masks = report["kept"], report["decoded"].get("masks", {}).get("paired", 0)
    print(f"{DATASET}: {kept['total']} images kept ({kept['train']} train, {kept['test']} test, split from "
          f"{report['split_source']}) of {report['members_seen']} members, {len(report['classes'])} classes "
          f"({', '.join(report['classes'])}), {masks} with a defect mask; {report['duplicates_count']} duplicate(s), "
          f"{report['bad_count']} bad file(s) skipped, {report['ignored_count']} ignored; "
          f"{time.perf_counter() - started:.1f} s", flush=True)

    started = time.perf_counter()
    record = ImageRecord(image_size=section.image_size, resize=section.resize)
    n_images = featurize_vision(interim, features, record, false_flag_rate=settings.ood.rule_rate("vision"))
    report["features"] = {"folder": str(OUTPUTS[1]), "images": n_images, "image_size": section.image_size,
                          "resize": section.resize, "with_mask": masks}
    print(f"wrote {OUTPUTS[1]}: {n_images} images of {section.image_size}x{section.image_size} ({section.resize}), "
          f"{masks} with a mask, in {time.perf_counter() - started:.1f} s", flush=True)
    for folder in OUTPUTS:
        staging(folder).rename(folder)
    return report


def failure(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    if isinstance(err, MemoryError):
        return "out of memory"
    if isinstance(err, VapmError):
        return one_line(str(err))
    return f"internal error: {type(err).__name__}: {err}"


def main() -> None:
    from vapm.data.ingest.dataset import IngestError

    write_report({"status": "running"})
    remove_outputs()
    try:
        report = build()
    except BaseException as err:
        remove_outputs()
        write_report(err.report if isinstance(err, IngestError) else {"status": "failed", "error": failure(err)})
        raise
    write_report(report)


if __name__ == "__main__":
    with run_stage("anomaly_data"):
        main()
