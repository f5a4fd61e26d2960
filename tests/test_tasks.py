"""The scored prompt tasks and their baselines (medsam2kit.tasks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.metrics import dice
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import heldout_phantoms
from medsam2kit.tasks import box_prompt_image, filled_box, mask_box, one_prompt_propagation, track_recording


@pytest.fixture(scope="module")
def random_predictor() -> SAM2Predictor:
    import torch

    torch.manual_seed(0)
    return SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_box_and_filled_box_against_brute_force(mask: np.ndarray) -> None:
    if not mask.any():
        with pytest.raises(InvalidInputError, match="empty"):
            mask_box(mask)
        return
    x0, y0, x1, y1 = mask_box(mask)
    rows = [r for r in range(mask.shape[0]) if mask[r].any()]
    cols = [c for c in range(mask.shape[1]) if mask[:, c].any()]
    assert (x0, y0, x1, y1) == (min(cols), min(rows), max(cols), max(rows))
    box = filled_box(mask)
    assert box[mask].all() and box.sum() == (x1 - x0 + 1) * (y1 - y0 + 1)


@pytest.mark.parametrize("prompt", ["mask", "box"])
def test_one_prompt_propagation_and_its_baseline(random_predictor: SAM2Predictor, prompt: str) -> None:
    (image, label), = heldout_phantoms(1, 1)
    out = one_prompt_propagation(random_predictor, image, label, prompt=prompt)  # type: ignore[arg-type]
    truth = np.asarray(label.array)
    assert out.labels.shape == image.shape
    assert set(np.unique(out.labels)) <= set(np.unique(truth))
    for lab, k in out.prompt_slices.items():
        mask = truth == lab
        moved = np.moveaxis(mask, out.axis, 0)
        areas = moved.reshape(len(moved), -1).sum(1)
        assert k == int(np.argmax(areas))
        expected = np.zeros_like(moved)
        for z in range(len(moved)):  # brute force: the prompt mask on every slice holding the label
            if areas[z]:
                expected[z] = moved[k]
        assert np.array_equal(np.moveaxis(out.baseline[lab], out.axis, 0), expected)


def test_one_prompt_propagation_rejects_an_unknown_prompt(random_predictor: SAM2Predictor) -> None:
    (image, label), = heldout_phantoms(1, 1)
    with pytest.raises(InvalidInputError, match="prompt"):
        one_prompt_propagation(random_predictor, image, label, prompt="scribble")  # type: ignore[arg-type]


def test_track_recording_scores_against_brute_force(random_predictor: SAM2Predictor) -> None:
    from medsam2kit.metrics import j_and_f
    from medsam2kit.phantoms import ultrasound_clip

    frames, labels = ultrasound_clip(6, (48, 40), rng=np.random.default_rng(0))
    truth = labels == 1
    truth[0] = False  # the first labelled frame is then frame 1
    s = track_recording(random_predictor, frames, truth)
    assert s.prompt_frame == 1 and s.masks.shape == frames.shape
    copied = np.broadcast_to(truth[1], truth[2:].shape)
    assert s.copy_dice == pytest.approx(dice(copied, truth[2:]))
    assert s.copy_jf == pytest.approx(j_and_f(copied, truth[2:]).jf_mean)
    assert s.dice == pytest.approx(dice(s.masks[2:], truth[2:]))


def test_track_recording_rejects_bad_input(random_predictor: SAM2Predictor) -> None:
    frames = np.zeros((3, 16, 16), np.uint8)
    with pytest.raises(ShapeMismatchError, match="frames, masks"):
        track_recording(random_predictor, frames, np.zeros((3, 16, 15), bool))
    late = np.zeros((3, 16, 16), bool)
    late[2, 4:8, 4:8] = True
    with pytest.raises(InvalidInputError, match="followed by"):
        track_recording(random_predictor, frames, late)


def test_box_prompt_image_shape_and_errors(random_predictor: SAM2Predictor) -> None:
    image = np.random.default_rng(0).integers(0, 255, (30, 50)).astype(np.uint8)
    mask = np.zeros((30, 50), bool)
    mask[5:20, 10:40] = True
    out = box_prompt_image(random_predictor, image, mask)
    assert out.shape == image.shape and out.dtype == bool
    with pytest.raises(ShapeMismatchError, match="image, mask"):
        box_prompt_image(random_predictor, image, mask[:, :10])
    with pytest.raises(InvalidInputError, match="empty"):
        box_prompt_image(random_predictor, image, np.zeros_like(mask))
