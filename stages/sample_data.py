"""Stage sample_data: write small synthetic NEU and air-compressor archives to sample_data.out_dir.

They have the layouts of the real archives, so ingest and everything after it run unchanged on them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from vapm.config import ConfigError, audio_sample_rate, clip_samples, load_params, section
from vapm.seeding import set_global_seed
from vapm.synth import BuiltArchive, acoustic, build_acoustic_archive, build_vision_archive, vision

VISION_ARCHIVE = "NEU-data-TrainTest.zip"
ACOUSTIC_ARCHIVE = "AirCompressor_Data.zip"


def _count(params: dict[str, Any], dotted: str, minimum: int) -> int:
    value = section(params, dotted)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{dotted} must be an integer >= {minimum}, got {value!r}")
    return value


def _classes(params: dict[str, Any], dotted: str) -> list[str]:
    value = section(params, dotted)
    if not isinstance(value, list) or not value or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{dotted} must be a non-empty list of class names, got {value!r}")
    return value


def _report(built: BuiltArchive, seconds: float) -> None:
    print(f"wrote {built.path}: {built.members} files, {built.bytes / 1e6:.2f} MB in {seconds:.1f} s")


def main() -> None:
    try:
        params = load_params()
        seed = _count(params, "seed", 0)
        out_dir = Path(str(section(params, "sample_data.out_dir")))
        # Every setting is checked before anything is written, so a bad one leaves no half-made output.
        vision_settings = {
            "classes": _classes(params, "vision.classes"),
            "image_size": _count(params, "sample_data.image_size", vision.MIN_IMAGE_SIZE),
            "train_per_class": _count(params, "sample_data.train_per_class", 1),
            "test_per_class": _count(params, "sample_data.test_per_class", 0),
        }
        acoustic_settings = {
            "classes": _classes(params, "audio.classes"),
            "n_samples": clip_samples(params),
            "sample_rate": audio_sample_rate(params),
            "clips_per_class": _count(params, "sample_data.clips_per_class", 1),
        }
        vision.check_classes(vision_settings["classes"])
        acoustic.check_classes(acoustic_settings["classes"])
        if acoustic_settings["n_samples"] < 1:
            raise ConfigError("audio.sample_rate x audio.clip_seconds gives no samples per clip")
        set_global_seed(seed, tensorflow=False)

        started = time.perf_counter()
        built = build_vision_archive(out_dir / VISION_ARCHIVE, seed=seed, **vision_settings)
        _report(built, time.perf_counter() - started)
        started = time.perf_counter()
        built = build_acoustic_archive(out_dir / ACOUSTIC_ARCHIVE, seed=seed, **acoustic_settings)
        _report(built, time.perf_counter() - started)
    except (ConfigError, ValueError, OSError) as err:
        print(f"sample_data: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
