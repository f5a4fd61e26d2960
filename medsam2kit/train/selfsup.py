"""Self-supervised training objects with real texture: supervoxels of real volumes, objects
pasted into real volumes, moving images.

Labelled real data are few (a handful of volumes, recordings and images), but every real volume,
labelled or not, is full of structures a tracker must follow through slices: organs, vessels,
fat, tissue boundaries. Two sources turn real pixels into trackable objects:

* :func:`region_labels`: 3D SLIC supervoxels of a real volume (``skimage.segmentation.slic`` on
  the percentile-windowed intensities, in mm so a supervoxel is compact in space, with a low
  compactness so its borders follow real intensity edges). Supervoxels at a random scale (each
  1-12 % of a slice in area) that span at least ``min_slices`` slices and are not flat
  background become objects. Sliced along an axis they appear, grow, shrink and vanish like
  anatomy does, with real texture inside and outside; the object-score head learns "absent",
  which phantoms (objects present on nearly every slice) never taught the first reference model.
* :func:`pasted_labels`: smooth random 3D shapes pasted into a real volume, their inside
  filled with real texture from elsewhere in the same volume at a random contrast (faint to
  clear) with a soft edge. Unlike a supervoxel, a pasted object has a defined, visible border,
  so it is an unambiguous target for a mask, a box or a click; unlike a phantom, it sits among
  real anatomy whose bright, salient structures are *not* the object, so the tracker has to
  follow the object's shape and texture from slice to slice instead of the most salient blob.
* :func:`moving_clip`: a labelled 2D image (a fetal-head ultrasound) becomes a short clip by
  moving the image and its mask along a smooth random rigid-plus-scale trajectory, so 2D
  labels train tracking and box prompts on real images.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> vol = np.random.default_rng(1).normal(size=(12, 48, 48)).astype(np.float32)
    >>> vol[3:10, 10:30, 12:32] += 4.0
    >>> lab = region_labels(vol, (1.0, 1.0, 1.0), axis=0, rng=rng)
    >>> lab.shape, lab.dtype, int(lab.max()) >= 1
    ((12, 48, 48), dtype('uint8'), True)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsam2kit.errors import InvalidInputError

if TYPE_CHECKING:
    from medsam2kit.train.data import Video

#: In-plane voxel sides may differ by this factor at most for an axis to be sliced along.
MAX_IN_PLANE_RATIO = 2.5
#: Per-frame jitter of :func:`moving_clip`'s pose, as a fraction of its bounds.
WOBBLE = 0.1


def region_labels(volume: np.ndarray, spacing: Sequence[float] | np.ndarray, *, axis: int, rng: np.random.Generator,
                  max_objects: int = 8, min_slices: int = 3, area_range: tuple[float, float] = (0.01, 0.12),
                  compactness_range: tuple[float, float] = (0.02, 0.2)) -> np.ndarray:
    """A label map ``1..K`` of supervoxels to track along ``axis`` (0 elsewhere).

    Args:
        volume: ``(D, H, W)`` intensities (any range; windowed at the 0.5-99.5 % percentiles).
        spacing: voxel size in mm per array axis.
        axis: the slicing axis the objects are tracked along.
        rng: draws the scale, the compactness and which supervoxels are kept.
        max_objects: ``K`` at most.
        min_slices: a kept supervoxel spans at least this many slices.
        area_range: the supervoxel scale, drawn log-uniformly, as the fraction of a slice's area
            a supervoxel's cross-section covers; kept supervoxels have their median
            cross-section within half and twice that range.
        compactness_range: SLIC compactness, drawn log-uniformly (lower follows edges more).

    Returns:
        uint8 labels of ``volume``'s shape (all 0 when no supervoxel qualifies).

    Raises:
        InvalidInputError: ``volume`` is not 3D, or ``axis``/``spacing`` do not fit it.
    """
    from skimage.segmentation import slic

    x, sp, slice_mm2 = _windowed(volume, spacing, axis)
    frac = float(np.exp(rng.uniform(np.log(area_range[0]), np.log(area_range[1]))))
    side_mm = np.sqrt(frac * slice_mm2)
    total_mm3 = float(np.prod(np.asarray(volume.shape) * sp))
    n_segments = int(np.clip(total_mm3 / side_mm**3, 8, 4000))
    compactness = float(np.exp(rng.uniform(np.log(compactness_range[0]), np.log(compactness_range[1]))))
    seg = slic(x, n_segments=n_segments, compactness=compactness, spacing=sp, channel_axis=None,
               start_label=1, enforce_connectivity=True, sigma=0.5)
    return _pick_regions(seg, x, axis=axis, rng=rng, max_objects=max_objects, min_slices=min_slices,
                         area=(frac / 2, frac * 2))


def _windowed(volume: np.ndarray, spacing: Sequence[float] | np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The volume windowed at its 0.5-99.5 % percentiles to 0-1 (float32), the spacing as an
    array and a slice's area in mm² along ``axis``; checks the volume is 3D and ``axis`` and
    ``spacing`` fit it."""
    if volume.ndim != 3:
        raise InvalidInputError(f"volume: expected (D, H, W), got shape {volume.shape}")
    if axis not in (0, 1, 2) or len(spacing) != 3:
        raise InvalidInputError(f"axis, spacing: expected an axis in 0..2 and 3 spacings, got {axis}, {spacing}")
    lo, hi = np.percentile(volume, [0.5, 99.5])
    x = np.clip((volume.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    sp = np.asarray(spacing, dtype=np.float64)
    slice_mm2 = float(np.prod([volume.shape[a] * sp[a] for a in range(3) if a != axis]))
    return x, sp, slice_mm2


def _pick_regions(seg: np.ndarray, x: np.ndarray, *, axis: int, rng: np.random.Generator, max_objects: int,
                  min_slices: int, area: tuple[float, float]) -> np.ndarray:
    n = int(seg.max())
    index = np.arange(1, n + 1)
    plane = float(np.prod([s for a, s in enumerate(seg.shape) if a != axis]))
    count = ndimage.sum_labels(np.ones_like(seg, dtype=np.float32), seg, index)
    with np.errstate(invalid="ignore", divide="ignore"):  # label numbers SLIC left unused
        mean = np.nan_to_num(ndimage.mean(x, seg, index))
        std = np.nan_to_num(ndimage.standard_deviation(x, seg, index))
    moved = np.moveaxis(seg, axis, 0)
    slices = np.zeros(n + 1, dtype=np.int64)
    for s in moved:
        slices[np.unique(s)] += 1
    extent = slices[1:]
    median_area = count / np.maximum(extent, 1) / plane
    textured = (mean > 0.05) & (std > 0.01)
    ok = (extent >= min_slices) & (median_area >= area[0]) & (median_area <= area[1]) & textured
    candidates = index[ok]
    out = np.zeros(seg.shape, dtype=np.uint8)
    if candidates.size == 0:
        return out
    chosen = rng.choice(candidates, size=min(max_objects, candidates.size), replace=False)
    for k, r in enumerate(sorted(int(c) for c in chosen), start=1):
        out[seg == r] = k
    return out


#: Contrast of a pasted object against its surroundings (windowed intensity, 0-1), drawn
#: uniformly, with a random sign: from faint to clear.
PASTE_CONTRAST: tuple[float, float] = (0.05, 0.35)
#: A pasted object is centred where the windowed intensity (3-voxel mean) exceeds this: in the
#: body, not in air or padding.
TISSUE = 0.1


def pasted_labels(volume: np.ndarray, spacing: Sequence[float] | np.ndarray, *, axis: int, rng: np.random.Generator,
                  max_objects: int = 3, min_slices: int = 3, area_range: tuple[float, float] = (0.01, 0.12),
                  contrast_range: tuple[float, float] = PASTE_CONTRAST) -> tuple[np.ndarray, np.ndarray]:
    """Paste 1 to ``max_objects`` smooth random 3D shapes into a real volume; they are the objects.

    Each shape is centred in the body (windowed intensity above :data:`TISSUE`), an ellipsoid
    (random axes and rotation, sized in mm so that its largest cross-section along ``axis``
    covers a fraction of the slice drawn log-uniformly from ``area_range``) with a border made
    irregular by smooth noise. Inside, the volume's windowed intensities are replaced by the same
    volume shifted by a random in-plane offset (real texture from elsewhere), moved to differ
    from the shape's surroundings by a contrast drawn from ``contrast_range`` with a random sign;
    the edge is blended over about two voxels. A later
    shape keeps out of the earlier ones; a shape left on fewer than ``min_slices`` slices (by the
    volume's edge or the earlier shapes) is not pasted.

    Args:
        volume: ``(D, H, W)`` intensities (any range; windowed at the 0.5-99.5 % percentiles).
        spacing: voxel size in mm per array axis.
        axis: the slicing axis the objects are tracked along.
        rng: draws every shape, place, texture and contrast.
        max_objects: shapes at most.
        min_slices: a kept shape spans at least this many slices.
        area_range: largest cross-section as a fraction of a slice's area.
        contrast_range: absolute contrast bounds, windowed intensity (0-1).

    Returns:
        The windowed volume with the shapes pasted (float32 in 0-1) and uint8 labels ``1..K``.

    Raises:
        InvalidInputError: ``volume`` is not 3D, or ``axis``/``spacing`` do not fit it.

    Example:
        >>> vol = np.random.default_rng(1).random((10, 40, 40)).astype(np.float32)
        >>> img, lab = pasted_labels(vol, (2.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(0))
        >>> img.shape, lab.dtype, int(lab.max()) >= 1, float(img.min()) >= 0.0
        ((10, 40, 40), dtype('uint8'), True, True)
    """
    x, sp, slice_mm2 = _windowed(volume, spacing, axis)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    tissue = np.flatnonzero(ndimage.uniform_filter(x, 3) > TISSUE)  # not air or padding
    if tissue.size == 0:
        return x, labels
    for _ in range(int(rng.integers(1, max_objects, endpoint=True))):
        shape = _random_shape(volume.shape, sp, tissue, axis=axis, rng=rng, slice_mm2=slice_mm2,
                              area_range=area_range, min_slices=min_slices)
        if shape is None:
            continue
        shape &= labels == 0  # earlier shapes stay whole
        if np.count_nonzero(np.moveaxis(shape, axis, 0).any(axis=(1, 2))) < min_slices:
            continue  # cut by the volume's edge or by earlier shapes: not pasted at all
        shift = [int(rng.integers(volume.shape[a] // 4, 3 * volume.shape[a] // 4 + 1)) if a != axis else 0
                 for a in range(3)]
        texture = np.roll(x, shift, axis=(0, 1, 2))
        ring = ndimage.binary_dilation(shape, iterations=2) & ~shape
        around = float(x[ring].mean()) if ring.any() else float(x.mean())
        sign = 1.0 if rng.random() < 0.5 else -1.0
        target = float(np.clip(around + sign * rng.uniform(*contrast_range), 0.0, 1.0))
        inside = np.clip(texture - float(texture[shape].mean()) + target, 0.0, 1.0)
        alpha = np.clip(ndimage.gaussian_filter(shape.astype(np.float32), 0.7), 0.0, 1.0)
        alpha[shape] = np.maximum(alpha[shape], 0.5)
        alpha[alpha < 0.01] = 0.0  # the blend ends about two voxels out
        alpha[labels > 0] = 0.0  # and leaves the earlier shapes as they are
        x = x * (1 - alpha) + inside * alpha
        labels[shape] = int(labels.max()) + 1
    return x.astype(np.float32), labels


def _random_shape(shape: tuple[int, ...], spacing: np.ndarray, tissue: np.ndarray, *, axis: int,
                  rng: np.random.Generator, slice_mm2: float, area_range: tuple[float, float],
                  min_slices: int) -> np.ndarray | None:
    """A bool mask of one irregular ellipsoid centred on one of the ``tissue`` voxels (flat
    indices), ``None`` when it cannot span ``min_slices`` slices."""
    frac = float(np.exp(rng.uniform(np.log(area_range[0]), np.log(area_range[1]))))
    radius = np.sqrt(frac * slice_mm2 / np.pi)  # mm, of the largest cross-section
    aspect = rng.uniform(0.6, 1.0)
    radii = np.array([radius, radius, radius])
    in_plane = [a for a in range(3) if a != axis]
    radii[in_plane[0]] *= aspect ** -0.5
    radii[in_plane[1]] *= aspect ** 0.5
    depth_mm = spacing[axis] * shape[axis]
    radii[axis] = float(np.clip(radius * rng.uniform(0.5, 1.5), min_slices * spacing[axis] / 2, depth_mm / 2))
    if 2 * radii[axis] / spacing[axis] < min_slices - 1e-6:
        return None
    rot = _rotation(rng, axis)
    half = np.ceil(radii.max() * 1.3 / spacing).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij"), -1)
    local = grid @ rot.T / radii
    noise = ndimage.gaussian_filter(rng.normal(size=grid.shape[:3]), sigma=np.maximum(half / 3, 1.0))
    noise /= max(float(np.abs(noise).max()), 1e-6)
    inside = (local**2).sum(-1) < 1.0 + 0.35 * noise
    centre = [int(c) for c in np.unravel_index(int(rng.choice(tissue)), shape)]
    out = np.zeros(shape, dtype=bool)
    src, dst = [], []
    for c, h, n in zip(centre, half, shape):
        a, b = c - h, c + h + 1
        dst.append(slice(max(a, 0), min(b, n)))
        src.append(slice(max(a, 0) - a, 2 * h + 1 - (b - min(b, n))))
    out[tuple(dst)] = inside[tuple(src)]
    return out if out.any() else None


def _rotation(rng: np.random.Generator, axis: int) -> np.ndarray:
    """A random rotation mostly in the slice plane (up to 180 degrees) with a tilt of up to 30."""
    def turn(a: int, b: int, angle: float) -> np.ndarray:
        m = np.eye(3)
        m[a, a] = m[b, b] = np.cos(angle)
        m[a, b], m[b, a] = -np.sin(angle), np.sin(angle)
        return m

    p, q = [a for a in range(3) if a != axis]
    return turn(p, q, rng.uniform(0, np.pi)) @ turn(axis, p, rng.uniform(-np.pi / 6, np.pi / 6))


def moving_clip(frame: torch.Tensor, masks: torch.Tensor, length: int, *, generator: torch.Generator,
                max_shift: float = 0.08, max_angle: float = 12.0, max_scale: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``length``-frame clip of one image moving smoothly (rotation, scale, translation).

    The pose goes linearly from a random start to a random end (each within the given bounds)
    with a random wobble of :data:`WOBBLE` times the bounds on every frame; frame and masks are resampled with the same transform
    (bilinear and nearest), outside the image is 0.

    Args:
        frame: uint8 ``(S, S)``.
        masks: bool ``(K, S, S)``.
        length: frames of the clip.
        generator: draws the trajectory.
        max_shift: translation bound as a fraction of the side.
        max_angle: rotation bound in degrees.
        max_scale: scale bound (``1 +- max_scale``).

    Returns:
        uint8 ``(length, S, S)`` frames and bool ``(length, K, S, S)`` masks.

    Example:
        >>> f = torch.zeros(32, 32, dtype=torch.uint8); m = torch.zeros(1, 32, 32, dtype=torch.bool)
        >>> m[0, 10:20, 10:20] = True; f[m[0]] = 200
        >>> fr, ms = moving_clip(f, m, 5, generator=torch.Generator().manual_seed(0))
        >>> tuple(fr.shape), tuple(ms.shape), bool(ms[2].any())
        ((5, 32, 32), (5, 1, 32, 32), True)
    """
    if frame.ndim != 2 or masks.ndim != 3 or masks.shape[1:] != frame.shape:
        raise InvalidInputError(f"frame, masks: expected (S, S) and (K, S, S), got {tuple(frame.shape)}, {tuple(masks.shape)}")
    if length < 1:
        raise InvalidInputError(f"length: expected >= 1, got {length}")

    def pose() -> torch.Tensor:
        u = torch.rand(4, generator=generator) * 2 - 1
        return torch.stack([u[0] * max_angle, 1 + u[1] * max_scale, u[2] * max_shift * 2, u[3] * max_shift * 2])

    start, end = pose(), pose()
    t = torch.linspace(0, 1, length)[:, None]
    bounds = torch.tensor([max_angle, max_scale, max_shift * 2, max_shift * 2])
    wobble = (torch.rand(length, 4, generator=generator) * 2 - 1) * bounds * WOBBLE
    poses = start * (1 - t) + end * t + wobble
    theta = torch.deg2rad(poses[:, 0])
    cos, sin = torch.cos(theta) / poses[:, 1], torch.sin(theta) / poses[:, 1]  # sampling grid: inverse scale
    mats = torch.stack([torch.stack([cos, -sin, poses[:, 2]], -1), torch.stack([sin, cos, poses[:, 3]], -1)], 1)
    size = (length, 1, *frame.shape)
    grid = F.affine_grid(mats, list(size), align_corners=False)
    img = F.grid_sample(frame.float()[None, None].expand(size), grid, mode="bilinear", align_corners=False)
    k = masks.shape[0]
    msk = F.grid_sample(masks.float()[None].expand(length, k, *frame.shape), grid, mode="nearest", align_corners=False)
    return img[:, 0].round().clamp(0, 255).to(torch.uint8), msk > 0.5


def region_axes(shape: Sequence[int], spacing: Sequence[float] | np.ndarray, *, min_slices: int = 3) -> list[int]:
    """The axes worth slicing along: at least ``min_slices`` slices, in-plane voxel sides within
    :data:`MAX_IN_PLANE_RATIO` of each other.

    Example:
        >>> region_axes((512, 512, 16), (0.7, 0.7, 5.0)), region_axes((30, 40, 50), (1.0, 1.0, 1.0))
        ([2], [0, 1, 2])
    """
    out = []
    for a in range(3):
        side = [float(spacing[b]) for b in range(3) if b != a]
        if shape[a] >= min_slices and max(side) <= MAX_IN_PLANE_RATIO * min(side):
            out.append(a)
    return out


def region_videos(path: str | Path, *, image_size: int, count: int, seed: int, axis: int | None = None) -> list[Video]:
    """``count`` self-supervised sequences per slicing axis of the volume at ``path``
    (:func:`region_labels` objects; axes from :func:`region_axes` unless ``axis`` is given).

    The volume is first reduced in-plane to at most ``2 * image_size`` voxels a side (the
    frames are ``image_size`` anyway), which keeps SLIC at a fraction of a second per volume.
    Each sequence's draws come from ``(seed, crc32(file name), axis, k)``.
    """
    def label(array: np.ndarray, spacing: np.ndarray, axis: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return array, region_labels(array, spacing, axis=axis, rng=rng)

    return _volume_videos(path, label, "regions", image_size=image_size, count=count, seed=seed, axis=axis)


def pasted_videos(path: str | Path, *, image_size: int, count: int, seed: int, axis: int | None = None) -> list[Video]:
    """``count`` sequences per slicing axis of the volume at ``path``, each with its own
    :func:`pasted_labels` objects (axes, size reduction and seeds as :func:`region_videos`).

    Example:
        >>> import nibabel as nib, tempfile, os
        >>> vol = np.random.default_rng(0).random((24, 24, 12)).astype(np.float32)
        >>> path = os.path.join(tempfile.mkdtemp(), "v.nii.gz")
        >>> nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), path)
        >>> [v.obj_ids[0] for v in pasted_videos(path, image_size=32, count=2, seed=0)]
        [1, 1]
    """
    def label(array: np.ndarray, spacing: np.ndarray, axis: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return pasted_labels(array, spacing, axis=axis, rng=rng)

    return _volume_videos(path, label, "pasted", image_size=image_size, count=count, seed=seed, axis=axis)


def _volume_videos(path: str | Path, label: Callable[[np.ndarray, np.ndarray, int, np.random.Generator],
                                                      tuple[np.ndarray, np.ndarray]],
                   kind: str, *, image_size: int, count: int, seed: int, axis: int | None) -> list[Video]:
    from medsam2kit.io import load_volume
    from medsam2kit.train.data import derive_seed, make_video

    vol = load_volume(path)
    array, spacing = _reduce(vol.array.astype(np.float32), np.asarray(vol.spacing, np.float64), 2 * image_size)
    axes = [axis] if axis is not None else region_axes(array.shape, spacing)
    tag = zlib.crc32(Path(path).name.encode())
    out = []
    for a in axes:
        for k in range(count):
            rng = np.random.default_rng(derive_seed(seed, tag, a, k))
            image, labels = label(array, spacing, a, rng)
            video = make_video(image, labels, image_size=image_size, name=f"{kind}:{Path(path).name}:{a}:{k}",
                               is_volume=True, axis=a, affine=np.diag([*spacing, 1.0]))
            if video is not None:
                out.append(video)
    return out


def _reduce(array: np.ndarray, spacing: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    factors = np.array([min(1.0, max_side / n) for n in array.shape])
    if np.all(factors == 1.0):
        return array, spacing
    reduced = ndimage.zoom(array, factors, order=1)
    return reduced, spacing * np.asarray(array.shape) / np.asarray(reduced.shape)


def moving_video(video: Video, length: int, *, generator: torch.Generator) -> Video:
    """A one-frame :class:`~medsam2kit.train.data.Video` as a ``length``-frame moving clip
    (:func:`moving_clip`).

    Raises:
        InvalidInputError: ``video`` has more than one frame.
    """
    from medsam2kit.train.data import Video

    if video.num_frames != 1:
        raise InvalidInputError(f"video: expected one frame to set in motion, {video.name} has {video.num_frames}")
    frames, masks = moving_clip(video.frames[0], video.masks[0], length, generator=generator)
    return Video(frames, masks, video.obj_ids, video.name, masks.flatten(2).any(-1))


__all__ = ["MAX_IN_PLANE_RATIO", "PASTE_CONTRAST", "TISSUE", "WOBBLE", "moving_clip", "moving_video", "pasted_labels", "pasted_videos",
           "region_axes", "region_labels", "region_videos"]
