"""Layouts, validation, parameter values and the transform base class with its combinators.

Every transform works internally on a *canonical* clip ``x`` of shape ``(B, T, C, H, W)`` (float)
and masks ``m`` of shape ``(B, T, K, H, W)`` (any dtype). Public entry points accept

=====================  ==============================  ==========================================
image                  meaning                         masks
=====================  ==============================  ==========================================
``(T, H, W)``          one grayscale clip              ``(T, H, W)`` or ``(T, K, H, W)``
``(T, C, H, W)``       one clip with C channels        ``(T, H, W)`` or ``(T, K, H, W)``
``(B, T, C, H, W)``    a batch of clips                ``(B, T, H, W)`` or ``(B, T, K, H, W)``
=====================  ==============================  ==========================================

(a batch of grayscale clips is ``(B, T, 1, H, W)``; rank 4 always means ``(T, C, H, W)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from torch import Tensor

from medsam2kit._validate import check_generator
from medsam2kit.augment.geometry import ScanGeometry, estimate_scan_geometry
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError

Dims = tuple[int, int, int, int, int]
"""Canonical clip dimensions ``(B, T, C, H, W)``."""

GeometrySpec = ScanGeometry | Literal["estimate", "full"]


# --------------------------------------------------------------------------------------------------
# layouts and validation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a public clip (and its mask) maps to the canonical layout, to map it back."""

    rank: int
    dtype: torch.dtype
    mask_rank: int | None
    per_object: bool


def dims_of_shape(shape: Sequence[int], name: str = "shape") -> Dims:
    """Canonical ``(B, T, C, H, W)`` of a public clip shape.

    Example:
        >>> dims_of_shape((8, 64, 64))
        (1, 8, 1, 64, 64)
    """
    s = tuple(int(v) for v in shape)
    if len(s) == 3:
        dims: Dims = (1, s[0], 1, s[1], s[2])
    elif len(s) == 4:
        dims = (1, s[0], s[1], s[2], s[3])
    elif len(s) == 5:
        dims = (s[0], s[1], s[2], s[3], s[4])
    else:
        raise InvalidInputError(
            f"{name}: expected a clip of rank 3 (T, H, W), 4 (T, C, H, W) or 5 (B, T, C, H, W), got shape {s}"
        )
    if min(dims) < 1:
        raise InvalidInputError(f"{name}: expected every dimension >= 1, got shape {s}")
    return dims


def to_canonical(clip: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, Layout]:
    """Validate a public clip and mask and bring them to ``(B, T, C, H, W)`` float / ``(B, T, K, H, W)``."""
    if not isinstance(clip, Tensor):
        raise InvalidTypeError(
            f"clip: expected a torch.Tensor (use torch.from_numpy for arrays), got {type(clip).__name__}"
        )
    dims = dims_of_shape(clip.shape, "clip")
    if clip.dtype == torch.uint8:
        x = clip.reshape(dims).to(torch.float32) / 255.0
    elif clip.is_floating_point():
        x = clip.reshape(dims)
        if x.numel() > 0:
            lo, hi = torch.aminmax(x.detach())
            lo_v, hi_v = float(lo), float(hi)
            if math.isnan(lo_v) or math.isnan(hi_v):  # aminmax propagates NaN
                raise InvalidInputError(f"clip: expected finite values in [0, 1], got NaN (shape {tuple(clip.shape)})")
            if lo_v < -1e-6 or hi_v > 1 + 1e-6:
                raise InvalidInputError(
                    f"clip: expected float values in [0, 1], got min {lo_v:.4g}, max {hi_v:.4g} "
                    "(divide by 255 or pass uint8)"
                )
    else:
        raise InvalidTypeError(f"clip: expected dtype uint8 or a floating dtype, got {clip.dtype}")
    layout = Layout(rank=clip.ndim, dtype=clip.dtype, mask_rank=None, per_object=False)
    if mask is None:
        return x, None, layout
    if not isinstance(mask, Tensor):
        raise InvalidTypeError(f"mask: expected a torch.Tensor or None, got {type(mask).__name__}")
    lead = (dims[0], dims[1]) if clip.ndim == 5 else (dims[1],)
    hw = (dims[3], dims[4])
    ok_plain = mask.ndim == len(lead) + 2 and tuple(mask.shape) == (*lead, *hw)
    ok_objects = (
        mask.ndim == len(lead) + 3
        and tuple(mask.shape[: len(lead)]) == lead
        and tuple(mask.shape[-2:]) == hw
        and mask.shape[len(lead)] >= 1
    )
    if not (ok_plain or ok_objects):
        lead_txt = ", ".join(str(v) for v in lead)
        raise ShapeMismatchError(
            f"mask: expected shape ({lead_txt}, {hw[0]}, {hw[1]}) or ({lead_txt}, K, {hw[0]}, {hw[1]}) "
            f"for clip of shape {tuple(clip.shape)}, got {tuple(mask.shape)}"
        )
    if mask.is_floating_point() and bool(torch.isnan(mask).any()):
        raise InvalidInputError(f"mask: expected no NaN, got NaN (shape {tuple(mask.shape)})")
    if mask.is_complex():
        raise InvalidTypeError(f"mask: expected a real or bool dtype, got {mask.dtype}")
    k = mask.shape[len(lead)] if ok_objects else 1
    m = mask.reshape(dims[0], dims[1], k, dims[3], dims[4])
    layout = Layout(rank=clip.ndim, dtype=clip.dtype, mask_rank=mask.ndim, per_object=ok_objects)
    return x, m, layout


def from_canonical(x: Tensor, m: Tensor | None, layout: Layout) -> tuple[Tensor, Tensor | None]:
    """Inverse of :func:`to_canonical` (the number of frames may have changed)."""
    b, t, c, h, w = x.shape
    if layout.rank == 3:
        y = x.reshape(t, h, w)
    elif layout.rank == 4:
        y = x.reshape(t, c, h, w)
    else:
        y = x
    if layout.dtype == torch.uint8:
        y = (y * 255.0).round().clamp(0, 255).to(torch.uint8)
    elif y.dtype != layout.dtype:
        y = y.to(layout.dtype)
    if m is None:
        return y, None
    k = m.shape[2]
    lead: tuple[int, ...] = (b, t) if layout.rank == 5 else (t,)
    mm = m.reshape(*lead, k, h, w) if layout.per_object else m.reshape(*lead, h, w)
    return y, mm


# --------------------------------------------------------------------------------------------------
# argument checks and sampling helpers
# --------------------------------------------------------------------------------------------------


def interval(
    name: str, value: float | Sequence[float], *, lo: float = -math.inf, hi: float = math.inf
) -> tuple[float, float]:
    """A number or a ``(min, max)`` pair, checked to lie in ``[lo, hi]``.

    Example:
        >>> interval("rate", (0.0, 3.0), lo=0.0)
        (0.0, 3.0)
        >>> interval("rate", 1.5)
        (1.5, 1.5)
    """
    if isinstance(value, bool):
        raise InvalidTypeError(f"{name}: expected a number or a (min, max) pair, got {value!r}")
    if isinstance(value, (int, float)):
        pair = (float(value), float(value))
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        pair = (float(value[0]), float(value[1]))
    else:
        raise InvalidTypeError(f"{name}: expected a number or a (min, max) pair, got {value!r}")
    if not all(math.isfinite(v) for v in pair) or not (lo <= pair[0] <= pair[1] <= hi):
        raise InvalidInputError(f"{name}: expected {lo} <= min <= max <= {hi}, got {value!r}")
    return pair


def probability(name: str, p: float) -> float:
    """A probability in ``[0, 1]``."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise InvalidInputError(f"{name}: expected a probability in [0, 1], got {p!r}")
    return float(p)


def uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    """Uniform samples on CPU float32 (drawn on the generator's device, so any generator works)."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return (bounds[0] + (bounds[1] - bounds[0]) * u).to(torch.float32)


def log_uniform(generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
    """Log-uniform samples on CPU float32 (bounds must be positive)."""
    return uniform(generator, shape, (math.log(bounds[0]), math.log(bounds[1]))).exp()


def draw_seed(generator: torch.Generator) -> int:
    """A 62-bit seed for noise that ``apply`` redraws deterministically."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def per_clip(values: Tensor, x: Tensor, name: str) -> Tensor:
    """Parameter values ``(B,)`` or ``(B, n)`` checked against clip ``x`` and moved to its device/dtype."""
    if values.ndim < 1 or values.shape[0] != x.shape[0]:
        raise ShapeMismatchError(
            f"params.{name}: expected one value per clip ({x.shape[0]},), got shape {tuple(values.shape)}"
        )
    return values.to(device=x.device, dtype=x.dtype if values.is_floating_point() else values.dtype)


def bc(values: Tensor, ndim: int) -> Tensor:
    """Reshape ``(B,)`` to ``(B, 1, ..., 1)`` with ``ndim`` dimensions."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


# --------------------------------------------------------------------------------------------------
# parameters, results, base class
# --------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Params):
        return value.to_dict()
    if isinstance(value, ScanGeometry):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class Params:
    """Base of every parameter value: frozen; tensors hold one entry per clip (leading ``B``).

    Example:
        >>> from medsam2kit.augment import DepthAttenuation
        >>> p = DepthAttenuation().sample((4, 32, 32), torch.Generator().manual_seed(0))
        >>> sorted(p.to_dict())
        ['floor', 'geometry', 'rate']
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats, dicts), for logging as JSON."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True, eq=False)
class NoParams(Params):
    """Parameters of a transform that has none (grayscale, horizontal flip)."""


@dataclass(frozen=True, eq=False)
class Augmented:
    """What calling a transform returns.

    Attributes:
        image: the augmented clip, same layout and dtype as the input (frames may differ for
            temporal transforms).
        mask: the masks moved with the image (same layout and dtype as given), or ``None``.
        params: the sampled parameters; ``transform.apply(clip, mask, params)`` replays exactly.
    """

    image: Tensor
    mask: Tensor | None
    params: Params


P = TypeVar("P", bound=Params)


class Transform(Generic[P]):
    """Base of every transform: ``sample`` parameters, then ``apply`` them deterministically.

    Subclasses implement ``_sample(dims, generator, geometry)`` and ``_apply(x, m, params)`` on the
    canonical layout. ``kind`` says what a transform may change: ``"intensity"`` (image values only,
    masks untouched), ``"spatial"`` (pixels move, masks move with them) or ``"temporal"`` (frames
    are selected; parameters are shared by every clip of a batch).
    """

    kind: ClassVar[Literal["intensity", "spatial", "temporal", "mixed"]] = "intensity"
    params_type: ClassVar[type[Params]] = Params

    # ---- to implement ------------------------------------------------------------------------
    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> P:
        raise NotImplementedError

    def _apply(self, x: Tensor, m: Tensor | None, params: P) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    # ---- overridable hooks -------------------------------------------------------------------
    @property
    def batch_shared(self) -> bool:
        """Whether the parameters are shared by all clips of a batch (temporal transforms)."""
        return self.kind == "temporal"

    def _wants_estimate(self) -> bool:
        return False

    def _output_dims(self, dims: Dims, params: P) -> Dims:
        return dims

    def _geometry_after(self, params: P, geometry: ScanGeometry | None) -> ScanGeometry | None:
        if self.kind == "spatial":
            return None
        used = getattr(params, "geometry", None)
        return used if isinstance(used, ScanGeometry) else geometry

    def _forward(
        self, x: Tensor, m: Tensor | None, generator: torch.Generator, geometry: ScanGeometry | None
    ) -> tuple[Tensor, Tensor | None, P, ScanGeometry | None]:
        if geometry is None and self._wants_estimate():
            geometry = estimate_scan_geometry(x)
        dims: Dims = tuple(x.shape)  # type: ignore[assignment]
        params = self._sample(dims, generator, geometry)
        y, m2 = self._apply(x, m, params)
        return y, m2, params, self._geometry_after(params, geometry)

    # ---- public API --------------------------------------------------------------------------
    def sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        *,
        geometry: ScanGeometry | None = None,
    ) -> P:
        """Draw parameters for a clip (or batch) of the given shape.

        Args:
            shape: the clip's shape, ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``.
            generator: the only source of randomness; ``None`` draws a fresh OS-seeded one.
            geometry: the scan geometry of the clip; ultrasound transforms set to ``"estimate"``
                use it, or the full frame when it is ``None`` (estimation needs the frames: call
                the transform on the clip instead).

        Returns:
            Frozen parameters (one entry per clip) for :meth:`apply`.
        """
        if geometry is not None and not isinstance(geometry, ScanGeometry):
            raise InvalidTypeError(f"geometry: expected ScanGeometry or None, got {type(geometry).__name__}")
        return self._sample(dims_of_shape(shape), check_generator(generator), geometry)

    def apply(self, clip: Tensor, mask: Tensor | None, params: P) -> tuple[Tensor, Tensor | None]:
        """Apply given parameters (deterministic).

        Args:
            clip: see the layout table in :mod:`medsam2kit.augment`; uint8 or float in ``[0, 1]``.
            mask: matching masks or ``None``.
            params: from :meth:`sample` or from a previous call's ``Augmented.params``.

        Returns:
            ``(image, mask)`` in the input layouts and dtypes.
        """
        if not isinstance(params, self.params_type):
            raise InvalidTypeError(
                f"params: expected {self.params_type.__name__} for {type(self).__name__}, got {type(params).__name__}"
            )
        x, m, layout = to_canonical(clip, mask)
        y, m2 = self._apply(x, m, params)
        return from_canonical(y, m2, layout)

    def __call__(
        self,
        clip: Tensor,
        mask: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        geometry: ScanGeometry | None = None,
    ) -> Augmented:
        """Sample parameters for ``clip`` and apply them.

        Args:
            clip: see the layout table in :mod:`medsam2kit.augment`; uint8 or float in ``[0, 1]``.
            mask: matching masks or ``None``.
            generator: the only source of randomness; ``None`` draws a fresh OS-seeded one.
            geometry: the scan geometry of ``clip``; ``None`` lets ultrasound transforms use their
                own setting (a fixed geometry, the full frame, or an estimate from the frames).

        Returns:
            :class:`Augmented` with the image, the mask and the parameters used.
        """
        if geometry is not None and not isinstance(geometry, ScanGeometry):
            raise InvalidTypeError(f"geometry: expected ScanGeometry or None, got {type(geometry).__name__}")
        x, m, layout = to_canonical(clip, mask)
        y, m2, params, _ = self._forward(x, m, check_generator(generator), geometry)
        image, mask_out = from_canonical(y, m2, layout)
        return Augmented(image=image, mask=mask_out, params=params)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class GeometryAware(Transform[P]):
    """Base of the ultrasound transforms: they act inside a scan sector.

    ``geometry`` is a fixed :class:`ScanGeometry`, ``"estimate"`` (from the frames, default) or
    ``"full"`` (the whole frame, depth = row). A geometry passed at call time (or known from an
    earlier intensity transform in a :class:`Compose`) is used unless a fixed one was given.
    """

    def __init__(self, geometry: GeometrySpec = "estimate") -> None:
        if not (isinstance(geometry, ScanGeometry) or geometry in ("estimate", "full")):
            raise InvalidInputError(f"geometry: expected ScanGeometry, 'estimate' or 'full', got {geometry!r}")
        self.geometry = geometry

    def _wants_estimate(self) -> bool:
        return self.geometry == "estimate"

    def _resolve(self, dims: Dims, geometry: ScanGeometry | None) -> ScanGeometry:
        if isinstance(self.geometry, ScanGeometry):
            return self.geometry
        if geometry is not None:
            return geometry
        return ScanGeometry.full(max(dims[3], 2), dims[4])


# --------------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ComposeParams(Params):
    """Parameters of each child of a :class:`Compose`, in order."""

    children: tuple[Params, ...]


@dataclass(frozen=True, eq=False)
class RandomApplyParams(Params):
    """Which clips the child was applied to (``(B,)`` bool) and its parameters (``None``: none)."""

    applied: Tensor
    inner: Params | None


@dataclass(frozen=True, eq=False)
class OneOfParams(Params):
    """The chosen candidate per clip (``(B,)`` int64) and the parameters of each chosen candidate."""

    choice: Tensor
    inner: tuple[Params | None, ...]


def _check_transform(name: str, t: object) -> Transform[Any]:
    if not isinstance(t, Transform):
        raise InvalidTypeError(f"{name}: expected a medsam2kit.augment Transform, got {type(t).__name__}")
    return t


def _select(flags: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per clip: ``a`` where ``flags`` (B,) is true, else ``b`` (same shapes)."""
    f = bc(flags.to(a.device), a.ndim)
    return torch.where(f, a, b)


class Compose(Transform[ComposeParams]):
    """Apply transforms in sequence.

    Example:
        >>> from medsam2kit.augment import Compose, DepthAttenuation, HorizontalFlip
        >>> t = Compose([DepthAttenuation(geometry="full"), HorizontalFlip()])
        >>> out = t(torch.rand(4, 32, 32), generator=torch.Generator().manual_seed(0))
        >>> out.image.shape, len(out.params.children)
        (torch.Size([4, 32, 32]), 2)
    """

    kind: ClassVar[Literal["intensity", "spatial", "temporal", "mixed"]] = "mixed"
    params_type = ComposeParams

    def __init__(self, transforms: Sequence[Transform[Any]]) -> None:
        if isinstance(transforms, Transform) or not isinstance(transforms, Sequence):
            raise InvalidTypeError(f"transforms: expected a sequence of transforms, got {type(transforms).__name__}")
        self.transforms = tuple(_check_transform(f"transforms[{i}]", t) for i, t in enumerate(transforms))

    @property
    def batch_shared(self) -> bool:
        return any(t.batch_shared for t in self.transforms)

    def _wants_estimate(self) -> bool:
        return any(t._wants_estimate() for t in self.transforms)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> ComposeParams:
        out = []
        for t in self.transforms:
            p = t._sample(dims, generator, geometry)
            geometry = t._geometry_after(p, geometry)
            dims = t._output_dims(dims, p)
            out.append(p)
        return ComposeParams(children=tuple(out))

    def _apply(self, x: Tensor, m: Tensor | None, params: ComposeParams) -> tuple[Tensor, Tensor | None]:
        if len(params.children) != len(self.transforms):
            raise ShapeMismatchError(
                f"params.children: expected {len(self.transforms)} entries, got {len(params.children)}"
            )
        for t, p in zip(self.transforms, params.children):
            if not isinstance(p, t.params_type):
                raise InvalidTypeError(
                    f"params.children: expected {t.params_type.__name__} for {type(t).__name__}, got {type(p).__name__}"
                )
            x, m = t._apply(x, m, p)
        return x, m

    def _forward(
        self, x: Tensor, m: Tensor | None, generator: torch.Generator, geometry: ScanGeometry | None
    ) -> tuple[Tensor, Tensor | None, ComposeParams, ScanGeometry | None]:
        out = []
        for t in self.transforms:
            x, m, p, geometry = t._forward(x, m, generator, geometry)
            out.append(p)
        return x, m, ComposeParams(children=tuple(out)), geometry

    def _output_dims(self, dims: Dims, params: ComposeParams) -> Dims:
        for t, p in zip(self.transforms, params.children):
            dims = t._output_dims(dims, p)
        return dims

    def _geometry_after(self, params: ComposeParams, geometry: ScanGeometry | None) -> ScanGeometry | None:
        for t, p in zip(self.transforms, params.children):
            geometry = t._geometry_after(p, geometry)
        return geometry


class RandomApply(Transform[RandomApplyParams]):
    """Apply a transform to each clip with probability ``p`` (one draw per clip; one per batch for
    temporal transforms).

    Example:
        >>> from medsam2kit.augment import HorizontalFlip, RandomApply
        >>> out = RandomApply(HorizontalFlip(), p=0.5)(torch.rand(2, 3, 8, 8, 8),
        ...                                            generator=torch.Generator().manual_seed(1))
        >>> out.params.applied.shape
        torch.Size([2])
    """

    kind: ClassVar[Literal["intensity", "spatial", "temporal", "mixed"]] = "mixed"
    params_type = RandomApplyParams

    def __init__(self, transform: Transform[Any], p: float = 0.5) -> None:
        self.transform = _check_transform("transform", transform)
        self.p = probability("p", p)

    @property
    def batch_shared(self) -> bool:
        return self.transform.batch_shared

    def _wants_estimate(self) -> bool:
        return self.transform._wants_estimate()

    def _draw(self, dims: Dims, generator: torch.Generator) -> Tensor:
        n = 1 if self.batch_shared else dims[0]
        flags = uniform(generator, (n,), (0.0, 1.0)) < self.p
        return flags.expand(dims[0]).clone()

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> RandomApplyParams:
        applied = self._draw(dims, generator)
        inner = self.transform._sample(dims, generator, geometry) if bool(applied.any()) else None
        return RandomApplyParams(applied=applied, inner=inner)

    def _apply(self, x: Tensor, m: Tensor | None, params: RandomApplyParams) -> tuple[Tensor, Tensor | None]:
        applied = params.applied
        if applied.shape != (x.shape[0],):
            raise ShapeMismatchError(f"params.applied: expected shape ({x.shape[0]},), got {tuple(applied.shape)}")
        if params.inner is None or not bool(applied.any()):
            return x, m
        y, m2 = self.transform._apply(x, m, params.inner)
        if bool(applied.all()):
            return y, m2
        if y.shape != x.shape or (m is not None and (m2 is None or m2.shape != m.shape)):
            raise ShapeMismatchError(
                "params.applied: a transform that changes the clip shape must be applied to every clip of a batch"
            )
        y = _select(applied, y, x)
        if m is not None and m2 is not None:
            m2 = _select(applied, m2, m)
        return y, m2

    def _forward(
        self, x: Tensor, m: Tensor | None, generator: torch.Generator, geometry: ScanGeometry | None
    ) -> tuple[Tensor, Tensor | None, RandomApplyParams, ScanGeometry | None]:
        dims: Dims = tuple(x.shape)  # type: ignore[assignment]
        applied = self._draw(dims, generator)
        if not bool(applied.any()):
            return x, m, RandomApplyParams(applied=applied, inner=None), geometry
        _, _, inner, geo_after = self.transform._forward(x, m, generator, geometry)
        params = RandomApplyParams(applied=applied, inner=inner)
        y, m2 = self._apply(x, m, params)
        return y, m2, params, geo_after

    def _output_dims(self, dims: Dims, params: RandomApplyParams) -> Dims:
        return dims if params.inner is None else self.transform._output_dims(dims, params.inner)

    def _geometry_after(self, params: RandomApplyParams, geometry: ScanGeometry | None) -> ScanGeometry | None:
        return geometry if params.inner is None else self.transform._geometry_after(params.inner, geometry)


class OneOf(Transform[OneOfParams]):
    """Apply exactly one of several transforms per clip, chosen with the given weights.

    Example:
        >>> from medsam2kit.augment import GaussianBlur, Grayscale, OneOf
        >>> t = OneOf([GaussianBlur(), Grayscale()], weights=[0.5, 0.5])
        >>> t(torch.rand(4, 3, 16, 16), generator=torch.Generator().manual_seed(0)).params.choice.shape
        torch.Size([1])
    """

    kind: ClassVar[Literal["intensity", "spatial", "temporal", "mixed"]] = "mixed"
    params_type = OneOfParams

    def __init__(self, transforms: Sequence[Transform[Any]], weights: Sequence[float] | None = None) -> None:
        if isinstance(transforms, Transform) or not isinstance(transforms, Sequence) or len(transforms) == 0:
            raise InvalidInputError(f"transforms: expected a non-empty sequence of transforms, got {transforms!r}")
        self.transforms = tuple(_check_transform(f"transforms[{i}]", t) for i, t in enumerate(transforms))
        if weights is None:
            weights = [1.0] * len(self.transforms)
        w = [float(v) for v in weights]
        if len(w) != len(self.transforms) or any(not math.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
            raise InvalidInputError(
                f"weights: expected {len(self.transforms)} non-negative numbers with a positive sum, got {list(weights)!r}"
            )
        self.weights = tuple(v / sum(w) for v in w)

    @property
    def batch_shared(self) -> bool:
        return any(t.batch_shared for t in self.transforms)

    def _wants_estimate(self) -> bool:
        return any(t._wants_estimate() for t in self.transforms)

    def _draw(self, dims: Dims, generator: torch.Generator) -> Tensor:
        n = 1 if self.batch_shared else dims[0]
        u = uniform(generator, (n,), (0.0, 1.0)).to(torch.float64)
        edges = torch.tensor(self.weights, dtype=torch.float64).cumsum(0)[:-1]
        return torch.bucketize(u, edges, right=True).expand(dims[0]).clone()

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> OneOfParams:
        choice = self._draw(dims, generator)
        inner = tuple(
            t._sample(dims, generator, geometry) if bool((choice == i).any()) else None
            for i, t in enumerate(self.transforms)
        )
        return OneOfParams(choice=choice, inner=inner)

    def _apply(self, x: Tensor, m: Tensor | None, params: OneOfParams) -> tuple[Tensor, Tensor | None]:
        if params.choice.shape != (x.shape[0],) or len(params.inner) != len(self.transforms):
            raise ShapeMismatchError(
                f"params: expected choice of shape ({x.shape[0]},) and {len(self.transforms)} inner entries, "
                f"got {tuple(params.choice.shape)} and {len(params.inner)}"
            )
        y_out, m_out = x, m
        for i, (t, p) in enumerate(zip(self.transforms, params.inner)):
            flags = params.choice == i
            if p is None or not bool(flags.any()):
                continue
            y, m2 = t._apply(x, m, p)
            if bool(flags.all()):
                return y, m2
            y_out = _select(flags, y, y_out)
            if m_out is not None and m2 is not None:
                m_out = _select(flags, m2, m_out)
        return y_out, m_out

    def _output_dims(self, dims: Dims, params: OneOfParams) -> Dims:
        for t, p in zip(self.transforms, params.inner):
            if p is not None:
                return t._output_dims(dims, p)
        return dims

    def _geometry_after(self, params: OneOfParams, geometry: ScanGeometry | None) -> ScanGeometry | None:
        outs = {id(t): t._geometry_after(p, geometry) for t, p in zip(self.transforms, params.inner) if p is not None}
        values = list(outs.values())
        return values[0] if len(values) == 1 else (geometry if all(v == geometry for v in values) else None)
