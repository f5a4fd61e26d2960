"""Seeded synthetic data with ground truth, made by the library itself (no files needed).

Example:
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> image, label = ellipsoid_phantom(rng=0)
    >>> image.shape == label.shape, sorted(set(label.array.ravel().tolist()))
    (True, [0, 1, 2])
"""

from __future__ import annotations

import numpy as np

from medsam2kit._validate import check_rng
from medsam2kit.errors import InvalidInputError
from medsam2kit.volume import Volume


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
    tube: bool = False,
    rng: np.random.Generator | int | None = None,
) -> tuple[Volume, Volume]:
    """An MR-like volume with two nested ellipsoids (labels 1 outer shell, 2 core) and its labels.

    With ``tube=True`` a curved tubular structure (label 3, a vessel) runs through the volume
    along axis 0 beside the ellipsoid.

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
    gen = check_rng(rng)
    extent = np.array(shape) * np.array(spacing)
    centre = extent * gen.uniform(0.42, 0.58, 3)
    radii = extent * gen.uniform(0.22, 0.32, 3)
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    label = np.zeros(shape, np.uint8)
    if tube:
        # a sinuous tube parallel to axis 0, radius 6-9 % of the in-plane extent, off the centre
        phase, amp = gen.uniform(0, 2 * np.pi), extent[1:] * gen.uniform(0.04, 0.08, 2)
        path_y = extent[1] * 0.18 + amp[0] * np.sin(2 * np.pi * grids[0] / extent[0] + phase)
        path_x = extent[2] * 0.2 + amp[1] * np.cos(2 * np.pi * grids[0] / extent[0] + phase)
        radius = min(extent[1:]) * gen.uniform(0.06, 0.09)
        label[(grids[1] - path_y) ** 2 + (grids[2] - path_x) ** 2 <= radius**2] = 3
    label[r2 <= 1.0] = 1
    label[r2 <= 0.35] = 2
    image = 0.15 + 0.45 * (label == 1) + 0.75 * (label == 2) + 0.6 * (label == 3) + gen.normal(0.0, noise, shape)
    affine = rotation_affine(spacing, angles_deg)
    return Volume(image.astype(np.float32), affine, modality="MR"), Volume(label, affine)


def random_phantom(rng: np.random.Generator | int | None = None) -> tuple[Volume, Volume]:
    """An :func:`ellipsoid_phantom` with randomly drawn geometry: the training and test
    distribution of the bundled micro model (seeds keep them apart).

    Draws the grid (12-32 slices of 56-128 x 56-128 voxels), anisotropic spacing (slices
    1.5-4 mm, pixels 0.6-1.2 mm), an oblique orientation, the noise level (0.02-0.12) and,
    half of the time, a tube (label 3).

    Example:
        >>> image, label = random_phantom(3)
        >>> image.array.ndim, bool(label.array.any())
        (3, True)
    """
    gen = check_rng(rng)
    shape = (int(gen.integers(12, 33)), int(gen.integers(56, 129)), int(gen.integers(56, 129)))
    pixel = float(gen.uniform(0.6, 1.2))
    spacing = (float(gen.uniform(1.5, 4.0)), pixel, pixel)
    ax, ay, az = (float(a) for a in gen.uniform(-30.0, 30.0, 3))
    return ellipsoid_phantom(shape, spacing, angles_deg=(ax, ay, az), noise=float(gen.uniform(0.02, 0.12)),
                             tube=bool(gen.random() < 0.5), rng=gen)


def ultrasound_clip(
    frames: int = 8,
    size: tuple[int, int] = (128, 128),
    *,
    occluder: bool = True,
    speckle: bool = True,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A B-mode-like clip with ground truth: a fan sector, speckle, depth attenuation, a
    dark chamber with a bright wall that moves and beats (label 1) and, optionally, a bright
    occluder (label 2) casting an acoustic shadow down its beams.

    Args:
        frames: clip length ``T``.
        size: ``(H, W)`` pixels.
        occluder: add the occluder and its shadow.
        speckle: multiplicative Rayleigh speckle (unit mean), redrawn per frame.
        rng: seed or generator.

    Returns:
        ``(clip, labels)``: uint8 ``(T, H, W)`` images (0 outside the sector) and uint8
        ``(T, H, W)`` label maps.

    Example:
        >>> clip, labels = ultrasound_clip(4, (64, 64), rng=0)
        >>> clip.shape, clip.dtype, sorted(np.unique(labels).tolist())
        ((4, 64, 64), dtype('uint8'), [0, 1, 2])
    """
    from scipy.ndimage import gaussian_filter

    h, w = size
    if frames < 1 or h < 32 or w < 32:
        raise InvalidInputError(f"frames, size: expected frames >= 1 and both sides >= 32, got {frames}, {size}")
    gen = check_rng(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    apex_x, apex_y = w / 2 + gen.uniform(-0.05, 0.05) * w, -0.12 * h
    half = gen.uniform(0.5, 0.7)
    r_min, r_max = 0.18 * h, 1.08 * h
    radius = np.hypot(xx - apex_x, yy - apex_y)
    theta = np.arctan2(xx - apex_x, yy - apex_y)
    sector = (radius >= r_min) & (radius <= r_max) & (np.abs(theta) <= half)
    depth = np.clip((radius - r_min) / (r_max - r_min), 0, 1)
    tissue = 0.45 + 1.5 * gaussian_filter(gen.normal(size=(h, w)), 3.0)  # smooth texture, std ~0.14
    cy, cx = h * gen.uniform(0.45, 0.6), w * gen.uniform(0.4, 0.6)
    ry, rx = h * gen.uniform(0.14, 0.2), w * gen.uniform(0.12, 0.18)
    period, phase = gen.uniform(5, 9), gen.uniform(0, 2 * np.pi)
    drift = gen.uniform(-0.6, 0.6, 2)
    oy, ox = cy - ry - h * 0.12, cx + gen.uniform(-0.5, 0.5) * rx
    o_r = min(h, w) * 0.045
    clip = np.zeros((frames, h, w), np.uint8)
    labels = np.zeros((frames, h, w), np.uint8)
    for t in range(frames):
        beat = 1.0 + 0.15 * np.sin(2 * np.pi * t / period + phase)
        y0, x0 = cy + drift[0] * t, cx + drift[1] * t
        r2 = ((yy - y0) / (ry * beat)) ** 2 + ((xx - x0) / (rx * (2 - beat) ** 0.5)) ** 2
        chamber = r2 <= 1.0
        wall = (r2 > 1.0) & (r2 <= 1.35)
        img = np.where(chamber, 0.07, tissue)
        img = np.where(wall, 0.85, img)
        lab = chamber.astype(np.uint8)
        if occluder:
            occ = (yy - oy) ** 2 + (xx - ox - drift[1] * t) ** 2 <= o_r**2
            occ_theta = np.arctan2(ox + drift[1] * t - apex_x, oy - apex_y)
            span = np.arctan2(o_r, np.hypot(ox - apex_x, oy - apex_y))
            shadow = (np.abs(theta - occ_theta) <= span) & (radius > np.hypot(ox - apex_x, oy - apex_y))
            img = np.where(shadow & ~occ, img * 0.3, img)
            img = np.where(occ, 1.0, img)
            lab = np.where(occ, 2, lab).astype(np.uint8)
        img = img * np.exp(-1.2 * depth)
        if speckle:
            img = img * gen.rayleigh(scale=np.sqrt(2 / np.pi), size=(h, w))
        clip[t] = np.where(sector, np.clip(np.rint(255 * img), 0, 255), 0).astype(np.uint8)
        labels[t] = np.where(sector, lab, 0)
    return clip, labels


__all__ = ["ellipsoid_phantom", "random_phantom", "rotation_affine", "ultrasound_clip"]
