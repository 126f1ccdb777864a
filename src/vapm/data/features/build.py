"""Read data/interim, compute the features chunk by chunk and write data/features (docs/architecture.md).

Every features folder holds its arrays and the record that made them (`record.json`, vapm.data.features.records).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from vapm.config.compute import Executor
from vapm.core.npy_rows import NpyRows, NpzWriter, RowStream
from vapm.core.progress import progress
from vapm.data.features.acoustic import (
    ClipRange,
    acoustic_frame_count,
    check_clip_length,
    clip_range_features,
    clip_range_task,
)
from vapm.data.features.errors import InterimDataError
from vapm.data.input_checks import clip_limits, fit_image_limits
from vapm.data.features.records import AcousticImageRecord, ImageRecord, WaveletRecord, write_record
from vapm.data.features.vision import ImageRange, TrainingImages, image_range_task, image_statistics_task
from vapm.data.image_polarity import MIN_SIDE

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

STATISTICS_ROWS = 128

# Items resized or computed before they are written out together: the memory featurize holds whatever the
# dataset's size. Results do not depend on it.
WRITE_ROWS = 256
# Rows of the wavelet table per parquet row group: written as the energies come (2 KB a clip), so featurize
# never holds the table whole. Part of the file's layout (its bytes), not of the numbers read back.
TABLE_ROW_GROUP = 1024


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


def _open_rows(path: Path) -> NpyRows:
    """A .npy file of data/interim read a few rows at a time (memory does not grow with the dataset)."""
    if not path.is_file():
        raise InterimDataError(f"{path} not found: run the ingest stage first")
    try:
        return NpyRows(path)
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


def _write_resized(npz: NpzWriter, name: str, path: Path, geometry: np.ndarray, record: ImageRecord,
                   cluster: Executor | None, masks: bool = False) -> None:
    """Member `name` of the npz: the images of `path` at `geometry` resized, WRITE_ROWS per task, computed here or
    on the Dask cluster, written in order as they come back."""
    side = record.image_size
    tasks = [ImageRange(path.absolute(), geometry[start:start + WRITE_ROWS], side, record.resize, masks)
             for start in range(0, len(geometry), WRITE_ROWS)]
    where = f"Dask cluster {cluster.scheduler}, {cluster.workers} worker thread(s)" if cluster else "here"
    with npz.stream(name, np.uint8, (len(geometry), side, side)) as rows:
        results = cluster.map(image_range_task, tasks) if cluster else map(image_range_task, tasks)
        for block in progress(results, desc=f"resize {name} ({WRITE_ROWS}/task, {where})", total=len(tasks),
                              unit="task"):
            rows.write(block)


def _write_resized_masks(npz: NpzWriter, interim_dir: Path, manifest: pd.DataFrame, n_pixels: int,
                         record: ImageRecord, cluster: Executor | None) -> None:
    """masks uint8 (N, S, S) with each image's geometry and has_mask bool (N,), when ingest paired masks."""
    path = interim_dir / MASKS_NPY
    if not path.is_file():
        return
    masks = _open_rows(path)
    if masks.shape != (n_pixels,) or masks.dtype != np.uint8:
        raise InterimDataError(f"{path} must be 1-D uint8 like pixels.npy ({n_pixels} bytes), got {masks.dtype} "
                               f"{masks.shape}: rerun ingest")
    has_mask = manifest["mask_file"].astype(str).to_numpy() != "" if "mask_file" in manifest else \
        np.zeros(len(manifest), dtype=bool)
    geometry = manifest[["offset", "height", "width"]].to_numpy(dtype=np.int64) * has_mask[:, None]
    _write_resized(npz, "masks", path, geometry, record, cluster, masks=True)
    npz.add("has_mask", has_mask)


@contextmanager
def _cluster(scheduler: str | None, cluster: Executor | None) -> Iterator[Executor | None]:
    """The Dask cluster the work goes to: one the caller connected, one at `scheduler`, or none (this process)."""
    if cluster is not None or scheduler is None:
        yield cluster
        return
    with Executor(scheduler=scheduler, what="featurize") as connected:
        yield connected


def _labels_splits_files(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"labels": manifest["label"].to_numpy(dtype=np.int64),
            "splits": np.asarray(manifest["split"].astype(str).tolist(), dtype=str),
            "files": np.asarray(manifest["file"].astype(str).tolist(), dtype=str)}


class _WaveletTable:
    """The wavelet features.parquet written TABLE_ROW_GROUP rows at a time as the energies come, in item order:
    the feature columns, then class, label, split and file from the manifest; renamed into place when whole."""

    def __init__(self, path: Path, feature_names: Sequence[str], manifest: pd.DataFrame):
        self.path, self.feature_names = Path(path), list(feature_names)
        self.item_columns = {"class": manifest["class"].astype(str).to_numpy(),
                             "label": manifest["label"].to_numpy(dtype=np.int64),
                             "split": manifest["split"].astype(str).to_numpy(),
                             "file": manifest["file"].astype(str).to_numpy()}
        self.temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._written = 0
        self._writer: Any = None

    def append(self, energies: np.ndarray) -> None:
        self._pending.append(np.asarray(energies, dtype=np.float64))
        self._pending_rows += len(energies)
        while self._pending_rows >= TABLE_ROW_GROUP:
            self._write_group(TABLE_ROW_GROUP)

    def _write_group(self, n_rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        block = np.concatenate(self._pending)
        self._pending = [block[n_rows:]] if len(block) > n_rows else []
        self._pending_rows = len(block) - n_rows
        frame = pd.DataFrame(block[:n_rows], columns=self.feature_names)
        stop = self._written + n_rows
        for name, values in self.item_columns.items():
            frame[name] = values[self._written:stop]
        table = pa.Table.from_pandas(frame, preserve_index=False)  # what DataFrame.to_parquet(index=False) writes
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.temporary, table.schema)
        self._writer.write_table(table)
        self._written = stop

    def close(self) -> None:
        if self._pending_rows:
            self._write_group(self._pending_rows)
        if self._written != len(self.item_columns["file"]):
            raise InterimDataError(f"{self.path}: {self._written} rows computed for "
                                   f"{len(self.item_columns['file'])} clips")
        self._writer.close()
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        """Whatever is left of an unfinished table (nothing after `close`)."""
        if self._writer is not None:
            self._writer.close()  # again after close: a no-op
        self.temporary.unlink(missing_ok=True)


FEATURES_NPZ = "features.npz"
FEATURES_PARQUET = "features.parquet"
MASKS_NPY = "masks.npy"  # data/interim/vision, when ingest paired defect masks (vapm.data.ingest.masks)


def _training_image_statistics(features: Path, train: np.ndarray, n_jobs: int,
                               cluster: Executor | None) -> np.ndarray:
    """The polarity statistics of the training images (vapm.data.image_polarity, ~10 ms an image), STATISTICS_ROWS
    per task: on the cluster, or the first task here and the rest in up to n_jobs processes when they pay off."""
    tasks = [TrainingImages(features.absolute(), train[start:start + STATISTICS_ROWS])
             for start in range(0, len(train), STATISTICS_ROWS)]
    if cluster is not None:
        return np.concatenate(list(cluster.map(image_statistics_task, tasks)))
    started = time.process_time()
    first = image_statistics_task(tasks[0])
    if len(tasks) == 1:
        return first
    workers = workers_worth_starting(n_jobs, (time.process_time() - started) / len(first), len(train) - len(first),
                                     len(tasks) - 1)
    with Executor(n_jobs=workers, what="image statistics") as local:
        rest = progress(local.map(image_statistics_task, tasks[1:]), total=len(tasks) - 1, unit="task",
                        desc=f"image statistics ({STATISTICS_ROWS}/task, {workers} process(es))")
        return np.concatenate([first, *rest])


def featurize_vision(interim_dir: Path, out_dir: Path, record: ImageRecord, scheduler: str | None = None,
                     cluster: Executor | None = None, false_flag_rate: float = 0.01, n_jobs: int = 1) -> int:
    """Resize every image of data/interim/vision as `record` says; write out_dir/features.npz; return the count.
    The record gets the input checks fitted on the training images (`false_flag_rate`: the learnt rules', whose
    statistics are computed in up to `n_jobs` processes or on the cluster).

    WRITE_ROWS images per task: resized here, or by the workers of a Dask cluster (`cluster`, or the scheduler at
    `scheduler`), and written in order as they come back, so memory does not grow with their number and the
    bytes do not depend on where they were resized."""
    interim_dir = Path(interim_dir)
    manifest = read_manifest(interim_dir / "manifest.parquet", VISION_COLUMNS)
    pixels = _open_rows(interim_dir / "pixels.npy")
    if pixels.ndim != 1 or pixels.dtype != np.uint8:
        raise InterimDataError(f"{interim_dir / 'pixels.npy'} must be 1-D uint8, got {pixels.dtype} {pixels.shape}")
    geometry = manifest[["offset", "height", "width"]].to_numpy(dtype=np.int64)
    offsets, heights, widths = geometry.T
    bad = (heights < 1) | (widths < 1) | (offsets < 0) | (offsets + heights * widths > len(pixels))
    if bad.any():
        first = int(np.argmax(bad))
        raise InterimDataError(
            f"{interim_dir / 'manifest.parquet'}: {int(bad.sum())} images lie outside pixels.npy "
            f"({len(pixels)} bytes), first {manifest['file'][first]} at offset {offsets[first]} "
            f"with size {heights[first]}x{widths[first]}")
    features = Path(out_dir) / FEATURES_NPZ
    train = np.flatnonzero(manifest["split"].astype(str).to_numpy() == "train")
    with _cluster(scheduler, cluster) as where:
        with NpzWriter(features) as npz:
            _write_resized(npz, "images", interim_dir / "pixels.npy", geometry, record, where)
            for name, array in {**_labels_splits_files(manifest), **class_names(manifest)}.items():
                npz.add(name, array)
            _write_resized_masks(npz, interim_dir, manifest, len(pixels), record, where)
        statistics = _training_image_statistics(features, train, n_jobs, where) \
            if len(train) and record.image_size >= MIN_SIDE else None
    checks = fit_image_limits(NpyRows(features, "images"), rows=train, false_flag_rate=false_flag_rate,
                              statistics=statistics)
    write_record(out_dir, record.model_copy(update={"checks": checks}))
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
    clips = _open_rows(clips_path)
    if clips.ndim != 2 or not np.issubdtype(clips.dtype, np.floating):
        raise InterimDataError(f"{clips_path} must be a 2-D float array (clips x samples), "
                               f"got {clips.dtype} {clips.shape}")
    if clips.shape[0] != n_listed:
        raise InterimDataError(f"{clips_path} holds {clips.shape[0]} clips but its manifest lists {n_listed}")
    check_clip_length(clips.shape[1], image_record.n_fft, wavelet_record.wavelet, wavelet_record.level)
    return clips.shape[1]


def _compute_on_cluster(clips_path: Path, files: list[str], bounds: list[tuple[int, int]],
                        image_record: AcousticImageRecord, wavelet_record: WaveletRecord, cluster: Executor,
                        store: Callable[[int, int, tuple], None]) -> int:
    """Every chunk computed by the cluster's workers, stored here in order; the number of worker threads."""
    tasks = [ClipRange(Path(clips_path).absolute(), start, stop, files[start:stop], image_record, wavelet_record)
             for start, stop in bounds]
    chunks = progress(zip(bounds, cluster.map(clip_range_task, tasks)), total=len(bounds), unit="chunk",
                      desc=f"acoustic features ({len(files[bounds[0][0]:bounds[0][1]])} clips/chunk, "
                           f"Dask cluster {cluster.scheduler}, {cluster.workers} worker thread(s))")
    for (start, stop), chunk in chunks:
        store(start, stop, chunk)
    return cluster.workers


def _compute_acoustic(clips_path: Path, files: list[str], n_samples: int, image_record: AcousticImageRecord,
                      wavelet_record: WaveletRecord, n_jobs: int, chunk_clips: int,
                      parallel_worth_seconds: float, images: RowStream, energies: _WaveletTable,
                      cluster: Executor | None = None) -> tuple[np.ndarray, int, float, float]:
    """(clip statistics, processes used, image CPU seconds, wavelet CPU seconds) for every clip; the feature
    images and the energies are written to `images` and `energies` as they come, in order."""
    n_clips = len(files)
    statistics = np.empty((n_clips, 4), dtype=np.float64)
    cpu_seconds = np.zeros(2)

    def store(start: int, stop: int, chunk: tuple[np.ndarray, np.ndarray, float, float, np.ndarray]) -> None:
        chunk_images, chunk_energies, image_seconds, wavelet_seconds, chunk_statistics = chunk
        if chunk_images.shape[1:] != images.shape[1:]:
            raise InterimDataError(f"clips {start}..{stop - 1} gave images of shape {chunk_images.shape[1:]}, "
                                   f"expected {images.shape[1:]} for {n_samples}-sample clips")
        images.write(chunk_images)
        energies.append(chunk_energies)
        statistics[start:stop] = chunk_statistics
        cpu_seconds[:] += (image_seconds, wavelet_seconds)

    def task(start: int, stop: int):
        return delayed(clip_range_features)(clips_path, start, stop, files[start:stop], image_record, wavelet_record)

    bounds = [(start, min(start + chunk_clips, n_clips)) for start in range(0, n_clips, chunk_clips)]
    if cluster is not None:  # a cluster's workers are running already: all the work goes there
        workers = _compute_on_cluster(clips_path, files, bounds, image_record, wavelet_record, cluster, store)
        return statistics, workers, float(cpu_seconds[0]), float(cpu_seconds[1])
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
    return statistics, workers, float(cpu_seconds[0]), float(cpu_seconds[1])


def featurize_acoustic(interim_dir: Path, images_dir: Path, wavelet_dir: Path, image_record: AcousticImageRecord,
                       wavelet_record: WaveletRecord, n_jobs: int, chunk_clips: int = CHUNK_CLIPS,
                       parallel_worth_seconds: float = PARALLEL_WORTH_SECONDS,
                       scheduler: str | None = None, cluster: Executor | None = None) -> AcousticSummary:
    """Compute the MFCC + log-mel images and the wavelet-packet energies of every clip in one pass.

    Chunks of clips come back in order and are written as they come (the feature images straight into
    features.npz: memory does not grow with the number of clips), from worker processes when there is
    enough work (see PARALLEL_WORTH_SECONDS), or from a Dask cluster's workers when `scheduler` is its address
    (vapm.config.compute) or `cluster` is one the caller connected; every clip is computed on its own, so the
    numbers do not depend on n_jobs, on whether or where workers were used, or on chunk_clips.
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
    shape = (len(files), image_record.n_mfcc + image_record.n_mels, acoustic_frame_count(n_samples,
                                                                                         image_record.hop_length))
    table = _WaveletTable(Path(wavelet_dir) / FEATURES_PARQUET, wavelet_record.feature_names, manifest)
    try:
        with _cluster(scheduler, cluster) as where, NpzWriter(Path(images_dir) / FEATURES_NPZ) as npz:
            with npz.stream("images", np.float32, shape) as images:
                statistics, workers, image_seconds, wavelet_seconds = _compute_acoustic(
                    clips_path, files, n_samples, image_record, wavelet_record, n_jobs, chunk_clips,
                    parallel_worth_seconds, images, table, where)
            for name, array in {**_labels_splits_files(manifest), **class_names(manifest)}.items():
                npz.add(name, array)
        table.close()
    finally:
        table.discard()
    # The clip limits of the training split travel in both records: a saved model checks new clips against them.
    train_rows = np.flatnonzero(manifest["split"].astype(str).to_numpy() == "train")
    checks = {"checks": clip_limits(statistics[train_rows])}  # what fit_clip_limits finds, computed with the clips
    image_record, wavelet_record = image_record.model_copy(update=checks), wavelet_record.model_copy(update=checks)
    write_record(images_dir, image_record)
    write_record(wavelet_dir, wavelet_record)
    return AcousticSummary(n_clips=len(files), seconds=time.perf_counter() - started, workers=workers,
                           image_cpu_ms_per_clip=1000 * image_seconds / len(files),
                           wavelet_cpu_ms_per_clip=1000 * wavelet_seconds / len(files))
