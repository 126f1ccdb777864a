"""Synthetic steel-strip surface-defect images in the layout of the NEU-data-TrainTest archive.

Each image is a noisy steel-like background (illumination gradient, low-frequency shading,
streaks along the rolling direction, grain) with one class of defect drawn on it. Defect shapes
are rasterised by PIL from NumPy-generated geometry and softened by a blur; every size is given
for a 200-pixel image and scaled with the requested side. The rolling direction is vertical, as
in the NEU images.

Any class name works. The six NEU names (exactly as spelt in NEU_DET_PREFIXES) have hand-made
defects and backgrounds. Any other name gets a look derived from a SHA-256 of the name
(`vision_look`): one of the six defect shapes, drawn along or across the rolling direction, darker
or brighter than the strip, at its own contrast, on a strip of its own brightness band and grain.
So a class always looks the same, whatever else is in the list, and two different names rarely
look alike.

`build_anomaly_archive` writes a second archive for anomaly detectors: defect-free strips of a normal class
(`render_normal`) beside the same defect images, each with its mask (`render_defect_with_mask`, which draws exactly
`render_defect`'s image), so the classifier archive's bytes do not depend on it.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vapm.core.progress import progress
from vapm.data.synth.archive import (BuiltArchive, SynthError, check_class_list, digest_unit, member_rng, name_digest,
                                     slug, write_zip)

VISION_ROOT = "NEU-data-TrainTest"
JPEG_QUALITY = 90
MIN_IMAGE_SIZE = 16

# Folder name -> NEU-DET file-name prefix (Rolled/rolled-in_scale_7.jpg). Other classes use `slug(name)`.
NEU_DET_PREFIXES = {
    "Crazing": "crazing",
    "Inclusion": "inclusion",
    "Patches": "patches",
    "Pitted": "pitted_surface",
    "Rolled": "rolled-in_scale",
    "Scratches": "scratches",
}


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise varying on the scale of size/cells pixels."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BICUBIC), dtype=np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _background(rng: np.random.Generator, size: int, brightness: tuple[float, float],
                grain_level: tuple[float, float]) -> np.ndarray:
    scale = size / 200.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    direction = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0, 20) * (xs * np.cos(direction) + ys * np.sin(direction) - 0.5)
    shading = rng.uniform(3, 10) * _smooth_field(rng, size, int(rng.integers(2, 5)))
    # Rolling leaves faint streaks along the strip: per-column offsets, slightly smoothed across columns.
    kernel = np.ones(max(1, round(2 * scale)), dtype=np.float32)
    columns = np.convolve(rng.standard_normal(size).astype(np.float32), kernel / kernel.sum(), mode="same")
    streaks = rng.uniform(1, 4) * columns[None, :]
    coarse_grain = _smooth_field(rng, size, max(2, size // 3))
    grain = rng.uniform(*grain_level) * rng.standard_normal((size, size)).astype(np.float32) + rng.uniform(1, 5) * coarse_grain
    return rng.uniform(*brightness) + gradient + shading + streaks + grain + _blemishes(rng, size)


def _blemishes(rng: np.random.Generator, size: int) -> np.ndarray:
    """A few faint specks and, sometimes, a faint line on any strip, so no single dark mark gives the class away."""
    scale = size / 200.0
    count = int(rng.integers(0, 4))
    centres = rng.uniform(0, size, (count, 2))
    semi_axes = rng.uniform(0.8, 3.0, (count, 2)) * scale
    specks = _rasterise(size, 0.7 * scale, polygons=_ellipses(centres, semi_axes, rng.uniform(0, np.pi, count), 8))
    blemish = -rng.uniform(10, 25) * specks
    if rng.random() < 0.3:
        ends = rng.uniform(0, size, (1, 2, 2))
        blemish += rng.choice([-1.0, 1.0]) * rng.uniform(5, 15) * _rasterise(size, 0.6 * scale, polylines=ends)
    return blemish


def _rasterise(size: int, blur: float, polygons: np.ndarray | None = None,
               polylines: np.ndarray | None = None, line_width: int = 1) -> np.ndarray:
    """Fill polygons (k, vertices, 2) and/or draw polylines (k, points, 2) (x, y); return a [0, 1] mask."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in () if polygons is None else polygons:
        draw.polygon(polygon.ravel().tolist(), fill=255)
    for line in () if polylines is None else polylines:
        draw.line(line.ravel().tolist(), fill=255, width=line_width, joint="curve")
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _ellipses(centres: np.ndarray, semi_axes: np.ndarray, angles: np.ndarray, vertices: int = 12) -> np.ndarray:
    """Polygons (k, vertices, 2) approximating ellipses; angle 0 puts the long axis along the rolling direction."""
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    across = semi_axes[:, 1:2] * np.cos(t)[None, :]
    along = semi_axes[:, 0:1] * np.sin(t)[None, :]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x = centres[:, 0:1] + across * cos + along * sin
    y = centres[:, 1:2] - across * sin + along * cos
    return np.stack([x, y], axis=-1)


def _crazing(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    scale = size / 200.0
    count, segments = int(rng.integers(40, 110)), 5
    starts = rng.uniform(0, size, (count, 1, 2))
    # Cracks run roughly across the rolling direction and wander.
    heading = np.pi / 2 + rng.normal(0, 0.6, (count, 1)) + np.cumsum(rng.normal(0, 0.6, (count, segments)), axis=1)
    steps = rng.uniform(1.5, 5, (count, segments)) * scale
    moves = np.stack([steps * np.sin(heading), steps * np.cos(heading)], axis=-1)
    polylines = np.concatenate([starts, starts + np.cumsum(moves, axis=1)], axis=1)
    width = max(1, round(rng.uniform(1, 2.2) * scale))
    mask = _rasterise(size, 0.3 + 0.4 * scale, polylines=polylines, line_width=width)
    return mask, -rng.uniform(35, 75)


def _inclusion(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    scale = size / 200.0
    count = int(rng.integers(2, 9))
    column = rng.uniform(0.15, 0.85) * size
    centres = np.stack([column + rng.normal(0, 8 * scale, count), rng.uniform(0, size, count)], axis=1)
    semi_axes = np.stack([rng.uniform(5, 18, count), rng.uniform(1.5, 3.5, count)], axis=1) * scale
    polygons = _ellipses(centres, semi_axes, rng.normal(0, 0.15, count))
    return _rasterise(size, scale, polygons=polygons), -rng.uniform(45, 90)


def _patches(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    field = _smooth_field(rng, size, int(rng.integers(3, 7)))
    mask = 1.0 / (1.0 + np.exp(-(field - rng.uniform(0.3, 1.0)) / rng.uniform(0.1, 0.35)))
    mottling = 1.0 + 0.2 * _smooth_field(rng, size, max(2, size // 4))
    return np.clip(mask * mottling, 0, None), -rng.uniform(60, 120)


def _pitted(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    scale = size / 200.0
    count = int(rng.integers(40, 140))
    clustered = rng.random(count) < rng.uniform(0.4, 0.9)
    band = rng.normal(rng.uniform(0.15, 0.85) * size, rng.uniform(10, 35) * scale, count)
    xs = np.where(clustered, band, rng.uniform(0, size, count))
    centres = np.stack([xs, rng.uniform(0, size, count)], axis=1)
    radii = rng.uniform(1.2, 3.2, count) * scale
    semi_axes = np.stack([radii * rng.uniform(1.0, 1.4, count), radii], axis=1)
    polygons = _ellipses(centres, semi_axes, rng.uniform(0, np.pi, count), vertices=8)
    return _rasterise(size, 0.6 * scale, polygons=polygons), -rng.uniform(40, 90)


def _rolled(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    scale = size / 200.0
    count = int(rng.integers(25, 70))
    centres = rng.uniform(0, size, (count, 2))
    semi_axes = np.stack([rng.uniform(4, 9, count), rng.uniform(1.2, 2.2, count)], axis=1) * scale
    angles = rng.normal(0, 0.35, count)
    flakes = _rasterise(size, 0.8 * scale, polygons=_ellipses(centres, semi_axes, angles))
    # A pressed-in flake catches light on one edge: a fainter bright copy, shifted along the strip.
    shifted = centres + np.array([0.0, 1.5 * scale])
    edges = _rasterise(size, 0.8 * scale, polygons=_ellipses(shifted, semi_axes, angles))
    return flakes - 0.5 * np.clip(edges - flakes, 0, None), -rng.uniform(30, 60)


def _scratches(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    scale = size / 200.0
    count = int(rng.integers(1, 4))
    angles = rng.normal(0, 0.12, count)
    half_lengths = rng.uniform(0.25, 0.5, count) * size * 1.1
    centres = rng.uniform(0.1, 0.9, (count, 2)) * size
    direction = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    polylines = np.stack([centres - half_lengths[:, None] * direction,
                          centres + half_lengths[:, None] * direction], axis=1)
    width = max(1, round(rng.uniform(1.5, 4) * scale))
    mask = _rasterise(size, 0.5 * scale, polylines=polylines, line_width=width)
    # Real scratches fade in and out along their length.
    mask *= np.clip(0.6 + 0.4 * _smooth_field(rng, size, 4), 0.1, 1.0)
    polarity = 1.0 if rng.random() < 0.7 else -1.0
    return mask, polarity * rng.uniform(60, 110)


DEFECT_RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, float]]] = {
    "Crazing": _crazing,
    "Inclusion": _inclusion,
    "Patches": _patches,
    "Pitted": _pitted,
    "Rolled": _rolled,
    "Scratches": _scratches,
}


# (brightness range, grain-noise std range) of the strip under each defect. As in NEU, the
# classes tend to come from differently finished strips (crazing bright and grainy, scratches
# and inclusions on darker, smoother steel), but the ranges overlap.
BACKGROUNDS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "Crazing": ((120, 185), (9, 16)),
    "Inclusion": ((85, 145), (2, 6)),
    "Patches": ((140, 200), (3, 8)),
    "Pitted": ((85, 170), (3, 7)),
    "Rolled": ((100, 155), (5, 9)),
    "Scratches": ((80, 135), (2, 6)),
}


Renderer = Callable[[np.random.Generator, int], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class VisionLook:
    """How one class is drawn: its defect shape, the strip under it, and how the defect is varied."""

    renderer: Renderer
    brightness: tuple[float, float]
    grain: tuple[float, float]
    contrast_gain: float = 1.0  # times the renderer's contrast; negative swaps dark and bright
    across: bool = False  # drawn across the rolling direction (the mask transposed)


# Derived looks: the strip's brightness is one of these bands (centre +- _BAND_HALF_WIDTH), its grain
# one of these steps (to step + _GRAIN_WIDTH); with the defect shape (6), its direction (2) and polarity (2)
# that makes 6 x 2 x 2 x 5 x 4 = 480 distinct looks, before the contrast gain (0.7-1.3).
_BRIGHTNESS_BANDS = (90.0, 110.0, 130.0, 150.0, 170.0)
_BAND_HALF_WIDTH = 12.0
_GRAIN_STEPS = (2.0, 5.0, 8.0, 11.0)
_GRAIN_WIDTH = 3.0


def vision_look(class_name: str) -> VisionLook:
    """The look of `class_name`: the hand-made one of a NEU class, else one derived from the name's hash."""
    if class_name in DEFECT_RENDERERS:
        return VisionLook(DEFECT_RENDERERS[class_name], *BACKGROUNDS[class_name])
    digest = name_digest("vision", class_name)
    shapes = sorted(DEFECT_RENDERERS)
    brightness = _BRIGHTNESS_BANDS[digest[2] % len(_BRIGHTNESS_BANDS)]
    grain = _GRAIN_STEPS[digest[3] % len(_GRAIN_STEPS)]
    return VisionLook(
        renderer=DEFECT_RENDERERS[shapes[digest[0] % len(shapes)]],
        brightness=(brightness - _BAND_HALF_WIDTH, brightness + _BAND_HALF_WIDTH),
        grain=(grain, grain + _GRAIN_WIDTH),
        contrast_gain=(-1.0 if digest[1] & 1 else 1.0) * (0.7 + 0.6 * digest_unit(digest, 4)),
        across=bool(digest[1] & 2),
    )


def file_prefix(class_name: str) -> str:
    """The file-name prefix of a class's images: NEU-DET's for the NEU classes, else a slug of the name."""
    return NEU_DET_PREFIXES.get(class_name) or slug(class_name)


def _example_paths(class_name: str) -> list[tuple[str, str | None]]:
    prefix = file_prefix(class_name)
    return [(f"{VISION_ROOT}/{split}/{class_name}/{prefix}_1.jpg", split) for split in ("train", "test")]


def check_classes(classes: Sequence[str]) -> None:
    """Refuse, with one SynthError, a class list the archive cannot be built for: names that cannot be a
    folder (empty, '/', '\\', control characters), the same name twice in any case, or names that ingest
    would read back as another class or split (e.g. 'Cr' beside 'Crazing', or a class called 'test')."""
    from vapm.data.ingest.labels import IMAGE_EXTENSIONS

    check_class_list("vision", classes, _example_paths, IMAGE_EXTENSIONS)


def render_defect(class_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One grey uint8 (size, size) image of `class_name` on a steel-like background."""
    return render_defect_with_mask(class_name, size, rng)[0]


# A pixel belongs to a defect's mask when the drawn defect changes it by at least this many grey levels.
MASK_MIN_EFFECT = 8.0


def render_defect_with_mask(class_name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`render_defect`'s image (the same bits from the same stream) and its defect mask: bool (size, size), True
    where the drawn defect changes the pixel by at least MASK_MIN_EFFECT grey levels (before rounding and clipping),
    flipped with the image. The strip's own faint specks and lines (`_blemishes`) are texture, not defect: normal
    images have them too."""
    if size < MIN_IMAGE_SIZE:
        raise SynthError(f"image size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
    look = vision_look(class_name)
    background = _background(rng, size, look.brightness, look.grain)
    mask, contrast = look.renderer(rng, size)
    if look.across:
        mask = mask.T
    effect = (look.contrast_gain * contrast) * mask
    image = background + effect
    image, effect = _random_flips(rng, image, effect)
    return _grey(image), np.abs(effect) >= MASK_MIN_EFFECT


def render_normal(classes: Sequence[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """One grey uint8 (size, size) defect-free strip: the background (with its blemishes) of one of `classes`,
    drawn at random, so that normal strips span the defect classes' brightness and grain and a detector must find
    the defect itself, not the strip it is on."""
    if size < MIN_IMAGE_SIZE:
        raise SynthError(f"image size must be at least {MIN_IMAGE_SIZE} pixels, got {size}")
    look = vision_look(classes[int(rng.integers(len(classes)))])
    image, = _random_flips(rng, _background(rng, size, look.brightness, look.grain))
    return _grey(image)


def _random_flips(rng: np.random.Generator, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The same random left-right and up-down flips (half the time each) of every array."""
    if rng.random() < 0.5:
        arrays = tuple(array[:, ::-1] for array in arrays)
    if rng.random() < 0.5:
        arrays = tuple(array[::-1, :] for array in arrays)
    return arrays


def _grey(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def vision_member_names(classes: Sequence[str], train_per_class: int,
                        test_per_class: int) -> list[tuple[str, str, int, str]]:
    """(split, class, number, member path) in archive order: class by class, train then test.

    Numbers run on from train into test (NEU: train 1-288, test 289-300), so names never collide.
    """
    names = []
    for class_name in classes:
        prefix = file_prefix(class_name)
        for split, numbers in (("train", range(1, train_per_class + 1)),
                               ("test", range(train_per_class + 1, train_per_class + test_per_class + 1))):
            for number in numbers:
                names.append((split, class_name, number, f"{VISION_ROOT}/{split}/{class_name}/{prefix}_{number}.jpg"))
    return names


def build_vision_archive(path: str | Path, classes: Sequence[str], image_size: int,
                         train_per_class: int, test_per_class: int, seed: int) -> BuiltArchive:
    """Write the synthetic NEU-data-TrainTest.zip; the same arguments always give the same bytes."""
    check_classes(classes)
    if train_per_class < 1 or test_per_class < 0:
        raise ValueError(f"need train_per_class >= 1 and test_per_class >= 0, got {train_per_class}, {test_per_class}")
    entries = vision_member_names(classes, train_per_class, test_per_class)

    def members() -> Iterator[tuple[str, bytes]]:
        for _split, class_name, number, name in progress(entries, desc="synthetic images", unit="image"):
            rng = member_rng(seed, "vision", class_name, number)
            yield name, encode_jpeg(render_defect(class_name, image_size, rng))

    # JPEG data does not deflate; NEU-data-TrainTest.zip stores its members too.
    count = write_zip(path, members(), compression=zipfile.ZIP_STORED)
    return BuiltArchive(Path(path), count, Path(path).stat().st_size)


# The anomaly archive: a defect-free class beside the defect classes, and every defect image's mask, in the
# NEU layout (train/ and test/ folders of class folders) with the masks in MVTec AD's place and naming:
# NEU-anomaly/ground_truth/<Class>/<image stem>_mask.png, 0/255 PNG. Ingest reads it with
#   ingest.vision_archive: data/sample/NEU-anomaly.zip, vision.classes: auto (or the list with the normal class),
#   ingest.vision_mask_pattern: ANOMALY_MASK_PATTERN
ANOMALY_ROOT = "NEU-anomaly"
ANOMALY_MASK_PATTERN = r"ground_truth/(?P<class>[^/]+)/(?P<stem>[^/]+)_mask\.png$"


@dataclass(frozen=True)
class AnomalyMember:
    split: str
    class_name: str
    number: int
    image: str  # member path of the JPEG
    mask: str | None  # member path of its mask PNG; None for the normal class


def anomaly_member_names(defect_classes: Sequence[str], normal_class: str, train_per_class: int, test_per_class: int,
                         defect_train: int) -> list[AnomalyMember]:
    """The anomaly archive's members in order: the normal class first, with `train_per_class` train and
    `test_per_class` test images; then each defect class with its first `defect_train` train images and all its
    `test_per_class` test images, numbered as in the classifier archive (so they are the same images)."""
    members = []
    for split, class_name, number, name in vision_member_names([normal_class, *defect_classes], train_per_class,
                                                               test_per_class):
        if class_name != normal_class and split == "train" and number > defect_train:
            continue
        image = name.replace(f"{VISION_ROOT}/", f"{ANOMALY_ROOT}/", 1)
        stem = image.rsplit("/", 1)[1][:-len(".jpg")]
        mask = None if class_name == normal_class else f"{ANOMALY_ROOT}/ground_truth/{class_name}/{stem}_mask.png"
        members.append(AnomalyMember(split, class_name, number, image, mask))
    return members


def encode_mask_png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def anomaly_defect_classes(classes: Sequence[str], normal_class: str) -> list[str]:
    """The defect classes of the anomaly archive for the vision classes `classes`: all of them, but the normal class
    (in any case) when the list has it: a class list of your own that holds its defect-free class keeps working."""
    return [name for name in classes if name.casefold() != normal_class.casefold()]


def check_anomaly_archive(defect_classes: Sequence[str], normal_class: str, train_per_class: int,
                          test_per_class: int, defect_train: int) -> None:
    """Refuse, with one SynthError, what build_anomaly_archive cannot build: a class list `check_classes` refuses
    (the normal class named like a defect class, in any case, included), or counts that leave a class out of a split
    (ingest wants every class in both)."""
    if not defect_classes:
        raise SynthError(f"the anomaly archive needs a defect class beside its normal class {normal_class!r}")
    check_classes([normal_class, *defect_classes])
    if train_per_class < 1 or test_per_class < 1 or not 1 <= defect_train <= train_per_class:
        raise SynthError(f"the anomaly archive needs train_per_class >= 1, test_per_class >= 1 and 1 <= "
                         f"anomaly_defect_train <= train_per_class (ingest wants every class in both splits), got "
                         f"{train_per_class}, {test_per_class} and {defect_train}")


def build_anomaly_archive(path: str | Path, defect_classes: Sequence[str], normal_class: str, image_size: int,
                          train_per_class: int, test_per_class: int, defect_train: int, seed: int) -> BuiltArchive:
    """Write the synthetic NEU-anomaly.zip (`anomaly_member_names`): defect-free strips of `normal_class`
    (`render_normal`) and the defect classes' images, each with its mask (`render_defect_with_mask`); a defect image
    is the very image of the same name in build_vision_archive's archive for the same seed and size. The same
    arguments always give the same bytes."""
    check_anomaly_archive(defect_classes, normal_class, train_per_class, test_per_class, defect_train)
    entries = anomaly_member_names(defect_classes, normal_class, train_per_class, test_per_class, defect_train)

    def members() -> Iterator[tuple[str, bytes]]:
        for entry in progress(entries, desc="synthetic anomaly images", unit="image"):
            if entry.mask is None:
                rng = member_rng(seed, "vision-normal", entry.class_name, entry.number)
                yield entry.image, encode_jpeg(render_normal(defect_classes, image_size, rng))
                continue
            rng = member_rng(seed, "vision", entry.class_name, entry.number)
            image, mask = render_defect_with_mask(entry.class_name, image_size, rng)
            yield entry.image, encode_jpeg(image)
            yield entry.mask, encode_mask_png(mask)

    count = write_zip(path, members(), compression=zipfile.ZIP_STORED)
    return BuiltArchive(Path(path), count, Path(path).stat().st_size)
