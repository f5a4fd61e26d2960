"""Segmentation metrics: overlap, spacing-aware surface distances, video J&F, inter-slice consistency.

Every function takes binary masks as numpy arrays (bool, or integers/floats that are only 0 and 1),
torch CPU tensors or :class:`~medsam2kit.volume.Volume` objects (whose spacing is then used), in
2D ``(H, W)`` or 3D ``(D, H, W)``. Distances are in mm: ``spacing`` gives the voxel size along each
array axis (``None``: 1 mm, or the :class:`Volume`'s spacing).

Conventions (see ``docs/metrics.md``):

* Surface of a mask = its border voxels: foreground voxels with at least one face-connected
  background neighbour; voxels outside the array count as background (as in MedPy).
* Distance of a surface voxel of ``A`` to ``B`` = the Euclidean distance (mm) to the nearest border
  voxel of ``B`` (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``).
* Empty masks: Dice/IoU/NSD give 1.0 when both are empty and 0.0 when exactly one is;
  HD/HD95/ASSD give 0.0 when both are empty and ``empty_distance`` (default ``inf``) when exactly one is.

Example:
    >>> import numpy as np
    >>> from medsam2kit.metrics import dice, hd95
    >>> a = np.zeros((8, 8), bool); a[2:6, 2:6] = True
    >>> b = np.zeros((8, 8), bool); b[2:6, 3:7] = True
    >>> round(dice(a, b), 3), hd95(a, b, spacing=(1.0, 0.5))
    (0.75, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from medsam2kit._validate import check_label_ids, check_label_map, check_spacing, resolve_axis
from medsam2kit.errors import GeometryError, InvalidInputError, InvalidTypeError, ShapeMismatchError
from medsam2kit.volume import Volume

MaskLike = npt.ArrayLike | Volume
SpacingLike = float | Sequence[float] | None
HausdorffMethod = Literal["max_directed", "pooled"]

DAVIS_BOUND_TH = 0.008
"""DAVIS boundary tolerance: a fraction (< 1) of the image diagonal, or pixels (>= 1)."""

NSD_RTOL = 1e-9
"""Relative slack of the NSD tolerance test ``d <= tau * (1 + NSD_RTOL)`` (rounding of distances)."""

# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _as_array(x: Any, name: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    if isinstance(x, Volume):
        return x.array, x.spacing
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise InvalidTypeError(f"{name}: expected an array-like mask, got {type(x).__name__}") from err
    if arr.dtype == object or not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
        raise InvalidTypeError(f"{name}: expected a bool or numeric array, got dtype {arr.dtype}")
    return arr, None


def _binary(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr
    ok = (arr == 0) | (arr == 1)
    if not bool(ok.all()):
        bad = np.unique(arr[~ok])[:5]
        raise InvalidInputError(
            f"{name}: expected a binary mask (bool, or values in {{0, 1}}), got values such as {bad.tolist()}"
            " (use per_label for label maps)"
        )
    return arr.astype(bool)


def _pair(
    pred: MaskLike,
    ref: MaskLike,
    spacing: SpacingLike,
    *,
    ndims: tuple[int, ...] = (2, 3),
    binary: bool = True,
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    p, sp_p = _as_array(pred, "pred")
    r, sp_r = _as_array(ref, "ref")
    if p.shape != r.shape:
        raise ShapeMismatchError(
            f"pred and ref: expected the same shape, got pred {p.shape} and ref {r.shape}"
        )
    if p.ndim not in ndims:
        dims = " or ".join(f"{d}D" for d in ndims)
        raise InvalidInputError(f"pred: expected a {dims} array, got shape {p.shape}")
    if spacing is None:
        if sp_p is not None and sp_r is not None and not np.allclose(sp_p, sp_r, rtol=1e-4, atol=0):
            raise GeometryError(f"pred and ref: the volumes' spacings differ: {sp_p} vs {sp_r}")
        spacing = sp_p if sp_p is not None else sp_r
    sp = check_spacing(spacing, ndim=p.ndim)
    if binary:
        p, r = _binary(p, "pred"), _binary(r, "ref")
    return p, r, sp


# --------------------------------------------------------------------------------------------
# Overlap
# --------------------------------------------------------------------------------------------


def _dice_counts(p: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    inter = int(np.count_nonzero(p & r))
    sp, sr = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    union = sp + sr - inter
    if sp + sr == 0:
        return 1.0, 1.0
    return 2.0 * inter / (sp + sr), inter / union


def dice(pred: MaskLike, ref: MaskLike) -> float:
    """Dice coefficient ``2 |P & R| / (|P| + |R|)``.

    Spacing-invariant on a regular grid (every voxel has the same volume).

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)`` predicted mask (0/1 integers or floats accepted).
        ref: reference mask of the same shape.

    Returns:
        Dice in ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is.

    Example:
        >>> import numpy as np
        >>> dice(np.array([[1, 1, 0]]), np.array([[1, 0, 0]]))
        0.6666666666666666
    """
    p, r, _ = _pair(pred, ref, None)
    return _dice_counts(p, r)[0]


def iou(pred: MaskLike, ref: MaskLike) -> float:
    """Intersection over union (Jaccard) ``|P & R| / |P | R|``.

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)`` predicted mask.
        ref: reference mask of the same shape.

    Returns:
        IoU in ``[0, 1]``; 1.0 when both are empty, 0.0 when exactly one is.

    Example:
        >>> import numpy as np
        >>> iou(np.array([[1, 1, 0]]), np.array([[1, 0, 0]]))
        0.5
    """
    p, r, _ = _pair(pred, ref, None)
    return _dice_counts(p, r)[1]


# --------------------------------------------------------------------------------------------
# Surfaces and distances
# --------------------------------------------------------------------------------------------


def surface_voxels(mask: MaskLike) -> np.ndarray:
    """Border voxels: foreground voxels with a face-connected background neighbour.

    Voxels outside the array count as background, so foreground on the array's edge is border.

    Args:
        mask: bool ``(H, W)`` or ``(D, H, W)``.

    Returns:
        bool array of the same shape.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
        >>> int(surface_voxels(m).sum())
        8
    """
    arr, _ = _as_array(mask, "mask")
    m = _binary(arr, "mask")
    return _border(m)


def _border(m: np.ndarray) -> np.ndarray:
    if not m.any():
        return np.zeros_like(m)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    eroded = ndimage.binary_erosion(m, structure=structure, border_value=0)
    return m & ~eroded


@dataclass(frozen=True, eq=False)
class SurfaceDistances:
    """Directed surface distances between two masks, in mm.

    Attributes:
        pred_to_ref: float64 ``(N,)`` distance of every border voxel of ``pred`` (in C order) to the
            nearest border voxel of ``ref``; empty when ``pred`` is empty.
        ref_to_pred: float64 ``(M,)`` the same from ``ref`` to ``pred``.
        pred_empty: whether ``pred`` has no foreground.
        ref_empty: whether ``ref`` has no foreground.
    """

    pred_to_ref: np.ndarray = field(repr=False)
    ref_to_pred: np.ndarray = field(repr=False)
    pred_empty: bool
    ref_empty: bool


def _surface_distances(p: np.ndarray, r: np.ndarray, sp: tuple[float, ...]) -> SurfaceDistances:
    empty = np.zeros(0, np.float64)
    pe, re_ = not p.any(), not r.any()
    if pe or re_:
        # Distances are undefined; report the border sizes via empty arrays (counts not needed).
        return SurfaceDistances(empty, empty, pe, re_)
    # Crop to the bounding box of the union plus one background voxel: exact, since every border
    # voxel lies inside it and the padding reproduces "outside counts as background".
    idx = np.nonzero(p | r)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pc = np.pad(p[box], 1)
    rc = np.pad(r[box], 1)
    bp, br = _border(pc), _border(rc)
    d_pr = ndimage.distance_transform_edt(~br, sampling=sp)[bp]
    d_rp = ndimage.distance_transform_edt(~bp, sampling=sp)[br]
    return SurfaceDistances(np.asarray(d_pr, np.float64), np.asarray(d_rp, np.float64), False, False)


def surface_distances(pred: MaskLike, ref: MaskLike, *, spacing: SpacingLike = None) -> SurfaceDistances:
    """Directed distances (mm) between the border voxels of two masks (the building block of HD/ASSD/NSD).

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)``.
        ref: bool, same shape.
        spacing: voxel size in mm per array axis (a number = isotropic; ``None`` = 1 mm or the
            :class:`Volume`'s spacing).

    Returns:
        A :class:`SurfaceDistances` (both arrays empty when either mask is empty).

    Example:
        >>> import numpy as np
        >>> a = np.zeros((1, 6), bool); a[0, 1] = True
        >>> b = np.zeros((1, 6), bool); b[0, 4] = True
        >>> surface_distances(a, b, spacing=(1.0, 2.0)).pred_to_ref.tolist()
        [6.0]
    """
    p, r, sp = _pair(pred, ref, spacing)
    return _surface_distances(p, r, sp)


def _hd(sd: SurfaceDistances, percentile: float, method: HausdorffMethod, empty_distance: float) -> float:
    if sd.pred_empty and sd.ref_empty:
        return 0.0
    if sd.pred_empty or sd.ref_empty:
        return float(empty_distance)
    if method == "pooled":
        return float(np.percentile(np.concatenate([sd.pred_to_ref, sd.ref_to_pred]), percentile))
    return float(max(np.percentile(sd.pred_to_ref, percentile), np.percentile(sd.ref_to_pred, percentile)))


def _assd(sd: SurfaceDistances, empty_distance: float) -> float:
    if sd.pred_empty and sd.ref_empty:
        return 0.0
    if sd.pred_empty or sd.ref_empty:
        return float(empty_distance)
    total = float(sd.pred_to_ref.sum() + sd.ref_to_pred.sum())
    return total / (sd.pred_to_ref.size + sd.ref_to_pred.size)


def _nsd(sd: SurfaceDistances, tolerance_mm: float) -> float:
    if sd.pred_empty and sd.ref_empty:
        return 1.0
    if sd.pred_empty or sd.ref_empty:
        return 0.0
    # A relative slack of 1e-9 so that a distance equal to the tolerance (e.g. one voxel step) counts
    # whatever the rounding of the distance transform.
    tol = tolerance_mm * (1.0 + NSD_RTOL)
    hits = int(np.count_nonzero(sd.pred_to_ref <= tol) + np.count_nonzero(sd.ref_to_pred <= tol))
    return hits / (sd.pred_to_ref.size + sd.ref_to_pred.size)


def _check_percentile(percentile: float) -> float:
    q = float(percentile)
    if not (0.0 <= q <= 100.0):
        raise InvalidInputError(f"percentile: expected a value in [0, 100], got {percentile}")
    return q


def _check_method(method: str) -> HausdorffMethod:
    if method not in ("max_directed", "pooled"):
        raise InvalidInputError(f"method: expected 'max_directed' or 'pooled', got {method!r}")
    return method  # type: ignore[return-value]


def _check_empty_distance(value: float) -> float:
    v = float(value)
    if math.isnan(v) or v < 0:
        raise InvalidInputError(f"empty_distance: expected a non-negative number or inf, got {value}")
    return v


def _check_tolerance(value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise InvalidInputError(f"tolerance_mm: expected a finite non-negative number of mm, got {value}")
    return v


def hausdorff_distance(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: SpacingLike = None,
    percentile: float = 100.0,
    method: HausdorffMethod = "max_directed",
    empty_distance: float = math.inf,
) -> float:
    """(Percentile) Hausdorff distance in mm between the surfaces of two masks.

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)``.
        ref: bool, same shape.
        spacing: voxel size in mm per axis.
        percentile: 100 = classic Hausdorff distance, 95 = HD95.
        method: ``"max_directed"`` (default; MONAI, DeepMind ``surface-distance``): the larger of
            the two directed percentiles; ``"pooled"`` (MedPy ``hd95``): the percentile of both
            directed distance sets pooled. Both agree at ``percentile=100``.
        empty_distance: value when exactly one mask is empty (both empty: 0.0).

    Returns:
        Distance in mm (numpy's linear-interpolation percentile).

    Example:
        >>> import numpy as np
        >>> a = np.zeros((9, 9), bool); a[2:7, 2:7] = True
        >>> b = np.zeros((9, 9), bool); b[3:6, 3:6] = True
        >>> round(hausdorff_distance(a, b, spacing=0.5), 4)  # a corner to the inner corner
        0.7071
    """
    p, r, sp = _pair(pred, ref, spacing)
    return _hd(
        _surface_distances(p, r, sp),
        _check_percentile(percentile),
        _check_method(method),
        _check_empty_distance(empty_distance),
    )


def hd95(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: SpacingLike = None,
    method: HausdorffMethod = "max_directed",
    empty_distance: float = math.inf,
) -> float:
    """95th-percentile Hausdorff distance in mm (see :func:`hausdorff_distance`).

    Example:
        >>> import numpy as np
        >>> a = np.zeros((9, 9), bool); a[2:7, 2:7] = True
        >>> hd95(a, a), hd95(a, np.zeros_like(a))
        (0.0, inf)
    """
    return hausdorff_distance(
        pred, ref, spacing=spacing, percentile=95.0, method=method, empty_distance=empty_distance
    )


def assd(
    pred: MaskLike, ref: MaskLike, *, spacing: SpacingLike = None, empty_distance: float = math.inf
) -> float:
    """Average symmetric surface distance in mm.

    The mean of all directed distances of both surfaces pooled:
    ``(sum d(p, R) + sum d(r, P)) / (|S_P| + |S_R|)`` (MONAI's symmetric ASD; MedPy's ``assd``
    averages the two directed means instead, which differs when the surfaces differ in size).

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)``.
        ref: bool, same shape.
        spacing: voxel size in mm per axis.
        empty_distance: value when exactly one mask is empty (both empty: 0.0).

    Returns:
        Distance in mm.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((1, 6), bool); a[0, 1] = True
        >>> b = np.zeros((1, 6), bool); b[0, 1:3] = True
        >>> assd(a, b)
        0.3333333333333333
    """
    p, r, sp = _pair(pred, ref, spacing)
    return _assd(_surface_distances(p, r, sp), _check_empty_distance(empty_distance))


def surface_dice(pred: MaskLike, ref: MaskLike, *, tolerance_mm: float, spacing: SpacingLike = None) -> float:
    """Normalised surface Dice (NSD) at a tolerance in mm.

    The fraction of border voxels of both masks that lie within ``tolerance_mm`` of the other
    mask's border: ``(#{d(p, R) <= tau} + #{d(r, P) <= tau}) / (|S_P| + |S_R|)``, with a relative
    slack :data:`NSD_RTOL` so that a distance equal to ``tau`` counts. Border voxels
    are counted (not weighted by surface-element area as in DeepMind's ``surface-distance``).

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)``.
        ref: bool, same shape.
        tolerance_mm: tolerance ``tau`` in mm, >= 0.
        spacing: voxel size in mm per axis.

    Returns:
        NSD in ``[0, 1]``; 1.0 when both are empty, 0.0 when exactly one is.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((8, 8), bool); a[2:6, 2:6] = True
        >>> b = np.zeros((8, 8), bool); b[2:6, 3:7] = True
        >>> surface_dice(a, b, tolerance_mm=0.0), surface_dice(a, b, tolerance_mm=1.0)
        (0.5, 1.0)
    """
    p, r, sp = _pair(pred, ref, spacing)
    return _nsd(_surface_distances(p, r, sp), _check_tolerance(tolerance_mm))




# --------------------------------------------------------------------------------------------
# All scores at once, per label
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentationScores:
    """All overlap and surface scores of one binary pair.

    Attributes:
        dice: Dice coefficient.
        iou: intersection over union.
        hd95: 95th-percentile Hausdorff distance, mm (``max_directed``).
        hd: Hausdorff distance, mm.
        assd: average symmetric surface distance, mm.
        nsd: normalised surface Dice at ``tolerance_mm``.
        tolerance_mm: the NSD tolerance.
        pred_voxels: foreground voxel count of the prediction.
        ref_voxels: foreground voxel count of the reference.
    """

    dice: float
    iou: float
    hd95: float
    hd: float
    assd: float
    nsd: float
    tolerance_mm: float
    pred_voxels: int
    ref_voxels: int


def _scores(
    p: np.ndarray,
    r: np.ndarray,
    sp: tuple[float, ...],
    tol: float,
    method: HausdorffMethod,
    empty_distance: float,
) -> SegmentationScores:
    d, j = _dice_counts(p, r)
    sd = _surface_distances(p, r, sp)
    return SegmentationScores(
        dice=d,
        iou=j,
        hd95=_hd(sd, 95.0, method, empty_distance),
        hd=_hd(sd, 100.0, method, empty_distance),
        assd=_assd(sd, empty_distance),
        nsd=_nsd(sd, tol),
        tolerance_mm=tol,
        pred_voxels=int(np.count_nonzero(p)),
        ref_voxels=int(np.count_nonzero(r)),
    )


def segmentation_scores(
    pred: MaskLike,
    ref: MaskLike,
    *,
    spacing: SpacingLike = None,
    tolerance_mm: float = 1.0,
    method: HausdorffMethod = "max_directed",
    empty_distance: float = math.inf,
) -> SegmentationScores:
    """Dice, IoU, HD95, HD, ASSD and NSD of one binary pair, sharing one pair of distance transforms.

    Args:
        pred: bool ``(H, W)`` or ``(D, H, W)``.
        ref: bool, same shape.
        spacing: voxel size in mm per axis.
        tolerance_mm: NSD tolerance in mm.
        method: HD percentile method (see :func:`hausdorff_distance`).
        empty_distance: distance when exactly one mask is empty.

    Returns:
        A :class:`SegmentationScores`.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((4, 8, 8), bool); a[1:3, 2:6, 2:6] = True
        >>> s = segmentation_scores(a, a, spacing=(3.0, 0.8, 0.8))
        >>> s.dice, s.hd95, s.nsd
        (1.0, 0.0, 1.0)
    """
    p, r, sp = _pair(pred, ref, spacing)
    return _scores(
        p, r, sp, _check_tolerance(tolerance_mm), _check_method(method), _check_empty_distance(empty_distance)
    )


def per_label(
    pred: MaskLike,
    ref: MaskLike,
    labels: Iterable[int] | None = None,
    *,
    spacing: SpacingLike = None,
    tolerance_mm: float = 1.0,
    method: HausdorffMethod = "max_directed",
    empty_distance: float = math.inf,
) -> dict[int, SegmentationScores]:
    """Scores of every label of two integer label maps.

    Args:
        pred: integer (or bool) ``(H, W)`` or ``(D, H, W)`` label map; 0 is background.
        ref: label map of the same shape.
        labels: the labels to score (default: every non-zero label found in either map, sorted).
            A label absent from both maps scores as "both empty".
        spacing: voxel size in mm per axis.
        tolerance_mm: NSD tolerance in mm.
        method: HD percentile method (see :func:`hausdorff_distance`).
        empty_distance: distance when exactly one mask is empty.

    Returns:
        ``{label: SegmentationScores}`` in label order.

    Example:
        >>> import numpy as np
        >>> lab = np.zeros((6, 6), np.uint8); lab[1:3, 1:3] = 1; lab[4:6, 4:6] = 2
        >>> {k: v.dice for k, v in per_label(lab, lab).items()}
        {1: 1.0, 2: 1.0}
    """
    p, r, sp = _pair(pred, ref, spacing, binary=False)
    p, r = check_label_map(p, "pred"), check_label_map(r, "ref")
    if labels is None:
        found = np.union1d(np.unique(p), np.unique(r))
        label_list = [int(v) for v in found if v != 0]
    else:
        label_list = check_label_ids(labels)
    tol, meth, empty = (
        _check_tolerance(tolerance_mm),
        _check_method(method),
        _check_empty_distance(empty_distance),
    )
    return {lab: _scores(p == lab, r == lab, sp, tol, meth, empty) for lab in label_list}


# --------------------------------------------------------------------------------------------
# Video: J&F (DAVIS)
# --------------------------------------------------------------------------------------------


def seg2bmap(mask: MaskLike) -> np.ndarray:
    """One-pixel boundary map of a 2D mask, following DAVIS's ``seg2bmap``.

    A pixel is boundary when it differs from its right, lower or lower-right neighbour (pixels
    beyond the last row/column count as background for those comparisons; the last row compares
    only rightwards, the last column only downwards, the bottom-right pixel is never boundary).

    Args:
        mask: bool ``(H, W)``.

    Returns:
        bool ``(H, W)`` boundary map.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((4, 4), bool); m[1:3, 1:3] = True
        >>> seg2bmap(m).astype(int).tolist()
        [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    arr, _ = _as_array(mask, "mask")
    if arr.ndim != 2:
        raise InvalidInputError(f"mask: expected a 2D (H, W) array, got shape {arr.shape}")
    return _seg2bmap(_binary(arr, "mask"))


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _bound_pix(bound_th: float, shape: tuple[int, ...]) -> float:
    return float(bound_th) if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(shape)))


def _f_measure(p: np.ndarray, r: np.ndarray, bound_pix: float) -> float:
    fg_b, gt_b = _seg2bmap(p), _seg2bmap(r)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0
    # Dilation by skimage's disk(bound_pix) (x^2 + y^2 <= r^2) == EDT to the boundary <= r.
    fg_dil = ndimage.distance_transform_edt(~fg_b) <= bound_pix
    gt_dil = ndimage.distance_transform_edt(~gt_b) <= bound_pix
    precision = np.count_nonzero(fg_b & gt_dil) / n_fg
    recall = np.count_nonzero(gt_b & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _check_bound(bound_th: float) -> float:
    v = float(bound_th)
    if not (math.isfinite(v) and v > 0):
        raise InvalidInputError(
            f"bound_th: expected a positive number (fraction of the diagonal or pixels), got {bound_th}"
        )
    if v >= 1 and v != int(v):
        raise InvalidInputError(
            f"bound_th: a tolerance in pixels (>= 1) must be a whole number, got {bound_th}"
        )
    return v


def boundary_f_measure(pred: MaskLike, ref: MaskLike, *, bound_th: float = DAVIS_BOUND_TH) -> float:
    """DAVIS contour accuracy F of one frame.

    Boundaries by :func:`seg2bmap`; a boundary pixel matches when the other boundary lies within
    ``bound_pix = ceil(bound_th * hypot(H, W))`` pixels (``bound_th >= 1``: pixels as given), i.e.
    inside the other boundary dilated by a disk of that radius. ``F = 2PR / (P + R)``.
    Both boundaries empty: 1.0; exactly one empty: 0.0 (DAVIS's precision/recall convention).

    Args:
        pred: bool ``(H, W)``.
        ref: bool ``(H, W)``.
        bound_th: tolerance as a fraction of the image diagonal (< 1) or in whole pixels (>= 1).

    Returns:
        F in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((50, 50), bool); a[10:30, 10:30] = True
        >>> boundary_f_measure(a, np.roll(a, 1, axis=0))
        1.0
    """
    p, r, _ = _pair(pred, ref, None, ndims=(2,))
    bt = _check_bound(bound_th)
    return _f_measure(p, r, _bound_pix(bt, p.shape))


@dataclass(frozen=True, eq=False)
class JFScores:
    """DAVIS region similarity J and contour accuracy F of one object in one video.

    Attributes:
        j_mean: mean J (IoU) over the evaluated frames.
        f_mean: mean F over the evaluated frames.
        jf_mean: ``(j_mean + f_mean) / 2``.
        j_per_frame: float64 ``(T',)`` J of each evaluated frame.
        f_per_frame: float64 ``(T',)`` F of each evaluated frame.
        frames: indices of the evaluated frames.
    """

    j_mean: float
    f_mean: float
    jf_mean: float
    j_per_frame: np.ndarray = field(repr=False)
    f_per_frame: np.ndarray = field(repr=False)
    frames: tuple[int, ...] = field(repr=False)


def j_and_f(
    pred: MaskLike, ref: MaskLike, *, bound_th: float = DAVIS_BOUND_TH, exclude_first_last: bool = False
) -> JFScores:
    """J&F of one object over a video (DAVIS definition).

    J per frame = IoU (both empty: 1.0); F per frame = :func:`boundary_f_measure`; the means are
    over frames. For several objects call it per object and average the results.

    Args:
        pred: bool ``(T, H, W)`` predicted masks (a single ``(H, W)`` frame is accepted).
        ref: bool reference masks, same shape.
        bound_th: boundary tolerance (fraction of the diagonal, or pixels when >= 1).
        exclude_first_last: drop the first and last frame, as the DAVIS 2017 semi-supervised
            protocol does (the first frame carries the given mask). Needs at least 3 frames.

    Returns:
        A :class:`JFScores`.

    Example:
        >>> import numpy as np
        >>> v = np.zeros((3, 40, 40), bool); v[:, 10:20, 10:20] = True
        >>> j_and_f(v, v).jf_mean
        1.0
    """
    p, r, _ = _pair(pred, ref, None, ndims=(2, 3))
    if p.ndim == 2:
        p, r = p[None], r[None]
    bt = _check_bound(bound_th)
    frames = list(range(p.shape[0]))
    if exclude_first_last:
        if len(frames) < 3:
            raise InvalidInputError(f"exclude_first_last: needs at least 3 frames, got {len(frames)}")
        frames = frames[1:-1]
    if not frames:
        raise InvalidInputError(f"pred: expected at least one frame, got shape {p.shape}")
    bp = _bound_pix(bt, p.shape[1:])
    j = np.array([_dice_counts(p[t], r[t])[1] for t in frames], np.float64)
    f = np.array([_f_measure(p[t], r[t], bp) for t in frames], np.float64)
    jm, fm = float(j.mean()), float(f.mean())
    return JFScores(jm, fm, (jm + fm) / 2, j, f, tuple(frames))


# --------------------------------------------------------------------------------------------
# Inter-slice consistency
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SliceConsistency:
    """How smoothly a 3D mask changes from slice to slice along one axis.

    Attributes:
        mean_adjacent_dice: mean Dice of adjacent slice pairs that both hold foreground
            (1.0 when there is no such pair).
        area_variation: ``sum |a[z+1] - a[z]| / sum (a[z] + a[z+1]) / 2`` over the same pairs: the
            mean relative change of the cross-section area between neighbouring slices (0 for a
            prism, 2/3 when the area doubles or halves at every step; 0.0 without pairs).
        areas_mm2: float64 ``(n_slices,)`` foreground area of every slice in mm^2.
        n_pairs: number of adjacent pairs that both hold foreground.
        n_gaps: empty slices strictly between the first and the last slice with foreground
            (a gap is a break in the object along the axis).
    """

    mean_adjacent_dice: float
    area_variation: float
    areas_mm2: np.ndarray = field(repr=False)
    n_pairs: int
    n_gaps: int


def inter_slice_consistency(
    mask: MaskLike, *, axis: int | None = None, spacing: SpacingLike = None
) -> SliceConsistency:
    """Inter-slice consistency of a 3D mask (or a 2D+time mask stack) along ``axis``.

    Args:
        mask: bool ``(D, H, W)`` (or a :class:`Volume`).
        axis: the slicing axis (0, 1, 2 or negative; default: the library's default axis,
            :func:`~medsam2kit.sequencer.default_axis`: of the :class:`Volume`'s geometry, else of
            ``diag(spacing)`` and the shape, 1 mm when ``spacing`` is ``None``).
        spacing: voxel size in mm per axis (scales ``areas_mm2``, and picks the default axis;
            the two ratios are unitless).

    Returns:
        A :class:`SliceConsistency`.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((4, 6, 6), bool); m[:, 1:5, 1:5] = True; m[3, 1:5, 3:5] = False
        >>> c = inter_slice_consistency(m, spacing=(2.0, 0.5, 0.5))
        >>> round(c.mean_adjacent_dice, 4), round(c.area_variation, 4), c.areas_mm2.tolist()
        (0.8889, 0.1818, [4.0, 4.0, 4.0, 2.0])
    """
    arr, sp_v = _as_array(mask, "mask")
    if arr.ndim != 3:
        raise InvalidInputError(f"mask: expected a 3D (D, H, W) array, got shape {arr.shape}")
    m = _binary(arr, "mask")
    sp = check_spacing(spacing if spacing is not None else sp_v)
    ax = resolve_axis(axis, shape=m.shape, spacing=sp, volume=mask if isinstance(mask, Volume) else None)
    m = np.moveaxis(m, ax, 0)
    pixel_area = float(np.prod([sp[a] for a in range(3) if a != ax]))
    counts = m.reshape(m.shape[0], -1).sum(axis=1).astype(np.float64)
    areas = counts * pixel_area
    both = (counts[:-1] > 0) & (counts[1:] > 0)
    idx = np.flatnonzero(both)
    if idx.size:
        inter = (m[idx] & m[idx + 1]).reshape(idx.size, -1).sum(axis=1)
        dices = 2.0 * inter / (counts[idx] + counts[idx + 1])
        mean_dice = float(dices.mean())
        variation = float(
            np.abs(counts[idx + 1] - counts[idx]).sum() / ((counts[idx] + counts[idx + 1]).sum() / 2)
        )
    else:
        mean_dice, variation = 1.0, 0.0
    fg = np.flatnonzero(counts > 0)
    gaps = int(np.count_nonzero(counts[fg[0] : fg[-1] + 1] == 0)) if fg.size else 0
    return SliceConsistency(mean_dice, variation, areas, int(idx.size), gaps)


__all__ = [
    "DAVIS_BOUND_TH",
    "NSD_RTOL",
    "JFScores",
    "SegmentationScores",
    "SliceConsistency",
    "SurfaceDistances",
    "assd",
    "boundary_f_measure",
    "dice",
    "hausdorff_distance",
    "hd95",
    "inter_slice_consistency",
    "iou",
    "j_and_f",
    "per_label",
    "seg2bmap",
    "segmentation_scores",
    "surface_dice",
    "surface_distances",
]
