from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import os

import pytest
import torch
from hypothesis import settings

from medsam2kit._data import shared_data_dir

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# In CI the property tests draw a fixed sequence of examples (reproducible runs); locally they
# explore new examples on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test (saying why) when it is absent."""
    path = shared_data_dir(Path(__file__).parent)
    if path is None:
        pytest.skip("real data not found: set MEDSAM2KIT_DATA or place it at ../shared/data")
    return path


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small convolutions on a shared 2-core machine run several times faster on one thread
    than on two contended ones; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
