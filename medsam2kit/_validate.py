"""Small argument checks shared by the modules (one place, one wording of the errors).

Also the library's one rule for the default slicing axis (:func:`largest_spacing_axis`, public as
:func:`medsam2kit.sequencer.default_axis`) and the one way numpy / torch randomness arguments are
turned into generators (:func:`check_rng`, :func:`check_generator`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medsam2kit.errors import GeometryError, InvalidInputError, InvalidTypeError
from medsam2kit.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Relative tolerance under which two spacings count as equal when choosing the default axis
#: (``1e-3``: float32 affines and DICOM rounding differ by far less; real anisotropy by far more).
SPACING_RTOL = 1e-3

RngLike = np.random.Generator | int | None


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int (bools refused), at least ``minimum`` when given.

    Example:
        >>> check_int(3, "k", minimum=1)
        3
    """
    if isinstance(value, bool):
        raise InvalidTypeError(f"{name}: expected an integer, got bool {value}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidTypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}") from None
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name}: expected an integer >= {minimum}, got {number}")
    return int(number)


def check_positive(value: object, name: str) -> float:
    """``value`` as a positive finite float (bools refused).

    Example:
        >>> check_positive(2, "reach_mm")
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_axis(axis: object, name: str = "axis") -> int:
    """A slicing axis of a ``(D, H, W)`` array as 0, 1 or 2 (negative values count from the end).

    Example:
        >>> check_axis(2), check_axis(-1)
        (2, 2)
    """
    ax = check_int(axis, name)
    if not -3 <= ax <= 2:
        raise InvalidInputError(f"{name}: expected 0, 1 or 2 (or -3, -2, -1), got {ax}")
    return ax % 3


def check_spacing(
    spacing: object, *, ndim: int = 3, default: Sequence[float] | None = None, name: str = "spacing"
) -> tuple[float, ...]:
    """Voxel size in mm per array axis: ``None`` (``default``, else 1 mm), one number
    (isotropic) or ``ndim`` finite positive numbers.

    Example:
        >>> check_spacing(None), check_spacing(2), check_spacing((3, 1, 1))
        ((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (3.0, 1.0, 1.0))
    """
    if spacing is None:
        spacing = tuple(default) if default is not None else (1.0,) * ndim
    try:
        if isinstance(spacing, (int, float, np.integer, np.floating)) and not isinstance(spacing, bool):
            values: tuple[float, ...] = (float(spacing),) * ndim
        else:
            values = tuple(float(s) for s in spacing)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise InvalidTypeError(f"{name}: expected a number or {ndim} numbers (mm), got {spacing!r}") from None
    if len(values) != ndim:
        raise GeometryError(f"{name}: expected {ndim} values (mm per array axis), got {len(values)}: {values}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise GeometryError(f"{name}: expected finite positive values in mm, got {values}")
    return values


def check_label_map(array: np.ndarray, name: str, *, maximum: int | None = None) -> np.ndarray:
    """A label map as int64: bool, integers, or finite floats with integral values, all in
    ``[0, maximum]`` (0 background; ``maximum=None``: no upper bound).

    Example:
        >>> check_label_map(np.array([0.0, 2.0]), "labels").tolist()
        [0, 2]
    """
    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidTypeError(f"{name}: expected an integer label map, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))):
        raise InvalidInputError(f"{name}: expected an integer label map, got non-integer or non-finite values ({arr.dtype})")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or (maximum is not None and hi > maximum):
            bound = "" if maximum is None else f", {maximum}"
            raise InvalidInputError(
                f"{name}: expected label values in [0{bound}{']' if maximum is not None else ', ...)'}, "
                f"got range [{lo}, {hi}]"
            )
    return arr.astype(np.int64)


def check_label_ids(labels: Iterable[object], name: str = "labels", *, maximum: int | None = None) -> list[int]:
    """Foreground label ids (integers >= 1, at most ``maximum`` when given), in the given order.

    Example:
        >>> check_label_ids([2, 1])
        [2, 1]
    """
    ids = [check_int(v, name) for v in labels]
    bad = [v for v in ids if v < 1 or (maximum is not None and v > maximum)]
    if bad:
        upper = "" if maximum is None else f" and <= {maximum}"
        raise InvalidInputError(f"{name}: expected label ids >= 1{upper} (0 is background), got {bad}")
    return ids


def check_rng(rng: object, name: str = "rng") -> np.random.Generator:
    """A numpy generator from ``rng``: a ``np.random.Generator`` (used as is), an int seed or
    ``None`` (fresh OS entropy).

    Example:
        >>> float(check_rng(0).random()) == float(np.random.default_rng(0).random())
        True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    return np.random.default_rng(check_int(rng, name, minimum=0))


def check_generator(generator: object, name: str = "generator") -> torch.Generator:
    """The given ``torch.Generator``, or a fresh one seeded from the OS for ``None`` (the global
    RNG state is never used).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> check_generator(g) is g
        True
    """
    import torch

    if generator is None:
        fresh = torch.Generator()
        fresh.seed()
        return fresh
    if not isinstance(generator, torch.Generator):
        raise InvalidTypeError(f"{name}: expected a torch.Generator or None, got {type(generator).__name__} {generator!r}")
    return generator


def largest_spacing_axis(
    affine: npt.ArrayLike, shape: Sequence[int] | None = None, *, rtol: float = SPACING_RTOL
) -> int:
    """The default slicing axis of a grid (the rule behind :func:`medsam2kit.sequencer.default_axis`).

    1. the largest spacing (column norms of ``affine``), spacings within ``rtol`` of it tie;
    2. among ties, the fewest slices (``shape`` given);
    3. among ties, the axis nearest the world superior-inferior direction (largest ``|z|`` of
       its unit column); then the lowest axis.

    ``affine`` must already be a checked 4x4 matrix.

    Example:
        >>> largest_spacing_axis(np.eye(4), (384, 384, 10)), largest_spacing_axis(np.diag([3.0, 1, 1, 1]))
        (2, 0)
    """
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    tied = np.flatnonzero(spacing >= spacing.max() * (1.0 - rtol))
    if shape is not None and len(tied) > 1:
        sizes = np.asarray([int(shape[int(a)]) for a in tied])
        tied = tied[sizes == sizes.min()]
    if len(tied) > 1:
        si = np.abs(cols[2, tied]) / spacing[tied]
        tied = tied[si >= si.max() - 1e-9]
    return int(tied[0])


def resolve_axis(
    axis: object,
    *,
    shape: Sequence[int],
    spacing: Sequence[float] | None = None,
    volume: Volume | None = None,
) -> int:
    """``axis`` checked, or for ``None`` the library's default axis: :func:`largest_spacing_axis`
    of ``volume``'s geometry (axis 0 for a cine), else of ``diag(spacing)`` (1 mm when ``None``)
    with ``shape``.

    Example:
        >>> resolve_axis(None, shape=(384, 384, 10)), resolve_axis(None, shape=(9, 9, 9), spacing=(3, 1, 1))
        (2, 0)
    """
    if axis is not None:
        return check_axis(axis)
    if volume is not None:
        return 0 if volume.kind == "cine" else largest_spacing_axis(volume.affine, volume.shape)
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(spacing)
    return largest_spacing_axis(np.diag([*sp, 1.0]), shape)


__all__ = [
    "SPACING_RTOL",
    "check_axis",
    "check_generator",
    "check_int",
    "check_label_ids",
    "check_label_map",
    "check_rng",
    "check_spacing",
    "largest_spacing_axis",
    "resolve_axis",
]
