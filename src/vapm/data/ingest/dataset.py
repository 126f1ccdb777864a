"""Turning one archive into data/interim/<dataset>/: manifest, decoded data, and a report."""
from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from vapm.config.settings import ParamsError
from vapm.core.errors import VapmError
from vapm.core.progress import progress
from vapm.data.ingest.archive import ArchiveError, check_members, clean_reason, display_name, open_archive
from vapm.data.ingest.decode import AudioTarget, Clip
from vapm.data.ingest.labels import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    UnknownClass,
    class_from_path,
    ignore_reason,
    split_from_path,
)
from vapm.data.ingest.limits import IngestLimits
from vapm.data.ingest.npy_stream import NpyAppender
from vapm.data.ingest.parallel import (
    MemberTask,
    Workers,
    chunked,
    decode_chunk,
    decode_chunk_items,
    forget_archives,
    hash_chunk,
    remember_archive,
)

VISION_COLUMNS = ["item", "file", "class", "label", "split", "sha256", "height", "width", "offset", "source_archive"]
ACOUSTIC_COLUMNS = ["item", "file", "class", "label", "split", "sha256", "source_samples", "source_sample_rate",
                    "source_archive"]
BAD_FILE_POLICIES = ("fail", "skip")
_LISTED_IN_MESSAGES = 20
# Below this much member data, decoding in this process beats paying for starting worker processes
# (measured on 2 cores: the 85 MB of 320 WAV clips or 1800 JPEGs decode in about a second).
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
        limits=IngestLimits(max_member_bytes=max(1, int(config.max_member_mb * 2**20)),
                            max_image_pixels=config.max_image_pixels, max_source_samples=config.max_source_samples))


def audio_target(settings: Any) -> AudioTarget:
    """What every clip becomes, from the validated params' `audio` section."""
    return AudioTarget(sample_rate=settings.audio.sample_rate, samples=settings.audio.clip_samples,
                       length_tolerance=settings.audio.length_tolerance)


@dataclass
class _Candidate:
    info: zipfile.ZipInfo
    class_name: str
    archive_split: str | None
    sha256: str = ""

    @property
    def file(self) -> str:
        return self.info.filename


@dataclass
class _Report:
    archive: str
    kind: str
    members_seen: int = 0
    ignored: list[dict[str, str]] = field(default_factory=list)
    bad: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    split_source: str | None = None
    kept: dict[str, Any] = field(default_factory=dict)
    decoded: dict[str, dict[str, int]] = field(default_factory=dict)  # sizes or sample rates seen

    def add_bad(self, member_name: str, reason: str) -> None:
        """Record a bad file; names and reasons are made printable and reproducible here, once for all."""
        self.bad.append({"file": display_name(member_name), "reason": clean_reason(reason)})

    def add_ignored(self, member_name: str, reason: str) -> None:
        self.ignored.append({"file": display_name(member_name), "reason": reason})

    def add_duplicate(self, member_name: str, first_name: str) -> None:
        self.duplicates.append({"file": display_name(member_name), "duplicate_of": display_name(first_name)})

    def as_dict(self, error: str | None = None) -> dict[str, Any]:
        def ordered(entries: list[dict[str, str]]) -> list[dict[str, str]]:
            return sorted(entries, key=lambda entry: tuple(entry.values()))

        report = {
            "archive": self.archive, "kind": self.kind, "members_seen": self.members_seen,
            "ignored": ordered(self.ignored),
            "bad": ordered(self.bad),
            "duplicates": ordered(self.duplicates),
            "split_source": self.split_source, "kept": self.kept, "decoded": self.decoded,
            "status": "failed" if error else "ok",
        }
        if error:
            report["error"] = error
        return report


def ingest_vision(archive: str | Path, classes: list[str], out_dir: str | Path,
                  settings: IngestSettings) -> dict[str, Any]:
    """Decode every image of `archive` into out_dir/{manifest.parquet,pixels.npy}; return the report."""
    return _ingest(Path(archive), "vision", list(classes), Path(out_dir), settings, audio_target=None)


def ingest_acoustic(archive: str | Path, classes: list[str], out_dir: str | Path, settings: IngestSettings,
                    target: AudioTarget) -> dict[str, Any]:
    """Decode every clip of `archive` into out_dir/{manifest.parquet,clips.npy}; return the report."""
    return _ingest(Path(archive), "acoustic", list(classes), Path(out_dir), settings, audio_target=target)


def _ingest(archive: Path, kind: str, classes: list[str], out_dir: Path, settings: IngestSettings,
            audio_target: AudioTarget | None) -> dict[str, Any]:
    report = _Report(archive=str(archive), kind=kind)
    data_name = "pixels.npy" if audio_target is None else "clips.npy"
    for stale in (out_dir / "manifest.parquet", out_dir / data_name, out_dir / "record.json"):
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
        try:
            return _ingest_members(members, archive, kind, classes, out_dir, data_name, settings,
                                   audio_target, report, fail)
        finally:
            forget_archives()


def _ingest_members(members: list[zipfile.ZipInfo], archive: Path, kind: str,
                    classes: list[str], out_dir: Path, data_name: str, settings: IngestSettings,
                    audio_target: AudioTarget | None, report: _Report,
                    fail: Callable[[str], IngestError]) -> dict[str, Any]:
    report.members_seen = len(members)
    candidates = _find_candidates(members, kind, classes, report)
    if not candidates and not report.bad:
        extensions = IMAGE_EXTENSIONS if audio_target is None else AUDIO_EXTENSIONS
        raise fail(f"no data files ({', '.join(extensions)}) among its {len(members)} members")
    # Members over the size limit are refused unread, so they do not count as work.
    work_bytes = sum(min(candidate.info.file_size, settings.limits.max_member_bytes) for candidate in candidates)
    n_jobs = settings.n_jobs if work_bytes >= PARALLEL_MIN_BYTES else 1

    out_dir.mkdir(parents=True, exist_ok=True)
    if audio_target is None:
        writer = NpyAppender(out_dir / data_name, np.uint8)
    else:
        writer = NpyAppender(out_dir / data_name, np.float32, (audio_target.samples,))
    manifest_partial = out_dir / "manifest.parquet.partial"
    try:
        with Workers(n_jobs) as workers:
            candidates = _drop_duplicates(_hash(workers, archive, candidates, settings.limits, report), report)
            kept, details = _decode_into(writer, workers, archive, candidates, settings.limits, audio_target,
                                         report)
        if report.bad and settings.on_bad_file == "fail":
            raise fail(_bad_files_message(report.bad))
        splits = _assign_splits(kept, classes, settings, report, fail)
        _count_kept(kept, splits, classes, report)
        _check_every_class_in_both_splits(report, fail)
        columns = VISION_COLUMNS if audio_target is None else ACOUSTIC_COLUMNS
        _manifest(kept, splits, details, classes, archive, columns).to_parquet(manifest_partial, index=False)
        writer.finish()
        manifest_partial.replace(out_dir / "manifest.parquet")
    except BaseException:
        writer.discard()
        manifest_partial.unlink(missing_ok=True)
        raise
    return report.as_dict()


def _find_candidates(members: list[zipfile.ZipInfo], kind: str, classes: list[str],
                     report: _Report) -> list[_Candidate]:
    extensions = IMAGE_EXTENSIONS if kind == "vision" else AUDIO_EXTENSIONS
    name_counts = Counter(info.filename for info in members)
    candidates: list[_Candidate] = []
    refused_names: set[str] = set()
    for info in sorted(members, key=lambda info: info.filename):
        name = info.filename
        reason = "directory" if info.is_dir() else ignore_reason(name, extensions)
        if reason:
            report.add_ignored(name, reason)
            continue
        if name_counts[name] > 1:
            # zipfile (like most readers) would return only the last of them, whichever entry is meant.
            if name not in refused_names:
                refused_names.add(name)
                report.add_bad(name, f"{name_counts[name]} members of the archive have this name; none is read "
                                     "(re-create the archive with unique names)")
            continue
        try:
            candidates.append(_Candidate(info, class_from_path(name, classes), split_from_path(name)))
        except UnknownClass as err:
            report.add_bad(name, str(err))
    if any(candidate.archive_split for candidate in candidates):
        report.split_source = "archive"
        for candidate in candidates:
            if candidate.archive_split is None:
                report.add_bad(candidate.file, "not inside a train/ or test/ folder, "
                                               "though the archive splits its other files so")
        candidates = [candidate for candidate in candidates if candidate.archive_split]
    else:
        report.split_source = "stratified"
    return candidates


def _hash(workers: Workers, archive: Path, candidates: list[_Candidate], limits: IngestLimits,
          report: _Report) -> list[_Candidate]:
    """The candidates whose bytes can be read within the limits and are not empty, with their sha256."""
    tasks = [MemberTask(archive, [candidate.info for candidate in chunk], limits) for chunk in chunked(candidates)]
    results = (item for chunk in workers.map(hash_chunk, tasks) for item in chunk)
    readable = []
    for candidate, (digest, reason) in zip(candidates, progress(results, f"{report.kind}: hashing", len(candidates)),
                                           strict=True):
        if reason:
            report.add_bad(candidate.file, reason)
        else:
            candidate.sha256 = digest
            readable.append(candidate)
    return readable


def _drop_duplicates(candidates: list[_Candidate], report: _Report) -> list[_Candidate]:
    """The first of each content, in sorted member order. Identical files of different classes are all bad:
    no one can tell which label is right. One pass to group, one to decide: linear in the candidates."""
    copies_of: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        copies_of.setdefault(candidate.sha256, []).append(candidate)
    # For each content, the first copy of another class than the first copy's, if any.
    other_class: dict[str, _Candidate | None] = {
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


def _decode_into(writer: NpyAppender, workers: Workers, archive: Path, candidates: list[_Candidate],
                 limits: IngestLimits, audio_target: AudioTarget | None,
                 report: _Report) -> tuple[list[_Candidate], list[dict[str, Any]]]:
    """Decode the candidates, append the good ones to `writer`; return them with their manifest details."""
    tasks = [MemberTask(archive, [candidate.info for candidate in chunk], limits, audio_target)
             for chunk in chunked(candidates, decode_chunk_items(limits, audio_target))]
    results = (item for chunk in workers.map(decode_chunk, tasks) for item in chunk)
    kept: list[_Candidate] = []
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


def _bad_files_message(bad: list[dict[str, str]]) -> str:
    entries = sorted(bad, key=lambda entry: entry["file"])
    lines = [f"  {entry['file']}: {entry['reason']}" for entry in entries[:_LISTED_IN_MESSAGES]]
    if len(entries) > _LISTED_IN_MESSAGES:
        lines.append(f"  ... and {len(entries) - _LISTED_IN_MESSAGES} more (see the ingest report)")
    return (f"{len(entries)} bad file(s); set ingest.on_bad_file: skip to leave them out\n" + "\n".join(lines))


def _assign_splits(kept: list[_Candidate], classes: list[str], settings: IngestSettings, report: _Report,
                   fail: Callable[[str], IngestError]) -> list[str]:
    """The archive's own train/test folders when it has them, else a seeded stratified split."""
    if not kept:
        raise fail("no usable files left")
    if report.split_source == "archive":
        return [candidate.archive_split for candidate in kept]
    from sklearn.model_selection import train_test_split  # imported here: worker processes never need it

    labels = np.array([classes.index(candidate.class_name) for candidate in kept])
    try:
        _, test_items = train_test_split(np.arange(len(kept)), test_size=settings.test_fraction,
                                         stratify=labels, random_state=settings.seed)
    except ValueError as err:
        raise fail(f"cannot make a stratified split with ingest.test_fraction={settings.test_fraction}: {err}") from err
    splits = np.full(len(kept), "train", dtype=object)
    splits[test_items] = "test"
    return splits.tolist()


def _count_kept(kept: list[_Candidate], splits: list[str], classes: list[str], report: _Report) -> None:
    counts = Counter(zip((candidate.class_name for candidate in kept), splits))
    report.kept = {
        "total": len(kept),
        "train": splits.count("train"),
        "test": splits.count("test"),
        "per_class": {name: {"train": counts[name, "train"], "test": counts[name, "test"]} for name in classes},
    }


def _check_every_class_in_both_splits(report: _Report, fail: Callable[[str], IngestError]) -> None:
    missing = [f"{name} has no {split} items" for name, counts in report.kept["per_class"].items()
               for split in ("train", "test") if counts[split] == 0]
    if missing:
        raise fail("every class needs train and test items: " + "; ".join(missing))


def _manifest(kept: list[_Candidate], splits: list[str], details: list[dict[str, Any]], classes: list[str],
              archive: Path, columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({
        "item": np.arange(len(kept), dtype=np.int64),
        "file": [candidate.file for candidate in kept],
        "class": [candidate.class_name for candidate in kept],
        "label": np.array([classes.index(candidate.class_name) for candidate in kept], dtype=np.int64),
        "split": splits,
        "sha256": [candidate.sha256 for candidate in kept],
        "source_archive": str(archive),
    })
    for name in columns:
        if name not in frame:
            frame[name] = [entry[name] for entry in details]
    dtypes = {"height": np.int64, "width": np.int64, "offset": np.int64, "source_samples": np.int64,
              "source_sample_rate": np.float64}
    return frame[columns].astype({name: dtype for name, dtype in dtypes.items() if name in columns})
