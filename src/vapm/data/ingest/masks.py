"""Defect masks: a binary array per image, stored beside the images (data/interim/vision/masks.npy).

masks.npy is laid out like pixels.npy (the manifest's offset, height and width address both); an image without
a mask has zeros there and an empty `mask_file`. Masks are read with the same limits as images, and one of
another size than its image is resized to it (nearest neighbour: a mask stays binary).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from vapm.data.ingest.archive import read_member
from vapm.data.ingest.decode import decode_image
from vapm.data.ingest.errors import BadFile
from vapm.data.ingest.layout import image_stem
from vapm.data.ingest.limits import IngestLimits
from vapm.data.ingest.manifest import Candidate
from vapm.data.ingest.npy_stream import NpyAppender
from vapm.data.ingest.parallel import cached_archive
from vapm.data.ingest.report import IngestReport

MASKS_FILE = "masks.npy"


def binary_mask(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 of `shape`: pixels above half the mask's brightest value (0/1 and 0/255 masks alike)."""
    if grey.shape != shape:
        grey = np.asarray(Image.fromarray(grey).resize((shape[1], shape[0]), Image.Resampling.NEAREST))
    top = int(grey.max())
    return (grey > top / 2).astype(np.uint8) if top else np.zeros(shape, np.uint8)


def write_masks(out_dir: Path, archive: Path, kept: list[Candidate], shapes: list[tuple[int, int]],
                masks: dict[tuple[str, str], zipfile.ZipInfo], limits: IngestLimits,
                report: IngestReport) -> tuple[list[str], NpyAppender | None]:
    """Decode the mask of each kept image that has one into out_dir/masks.npy.partial: the mask member per image
    ('' for none) and the writer, to finish with the other outputs (None when no kept image has a mask). A mask
    that cannot be read is a bad file."""
    wanted = [masks.get((candidate.class_name, image_stem(candidate.file))) for candidate in kept]
    if not any(wanted):
        return [""] * len(kept), None
    zf = cached_archive(archive)
    writer = NpyAppender(Path(out_dir) / MASKS_FILE, np.uint8)
    files: list[str] = []
    try:
        for info, shape in zip(wanted, shapes, strict=True):
            mask = np.zeros(shape, np.uint8)
            if info is not None:
                try:
                    mask = binary_mask(decode_image(read_member(zf, info, limits.max_member_bytes), info.filename,
                                                    limits.max_image_pixels), shape)
                except BadFile as err:
                    report.add_bad(info.filename, f"mask: {err}")
                    info = None
            writer.append(mask.ravel())
            files.append(info.filename if info is not None else "")
    except BaseException:
        writer.discard()
        raise
    report.decoded["masks"] = {"paired": sum(1 for file in files if file), "images_without": files.count("")}
    return files, writer
