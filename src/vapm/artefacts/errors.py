"""The one error of this package."""
from __future__ import annotations

from vapm.core.errors import VapmError


class ArtefactError(VapmError, ValueError):
    """A saved model is missing, unreadable or not what its record says."""
