"""Per-member limits that bound what one member may cost to read and decode, whatever the archive holds.

Each is checked before the work it bounds: the member's declared size before reading it (and again while
streaming it, since headers can lie), an image's width x height from its header before decoding, a clip's
samples from its header (or the .dat values as they are parsed) before resampling. A member over a limit
is a bad file with a reason naming the limit's key. docs/reliability.md derives the memory bound from them.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from vapm.config.settings import PILLOW_MAX_IMAGE_PIXELS as _PILLOW_LIMIT
from vapm.config.settings import ParamsError

# Pillow refuses images of more than twice this many pixels itself (DecompressionBombError), before
# our own check could name the limit; so our limit may not exceed it.
PILLOW_MAX_IMAGE_PIXELS = int(Image.MAX_IMAGE_PIXELS or _PILLOW_LIMIT)

DEFAULT_MAX_MEMBER_BYTES = 64 * 2**20
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_SOURCE_SAMPLES = 2**22  # 3 s at 1.4 MHz; a 3 s clip at 192 kHz has 576,000


@dataclass(frozen=True)
class IngestLimits:
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES  # uncompressed size of one member
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # width x height of one image
    max_source_samples: int = DEFAULT_MAX_SOURCE_SAMPLES  # samples per channel of one clip, before resampling

    def __post_init__(self) -> None:
        for key, value, low, high in (
                ("ingest.max_member_mb", self.max_member_bytes, 1, None),
                ("ingest.max_image_pixels", self.max_image_pixels, 1, PILLOW_MAX_IMAGE_PIXELS),
                ("ingest.max_source_samples", self.max_source_samples, 1, None)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                allowed = f"between {low} and {high:,}" if high else f"at least {low}"
                raise ParamsError(f"{key} must be a whole number {allowed}, got {value!r}")


# The memory one member's work may take beyond the process's base (imports, the archive's directory),
# derived from what the code holds at its worst (docs/reliability.md, "Memory bound"):
# - an image: the member's bytes, then Pillow's decoded image (4 bytes a pixel for RGBA, LA, CMYK), its
#   RGBA conversion, a white background and the composite (4 each), the grey result and its array (1 each)
#   -> under 20 bytes a pixel;
# - a clip: the member's bytes, the values parsed block by block and joined (8 + 8 bytes a sample), the
#   resampled clip in float64 and float32 (12 bytes a clip sample, 16 allowed);
# - fixed: one task's decoded results (parallel.CHUNK_RESULT_BYTES, 32 MiB) and the read and parse blocks.
BOUND_BYTES_PER_PIXEL = 20
BOUND_BYTES_PER_SOURCE_SAMPLE = 16
BOUND_BYTES_PER_CLIP_SAMPLE = 16
BOUND_FIXED_BYTES = 48 * 2**20
BOUND_BYTES_PER_MEMBER = 4096  # ZipInfo, candidate, manifest row, report entry: 2.4 KiB measured at 20,000 members


def member_work_bound(limits: IngestLimits, clip_samples: int) -> int:
    """The most memory, in bytes, that reading and decoding one member can add to a process."""
    image = BOUND_BYTES_PER_PIXEL * limits.max_image_pixels
    clip = (BOUND_BYTES_PER_SOURCE_SAMPLE * limits.max_source_samples
            + BOUND_BYTES_PER_CLIP_SAMPLE * clip_samples)
    return limits.max_member_bytes + max(image, clip) + BOUND_FIXED_BYTES


def mib(n_bytes: int) -> str:
    """A size for a reason: '3.0 MiB' (one decimal, so reasons stay short and reproducible)."""
    return f"{n_bytes / 2**20:.1f} MiB"
