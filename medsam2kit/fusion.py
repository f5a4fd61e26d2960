"""Confidence-driven fusion of a coarse and a SAM2-refined probability volume (SAM2Med3D).

A coarse 3D network gives a probability ``p_c`` for the whole volume; SAM2, propagated from a few
prompt slices, gives a refined probability ``p_s`` on the slices it visited, with an object-score
logit and a predicted IoU per slice. SAM2 is good near its prompts and drifts away from them; the
coarse network is consistent but blurry. And SAM2's own scores are not evidence that it is right:
an uninformative SAM2 (random weights, or a model that never saw this kind of image) reports
object scores of 9-10 on every slice, with or without the structure. The fusion therefore trusts
each input per slice by its confidence, trusts SAM2 less the farther (in mm) a slice is from the
nearest prompt slice, and trusts it only as far as its mask agrees with what the coarse network is
sure of (design ours; the paper gives no formula). For slice ``z`` along ``axis``:

* SAM2 confidence ``q_s(z) = sigmoid(object_score(z)) * clip(iou(z), 0, 1)`` (0 when not visited);
* SAM2 evidence ``e(z)`` in ``(0, 1]`` (:func:`sam_evidence`): a soft Dice between SAM2's mask
  and the coarse network's confident foreground (``p_c >= confident``) in which SAM2's
  foreground elsewhere counts as far as the coarse network doubts it (``1 - p_c``), and once
  more on confident background (``p_c <= 1 - confident``); on the slice, times the same ratio
  over all visited non-prompt slices;
* coarse confidence ``q_c(z) = 1 - mean H(p_c) / log 2`` over the coarse mask of the slice
  (``p_c > threshold``; the whole slice when that is empty), ``H`` the binary entropy;
* distance ``d(z)`` = mm from the nearest prompt slice (``|z - k| * spacing[axis]``);
* SAM2 weight ``w(z) = e^gamma sigmoid((log q_s - log q_c - d / tau) / T + b)``, i.e. at
  ``T = 1, b = 0`` SAM2's share ``a_s / (a_s + q_c)`` of the trust, with
  ``a_s = q_s exp(-d / tau)``, bounded by its evidence. ``w = 0`` exactly when ``q_s = 0`` (or
  ``e = 0 < gamma``); ``w = e^gamma`` exactly when ``q_c = 0 < q_s``;
* fused ``p = w p_s + (1 - w) p_c`` per voxel, clamped to ``[0, 1]``.

SAM2's weight never exceeds its evidence, so ``|p - p_c| <= e^gamma |p_s - p_c|``: a SAM2 that
contradicts everything the coarse network is sure of gets ``e`` near 0 and the fused probability
stays the coarse one, whatever its object scores, IoUs or the coarse network's own doubt; a SAM2
that covers the confident core and refines the uncertain rim keeps most of its weight. ``tau``
(mm), the temperature ``T``, the bias ``b`` and the evidence power ``gamma`` (0: no evidence
term) are the parameters; :class:`ConfidenceFusion` makes them learnable. Then the volumetric
consistency step (:func:`postprocess_mask`) thresholds the fused probability and cleans the
mask: only voxels inside the union of the thresholded inputs are kept, small or non-largest 3D
components are removed, and holes are filled only when they lie entirely inside the inputs the
fusion listens to (the coarse mask, and SAM2's on the slices where ``w >= 1/2``). So the final
mask never holds a voxel that neither input called foreground, and an untrusted SAM2 fills no
hole.

Example:
    >>> import numpy as np
    >>> from medsam2kit.fusion import fuse
    >>> coarse = np.zeros((5, 8, 8), np.float32); coarse[:, 1:7, 1:7] = 0.6; coarse[:, 2:6, 2:6] = 0.95
    >>> sam = np.zeros_like(coarse); sam[:, 2:6, 1:7] = 0.95  # the confident core, part of the rim
    >>> scores = np.array([np.nan, 4.0, 4.0, 4.0, np.nan], np.float32)
    >>> ious = np.array([np.nan, 0.9, 0.9, 0.9, np.nan], np.float32)
    >>> res = fuse(coarse, sam, scores, ious, prompt_slices=[2], spacing=(3.0, 1.0, 1.0))
    >>> [round(float(w), 2) for w in res.sam_weight]  # unvisited, visited near the prompt, unvisited
    [0.0, 0.55, 0.58, 0.55, 0.0]
    >>> noise = np.random.default_rng(0).random(coarse.shape).astype(np.float32)
    >>> [round(float(e), 2) for e in fuse(coarse, noise, scores + 6, ious, prompt_slices=[2]).evidence]
    [0.0, 0.1, 0.09, 0.08, 0.0]
    >>> res.mask.shape, res.probability.dtype
    ((5, 8, 8), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage
from torch import nn

from medsam2kit._validate import check_spacing, resolve_axis
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError
from medsam2kit.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from medsam2kit.predictor import PropagationResult
    from medsam2kit.sequencer import FrameSequence

HoleFilling = Literal["none", "2d", "3d"]
Learnable = Literal["tau", "temperature", "bias", "evidence"]
ArrayOrTensor = npt.ArrayLike | torch.Tensor

# --------------------------------------------------------------------------------------------
# Parameters and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionParams:
    """Parameters of the confidence-driven weight.

    Attributes:
        tau_mm: decay length in mm of SAM2's trust with the distance from the nearest prompt
            slice (``exp(-d / tau)``); ``inf`` disables the decay.
        temperature: ``T > 0``; larger values flatten the weight towards ``sigmoid(b)``.
        bias: ``b``, added to the weight's logit (> 0 favours SAM2).
        threshold: probability above which a coarse voxel is "inside the coarse mask" for the
            coarse confidence (the same threshold is not used for the final mask; see
            :class:`ConsistencyParams`).
        evidence_power: ``gamma >= 0``; SAM2's weight is at most ``e^gamma``, its evidence
            (:func:`sam_evidence`) to that power; 0 ignores the evidence (the weight of
            versions before it).
        confident: coarse probability at or above which a voxel is confident foreground (at or
            below ``1 - confident``: confident background) for the evidence; in ``(0.5, 1]``.

    Example:
        >>> FusionParams(tau_mm=30.0).temperature
        1.0
    """

    tau_mm: float = 20.0
    temperature: float = 1.0
    bias: float = 0.0
    threshold: float = 0.5
    evidence_power: float = 1.0
    confident: float = 0.9

    def __post_init__(self) -> None:
        if math.isnan(self.tau_mm) or self.tau_mm <= 0:
            raise InvalidInputError(f"tau_mm: expected a positive number of mm (or inf), got {self.tau_mm}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidInputError(f"temperature: expected a finite positive number, got {self.temperature}")
        if not math.isfinite(self.bias):
            raise InvalidInputError(f"bias: expected a finite number, got {self.bias}")
        if not (0.0 <= self.threshold < 1.0):
            raise InvalidInputError(f"threshold: expected a value in [0, 1), got {self.threshold}")
        if not (math.isfinite(self.evidence_power) and self.evidence_power >= 0):
            raise InvalidInputError(
                f"evidence_power: expected a finite number >= 0, got {self.evidence_power}"
            )
        if not (0.5 < self.confident <= 1.0):
            raise InvalidInputError(f"confident: expected a value in (0.5, 1], got {self.confident}")


@dataclass(frozen=True)
class ConsistencyParams:
    """Volumetric consistency post-processing of the thresholded fused probability.

    Attributes:
        threshold: a voxel is foreground when the fused probability is ``> threshold``.
        keep_largest: keep only the largest 3D connected component (after the size filter).
        min_component_mm3: remove components smaller than this volume in mm^3 (0: keep all).
        fill_holes: ``"2d"`` fill holes per slice along the slice axis (a superset of the 3D
            holes), ``"3d"`` fill enclosed 3D cavities only, ``"none"``. A hole is filled only
            when all of it lies inside the union of the thresholded inputs (in :func:`fuse`:
            the coarse mask, and SAM2's on the slices where its weight is at least 1/2).
        connectivity: 1 (faces, 6-neighbourhood in 3D), 2 (faces and edges) or 3 (26-neighbourhood)
            for the foreground components; holes always use face connectivity of the background.
        restrict_to_union: intersect the thresholded fused mask with the union of the
            thresholded inputs first (guards against rounding at the threshold).

    Example:
        >>> ConsistencyParams(fill_holes="3d").keep_largest
        True
    """

    threshold: float = 0.5
    keep_largest: bool = True
    min_component_mm3: float = 0.0
    fill_holes: HoleFilling = "2d"
    connectivity: int = 1
    restrict_to_union: bool = True

    def __post_init__(self) -> None:
        if not (0.0 <= self.threshold < 1.0):
            raise InvalidInputError(f"threshold: expected a value in [0, 1), got {self.threshold}")
        if not (math.isfinite(self.min_component_mm3) and self.min_component_mm3 >= 0):
            raise InvalidInputError(
                f"min_component_mm3: expected a finite value >= 0, got {self.min_component_mm3}"
            )
        if self.fill_holes not in ("none", "2d", "3d"):
            raise InvalidInputError(f"fill_holes: expected 'none', '2d' or '3d', got {self.fill_holes!r}")
        if self.connectivity not in (1, 2, 3):
            raise InvalidInputError(f"connectivity: expected 1, 2 or 3, got {self.connectivity!r}")


@dataclass(frozen=True, eq=False)
class FusionResult:
    """What :func:`fuse` returns. ``L`` is present only for multi-label input; ``N`` = slices along ``axis``.

    Attributes:
        probability: float32 ``([L,] D, H, W)`` fused probability in ``[0, 1]``.
        mask: bool ``([L,] D, H, W)`` after the consistency post-processing (labels independently).
        sam_weight: float32 ``([L,] N)`` SAM2 weight ``w`` per slice (coarse weight ``1 - w``).
        sam_confidence: float32 ``([L,] N)`` ``q_s``.
        coarse_confidence: float32 ``([L,] N)`` ``q_c``.
        evidence: float32 ``([L,] N)`` SAM2's evidence ``e`` (:func:`sam_evidence`; 0 where not visited).
        distance_mm: float32 ``(N,)`` distance to the nearest prompt slice.
        union: bool ``([L,] D, H, W)`` union of the thresholded inputs (the bound of ``mask``).
        axis: the slice axis.
    """

    probability: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    sam_weight: np.ndarray
    sam_confidence: np.ndarray
    coarse_confidence: np.ndarray
    evidence: np.ndarray
    distance_mm: np.ndarray
    union: np.ndarray = field(repr=False)
    axis: int


@dataclass(frozen=True, eq=False)
class SamInputs:
    """SAM2's outputs for one object mapped onto the voxel grid (see :func:`sam_inputs_from_propagation`).

    Attributes:
        probability: float32 ``(D, H, W)`` sigmoid of the logits on the voxel grid (0 on unvisited slices).
        object_scores: float32 ``(N,)`` object-score logit per slice along ``axis``; NaN where not visited.
        ious: float32 ``(N,)`` predicted IoU per slice; NaN where not visited.
        axis: the slice axis.
        spacing: voxel size in mm of the grid.
    """

    probability: np.ndarray = field(repr=False)
    object_scores: np.ndarray
    ious: np.ndarray
    axis: int
    spacing: tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, Volume):
        x = x.array
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InvalidTypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise InvalidTypeError(f"{name}: expected real values, got {t.dtype}")
    return t.to(torch.float32)


def _check_prob(t: torch.Tensor, name: str, allow_nan: torch.Tensor | None = None) -> None:
    bad = ~((t >= 0) & (t <= 1))
    if allow_nan is not None:
        bad = bad & ~(torch.isnan(t) & allow_nan)
    if bool(bad.any()):
        vals = t.detach()[bad][:3].tolist()
        raise InvalidInputError(f"{name}: expected probabilities in [0, 1], got values such as {vals}")


def _prompt_indices(n: int, prompt_slices: Sequence[int] | None) -> list[int] | None:
    if prompt_slices is None:
        return None
    idx = [int(k) for k in prompt_slices]
    if not idx:
        raise InvalidInputError(
            "prompt_slices: expected at least one slice index (or None for no decay), got []"
        )
    bad = [k for k in idx if not 0 <= k < n]
    if bad:
        raise InvalidInputError(f"prompt_slices: expected indices in [0, {n - 1}], got {bad}")
    return idx


def _prompt_distance(n: int, prompt_slices: Sequence[int] | None, step_mm: float) -> torch.Tensor:
    idx = _prompt_indices(n, prompt_slices)
    if idx is None:
        return torch.zeros(n, dtype=torch.float32)
    z = np.arange(n)[:, None]
    d = np.abs(z - np.asarray(idx)[None, :]).min(axis=1) * step_mm
    return torch.from_numpy(d.astype(np.float32))


@dataclass(frozen=True, eq=False)
class _Prepared:
    coarse: torch.Tensor  # (L, D, H, W)
    sam: torch.Tensor  # (L, D, H, W), 0 on unvisited slices
    visited: torch.Tensor  # (L, N) bool
    q_s: torch.Tensor  # (L, N)
    q_c: torch.Tensor  # (L, N)
    evidence: torch.Tensor  # (L, N), 0 on unvisited slices
    dist: torch.Tensor  # (N,)
    axis: int
    spacing: tuple[float, ...]
    multi: bool


def _bcast(v: torch.Tensor, axis: int) -> torch.Tensor:
    """(L, N) per-slice values -> broadcastable against (L, D, H, W)."""
    shape = [v.shape[0], 1, 1, 1]
    shape[1 + axis] = v.shape[1]
    return v.reshape(shape)


def sam_confidence(object_scores: ArrayOrTensor, ious: ArrayOrTensor) -> torch.Tensor:
    """SAM2's per-slice confidence ``sigmoid(object_score) * clip(iou, 0, 1)``; 0 where either is NaN.

    Args:
        object_scores: float ``(..., N)`` object-score logits (NaN: slice not visited; ``-inf``: no object).
        ious: float ``(..., N)`` predicted IoU (NaN: not visited).

    Returns:
        float32 tensor ``(..., N)`` in ``[0, 1]``.

    Example:
        >>> sam_confidence([0.0, float("nan"), 10.0], [0.8, 0.9, 1.2]).tolist()
        [0.4000000059604645, 0.0, 0.9999545812606812]
    """
    s, i = _to_tensor(object_scores, "object_scores"), _to_tensor(ious, "ious")
    if s.shape != i.shape:
        raise ShapeMismatchError(
            f"object_scores and ious: expected the same shape, got {tuple(s.shape)} and {tuple(i.shape)}"
        )
    if bool(torch.isposinf(s).any() | torch.isinf(i).any()):
        raise InvalidInputError("object_scores/ious: +inf object scores or infinite IoUs are not allowed")
    visited = ~(torch.isnan(s) | torch.isnan(i))
    q = torch.sigmoid(torch.nan_to_num(s, nan=0.0, neginf=-math.inf)) * torch.nan_to_num(i, nan=0.0).clamp(
        0.0, 1.0
    )
    return torch.where(visited, q, torch.zeros_like(q))


def coarse_confidence(
    coarse: ArrayOrTensor,
    *,
    axis: int | None = None,
    spacing: float | Sequence[float] | None = None,
    threshold: float = 0.5,
) -> torch.Tensor:
    """The coarse network's per-slice confidence: one minus the mean normalised binary entropy.

    The mean is over the slice's coarse mask (``p > threshold``), or over the whole slice when the
    mask is empty there (then it is the confidence that the slice holds no object).

    Args:
        coarse: float ``([L,] D, H, W)`` probabilities in ``[0, 1]``.
        axis: slice axis of ``(D, H, W)`` (default: the library's default axis,
            :func:`~medsam2kit.sequencer.default_axis`, of ``diag(spacing)`` and the shape).
        spacing: voxel size in mm (default 1 mm); used only to choose the default axis.
        threshold: mask threshold.

    Returns:
        float32 tensor ``([L,] N)`` in ``[0, 1]``, ``N = shape[axis]``.

    Example:
        >>> import numpy as np
        >>> p = np.zeros((2, 4, 4), np.float32); p[1] = 0.5
        >>> coarse_confidence(p).tolist()
        [1.0, 0.0]
    """
    c = _to_tensor(coarse, "coarse")
    if c.ndim not in (3, 4):
        raise InvalidInputError(f"coarse: expected (D, H, W) or (L, D, H, W), got shape {tuple(c.shape)}")
    _check_prob(c, "coarse")
    ax = resolve_axis(axis, shape=c.shape[-3:], spacing=check_spacing(spacing))
    out = _coarse_conf(c if c.ndim == 4 else c[None], ax, float(threshold))
    return out if c.ndim == 4 else out[0]


def _coarse_conf(c: torch.Tensor, axis: int, threshold: float) -> torch.Tensor:
    with torch.no_grad():
        c = c.detach()
        p = c.clamp(1e-7, 1 - 1e-7)
        h = -(p * torch.log(p) + (1 - p) * torch.log1p(-p)) / math.log(2.0)
        conf = (1.0 - h).clamp(0.0, 1.0)
        # Exact 0/1 probabilities are fully confident.
        conf = torch.where((c == 0) | (c == 1), torch.ones_like(conf), conf)
        dims = tuple(d for d in (1, 2, 3) if d != 1 + axis)
        inside = (c > threshold).to(torch.float32)
        n_in = inside.sum(dim=dims)
        mean_in = (conf * inside).sum(dim=dims) / n_in.clamp_min(1.0)
        mean_all = conf.mean(dim=dims)
        return torch.where(n_in > 0, mean_in, mean_all)


def sam_evidence(
    coarse: ArrayOrTensor | Volume,
    sam: ArrayOrTensor | Volume,
    *,
    visited: npt.ArrayLike | torch.Tensor | None = None,
    prompt_slices: Sequence[int] | None = None,
    axis: int | None = None,
    spacing: float | Sequence[float] | None = None,
    confident: float = 0.9,
) -> torch.Tensor:
    """SAM2's evidence per slice: how far its mask agrees with what the coarse network is sure of.

    With ``F`` the coarse network's confident foreground (``p_c >= confident``) and ``B`` its
    confident background (``p_c <= 1 - confident``), on slice ``z``:

    * ``agree = sum_F p_s`` and ``missed = sum_F (1 - p_s)``: SAM2 on and off the confident core;
    * ``doubt = sum_{not F} p_s (1 - p_c)``: SAM2's foreground outside the core, each voxel
      counted as far as the coarse network doubts it;
    * ``against = sum_B p_s``: SAM2's foreground on confident background, counted once more;

    ``e_slice(z) = (2 agree + 1) / (2 agree + missed + doubt + against + 1)``, a soft Dice
    between SAM2's mask and the confident core (one-voxel pseudo-count: 1 when both are empty).
    Refining the rim where the coarse network is unsure costs SAM2 little; painting what it
    doubts, or missing its core, costs much; and SAM2 earns trust only by covering a confident
    core. ``e_volume`` is the same ratio of the sums over the visited slices that are not prompt
    slices (SAM2 echoes a mask prompt there; all visited slices when there are no others), so a
    SAM2 that is wrong wherever it can be checked is not trusted where it cannot. The evidence is
    ``e(z) = e_slice(z) * e_volume`` in ``(0, 1]`` on visited slices, 0 on the others.

    Args:
        coarse: float ``([L,] D, H, W)`` coarse probability in ``[0, 1]`` (or a :class:`Volume`).
        sam: float ``([L,] D, H, W)`` SAM2 probability in ``[0, 1]`` (NaN allowed on unvisited slices).
        visited: bool ``([L,] N)`` slices SAM2 visited (default: all).
        prompt_slices: indices along ``axis`` of the prompt slices (left out of ``e_volume``).
        axis: slice axis (default: the library's default axis, as in :func:`fuse`).
        spacing: voxel size in mm (default: the :class:`Volume`'s, else 1 mm); only for the axis.
        confident: in ``(0.5, 1]``, see above.

    Returns:
        float32 tensor ``([L,] N)``.

    Example:
        >>> import numpy as np
        >>> coarse = np.zeros((3, 8, 8), np.float32); coarse[:, 1:7, 1:7] = 0.6; coarse[:, 2:6, 2:6] = 0.95
        >>> refined = np.zeros_like(coarse); refined[:, 2:6, 1:7] = 1.0  # the core and part of the rim
        >>> noise = np.random.default_rng(0).random(coarse.shape).astype(np.float32)
        >>> [round(float(e), 2) for e in sam_evidence(coarse, refined, prompt_slices=[1])]
        [0.83, 0.83, 0.83]
        >>> [round(float(e), 3) for e in sam_evidence(coarse, noise, prompt_slices=[1])]
        [0.107, 0.109, 0.099]
    """
    c, s, ax, _, multi = _volumes(coarse, sam, axis, spacing)
    n = c.shape[1 + ax]
    want = (c.shape[0], n) if multi else (n,)
    if visited is None:
        vis = torch.ones(c.shape[0], n, dtype=torch.bool)
    else:
        v = visited if isinstance(visited, torch.Tensor) else torch.from_numpy(np.asarray(visited))
        if tuple(v.shape) != want or v.dtype != torch.bool:
            raise ShapeMismatchError(
                f"visited: expected a bool array of shape {want}, got {v.dtype} of shape {tuple(v.shape)}"
            )
        vis = v.reshape(c.shape[0], n)
    if not 0.5 < confident <= 1.0:
        raise InvalidInputError(f"confident: expected a value in (0.5, 1], got {confident}")
    s = _sam_on_visited(c, s, vis, ax)
    e = _evidence(c, s, vis, _prompt_indices(n, prompt_slices), ax, float(confident))
    return e if multi else e[0]


def _evidence(
    c: torch.Tensor,
    s: torch.Tensor,
    visited: torch.Tensor,
    prompts: list[int] | None,
    axis: int,
    confident: float,
) -> torch.Tensor:
    """(L, D, H, W) coarse and SAM2 (0 on unvisited slices) -> (L, N) evidence (see sam_evidence)."""
    with torch.no_grad():
        c, s = c.detach().double(), s.detach().double()
        dims = tuple(d for d in (1, 2, 3) if d != 1 + axis)
        fg, bg = (c >= confident).double(), (c <= 1.0 - confident).double()
        agree, missed = (s * fg).sum(dims), ((1.0 - s) * fg).sum(dims)
        cost = (s * (1.0 - fg) * (1.0 - c)).sum(dims) + (s * bg).sum(dims)  # doubt + against
        pooled = visited.clone()
        if prompts is not None:
            pooled[:, prompts] = False
        pooled = torch.where(pooled.any(dim=1, keepdim=True), pooled, visited).double()

        def ratio(a: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return (2.0 * a + 1.0) / (2.0 * a + m + k + 1.0)

        def total(x: torch.Tensor) -> torch.Tensor:
            return (x * pooled).sum(dim=1, keepdim=True)

        e = ratio(agree, missed, cost) * ratio(total(agree), total(missed), total(cost))
        return torch.where(visited, e, torch.zeros_like(e)).to(torch.float32)


def _volumes(
    coarse: ArrayOrTensor | Volume,
    sam: ArrayOrTensor | Volume,
    axis: int | None,
    spacing: float | Sequence[float] | None,
) -> tuple[torch.Tensor, torch.Tensor, int, tuple[float, ...], bool]:
    """Checked float32 ``(L, D, H, W)`` coarse and SAM2 tensors, the axis, spacing and whether multi-label."""
    geometry = coarse if isinstance(coarse, Volume) else sam if isinstance(sam, Volume) else None
    c, s = _to_tensor(coarse, "coarse"), _to_tensor(sam, "sam")
    if c.shape != s.shape:
        raise ShapeMismatchError(
            f"coarse and sam: expected the same shape, got coarse {tuple(c.shape)} and sam {tuple(s.shape)}"
        )
    if c.ndim not in (3, 4):
        raise InvalidInputError(f"coarse: expected (D, H, W) or (L, D, H, W), got shape {tuple(c.shape)}")
    multi = c.ndim == 4
    if not multi:
        c, s = c[None], s[None]
    sp = check_spacing(spacing, default=None if geometry is None else geometry.spacing)
    ax = resolve_axis(axis, shape=c.shape[1:], spacing=sp, volume=geometry)
    return c, s, ax, sp, multi


def _sam_on_visited(c: torch.Tensor, s: torch.Tensor, visited: torch.Tensor, axis: int) -> torch.Tensor:
    """Check both probabilities (SAM2's may be NaN on unvisited slices) and zero SAM2 off its slices."""
    _check_prob(c, "coarse")
    vis_b = _bcast(visited, axis).expand_as(s)
    _check_prob(s, "sam (on visited slices; NaN allowed only on unvisited ones)", allow_nan=~vis_b)
    return torch.where(vis_b, s, torch.zeros_like(s))


def _per_slice(x: ArrayOrTensor, name: str, want: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """A given per-slice input in [0, 1] of shape ``want``, as ``(L, N)``."""
    t = _to_tensor(x, name)
    if tuple(t.shape) != want:
        raise ShapeMismatchError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    _check_prob(t, name)
    return t.reshape(shape)


def _prepare(
    coarse: ArrayOrTensor | Volume,
    sam: ArrayOrTensor | Volume,
    object_scores: ArrayOrTensor,
    ious: ArrayOrTensor,
    prompt_slices: Sequence[int] | None,
    axis: int | None,
    spacing: float | Sequence[float] | None,
    coarse_conf: ArrayOrTensor | None,
    evidence: ArrayOrTensor | None,
    threshold: float,
    confident: float,
) -> _Prepared:
    c, s, ax, sp, multi = _volumes(coarse, sam, axis, spacing)
    n = c.shape[1 + ax]
    os_t, iou_t = _to_tensor(object_scores, "object_scores"), _to_tensor(ious, "ious")
    want = (c.shape[0], n) if multi else (n,)
    for t, name in ((os_t, "object_scores"), (iou_t, "ious")):
        if tuple(t.shape) != want:
            raise ShapeMismatchError(
                f"{name}: expected shape {want} (one value per slice along axis {ax}), got {tuple(t.shape)}"
            )
    os_t, iou_t = os_t.reshape(c.shape[0], n), iou_t.reshape(c.shape[0], n)
    q_s = sam_confidence(os_t, iou_t)
    visited = ~(torch.isnan(os_t) | torch.isnan(iou_t))
    s = _sam_on_visited(c, s, visited, ax)
    shape = (c.shape[0], n)
    if coarse_conf is None:
        q_c = _coarse_conf(c, ax, threshold)
    else:
        q_c = _per_slice(coarse_conf, "coarse_confidence", want, shape)
    dist = _prompt_distance(n, prompt_slices, sp[ax])
    if evidence is None:
        e = _evidence(c, s, visited, _prompt_indices(n, prompt_slices), ax, confident)
    else:
        e = _per_slice(evidence, "evidence", want, shape)
    return _Prepared(c, s, visited, q_s, q_c, e, dist, ax, sp, multi)


# --------------------------------------------------------------------------------------------
# The differentiable core (shared by fuse() and ConfidenceFusion)
# --------------------------------------------------------------------------------------------


def _weights(
    q_s: torch.Tensor,
    q_c: torch.Tensor,
    evidence: torch.Tensor,
    dist: torch.Tensor,
    log_tau: torch.Tensor,
    log_temperature: torch.Tensor,
    bias: torch.Tensor,
    evidence_power: torch.Tensor,
) -> torch.Tensor:
    tiny = torch.finfo(torch.float32).tiny
    gamma = evidence_power.clamp_min(0.0)
    # Clamped logs keep every branch finite, so gradients never meet inf * 0.
    log_ratio = torch.log(q_s.clamp_min(tiny)) - torch.log(q_c.clamp_min(tiny))
    logit = (log_ratio - dist * torch.exp(-log_tau)) * torch.exp(-log_temperature) + bias
    w = torch.sigmoid(logit)
    w = torch.where(q_c <= 0, torch.ones_like(w), w)
    w = torch.where(q_s <= 0, torch.zeros_like(w), w)
    # The evidence bounds the weight: w <= e^gamma (e^0 = 1, also for e = 0).
    bound = torch.exp(gamma * torch.log(evidence.clamp_min(tiny)))
    bound = torch.where((evidence <= 0) & (gamma > 0), torch.zeros_like(bound), bound)
    return w * bound


def _combine(coarse: torch.Tensor, sam: torch.Tensor, w: torch.Tensor, axis: int) -> torch.Tensor:
    wb = _bcast(w, axis)
    return (wb * sam + (1.0 - wb) * coarse).clamp(0.0, 1.0)


def _param_tensors(params: FusionParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(math.log(params.tau_mm), dtype=torch.float32),
        torch.tensor(math.log(params.temperature), dtype=torch.float32),
        torch.tensor(params.bias, dtype=torch.float32),
        torch.tensor(params.evidence_power, dtype=torch.float32),
    )


# --------------------------------------------------------------------------------------------
# Consistency post-processing
# --------------------------------------------------------------------------------------------


def _plane_structure(axis: int) -> np.ndarray:
    st = ndimage.generate_binary_structure(3, 1)
    keep = [slice(None)] * 3
    for k in (0, 2):
        keep[axis] = slice(k, k + 1)
        st[tuple(keep)] = False
    return st


def postprocess_mask(
    mask: npt.ArrayLike,
    *,
    allowed: npt.ArrayLike | None = None,
    spacing: float | Sequence[float] | None = None,
    axis: int | None = None,
    params: ConsistencyParams = ConsistencyParams(),
) -> np.ndarray:
    """Volumetric consistency of a 3D mask: components, size filter, hole filling, bounded by ``allowed``.

    Steps: ``mask &= allowed`` (when ``params.restrict_to_union``); drop components below
    ``params.min_component_mm3``; keep the largest remaining one (``params.keep_largest``; ties:
    the first in C order); fill holes (``params.fill_holes``), each hole only when all of it lies
    in ``allowed``. The result is therefore a subset of ``allowed`` (or of ``mask`` plus enclosed
    holes when ``allowed`` is None) and hole filling never creates new components.

    Args:
        mask: bool ``(D, H, W)``.
        allowed: bool ``(D, H, W)`` voxels the result may hold (``None``: everywhere).
        spacing: voxel size in mm (for component volumes; default 1 mm).
        axis: slice axis for 2D hole filling (default: the library's default axis,
            :func:`~medsam2kit.sequencer.default_axis`, of ``diag(spacing)`` and the shape).
        params: the :class:`ConsistencyParams` (its ``threshold`` is not used here).

    Returns:
        bool ``(D, H, W)``.

    Example:
        >>> import numpy as np
        >>> m = np.zeros((3, 7, 7), bool); m[:, 1:6, 1:6] = True; m[1, 3, 3] = False; m[0, 0, 6] = True
        >>> out = postprocess_mask(m)
        >>> bool(out[1, 3, 3]), bool(out[0, 0, 6])
        (True, False)
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InvalidInputError(f"mask: expected a 3D (D, H, W) array, got shape {m.shape}")
    if m.dtype != np.bool_:
        raise InvalidTypeError(f"mask: expected a bool array, got dtype {m.dtype}")
    if allowed is None:
        allow = np.ones_like(m)
    else:
        allow = np.asarray(allowed)
        if allow.shape != m.shape:
            raise ShapeMismatchError(f"allowed: expected the mask's shape {m.shape}, got {allow.shape}")
        allow = allow.astype(bool)
    sp = check_spacing(spacing)
    ax = resolve_axis(axis, shape=m.shape, spacing=sp)
    return _postprocess(m, allow, sp, ax, params)


def _postprocess(
    m: np.ndarray,
    allow: np.ndarray,
    sp: tuple[float, ...],
    axis: int,
    params: ConsistencyParams,
    fill_allow: np.ndarray | None = None,
) -> np.ndarray:
    """``fill_allow`` (a subset of ``allow``; default ``allow``) bounds the filled holes."""
    fill_bound = allow if fill_allow is None else fill_allow
    out = m & allow if params.restrict_to_union else m.copy()
    if params.keep_largest or params.min_component_mm3 > 0:
        labels, n = ndimage.label(out, structure=ndimage.generate_binary_structure(3, params.connectivity))
        if n:
            volumes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64) * float(np.prod(sp))
            keep = volumes >= params.min_component_mm3
            keep[0] = False
            if params.keep_largest and keep.any():
                best = int(np.argmax(np.where(keep, volumes, -1.0)))
                keep[:] = False
                keep[best] = True
            out = keep[labels]
    if params.fill_holes != "none" and out.any():
        structure = (
            _plane_structure(axis) if params.fill_holes == "2d" else ndimage.generate_binary_structure(3, 1)
        )
        holes = ndimage.binary_fill_holes(out, structure=structure) & ~out
        if holes.any():
            hl, nh = ndimage.label(holes, structure=structure)
            outside = np.bincount(hl[~fill_bound].ravel(), minlength=nh + 1) > 0
            outside[0] = True
            out = out | ~outside[hl]
    return out


# --------------------------------------------------------------------------------------------
# The function
# --------------------------------------------------------------------------------------------


def _finish(
    prep: _Prepared, prob: torch.Tensor, w: torch.Tensor, consistency: ConsistencyParams
) -> FusionResult:
    p = prob.detach().cpu().numpy().astype(np.float32, copy=False)
    t = consistency.threshold
    vis = _bcast(prep.visited, prep.axis).expand_as(prep.sam).numpy()
    coarse_fg, sam_fg = prep.coarse.detach().numpy() > t, (prep.sam.detach().numpy() > t) & vis
    union = coarse_fg | sam_fg
    # Holes are filled only inside the inputs the fusion listened to: SAM2's mask counts on the
    # slices where it carries at least half the weight (an untrusted SAM2 fills no hole).
    trusted = _bcast(w.detach().cpu() >= 0.5, prep.axis).expand_as(prep.sam).numpy()
    fill_allow = coarse_fg | (sam_fg & trusted)
    masks = np.stack([
        _postprocess(p[i] > t, union[i], prep.spacing, prep.axis, consistency, fill_allow[i])
        for i in range(p.shape[0])
    ])

    def sq(a: np.ndarray) -> np.ndarray:
        return a if prep.multi else a[0]

    return FusionResult(
        probability=sq(p),
        mask=sq(masks),
        sam_weight=sq(w.detach().numpy().astype(np.float32)),
        sam_confidence=sq(prep.q_s.numpy()),
        coarse_confidence=sq(prep.q_c.detach().numpy()),
        evidence=sq(prep.evidence.detach().numpy()),
        distance_mm=prep.dist.numpy(),
        union=sq(union),
        axis=prep.axis,
    )


def fuse(
    coarse: ArrayOrTensor | Volume,
    sam: ArrayOrTensor | Volume,
    object_scores: ArrayOrTensor,
    ious: ArrayOrTensor,
    *,
    prompt_slices: Sequence[int] | None,
    axis: int | None = None,
    spacing: float | Sequence[float] | None = None,
    params: FusionParams = FusionParams(),
    consistency: ConsistencyParams = ConsistencyParams(),
    coarse_confidence: ArrayOrTensor | None = None,
    evidence: ArrayOrTensor | None = None,
) -> FusionResult:
    """Fuse a coarse and a SAM2 probability volume slice by slice, then clean the mask.

    Multi-label: give ``coarse``/``sam`` as ``(L, D, H, W)`` and the per-slice inputs as
    ``(L, N)``; each label is fused and post-processed on its own (masks may overlap; take an
    argmax of ``probability`` for exclusive labels). All labels share ``prompt_slices``; call
    once per label for per-label prompts.

    Args:
        coarse: float ``([L,] D, H, W)`` coarse probability in ``[0, 1]`` (or a :class:`Volume`).
        sam: float ``([L,] D, H, W)`` SAM2 probability on the voxel grid (sigmoid of the logits);
            ignored (NaN allowed) on slices not visited.
        object_scores: float ``([L,] N)`` SAM2 object-score logit per slice along ``axis``;
            NaN where SAM2 did not visit the slice.
        ious: float ``([L,] N)`` SAM2 predicted IoU per slice; NaN where not visited.
        prompt_slices: indices (along ``axis``) of the prompt slices SAM2 propagated from;
            ``None`` disables the distance decay.
        axis: slice axis of ``(D, H, W)`` (default: the library's default axis,
            :func:`~medsam2kit.sequencer.default_axis`: of the :class:`Volume`'s geometry, else of
            ``diag(spacing)`` and the shape).
        spacing: voxel size in mm (default: the :class:`Volume`'s, else 1 mm).
        params: the weight's :class:`FusionParams`.
        consistency: the :class:`ConsistencyParams` of the post-processing.
        coarse_confidence: float ``([L,] N)`` in ``[0, 1]`` to use instead of the entropy-based
            :func:`coarse_confidence`.
        evidence: float ``([L,] N)`` in ``[0, 1]`` to use instead of :func:`sam_evidence`
            (computed with ``params.confident``).

    Returns:
        A :class:`FusionResult`.

    Raises:
        ShapeMismatchError: when shapes disagree (both named).
        InvalidInputError: probabilities outside ``[0, 1]``, bad prompt indices or axis.
        GeometryError: bad spacing.

    Example:
        >>> import numpy as np
        >>> c = np.full((3, 4, 4), 0.6, np.float32); s = np.full((3, 4, 4), 0.2, np.float32)
        >>> r = fuse(c, s, [np.nan, -np.inf, 2.0], [np.nan, 0.5, 0.9], prompt_slices=[2])
        >>> bool(r.probability[:2].max() == np.float32(0.6)), r.sam_weight[:2].tolist()  # no SAM2 weight
        (True, [0.0, 0.0])
    """
    prep = _prepare(
        coarse, sam, object_scores, ious, prompt_slices, axis, spacing, coarse_confidence, evidence,
        params.threshold, params.confident,
    )
    with torch.no_grad():
        log_tau, log_t, b, gamma = _param_tensors(params)
        w = _weights(prep.q_s, prep.q_c, prep.evidence, prep.dist, log_tau, log_t, b, gamma)
        prob = _combine(prep.coarse, prep.sam, w, prep.axis)
    return _finish(prep, prob, w, consistency)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


class ConfidenceFusion(nn.Module):
    """:func:`fuse` as a ``torch.nn.Module`` with learnable ``tau``, temperature, bias and evidence power.

    The parameters are stored as ``log_tau`` (log mm), ``log_temperature``, ``bias`` and
    ``evidence_power`` (float32 scalars), so gradient steps keep ``tau`` and ``T`` positive; the
    evidence power is used clamped at 0. ``forward`` returns the fused probability,
    differentiable with respect to the parameters and to both input probabilities (the per-slice
    confidences and the evidence are treated as constants). For the same parameters it equals
    :func:`fuse`'s ``probability`` exactly: both run the same code.

    Args:
        params: initial values (``threshold`` and ``confident`` are kept for the coarse
            confidence and the evidence).
        learnable: which of ``"tau"``, ``"temperature"``, ``"bias"``, ``"evidence"`` get
            gradients (by default all but ``"evidence"``).

    Example:
        >>> import torch
        >>> m = ConfidenceFusion(FusionParams(tau_mm=10.0))
        >>> c = torch.full((3, 4, 4), 0.4); s = torch.full((3, 4, 4), 0.9)
        >>> out = m(c, s, torch.tensor([1.0, 2.0, 1.0]), torch.tensor([0.8, 0.9, 0.8]), prompt_slices=[1])
        >>> out.shape, out.requires_grad
        (torch.Size([3, 4, 4]), True)
    """

    def __init__(
        self,
        params: FusionParams = FusionParams(),
        *,
        learnable: Sequence[Learnable] = ("tau", "temperature", "bias"),
    ) -> None:
        super().__init__()
        bad = [k for k in learnable if k not in ("tau", "temperature", "bias", "evidence")]
        if bad:
            raise InvalidInputError(
                f"learnable: expected names among 'tau', 'temperature', 'bias', 'evidence', got {bad}"
            )
        log_tau, log_t, b, gamma = _param_tensors(params)
        self.log_tau = nn.Parameter(log_tau, requires_grad="tau" in learnable)
        self.log_temperature = nn.Parameter(log_t, requires_grad="temperature" in learnable)
        self.bias = nn.Parameter(b, requires_grad="bias" in learnable)
        self.evidence_power = nn.Parameter(gamma, requires_grad="evidence" in learnable)
        self.threshold = float(params.threshold)
        self.confident = float(params.confident)

    @property
    def params(self) -> FusionParams:
        """The current parameters as a :class:`FusionParams` (float64 round trip of float32 values)."""
        return FusionParams(
            tau_mm=math.exp(float(self.log_tau.detach())),
            temperature=math.exp(float(self.log_temperature.detach())),
            bias=float(self.bias.detach()),
            threshold=self.threshold,
            evidence_power=max(0.0, float(self.evidence_power.detach())),
            confident=self.confident,
        )

    def _run(
        self,
        coarse: ArrayOrTensor | Volume,
        sam: ArrayOrTensor | Volume,
        object_scores: ArrayOrTensor,
        ious: ArrayOrTensor,
        prompt_slices: Sequence[int] | None,
        axis: int | None,
        spacing: float | Sequence[float] | None,
        coarse_confidence: ArrayOrTensor | None,
        evidence: ArrayOrTensor | None,
    ) -> tuple[_Prepared, torch.Tensor, torch.Tensor, bool]:
        prep = _prepare(
            coarse, sam, object_scores, ious, prompt_slices, axis, spacing, coarse_confidence, evidence,
            self.threshold, self.confident,
        )
        dev = self.log_tau.device
        c, s = prep.coarse, prep.sam  # float32 views that keep the autograd graph of tensor inputs
        w = _weights(
            prep.q_s.to(dev),
            prep.q_c.to(dev),
            prep.evidence.to(dev),
            prep.dist.to(dev),
            self.log_tau,
            self.log_temperature,
            self.bias,
            self.evidence_power,
        )
        prob = _combine(c.to(dev), s.to(dev), w, prep.axis)
        return prep, prob, w, prep.multi

    def forward(
        self,
        coarse: ArrayOrTensor,
        sam: ArrayOrTensor,
        object_scores: ArrayOrTensor,
        ious: ArrayOrTensor,
        *,
        prompt_slices: Sequence[int] | None,
        axis: int | None = None,
        spacing: float | Sequence[float] | None = None,
        coarse_confidence: ArrayOrTensor | None = None,
        evidence: ArrayOrTensor | None = None,
    ) -> torch.Tensor:
        """Fused probability (see :func:`fuse` for the arguments).

        Returns:
            float32 tensor ``([L,] D, H, W)`` in ``[0, 1]``, on the parameters' device.
        """
        _, prob, _, multi = self._run(
            coarse, sam, object_scores, ious, prompt_slices, axis, spacing, coarse_confidence, evidence
        )
        return prob if multi else prob[0]

    def sam_weight(
        self,
        object_scores: ArrayOrTensor,
        ious: ArrayOrTensor,
        coarse_confidence: ArrayOrTensor,
        *,
        prompt_slices: Sequence[int] | None,
        slice_spacing_mm: float = 1.0,
        evidence: ArrayOrTensor | None = None,
    ) -> torch.Tensor:
        """The per-slice SAM2 weight ``w`` from per-slice inputs only (differentiable).

        Args:
            object_scores: float ``(N,)`` (or ``(L, N)``) logits, NaN where not visited.
            ious: float, same shape, NaN where not visited.
            coarse_confidence: float, same shape, in ``[0, 1]``.
            prompt_slices: prompt slice indices (``None``: no decay).
            slice_spacing_mm: spacing along the slice axis.
            evidence: float, same shape, in ``[0, 1]`` (:func:`sam_evidence`; default 1, no
                evidence term).

        Returns:
            float32 tensor of the input shape.

        Example:
            >>> ConfidenceFusion().sam_weight([0.0], [1.0], [0.5], prompt_slices=[0]).tolist()
            [0.5]
        """
        q_s = sam_confidence(object_scores, ious)
        q_c = _to_tensor(coarse_confidence, "coarse_confidence")
        if q_c.shape != q_s.shape:
            raise ShapeMismatchError(
                f"coarse_confidence: expected shape {tuple(q_s.shape)}, got {tuple(q_c.shape)}"
            )
        _check_prob(q_c, "coarse_confidence")
        shape = tuple(q_s.shape)
        e = torch.ones_like(q_s) if evidence is None else _per_slice(evidence, "evidence", shape, shape)
        step = check_spacing(slice_spacing_mm, ndim=1, name="slice_spacing_mm")[0]
        dist = _prompt_distance(int(q_s.shape[-1]), prompt_slices, step)
        dev = self.log_tau.device
        return _weights(
            q_s.to(dev), q_c.to(dev), e.to(dev), dist.to(dev), self.log_tau, self.log_temperature, self.bias,
            self.evidence_power,
        )

    def fuse(
        self,
        coarse: ArrayOrTensor | Volume,
        sam: ArrayOrTensor | Volume,
        object_scores: ArrayOrTensor,
        ious: ArrayOrTensor,
        *,
        prompt_slices: Sequence[int] | None,
        axis: int | None = None,
        spacing: float | Sequence[float] | None = None,
        consistency: ConsistencyParams = ConsistencyParams(),
        coarse_confidence: ArrayOrTensor | None = None,
        evidence: ArrayOrTensor | None = None,
    ) -> FusionResult:
        """Like :func:`fuse` with this module's current parameters (no gradients)."""
        with torch.no_grad():
            prep, prob, w, _ = self._run(
                coarse, sam, object_scores, ious, prompt_slices, axis, spacing, coarse_confidence, evidence
            )
        return _finish(prep, prob.cpu(), w.cpu(), consistency)


# --------------------------------------------------------------------------------------------
# Glue with the predictor and the sequencer
# --------------------------------------------------------------------------------------------


def label_vs_rivals(prob: np.ndarray) -> np.ndarray:
    """Per label, the probability that it beats its strongest rival class, from a multi-class
    coarse output: ``p_l / (p_l + max_{k != l} p_k)``.

    A softmax over background and ``L`` labels decides a voxel by argmax, so a label can win with
    ``p_l`` well below 0.5 (0.45 against 0.35 and 0.2). Per-label fusion and slice selection
    threshold each label's probability at 0.5; this turns the multi-class output into per-label
    probabilities whose 0.5 threshold is exactly the argmax decision (ties give 0.5, not above).
    With one label (two classes summing to 1) it is ``p_1`` itself.

    Args:
        prob: ``(L + 1, D, H, W)`` float probabilities, background first, each in [0, 1].

    Returns:
        ``(L, D, H, W)`` float32 in [0, 1] (0 where every class has probability 0).

    Example:
        >>> import numpy as np
        >>> p = np.array([0.2, 0.45, 0.35], np.float32).reshape(3, 1, 1, 1)
        >>> [round(float(x), 4) for x in label_vs_rivals(p).ravel()]
        [0.5625, 0.4375]
    """
    arr = np.asarray(prob, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[0] < 2:
        raise ShapeMismatchError(f"prob: expected (L + 1, D, H, W) class probabilities with L >= 1, got {arr.shape}")
    out = np.empty((arr.shape[0] - 1, *arr.shape[1:]), np.float32)
    for lab in range(1, arr.shape[0]):
        rival = np.max(np.delete(arr, lab, axis=0), axis=0)
        total = arr[lab] + rival
        out[lab - 1] = np.divide(arr[lab], total, out=np.zeros_like(total), where=total > 0)
    return out


def sam_inputs_from_propagation(
    result: PropagationResult, sequence: FrameSequence, *, obj_index: int = 0
) -> SamInputs:
    """Map one object's propagation outputs onto the sequence's voxel grid, ready for :func:`fuse`.

    Args:
        result: a :class:`~medsam2kit.predictor.PropagationResult` over ``sequence``'s frames.
        sequence: the :class:`~medsam2kit.sequencer.FrameSequence` that was propagated.
        obj_index: position of the object on the result's object axis.

    Returns:
        A :class:`SamInputs` (probability ``(D, H, W)``, per-slice scores along the sequence's axis).
    """
    n_obj = int(result.low_res_logits.shape[1])
    if not 0 <= obj_index < n_obj:
        raise InvalidInputError(f"obj_index: expected an index in [0, {n_obj - 1}], got {obj_index}")
    logits = result.logits()[:, obj_index]
    vol = sequence.to_volume_logits(logits.numpy())
    prob = torch.sigmoid(torch.from_numpy(vol.array)).numpy().astype(np.float32)
    axis = int(sequence.layout.axis)
    n = vol.shape[axis]
    scores = np.full(n, np.nan, np.float32)
    ious = np.full(n, np.nan, np.float32)
    visited = result.visited.numpy().astype(bool)
    for t, z in enumerate(sequence.slice_indices):
        if visited[t]:
            scores[z] = float(result.object_scores[t, obj_index])
            ious[z] = float(result.ious[t, obj_index])
    return SamInputs(prob, scores, ious, axis, vol.spacing)


__all__ = [
    "ConfidenceFusion",
    "ConsistencyParams",
    "FusionParams",
    "FusionResult",
    "HoleFilling",
    "SamInputs",
    "coarse_confidence",
    "fuse",
    "label_vs_rivals",
    "postprocess_mask",
    "sam_confidence",
    "sam_evidence",
    "sam_inputs_from_propagation",
]
