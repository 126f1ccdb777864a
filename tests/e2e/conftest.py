"""Fixtures only the end-to-end tests use (shared ones are in tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def team_baseline(tmp_path_factory) -> Path:
    """docs/team.md's starting point (tiny params, archives in data/raw under `dvc add`, reproduced), built once."""
    from tests.e2e.team_helpers import build_team_baseline

    return build_team_baseline(tmp_path_factory.mktemp("team-baseline") / "repo")
