"""Stage featurize: data/interim -> data/features/{image,acoustic_image,wavelet}/ (arrays + record.json).

The formats are in docs/architecture.md; the knobs are params.yaml's `featurize`, `vision.image_size`,
`vision.resize`, `audio` and `ood.false_flag_rate` (the images' learnt input checks). Each folder's record.json
is the preprocessing record predict uses for new files.
"""
from __future__ import annotations

import shutil
import time
from contextlib import nullcontext

from vapm.core.errors import run_stage


def main() -> None:
    from vapm.config import paths
    from vapm.config.compute import Executor, scheduler_address, tune_allocator
    from vapm.data.features.build import featurize_acoustic, featurize_vision
    from vapm.data.features.records import acoustic_image_record, image_record, wavelet_record
    from vapm.config.seeding import set_global_seed
    from vapm.config.settings import load_settings

    settings = load_settings(models=())
    tune_allocator()  # this process and the worker processes it starts
    scheduler = scheduler_address(settings.compute.scheduler)  # None: local processes
    set_global_seed(settings.seed, tensorflow=False, threads=settings.compute.threads)
    images = image_record(settings)
    # One connection to the cluster (and one check of its workers) for both passes.
    with Executor(scheduler=scheduler, what="featurize") if scheduler else nullcontext() as cluster:
        started = time.perf_counter()
        n_images = featurize_vision(paths.VISION_INTERIM, paths.IMAGE_FEATURES, images, cluster=cluster,
                                    false_flag_rate=settings.ood.rule_rate("vision"), n_jobs=settings.featurize.n_jobs)
        print(f"wrote {paths.IMAGE_FEATURES}: {n_images} images of {images.image_size}x{images.image_size} "
              f"in {time.perf_counter() - started:.1f} s")
        summary = featurize_acoustic(paths.ACOUSTIC_INTERIM, paths.ACOUSTIC_IMAGE_FEATURES, paths.WAVELET_FEATURES,
                                     acoustic_image_record(settings), wavelet_record(settings),
                                     n_jobs=settings.featurize.n_jobs, cluster=cluster)
    print(f"wrote {paths.ACOUSTIC_IMAGE_FEATURES} and {paths.WAVELET_FEATURES}: {summary.n_clips} clips in "
          f"{summary.seconds:.1f} s in {summary.workers} process(es)"
          f"{f' on the Dask cluster {scheduler}' if scheduler else ''}; CPU per clip "
          f"{summary.image_cpu_ms_per_clip:.1f} ms MFCC + log-mel, {summary.wavelet_cpu_ms_per_clip:.1f} ms "
          "wavelet packet")


def remove_outputs() -> None:
    """After a failure, none of this run's outputs stay (the image features are written before the acoustic ones
    are computed): a stage fails whole, wherever its work ran."""
    from vapm.config import paths

    for folder in (paths.IMAGE_FEATURES, paths.ACOUSTIC_IMAGE_FEATURES, paths.WAVELET_FEATURES):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    with run_stage("featurize"):
        try:
            main()
        except BaseException:
            remove_outputs()
            raise
