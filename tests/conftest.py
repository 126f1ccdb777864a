"""Shared pytest fixtures (a folder's own go in its conftest.py). Name new fixtures after their area (ingest_*, ...)."""
from __future__ import annotations

import vapm  # noqa: F401  (first: pins CPU dispatch before NumPy and TensorFlow load, as in the stages)

import io
import stat
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def compute_pinned_before_any_test() -> None:
    """As every stage does first: fix the thread pools before a test runs a TensorFlow op. TensorFlow fixes its
    pools when its runtime starts, so otherwise the first test to run an op (whichever folder comes first)
    decides, and config/test_determinism.py's check of this process would depend on the order of the folders."""
    from vapm.config.cpu_dispatch import DEFAULT_THREADS, configure_compute

    configure_compute(DEFAULT_THREADS)  # TensorFlow too when a collected test module imported it


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when asked for by marker (-m soak), never in the default or fast suites."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ingest_make_zip(tmp_path: Path) -> Callable[..., Path]:
    """make(name, {member: bytes}, symlinks={member: target}) -> path of a zip written in tmp_path/archives."""

    def make(name: str, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
        folder = tmp_path / "archives"
        folder.mkdir(exist_ok=True)
        path = folder / name
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for member, data in members.items():
                zf.writestr(member, data)
            for member, target in (symlinks or {}).items():
                info = zipfile.ZipInfo(member)
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, target)
        return path

    return make


@pytest.fixture
def ingest_encode_image() -> Callable[..., bytes]:
    """encode(uint8 array (H, W) or (H, W, 3), format='PNG') -> file bytes."""

    def encode(pixels: np.ndarray, image_format: str = "PNG") -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=image_format)
        return buffer.getvalue()

    return encode


@pytest.fixture
def ingest_encode_sound() -> Callable[..., bytes]:
    """encode(samples (N,) or (N, channels) in [-1, 1], rate, format='WAV') -> file bytes (16-bit PCM)."""

    def encode(samples: np.ndarray, rate: int, sound_format: str = "WAV") -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format=sound_format, subtype="PCM_16")
        return buffer.getvalue()

    return encode
