"""Registration of one volume onto another, and labelled supports resampled onto a query.

Few-shot segmentation (:mod:`medsam2kit.fewshot`) shows SAM2 labelled support slices as the
memory of a query slice. Supports from other patients differ from the query in position, size,
pose and shape, so the structure sits elsewhere in the support frame than in the query frame, and
a small SAM2 that tracks by position follows it to the wrong place. :func:`align_supports` first
registers every support image onto the query and resamples image and label onto the query's grid,
as atlas-based segmentation does; the supports' slices then show the structure where the query
holds it. :func:`register` does it in two steps:

* an affine (:func:`register_affine`): a similarity transform by default (rotation, one scale and
  translation in world mm), found by maximising the normalised cross-correlation of the two
  images, coarse to fine; a scale per axis with ``RegistrationConfig(scale="anisotropic")``. It
  maps the fixed volume's world coordinates to the moving volume's:
  ``x_moving = R S (x_fixed - c_fixed) + c_moving + t``, with ``c`` the world centres of the two
  arrays (so a crop of the same anatomy starts aligned), ``R`` a rotation, ``S`` a diagonal scale
  and ``t`` a translation in mm;
* then a dense displacement on the fixed grid (:func:`register_demons`, a :class:`Warp`): demons
  with symmetric forces, smoothed, coarse to fine, acting only where the moving image holds data
  (``RegistrationConfig(deformable=None)`` for the affine alone).

:func:`resample` applies either transform.

Example:
    >>> import numpy as np
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> image, label = ellipsoid_phantom((16, 40, 40), (1.0, 1.0, 1.0), rng=1)
    >>> moved = image.with_array(np.roll(image.array, 3, axis=2))
    >>> found = register_affine(image, moved)
    >>> bool(abs(found.matrix[2, 3] - 3.0) < 0.5), found.ncc > 0.9
    (True, True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from medsam2kit._validate import check_label_map
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError
from medsam2kit.volume import Volume, check_same_grid

Pair = tuple[Volume, Volume]
Scale = Literal["anisotropic", "isotropic"]

# Parameter units seen by the optimiser: 1 = this many mm, radians, log-scale units (Powell's
# first steps are about 1 in each coordinate).
_RESTARTS = 4
_UNITS = np.array([4.0, 4.0, 4.0, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])


@dataclass(frozen=True)
class DemonsConfig:
    """How :func:`register_demons` refines an affine alignment with a dense displacement.

    Diffeomorphic-style demons with symmetric forces (Thirion 1998; Vercauteren et al. 2009,
    additive form): at each iteration every voxel moves along the mean gradient of the two
    images by ``-(m - f) g / (|g|^2 + (m - f)^2 / alpha^2)`` (at most ``max_step_mm``), the
    update is smoothed (fluid) and the field is smoothed (diffusion), coarse to fine.

    Attributes:
        levels: Gaussian smoothing in mm of both images at each level (0: none).
        iterations: demons iterations per level.
        fluid_mm: Gaussian width of the smoothing of each update (0: none).
        diffusion_mm: Gaussian width of the smoothing of the whole field after each update;
            the regulariser (larger: smoother and more rigid; 0: none).
        max_step_mm: the largest move of a voxel in one iteration.
        max_voxels: the field is computed on a regular subgrid of the fixed volume of at most
            this many voxels and interpolated linearly onto the whole grid.
    """

    levels: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 30
    fluid_mm: float = 1.0
    diffusion_mm: float = 1.0
    max_step_mm: float = 0.5
    max_voxels: int = 2_000_000

    def __post_init__(self) -> None:
        if not self.levels or any(not np.isfinite(s) or s < 0 for s in self.levels):
            raise InvalidInputError(f"levels: expected one or more smoothing widths >= 0 mm, got {self.levels}")
        if self.iterations < 1:
            raise InvalidInputError(f"iterations: expected >= 1, got {self.iterations}")
        for name in ("fluid_mm", "diffusion_mm"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name}: expected a width >= 0 mm, got {value}")
        if not (np.isfinite(self.max_step_mm) and self.max_step_mm > 0):
            raise InvalidInputError(f"max_step_mm: expected > 0 mm, got {self.max_step_mm}")
        if self.max_voxels < 64:
            raise InvalidInputError(f"max_voxels: expected >= 64, got {self.max_voxels}")


@dataclass(frozen=True)
class RegistrationConfig:
    """How :func:`register` searches: an affine (:func:`register_affine`), then, unless
    ``deformable`` is None, a dense displacement (:func:`register_demons`).

    Attributes:
        levels: the coarse-to-fine pyramid, as Gaussian smoothing in mm of both images at
            each level (0: none); each level starts from the previous one's transform.
        max_voxels: the fixed image is sampled on a regular subgrid of at most this many
            voxels at each level (the cost of one evaluation).
        max_rotation_deg: bound of each rotation-vector component, degrees.
        scale: ``"anisotropic"`` (one scale per world axis: 9 parameters) or ``"isotropic"``
            (one scale: 7 parameters, a similarity transform).
        max_scale: scales are kept in ``[1 / max_scale, max_scale]``.
        percentiles: both images are normalised to [0, 1] between these intensity percentiles.
        max_evaluations: cost evaluations per level (Powell's ``maxfev``).
        deformable: the demons refinement after the affine (:class:`DemonsConfig`), or None
            for the affine alone.
    """

    levels: tuple[float, ...] = (4.0, 2.0, 0.0)
    max_voxels: int = 64_000
    max_rotation_deg: float = 30.0
    scale: Scale = "isotropic"
    max_scale: float = 1.5
    percentiles: tuple[float, float] = (0.5, 99.5)
    max_evaluations: int = 1500
    deformable: DemonsConfig | None = DemonsConfig()

    def __post_init__(self) -> None:
        if not self.levels or any(not np.isfinite(s) or s < 0 for s in self.levels):
            raise InvalidInputError(f"levels: expected one or more smoothing widths >= 0 mm, got {self.levels}")
        if self.max_voxels < 64:
            raise InvalidInputError(f"max_voxels: expected >= 64, got {self.max_voxels}")
        if not 0 <= self.max_rotation_deg <= 180:
            raise InvalidInputError(f"max_rotation_deg: expected in [0, 180], got {self.max_rotation_deg}")
        if self.scale not in ("anisotropic", "isotropic"):
            raise InvalidInputError(f"scale: expected 'anisotropic' or 'isotropic', got {self.scale!r}")
        if not self.max_scale >= 1:
            raise InvalidInputError(f"max_scale: expected >= 1, got {self.max_scale}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise InvalidInputError(f"percentiles: expected 0 <= low < high <= 100, got {self.percentiles}")
        if self.max_evaluations < 1:
            raise InvalidInputError(f"max_evaluations: expected >= 1, got {self.max_evaluations}")
        if self.deformable is not None and not isinstance(self.deformable, DemonsConfig):
            raise InvalidTypeError(f"deformable: expected a DemonsConfig or None, got {type(self.deformable).__name__}")


@dataclass(frozen=True, eq=False)
class AffineAlignment:
    """A found transform from the fixed volume's world coordinates to the moving volume's.

    Attributes:
        matrix: ``(4, 4)`` world (mm) -> world (mm) of the moving volume.
        parameters: translation (mm), rotation vector (rad), log scales; see the module text.
        ncc: the normalised cross-correlation of the two images at the finest level (1: equal
            up to brightness and contrast).
    """

    matrix: np.ndarray
    parameters: np.ndarray
    ncc: float


@dataclass(frozen=True, eq=False)
class Warp:
    """An affine alignment refined by a dense displacement on the fixed volume's grid.

    The fixed voxel ``i`` (a 3-vector of indices) maps to the world point
    ``fixed.affine @ (i + displacement[:, i] / spacing)``, which ``affine.matrix`` carries into
    the moving volume's world coordinates.

    Attributes:
        affine: the :class:`AffineAlignment` the displacement refines.
        displacement: ``(3, D, H, W)`` float32, mm along the fixed grid's three axes.
        spacing: the fixed grid's voxel size (mm) per axis.
    """

    affine: AffineAlignment
    displacement: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The fixed grid's shape, the only grid this warp samples."""
        d, h, w = self.displacement.shape[1:]
        return d, h, w


Transform = AffineAlignment | Warp


def register(fixed: Volume, moving: Volume, config: RegistrationConfig = RegistrationConfig()) -> Transform:
    """:func:`register_affine`, then :func:`register_demons` unless ``config.deformable`` is None.

    Returns:
        A :class:`Warp` (or the :class:`AffineAlignment` alone); :func:`resample` applies either.
    """
    affine = register_affine(fixed, moving, config)
    if config.deformable is None:
        return affine
    return register_demons(fixed, moving, affine, config.deformable, percentiles=config.percentiles)


def register_demons(fixed: Volume, moving: Volume, affine: AffineAlignment,
                    config: DemonsConfig = DemonsConfig(), *,
                    percentiles: tuple[float, float] = (0.5, 99.5)) -> Warp:
    """Refine ``affine`` by a smooth displacement that brings ``moving`` onto ``fixed`` voxel by voxel.

    Both images are normalised to [0, 1] between ``percentiles`` (as :func:`register_affine`
    does), ``moving`` is resampled onto the fixed grid through ``affine`` and the demons of
    :class:`DemonsConfig` run there.

    Raises:
        InvalidTypeError: not Volumes, or ``affine`` not an :class:`AffineAlignment`.
        InvalidInputError: an image without contrast.
    """
    for name, vol in (("fixed", fixed), ("moving", moving)):
        if not isinstance(vol, Volume):
            raise InvalidTypeError(f"{name}: expected a medsam2kit Volume, got {type(vol).__name__}")
    if not isinstance(affine, AffineAlignment):
        raise InvalidTypeError(f"affine: expected an AffineAlignment, got {type(affine).__name__}")
    stride = _stride(fixed.shape, config.max_voxels)
    both = [_sample(_normalised(moving, percentiles, "moving"), moving.affine, affine.matrix @ fixed.affine,
                    fixed.shape), _normalised(fixed, percentiles, "fixed")]
    if stride != (1, 1, 1):  # smoothed over about a stride before the subgrid is taken
        both = [ndimage.gaussian_filter(a, stride[0] / 2) for a in both]
    m, f = (a[::stride[0], ::stride[1], ::stride[2]] for a in both)
    grid = fixed.affine @ np.diag([*stride, 1.0])
    # where the moving image holds data (its field of view on the fixed grid): no force elsewhere,
    # and the fixed image shown there, so that the view's edge is no edge to align
    seen = _sample(np.ones(moving.shape, np.float32), moving.affine, affine.matrix @ grid, f.shape)
    m = seen * m + (1 - seen) * f
    spacing = np.asarray(fixed.spacing, dtype=np.float64) * np.asarray(stride)
    field = _demons(f, m, seen, spacing, config)
    if stride != (1, 1, 1):  # the subgrid's field interpolated linearly onto the whole grid
        subgrid = np.diag([*(float(k) for k in stride), 1.0])  # subgrid voxel -> fixed voxel
        field = np.stack([_sample(c, subgrid, np.eye(4), fixed.shape, edge=True) for c in field])
    sp = tuple(float(x) for x in fixed.spacing)
    return Warp(affine=affine, displacement=field.astype(np.float32), spacing=(sp[0], sp[1], sp[2]))


def _demons(f: np.ndarray, m: np.ndarray, seen: np.ndarray, spacing: np.ndarray, config: DemonsConfig) -> np.ndarray:
    """The displacement (mm along the grid's axes) that brings ``m`` onto ``f`` (same grid);
    the force acts only where ``seen`` (in [0, 1]: where ``m`` holds data) is 1."""
    u = np.zeros((3, *f.shape), np.float32)
    index = np.indices(f.shape, dtype=np.float32)
    per_voxel = spacing.astype(np.float32)[:, None, None, None]
    alpha2 = (2.0 * config.max_step_mm) ** 2  # |step| <= alpha / 2
    inside = (seen > 0.999).astype(np.uint8)

    def smooth(field: np.ndarray, width_mm: float) -> np.ndarray:
        if width_mm == 0:
            return field
        # at least half a voxel of this grid: on a coarse subgrid a field smoothed less folds
        sigma = np.maximum(width_mm / spacing, 0.5)
        return np.stack([ndimage.gaussian_filter(c, sigma) for c in field])

    for sigma_mm in config.levels:
        fs = ndimage.gaussian_filter(f, sigma_mm / spacing) if sigma_mm else f
        ms = ndimage.gaussian_filter(m, sigma_mm / spacing) if sigma_mm else m
        grad_f = np.stack(np.gradient(fs, *spacing))
        for _ in range(config.iterations):
            at = index + u / per_voxel
            warped = _linear_at(ms, at, edge=True)
            weight = ndimage.map_coordinates(inside, at, order=0, mode="constant").astype(bool)
            g = (grad_f + np.stack(np.gradient(warped, *spacing))) / 2
            diff = warped - fs
            denom = (g * g).sum(axis=0) + diff * diff / alpha2
            step = np.divide(-diff, denom, out=np.zeros_like(diff), where=(denom > 1e-9) & weight) * g
            u = smooth(u + smooth(step, config.fluid_mm), config.diffusion_mm)
    return u


def register_affine(fixed: Volume, moving: Volume, config: RegistrationConfig = RegistrationConfig()) -> AffineAlignment:
    """Find the affine that best maps ``fixed``'s world coordinates onto ``moving``'s.

    Args:
        fixed: the volume whose grid the moving one is brought onto (the query).
        moving: the volume to align (a support image).
        config: the search (:class:`RegistrationConfig`).

    Returns:
        The :class:`AffineAlignment`; :func:`resample` applies it.

    Raises:
        InvalidTypeError: not :class:`~medsam2kit.volume.Volume` values.
        InvalidInputError: an image without contrast (constant), which nothing can align.
    """
    for name, vol in (("fixed", fixed), ("moving", moving)):
        if not isinstance(vol, Volume):
            raise InvalidTypeError(f"{name}: expected a medsam2kit Volume, got {type(vol).__name__}")
    f = _normalised(fixed, config.percentiles, "fixed")
    m = _normalised(moving, config.percentiles, "moving")
    base = _stride(fixed.shape, config.max_voxels)
    lower, upper = _bounds(config, fixed)
    free = _free_parameters(config.scale)
    q = np.zeros(int(free.max()) + 1)  # the free parameters only (an isotropic scale is one)
    ncc = 0.0
    for sigma_mm in config.levels:
        # a smoothed level is sampled more sparsely: about two samples per smoothing width
        stride = tuple(max(b, int(sigma_mm / (2 * sp))) for b, sp in zip(base, fixed.spacing))
        fs = _smoothed(f, fixed, sigma_mm)[::stride[0], ::stride[1], ::stride[2]]
        ms = _smoothed(m, moving, sigma_mm)
        grid = fixed.affine @ np.diag([*stride, 1.0])

        def cost(x: np.ndarray, fs: np.ndarray = fs, ms: np.ndarray = ms, grid: np.ndarray = grid) -> float:
            return -_ncc(fs, _sample(ms, moving.affine, _matrix(x[free] * _UNITS, fixed, moving) @ grid, fs.shape))

        bounds = [(lower[i], upper[i]) for i in range(len(q))]
        best = np.inf
        for _ in range(_RESTARTS):  # Powell again from its end, with fresh directions, while it gains
            found = optimize.minimize(cost, q, method="Powell", bounds=bounds,
                                      options={"xtol": 1e-2, "ftol": 1e-5, "maxfev": config.max_evaluations})
            q = np.asarray(found.x, dtype=np.float64)
            gained = best - float(found.fun)
            best = min(best, float(found.fun))
            if gained < 1e-4:
                break
        ncc = -best
    params = q[free] * _UNITS
    return AffineAlignment(matrix=_matrix(params, fixed, moving), parameters=params, ncc=ncc)


def _free_parameters(scale: Scale) -> np.ndarray:
    """For each of the 9 parameters, the index of the free parameter it takes its value from
    (an isotropic scale is one free parameter for the three axes)."""
    return np.arange(9) if scale == "anisotropic" else np.array([0, 1, 2, 3, 4, 5, 6, 6, 6])


#: Labels whose indicators one call samples together (a slab's float32 values of each are held at once).
_LABELS_PER_CALL = 4


def resample(moving: Volume, onto: Volume, alignment: Transform | None = None, *,
             labels: bool = False) -> Volume:
    """``moving`` resampled onto ``onto``'s grid through ``alignment`` (identity world map if None).

    Images are interpolated linearly and filled outside ``moving`` with its lowest value; label
    maps (``labels=True``) keep, per voxel, the label whose linearly interpolated indicator is
    largest (smoother than nearest-neighbour), 0 outside.

    Returns:
        A :class:`~medsam2kit.volume.Volume` with ``onto``'s shape and affine.

    Raises:
        ShapeMismatchError: a :class:`Warp` found on another grid than ``onto``'s.
    """
    grid_to_world, warp = _mapping(alignment, onto)
    if not labels:
        src = np.asarray(moving.array, dtype=np.float32)
        out = _sample(src, moving.affine, grid_to_world, onto.shape, cval=float(src.min()), warp=warp)
        return Volume(out, onto.affine, kind=onto.kind)
    lab = np.asarray(moving.array)
    out = np.zeros(onto.shape, lab.dtype)
    for rows, box, points in _slab_points(moving.affine, lab.shape, grid_to_world, onto.shape, warp=warp):
        part = lab[box]  # the labels near the slab's points, a few sampled together (their weights computed once)
        values = np.unique(part)
        values = values[values > 0]
        best = np.full(points.shape[1:], 0.5, np.float32)  # an indicator must pass one half to win a voxel
        won = out[rows]
        for group in (values[k:k + _LABELS_PER_CALL] for k in range(0, values.size, _LABELS_PER_CALL)):
            p = _linear_at(part[None] == group.reshape(-1, 1, 1, 1), points)
            top = p.argmax(axis=0)
            p = np.take_along_axis(p, top[None], axis=0)[0]
            win = p > best
            won[win] = group[top[win]]
            np.copyto(best, p, where=win)
    return Volume(out, onto.affine, kind=onto.kind)


def label_indicators(label: Volume, onto: Volume, alignment: Transform | None = None) -> dict[int, np.ndarray]:
    """Per label > 0 of ``label``, its indicator resampled linearly onto ``onto``'s grid through
    ``alignment``: float32 in [0, 1]; a voxel's value reaches half a voxel past ``label``'s grid,
    fading to 0 there (so a label on the grid's edge survives a sub-voxel shift), 0 beyond."""
    return dict(_indicators(label, onto, alignment))


def _indicators(label: Volume, onto: Volume, alignment: Transform | None) -> Iterator[tuple[int, np.ndarray]]:
    """:func:`label_indicators`, one label at a time."""
    lab = np.asarray(label.array)
    for i in np.unique(lab):
        if i > 0:
            p = _sample_through((lab == i).astype(np.float32), label.affine, alignment, onto)
            yield int(i), np.clip(p, 0, 1, out=p)


def _sample_through(src: np.ndarray, src_affine: np.ndarray, alignment: Transform | None, onto: Volume,
                    cval: float = 0.0) -> np.ndarray:
    """``src`` sampled linearly at ``onto``'s voxels carried into its world by ``alignment``."""
    grid_to_world, warp = _mapping(alignment, onto)
    return _sample(src, src_affine, grid_to_world, onto.shape, cval=cval, warp=warp)


def _mapping(alignment: Transform | None, onto: Volume) -> tuple[np.ndarray, Warp | None]:
    """``onto``'s voxels -> the moving world (identity world map if None), and the Warp whose
    displacement moves them first (None for an affine).

    Raises:
        ShapeMismatchError: a :class:`Warp` found on another grid than ``onto``'s.
    """
    if not isinstance(alignment, Warp):
        return (np.eye(4) if alignment is None else alignment.matrix) @ onto.affine, None
    if alignment.shape != tuple(onto.shape):
        raise ShapeMismatchError(f"alignment: a Warp found on a grid of shape {alignment.shape}, "
                                 f"not onto's {tuple(onto.shape)}; register onto this grid")
    return alignment.affine.matrix @ onto.affine, alignment


class RegisteredAtlas:
    """A coarse model (:class:`~medsam2kit.coarse.CoarseModel`) that needs no training: the
    supports registered onto each volume (:func:`register`), their labels' indicators
    resampled linearly and averaged (multi-atlas label fusion by the mean).

    Calling it gives ``(L + 1, D, H, W)`` float32 probabilities on the volume's grid (channel
    ``l``: label ``l``, ``L`` the supports' largest label; channel 0 the rest), so it serves as
    the coarse network of :class:`~medsam2kit.pipelines.SAM2Med3DPipeline` from a few labelled
    cases, and as the baseline few-shot methods are compared with.

    Args:
        supports: ``(image, label)`` pairs.
        config: the registration (:class:`RegistrationConfig`).

    Raises:
        InvalidInputError: no support, or no labelled voxel in any of them.
    """

    def __init__(self, supports: Sequence[Pair], config: RegistrationConfig = RegistrationConfig()) -> None:
        if not supports:
            raise InvalidInputError("supports: expected at least one (image, label) pair, got none")
        self.supports = tuple(check_support_pair(pair, i) for i, pair in enumerate(supports))
        self.num_labels = max(int(np.asarray(label.array).max()) for _, label in self.supports)
        if self.num_labels < 1:
            raise InvalidInputError("supports: no support holds a label > 0; expected labelled supports")
        self.config = config

    def __call__(self, volume: Volume) -> np.ndarray:
        if not isinstance(volume, Volume):
            raise InvalidTypeError(f"volume: expected a medsam2kit Volume, got {type(volume).__name__}")
        prob = np.zeros((self.num_labels + 1, *volume.shape), np.float32)
        for image, label in self.supports:
            alignment = register(volume, image, self.config)
            for i, p in label_indicators(label, volume, alignment).items():
                prob[i] += p / len(self.supports)
        prob[0] = np.clip(1.0 - prob[1:].sum(axis=0), 0.0, 1.0)
        return prob


def align_supports(query: Volume, supports: Sequence[Pair],
                   config: RegistrationConfig = RegistrationConfig()) -> tuple[Pair, ...]:
    """Every ``(image, label)`` support registered onto ``query`` and resampled onto its grid.

    Raises:
        InvalidTypeError / ShapeMismatchError / GeometryError: a support is not an (image, label)
            pair of Volumes on one grid (named by its index).
    """
    if not isinstance(query, Volume):
        raise InvalidTypeError(f"query: expected a medsam2kit Volume, got {type(query).__name__}")
    aligned = []
    for index, pair in enumerate(supports):
        image, label = check_support_pair(pair, index)
        alignment = register(query, image, config)
        aligned.append((resample(image, query, alignment), resample(label, query, alignment, labels=True)))
    return tuple(aligned)


def vote_labels(supports: Sequence[Pair]) -> Volume:
    """The majority vote of supports on one grid (:func:`align_supports`' output): per voxel the
    label most supports give it, where more than half of them do (0 elsewhere); the baseline
    few-shot methods are compared with (multi-atlas segmentation by majority vote).

    Raises:
        InvalidInputError: no support.
        InvalidTypeError / ShapeMismatchError / GeometryError: not pairs of Volumes on the
            first support's grid.
    """
    first, stack, ids = _stacked_labels(supports)
    out = np.zeros(first.shape, stack.dtype)
    for i in ids:
        out[(stack == i).sum(axis=0) * 2 > len(stack)] = i
    return first.with_array(out)


def held_by_supports(supports: Sequence[Pair]) -> dict[int, np.ndarray]:
    """Per label of supports on one grid (:func:`align_supports`' output), the voxels where at
    least half of the supports hold it (bool arrays of the grid's shape).

    Example:
        >>> lab = Volume(np.zeros((1, 1, 4), np.uint8), np.eye(4))
        >>> one = lab.with_array(np.array([[[0, 1, 1, 0]]], np.uint8))
        >>> two = lab.with_array(np.array([[[0, 0, 1, 2]]], np.uint8))
        >>> {k: v.astype(int).ravel().tolist() for k, v in held_by_supports([(lab, one), (lab, two)]).items()}
        {1: [0, 1, 1, 0], 2: [0, 0, 0, 1]}

    Raises:
        InvalidInputError: no support.
        InvalidTypeError / ShapeMismatchError / GeometryError: not pairs of Volumes on the
            first support's grid.
    """
    _, stack, ids = _stacked_labels(supports)
    return {i: (stack == i).sum(axis=0) * 2 >= len(stack) for i in ids}


def held_near(supports: Sequence[Pair], margin_mm: float) -> dict[int, np.ndarray]:
    """Per label of supports on one grid (:func:`align_supports`' output), the voxels within
    ``margin_mm`` of one where at least half of the supports hold it (bool arrays of the grid's
    shape): where the registered supports place the structure, with a margin for their error.

    Example:
        >>> lab = Volume(np.zeros((1, 1, 7), np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
        >>> one = lab.with_array(np.array([[[0, 0, 0, 1, 0, 0, 0]]], np.uint8))
        >>> held_near([(lab, one), (lab, lab)], 2.0)[1].astype(int).tolist()  # 2 mm: one voxel of 2 mm
        [[[0, 0, 1, 1, 1, 0, 0]]]

    Raises:
        InvalidInputError: no support, or ``margin_mm`` negative or not finite.
        InvalidTypeError / ShapeMismatchError / GeometryError: not pairs of Volumes on the
            first support's grid.
    """
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise InvalidInputError(f"margin_mm: expected a distance >= 0 mm, got {margin_mm}")
    held_by = held_by_supports(supports)
    spacing = supports[0][1].spacing
    return {i: ndimage.distance_transform_edt(~held, sampling=spacing) <= margin_mm if held.any() else held
            for i, held in held_by.items()}


def _stacked_labels(supports: Sequence[Pair]) -> tuple[Volume, np.ndarray, list[int]]:
    """The supports' label maps, checked to lie on one grid: the first (the grid), all of them
    stacked ``(n, D, H, W)``, and the labels they hold (ascending, 0 left out)."""
    if not supports:
        raise InvalidInputError("supports: expected at least one (image, label) pair, got none")
    labels = [check_support_pair(pair, i)[1] for i, pair in enumerate(supports)]
    for i, label in enumerate(labels[1:], start=1):
        check_same_grid(label, labels[0], name=f"supports[{i}] label")
    stack = np.stack([np.asarray(label.array) for label in labels])
    return labels[0], stack, [int(x) for x in np.unique(stack) if x > 0]


def check_support_pair(pair: object, index: int) -> Pair:
    """A support's ``(image, label)`` pair checked: Volumes on one grid, the label a label map.

    Raises:
        InvalidTypeError: not a pair of Volumes (``supports[index]`` named).
        ShapeMismatchError / GeometryError: the label is not on the image's grid.
        InvalidInputError: the label is not a label map of non-negative integers.
    """
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise InvalidTypeError(f"supports[{index}]: expected an (image, label) pair of Volumes, got {type(pair).__name__}")
    image, label = pair
    if not isinstance(image, Volume) or not isinstance(label, Volume):
        raise InvalidTypeError(f"supports[{index}]: expected (Volume, Volume), got ({type(image).__name__}, {type(label).__name__})")
    if image.shape != label.shape:
        raise ShapeMismatchError(f"supports[{index}]: label shape {label.shape} differs from image shape {image.shape}")
    check_same_grid(label, image, name=f"supports[{index}] label")
    check_label_map(label.array, f"supports[{index}] label")
    return image, label


def _normalised(vol: Volume, percentiles: tuple[float, float], name: str) -> np.ndarray:
    arr = np.asarray(vol.array, dtype=np.float32)
    lo, hi = np.percentile(arr, percentiles)
    if not hi > lo:
        raise InvalidInputError(f"{name}: the image has no contrast between its {percentiles} percentiles; nothing to align")
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _smoothed(arr: np.ndarray, vol: Volume, sigma_mm: float) -> np.ndarray:
    if sigma_mm == 0:
        return arr
    return ndimage.gaussian_filter(arr, [sigma_mm / s for s in vol.spacing])


def _stride(shape: tuple[int, int, int], max_voxels: int) -> tuple[int, ...]:
    """The smallest common stride whose subgrid holds at most ``max_voxels`` voxels."""
    s = 1
    while np.prod([-(-n // s) for n in shape]) > max_voxels:
        s += 1
    return (s, s, s)


def _bounds(config: RegistrationConfig, fixed: Volume) -> tuple[np.ndarray, np.ndarray]:
    extent = np.abs(fixed.affine[:3, :3]) @ np.asarray(fixed.shape, dtype=np.float64)
    half = np.concatenate([extent / 2, np.full(3, np.radians(config.max_rotation_deg)),
                           np.full(3, np.log(config.max_scale))])
    return -half / _UNITS, half / _UNITS


def _centre(vol: Volume) -> np.ndarray:
    return (vol.affine @ np.append((np.asarray(vol.shape, dtype=np.float64) - 1) / 2, 1.0))[:3]


def _matrix(params: np.ndarray, fixed: Volume, moving: Volume) -> np.ndarray:
    """World (fixed) -> world (moving): ``R S (x - c_f) + c_m + t``."""
    t, rotvec, log_scale = params[:3], params[3:6], params[6:9]
    linear = Rotation.from_rotvec(rotvec).as_matrix() @ np.diag(np.exp(log_scale))
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = _centre(moving) + t - linear @ _centre(fixed)
    return out


def _sample(src: np.ndarray, src_affine: np.ndarray, grid_to_world: np.ndarray, shape: tuple[int, ...],
            cval: float = 0.0, *, edge: bool = False, warp: Warp | None = None,
            chunk_points: int = 2**22) -> np.ndarray:
    """``src`` (voxels of ``src_affine``) sampled linearly (:func:`_linear_at`'s modes) at the
    world points of a grid, each grid voxel first moved by ``warp``'s displacement if given, in
    slabs of at most about ``chunk_points`` points, each read from the box of ``src`` around its
    points (:func:`_slab_points`; no array of the grid's size but the output)."""
    out = np.empty(tuple(shape), np.float32)
    for rows, box, points in _slab_points(src_affine, src.shape, grid_to_world, shape, warp=warp,
                                          chunk_points=chunk_points):
        out[rows] = _linear_at(src[box], points, cval=cval, edge=edge)
    return out


def _slab_points(src_affine: np.ndarray, src_shape: tuple[int, ...], grid_to_world: np.ndarray, shape: tuple[int, ...],
                 *, warp: Warp | None = None,
                 chunk_points: int = 2**22) -> Iterator[tuple[slice, tuple[slice, ...], np.ndarray]]:
    """Per slab of a grid (rows of its first axis, about ``chunk_points`` points): the rows, the
    box of the source grid (voxels of ``src_affine``, ``src_shape``) that linear sampling at the
    slab's points reads, and the points in the box's voxels (``(3, rows, H, W)`` float32): the
    grid's world points, each voxel first moved by ``warp``'s displacement if given.

    The box reaches a voxel past the points on each side, so inside the source grid its edge is
    never read as an edge; where the points pass the grid's edge so does the box (keeping at least
    one voxel), so both of :func:`_linear_at`'s modes give what they give on the whole grid.
    """
    to_src = np.linalg.solve(src_affine, grid_to_world)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    lin = to_src[:3, :3].astype(np.float32)
    n = np.asarray(src_shape)
    step = max(1, chunk_points // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        z = axes[0][z0:z0 + step, None, None]
        # the slab's points in src voxels, as a sum of one line per axis (no index array)
        points = np.stack([to_src[k, 3].astype(np.float32) + lin[k, 0] * z + lin[k, 1] * axes[1][None, :, None]
                           + lin[k, 2] * axes[2][None, None, :] for k in range(3)])
        if warp is not None:  # the displacement, in grid voxels, carried into src
            per_voxel = np.asarray(warp.spacing, np.float32)[:, None, None, None]
            points += np.einsum("ij,j...->i...", lin, warp.displacement[:, z0:z0 + step] / per_voxel)
        flat = points.reshape(3, -1)
        lo = np.clip(np.floor(flat.min(axis=1)).astype(np.int64) - 1, 0, n - 1)
        hi = np.clip(np.ceil(flat.max(axis=1)).astype(np.int64) + 2, lo + 1, n)
        points -= lo.astype(np.float32)[:, None, None, None]
        yield slice(z0, z0 + step), tuple(slice(a, b) for a, b in zip(lo, hi)), points


def _linear_at(src: np.ndarray, points: np.ndarray, *, cval: float = 0.0, edge: bool = False) -> np.ndarray:
    """Trilinear interpolation of the 3D ``src`` at ``points`` (``(3, ...)`` voxel coordinates):
    as ``scipy.ndimage.map_coordinates(order=1)`` with ``mode="grid-constant"`` (``cval``
    beyond the grid, fading over its outer half voxel), or ``mode="nearest"`` with ``edge``,
    float32; torch's ``grid_sample``, 2-3 times as fast on the CPU. A 4D ``src`` is channels of
    one grid (``(C, D, H, W)``), sampled together (the points' weights computed once): the
    result is ``(C, ...)``."""
    import torch

    size = torch.tensor(src.shape[-1:-4:-1], dtype=torch.float32)
    at = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).reshape(3, -1).flip(0).T
    grid = ((2 * at + 1) / size - 1).reshape(1, 1, 1, -1, 3)  # x, y, z in [-1, 1] at the grid's outer edges
    image = torch.from_numpy(np.subtract(src, np.float32(cval), dtype=np.float32)).reshape(1, -1, *src.shape[-3:])
    with torch.inference_mode():
        out = torch.nn.functional.grid_sample(image, grid, mode="bilinear", align_corners=False,
                                              padding_mode="border" if edge else "zeros")
    return out.reshape(*src.shape[:-3], *points.shape[1:]).numpy() + np.float32(cval)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


__all__ = [
    "AffineAlignment",
    "DemonsConfig",
    "RegisteredAtlas",
    "RegistrationConfig",
    "Transform",
    "Warp",
    "align_supports",
    "check_support_pair",
    "held_by_supports",
    "held_near",
    "label_indicators",
    "register",
    "register_affine",
    "register_demons",
    "resample",
    "vote_labels",
]
