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
