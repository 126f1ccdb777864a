"""The one base class of every error vapm reports to a user.

A `VapmError` message is one line that names the file, key or archive at fault and says what to do;
stages print it on stderr and exit 1 (`run_stage`), never a traceback.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class VapmError(Exception):
    """An expected failure (bad input, bad params, missing prerequisite) with a user-facing message."""


@contextmanager
def run_stage(stage: str) -> Iterator[None]:
    """Run a stage's body; an expected failure becomes one line on stderr and exit status 1.

    Anything else is a bug and keeps its traceback. An interrupt exits 130 without one.
    """
    try:
        yield
    except VapmError as err:
        print(f"{stage}: {one_line(str(err))}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def one_line(text: str) -> str:
    return " ".join(text.split())
