"""The SAM2Med3D spatial slice filter: reliable slices of a coarse segmentation as SAM2 prompts.

A coarse network (:mod:`medsam2kit.coarse`, or any :class:`~medsam2kit.coarse.CoarseModel`)
gives a probability volume ``P`` for one label. This module scores every slice along the slicing
axis for how far SAM2 can trust it as a prompt, keeps the best ``K`` slices that lie at least a
minimum gap apart, and turns each into a prompt in slice voxels (a mask, or a box plus an
interior point); :func:`to_predictor_prompts` maps them into frame pixels of a
:class:`~medsam2kit.sequencer.FrameSequence` as :class:`~medsam2kit.predictor.MaskPrompt` /
:class:`~medsam2kit.predictor.PointPrompt` values.

Scoring (our design; the paper names the criteria, not the formulas). With ``M = P > t``
(``t = threshold``), ``M_z`` the mask of slice ``z``, ``n_z = |M_z|`` and ``a`` the in-plane
voxel area in mm^2, each component lies in ``[0, 1]``:

* ``area = n_z / max_z' n_z'`` (relative cross-section; large central slices are better
  prompts); a slice is *eligible* only when ``n_z > 0`` and ``n_z * a >= min_area_mm2``.
* ``confidence = (mean_{M_z} P - t) / (1 - t)`` (how far inside the mask ``P`` clears the
  threshold).
* ``certainty = 1 - mean_{R_z} H(P) / ln 2``, ``H`` the binary entropy, ``R_z`` the mask dilated
  in-plane by ``entropy_margin`` voxels (so the uncertain boundary counts).
* ``agreement = mean Dice(M_z, M_z')`` over the neighbours ``z' = z +- 1`` inside the volume.
* ``membership = |M_z ∩ C| / n_z`` with ``C`` the largest 3D connected component of ``M``.

``score = sum_i w_i c_i / sum_i w_i`` with the weights of :class:`SliceFilterConfig` (all 1 by
default) for eligible slices, 0 otherwise. Selection is greedy: eligible slices with
``score >= min_score`` in decreasing score order (ties: nearer the area-weighted centre of the
foreground along the axis first, then the lower index), each kept when it is
at least ``min_gap_slices`` slices and ``min_gap_mm`` mm away from every slice kept so far,
until ``k`` are kept.

Prompt geometry per kept slice (in-slice voxel coordinates: ``x`` = column along the higher
in-plane array axis, ``y`` = row along the lower one, as in :mod:`medsam2kit.sequencer`):

* ``mask``: ``M_z`` (bool ``(h, w)``).
* ``box``: XYXY around the largest 2D connected component of ``M_z``, on voxel *edges*
  ``(x_min - 0.5, y_min - 0.5, x_max + 0.5, y_max + 0.5)``, so it covers the component's
  voxels and is never empty (a one-voxel component gives a 1 x 1 box).
* ``point``: ``(x, y)`` of the component's voxel farthest from its border (Euclidean distance
  transform with the in-plane spacing, the slice edge counting as border); among ties the one
  closest to the component's centroid, then the first in raster order.

Example:
    >>> import numpy as np
    >>> from medsam2kit.prompts import SliceFilterConfig, select_slices
    >>> prob = np.zeros((9, 20, 20), np.float32)
    >>> prob[1:8, 5:15, 5:15] = 0.9
    >>> sel = select_slices(prob, spacing=(1.0, 1.0, 1.0), config=SliceFilterConfig(k=2, min_gap_slices=2))
    >>> sel.indices, sel.prompts[0].box, sel.prompts[0].point
    ((2, 4), (4.5, 4.5, 14.5, 14.5), (9.0, 9.0))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from medsam2kit.errors import (
    GeometryError,
    InvalidInputError,
    InvalidTypeError,
    ShapeMismatchError,
)
from medsam2kit._validate import check_int, check_label_ids, check_spacing, resolve_axis
from medsam2kit.roi import Roi
from medsam2kit.volume import Volume

if TYPE_CHECKING:  # the predictor imports sam2 (slow); import it only when prompts are built
    from medsam2kit.predictor import MaskPrompt, PointPrompt
    from medsam2kit.sequencer import FrameSequence

PromptKind = Literal["mask", "box", "box+point", "point"]
ProbInput = Volume | np.ndarray | torch.Tensor

#: Probabilities up to this far outside ``[0, 1]`` (float rounding) are clipped, not rejected.
PROB_TOLERANCE = 1e-6

#: The score components, in the order used by :class:`SliceScores` and the reasons.
COMPONENTS: tuple[str, ...] = ("area", "confidence", "certainty", "agreement", "membership")


# --------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceFilterConfig:
    """Parameters of the slice filter (see the module docstring for the formulas).

    Attributes:
        threshold: ``t`` in ``(0, 1)``; the mask is ``P > t``.
        min_area_mm2: smallest eligible foreground area of a slice in mm^2 (>= 0).
        k: most slices to keep (>= 1).
        min_gap_slices: kept slices differ by at least this many slices (>= 1).
        min_gap_mm: and lie at least this many mm apart along the axis (>= 0).
        min_score: slices scoring below it are never kept (in ``[0, 1]``).
        weight_area, weight_confidence, weight_certainty, weight_agreement, weight_membership:
            non-negative weights of the components (not all zero).
        entropy_margin: in-plane dilation (voxels, >= 0) of the mask over which the entropy is
            averaged.
        connectivity: 1 (faces), 2 (+ edges) or 3 (+ corners) for connected components (in 2D,
            ``min(connectivity, 2)``).

    Example:
        >>> SliceFilterConfig(k=5, min_gap_mm=4.0).k
        5
    """

    threshold: float = 0.5
    min_area_mm2: float = 10.0
    k: int = 3
    min_gap_slices: int = 1
    min_gap_mm: float = 0.0
    min_score: float = 0.0
    weight_area: float = 1.0
    weight_confidence: float = 1.0
    weight_certainty: float = 1.0
    weight_agreement: float = 1.0
    weight_membership: float = 1.0
    entropy_margin: int = 1
    connectivity: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("k", "min_gap_slices", "entropy_margin", "connectivity"):
                minimum = 0 if f.name == "entropy_margin" else 1
                object.__setattr__(self, f.name, check_int(value, f.name, minimum=minimum))
            else:
                object.__setattr__(self, f.name, _real(value, f.name))
        if not 0.0 < self.threshold < 1.0:
            raise InvalidInputError(f"threshold: expected a value in (0, 1), got {self.threshold}")
        for name in ("min_area_mm2", "min_gap_mm", *(f"weight_{c}" for c in COMPONENTS)):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name}: expected a value >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise InvalidInputError(f"min_score: expected a value in [0, 1], got {self.min_score}")
        if self.connectivity > 3:
            raise InvalidInputError(f"connectivity: expected 1, 2 or 3, got {self.connectivity}")
        if sum(self.weights) <= 0:
            raise InvalidInputError(f"weights: expected at least one weight > 0, got {self.weights}")

    @property
    def weights(self) -> tuple[float, ...]:
        """The weights in :data:`COMPONENTS` order."""
        return tuple(float(getattr(self, f"weight_{c}")) for c in COMPONENTS)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class SliceScores:
    """Per-slice reliability of one label along the slicing axis (all arrays ``(n,)``, read-only).

    Attributes:
        axis: the slicing axis.
        area_mm2: float64 foreground area ``n_z * a`` in mm^2.
        area, confidence, certainty, agreement, membership: float64 components in ``[0, 1]``
            (0 on empty slices).
        eligible: bool, foreground present and ``area_mm2 >= min_area_mm2``.
        score: float64 combined score in ``[0, 1]`` (0 where not eligible).
    """

    axis: int
    area_mm2: np.ndarray
    area: np.ndarray
    confidence: np.ndarray
    certainty: np.ndarray
    agreement: np.ndarray
    membership: np.ndarray
    eligible: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def components(self, z: int) -> SliceComponents:
        """The components of slice ``z`` as a :class:`SliceComponents`."""
        return SliceComponents(
            area_mm2=float(self.area_mm2[z]),
            **{c: float(getattr(self, c)[z]) for c in COMPONENTS},
        )


@dataclass(frozen=True)
class SliceComponents:
    """The score components of one slice (see the module docstring).

    Attributes:
        area_mm2: foreground area in mm^2.
        area, confidence, certainty, agreement, membership: components in ``[0, 1]``.
    """

    area_mm2: float
    area: float
    confidence: float
    certainty: float
    agreement: float
    membership: float


@dataclass(frozen=True, eq=False)
class SlicePrompt:
    """One chosen slice and its prompt in slice voxels.

    Attributes:
        slice_index: index along the slicing axis.
        rank: 0 for the best kept slice, 1 for the next, ...
        score: combined score in ``[0, 1]``.
        components: the :class:`SliceComponents`.
        reason: a short human-readable explanation.
        mask: bool ``(h, w)`` read-only, the slice's mask ``P > t`` (rows = lower in-plane axis).
        box: ``(x0, y0, x1, y1)`` voxel edges around the largest 2D component.
        point: ``(x, y)`` interior point of that component (a voxel centre inside it).
    """

    slice_index: int
    rank: int
    score: float
    components: SliceComponents
    reason: str
    mask: np.ndarray
    box: tuple[float, float, float, float]
    point: tuple[float, float]


@dataclass(frozen=True, eq=False)
class SliceSelection:
    """The filter's result for one label.

    Attributes:
        label: the label the probabilities belong to.
        axis: slicing axis.
        volume_shape: ``(D, H, W)`` of the probability volume.
        spacing: voxel size in mm along array axes 0, 1, 2.
        config: the :class:`SliceFilterConfig` used.
        prompts: the kept slices, best first.
        scores: the :class:`SliceScores` of every slice.

    Example:
        >>> import numpy as np
        >>> prob = np.zeros((3, 8, 8), np.float32); prob[1, 2:6, 2:6] = 1.0
        >>> sel = select_slices(prob, config=SliceFilterConfig(min_area_mm2=0))
        >>> sel.indices, len(sel), sel.prompts[0].reason.split(":")[0]
        ((1,), 1, 'slice 1, rank 1, score 0.800')
    """

    label: int
    axis: int
    volume_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    config: SliceFilterConfig
    prompts: tuple[SlicePrompt, ...]
    scores: SliceScores = field(repr=False)

    @property
    def indices(self) -> tuple[int, ...]:
        """The kept slice indices in increasing order."""
        return tuple(sorted(p.slice_index for p in self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[SlicePrompt]:
        return iter(self.prompts)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidTypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInputError(f"{name}: expected a finite number, got {value}")
    return number


def _check_prob(prob: object, name: str) -> np.ndarray:
    if isinstance(prob, torch.Tensor):
        prob = prob.detach().cpu().numpy()
    if not isinstance(prob, np.ndarray):
        raise InvalidTypeError(
            f"{name}: expected a Volume, numpy array or torch tensor, got {type(prob).__name__}"
        )
    if prob.ndim != 3:
        raise InvalidInputError(f"{name}: expected 3 dimensions (D, H, W), got shape {prob.shape}")
    if min(prob.shape) < 1:
        raise InvalidInputError(f"{name}: expected a non-empty volume, got shape {prob.shape}")
    if prob.dtype == np.bool_:
        return prob.astype(np.float64)
    if not np.issubdtype(prob.dtype, np.floating):
        raise InvalidTypeError(
            f"{name}: expected float probabilities in [0, 1] (or bool), got dtype {prob.dtype}"
        )
    arr = prob.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: expected finite probabilities, got NaN/inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -PROB_TOLERANCE or hi > 1.0 + PROB_TOLERANCE:
        raise InvalidInputError(f"{name}: expected probabilities in [0, 1], got range [{lo:.6g}, {hi:.6g}]")
    return np.clip(arr, 0.0, 1.0)


def _resolve(
    prob: ProbInput, spacing: Sequence[float] | None, axis: int | None, name: str = "prob"
) -> tuple[np.ndarray, tuple[float, float, float], int]:
    """Probabilities as float64 ``(D, H, W)`` plus spacing and axis."""
    if isinstance(prob, Volume):
        if spacing is not None:
            raise InvalidInputError("spacing: expected None when prob is a Volume (it has its own geometry)")
        arr = _check_prob(prob.array, name)
        return arr, prob.spacing, resolve_axis(axis, shape=arr.shape, volume=prob)
    arr = _check_prob(prob, name)
    s0, s1, s2 = check_spacing(spacing)
    return arr, (s0, s1, s2), resolve_axis(axis, shape=arr.shape, spacing=(s0, s1, s2))


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    """``H(p) / ln 2`` in ``[0, 1]`` (0 at p in {0, 1})."""
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0))
    return np.asarray(h / math.log(2.0))


def largest_component(mask: np.ndarray, *, connectivity: int | None = None) -> np.ndarray:
    """The largest connected component of a 2D or 3D bool mask (ties: the one met first in
    raster order); all False for an empty mask.

    Args:
        mask: bool ``(h, w)`` or ``(D, H, W)``.
        connectivity: 1 .. ``mask.ndim`` (default ``mask.ndim``: 8- / 26-neighbourhood).

    Returns:
        bool array of the same shape.

    Example:
        >>> import numpy as np
        >>> m = np.array([[1, 1, 0, 1]], bool)
        >>> largest_component(m).astype(int).tolist()
        [[1, 1, 0, 0]]
    """
    m = np.asarray(mask, dtype=bool)
    labels, count = _components(m, connectivity)
    if count == 0:
        return np.zeros(m.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def signed_distance(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Per element of a bool ``mask`` (2D or 3D), the distance in mm (``spacing`` per axis) to the
    nearest element on the other side: positive inside, negative outside; ``+inf`` everywhere
    for a mask that fills its grid and ``-inf`` for an empty one (there is no other side).

    Example:
        >>> signed_distance(np.array([False, True, True, True]), (2.0,)).tolist()
        [-2.0, 2.0, 4.0, 6.0]
    """
    if mask.all() or not mask.any():  # no other side: scipy's transform is undefined there
        return np.full(mask.shape, np.inf if mask.any() else -np.inf)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return np.asarray(inside - outside, dtype=np.float64)


def components_meeting(mask: np.ndarray, seed: np.ndarray, *, connectivity: int | None = None) -> np.ndarray:
    """The connected components of a 2D or 3D bool ``mask`` that share a pixel with ``seed``
    (bool, the same shape); all False when none does.

    Args:
        mask: bool ``(h, w)`` or ``(D, H, W)``.
        seed: bool, ``mask``'s shape.
        connectivity: 1 .. ``mask.ndim`` (default ``mask.ndim``: 8- / 26-neighbourhood).

    Raises:
        ShapeMismatchError: ``seed`` has another shape.

    Example:
        >>> import numpy as np
        >>> m = np.array([[1, 1, 0, 1]], bool)
        >>> components_meeting(m, np.array([[0, 0, 0, 1]], bool)).astype(int).tolist()
        [[0, 0, 0, 1]]
    """
    m, s = np.asarray(mask, dtype=bool), np.asarray(seed, dtype=bool)
    if s.shape != m.shape:
        raise ShapeMismatchError(f"seed: expected the mask's shape {m.shape}, got {s.shape}")
    labels, _ = _components(m, connectivity)
    met = np.unique(labels[s & m])
    return np.isin(labels, met[met > 0])


def _components(mask: np.ndarray, connectivity: int | None) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` of a bool mask with connectivity 1 .. ``mask.ndim`` (default
    ``mask.ndim``): the component index per pixel (0: background) and their count."""
    conn = mask.ndim if connectivity is None else min(int(connectivity), mask.ndim)
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, conn))
    return labels, int(count)


def score_slices(
    prob: ProbInput,
    *,
    spacing: Sequence[float] | None = None,
    axis: int | None = None,
    config: SliceFilterConfig | None = None,
) -> SliceScores:
    """Reliability of every slice of one label's probability volume.

    Args:
        prob: float ``(D, H, W)`` probabilities in ``[0, 1]`` (bool accepted as 0/1), or a
            :class:`Volume` holding them (then spacing and default axis come from its affine).
        spacing: voxel size in mm along array axes 0, 1, 2 for a bare array (default 1 mm).
        axis: slicing axis (default :func:`~medsam2kit.sequencer.default_axis` of the geometry).
        config: the :class:`SliceFilterConfig` (default one).

    Returns:
        :class:`SliceScores` with one entry per slice along ``axis``.

    Example:
        >>> import numpy as np
        >>> prob = np.zeros((3, 4, 4)); prob[:, :2, :2] = 1.0
        >>> s = score_slices(prob, config=SliceFilterConfig(min_area_mm2=0))
        >>> s.score.round(3).tolist(), s.agreement.tolist()
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """
    cfg = SliceFilterConfig() if config is None else config
    if not isinstance(cfg, SliceFilterConfig):
        raise InvalidTypeError(f"config: expected a SliceFilterConfig or None, got {type(cfg).__name__}")
    arr, sp, ax = _resolve(prob, spacing, axis)
    return _score(arr, sp, ax, cfg)


def _score(arr: np.ndarray, sp: tuple[float, float, float], ax: int, cfg: SliceFilterConfig) -> SliceScores:
    p = np.moveaxis(arr, ax, 0)  # (n, h, w)
    in_plane = [sp[a] for a in range(3) if a != ax]
    voxel_area = in_plane[0] * in_plane[1]
    m = p > cfg.threshold
    n = m.shape[0]
    counts = m.reshape(n, -1).sum(axis=1).astype(np.float64)
    has = counts > 0
    safe = np.where(has, counts, 1.0)
    area_mm2 = counts * voxel_area
    area = counts / counts.max() if counts.max() > 0 else np.zeros(n)

    conf_mean = (p * m).reshape(n, -1).sum(axis=1) / safe
    confidence = np.where(has, np.clip((conf_mean - cfg.threshold) / (1.0 - cfg.threshold), 0.0, 1.0), 0.0)

    if cfg.entropy_margin > 0:
        st = np.zeros((3, 3, 3), bool)
        st[1] = ndimage.generate_binary_structure(2, 1)
        region = ndimage.binary_dilation(m, structure=st, iterations=cfg.entropy_margin)
    else:
        region = m
    ent = _binary_entropy(p)
    rcount = region.reshape(n, -1).sum(axis=1).astype(np.float64)
    mean_h = (ent * region).reshape(n, -1).sum(axis=1) / np.where(rcount > 0, rcount, 1.0)
    certainty = np.where(has, np.clip(1.0 - mean_h, 0.0, 1.0), 0.0)

    agreement = np.zeros(n)
    if n > 1:
        inter = (m[1:] & m[:-1]).reshape(n - 1, -1).sum(axis=1).astype(np.float64)
        denom = counts[1:] + counts[:-1]
        pair = np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), 0.0)  # Dice(z, z+1)
        total = np.zeros(n)
        total[:-1] += pair
        total[1:] += pair
        neighbours = np.full(n, 2.0)
        neighbours[0] = neighbours[-1] = 1.0
        agreement = np.where(has, total / neighbours, 0.0)

    big = largest_component(m, connectivity=cfg.connectivity)
    membership = np.where(has, big.reshape(n, -1).sum(axis=1) / safe, 0.0)

    eligible = has & (area_mm2 >= cfg.min_area_mm2 * (1.0 - 1e-9))
    comps = np.stack([area, confidence, certainty, agreement, membership])
    w = np.asarray(cfg.weights)[:, None]
    score = np.where(eligible, np.clip((w * comps).sum(axis=0) / w.sum(), 0.0, 1.0), 0.0)
    return SliceScores(
        axis=ax,
        area_mm2=_readonly(area_mm2),
        area=_readonly(area.astype(np.float64)),
        confidence=_readonly(confidence),
        certainty=_readonly(certainty),
        agreement=_readonly(agreement),
        membership=_readonly(membership),
        eligible=_readonly(eligible),
        score=_readonly(score),
    )


def choose_slices(
    scores: SliceScores,
    *,
    k: int,
    min_gap_slices: int = 1,
    min_gap_mm: float = 0.0,
    slice_spacing: float = 1.0,
    min_score: float = 0.0,
) -> tuple[int, ...]:
    """Greedy top-``k`` eligible slices, best first, pairwise at least the minimum gap apart.

    Args:
        scores: from :func:`score_slices`.
        k: most slices to keep (>= 1).
        min_gap_slices: kept indices differ by at least this (>= 1).
        min_gap_mm: kept slices lie at least this far apart, ``|z - z'| * slice_spacing`` mm.
        slice_spacing: spacing along the slicing axis in mm (> 0).
        min_score: slices below it are skipped.

    Returns:
        Slice indices in the order chosen: decreasing score; among equal scores the slice
        nearer the foreground's centre along the axis (``sum_z z * area_z / sum_z area_z``)
        first, then the lower index.

    Example:
        >>> import numpy as np
        >>> prob = np.zeros((6, 4, 4)); prob[:, 1:3, 1:3] = 0.9
        >>> choose_slices(score_slices(prob, axis=0, config=SliceFilterConfig(min_area_mm2=0)), k=3, min_gap_slices=2)
        (2, 4, 0)
    """
    kk = check_int(k, "k", minimum=1)
    gap = check_int(min_gap_slices, "min_gap_slices", minimum=1)
    gap_mm, step, floor = (
        _real(min_gap_mm, "min_gap_mm"),
        _real(slice_spacing, "slice_spacing"),
        _real(min_score, "min_score"),
    )
    if gap_mm < 0 or step <= 0:
        raise InvalidInputError(f"min_gap_mm >= 0 and slice_spacing > 0 expected, got {gap_mm}, {step}")
    candidates = np.flatnonzero(scores.eligible & (scores.score >= floor))
    weights = scores.area
    centre = float((np.arange(len(scores)) * weights).sum() / weights.sum()) if weights.sum() > 0 else 0.0
    off_centre = np.abs(candidates - centre)
    order = candidates[np.lexsort((candidates, off_centre, -scores.score[candidates]))]
    chosen: list[int] = []
    for z in order.tolist():
        if all(abs(z - c) >= gap and abs(z - c) * step >= gap_mm * (1.0 - 1e-9) for c in chosen):
            chosen.append(int(z))
            if len(chosen) == kk:
                break
    return tuple(chosen)


def prompt_geometry(
    mask: npt.ArrayLike, *, spacing: Sequence[float] = (1.0, 1.0), connectivity: int = 2
) -> tuple[tuple[float, float, float, float], tuple[float, float], np.ndarray]:
    """Box and interior point of the largest 2D component of one slice's mask.

    Args:
        mask: bool ``(h, w)`` with at least one True voxel (rows = ``y``, columns = ``x``).
        spacing: in-plane voxel size ``(row, column)`` in mm, for the distance transform.
        connectivity: 1 (4-neighbourhood) or 2 (8-neighbourhood).

    Returns:
        ``(box, point, component)``: box ``(x0, y0, x1, y1)`` on voxel edges, point ``(x, y)``
        at a voxel centre of the component farthest from its border, the component bool ``(h, w)``.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((5, 7), bool); m[1:4, 1:6] = True; m[0, 6] = True
        >>> box, point, comp = prompt_geometry(m, connectivity=1)
        >>> box, point, int(comp.sum())
        ((0.5, 0.5, 5.5, 3.5), (3.0, 2.0), 15)
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InvalidInputError(f"mask: expected a 2D (h, w) mask, got shape {m.shape}")
    m = m.astype(bool)
    if not m.any():
        raise InvalidInputError("mask: expected at least one foreground voxel, got an empty mask")
    sy, sx = (float(s) for s in spacing)
    comp = largest_component(m, connectivity=max(1, min(int(connectivity), 2)))
    rows, cols = np.nonzero(comp)
    box = (float(cols.min()) - 0.5, float(rows.min()) - 0.5, float(cols.max()) + 0.5, float(rows.max()) + 0.5)
    dist = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=(sy, sx))[1:-1, 1:-1]
    best = dist[rows, cols]
    top = np.flatnonzero(best >= best.max() - 1e-9)
    cy, cx = rows.mean(), cols.mean()
    d2 = ((rows[top] - cy) * sy) ** 2 + ((cols[top] - cx) * sx) ** 2
    pick = top[int(np.argmin(d2))]  # argmin takes the first (raster order) among equals
    return box, (float(cols[pick]), float(rows[pick])), comp


def _reason(z: int, rank: int, score: float, c: SliceComponents) -> str:
    weakest = min(COMPONENTS, key=lambda name: getattr(c, name))
    return (
        f"slice {z}, rank {rank + 1}, score {score:.3f}: area {c.area_mm2:.1f} mm^2 "
        f"({c.area:.2f} of the largest), confidence {c.confidence:.2f}, certainty {c.certainty:.2f}, "
        f"neighbour Dice {c.agreement:.2f}, {100.0 * c.membership:.0f}% in the largest 3D component; "
        f"weakest: {weakest}"
    )


def select_slices(
    prob: ProbInput,
    *,
    spacing: Sequence[float] | None = None,
    axis: int | None = None,
    config: SliceFilterConfig | None = None,
    label: int = 1,
) -> SliceSelection:
    """Score the slices of one label's probability volume, keep the best well-spread ones and
    build their prompts (in slice voxels).

    Args:
        prob: float ``(D, H, W)`` in ``[0, 1]`` (bool accepted), or a :class:`Volume` of them.
        spacing: voxel size in mm along axes 0, 1, 2 for a bare array (default 1 mm).
        axis: slicing axis (default: :func:`~medsam2kit.sequencer.default_axis` of the
            :class:`Volume`, else of ``diag(spacing)`` and the shape).
        config: :class:`SliceFilterConfig` (default one).
        label: the label id recorded in the result (and the default SAM2 object id).

    Returns:
        The :class:`SliceSelection` (possibly with no prompts when no slice is eligible).

    Raises:
        InvalidInputError: wrong ndim, non-finite or out-of-range probabilities, bad axis.
        InvalidTypeError: wrong types.
        GeometryError: non-positive spacing.

    Example:
        >>> import numpy as np
        >>> prob = np.zeros((4, 10, 10)); prob[:, 2:8, 2:10] = 0.8
        >>> sel = select_slices(prob, spacing=(3.0, 0.5, 0.5), config=SliceFilterConfig(k=4, min_gap_mm=6.0))
        >>> sel.axis, sel.indices
        (0, (1, 3))
    """
    cfg = SliceFilterConfig() if config is None else config
    if not isinstance(cfg, SliceFilterConfig):
        raise InvalidTypeError(f"config: expected a SliceFilterConfig or None, got {type(cfg).__name__}")
    lab = check_int(label, "label")
    arr, sp, ax = _resolve(prob, spacing, axis)
    scores = _score(arr, sp, ax, cfg)
    chosen = choose_slices(
        scores,
        k=cfg.k,
        min_gap_slices=cfg.min_gap_slices,
        min_gap_mm=cfg.min_gap_mm,
        slice_spacing=sp[ax],
        min_score=cfg.min_score,
    )
    in_plane = tuple(sp[a] for a in range(3) if a != ax)
    prompts = []
    for rank, z in enumerate(chosen):
        mask = np.ascontiguousarray(np.take(arr, z, axis=ax) > cfg.threshold)
        box, point, _ = prompt_geometry(mask, spacing=in_plane, connectivity=cfg.connectivity)
        comps = scores.components(z)
        score = float(scores.score[z])
        prompts.append(
            SlicePrompt(
                slice_index=z,
                rank=rank,
                score=score,
                components=comps,
                reason=_reason(z, rank, score, comps),
                mask=_readonly(mask),
                box=box,
                point=point,
            )
        )
    d, h, w = arr.shape
    return SliceSelection(
        label=lab,
        axis=ax,
        volume_shape=(int(d), int(h), int(w)),
        spacing=sp,
        config=cfg,
        prompts=tuple(prompts),
        scores=scores,
    )


def select_slices_multilabel(
    proba: np.ndarray | torch.Tensor,
    *,
    like: Volume | None = None,
    spacing: Sequence[float] | None = None,
    axis: int | None = None,
    config: SliceFilterConfig | None = None,
    labels: Sequence[int] | None = None,
) -> dict[int, SliceSelection]:
    """One :class:`SliceSelection` per label from a coarse model's ``(L + 1, D, H, W)`` output.

    Args:
        proba: float ``(L + 1, D, H, W)`` probabilities (channel 0 background, channel ``l``
            label ``l``), as :meth:`medsam2kit.coarse.CoarseSegmenter.predict_proba` returns.
        like: the image the probabilities belong to (gives spacing and default axis); or give
            ``spacing`` (and ``axis``) directly.
        spacing: voxel size in mm when ``like`` is not given.
        axis: slicing axis (default from the geometry).
        config: :class:`SliceFilterConfig` (the same for every label).
        labels: the labels to select for (default ``1..L``).

    Returns:
        ``{label: SliceSelection}``.

    Example:
        >>> import numpy as np
        >>> proba = np.zeros((3, 4, 8, 8), np.float32); proba[0] = 1
        >>> proba[1, :, 1:4, 1:4], proba[0, :, 1:4, 1:4] = 1, 0
        >>> sels = select_slices_multilabel(proba, config=SliceFilterConfig(min_area_mm2=0, k=1))
        >>> {lab: s.indices for lab, s in sels.items()}
        {1: (1,), 2: ()}
    """
    arr = proba.detach().cpu().numpy() if isinstance(proba, torch.Tensor) else proba
    if not isinstance(arr, np.ndarray):
        raise InvalidTypeError(f"proba: expected a numpy array or torch tensor, got {type(proba).__name__}")
    if arr.ndim != 4 or arr.shape[0] < 2:
        raise InvalidInputError(f"proba: expected shape (L + 1, D, H, W) with L >= 1, got {arr.shape}")
    if like is not None:
        if not isinstance(like, Volume):
            raise InvalidTypeError(f"like: expected a Volume or None, got {type(like).__name__}")
        if spacing is not None:
            raise InvalidInputError(
                "spacing: expected None when like is given (the Volume has its own geometry)"
            )
        if like.shape != arr.shape[1:]:
            raise ShapeMismatchError(
                f"proba: expected shape (L + 1, *{like.shape}) to match like, got {arr.shape}"
            )
    num = arr.shape[0] - 1
    wanted = list(range(1, num + 1)) if labels is None else check_label_ids(labels, maximum=num)
    out: dict[int, SliceSelection] = {}
    for lab in wanted:
        channel: ProbInput = like.with_array(arr[lab]) if like is not None else arr[lab]
        out[lab] = select_slices(channel, spacing=spacing, axis=axis, config=config, label=lab)
    return out


def to_predictor_prompts(
    selection: SliceSelection,
    seq: FrameSequence,
    *,
    kind: PromptKind = "mask",
    obj_id: int | None = None,
) -> list[MaskPrompt | PointPrompt]:
    """The selection's prompts in frame pixels of ``seq``, as predictor prompt values.

    ``seq`` must slice the same grid along the same axis (``sequence_volume(volume,
    axis=selection.axis, ...)``) and show every chosen slice.

    Args:
        selection: from :func:`select_slices`.
        seq: the :class:`~medsam2kit.sequencer.FrameSequence` SAM2 runs on.
        kind: ``"mask"`` (:class:`~medsam2kit.predictor.MaskPrompt`, bool ``(S, S)``), ``"box"``,
            ``"box+point"`` (box plus one positive click) or ``"point"`` (one positive click)
            (:class:`~medsam2kit.predictor.PointPrompt`, float32 pixels).
        obj_id: SAM2 object id (default ``selection.label``).

    Returns:
        One prompt per chosen slice, best first.

    Raises:
        GeometryError: ``seq`` slices another axis.
        ShapeMismatchError: ``seq`` covers a grid of another shape.
        InvalidInputError: a chosen slice is not in ``seq``, or an unknown ``kind``.

    Example:
        >>> import numpy as np
        >>> from medsam2kit.sequencer import sequence_volume
        >>> img = np.zeros((4, 16, 16), np.float32)
        >>> prob = np.zeros((4, 16, 16)); prob[:, 4:12, 4:12] = 0.9
        >>> sel = select_slices(prob, config=SliceFilterConfig(k=1))
        >>> seq = sequence_volume(img, image_size=32)
        >>> p = to_predictor_prompts(sel, seq, kind="box+point")[0]
        >>> p.frame, p.box.tolist(), p.points.tolist(), p.labels.tolist()
        (1, [7.5, 7.5, 23.5, 23.5], [[14.5, 14.5]], [1])
    """
    from medsam2kit.predictor import MaskPrompt, PointPrompt
    from medsam2kit.sequencer import FrameSequence

    if not isinstance(selection, SliceSelection):
        raise InvalidTypeError(f"selection: expected a SliceSelection, got {type(selection).__name__}")
    if not isinstance(seq, FrameSequence):
        raise InvalidTypeError(f"seq: expected a FrameSequence, got {type(seq).__name__}")
    if kind not in ("mask", "box", "box+point", "point"):
        raise InvalidInputError(f"kind: expected 'mask', 'box', 'box+point' or 'point', got {kind!r}")
    oid = selection.label if obj_id is None else check_int(obj_id, "obj_id")
    layout = seq.layout
    if tuple(layout.volume_shape) != selection.volume_shape:
        raise ShapeMismatchError(
            f"seq: expected a sequence of a {selection.volume_shape} grid (the selection's), got {layout.volume_shape}"
        )
    if layout.axis != selection.axis:
        raise GeometryError(
            f"seq: expected a sequence sliced along axis {selection.axis} (the selection's), got {layout.axis}"
        )
    out: list[MaskPrompt | PointPrompt] = []
    for p in selection.prompts:
        frame = seq.frame_of_slice(p.slice_index)
        if kind == "mask":
            out.append(MaskPrompt(frame=frame, mask=seq.mask_to_frame(p.mask), obj_id=oid))
            continue
        box = (
            torch.as_tensor(seq.boxes_to_frame(np.asarray(p.box)), dtype=torch.float32)
            if kind != "point"
            else None
        )
        if kind == "box":
            points, labels = torch.zeros((0, 2), dtype=torch.float32), torch.zeros(0, dtype=torch.int32)
        else:
            points = torch.as_tensor(seq.points_to_frame(np.asarray([p.point])), dtype=torch.float32)
            labels = torch.ones(1, dtype=torch.int32)
        out.append(PointPrompt(frame=frame, points=points, labels=labels, obj_id=oid, box=box))
    return out


def crop_selection(selection: SliceSelection, roi: Roi) -> SliceSelection:
    """The selection on a crop of its grid (:class:`medsam2kit.roi.Roi` along the same axis): masks
    cropped, boxes and points moved by the crop's offset, for :func:`to_predictor_prompts` on
    the sequence of the cropped volume.

    Raises:
        GeometryError: ``roi`` is of another grid or axis.
        InvalidInputError: a chosen slice's prompt is not inside the crop.

    Example:
        >>> import numpy as np
        >>> from medsam2kit.roi import Roi
        >>> prob = np.zeros((3, 16, 16)); prob[1, 6:10, 5:9] = 0.9
        >>> sel = select_slices(prob, config=SliceFilterConfig(min_area_mm2=0))
        >>> p = crop_selection(sel, Roi((3, 16, 16), 0, (4, 12), (3, 11))).prompts[0]
        >>> p.mask.shape, p.box, p.point
        ((8, 8), (1.5, 1.5, 5.5, 5.5), (3.0, 3.0))
    """
    if roi.shape != selection.volume_shape or roi.axis != selection.axis:
        raise GeometryError(
            f"roi: expected a crop of the selection's {selection.volume_shape} grid along axis {selection.axis}, "
            f"got one of {roi.shape} along axis {roi.axis}"
        )
    dy, dx = float(roi.rows[0]), float(roi.cols[0])
    prompts = []
    for p in selection.prompts:
        mask = roi.crop_slice(p.mask)
        if int(mask.sum()) != int(p.mask.sum()):
            raise InvalidInputError(f"roi: the prompt of slice {p.slice_index} reaches outside the crop {roi}")
        x0, y0, x1, y1 = p.box
        prompts.append(replace(p, mask=mask, box=(x0 - dx, y0 - dy, x1 - dx, y1 - dy),
                               point=(p.point[0] - dx, p.point[1] - dy)))
    return replace(selection, volume_shape=roi.crop_shape, prompts=tuple(prompts))


__all__ = [
    "COMPONENTS",
    "PROB_TOLERANCE",
    "PromptKind",
    "SliceComponents",
    "SliceFilterConfig",
    "SlicePrompt",
    "SliceScores",
    "SliceSelection",
    "choose_slices",
    "components_meeting",
    "crop_selection",
    "largest_component",
    "prompt_geometry",
    "score_slices",
    "select_slices",
    "select_slices_multilabel",
    "signed_distance",
    "to_predictor_prompts",
]
