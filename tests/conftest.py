"""Shared fixtures."""

from pathlib import Path

import pytest


@pytest.fixture
def shared_data() -> Path:
    """The read-only real data folder (/work/shared/data next to the repo); skip when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
