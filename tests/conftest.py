from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medsam2kit._data import shared_data_dir

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test (saying why) when it is absent."""
    path = shared_data_dir(Path(__file__).parent)
    if path is None:
        pytest.skip("real data not found: set MEDSAM2KIT_DATA or place it at ../shared/data")
    return path
