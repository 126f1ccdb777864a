"""Stage sample_data: write small synthetic NEU and air-compressor archives to sample_data.out_dir, and an anomaly
archive (a defect-free class beside the NEU-like classes, with every defect image's mask) for anomaly detectors.

They have the layouts of the real archives, so ingest and everything after it run unchanged on them.
Any class names work (vision.classes, audio.classes): the book's keep their hand-made look, others get
one derived from a hash of the name. The only refusals are names that cannot be a class folder, the same
name twice in any case, or names ingest would read back as another class or split.
"""
from __future__ import annotations

import time
from pathlib import Path

from vapm.core.errors import run_stage

VISION_ARCHIVE = "NEU-data-TrainTest.zip"
ACOUSTIC_ARCHIVE = "AirCompressor_Data.zip"
ANOMALY_ARCHIVE = "NEU-anomaly.zip"  # a defect-free class and the defect images' masks (vapm.data.synth.vision)


def main() -> None:
    from vapm.config.seeding import set_global_seed
    from vapm.config.settings import load_settings
    from vapm.data.synth import build_acoustic_archive, build_vision_archive
    from vapm.data.synth.acoustic import FAULT_SIGNATURES
    from vapm.data.synth.acoustic import check_classes as check_audio_classes
    from vapm.data.synth.vision import (DEFECT_RENDERERS, anomaly_defect_classes, build_anomaly_archive,
                                        check_anomaly_archive)
    from vapm.data.synth.vision import check_classes as check_vision_classes

    settings = load_settings(models=())
    sample = settings.sample_data
    # classes: auto has no list to draw: the stand-ins then have the book's classes (ingest finds them).
    vision_classes = settings.classes("vision") or list(DEFECT_RENDERERS)
    audio_classes = settings.classes("audio") or list(FAULT_SIGNATURES)
    # Every setting is checked before anything is written, so a bad one leaves no half-made output:
    # class names that cannot be folders, repeat in another case, or that ingest would read back wrongly.
    check_vision_classes(vision_classes)
    defect_classes = anomaly_defect_classes(vision_classes, sample.anomaly_normal_class)
    check_anomaly_archive(defect_classes, sample.anomaly_normal_class, sample.train_per_class, sample.test_per_class,
                          sample.anomaly_defect_train)
    check_audio_classes(audio_classes)
    set_global_seed(settings.seed, tensorflow=False)
    out_dir = Path(sample.out_dir)
    for build, name, options in [
        (build_vision_archive, VISION_ARCHIVE,
         dict(classes=vision_classes, image_size=sample.image_size, train_per_class=sample.train_per_class,
              test_per_class=sample.test_per_class)),
        (build_acoustic_archive, ACOUSTIC_ARCHIVE,
         dict(classes=audio_classes, n_samples=settings.audio.clip_samples,
              sample_rate=settings.audio.sample_rate, clips_per_class=sample.clips_per_class)),
        (build_anomaly_archive, ANOMALY_ARCHIVE,
         dict(defect_classes=defect_classes, normal_class=sample.anomaly_normal_class, image_size=sample.image_size,
              train_per_class=sample.train_per_class, test_per_class=sample.test_per_class,
              defect_train=sample.anomaly_defect_train)),
    ]:
        started = time.perf_counter()
        built = build(out_dir / name, seed=settings.seed, **options)
        print(f"wrote {built.path}: {built.members} files, {built.bytes / 1e6:.2f} MB in "
              f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    with run_stage("sample_data"):
        main()
