"""The formats ingest reads, and what a member's first bytes say it is.

A member is decoded only when its content and its name agree on one of the formats we support: JPEG,
PNG, BMP for images; WAV, FLAC and `.dat` text for clips. The signatures below do not decode anything;
they only let a refusal say what the content is ("content is PNG, but the name says .wav").
"""
from __future__ import annotations

from pathlib import PurePosixPath

# Suffix -> the format its content must have.
IMAGE_FORMAT_OF_SUFFIX = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}
AUDIO_FORMAT_OF_SUFFIX = {".wav": "WAV", ".flac": "FLAC", ".dat": "text"}
PILLOW_FORMATS = ("JPEG", "PNG", "BMP")  # the only Pillow plugins ingest lets open a member

SIGNATURE_BYTES = 16  # how many leading bytes `sniff` looks at

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"fLaC", "FLAC"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "PostScript (EPS)"),
    (b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"8BPS", "Photoshop (PSD)"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"OggS", "Ogg"),
    (b"ID3", "MP3"),
    (b"RF64", "RF64"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
)
_RIFF_KINDS = {b"WAVE": "WAV", b"WEBP": "WebP", b"AVI ": "AVI"}
_FORM_KINDS = {b"AIFF": "AIFF", b"AIFC": "AIFF"}


def sniff(head: bytes) -> str | None:
    """The format the first bytes of a file announce, or None when they announce none we know."""
    if head[:4] == b"RIFF":
        return _RIFF_KINDS.get(head[8:12], "RIFF")
    if head[:4] == b"FORM":
        return _FORM_KINDS.get(head[8:12], "IFF")
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def suffix_of(member_name: str) -> str:
    return PurePosixPath(member_name.replace("\\", "/")).suffix.lower()


def mismatch_reason(found: str, member_name: str, expected: str) -> str:
    """Why a member whose content is `found` is not read as the `expected` format its name asks for."""
    suffix = suffix_of(member_name)
    return f"content is {found}, but the name ends in {suffix} ({expected} expected): rename or convert the file"
