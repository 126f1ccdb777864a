"""Hostile and broken archives for the ingest fuzz suite: a catalogue of named cases with what each must
get, and a seeded generator of random mutations of valid files (docs/reliability.md tabulates both).

Every archive holds a small set of good members (so a skipped file leaves a usable dataset) plus the
hostile member(s). Sizes are relative to the test limits below, so bombs sit just under and just over
each limit.
"""
from __future__ import annotations

import io
import random
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from PIL import Image, ImageFile

# ---- the limits the suite runs under (params.yaml's `ingest` keys) ----
MAX_MEMBER_MB = 8
MAX_MEMBER_BYTES = MAX_MEMBER_MB * 2**20
MAX_IMAGE_PIXELS = 2**21  # 2,097,152: a 1448 x 1448 image is just under, 1449 x 1448 just over
MAX_SOURCE_SAMPLES = 2**19  # 524,288
MAX_UNCOMPRESSED_MB = 32
CLIP_SECONDS = 0.06  # 1000 samples at 50000/3 Hz
CLIP_SAMPLES = 1000
TARGET_RATE = 50000 / 3
VISION_CLASSES = ["Crazing", "Inclusion"]
AUDIO_CLASSES = ["Healthy", "LIV"]
VISION_DIR = "NEU/train/Crazing/"  # where a hostile image goes
AUDIO_DIR = "AirCompressor_Data/Healthy/"  # where a hostile clip goes


@dataclass
class Case:
    """One hostile archive and what ingest must do with it.

    expect: "bad" (the member `file` is a bad file whose reason matches `reason`: exit 1 naming it with
    on_bad_file: fail, a reported skip with skip), "refused" (the whole archive is refused, exit 1 under both
    policies, the message matching `reason`), "ok" (accepted), "duplicate" (`file` is reported as a
    duplicate), or "any" (random fuzz: only the invariants are checked).
    """

    name: str
    dataset: str  # vision | acoustic
    what: str  # one line for docs/reliability.md
    expect: str
    file: str | None = None
    reason: str = ""
    members: dict[str, bytes] = field(default_factory=dict)
    build: Callable[[Path], None] | None = None  # writes the archive itself (forged headers)

    def archive_name(self) -> str:
        return f"{self.name}.zip"


# ---- valid files of every accepted format ----

def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_bytes(pixels: np.ndarray, image_format: str, mode: str | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    ImageFile.MAXBLOCK = max(ImageFile.MAXBLOCK, 2**24)  # large progressive JPEGs need a large buffer
    Image.fromarray(pixels, mode).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png(seed: int = 0, shape: tuple[int, ...] = (8, 8)) -> bytes:
    return image_bytes(_pixels(seed, shape), "PNG")


def jpeg(seed: int = 0, shape: tuple[int, ...] = (16, 16)) -> bytes:
    return image_bytes(_pixels(seed, shape), "JPEG")


def bmp(seed: int = 0, shape: tuple[int, ...] = (8, 8)) -> bytes:
    return image_bytes(_pixels(seed, shape), "BMP")


def _gradient(side: int, channels: int) -> np.ndarray:
    """Compressible pixels, so a member at the pixel limit stays far under the size limit."""
    ramp = (np.arange(side, dtype=np.uint16) % 256).astype(np.uint8)
    return np.repeat(np.add.outer(ramp, ramp)[:, :, None], channels, axis=2)


def sound(samples: np.ndarray, rate: int, sound_format: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=sound_format, subtype=subtype)
    return buffer.getvalue()


def clip_values(seed: int, n: int = CLIP_SAMPLES) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.9, 0.9, n)


def dat(seed: int = 0, n: int = CLIP_SAMPLES) -> bytes:
    return "\n".join(repr(float(value)) for value in clip_values(seed, n)).encode() + b"\n"


def wav(seed: int = 0, rate: int = 16667, subtype: str = "PCM_16") -> bytes:
    return sound(clip_values(seed, round(rate * CLIP_SECONDS)), rate, "WAV", subtype)


def flac(seed: int = 0, rate: int = 16667) -> bytes:
    return sound(clip_values(seed, round(rate * CLIP_SECONDS)), rate, "FLAC")


def good_members(dataset: str, clip_samples: int = CLIP_SAMPLES) -> dict[str, bytes]:
    """The well-formed part of every archive: each class in both splits."""
    if dataset == "vision":
        return {f"NEU/{split}/{name}/{name.lower()}_{number}.png": png(100 * i + 10 * number + len(split))
                for i, name in enumerate(VISION_CLASSES) for split in ("train", "test") for number in range(2)}
    return {f"AirCompressor_Data/{name}/preprocess_Reading{number}.dat": dat(100 * i + number, clip_samples)
            for i, name in enumerate(AUDIO_CLASSES) for number in range(3)}


# ---- raw zip surgery, for headers no zip writer would produce ----

def write_zip(path: Path, members: dict[str, bytes] | list[tuple[str | zipfile.ZipInfo, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> None:
    items = members.items() if isinstance(members, dict) else members
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": intended
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in items:
                zf.writestr(name, data)


def _patch_sizes(raw: bytearray, member: str, declared: int) -> None:
    """Make the local and central headers of `member` declare `declared` uncompressed bytes."""
    encoded = member.encode()
    local = 0
    while True:
        local = raw.find(b"PK\x03\x04", local)
        name_length = struct.unpack_from("<H", raw, local + 26)[0]
        if raw[local + 30:local + 30 + name_length] == encoded:
            break
        local += 4
    struct.pack_into("<I", raw, local + 22, declared)
    central = 0
    while True:
        central = raw.find(b"PK\x01\x02", central)
        name_length = struct.unpack_from("<H", raw, central + 28)[0]
        if raw[central + 46:central + 46 + name_length] == encoded:
            break
        central += 4
    struct.pack_into("<I", raw, central + 24, declared)


def lying_size_builder(members: dict[str, bytes], member: str, declared: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        write_zip(path, members)
        raw = bytearray(path.read_bytes())
        _patch_sizes(raw, member, declared)
        path.write_bytes(bytes(raw))
    return build


def flag_builder(members: dict[str, bytes], member: str, set_flags: int) -> Callable[[Path], None]:
    """Set general-purpose flag bits of one member in both headers (0x1: encrypted)."""
    def build(path: Path) -> None:
        write_zip(path, members)
        raw = bytearray(path.read_bytes())
        encoded = member.encode()
        for signature, flag_at, name_at, length_at in ((b"PK\x03\x04", 6, 30, 26), (b"PK\x01\x02", 8, 46, 28)):
            at = 0
            while (at := raw.find(signature, at)) >= 0:
                length = struct.unpack_from("<H", raw, at + length_at)[0]
                if raw[at + name_at:at + name_at + length] == encoded:
                    flags = struct.unpack_from("<H", raw, at + flag_at)[0]
                    struct.pack_into("<H", raw, at + flag_at, flags | set_flags)
                at += 4
        path.write_bytes(bytes(raw))
    return build


def invalid_utf8_name_builder(members: dict[str, bytes]) -> Callable[[Path], None]:
    """A member whose name is flagged UTF-8 but is not: zipfile cannot even list the archive."""
    def build(path: Path) -> None:
        placeholder = VISION_DIR + "XXXX.png"
        write_zip(path, {**members, placeholder: png(7)})
        raw = bytearray(path.read_bytes())
        raw[:] = raw.replace(b"XXXX", b"\xff\xfe\xfd\xfc")
        for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = 0
            while (at := raw.find(signature, at)) >= 0:
                flags = struct.unpack_from("<H", raw, at + flag_at)[0]
                struct.pack_into("<H", raw, at + flag_at, flags | 0x800)
                at += 4
        path.write_bytes(bytes(raw))
    return build


def symlink_builder(members: dict[str, bytes], member: str, target: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        info = zipfile.ZipInfo(member)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        write_zip(path, [*members.items(), (info, target.encode())])
    return build


def compression_builder(members: dict[str, bytes], member: str, data: bytes, method: int) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        write_zip(path, members)
        with zipfile.ZipFile(path, "a", compression=method) as zf:
            zf.writestr(member, data)
    return build


def truncated_archive_builder(members: dict[str, bytes], keep: float) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        write_zip(path, members)
        raw = path.read_bytes()
        path.write_bytes(raw[:int(len(raw) * keep)])
    return build


# ---- crafted headers ----

def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` grey pixels, with one empty IDAT: a decompression bomb
    that costs nothing to build."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(jpeg(3))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(bmp(3))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def wav_claiming_frames(frames: int) -> bytes:
    """A 16-bit mono WAV whose data chunk claims `frames` frames but holds 1000."""
    data = bytearray(wav(5))
    at = data.find(b"data")
    struct.pack_into("<I", data, at + 4, 2 * frames)
    return bytes(data)


def flac_claiming_samples(total: int) -> bytes:
    """A FLAC whose STREAMINFO says it holds `total` samples (it holds 1000)."""
    data = bytearray(flac(6))
    at = 18  # 'fLaC', the block header, block and frame sizes; then 64 bits: rate, channels, bits, total
    packed = int.from_bytes(data[at:at + 8], "big")
    packed = (packed & ~((1 << 36) - 1)) | (total & ((1 << 36) - 1))
    data[at:at + 8] = packed.to_bytes(8, "big")
    return bytes(data)


# ---- the catalogue ----

def catalogue() -> list[Case]:
    """Every named case; see docs/reliability.md for the table of what each gets."""
    cases: list[Case] = []
    vision, acoustic = good_members("vision"), good_members("acoustic")

    def bad(name: str, dataset: str, what: str, member: str, data: bytes, reason: str) -> None:
        base = vision if dataset == "vision" else acoustic
        folder = VISION_DIR if dataset == "vision" else AUDIO_DIR
        cases.append(Case(name, dataset, what, "bad", folder + member, reason, {**base, folder + member: data}))

    def refused(name: str, dataset: str, what: str, reason: str, members: dict[str, bytes] | None = None,
                build: Callable[[Path], None] | None = None) -> None:
        cases.append(Case(name, dataset, what, "refused", None, reason, members or {}, build))

    # Paths and links: the whole archive is refused.
    for number, evil in enumerate(["../evil.png", "NEU/train/Crazing/../../../evil.png", "/etc/evil.png",
                                   "C:/Windows/evil.png", "..\\evil.png", "NEU\\train\\..\\..\\..\\evil.png",
                                   "./../evil.png"]):
        refused(f"zip_slip_{number}", "vision", f"zip-slip member name `{evil}`",
                r"unsafe member .*(\.\.|absolute|drive)",
                {**vision, evil: png(9)})
    refused("symlink", "vision", "member stored as a symbolic link to /etc/passwd", "symbolic link",
            build=symlink_builder(vision, VISION_DIR + "link.png", "/etc/passwd"))
    refused("symlink_dir", "vision", "symbolic link named like a folder", "symbolic link",
            build=symlink_builder(vision, "NEU/train/Crazing", "/etc"))

    # Whole-archive damage.
    refused("not_a_zip", "vision", "text file named .zip", "not a readable zip archive",
            build=lambda path: path.write_bytes(b"this is not a zip archive\n"))
    refused("empty_file", "vision", "empty file named .zip", "not a readable zip archive",
            build=lambda path: path.write_bytes(b""))
    refused("truncated_zip", "vision", "zip cut at 60 % (central directory lost)", "not a readable zip archive",
            build=truncated_archive_builder(vision, 0.6))
    refused("invalid_utf8_name", "vision", "member name flagged UTF-8 but not UTF-8", "not a readable zip archive",
            build=invalid_utf8_name_builder(vision))
    refused("no_data_files", "vision", "archive with only a readme", r"no data files",
            {"NEU/readme.txt": b"nothing here"})
    refused("total_over_limit", "acoustic", f"5 members of 7 MiB zeros (over max_uncompressed_mb = "
            f"{MAX_UNCOMPRESSED_MB})", r"unpacks to 35\.\d MiB, more than the limit of 32\.0 MiB",
            {**acoustic, **{f"{AUDIO_DIR}zeros{n}.dat": bytes(7 * 2**20) for n in range(5)}})

    # Size bombs and lying headers.
    bad("member_over_size_limit", "acoustic", f"`.dat` of 9 MiB zeros (over max_member_mb = {MAX_MEMBER_MB})",
        "bomb.dat", bytes(9 * 2**20), r"unpacks to 9\.0 MiB, more than the limit of 8\.0 MiB \(ingest\.max_member_mb\)")
    bad("member_at_size_limit_too_many_values", "acoustic", "`.dat` of `0` lines just under max_member_mb "
        "(4 M values)", "zeros.dat", b"0\n" * (MAX_MEMBER_BYTES // 2 - 512),
        rf"more than {MAX_SOURCE_SAMPLES} values \(ingest\.max_source_samples\)")
    bad("member_under_limits_wrong_length", "acoustic", "`.dat` with exactly max_source_samples values",
        "long.dat", b"0.5\n" * MAX_SOURCE_SAMPLES, rf"wrong length: {MAX_SOURCE_SAMPLES} samples")
    bad("values_over_sample_limit", "acoustic", "`.dat` with max_source_samples + 1 values", "long1.dat",
        b"0.5\n" * (MAX_SOURCE_SAMPLES + 1), rf"more than {MAX_SOURCE_SAMPLES} values")
    base = {**acoustic, AUDIO_DIR + "liar.dat": bytes(2**20)}
    cases.append(Case("header_understates_size", "acoustic", "header says 1 KiB, member inflates to 1 MiB",
                      "bad", AUDIO_DIR + "liar.dat", r"cannot read from archive: Bad CRC-32",
                      build=lying_size_builder(base, AUDIO_DIR + "liar.dat", 1024)))
    base = {**acoustic, AUDIO_DIR + "liar2.dat": dat(11)}
    cases.append(Case("header_overstates_size", "acoustic", "header says 7 MiB, member holds 20 KB",
                      "bad", AUDIO_DIR + "liar2.dat", r"its header declares 7340032 bytes but it holds \d+",
                      build=lying_size_builder(base, AUDIO_DIR + "liar2.dat", 7 * 2**20)))
    base = {**acoustic, AUDIO_DIR + "liar3.dat": bytes(10 * 2**20)}
    cases.append(Case("header_understates_bomb_over_limit", "acoustic",
                      "header says 1 KiB, member inflates to 10 MiB (over max_member_mb)", "bad",
                      AUDIO_DIR + "liar3.dat", r"cannot read from archive: Bad CRC-32",
                      build=lying_size_builder(base, AUDIO_DIR + "liar3.dat", 1024)))
    cases.append(Case("encrypted_member", "vision", "member flagged encrypted", "bad", VISION_DIR + "secret.png",
                      "encrypted", build=flag_builder({**vision, VISION_DIR + "secret.png": png(12)},
                                                      VISION_DIR + "secret.png", 0x1)))
    cases.append(Case("bzip2_bomb", "acoustic", "bzip2 member: 200 MiB of zeros in 177 bytes", "bad",
                      AUDIO_DIR + "bz.dat", "compressed with bzip2",
                      build=compression_builder(acoustic, AUDIO_DIR + "bz.dat", bytes(6 * 2**20), zipfile.ZIP_BZIP2)))
    cases.append(Case("lzma_member", "acoustic", "LZMA member", "bad", AUDIO_DIR + "lz.dat", "compressed with LZMA",
                      build=compression_builder(acoustic, AUDIO_DIR + "lz.dat", dat(13), zipfile.ZIP_LZMA)))
    cases.append(Case("stored_member", "acoustic", "stored (uncompressed) member: read like any other", "ok",
                      build=compression_builder(acoustic, AUDIO_DIR + "stored.dat", dat(14), zipfile.ZIP_STORED)))

    # Images: decoded size, formats by content and name, damage.
    bad("png_9000x9000", "vision", "grey PNG of 9000 x 9000 (81 Mpx in 80 KB)", "huge.png",
        image_bytes(np.zeros((9000, 9000), np.uint8), "PNG"),
        rf"image is 9000x9000 = 81000000 pixels, more than ingest\.max_image_pixels \({MAX_IMAGE_PIXELS}\)")
    bad("png_header_65535", "vision", "PNG header claiming 65535 x 65535", "claims.png", png_header_only(65535, 65535),
        r"image has 4294836225 pixels, more than ingest\.max_image_pixels")
    bad("png_one_over_pixel_limit", "vision", "PNG of 1 x (max_image_pixels + 1)", "line.png",
        png_header_only(MAX_IMAGE_PIXELS + 1, 1), rf"image is {MAX_IMAGE_PIXELS + 1}x1 = .* more than")
    bad("jpeg_header_65500", "vision", "JPEG header claiming 65500 x 65500", "claims.jpg", jpeg_with_size(65500, 65500),
        r"more than ingest\.max_image_pixels")
    bad("bmp_header_huge", "vision", "BMP header claiming 30000 x 30000", "claims.bmp", bmp_with_size(30000, 30000),
        r"more than ingest\.max_image_pixels|cannot decode image")
    cases.append(Case("rgba_png_at_pixel_limit", "vision", "RGBA PNG of 1448 x 1448 (just under max_image_pixels, "
                      "the costliest mode to decode)", "ok",
                      members={**vision, VISION_DIR + "rgba.png": image_bytes(_gradient(1448, 4), "PNG", "RGBA")}))
    cases.append(Case("la_png_at_pixel_limit", "vision", "grey+alpha PNG of 1448 x 1448", "ok",
                      members={**vision, VISION_DIR + "la.png": image_bytes(_gradient(1448, 2), "PNG", "LA")}))
    cases.append(Case("cmyk_progressive_jpeg_at_pixel_limit", "vision", "progressive CMYK JPEG of 1448 x 1448", "ok",
                      members={**vision, VISION_DIR + "cmyk.jpg": image_bytes(_gradient(1448, 4), "JPEG", "CMYK",
                                                                               progressive=True, quality=95)}))
    for name, member, data, found in [
            ("png_named_jpg", "x.jpg", png(20), "PNG"), ("jpeg_named_png", "x.png", jpeg(21), "JPEG"),
            ("bmp_named_png", "x.png", bmp(22), "BMP"), ("wav_named_png", "x.png", wav(23), "WAV")]:
        expected = {".jpg": "JPEG", ".png": "PNG"}[member[-4:]]
        bad(name, "vision", f"{found} content named `{member}`", member, data,
            rf"content is {found}, (but the name ends in \{member[-4:]} \({expected} expected\)|not JPEG, PNG or BMP)")
    for name, member, data, found in [
            ("eps_named_jpg", "x.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
             "PostScript \\(EPS\\)"),
            ("gif_named_png", "x.png", image_bytes(_pixels(24, (8, 8)), "GIF"), "GIF"),
            ("tiff_named_bmp", "x.bmp", image_bytes(_pixels(25, (8, 8)), "TIFF"), "TIFF"),
            ("webp_named_jpg", "x.jpg", image_bytes(_pixels(26, (8, 8, 3)), "WEBP"), "WebP"),
            ("pdf_named_jpg", "x.jpg", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "PDF"),
            ("zip_named_png", "x.png", b"PK\x03\x04" + bytes(40), "zip"),
            ("ico_named_png", "x.png", image_bytes(_pixels(27, (16, 16)), "ICO"), "ICO"),
            ("psd_like_named_jpg", "x.jpg", b"8BPS\x00\x01" + bytes(40), "Photoshop \\(PSD\\)")]:
        bad(name, "vision", f"{found.replace(chr(92), '')} content named `{member}`", member, data,
            f"content is {found}, not JPEG, PNG or BMP")
    good_jpeg, good_png, good_bmp = jpeg(30, (64, 64)), png(31, (64, 64)), bmp(32, (64, 64))
    for name, member, data, reason in [
            ("jpeg_truncated", "t.jpg", good_jpeg[:len(good_jpeg) // 2], "cannot decode image.*truncated"),
            ("jpeg_soi_only", "soi.jpg", b"\xff\xd8\xff", "cannot decode image"),
            ("jpeg_markers_wiped", "wiped.jpg", good_jpeg[:3] + bytes(60) + good_jpeg[63:], "cannot decode image"),
            ("png_truncated", "t.png", good_png[:len(good_png) // 2], "cannot decode image"),
            ("png_signature_only", "sig.png", good_png[:8], "cannot decode image"),
            ("png_bad_crc", "crc.png", good_png[:29] + b"\x00\x00\x00\x00" + good_png[33:], "cannot decode image"),
            ("png_corrupt_idat", "idat.png", good_png[:41] + bytes(20) + good_png[61:], "cannot decode image"),
            ("bmp_truncated", "t.bmp", good_bmp[:len(good_bmp) // 2], "cannot decode image"),
            ("bmp_bad_header_size", "h.bmp", good_bmp[:14] + b"\xff\xff\xff\x7f" + good_bmp[18:],
             "cannot decode image"),
            ("empty_image", "empty.png", b"", "empty file"),
            ("text_named_png", "text.png", b"hello, I am text", "content is not JPEG, PNG or BMP")]:
        bad(name, "vision", f"damaged image: {name.replace('_', ' ')}", member, data, reason)
    cases.append(Case("png_zero_width", "vision", "PNG header with width 0", "bad", VISION_DIR + "zero.png",
                      r"no pixels|cannot decode image", {**vision, VISION_DIR + "zero.png": png_header_only(0, 10)}))

    # Audio: formats by content and name, sizes, damage.
    for name, member, data, reason in [
            ("png_named_wav", "x.wav", png(40), r"content is PNG, but the name ends in \.wav \(WAV expected\)"),
            ("flac_named_wav", "x.wav", flac(41), r"content is FLAC, but the name ends in \.wav \(WAV expected\)"),
            ("wav_named_flac", "x.flac", wav(42), r"content is WAV, but the name ends in \.flac \(FLAC expected\)"),
            ("aiff_named_wav", "x.wav", sound(clip_values(43, 1000), 16667, "AIFF"),
             r"content is AIFF.*not WAV or FLAC"),
            ("ogg_named_flac", "x.flac", sound(clip_values(44, 1000), 16667, "OGG", "VORBIS"),
             r"content is OGG.*not WAV or FLAC"),
            ("png_named_dat", "x.dat", png(45), r"content is PNG, but the name ends in \.dat \(text expected\)"),
            ("gzip_named_dat", "x.dat", b"\x1f\x8b\x08\x00" + bytes(20), r"content is gzip.*\.dat"),
            ("text_named_wav", "x.wav", b"0.1\n0.2\n0.3\n", "cannot decode audio"),
            ("wav_header_only", "h.wav", wav(46)[:44], "no samples|cannot decode audio"),
            ("wav_truncated", "t.wav", wav(47)[:1000], r"wrong length"),
            ("wav_riff_only", "r.wav", b"RIFF" + bytes(40), "cannot decode audio"),
            ("wav_over_sample_limit", "over.wav",
             sound(np.zeros(MAX_SOURCE_SAMPLES + 1, np.int16), 8_000_000, "WAV", "PCM_16"),
             rf"audio has {MAX_SOURCE_SAMPLES + 1} samples per channel, more than ingest\.max_source_samples"),
            ("wav_wrong_length", "short.wav", sound(clip_values(48, 500), 16667), r"wrong length: 500 samples"),
            ("wav_float_nan", "nan.wav", sound(np.full(1000, np.nan), 16667, "WAV", "FLOAT"), "NaN or infinite"),
            ("wav_double_1e39", "big.wav", sound(np.full(1000, 1e39), 16667, "WAV", "DOUBLE"),
             "beyond the float32 range"),
            ("flac_truncated", "t.flac", flac(49)[:200], r"truncated|cannot decode audio|wrong length"),
            ("flac_claims_2g_samples", "claims.flac", flac_claiming_samples(2**33),
             r"more than ingest\.max_source_samples|cannot decode audio"),
            ("empty_clip", "empty.wav", b"", "empty file")]:
        bad(name, "acoustic", f"clip: {name.replace('_', ' ')}", member, data, reason)
    cases.append(Case("wav_at_sample_limit", "acoustic", "mono float64 WAV of max_source_samples frames at 8.7 MHz "
                      "(resampled to 1000)", "ok",
                      members={**acoustic, AUDIO_DIR + "fast.wav": sound(clip_values(50, MAX_SOURCE_SAMPLES),
                                                                         round(MAX_SOURCE_SAMPLES / CLIP_SECONDS),
                                                                         "WAV", "DOUBLE")}))
    cases.append(Case("wav_claims_2g_frames", "acoustic", "WAV whose data chunk claims 2^30 frames but holds 1000: "
                      "libsndfile counts what is there; accepted", "ok",
                      members={**acoustic, AUDIO_DIR + "claims.wav": wav_claiming_frames(2**30)}))
    cases.append(Case("wav_64_channels", "acoustic", "64-channel WAV", "ok",
                      members={**acoustic, AUDIO_DIR + "many.wav": sound(
                          np.random.default_rng(51).uniform(-0.5, 0.5, (1000, 64)), 16667, "WAV", "FLOAT")}))
    for name, text, reason in [
            ("dat_1e39", b"1e39\n" + b"0.1\n" * 999, r"value '1e39' at line 1 is beyond the float32 range"),
            ("dat_1e400", b"0.1\n" * 9 + b"-1e400\n" + b"0.1\n" * 990, r"value '-1e400' at line 10 is beyond"),
            ("dat_nan", b"0.1\nNaN\n" + b"0.0\n" * 998, r"non-finite value 'NaN' at line 2"),
            ("dat_inf", b"0.1\n-inf\n" + b"0.0\n" * 998, r"non-finite value '-inf' at line 2"),
            ("dat_decimal_comma_50000", b"0,106556\n" * 50000, r"decimal comma at line 1 \('0,106556'\)"),
            ("dat_decimal_comma_1000", b"0,106556\n-1,5\n" * 500, r"decimal comma at line 1"),
            ("dat_decimal_comma_500", b"0,106556\n" * 500, r"decimal comma at line 1"),
            ("dat_word", b"0.1\n0.2\nhello\n" + b"0.0\n" * 997, r"non-numeric value 'hello' at line 3"),
            ("dat_malformed_1.2.3", b"0.1\n1.2.3\n" + b"0.0\n" * 998, r"malformed number '1\.2\.3' at line 2"),
            ("dat_malformed_minus_minus", b"--1\n" + b"0.0\n" * 999, r"malformed number '--1' at line 1"),
            ("dat_malformed_exponent", b"1e\n" + b"0.0\n" * 999, r"malformed number '1e' at line 1"),
            ("dat_underscore", b"1_000\n" + b"0.0\n" * 999, r"non-numeric value '1_000' at line 1"),
            ("dat_hex", b"0x10\n" + b"0.0\n" * 999, r"non-numeric value '0x10' at line 1"),
            ("dat_semicolons", b"0.1;0.2\n" * 500, r"non-numeric value '0\.1;0\.2' at line 1"),
            ("dat_space_separated", b"0.1 0.2\n" * 500, r"values separated by spaces at line 1 \('0\.1 0\.2'\)"),
            ("dat_blank_line", b"0.1\n\n" + b"0.0\n" * 998, r"empty value at line 2"),
            ("dat_empty_field", b"0.1,,0.2\n" + b"0.0\n" * 997, r"empty value at line 1"),
            ("dat_nul_bytes", b"0.1\n0.\x002\n" + b"0.0\n" * 998, r"non-numeric value '0\.\\x002' at line 2"),
            ("dat_latin1", b"0.1\n\xe90.2\n" + b"0.0\n" * 998, r"not text: byte 0xe9 at line 2 is not ASCII"),
            ("dat_utf16", "\n".join(["0.1"] * 1000).encode("utf-16"), r"not text: byte 0xff at line 1"),
            ("dat_empty", b"", "empty file"),
            ("dat_whitespace_only", b" \n\t\n", "empty file"),
            ("dat_bom_only", b"\xef\xbb\xbf", "empty file"),
            ("dat_long_line", b"1" * (3 * 2**20) + b"\n", r"line 1 holds a value longer than"),
            ("dat_wrong_length", b"0.5\n" * 700, r"wrong length: 700 samples"),
            ("dat_ansi_in_value", b"0.1\n\x1b[31m0.2\n" + b"0.0\n" * 998,
             r"non-numeric value '\\x1b\[31m0\.2' at line 2")]:
        bad(name, "acoustic", f"`.dat`: {name.removeprefix('dat_').replace('_', ' ')}", "bad_" + name + ".dat", text,
            reason)
    cases.append(Case("dat_crlf_trailing_commas_bom", "acoustic", "`.dat` with BOM, CRLF, trailing commas: accepted",
                      "ok", members={**acoustic, AUDIO_DIR + "crlf.dat": b"\xef\xbb\xbf" + b"".join(
                          f"{float(value)!r},\r\n".encode() for value in clip_values(52))}))

    # Names and duplicates.
    for name, member, what in [
            ("name_ansi_escape", "\x1b[2K\rFAKE: all files ok\x1b[0m.png", "ANSI escapes and a carriage return"),
            ("name_newline", "x\nFAKE: all files ok.png", "a newline"),
            ("name_bidi_override", "gnp.\u202eevil.png", "a right-to-left override"),
            ("name_bell_tab", "\a\tbell.png", "a bell and a tab"),
            ("name_very_long", "n" * 1000 + ".png", "1000 characters")]:
        data = b"not an image at all"
        shown = (VISION_DIR + member)
        cases.append(Case(name, "vision", f"bad file whose name holds {what}", "bad", shown,
                          "content is not JPEG, PNG or BMP", {**vision, VISION_DIR + member: data}))
    cases.append(Case("name_unicode_ok", "vision", "good file named in Greek and with spaces: accepted", "ok",
                      members={**vision, VISION_DIR + "εικόνα με κενά.png": png(60)}))
    cases.append(Case("duplicate_names", "vision", "two members with the same name (different content)", "bad",
                      VISION_DIR + "twin.png", r"2 members of the archive have this name",
                      build=lambda path: write_zip(path, [*vision.items(), (VISION_DIR + "twin.png", png(61)),
                                                          (VISION_DIR + "twin.png", png(62))])))
    cases.append(Case("duplicate_names_three", "acoustic", "three members with the same name", "bad",
                      AUDIO_DIR + "triplet.dat", r"3 members of the archive have this name",
                      build=lambda path: write_zip(path, [*acoustic.items()] + [
                          (AUDIO_DIR + "triplet.dat", dat(63 + n)) for n in range(3)])))
    cases.append(Case("duplicate_content_same_class", "vision", "byte-identical copy in the same class", "duplicate",
                      VISION_DIR + "zz_copy.png", "NEU/train/Crazing/crazing_0.png",
                      {**vision, VISION_DIR + "zz_copy.png": vision["NEU/train/Crazing/crazing_0.png"]}))
    cases.append(Case("duplicate_content_other_class", "vision", "byte-identical copy in another class", "bad",
                      "NEU/train/Inclusion/zz_copy.png", "identical content in different classes",
                      {**vision, "NEU/train/Inclusion/zz_copy.png": vision["NEU/train/Crazing/crazing_0.png"]}))
    cases.append(Case("unknown_class", "vision", "image in a folder naming no class", "bad", "NEU/train/Rust/r.png",
                      "unknown class", {**vision, "NEU/train/Rust/r.png": png(64)}))
    cases.append(Case("outside_split", "vision", "image outside train/ and test/ of a split archive", "bad",
                      "NEU/Crazing/loose.png", "not inside a train/ or test/ folder",
                      {**vision, "NEU/Crazing/loose.png": png(65)}))
    cases.append(Case("directory_with_data", "vision", "directory entry (name ending in /) holding bytes: ignored",
                      "ok", members={**vision, VISION_DIR + "folder.png/": b"junk"}))
    return cases


def worst_cases_at(max_image_pixels: int, max_source_samples: int, max_member_bytes: int,
                   clip_seconds: float) -> list[Case]:
    """Members that cost the most to decode while staying just within the given limits (the soak test runs
    them at the shipped limits): every kind of member a process may be asked to hold at its worst."""
    side = int(max_image_pixels ** 0.5)
    clip_samples = round(TARGET_RATE * clip_seconds)
    vision, acoustic = good_members("vision"), good_members("acoustic", clip_samples)
    fast_rate = int(max_source_samples / clip_seconds)  # a clip of max_source_samples frames, right length
    channels = 8
    wide_frames = min(max_source_samples, (max_member_bytes - 4096) // (2 * channels))
    return [
        Case("worst_rgba_png", "vision", f"RGBA PNG of {side} x {side}", "ok",
             members={**vision, VISION_DIR + "rgba.png": image_bytes(_gradient(side, 4), "PNG", "RGBA")}),
        Case("worst_la_png", "vision", f"grey+alpha PNG of {side} x {side}", "ok",
             members={**vision, VISION_DIR + "la.png": image_bytes(_gradient(side, 2), "PNG", "LA")}),
        Case("worst_cmyk_jpeg", "vision", f"progressive CMYK JPEG of {side} x {side}", "ok",
             members={**vision, VISION_DIR + "cmyk.jpg": image_bytes(_gradient(side, 4), "JPEG", "CMYK",
                                                                      progressive=True, quality=95)}),
        Case("worst_dat", "acoustic", f".dat of {max_source_samples} values (wrong length once parsed)", "bad",
             AUDIO_DIR + "long.dat", "wrong length",
             {**acoustic, AUDIO_DIR + "long.dat": b"0.5\n" * max_source_samples}),
        Case("worst_wav", "acoustic", f"float64 WAV of {max_source_samples} frames at {fast_rate} Hz", "ok",
             members={**acoustic, AUDIO_DIR + "fast.wav": sound(clip_values(70, max_source_samples), fast_rate,
                                                                "WAV", "DOUBLE")}),
        Case("worst_wide_wav", "acoustic", f"{channels}-channel WAV just under max_member_mb", "ok",
             members={**acoustic, AUDIO_DIR + "wide.wav": sound(
                 np.random.default_rng(71).integers(-2**15, 2**15, (wide_frames, channels), dtype=np.int16),
                 int(wide_frames / clip_seconds), "WAV", "PCM_16")}),
    ]


# ---- the seeded generator ----

_ODD_NAMES = ["x.png", "ünï cødé.png", "x\x1b[31m.png", "x\ny.png", "\u202ex.png", "x" * 300 + ".png", " x .png",
              "x.PNG", "x.jpeg", "x.JPG", "x.bmp", "x.jpg", "x.dat", "x.wav", "x.flac", "x.DAT"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One random corruption: truncation, flipped bytes, inserted or deleted junk, or a spliced copy."""
    if not data:  # an earlier truncation left nothing: start again from a few random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip", "insert", "delete", "splice", "header"])
    if kind == "truncate":
        return bytes(data[:rng.randrange(len(data) + 1)])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "insert":
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "delete":
        at = rng.randrange(len(data))
        del data[at:at + rng.randint(1, 64)]
    elif kind == "splice":
        at = rng.randrange(len(data))
        data[at:at] = data[:rng.randrange(1, 64)]
    else:  # overwrite a header field with an extreme value
        at = rng.randrange(min(len(data), 64))
        data[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f",
                                      b"\x00\x00\x00\x80"])
    return bytes(data)


def random_case(seed: int) -> Case:
    """A reproducible random hostile archive: valid files of a random format, corrupted and oddly named."""
    rng = random.Random(seed)
    dataset = rng.choice(["vision", "acoustic"])
    members = good_members(dataset)
    folder = VISION_DIR if dataset == "vision" else AUDIO_DIR
    makers: list[Callable[[int], bytes]] = ([png, jpeg, bmp, lambda s: image_bytes(_pixels(s, (12, 9, 4)), "PNG")]
                                            if dataset == "vision" else [dat, wav, flac, lambda s: wav(s, 44100)])
    for number in range(rng.randint(1, 3)):
        data = rng.choice(makers)(seed * 10 + number)
        for _ in range(rng.randint(0, 3)):
            data = _mutate(rng, data)
        name = rng.choice(_ODD_NAMES)
        if rng.random() < 0.3:  # a name that disagrees with the content
            name = rng.choice(_ODD_NAMES)
        members[f"{folder}{number}_{name}"] = data
    return Case(f"random_{seed}", dataset, f"seeded mutation {seed}", "any", members=members)


def write_case(case: Case, folder: Path) -> Path:
    path = folder / case.archive_name()
    if case.build is not None:
        case.build(path)
    else:
        write_zip(path, case.members)
    return path
