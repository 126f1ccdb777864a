"""Numbers from `.dat` text, parsed block by block so a large file never sits in memory as Python objects.

The format: ASCII numbers, one per line and/or separated by commas (a trailing comma at the end of a line
is fine), an optional UTF-8 byte-order mark, blank space around the whole. Anything else is refused
with the first offending line: words, NaN and infinities, numbers beyond the float32 range the clips are
stored in, empty values, and decimal commas ("0,106556"), which would otherwise split every value in two.
"""
from __future__ import annotations

import io
import math
import re
from typing import Iterator

import numpy as np

from vapm.data.ingest.errors import DecodeError

TEXT_BLOCK_BYTES = 2**20  # parsed at a time; the largest transient is a few times this
FLOAT32_MAX = float(np.finfo(np.float32).max)

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n\x0b\x0c"
_NUMERIC_ALPHABET = b"0123456789+-.eE,\r\n \t"
_NUMBER_CHARS = set("0123456789+-.eE")
_TRAILING_COMMA = re.compile(rb",[ \t]*(?=\r?\n|$)")
_LINE_END = re.compile(rb"[ \t]*\r?\n")
_TWO_COMMAS_IN_A_LINE = re.compile(rb",[^\n,]*,")
_DECIMAL_COMMA_LINE = re.compile(rb"(?m)^[ \t]*[+-]?\d+,\d+(?:[eE][+-]?\d+)?[ \t]*\r?$")
# A mantissa with a comma and an exponent ("1,5E-05", as a German spreadsheet writes small numbers): read as two
# comma-separated values it would be "1" and "5E-05", so it is a decimal comma wherever it stands.
_DECIMAL_COMMA_EXPONENT = re.compile(rb"(?<![\w.+-])[+-]?\d+,\d+[eE][+-]?\d+(?![\w.])")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NON_FINITE_WORDS = {sign + word for sign in ("", "+", "-") for word in ("nan", "inf", "infinity")}


def parse_text_values(data: bytes | bytearray | memoryview | io.BytesIO,
                      max_values: int | None = None) -> np.ndarray:
    """The numbers of `.dat` text as float64, refusing more than `max_values` of them."""
    view = memoryview(data.getbuffer() if isinstance(data, io.BytesIO) else data).cast("B")
    start, end = _content_bounds(view)
    if start >= end:
        raise DecodeError("empty file")
    first_line = 1 + _count_newlines(view, 0, start)
    watch = _DecimalCommaWatch()
    parts: list[np.ndarray] = []
    n_values = 0
    for block, line in _blocks(view, start, end, first_line):
        watch.see(block, line)
        values = _parse_block(block, line)
        n_values += len(values)
        if max_values is not None and n_values > max_values:
            raise DecodeError(watch.reason() or f"more than {max_values} values (ingest.max_source_samples)")
        parts.append(values)
    reason = watch.reason()
    if reason:
        raise DecodeError(reason)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _content_bounds(view: memoryview) -> tuple[int, int]:
    """[start, end) of the text without its byte-order mark and the blank space around it."""
    start = len(_BOM) if bytes(view[:len(_BOM)]) == _BOM else 0
    while start < len(view):
        chunk = bytes(view[start:start + TEXT_BLOCK_BYTES])
        stripped = len(chunk) - len(chunk.lstrip(_WHITESPACE))
        start += stripped
        if stripped < len(chunk):
            break
    end = len(view)
    while end > start:
        chunk = bytes(view[max(start, end - TEXT_BLOCK_BYTES):end])
        stripped = len(chunk) - len(chunk.rstrip(_WHITESPACE))
        end -= stripped
        if stripped < len(chunk):
            break
    return start, end


def _count_newlines(view: memoryview, start: int, end: int) -> int:
    return sum(bytes(view[at:min(end, at + TEXT_BLOCK_BYTES)]).count(b"\n")
               for at in range(start, end, TEXT_BLOCK_BYTES))


def _blocks(view: memoryview, start: int, end: int, first_line: int) -> Iterator[tuple[bytes, int]]:
    """(block, number of its first line): blocks of about TEXT_BLOCK_BYTES that end after a newline, or
    after a comma when a line is longer than a block (values may all sit on one line)."""
    carry = b""
    line = first_line
    after_comma = False
    for at in range(start, end, TEXT_BLOCK_BYTES):
        text = carry + bytes(view[at:min(end, at + TEXT_BLOCK_BYTES)])
        if after_comma:  # the comma the last block ended with may have been a trailing one: its line ends here
            line_end = _LINE_END.match(text)
            if line_end:
                text, line = text[line_end.end():], line + 1
            after_comma = False
        if at + TEXT_BLOCK_BYTES >= end:
            if text:
                yield text, line
            return
        cut = text.rfind(b"\n")
        if cut < 0:
            cut = text.rfind(b",")
            if cut < 0:
                if len(text) > TEXT_BLOCK_BYTES:
                    raise DecodeError(f"line {line} holds a value longer than {TEXT_BLOCK_BYTES} bytes")
                carry = text
                continue
            after_comma = True
        block, carry = text[:cut + 1], text[cut + 1:]
        yield block, line
        line += block.count(b"\n")


def _parse_block(block: bytes, first_line: int) -> np.ndarray:
    if block.translate(None, _NUMERIC_ALPHABET):  # letters, NUL, non-ASCII ...: only the slow path can say
        raise DecodeError(_first_bad_field(block, first_line) or f"not numeric text near line {first_line}")
    text = block
    if b"," in text:
        text = _TRAILING_COMMA.sub(b"", text)  # "1,2,\n3,4" is as common as "1,2\n3,4"
        text = text.replace(b",", b"\n")
    # Imported here, not at the top: pandas costs about 0.5 s to import, and predict on a WAV or FLAC file
    # (vapm.data.ingest.decode) must not pay it. Its C parser stays: its string-to-float converter ('high',
    # not guaranteed correctly rounded) decides the last bit of the ingested clips, so another would change them.
    import pandas as pd

    try:
        values = pd.read_csv(io.BytesIO(text), header=None, names=["value"], dtype=np.float64,
                             skip_blank_lines=False, engine="c")["value"].to_numpy()
    except ValueError:  # pandas' ParserError and EmptyDataError are ValueErrors too
        raise DecodeError(_first_bad_field(block, first_line) or
                             f"not numeric text near line {first_line}") from None
    if not np.all(np.abs(values) <= FLOAT32_MAX):  # also false for NaN (empty values) and infinities
        raise DecodeError(_first_bad_field(block, first_line) or
                             f"a value near line {first_line} is empty or beyond the float32 range")
    return values


def _first_bad_field(block: bytes, first_line: int) -> str | None:
    """Where the first unusable value of a block sits, and why (run only once the block has failed)."""
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    for offset, raw in enumerate(lines):
        line_number = first_line + offset
        raw = raw.removesuffix(b"\r")
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError as err:
            return f"not text: byte 0x{raw[err.start]:02x} at line {line_number} is not ASCII"
        fields = line.rstrip(" \t").removesuffix(",").split(",")
        for field in fields:
            field = field.strip(" \t")
            shown = repr(field[:40] + ("..." if len(field) > 40 else ""))
            if not field:
                return f"empty value at line {line_number}"
            if _NUMBER.fullmatch(field):
                value = float(field)
                if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                    return f"value {shown} at line {line_number} is beyond the float32 range (about +-3.4e38)"
            elif field.lower() in _NON_FINITE_WORDS:
                return f"non-finite value {shown} at line {line_number}"
            elif all(_NUMBER.fullmatch(part) for part in field.split()):
                return (f"values separated by spaces at line {line_number} ({shown}): "
                        "write one value per line or separate them with commas")
            elif set(field) <= _NUMBER_CHARS:
                return f"malformed number {shown} at line {line_number}"
            else:
                return f"non-numeric value {shown} at line {line_number}"
    return None


class _DecimalCommaWatch:
    """Notices values written with a decimal comma, anywhere in the file: a value with a comma in its mantissa
    and an exponent ("1,5E-05", "-2,514604e+02"), or a line holding one comma between digits ("0,106556") in a
    file that is not a list of several comma-separated values a line. Read as separators they would silently
    double the values or split them into garbage, so one such value refuses the whole file, whatever the other
    lines hold (decimal points included)."""

    def __init__(self) -> None:
        self.several_commas_a_line = False
        self.first_line_value: tuple[int, str] | None = None   # "0,106556" alone on its line
        self.first_exponent: tuple[int, str] | None = None     # "1,5E-05" anywhere

    def see(self, block: bytes, first_line: int) -> None:
        if b"," not in block:
            return
        if self.first_exponent is None:
            match = _DECIMAL_COMMA_EXPONENT.search(block)
            if match:
                self.first_exponent = (first_line + block.count(b"\n", 0, match.start()),
                                       match.group().decode("ascii"))
        if _TWO_COMMAS_IN_A_LINE.search(block):
            self.several_commas_a_line = True
        if self.first_line_value is None:
            match = _DECIMAL_COMMA_LINE.search(block)
            if match:
                self.first_line_value = (first_line + block.count(b"\n", 0, match.start()),
                                         match.group().strip().decode("ascii"))

    def reason(self) -> str | None:
        found = [hit for hit in (self.first_exponent, None if self.several_commas_a_line else self.first_line_value)
                 if hit is not None]
        if not found:
            return None
        line, text = min(found)
        return (f"decimal comma at line {line} ({text!r}): write numbers with a decimal point "
                f"({text.replace(',', '.')!r})")
