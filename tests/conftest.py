"""Shared fixtures.

Tiny models run fastest on one thread, and on a machine whose cores are shared an OpenMP team of several threads
spins against the other jobs (a test can take 30x longer): the suite, and the processes it launches, use one
thread unless OMP_NUM_THREADS says otherwise."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def shared_data() -> Path:
    """The read-only real data folder (/work/shared/data next to the repo); skip when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
