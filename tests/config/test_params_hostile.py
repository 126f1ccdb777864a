"""Hostile params: values that parse as numbers but would overflow the limits they set are one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vapm.config.settings import ParamsError, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def workspace(tmp_path: Path, **ingest) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["ingest"].update(ingest)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "models.yaml").write_text((REPO_ROOT / "models.yaml").read_text())
    return tmp_path


@pytest.mark.parametrize("key", ["max_uncompressed_mb", "max_member_mb"])
@pytest.mark.parametrize("value", [1e308, 1.7976931348623157e308, 2.0**40 + 1, 1e20])
def test_a_size_limit_too_large_to_count_in_bytes_is_one_params_error(tmp_path, key, value):
    with pytest.raises(ParamsError, match=f"ingest.{key}"):
        load_settings(workspace(tmp_path, **{key: value}) / "params.yaml", models=())


def test_the_largest_allowed_limit_still_works(tmp_path):
    settings = load_settings(workspace(tmp_path, max_uncompressed_mb=2.0**40, max_member_mb=2.0**40) / "params.yaml",
                             models=())
    assert settings.ingest.max_member_mb == 2.0**40


def test_the_ingest_stage_says_one_line_and_no_traceback(tmp_path):
    folder = workspace(tmp_path, max_uncompressed_mb=1e308)
    result = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "ingest.py")], cwd=folder,
                            env={**os.environ, "VAPM_NO_PROGRESS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ingest.max_uncompressed_mb" in line]
    assert len(errors) == 1, result.stderr
