"""Errors that make one member a bad file: the message is the reason shown in the report and on stderr."""
from __future__ import annotations

from vapm.core.errors import VapmError


class BadFile(VapmError, ValueError):
    """One member cannot be used; `str()` is its reason (one line, the same on every run)."""


class MemberError(BadFile):
    """The member cannot be read from the archive within its limits."""


class DecodeError(BadFile):
    """The bytes are not a valid image or clip."""
