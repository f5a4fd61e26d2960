from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam2kit.errors import ShapeMismatchError
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.viz import PALETTE, outline, overlay_montage, overlay_slice, save_png


def test_outline_is_the_inner_boundary() -> None:
    m = np.zeros((7, 7), bool)
    m[1:6, 2:5] = True
    ref = m.copy()
    ref[2:5, 3:4] = False  # interior pixels (all 4 neighbours inside)
    np.testing.assert_array_equal(outline(m), ref)


def test_overlay_colours_outlines_only() -> None:
    gray = np.full((9, 9), 100, np.uint8)
    lab = np.zeros((9, 9), int)
    lab[2:7, 2:7] = 1
    rgb = overlay_slice(gray, [lab])
    assert tuple(rgb[2, 4]) == PALETTE[0]  # boundary
    assert tuple(rgb[4, 4]) == (100, 100, 100)  # interior untouched
    assert tuple(rgb[0, 0]) == (100, 100, 100)


def test_montage_and_png(tmp_path: Path) -> None:
    image, label = ellipsoid_phantom((10, 40, 30), rng=0)
    rgb = overlay_montage(image, {"a": label.array, "b": (label.array == 2).astype(np.uint8)}, count=5, columns=3, tile=64)
    assert rgb.shape == (18 + 2 * 64, 3 * 64, 3)
    path = save_png(rgb, tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    with pytest.raises(ShapeMismatchError, match="overlays"):
        overlay_montage(image, {"a": label.array[:-1]})
