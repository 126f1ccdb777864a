"""Progress bars that stay readable in CI logs and DVC output."""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "file") -> Iterable[T]:
    # Without a terminal (CI, `dvc repro` piped to a log) refresh rarely, so logs do not fill with bars.
    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(items, desc=desc, total=total, unit=unit, mininterval=0.2 if interactive else 10.0,
                disable=os.environ.get("VAPM_NO_PROGRESS") == "1")
