"""Zoom crops (medsam2kit.roi): geometry against brute force, crop/paste inverses, and the tasks'
zoomed path against cropping by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.roi import Roi, roi_around
from medsam2kit.volume import Volume


@st.composite
def prompts(draw: st.DrawFn) -> tuple[tuple[int, int, int], int, np.ndarray, float, int]:
    shape = tuple(draw(st.integers(1, 40)) for _ in range(3))
    axis = draw(st.integers(0, 2))
    h, w = (shape[a] for a in range(3) if a != axis)
    y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    y1, x1 = draw(st.integers(y0, h - 1)), draw(st.integers(x0, w - 1))
    mask = np.zeros((h, w), bool)
    mask[y0:y1 + 1, x0:x1 + 1] = draw(st.booleans()) or True
    return shape, axis, mask, draw(st.floats(1.0, 4.0)), draw(st.integers(1, 20))  # type: ignore[return-value]


@settings(max_examples=200, deadline=None)
@given(prompts())
def test_roi_around_holds_the_prompt_and_has_the_asked_size(case: tuple) -> None:
    shape, axis, mask, factor, min_side = case
    roi = roi_around(mask, shape, axis=axis, factor=factor, min_side=min_side)
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    side = max(min_side, factor * max(np.ptp(rows) + 1, np.ptp(cols) + 1))
    for (a, b), lo, hi, n in ((roi.rows, rows.min(), rows.max(), h), (roi.cols, cols.min(), cols.max(), w)):
        assert 0 <= a and b <= n
        assert b - a == min(n, round(side))  # square unless the slice is smaller
        assert a <= lo and hi < b  # the whole prompt is inside
    # centred: the prompt's margins on either side differ by at most one voxel, unless clamped
    for (a, b), lo, hi, n in ((roi.rows, rows.min(), rows.max(), h), (roi.cols, cols.min(), cols.max(), w)):
        if 0 < a and b < n:
            assert abs((lo - a) - (b - 1 - hi)) <= 1
    # the same crop from the mask's box
    box = [cols.min(), rows.min(), cols.max(), rows.max()]
    assert roi_around(box, shape, axis=axis, factor=factor, min_side=min_side) == roi


@settings(max_examples=100, deadline=None)
@given(prompts(), st.integers(0, 2**31 - 1))
def test_crop_paste_and_world_geometry(case: tuple, seed: int) -> None:
    shape, axis, mask, factor, min_side = case
    roi = roi_around(mask, shape, axis=axis, factor=factor, min_side=min_side)
    rng = np.random.default_rng(seed)
    values = rng.random(shape)
    pasted = roi.paste(roi.crop(values), fill=-1.0)
    inside = np.zeros(shape, bool)
    inside[roi.index] = True
    assert np.array_equal(pasted[inside], values[inside]) and np.all(pasted[~inside] == -1.0)
    # world positions: cropped voxel v sits where the full volume's voxel v + offset sits
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3)) + 3 * np.eye(3)
    affine[:3, 3] = rng.normal(size=3) * 50
    full = Volume(values, affine, modality="CT")
    crop = roi.crop_volume(full)
    assert crop.modality == "CT" and crop.shape == roi.crop(values).shape
    ijk = np.array([rng.integers(0, n) for n in crop.shape], dtype=np.float64)
    world_crop = crop.affine @ np.append(ijk, 1.0)
    world_full = full.affine @ np.append(ijk + np.asarray(roi.offset), 1.0)
    np.testing.assert_allclose(world_crop, world_full, atol=1e-9)
    assert crop.array[tuple(ijk.astype(int))] == values[tuple((ijk + roi.offset).astype(int))]
    sl = roi.crop_slice(np.take(values, 0, axis=axis))
    assert np.array_equal(sl, np.take(roi.crop(values), 0, axis=axis))


def test_roi_errors_name_the_argument() -> None:
    with pytest.raises(InvalidInputError, match="mask: .*empty"):
        roi_around(np.zeros((4, 4), bool), (2, 4, 4), axis=0, factor=2.0)
    with pytest.raises(InvalidInputError, match="factor: .*>= 1"):
        roi_around([0, 0, 1, 1], (2, 4, 4), axis=0, factor=0.5)
    with pytest.raises(InvalidInputError, match="min_side"):
        roi_around([0, 0, 1, 1], (2, 4, 4), axis=0, factor=2.0, min_side=0)
    with pytest.raises(InvalidInputError, match="box .* on the 4 x 4 slice"):
        roi_around([5, 5, 6, 6], (2, 4, 4), axis=0, factor=2.0)
    with pytest.raises(ShapeMismatchError, match="one slice of shape"):
        roi_around(np.ones((3, 4), bool), (2, 4, 4), axis=0, factor=2.0)
    with pytest.raises(InvalidInputError, match="rows: expected 0 <= start < stop <= 4"):
        Roi((2, 4, 4), 0, (2, 6), (0, 4))
    roi = Roi((2, 4, 4), 0, (1, 3), (0, 2))
    with pytest.raises(ShapeMismatchError, match="full grid"):
        roi.crop(np.zeros((2, 4, 5)))
    with pytest.raises(ShapeMismatchError, match="crop's shape"):
        roi.paste(np.zeros((2, 4, 4)), fill=0.0)
