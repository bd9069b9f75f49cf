"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.dag import make_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git + DVC checkout of the pipeline files, set to tiny sizes."""
    return make_repo(tmp_path)
