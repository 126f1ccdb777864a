"""The one base class of every error vapm reports to a user.

A `VapmError` message is one line that names the file, key or archive at fault and says what to do;
stages print it on stderr and exit 1 (`vapm.errors.report_errors`), never a traceback.
"""
from __future__ import annotations


class VapmError(Exception):
    """An expected failure (bad input, bad params, missing prerequisite) with a user-facing message."""
