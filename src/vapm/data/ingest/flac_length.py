"""The length of a FLAC stream whose STREAMINFO says "unknown" (0 total samples, which the format allows), from
its last frame header. libsndfile cannot read such a file to its end (its last read fails to seek), so ingest
finds the length here, checks it against ingest.max_source_samples before decoding anything, and gives
libsndfile a copy whose header states it."""
from __future__ import annotations

BLOCK_SIZES = {1: 192, 2: 576, 3: 1152, 4: 2304, 5: 4608, 8: 256, 9: 512, 10: 1024, 11: 2048, 12: 4096,
               13: 8192, 14: 16384, 15: 32768}


def crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _coded_number(data: bytes, at: int) -> tuple[int, int] | None:
    """FLAC's UTF-8-like coded frame or sample number at `at`: (value, bytes used)."""
    first = data[at]
    if first < 0x80:
        return first, 1
    n = 0
    while n < 8 and first & (0x80 >> n):
        n += 1
    if not 2 <= n <= 7 or at + n > len(data):
        return None
    value = first & (0x7F >> n)
    for byte in data[at + 1:at + n]:
        if byte & 0xC0 != 0x80:
            return None
        value = (value << 6) | (byte & 0x3F)
    return value, n


def frame_header(data: bytes, at: int, nominal_block: int) -> tuple[int, int] | None:
    """(first sample of the frame, its block size) if a valid frame header starts at `at`."""
    if at + 6 > len(data) or data[at] != 0xFF or data[at + 1] not in (0xF8, 0xF9):
        return None
    variable = data[at + 1] == 0xF9
    size_code, rate_code = data[at + 2] >> 4, data[at + 2] & 0x0F
    if size_code == 0 or rate_code == 0x0F or data[at + 3] & 0x01 or (data[at + 3] >> 4) > 10:
        return None
    number = _coded_number(data, at + 4)
    if number is None:
        return None
    value, used = number
    pos = at + 4 + used
    if size_code == 6:
        block, pos = data[pos] + 1, pos + 1
    elif size_code == 7:
        block, pos = int.from_bytes(data[pos:pos + 2], "big") + 1, pos + 2
    else:
        block = BLOCK_SIZES[size_code]
    pos += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if pos >= len(data) or crc8(data[at:pos]) != data[pos]:
        return None
    return (value if variable else value * nominal_block), block


def total_samples(data: bytes) -> int | None:
    """Samples per channel of a FLAC file, from its last valid frame header (scanning back from the end)."""
    if data[:4] != b"fLaC":
        return None
    nominal = int.from_bytes(data[8 + 2:8 + 4], "big")  # STREAMINFO's maximum block size
    at = len(data) - 2
    while at >= 4:
        at = data.rfind(b"\xff", 4, at + 1)
        if at < 0:
            return None
        header = frame_header(data, at, nominal)
        if header is not None:
            return header[0] + header[1]
        at -= 1
    return None


def with_total_samples(data: bytes, total: int) -> bytes:
    """A copy of the FLAC file whose STREAMINFO states `total` samples per channel (36 bits)."""
    raw = bytearray(data)
    word = int.from_bytes(raw[18:26], "big") & ~((1 << 36) - 1) | (total & ((1 << 36) - 1))
    raw[18:26] = word.to_bytes(8, "big")
    return bytes(raw)
