"""Shared pytest fixtures. Name new fixtures after their area (ingest_*, features_*, ...)."""
from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image


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


@pytest.fixture(scope="session")
def team_baseline(tmp_path_factory) -> Path:
    """docs/team.md's starting point (tiny params, archives in data/raw under `dvc add`, reproduced), built once."""
    from tests.team_helpers import build_team_baseline

    return build_team_baseline(tmp_path_factory.mktemp("team-baseline") / "repo")
