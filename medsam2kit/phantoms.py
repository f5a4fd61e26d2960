"""Seeded synthetic data with ground truth, made by the library itself (no files needed).

Example:
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> image, label = ellipsoid_phantom(rng=0)
    >>> image.shape == label.shape, sorted(set(label.array.ravel().tolist()))
    (True, [0, 1, 2])
"""

from __future__ import annotations

import numpy as np

from medsam2kit.errors import InvalidInputError
from medsam2kit.volume import Volume


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def rotation_affine(spacing: tuple[float, float, float], angles_deg: tuple[float, float, float]) -> np.ndarray:
    """A 4x4 voxel-to-world affine: rotations about x, y, z (degrees) times diag(spacing).

    Example:
        >>> import numpy as np
        >>> a = rotation_affine((2.0, 1.0, 1.0), (0.0, 0.0, 90.0))
        >>> np.round(np.linalg.norm(a[:3, :3], axis=0), 6).tolist()
        [2.0, 1.0, 1.0]
    """
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    return affine


def ellipsoid_phantom(
    shape: tuple[int, int, int] = (24, 96, 80),
    spacing: tuple[float, float, float] = (3.0, 0.8, 0.8),
    *,
    angles_deg: tuple[float, float, float] = (0.0, 10.0, 25.0),
    noise: float = 0.08,
    rng: np.random.Generator | int | None = None,
) -> tuple[Volume, Volume]:
    """An MR-like volume with two nested ellipsoids (labels 1 outer shell, 2 core) and its labels.

    Sizes are drawn in mm, so the structures look the same at any spacing; the affine is
    oblique (``angles_deg``) to exercise geometry handling.

    Args:
        shape: ``(D, H, W)`` voxels.
        spacing: mm per voxel along the three array axes.
        angles_deg: rotation of the grid in the world.
        noise: standard deviation of Gaussian noise on intensities in [0, 1].
        rng: seed or generator.

    Returns:
        ``(image, label)``: float32 image in about [0, 1] and uint8 labels on the same grid.
    """
    if len(shape) != 3 or min(shape) < 4:
        raise InvalidInputError(f"shape: expected three sizes >= 4, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InvalidInputError(f"spacing: expected three positive values, got {spacing}")
    if noise < 0:
        raise InvalidInputError(f"noise: expected >= 0, got {noise}")
    gen = _rng(rng)
    extent = np.array(shape) * np.array(spacing)
    centre = extent * gen.uniform(0.42, 0.58, 3)
    radii = extent * gen.uniform(0.22, 0.32, 3)
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    label = np.zeros(shape, np.uint8)
    label[r2 <= 1.0] = 1
    label[r2 <= 0.35] = 2
    image = 0.15 + 0.45 * (label == 1) + 0.75 * (label == 2) + gen.normal(0.0, noise, shape)
    affine = rotation_affine(spacing, angles_deg)
    return Volume(image.astype(np.float32), affine, modality="MR"), Volume(label, affine)


__all__ = ["ellipsoid_phantom", "rotation_affine"]
