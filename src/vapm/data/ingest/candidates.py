"""Which members of an archive are data (with their class and split), which are masks, and the class list.

Reads names only, so every check here runs before any member is read.
"""
from __future__ import annotations

import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from vapm.data.ingest.labels import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, UnknownClass, ignore_reason, split_from_path
from vapm.data.ingest.layout import ClassNames, Layout, image_stem
from vapm.data.ingest.manifest import Candidate
from vapm.data.ingest.report import IngestReport

MIN_ITEMS_PER_CLASS = 2  # one to train on and one to test on


@dataclass
class Found:
    candidates: list[Candidate]
    classes: list[str]
    masks: dict[tuple[str, str], zipfile.ZipInfo] = field(default_factory=dict)  # (class, image stem) -> mask


def find_candidates(members: list[zipfile.ZipInfo], kind: str, layout: Layout, report: IngestReport) -> Found:
    """Sort the members into data candidates, masks, ignored and bad (recorded in `report`)."""
    extensions = IMAGE_EXTENSIONS if kind == "vision" else AUDIO_EXTENSIONS
    name_counts = Counter(info.filename for info in members)
    names = ClassNames(layout)
    candidates: list[Candidate] = []
    raw_masks: list[tuple[str, str, zipfile.ZipInfo]] = []
    refused_names: set[str] = set()
    for info in sorted(members, key=lambda info: info.filename):
        name = info.filename
        reason = "directory" if info.is_dir() else ignore_reason(name, extensions)
        if reason:
            report.add_ignored(name, reason)
            continue
        mask = layout.mask_key(name)
        if mask is not None:
            raw_masks.append((*mask, info))
            continue
        if name_counts[name] > 1:
            # zipfile (like most readers) would return only the last of them, whichever entry is meant.
            if name not in refused_names:
                refused_names.add(name)
                report.add_bad(name, f"{name_counts[name]} members of the archive have this name; none is read "
                                     "(re-create the archive with unique names)")
            continue
        try:
            raw = layout.raw_class(name)
            if raw is None:
                report.add_ignored(name, f"does not match {layout.pattern_key}")
                continue
            candidates.append(Candidate(info, names.add(raw), split_from_path(name)))
        except UnknownClass as err:
            report.add_bad(name, str(err))
    candidates = _archive_split(candidates, report)
    return Found(candidates, names.final(), _pair_masks(raw_masks, candidates, names, report))


def _archive_split(candidates: list[Candidate], report: IngestReport) -> list[Candidate]:
    if not any(candidate.archive_split for candidate in candidates):
        report.split_source = "stratified"
        return candidates
    report.split_source = "archive"
    for candidate in candidates:
        if candidate.archive_split is None:
            report.add_bad(candidate.file, "not inside a train/ or test/ folder (or valid/), "
                                           "though the archive splits its other files so")
    return [candidate for candidate in candidates if candidate.archive_split]


def _pair_masks(raw_masks: list[tuple[str, str, zipfile.ZipInfo]], candidates: list[Candidate], names: ClassNames,
                report: IngestReport) -> dict[tuple[str, str], zipfile.ZipInfo]:
    """Each mask under the (class, stem) of the image it belongs to; masks no image claims are ignored."""
    images = {(candidate.class_name, image_stem(candidate.file)) for candidate in candidates}
    masks: dict[tuple[str, str], zipfile.ZipInfo] = {}
    for raw_class, stem, info in raw_masks:
        key = (names.lookup(raw_class) or raw_class, stem)
        if key not in images:
            report.add_ignored(info.filename, "a mask with no image of the same class and stem")
        elif key in masks:
            report.add_bad(info.filename, f"a second mask for image stem {stem!r} of class {key[0]} "
                                          f"(the first is {masks[key].filename})")
        else:
            masks[key] = info
    return masks


def check_class_counts(found: Found, layout: Layout, fail: Callable[[str], Exception],
                       test_fraction: float | None = None) -> None:
    """Before any member is read: every class has files, enough of them to split, in every split it needs."""
    if not found.candidates:
        return  # every data file was refused by name: the bad files say why
    if layout.classes is None and len(found.classes) == 1:
        raise fail(f"classes: auto found one class only ({found.classes[0]!r}); a classifier needs two or more. "
                   f"If the class is in the file name or elsewhere in the path, give {layout.pattern_key}")
    counts = Counter(candidate.class_name for candidate in found.candidates)
    missing = [name for name in found.classes if counts[name] == 0]
    if missing:
        present = sorted(name for name in counts if counts[name])
        raise fail(f"{layout.classes_key} lists {missing} but the archive has no files of "
                   f"{'it' if len(missing) == 1 else 'them'} (classes with files: {present}); fix the list, "
                   f"or set {layout.classes_key}: auto")
    if found.candidates and found.candidates[0].archive_split is not None:
        splits = Counter((candidate.class_name, candidate.split) for candidate in found.candidates)
        short = [f"{name} has no {split} files" for name in found.classes for split in ("train", "test")
                 if splits[name, split] == 0]
    else:
        short = [f"{name} has {counts[name]} file{'s' if counts[name] != 1 else ''}" for name in found.classes
                 if counts[name] < MIN_ITEMS_PER_CLASS]
    if short:
        raise fail(f"too few files to split: {'; '.join(short)} (every class needs at least one train and one "
                   "test file); add files or leave the class out")
    if test_fraction is not None and found.candidates[0].archive_split is None:  # a stratified split
        n, k = len(found.candidates), len(found.classes)
        n_test = math.ceil(test_fraction * n)
        if n_test < k or n - n_test < k:
            raise fail(f"ingest.test_fraction {test_fraction:g} of {n} files gives {n_test} test and {n - n_test} "
                       f"train files, but a stratified split of {k} classes needs at least {k} in each; add files or "
                       "change ingest.test_fraction")

