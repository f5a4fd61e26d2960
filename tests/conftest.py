from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from pathlib import Path

import os

import pytest
import torch
from hypothesis import settings

from medsam2kit._data import shared_data_dir

if TYPE_CHECKING:
    from medsam2kit.predictor import SAM2Predictor

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


@pytest.fixture(scope="module")
def pred() -> SAM2Predictor:
    """A random-init micro SAM 2.1 predictor (seed 0) whose object score is raised, so that its
    masks are not empty (random weights often say "no object")."""
    from medsam2kit.predictor import SAM2Predictor, build_model

    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_micro", device="cpu")
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
    return SAM2Predictor(model)
