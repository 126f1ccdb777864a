"""Read data/interim, compute the features chunk by chunk and write data/features (docs/architecture.md).

Every features folder holds its arrays and the record that made them (`record.json`, vapm.data.features.records).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from vapm.core.progress import progress
from vapm.data.features.acoustic import (
    ClipRange,
    acoustic_frame_count,
    check_clip_length,
    clip_range_features,
    clip_range_task,
)
from vapm.data.features.errors import InterimDataError
from vapm.data.input_checks import fit_clip_limits, fit_image_limits
from vapm.data.features.records import AcousticImageRecord, ImageRecord, WaveletRecord, write_record

VISION_COLUMNS = ("item", "file", "class", "label", "split", "height", "width", "offset")
ACOUSTIC_COLUMNS = ("item", "file", "class", "label", "split")

# Clips per task: small enough for a smooth progress bar and bounded memory, large enough that task
# overhead is negligible. Results do not depend on it (every clip is computed alone).
CHUNK_CLIPS = 32

# A worker process spent about 3-5 CPU seconds importing librosa's scipy/numba stack before its first
# clip (the features now import only NumPy and pywt, about 0.3 s, plus loky's start-up; the threshold was
# not re-tuned), while a clip takes about 2.5 ms with the default params (1800 clips: ~5 s in one process),
# so two workers only pay off when the work left after the first chunk is longer than this. It decides how
# many processes run, never a result.
PARALLEL_WORTH_SECONDS = 10.0


@dataclass(frozen=True)
class AcousticSummary:
    n_clips: int
    seconds: float                  # wall time of the whole acoustic pass
    workers: int                    # processes that computed the chunks after the first
    image_cpu_ms_per_clip: float    # MFCC + log-mel, CPU time per clip
    wavelet_cpu_ms_per_clip: float  # wavelet-packet energies, CPU time per clip


def read_manifest(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """The manifest sorted by `item`, checked to have the columns and items 0..N-1 the contract promises."""
    if not path.is_file():
        raise InterimDataError(f"{path} not found: run the ingest stage first")
    try:
        manifest = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for damaged files
        raise InterimDataError(f"{path} is not a readable parquet file: {err}") from err
    missing = [column for column in required if column not in manifest.columns]
    if missing:
        raise InterimDataError(f"{path} lacks the columns {missing}")
    if manifest.empty:
        raise InterimDataError(f"{path} lists no items")
    manifest = manifest.sort_values("item", kind="stable").reset_index(drop=True)
    if not np.array_equal(manifest["item"].to_numpy(), np.arange(len(manifest))):
        raise InterimDataError(f"{path}: the item column must number the rows 0..{len(manifest) - 1} once each")
    return manifest


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InterimDataError(f"{path} not found: run the ingest stage first")
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as err:
        raise InterimDataError(f"{path} is not a readable .npy array: {err}") from err


def class_names(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """{"classes": the class list in label order} from the manifest (ingest's manifests have items of every class);
    {} for a manifest whose labels do not run 0..k-1 one to one with its classes (the models then take the list
    from params)."""
    pairs = manifest[["label", "class"]].drop_duplicates().sort_values("label")
    if not np.array_equal(pairs["label"].to_numpy(), np.arange(len(pairs))) or pairs["class"].duplicated().any():
        return {}
    return {"classes": np.asarray(pairs["class"].astype(str).tolist(), dtype=str)}


def _resized_masks(interim_dir: Path, manifest: pd.DataFrame, n_pixels: int,
                   record: ImageRecord) -> tuple[np.ndarray, np.ndarray] | None:
    """(masks uint8 (N, S, S), has_mask bool (N,)) with each image's geometry, or None when ingest paired none."""
    from vapm.data.features.vision import resize_mask

    path = interim_dir / MASKS_NPY
    if not path.is_file():
        return None
    masks = _open_npy(path)
    if masks.shape != (n_pixels,) or masks.dtype != np.uint8:
        raise InterimDataError(f"{path} must be 1-D uint8 like pixels.npy ({n_pixels} bytes), got {masks.dtype} "
                               f"{masks.shape}: rerun ingest")
    has_mask = manifest["mask_file"].astype(str).to_numpy() != "" if "mask_file" in manifest else \
        np.zeros(len(manifest), dtype=bool)
    side = record.image_size
    resized = np.zeros((len(manifest), side, side), dtype=np.uint8)
    for i in np.flatnonzero(has_mask):
        offset, height, width = (int(manifest[column].iloc[i]) for column in ("offset", "height", "width"))
        mask = np.asarray(masks[offset:offset + height * width]).reshape(height, width)
        resized[i] = resize_mask(mask, side, record.resize)
    return resized, has_mask


def _labels_splits_files(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"labels": manifest["label"].to_numpy(dtype=np.int64),
            "splits": np.asarray(manifest["split"].astype(str).tolist(), dtype=str),
            "files": np.asarray(manifest["file"].astype(str).tolist(), dtype=str)}


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write next to `path`, then rename, so an interrupted run never leaves a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(target: Path) -> None:
        with open(target, "wb") as fh:  # a file object stops numpy from appending ".npz" to the name
            np.savez(fh, **arrays)
    _replace_atomically(path, write)


FEATURES_NPZ = "features.npz"
FEATURES_PARQUET = "features.parquet"
MASKS_NPY = "masks.npy"  # data/interim/vision, when ingest paired defect masks (vapm.data.ingest.masks)


def featurize_vision(interim_dir: Path, out_dir: Path, record: ImageRecord) -> int:
    """Resize every image of data/interim/vision as `record` says; write out_dir/features.npz; return the count."""
    interim_dir = Path(interim_dir)
    manifest = read_manifest(interim_dir / "manifest.parquet", VISION_COLUMNS)
    pixels = _open_npy(interim_dir / "pixels.npy")
    if pixels.ndim != 1 or pixels.dtype != np.uint8:
        raise InterimDataError(f"{interim_dir / 'pixels.npy'} must be 1-D uint8, got {pixels.dtype} {pixels.shape}")
    offsets, heights, widths = (manifest[c].to_numpy(dtype=np.int64) for c in ("offset", "height", "width"))
    bad = (heights < 1) | (widths < 1) | (offsets < 0) | (offsets + heights * widths > pixels.size)
    if bad.any():
        first = int(np.argmax(bad))
        raise InterimDataError(
            f"{interim_dir / 'manifest.parquet'}: {int(bad.sum())} images lie outside pixels.npy "
            f"({pixels.size} bytes), first {manifest['file'][first]} at offset {offsets[first]} "
            f"with size {heights[first]}x{widths[first]}")
    side = record.image_size
    images = np.empty((len(manifest), side, side), dtype=np.uint8)
    rows = progress(zip(offsets, heights, widths), desc="resize images", total=len(manifest), unit="image")
    for i, (offset, height, width) in enumerate(rows):
        images[i] = record.from_grey(np.asarray(pixels[offset:offset + height * width]).reshape(height, width))
    arrays = {"images": images, **_labels_splits_files(manifest), **class_names(manifest)}
    masks = _resized_masks(interim_dir, manifest, pixels.size, record)
    if masks is not None:
        arrays["masks"], arrays["has_mask"] = masks
    _save_npz(Path(out_dir) / FEATURES_NPZ, arrays)
    train = manifest["split"].astype(str).to_numpy() == "train"
    write_record(out_dir, record.model_copy(update={"checks": fit_image_limits(images[train])}))
    return len(manifest)


def workers_worth_starting(n_jobs: int, seconds_per_clip: float, clips_left: int, chunks_left: int,
                           parallel_worth_seconds: float = PARALLEL_WORTH_SECONDS) -> int:
    """How many processes should compute the remaining chunks: n_jobs only if the work pays for their start."""
    if seconds_per_clip * clips_left <= parallel_worth_seconds:
        return 1
    return max(1, min(n_jobs, chunks_left))


def _check_clips(clips_path: Path, n_listed: int, image_record: AcousticImageRecord,
                 wavelet_record: WaveletRecord) -> int:
    """The clip length, after checking clips.npy against its manifest and the settings."""
    clips = _open_npy(clips_path)
    if clips.ndim != 2 or not np.issubdtype(clips.dtype, np.floating):
        raise InterimDataError(f"{clips_path} must be a 2-D float array (clips x samples), "
                               f"got {clips.dtype} {clips.shape}")
    if clips.shape[0] != n_listed:
        raise InterimDataError(f"{clips_path} holds {clips.shape[0]} clips but its manifest lists {n_listed}")
    check_clip_length(clips.shape[1], image_record.n_fft, wavelet_record.wavelet, wavelet_record.level)
    return clips.shape[1]


def _compute_on_cluster(clips_path: Path, files: list[str], bounds: list[tuple[int, int]],
                        image_record: AcousticImageRecord, wavelet_record: WaveletRecord, scheduler: str,
                        store: Callable[[int, int, tuple], None]) -> int:
    """Every chunk computed by the cluster's workers, stored here in order; the number of worker threads."""
    from vapm.config.compute import Executor

    tasks = [ClipRange(Path(clips_path).absolute(), start, stop, files[start:stop], image_record, wavelet_record)
             for start, stop in bounds]
    with Executor(scheduler=scheduler, what="featurize") as cluster:
        workers = cluster.workers
        chunks = progress(zip(bounds, cluster.map(clip_range_task, tasks)), total=len(bounds), unit="chunk",
                          desc=f"acoustic features ({len(files[bounds[0][0]:bounds[0][1]])} clips/chunk, "
                               f"Dask cluster {scheduler}, {workers} worker thread(s))")
        for (start, stop), chunk in chunks:
            store(start, stop, chunk)
    return workers


def _compute_acoustic(clips_path: Path, files: list[str], n_samples: int, image_record: AcousticImageRecord,
                      wavelet_record: WaveletRecord, n_jobs: int, chunk_clips: int,
                      parallel_worth_seconds: float,
                      scheduler: str | None = None) -> tuple[np.ndarray, np.ndarray, int, float, float]:
    """(images, energies, processes used, image CPU seconds, wavelet CPU seconds) for every clip."""
    n_clips = len(files)
    frames = acoustic_frame_count(n_samples, image_record.hop_length)
    images = np.empty((n_clips, image_record.n_mfcc + image_record.n_mels, frames), dtype=np.float32)
    energies = np.empty((n_clips, len(wavelet_record.feature_names)), dtype=np.float64)
    cpu_seconds = np.zeros(2)

    def store(start: int, stop: int, chunk: tuple[np.ndarray, np.ndarray, float, float]) -> None:
        chunk_images, chunk_energies, *chunk_seconds = chunk
        if chunk_images.shape[1:] != images.shape[1:]:
            raise InterimDataError(f"clips {start}..{stop - 1} gave images of shape {chunk_images.shape[1:]}, "
                                   f"expected {images.shape[1:]} for {n_samples}-sample clips")
        images[start:stop], energies[start:stop] = chunk_images, chunk_energies
        cpu_seconds[:] += chunk_seconds

    def task(start: int, stop: int):
        return delayed(clip_range_features)(clips_path, start, stop, files[start:stop], image_record, wavelet_record)

    bounds = [(start, min(start + chunk_clips, n_clips)) for start in range(0, n_clips, chunk_clips)]
    if scheduler is not None:  # a cluster's workers are running already: all the work goes there
        workers = _compute_on_cluster(clips_path, files, bounds, image_record, wavelet_record, scheduler, store)
        return images, energies, workers, float(cpu_seconds[0]), float(cpu_seconds[1])
    # The first chunk runs here and tells what a clip costs, which decides whether workers pay off.
    (first_start, first_stop), rest = bounds[0], bounds[1:]
    store(first_start, first_stop, clip_range_features(clips_path, first_start, first_stop, files[:first_stop],
                                                       image_record, wavelet_record))
    workers = workers_worth_starting(n_jobs, cpu_seconds.sum() / first_stop, n_clips - first_stop,
                                     len(rest), parallel_worth_seconds)
    results = Parallel(n_jobs=workers, return_as="generator")(task(start, stop) for start, stop in rest)
    chunks = progress(zip(rest, results), desc=f"acoustic features ({chunk_clips} clips/chunk, {workers} process(es))",
                      total=len(rest), unit="chunk")
    for (start, stop), chunk in chunks:
        store(start, stop, chunk)
    return images, energies, workers, float(cpu_seconds[0]), float(cpu_seconds[1])


def featurize_acoustic(interim_dir: Path, images_dir: Path, wavelet_dir: Path, image_record: AcousticImageRecord,
                       wavelet_record: WaveletRecord, n_jobs: int, chunk_clips: int = CHUNK_CLIPS,
                       parallel_worth_seconds: float = PARALLEL_WORTH_SECONDS,
                       scheduler: str | None = None) -> AcousticSummary:
    """Compute the MFCC + log-mel images and the wavelet-packet energies of every clip in one pass.

    Chunks of clips come back in order into preallocated arrays, from worker processes when there is
    enough work (see PARALLEL_WORTH_SECONDS), or from a Dask cluster's workers when `scheduler` is its address
    (vapm.config.compute); every clip is computed on its own, so the numbers do not depend on n_jobs, on whether
    or where workers were used, or on chunk_clips.
    """
    started = time.perf_counter()
    interim_dir = Path(interim_dir)
    manifest = read_manifest(interim_dir / "manifest.parquet", ACOUSTIC_COLUMNS)
    clips_path = interim_dir / "clips.npy"
    n_samples = _check_clips(clips_path, len(manifest), image_record, wavelet_record)
    if n_samples != image_record.audio.clip_samples:
        raise InterimDataError(f"{clips_path} holds clips of {n_samples} samples, but audio.sample_rate x "
                               f"audio.clip_seconds gives {image_record.audio.clip_samples}: rerun ingest")
    files = manifest["file"].astype(str).tolist()
    images, energies, workers, image_seconds, wavelet_seconds = _compute_acoustic(
        clips_path, files, n_samples, image_record, wavelet_record, n_jobs, chunk_clips, parallel_worth_seconds,
        scheduler)

    _save_npz(Path(images_dir) / FEATURES_NPZ, {"images": images, **_labels_splits_files(manifest),
                                                **class_names(manifest)})
    # The clip limits of the training split travel in both records: a saved model checks new clips against them.
    train_rows = np.flatnonzero(manifest["split"].astype(str).to_numpy() == "train")
    checks = {"checks": fit_clip_limits(np.load(clips_path, mmap_mode="r"), rows=train_rows)}
    image_record, wavelet_record = image_record.model_copy(update=checks), wavelet_record.model_copy(update=checks)
    write_record(images_dir, image_record)
    table = pd.DataFrame(energies, columns=wavelet_record.feature_names)
    table["class"] = manifest["class"].astype(str).to_numpy()
    table["label"] = manifest["label"].to_numpy(dtype=np.int64)
    table["split"] = manifest["split"].astype(str).to_numpy()
    table["file"] = files
    _replace_atomically(Path(wavelet_dir) / FEATURES_PARQUET, lambda target: table.to_parquet(target, index=False))
    write_record(wavelet_dir, wavelet_record)
    return AcousticSummary(n_clips=len(files), seconds=time.perf_counter() - started, workers=workers,
                           image_cpu_ms_per_clip=1000 * image_seconds / len(files),
                           wavelet_cpu_ms_per_clip=1000 * wavelet_seconds / len(files))
