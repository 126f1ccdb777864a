"""Turning one archive into data/interim/<dataset>/: manifest, decoded data, and a report."""
from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vapm.config.compute import Executor, scheduler_address
from vapm.config.settings import DEFAULT_MAX_TOTAL_DECODED_MB, ParamsError
from vapm.core.errors import VapmError
from vapm.core.progress import progress
from vapm.data.ingest.archive import ArchiveError, check_members, display_name, open_archive
from vapm.data.ingest.decode import AudioTarget, Clip
from vapm.data.ingest.candidates import check_class_counts, find_candidates
from vapm.data.ingest.labels import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS
from vapm.data.ingest.layout import Layout
from vapm.data.ingest.limits import IngestLimits, mib
from vapm.data.ingest.manifest import (
    Candidate,
    archive_split_counts,
    assign_splits,
    check_every_class_in_both_splits,
    count_kept,
    manifest_frame,
)
from vapm.data.ingest.masks import MASKS_FILE, write_masks
from vapm.data.ingest.npy_stream import NpyAppender
from vapm.data.ingest.parallel import (
    MemberTask,
    chunked,
    decode_chunk,
    decode_chunk_items,
    forget_archives,
    hash_chunk,
    remember_archive,
)
from vapm.data.ingest.report import DEFAULT_EXAMPLES, IngestReport, bad_files_message

VISION_COLUMNS = ["item", "file", "class", "label", "split", "sha256", "height", "width", "offset", "mask_file",
                  "source_archive"]
ACOUSTIC_COLUMNS = ["item", "file", "class", "label", "split", "sha256", "source_samples", "source_sample_rate",
                    "source_archive"]
BAD_FILE_POLICIES = ("fail", "skip")
# Below this much member data, decoding in this process beats paying for starting worker processes
# (measured on 2 cores: the 85 MB of 320 WAV clips or 1800 JPEGs decode in about a second). A Dask cluster's
# workers are running already: with a scheduler, every archive is hashed and decoded there.
PARALLEL_MIN_BYTES = 256 * 2**20


class IngestError(VapmError, RuntimeError):
    """A dataset could not be ingested; `report` says what was found before giving up."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class IngestSettings:
    on_bad_file: str
    test_fraction: float
    seed: int
    max_uncompressed_bytes: int
    n_jobs: int
    limits: IngestLimits = IngestLimits()
    max_total_decoded_bytes: int = int(DEFAULT_MAX_TOTAL_DECODED_MB * 2**20)
    report_examples: int = DEFAULT_EXAMPLES
    scheduler: str | None = None    # a Dask scheduler's address (vapm.config.compute), None: local processes

    def __post_init__(self) -> None:
        if self.on_bad_file not in BAD_FILE_POLICIES:
            raise ParamsError(f"ingest.on_bad_file must be one of {BAD_FILE_POLICIES}, got {self.on_bad_file!r}")
        if not 0 < self.test_fraction < 1:
            raise ParamsError(f"ingest.test_fraction must lie between 0 and 1, got {self.test_fraction!r}")
        if self.max_uncompressed_bytes <= 0:
            raise ParamsError("ingest.max_uncompressed_mb must be positive")
        if self.n_jobs < 1:
            raise ParamsError(f"the number of worker processes must be at least 1, got {self.n_jobs}")


def ingest_settings(settings: Any) -> IngestSettings:
    """The ingest knobs from the validated params (vapm.config.settings.Settings)."""
    config = settings.ingest
    return IngestSettings(
        on_bad_file=config.on_bad_file, test_fraction=config.test_fraction, seed=settings.seed,
        max_uncompressed_bytes=int(config.max_uncompressed_mb * 2**20), n_jobs=config.n_jobs,
        max_total_decoded_bytes=int(config.max_total_decoded_mb * 2**20), report_examples=config.report_examples,
        scheduler=scheduler_address(settings.compute.scheduler),
        limits=IngestLimits(max_member_bytes=max(1, int(config.max_member_mb * 2**20)),
                            max_image_pixels=config.max_image_pixels, max_source_samples=config.max_source_samples))


def audio_target(settings: Any) -> AudioTarget:
    """What every clip becomes, from the validated params' `audio` section."""
    return AudioTarget(sample_rate=settings.audio.sample_rate, samples=settings.audio.clip_samples,
                       length_tolerance=settings.audio.length_tolerance,
                       min_source_rate=settings.audio.min_source_rate)


def _layout(classes: list[str] | Layout | None, key: str) -> Layout:
    return classes if isinstance(classes, Layout) else Layout(None if classes is None else list(classes), key=key)


def ingest_vision(archive: str | Path, classes: list[str] | Layout | None, out_dir: str | Path,
                  settings: IngestSettings) -> dict[str, Any]:
    """Decode every image of `archive` into out_dir/{manifest.parquet,pixels.npy[,masks.npy]}; return the report.
    `classes`: a class list, None (auto: the classes the archive holds), or a Layout (with patterns)."""
    return _ingest(Path(archive), "vision", _layout(classes, "vision"), Path(out_dir), settings, audio_target=None)


def ingest_acoustic(archive: str | Path, classes: list[str] | Layout | None, out_dir: str | Path,
                    settings: IngestSettings, target: AudioTarget) -> dict[str, Any]:
    """Decode every clip of `archive` into out_dir/{manifest.parquet,clips.npy}; return the report."""
    return _ingest(Path(archive), "acoustic", _layout(classes, "audio"), Path(out_dir), settings,
                   audio_target=target)


def _ingest(archive: Path, kind: str, layout: Layout, out_dir: Path, settings: IngestSettings,
            audio_target: AudioTarget | None) -> dict[str, Any]:
    report = IngestReport(archive=str(archive), kind=kind, examples=settings.report_examples)
    data_name = "pixels.npy" if audio_target is None else "clips.npy"
    for stale in (out_dir / "manifest.parquet", out_dir / data_name, out_dir / "record.json", out_dir / MASKS_FILE):
        stale.unlink(missing_ok=True)  # a failed run must not leave an earlier run's outputs looking current

    def fail(message: str) -> IngestError:
        return IngestError(f"{kind} archive {archive}: {message}", report.as_dict(error=message))

    try:
        zf = open_archive(archive)
    except ArchiveError as err:
        raise IngestError(f"{kind}: {err}", report.as_dict(error=str(err))) from err
    with zf:
        members = zf.infolist()
        try:
            check_members(archive, members, settings.max_uncompressed_bytes)
        except ArchiveError as err:
            raise IngestError(f"{kind}: {err}", report.as_dict(error=str(err))) from err
        remember_archive(archive, zf)  # the serial path reuses this one parse of the directory
        remember_archive(archive.absolute(), zf)  # (tasks name it by its absolute path: workers may run elsewhere)
        try:
            return _ingest_members(members, archive, kind, layout, out_dir, data_name, settings,
                                   audio_target, report, fail)
        finally:
            forget_archives()


def _ingest_members(members: list[zipfile.ZipInfo], archive: Path, kind: str,
                    layout: Layout, out_dir: Path, data_name: str, settings: IngestSettings,
                    audio_target: AudioTarget | None, report: IngestReport,
                    fail: Callable[[str], Exception]) -> dict[str, Any]:
    report.members_seen = len(members)
    found = find_candidates(members, kind, layout, report)
    candidates, classes = found.candidates, found.classes
    report.classes = classes
    if not candidates and not report.bad:
        if layout.pattern is not None:
            examples = ", ".join(info.filename for info in members[:3])
            raise fail(f"{layout.pattern_key} '{layout.pattern}' matches none of its {len(members)} members "
                       f"(e.g. {examples})")
        extensions = IMAGE_EXTENSIONS if audio_target is None else AUDIO_EXTENSIONS
        raise fail(f"no data files ({', '.join(extensions)}) among its {len(members)} members")
    check_class_counts(found, layout, fail, settings.test_fraction)
    # Members over the size limit are refused unread, so they do not count as work.
    work_bytes = sum(min(candidate.info.file_size, settings.limits.max_member_bytes) for candidate in candidates)
    n_jobs = settings.n_jobs if work_bytes >= PARALLEL_MIN_BYTES else 1

    out_dir.mkdir(parents=True, exist_ok=True)
    if audio_target is None:
        writer = NpyAppender(out_dir / data_name, np.uint8)
    else:
        writer = NpyAppender(out_dir / data_name, np.float32, (audio_target.samples,))
    manifest_partial = out_dir / "manifest.parquet.partial"
    mask_writer = None
    try:
        with Executor(n_jobs, settings.scheduler, what=f"{kind} ingest") as workers:
            candidates = _drop_duplicates(_hash(workers, archive.absolute(), candidates, settings.limits, report,
                                                image_sizes=audio_target is None), report)
            _check_total_size(candidates, audio_target, settings, fail)
            kept, details = _decode_into(writer, workers, archive.absolute(), candidates, settings.limits, audio_target,
                                         report)
        if audio_target is None:
            mask_files, mask_writer = write_masks(out_dir, archive, kept,
                                                  [(entry["height"], entry["width"]) for entry in details],
                                                  found.masks, settings.limits, report)
            for entry, mask_file in zip(details, mask_files, strict=True):
                entry["mask_file"] = mask_file
        if report.bad and settings.on_bad_file == "fail":
            raise fail(bad_files_message(report.bad))
        splits = assign_splits(kept, classes, settings, report, fail)
        count_kept(kept, splits, classes, report)
        report.kept.update(archive_split_counts(kept))
        check_every_class_in_both_splits(report, fail)
        columns = VISION_COLUMNS if audio_target is None else ACOUSTIC_COLUMNS
        manifest_frame(kept, splits, details, classes, archive, columns).to_parquet(manifest_partial, index=False)
        writer.finish()
        if mask_writer is not None:
            mask_writer.finish()
        manifest_partial.replace(out_dir / "manifest.parquet")
    except BaseException:
        writer.discard()
        if mask_writer is not None:
            mask_writer.discard()
        manifest_partial.unlink(missing_ok=True)
        raise
    return report.as_dict()


def _hash(workers: Executor, archive: Path, candidates: list[Candidate], limits: IngestLimits,
          report: IngestReport, image_sizes: bool = False) -> list[Candidate]:
    """The candidates whose bytes can be read within the limits and are not empty, with their sha256 (and, for
    images, their pixel count from the header)."""
    tasks = [MemberTask(archive, [candidate.info for candidate in chunk], limits, image_sizes=image_sizes)
             for chunk in chunked(candidates)]
    results = (item for chunk in workers.map(hash_chunk, tasks) for item in chunk)
    readable = []
    for candidate, (digest, reason, pixels) in zip(candidates, progress(results, f"{report.kind}: hashing",
                                                                        len(candidates)), strict=True):
        if reason:
            report.add_bad(candidate.file, reason)
        else:
            candidate.sha256, candidate.pixels = digest, pixels
            readable.append(candidate)
    return readable


def _check_total_size(candidates: list[Candidate], audio_target: AudioTarget | None, settings: IngestSettings,
                      fail: Callable[[str], Exception]) -> None:
    """Refuse, before decoding, a dataset whose decoded array would be larger than ingest.max_total_decoded_mb:
    images by their headers' width x height (one byte a pixel; an image over ingest.max_image_pixels will be a
    bad file, so it does not count), clips by their count (float32 samples)."""
    limit = settings.max_total_decoded_bytes
    if audio_target is None:
        total = sum(candidate.pixels for candidate in candidates
                    if candidate.pixels <= settings.limits.max_image_pixels)
        what = f"{len(candidates)} images, by their headers"
    else:
        total = len(candidates) * audio_target.samples * np.dtype(np.float32).itemsize
        what = f"{len(candidates)} clips of {audio_target.samples} samples"
    if total > limit:
        raise fail(f"the decoded dataset would take {mib(total)} ({what}), over ingest.max_total_decoded_mb "
                   f"({mib(limit)}); raise it where memory and disk allow: featurize holds about twice as much "
                   "(docs/reliability.md)")


def _drop_duplicates(candidates: list[Candidate], report: IngestReport) -> list[Candidate]:
    """The first of each content, in sorted member order. Identical files of different classes are all bad:
    no one can tell which label is right. One pass to group, one to decide: linear in the candidates."""
    copies_of: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        copies_of.setdefault(candidate.sha256, []).append(candidate)
    # For each content, the first copy of another class than the first copy's, if any.
    other_class: dict[str, Candidate | None] = {
        sha256: next((copy for copy in copies if copy.class_name != copies[0].class_name), None)
        for sha256, copies in copies_of.items()}
    unique = []
    for candidate in candidates:
        first = copies_of[candidate.sha256][0]
        conflict = other_class[candidate.sha256]
        if conflict is not None:
            other = first if candidate.class_name != first.class_name else conflict
            report.add_bad(candidate.file, (
                f"identical content in different classes: {display_name(candidate.file)} ({candidate.class_name}) "
                f"and {display_name(other.file)} ({other.class_name})"))
        elif candidate is first:
            unique.append(candidate)
        else:
            report.add_duplicate(candidate.file, first.file)
    return unique


def _decode_into(writer: NpyAppender, workers: Executor, archive: Path, candidates: list[Candidate],
                 limits: IngestLimits, audio_target: AudioTarget | None,
                 report: IngestReport) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """Decode the candidates, append the good ones to `writer`; return them with their manifest details."""
    tasks = [MemberTask(archive, [candidate.info for candidate in chunk], limits, audio_target)
             for chunk in chunked(candidates, decode_chunk_items(limits, audio_target))]
    results = (item for chunk in workers.map(decode_chunk, tasks) for item in chunk)
    kept: list[Candidate] = []
    details: list[dict[str, Any]] = []
    offset = 0
    for candidate, (decoded, reason) in zip(candidates, progress(results, f"{report.kind}: decoding", len(candidates)),
                                            strict=True):
        if reason:
            report.add_bad(candidate.file, reason)
            continue
        if isinstance(decoded, Clip):
            writer.append(decoded.samples[np.newaxis, :])
            details.append({"source_samples": decoded.source_samples,
                            "source_sample_rate": decoded.source_sample_rate})
        else:
            writer.append(decoded.ravel())
            height, width = decoded.shape
            details.append({"height": height, "width": width, "offset": offset})
            offset += decoded.size
        kept.append(candidate)
    if audio_target is None:
        report.decoded = {"image_sizes": dict(sorted(Counter(
            f"{entry['height']}x{entry['width']}" for entry in details).items()))}
    else:
        report.decoded = {"source_sample_rates": dict(sorted(Counter(
            f"{entry['source_sample_rate']:g}" for entry in details).items()))}
    return kept, details


