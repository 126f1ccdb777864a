"""Reading and decoding members in chunks, in worker processes, with results in input order."""
from __future__ import annotations

import hashlib
import multiprocessing
import zipfile
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from vapm.ingest.decode import AudioTarget, DecodeError, decode_audio, decode_image

T = TypeVar("T")
R = TypeVar("R")

CHUNK_ITEMS = 32  # members per task: large enough to hide the cost of a task, small enough to bound memory


def chunked(items: Sequence[T], size: int = CHUNK_ITEMS) -> list[Sequence[T]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


class Workers:
    """Maps a function over tasks in input order: in `n_jobs` worker processes, or here when n_jobs is 1.

    Workers are spawned, not forked: forking a process that has started threads (TensorFlow in a test
    session, tqdm's monitor) can deadlock. Spawning costs a second or two of imports per worker, so use
    them only for work that takes much longer. At most two tasks per worker are in flight, which bounds
    the memory held by results waiting to be consumed.
    """

    def __init__(self, n_jobs: int):
        self.n_jobs = max(1, n_jobs)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Workers":
        if self.n_jobs > 1:
            self._pool = ProcessPoolExecutor(max_workers=self.n_jobs, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def map(self, function: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R]:
        if self._pool is None:
            yield from map(function, tasks)
            return
        in_flight: deque[Future[R]] = deque()
        pending = iter(tasks)
        for task in islice(pending, 2 * self.n_jobs):
            in_flight.append(self._pool.submit(function, task))
        while in_flight:
            result = in_flight.popleft().result()
            for task in islice(pending, 1):
                in_flight.append(self._pool.submit(function, task))
            yield result


def hash_chunk(task: tuple[Path, Sequence[str]]) -> list[tuple[str | None, str | None]]:
    """(sha256 hex, None) per member, or (None, reason) when it cannot be read or is empty."""
    archive, names = task
    results: list[tuple[str | None, str | None]] = []
    with zipfile.ZipFile(archive) as zf:
        for name in names:
            try:
                data = zf.read(name)
            except Exception as err:  # bad CRC, corrupt deflate stream, encrypted member, ...
                results.append((None, f"cannot read from archive: {err}"))
                continue
            results.append((hashlib.sha256(data).hexdigest(), None) if data else (None, "empty file"))
    return results


def decode_chunk(task: tuple[Path, Sequence[str], AudioTarget | None]) -> list[tuple[Any, str | None]]:
    """(decoded, None) per member, or (None, reason) when it fails validation.

    Decoded is a grey uint8 image, or a `Clip` when an audio target is given.
    """
    archive, names, audio_target = task
    results: list[tuple[Any, str | None]] = []
    with zipfile.ZipFile(archive) as zf:
        for name in names:
            try:
                data = zf.read(name)
                decoded = decode_image(data) if audio_target is None else decode_audio(name, data, audio_target)
                results.append((decoded, None))
            except DecodeError as err:
                results.append((None, str(err)))
    return results
