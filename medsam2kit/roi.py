"""Zoom: segment inside a region of interest around the prompt, and paste the result back.

A model reads every slice at a fixed input size (128 px for the bundled model, 1024 px for
Meta's): a lesion 30 voxels across on a 512-voxel CT slice is 8 pixels across at 128 px, far
smaller than anything the model learnt from. Cropping every slice to a square around the prompt
(``factor`` times the prompt's longer side, at least ``min_side`` voxels) before sequencing gives
the object the same share of the frame whatever the slice size; the result is pasted back into
the full grid (outside the crop: no object). This is how medical SAM pipelines handle small
structures (the crop-and-resize of MedSAM's box prompt, SAM-Med3D's patches around the target);
the factor of the library's tasks (:data:`DEFAULT_ZOOM`) was chosen on the validation cases and
phantoms of :mod:`medsam2kit.reference`. Tracking a moving structure through a recording is not
zoomed by default: the crop around the first frame's mask loses a structure that moves out of it
(carotid validation recordings: Dice 0.61 whole, 0.03-0.13 zoomed).

The crop keeps the exact geometry: :meth:`Roi.crop_volume` shifts the affine's origin by the
crop's offset, so a cropped volume's voxel ``(i, j, k)`` is at the same world position as the
full volume's voxel ``(i, j, k) + offset``, and :meth:`Roi.paste` is the exact inverse of
:meth:`Roi.crop` on the kept voxels.

Example:
    >>> import numpy as np
    >>> m = np.zeros((40, 60), bool); m[10:14, 20:30] = True
    >>> roi = roi_around(m, (5, 40, 60), axis=0, factor=2.0, min_side=8)
    >>> roi.rows, roi.cols
    ((2, 22), (15, 35))
    >>> int(roi.paste(roi.crop(np.ones((5, 40, 60))), fill=0.0).sum()) == 5 * 20 * 20
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsam2kit._validate import check_axis
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.volume import Volume

#: The crop side over the prompts' box of the tasks (:func:`medsam2kit.tasks.one_prompt_propagation`,
#: :func:`medsam2kit.tasks.box_prompt_image`): the smallest factor at which no validation phantom
#: object falls below Dice 0.8 with the zoom-trained selection model (1.25: 8 of 19 objects, 1.5:
#: 1, 2: none; whole slices: none). On the real validation cases 2 gives mask propagation 0.359
#: (1.25: 0.465, 1.5: 0.388, whole slices: 0.233) and fetal-head box prompts 0.821 (1.5: 0.783,
#: whole: 0.764); a tighter crop than the training clips' (1.5-3) fails on structures that fill
#: it (docs/reference_model.md).
DEFAULT_ZOOM = 2.0

#: The smallest crop side in voxels: a tiny prompt is not blown up past this.
MIN_SIDE = 16


@dataclass(frozen=True)
class Roi:
    """An in-plane box of a ``(D, H, W)`` grid; every slice along ``axis`` is kept.

    Attributes:
        shape: the full grid's shape.
        axis: the slicing axis.
        rows: ``(start, stop)`` along the first in-plane axis (frame rows).
        cols: ``(start, stop)`` along the second in-plane axis (frame columns).
    """

    shape: tuple[int, int, int]
    axis: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    def __post_init__(self) -> None:
        r_ax, c_ax = self.in_plane_axes
        for name, (a, b), n in (("rows", self.rows, self.shape[r_ax]), ("cols", self.cols, self.shape[c_ax])):
            if not 0 <= a < b <= n:
                raise InvalidInputError(f"{name}: expected 0 <= start < stop <= {n}, got ({a}, {b})")

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The grid axes of ``rows`` and ``cols``."""
        r, c = (a for a in range(3) if a != self.axis)
        return (r, c)

    @property
    def index(self) -> tuple[slice, slice, slice]:
        """The numpy index of the crop."""
        out = [slice(None)] * 3
        r, c = self.in_plane_axes
        out[r], out[c] = slice(*self.rows), slice(*self.cols)
        return (out[0], out[1], out[2])

    @property
    def offset(self) -> tuple[int, int, int]:
        """The full grid's voxel index of the crop's voxel ``(0, 0, 0)``."""
        out = [0, 0, 0]
        r, c = self.in_plane_axes
        out[r], out[c] = self.rows[0], self.cols[0]
        return (out[0], out[1], out[2])

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """The shape of the crop."""
        out = list(self.shape)
        r, c = self.in_plane_axes
        out[r], out[c] = self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]
        return (out[0], out[1], out[2])

    @classmethod
    def whole(cls, shape: Sequence[int], axis: int) -> Roi:
        """The crop that is the whole grid (no zoom)."""
        grid = (int(shape[0]), int(shape[1]), int(shape[2]))
        r, c = (a for a in range(3) if a != axis)
        return cls(grid, axis, (0, grid[r]), (0, grid[c]))

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The crop of an array on the full grid.

        Raises:
            ShapeMismatchError: ``array`` is not on the full grid.
        """
        if tuple(array.shape) != self.shape:
            raise ShapeMismatchError(f"array: expected the full grid's shape {self.shape}, got {tuple(array.shape)}")
        return array[self.index]

    def crop_slice(self, values: np.ndarray) -> np.ndarray:
        """The crop of one slice ``(rows, cols)`` of the full grid (e.g. a prompt mask).

        Raises:
            ShapeMismatchError: ``values`` is not one slice of the full grid.
        """
        r, c = self.in_plane_axes
        if tuple(values.shape) != (self.shape[r], self.shape[c]):
            raise ShapeMismatchError(
                f"values: expected one slice of shape {(self.shape[r], self.shape[c])}, got {tuple(values.shape)}"
            )
        return values[slice(*self.rows), slice(*self.cols)]

    def crop_volume(self, volume: Volume) -> Volume:
        """The crop of a volume, with its affine's origin moved to the crop's first voxel."""
        affine = volume.affine.copy()
        affine[:3, 3] = volume.affine[:3, :3] @ np.asarray(self.offset, dtype=np.float64) + volume.affine[:3, 3]
        return Volume(np.ascontiguousarray(self.crop(volume.array)), affine, kind=volume.kind,
                      frame_times=volume.frame_times, source=volume.source, modality=volume.modality)

    def paste(self, values: np.ndarray, *, fill: float | bool) -> np.ndarray:
        """Values on the crop back on the full grid (``fill`` outside the crop).

        Raises:
            ShapeMismatchError: ``values`` is not on the crop's grid.
        """
        if tuple(values.shape) != self.crop_shape:
            raise ShapeMismatchError(f"values: expected the crop's shape {self.crop_shape}, got {tuple(values.shape)}")
        out = np.full(self.shape, fill, dtype=values.dtype)
        out[self.index] = values
        return out


def check_zoom(zoom: float | None, *, name: str = "zoom") -> float | None:
    """``zoom`` as a crop factor (``None``: no zoom).

    Raises:
        InvalidInputError: a factor below 1 (or NaN), named by ``name``.

    Example:
        >>> check_zoom(2), check_zoom(None)
        (2.0, None)
    """
    if zoom is None:
        return None
    if not float(zoom) >= 1.0:
        raise InvalidInputError(f"{name}: expected a crop factor >= 1 (the crop's side over the box it is drawn around), got {zoom}")
    return float(zoom)


def largest_slice(mask: np.ndarray, *, axis: int) -> int:
    """The index along ``axis`` of the slice of a 3D mask with the most foreground (the first of
    equals): where the tasks and the zoomed training clips draw their prompt.

    Raises:
        InvalidInputError: an empty mask.

    Example:
        >>> m = np.zeros((3, 4, 4), bool); m[2, :2, :2] = True; m[1, 0, 0] = True
        >>> largest_slice(m, axis=0)
        2
    """
    areas = np.asarray(mask).sum(axis=tuple(a for a in range(3) if a != check_axis(axis)))
    if not areas.any():
        raise InvalidInputError("mask: expected some foreground to find its largest slice, got an empty mask")
    return int(np.argmax(areas))


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The box ``(x0, y0, x1, y1)`` (column, row of the extreme foreground pixels) of a 2D mask.

    Raises:
        InvalidInputError: the mask is empty.

    Example:
        >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
        >>> mask_box(m).tolist()
        [2.0, 1.0, 4.0, 2.0]
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InvalidInputError("mask: expected some foreground to draw a box around, got an empty mask")
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)


def roi_around_masks(masks: Sequence[np.ndarray], shape: Sequence[int], *, axis: int, zoom: float | None) -> Roi:
    """The crop of :func:`roi_around` around the union of several 2D prompt masks' boxes (each
    non-empty, on slices along ``axis`` of ``shape``); the whole grid when ``zoom`` is None.

    Example:
        >>> a = np.zeros((40, 60), bool); a[10:14, 20:24] = True
        >>> b = np.zeros((40, 60), bool); b[10:14, 26:30] = True
        >>> roi_around_masks([a, b], (5, 40, 60), axis=0, zoom=2.0) == roi_around(a | b, (5, 40, 60), axis=0, factor=2.0)
        True
        >>> roi_around_masks([a], (5, 40, 60), axis=0, zoom=None).crop_shape
        (5, 40, 60)
    """
    factor = check_zoom(zoom)
    if factor is None:
        return Roi.whole(shape, axis)
    boxes = np.array([mask_box(m) for m in masks])
    union = np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
    return roi_around(union, shape, axis=axis, factor=factor)


def roi_around(mask: np.ndarray | Sequence[float], shape: Sequence[int], *, axis: int, factor: float,
               min_side: int = MIN_SIDE) -> Roi:
    """The square in-plane crop around a prompt: side ``factor`` times the prompt's longer side
    (at least ``min_side`` voxels, at most the slice), centred on the prompt and moved inside
    the slice where it would overhang.

    Args:
        mask: the prompt as a 2D bool mask on one slice (its foreground's box is used), or a box
            ``(x0, y0, x1, y1)`` in slice voxels (x the column, y the row, corners inclusive).
        shape: the full grid's shape ``(D, H, W)``.
        axis: the slicing axis.
        factor: the crop side over the prompt's longer side, ``>= 1``.
        min_side: the smallest crop side in voxels, ``>= 1``.

    Raises:
        InvalidInputError: an empty mask, a box off the slice, ``factor < 1`` or ``min_side < 1``.
        ShapeMismatchError: the mask is not one slice of ``shape``.

    Example:
        >>> roi_around([0, 0, 3, 3], (2, 100, 100), axis=0, factor=2.0, min_side=4).rows
        (0, 8)
    """
    grid = tuple(int(s) for s in shape)
    if len(grid) != 3 or min(grid) < 1:
        raise InvalidInputError(f"shape: expected 3 sizes >= 1 (D, H, W), got {tuple(shape)}")
    ax = check_axis(axis)
    h, w = (grid[a] for a in range(3) if a != ax)
    if not factor >= 1.0:
        raise InvalidInputError(f"factor: expected a crop at least as large as the prompt (>= 1), got {factor}")
    if min_side < 1:
        raise InvalidInputError(f"min_side: expected >= 1 voxel, got {min_side}")
    arr = np.asarray(mask)
    if arr.ndim == 2:
        if arr.shape != (h, w):
            raise ShapeMismatchError(f"mask: expected one slice of shape {(h, w)}, got {arr.shape}")
        rows, cols = np.nonzero(arr)
        if rows.size == 0:
            raise InvalidInputError("mask: expected some foreground to zoom on, got an empty mask")
        x0, y0, x1, y1 = float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())
    elif arr.shape == (4,):
        x0, y0, x1, y1 = (float(v) for v in arr)
        if not (x0 <= x1 and y0 <= y1 and x1 >= 0 and y1 >= 0 and x0 <= w - 1 and y0 <= h - 1):
            raise InvalidInputError(f"mask: expected a box (x0, y0, x1, y1) on the {w} x {h} slice, got {arr.tolist()}")
    else:
        raise InvalidInputError(f"mask: expected a 2D mask or a box (x0, y0, x1, y1), got shape {arr.shape}")
    side = max(float(min_side), factor * (max(x1 - x0, y1 - y0) + 1.0))
    span = []
    for centre, n in (((y0 + y1) / 2.0, h), ((x0 + x1) / 2.0, w)):
        s = int(min(n, round(side)))
        start = int(min(max(round(centre + 0.5 - s / 2.0), 0), n - s))
        span.append((start, start + s))
    return Roi(grid, ax, span[0], span[1])
