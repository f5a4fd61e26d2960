"""The Volume value: a short repr and its orientation codes."""

from __future__ import annotations

import numpy as np

from medsam2kit.phantoms import rotation_affine
from medsam2kit.volume import Volume


def test_repr_is_one_short_line_without_the_voxels() -> None:
    vol = Volume(np.arange(64 * 64 * 40, dtype=np.float32).reshape(40, 64, 64), np.diag([2.5, 0.8, 0.8, 1.0]))
    text = repr(vol)
    assert text == "Volume(shape=(40, 64, 64), dtype=float32, spacing=(2.5, 0.8, 0.8) mm, orientation='RAS', kind='volume')"
    assert str(vol) == text and "\n" not in text and "163839" not in text  # print() gives the summary too


def test_repr_names_orientation_kind_modality_and_source() -> None:
    lps = np.diag([-0.5, -0.5, 3.0, 1.0])
    cine = Volume(np.zeros((5, 8, 9), np.uint8), lps, kind="cine", modality="US", source="clip.dcm")
    assert cine.orientation == "LPS"
    assert repr(cine) == ("Volume(shape=(5, 8, 9), dtype=uint8, spacing=(0.5, 0.5, 3) mm, orientation='LPS', "
                          "kind='cine', modality='US', source='clip.dcm')")
    permuted = Volume(np.zeros((2, 3, 4), np.int16), np.eye(4)[:, [2, 0, 1, 3]])  # axis 0 along world z
    assert permuted.orientation == "SRA"


def test_orientation_of_an_oblique_affine_is_the_nearest_axes() -> None:
    vol = Volume(np.zeros((2, 3, 4)), rotation_affine((1.0, 1.0, 1.0), (0.0, 0.0, 20.0)))
    assert vol.orientation == "RAS"
    assert "orientation='RAS'" in repr(vol)
