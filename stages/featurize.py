"""Stage featurize: data/interim -> data/features (resized images, MFCC + log-mel images, wavelet-packet energies).

The formats are in docs/architecture.md; the knobs are params.yaml's `featurize`, `vision.image_size`
and `audio.sample_rate`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from vapm.config import ConfigError, load_params, section
from vapm.features.acoustic import acoustic_settings
from vapm.features.build import InterimDataError, featurize_acoustic, featurize_vision
from vapm.features.vision import vision_image_size
from vapm.seeding import set_global_seed

INTERIM = Path("data/interim")
FEATURES = Path("data/features")
VISION_OUT = FEATURES / "vision.npz"
ACOUSTIC_IMAGES_OUT = FEATURES / "acoustic_images.npz"
WAVELET_OUT = FEATURES / "wavelet_packet.parquet"


def main() -> None:
    try:
        params = load_params()
        set_global_seed(section(params, "seed"), tensorflow=False)
        image_size = vision_image_size(params)
        settings = acoustic_settings(params)

        started = time.perf_counter()
        n_images = featurize_vision(INTERIM / "vision", VISION_OUT, image_size)
        print(f"wrote {VISION_OUT}: {n_images} images of {image_size}x{image_size} "
              f"in {time.perf_counter() - started:.1f} s")

        summary = featurize_acoustic(INTERIM / "acoustic", ACOUSTIC_IMAGES_OUT, WAVELET_OUT, settings)
        print(f"wrote {ACOUSTIC_IMAGES_OUT} and {WAVELET_OUT}: {summary.n_clips} clips in {summary.seconds:.1f} s "
              f"in {summary.workers} process(es); CPU per clip {summary.image_cpu_ms_per_clip:.1f} ms MFCC + log-mel, "
              f"{summary.wavelet_cpu_ms_per_clip:.1f} ms wavelet packet")
    except (ConfigError, InterimDataError, OSError) as err:
        print(f"featurize: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
