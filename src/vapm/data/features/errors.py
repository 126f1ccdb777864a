"""The error featurize raises for bad interim data (kept apart so worker processes need not import pandas)."""
from __future__ import annotations

from vapm.core.errors import VapmError


class InterimDataError(VapmError, ValueError):
    """data/interim is missing, unreadable or inconsistent with its manifest."""
