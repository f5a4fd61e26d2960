from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsam2kit.errors import InvalidInputError
from medsam2kit.phantoms import ellipsoid_phantom, rotation_affine


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 5.0), st.floats(-90, 90))
def test_phantom_geometry_and_labels(seed: int, dz: float, angle: float) -> None:
    image, label = ellipsoid_phantom((8, 24, 20), (dz, 1.0, 0.9), angles_deg=(angle, 0.0, 0.0), rng=seed)
    assert image.shape == label.shape == (8, 24, 20)
    np.testing.assert_allclose(image.spacing, (dz, 1.0, 0.9), rtol=1e-9)
    assert set(np.unique(label.array)) <= {0, 1, 2}
    assert (label.array == 2).any()
    # the core is inside the shell: brighter on average
    assert image.array[label.array == 2].mean() > image.array[label.array == 1].mean()


def test_phantom_is_seeded() -> None:
    a, _ = ellipsoid_phantom(rng=3)
    b, _ = ellipsoid_phantom(rng=3)
    c, _ = ellipsoid_phantom(rng=4)
    assert np.array_equal(a.array, b.array) and not np.array_equal(a.array, c.array)


def test_rotation_affine_is_orthogonal_times_spacing() -> None:
    a = rotation_affine((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    r = a[:3, :3] / np.array([2.0, 3.0, 4.0])
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)


def test_phantom_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="spacing"):
        ellipsoid_phantom(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidInputError, match="shape"):
        ellipsoid_phantom(shape=(2, 10, 10))


def test_tube_label_is_a_connected_tube_along_axis0() -> None:
    from scipy import ndimage

    _, label = ellipsoid_phantom((20, 64, 64), (2.0, 1.0, 1.0), tube=True, rng=1)
    tube = label.array == 3
    assert tube.any(axis=(1, 2)).all()  # present on every slice
    assert ndimage.label(tube)[1] == 1


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_ultrasound_clip_physics(seed: int) -> None:
    from medsam2kit.phantoms import ultrasound_clip

    clip, labels = ultrasound_clip(6, (96, 96), rng=seed)
    assert clip.shape == labels.shape == (6, 96, 96) and clip.dtype == np.uint8
    chamber = labels == 1
    assert chamber.any(axis=(1, 2)).all()
    # the chamber is dark, the occluder bright
    assert clip[chamber].mean() < clip[(labels == 0) & (clip > 0)].mean()
    assert clip[labels == 2].mean() > clip[(labels == 0) & (clip > 0)].mean()
    # the structure moves or beats: masks differ over time
    assert not np.array_equal(labels[0], labels[-1])
    # the scan sector: the top corners are outside it
    assert clip[:, 0, 0].max() == 0 and clip[:, 0, -1].max() == 0
    a, _ = ultrasound_clip(6, (96, 96), rng=seed)
    np.testing.assert_array_equal(a, clip)
