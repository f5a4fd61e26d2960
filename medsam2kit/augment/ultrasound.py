"""The six ultrasound-specific augmentations: functional core plus thin transform classes.

All act inside the scan sector (:class:`~medsam2kit.augment.geometry.ScanGeometry`), with depth
``d`` in ``[0, 1]`` along the beam (radial for a fan) and lateral position ``u`` in ``[0, 1]``
across the beams. Parameters are drawn once per clip; only noise (speckle, haze) is redrawn per
frame, from a seed stored in the parameters, so ``apply`` is deterministic. Masks are never changed.

Example:
    >>> import torch
    >>> from medsam2kit.augment import DepthAttenuation
    >>> clip = torch.rand(8, 64, 64)
    >>> out = DepthAttenuation(rate=(1.0, 2.0), geometry="full")(clip, generator=torch.Generator().manual_seed(0))
    >>> out.image.shape
    torch.Size([8, 64, 64])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medsam2kit.augment._core import (
    Dims,
    GeometryAware,
    GeometrySpec,
    Params,
    bc,
    draw_seed,
    from_canonical,
    interval,
    log_uniform,
    per_clip,
    to_canonical,
    uniform,
)
from medsam2kit.augment.geometry import ScanGeometry, coordinates_for
from medsam2kit.errors import InvalidInputError, InvalidTypeError

__all__ = [
    "AcousticShadow",
    "AcousticShadowParams",
    "DepthAttenuation",
    "DepthAttenuationParams",
    "GainTGC",
    "GainTGCParams",
    "Haze",
    "HazeParams",
    "SpeckleNoise",
    "SpeckleNoiseParams",
    "SpeckleReduction",
    "SpeckleReductionParams",
    "acoustic_shadow",
    "bilateral_filter",
    "depth_attenuation",
    "gain_tgc",
    "haze",
    "speckle_noise",
    "speckle_reduction",
]


def _public(clip: Tensor, params: Params, fn: Callable[[Tensor, Params], Tensor], name: str) -> Tensor:
    """Run a canonical intensity function on a public clip and map it back."""
    if not isinstance(params, Params):
        raise InvalidTypeError(f"params: expected parameters for {name}, got {type(params).__name__}")
    x, _, layout = to_canonical(clip, None)
    return from_canonical(fn(x, params), None, layout)[0]


def _geometry(params: Params) -> ScanGeometry:
    geo = getattr(params, "geometry", None)
    if not isinstance(geo, ScanGeometry):
        raise InvalidTypeError(f"params.geometry: expected ScanGeometry, got {type(geo).__name__}")
    return geo


PT = TypeVar("PT", bound=Params)


def _expect(params: Params, cls: type[PT]) -> PT:
    if not isinstance(params, cls):
        raise InvalidTypeError(f"params: expected {cls.__name__}, got {type(params).__name__}")
    return params


def _noise_generator(seed: int, x: Tensor) -> torch.Generator:
    g = torch.Generator(device=x.device)
    g.manual_seed(int(seed))
    return g


def _uniform_noise(seed: int, shape: tuple[int, ...], x: Tensor) -> Tensor:
    """Uniform ``[0, 1)`` noise from a seed: numpy's PCG64 on CPU (faster than torch's MT19937 on
    CPU), a torch generator on other devices. A local generator each time; no global state."""
    if x.device.type == "cpu":
        arr = np.random.default_rng(int(seed)).random(size=shape, dtype=np.float32)
        return torch.from_numpy(arr).to(x.dtype)
    return torch.rand(shape, generator=_noise_generator(seed, x), device=x.device, dtype=x.dtype)


def _inplace_ok(*tensors: Tensor) -> bool:
    """Whether intermediate results may be updated in place (nothing needs a gradient)."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


# --------------------------------------------------------------------------------------------------
# depth attenuation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DepthAttenuationParams(Params):
    """Per clip: attenuation ``rate`` (B,) and ``floor`` (B,) in [0, 1); the scan geometry."""

    rate: Tensor
    floor: Tensor
    geometry: ScanGeometry


def _depth_attenuation(x: Tensor, params: Params) -> Tensor:
    params = _expect(params, DepthAttenuationParams)
    depth, _, inside = coordinates_for(_geometry(params), x)
    rate = bc(per_clip(params.rate, x, "rate"), 3)
    floor = bc(per_clip(params.floor, x, "floor"), 3)
    gain = (1.0 - floor) * torch.exp(-rate * depth.clamp(min=0.0)) + floor  # (B, H, W)
    gain = torch.where(inside, gain, torch.ones_like(gain))
    return x * gain[:, None, None]


def depth_attenuation(clip: Tensor, params: DepthAttenuationParams) -> Tensor:
    """Depth attenuation: ``I' = I * ((1 - floor) * exp(-rate * d) + floor)`` inside the sector.

    ``d`` is the normalised depth along the beam (0 at the top of the sector, 1 at its bottom).
    ``rate = 0`` is the identity. Same model as usaugment's ``DepthAttenuation`` (Ostvik et al.
    2021), whose ``max_attenuation`` is our ``floor``.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`DepthAttenuation.sample`.

    Returns:
        The attenuated clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> from medsam2kit.augment import ScanGeometry
        >>> p = DepthAttenuationParams(torch.tensor([1.0]), torch.tensor([0.0]), ScanGeometry.full(3, 1))
        >>> depth_attenuation(torch.ones(1, 3, 1), p)[0, :, 0]
        tensor([1.0000, 0.6065, 0.3679])
    """
    if not isinstance(params, DepthAttenuationParams):
        raise InvalidTypeError(f"params: expected DepthAttenuationParams, got {type(params).__name__}")
    return _public(clip, params, _depth_attenuation, "depth_attenuation")


class DepthAttenuation(GeometryAware[DepthAttenuationParams]):
    """Random depth attenuation (see :func:`depth_attenuation`).

    Args:
        rate: attenuation rate ``>= 0`` or a ``(min, max)`` range (uniform).
        floor: the value the gain decays towards, in ``[0, 1)``, or a range.
        geometry: a :class:`ScanGeometry`, ``"estimate"`` or ``"full"``.

    Example:
        >>> import torch
        >>> t = DepthAttenuation(rate=(0.5, 2.0), geometry="full")
        >>> t(torch.rand(4, 32, 32), generator=torch.Generator().manual_seed(0)).params.rate.shape
        torch.Size([1])
    """

    params_type = DepthAttenuationParams

    def __init__(
        self,
        rate: float | tuple[float, float] = (0.0, 3.0),
        floor: float | tuple[float, float] = 0.0,
        *,
        geometry: GeometrySpec = "estimate",
    ) -> None:
        super().__init__(geometry)
        self.rate = interval("rate", rate, lo=0.0, hi=50.0)
        self.floor = interval("floor", floor, lo=0.0, hi=0.999)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> DepthAttenuationParams:
        b = dims[0]
        return DepthAttenuationParams(
            rate=uniform(generator, (b,), self.rate),
            floor=uniform(generator, (b,), self.floor),
            geometry=self._resolve(dims, geometry),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: DepthAttenuationParams) -> tuple[Tensor, Tensor | None]:
        return _depth_attenuation(x, params), m


# --------------------------------------------------------------------------------------------------
# acoustic shadow
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AcousticShadowParams(Params):
    """Per clip (B,): beam position ``center`` and ``width`` (fractions of the sector width), the
    ``start`` depth of the occluder, ``strength`` in [0, 1], edge ``softness`` in [0, 1]; geometry."""

    center: Tensor
    width: Tensor
    start: Tensor
    strength: Tensor
    softness: Tensor
    geometry: ScanGeometry


_SHADOW_RAMP = 0.05  # depth over which the shadow reaches full strength below the occluder


def _shadow_map(x: Tensor, params: AcousticShadowParams) -> Tensor:
    depth, lateral, inside = coordinates_for(_geometry(params), x)
    c = bc(per_clip(params.center, x, "center"), 3)
    half = bc(per_clip(params.width, x, "width"), 3) * 0.5
    start = bc(per_clip(params.start, x, "start"), 3)
    strength = bc(per_clip(params.strength, x, "strength"), 3)
    soft = bc(per_clip(params.softness, x, "softness"), 3)
    across = ((half - (lateral - c).abs()) / (soft * half + 1e-6)).clamp(0.0, 1.0)
    along = ((depth - start) / _SHADOW_RAMP).clamp(0.0, 1.0)
    shade = 1.0 - strength * across * along
    return torch.where(inside, shade, torch.ones_like(shade))


def _acoustic_shadow(x: Tensor, params: Params) -> Tensor:
    params = _expect(params, AcousticShadowParams)
    return x * _shadow_map(x, params)[:, None, None]


def acoustic_shadow(clip: Tensor, params: AcousticShadowParams) -> Tensor:
    """Acoustic shadow cast along the beams below an occluder.

    ``I' = I * (1 - strength * a(u) * b(d))`` inside the sector, with the lateral profile
    ``a(u) = clip((width/2 - |u - center|) / (softness * width/2), 0, 1)`` (zero outside the beam band
    ``|u - center| < width/2``, tapered edges) and the depth ramp ``b(d) = clip((d - start) / 0.05,
    0, 1)`` (zero above the occluder). For a fan the band is a wedge from the apex.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`AcousticShadow.sample`.

    Returns:
        The shadowed clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> from medsam2kit.augment import ScanGeometry
        >>> one = torch.tensor([1.0])
        >>> p = AcousticShadowParams(one * 0.5, one * 0.4, one * 0.5, one, one * 0.01, ScanGeometry.full(11, 11))
        >>> out = acoustic_shadow(torch.ones(1, 11, 11), p)
        >>> float(out[0, 10, 5]), float(out[0, 2, 5]), float(out[0, 10, 0])
        (0.0, 1.0, 1.0)
    """
    if not isinstance(params, AcousticShadowParams):
        raise InvalidTypeError(f"params: expected AcousticShadowParams, got {type(params).__name__}")
    return _public(clip, params, _acoustic_shadow, "acoustic_shadow")


class AcousticShadow(GeometryAware[AcousticShadowParams]):
    """Random acoustic shadow (see :func:`acoustic_shadow`).

    Args:
        center: lateral position of the occluder, fraction of the sector width, or a range.
        width: width of the shadow band, fraction of the sector width in ``(0, 1]``, or a range.
        start: depth of the occluder in ``[0, 1]``, or a range.
        strength: darkening in ``[0, 1]`` (1 = black), or a range.
        softness: fraction of the band's half-width used to taper its edges, in ``(0, 1]``.
        geometry: a :class:`ScanGeometry`, ``"estimate"`` or ``"full"``.

    Example:
        >>> import torch
        >>> out = AcousticShadow(geometry="full")(torch.rand(4, 32, 32), generator=torch.Generator().manual_seed(0))
        >>> sorted(out.params.to_dict())[:3]
        ['center', 'geometry', 'softness']
    """

    params_type = AcousticShadowParams

    def __init__(
        self,
        center: float | tuple[float, float] = (0.1, 0.9),
        width: float | tuple[float, float] = (0.05, 0.25),
        start: float | tuple[float, float] = (0.1, 0.7),
        strength: float | tuple[float, float] = (0.25, 0.8),
        softness: float | tuple[float, float] = 0.3,
        *,
        geometry: GeometrySpec = "estimate",
    ) -> None:
        super().__init__(geometry)
        self.center = interval("center", center, lo=0.0, hi=1.0)
        self.width = interval("width", width, lo=1e-3, hi=1.0)
        self.start = interval("start", start, lo=0.0, hi=1.0)
        self.strength = interval("strength", strength, lo=0.0, hi=1.0)
        self.softness = interval("softness", softness, lo=1e-3, hi=1.0)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> AcousticShadowParams:
        b = dims[0]
        return AcousticShadowParams(
            center=uniform(generator, (b,), self.center),
            width=uniform(generator, (b,), self.width),
            start=uniform(generator, (b,), self.start),
            strength=uniform(generator, (b,), self.strength),
            softness=uniform(generator, (b,), self.softness),
            geometry=self._resolve(dims, geometry),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: AcousticShadowParams) -> tuple[Tensor, Tensor | None]:
        return _acoustic_shadow(x, params), m


# --------------------------------------------------------------------------------------------------
# haze / reverberation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class HazeParams(Params):
    """Per clip (B,): haze ``amplitude``, band ``depth`` and ``sigma``; reverberation ``echoes`` (int)
    and ``decay``; the noise ``seed`` and whether noise is redrawn ``per_frame``; geometry."""

    amplitude: Tensor
    depth: Tensor
    sigma: Tensor
    echoes: int
    decay: float
    seed: int
    per_frame: bool
    geometry: ScanGeometry


def _haze(x: Tensor, params: Params) -> Tensor:
    params = _expect(params, HazeParams)
    b, t, _, h, w = x.shape
    depth, _, inside = coordinates_for(_geometry(params), x)
    amp = bc(per_clip(params.amplitude, x, "amplitude"), 3)
    centre = bc(per_clip(params.depth, x, "depth"), 3)
    sigma = bc(per_clip(params.sigma, x, "sigma"), 3).clamp(min=1e-4)
    inv = -0.5 / (sigma * sigma)
    band = torch.exp((depth - centre).square() * inv)
    for k in range(2, 2 + int(params.echoes)):
        band = band + float(params.decay) ** (k - 1) * torch.exp((depth - k * centre).square() * inv)
    band = amp * torch.where(inside, band, torch.zeros_like(band))  # (B, H, W)
    frames = t if params.per_frame else 1
    noise = _uniform_noise(params.seed, (b, frames, 1, h, w), x)
    if _inplace_ok(x, band) and noise.shape == x.shape:
        return noise.mul_(band[:, None, None]).add_(x).clamp_(0.0, 1.0)
    return (x + noise * band[:, None, None]).clamp(0.0, 1.0)


def haze(clip: Tensor, params: HazeParams) -> Tensor:
    """Haze / reverberation: a noisy bright band at a given depth, plus optional echoes.

    ``I' = clip(I + a * n * sum_k decay^(k-1) * exp(-(d - k*depth)^2 / (2 sigma^2)), 0, 1)`` inside
    the sector, ``k = 1 .. 1 + echoes``, ``n ~ U(0, 1)`` per pixel (redrawn per frame when
    ``per_frame``). With ``a = 0.5`` and no echoes this is usaugment's ``HazeArtifact``.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`Haze.sample`.

    Returns:
        The hazy clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> from medsam2kit.augment import ScanGeometry
        >>> one = torch.tensor([1.0])
        >>> p = HazeParams(one * 0.0, one * 0.3, one * 0.1, 0, 0.5, 0, True, ScanGeometry.full(8, 8))
        >>> bool((haze(torch.full((2, 8, 8), 0.5), p) == 0.5).all())
        True
    """
    if not isinstance(params, HazeParams):
        raise InvalidTypeError(f"params: expected HazeParams, got {type(params).__name__}")
    return _public(clip, params, _haze, "haze")


class Haze(GeometryAware[HazeParams]):
    """Random haze / reverberation band (see :func:`haze`).

    Args:
        amplitude: peak added intensity in ``[0, 1]``, or a range.
        depth: band depth in ``[0, 1]``, or a range.
        sigma: band width (standard deviation, in normalised depth) in ``(0, 1]``, or a range.
        echoes: number of reverberation echoes at multiples of ``depth`` (fixed int >= 0).
        decay: amplitude factor from one echo to the next, in ``[0, 1]``.
        per_frame_noise: redraw the haze noise for every frame (True) or once per clip.
        geometry: a :class:`ScanGeometry`, ``"estimate"`` or ``"full"``.

    Example:
        >>> import torch
        >>> out = Haze(geometry="full")(torch.rand(4, 32, 32), generator=torch.Generator().manual_seed(0))
        >>> out.params.per_frame
        True
    """

    params_type = HazeParams

    def __init__(
        self,
        amplitude: float | tuple[float, float] = 0.5,
        depth: float | tuple[float, float] = (0.05, 0.95),
        sigma: float | tuple[float, float] = (0.01, 0.1),
        *,
        echoes: int = 0,
        decay: float = 0.5,
        per_frame_noise: bool = True,
        geometry: GeometrySpec = "estimate",
    ) -> None:
        super().__init__(geometry)
        self.amplitude = interval("amplitude", amplitude, lo=0.0, hi=1.0)
        self.depth = interval("depth", depth, lo=0.0, hi=1.0)
        self.sigma = interval("sigma", sigma, lo=1e-4, hi=1.0)
        if isinstance(echoes, bool) or not isinstance(echoes, int) or not 0 <= echoes <= 8:
            raise InvalidInputError(f"echoes: expected an int in [0, 8], got {echoes!r}")
        self.echoes = echoes
        self.decay = interval("decay", decay, lo=0.0, hi=1.0)[0]
        self.per_frame_noise = bool(per_frame_noise)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> HazeParams:
        b = dims[0]
        return HazeParams(
            amplitude=uniform(generator, (b,), self.amplitude),
            depth=uniform(generator, (b,), self.depth),
            sigma=uniform(generator, (b,), self.sigma),
            echoes=self.echoes,
            decay=self.decay,
            seed=draw_seed(generator),
            per_frame=self.per_frame_noise,
            geometry=self._resolve(dims, geometry),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: HazeParams) -> tuple[Tensor, Tensor | None]:
        return _haze(x, params), m


# --------------------------------------------------------------------------------------------------
# multiplicative speckle noise
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SpeckleNoiseParams(Params):
    """Per clip (B,): noise ``strength`` in [0, 1] and gamma ``shape``; the ``distribution``, noise
    ``seed``, ``per_frame`` flag and geometry."""

    strength: Tensor
    shape: Tensor
    distribution: Literal["rayleigh", "gamma"]
    seed: int
    per_frame: bool
    geometry: ScanGeometry


_RAYLEIGH_MEAN = math.sqrt(math.pi / 2.0)


def _unit_mean_noise(x: Tensor, params: SpeckleNoiseParams) -> Tensor:
    b, t, _, h, w = x.shape
    shape = (b, t if params.per_frame else 1, 1, h, w)
    if params.distribution == "rayleigh":
        u = _uniform_noise(params.seed, shape, x)  # [0, 1)
        # R = sqrt(-2 ln(1 - u)) is Rayleigh(1); divide by its mean sqrt(pi/2)
        return u.neg_().add_(1.0).log_().mul_(-2.0 / _RAYLEIGH_MEAN**2).sqrt_()
    k = per_clip(params.shape, x, "shape")
    if x.device.type == "cpu":
        kk = k.detach().cpu().numpy().astype(np.float64).reshape(b, 1, 1, 1, 1)
        arr = np.random.default_rng(int(params.seed)).standard_gamma(np.broadcast_to(kk, shape), size=shape)
        return torch.from_numpy((arr / kk).astype(np.float32)).to(x.dtype)
    ke = bc(k, 5).expand(shape).contiguous()
    return torch._standard_gamma(ke, generator=_noise_generator(params.seed, x)) / ke


def _speckle_noise(x: Tensor, params: Params) -> Tensor:
    params = _expect(params, SpeckleNoiseParams)
    if params.distribution not in ("rayleigh", "gamma"):
        raise InvalidInputError(f"params.distribution: expected 'rayleigh' or 'gamma', got {params.distribution!r}")
    _, _, inside = coordinates_for(_geometry(params), x)
    s = bc(per_clip(params.strength, x, "strength"), 3) * inside  # (B, H, W), 0 outside the sector
    factor = _unit_mean_noise(x, params).sub_(1.0).mul_(s[:, None, None]).add_(1.0)
    if _inplace_ok(x, s) and factor.shape == x.shape:
        return factor.mul_(x).clamp_(0.0, 1.0)
    return (x * factor).clamp(0.0, 1.0)


def speckle_noise(clip: Tensor, params: SpeckleNoiseParams) -> Tensor:
    """Multiplicative speckle: ``I' = clip(I * (1 + s * (n - 1)), 0, 1)`` inside the sector.

    ``n`` has unit mean, so the local mean is kept (up to clipping): Rayleigh ``n = R / E[R]``
    (fully developed speckle, coefficient of variation 0.52) or gamma with shape ``k`` and scale
    ``1/k`` (variance ``1/k``). Redrawn per frame when ``per_frame``; ``s = 0`` is the identity.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`SpeckleNoise.sample`.

    Returns:
        The noisy clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> from medsam2kit.augment import ScanGeometry
        >>> one = torch.tensor([1.0])
        >>> p = SpeckleNoiseParams(one, one * 4, "rayleigh", 0, True, ScanGeometry.full(256, 256))
        >>> round(float(speckle_noise(torch.full((4, 256, 256), 0.25), p).mean()), 2)
        0.25
    """
    if not isinstance(params, SpeckleNoiseParams):
        raise InvalidTypeError(f"params: expected SpeckleNoiseParams, got {type(params).__name__}")
    return _public(clip, params, _speckle_noise, "speckle_noise")


class SpeckleNoise(GeometryAware[SpeckleNoiseParams]):
    """Random multiplicative speckle noise (see :func:`speckle_noise`).

    Args:
        strength: in ``[0, 1]``, or a range.
        distribution: ``"rayleigh"`` or ``"gamma"``.
        shape: gamma shape ``k > 0`` (ignored for Rayleigh), or a range.
        per_frame_noise: redraw the noise for every frame (True) or once per clip.
        geometry: a :class:`ScanGeometry`, ``"estimate"`` or ``"full"``.

    Example:
        >>> import torch
        >>> out = SpeckleNoise(distribution="gamma", geometry="full")(torch.rand(2, 16, 16))
        >>> out.params.distribution
        'gamma'
    """

    params_type = SpeckleNoiseParams

    def __init__(
        self,
        strength: float | tuple[float, float] = (0.1, 0.6),
        *,
        distribution: Literal["rayleigh", "gamma"] = "rayleigh",
        shape: float | tuple[float, float] = (2.0, 10.0),
        per_frame_noise: bool = True,
        geometry: GeometrySpec = "estimate",
    ) -> None:
        super().__init__(geometry)
        self.strength = interval("strength", strength, lo=0.0, hi=1.0)
        if distribution not in ("rayleigh", "gamma"):
            raise InvalidInputError(f"distribution: expected 'rayleigh' or 'gamma', got {distribution!r}")
        self.distribution: Literal["rayleigh", "gamma"] = distribution
        self.shape = interval("shape", shape, lo=1e-2, hi=1e4)
        self.per_frame_noise = bool(per_frame_noise)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> SpeckleNoiseParams:
        b = dims[0]
        return SpeckleNoiseParams(
            strength=uniform(generator, (b,), self.strength),
            shape=uniform(generator, (b,), self.shape),
            distribution=self.distribution,
            seed=draw_seed(generator),
            per_frame=self.per_frame_noise,
            geometry=self._resolve(dims, geometry),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: SpeckleNoiseParams) -> tuple[Tensor, Tensor | None]:
        return _speckle_noise(x, params), m


# --------------------------------------------------------------------------------------------------
# speckle reduction (bilateral filter)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SpeckleReductionParams(Params):
    """Per clip (B,): bilateral ``sigma_spatial`` (pixels) and ``sigma_color`` (intensity); the
    odd ``window`` size, the number of ``iterations`` and the geometry."""

    sigma_spatial: Tensor
    sigma_color: Tensor
    window: int
    iterations: int
    geometry: ScanGeometry


def bilateral_filter(x: Tensor, sigma_spatial: Tensor, sigma_color: Tensor, window: int) -> Tensor:
    """Bilateral filter of a canonical clip ``(B, T, C, H, W)`` with per-clip sigmas ``(B,)``.

    ``out(p) = sum_q w(p, q) I(q) / sum_q w(p, q)`` over the ``window x window`` neighbourhood
    (reflect padding), ``w = exp(-|p - q|^2 / (2 sigma_s^2) - |I(p) - I(q)|^2 / (2 sigma_c^2))``
    (colour distance over channels). Vectorised over B, T and C. The weight is symmetric,
    ``w(p, p + o) = w(p + o, p)``, so one exponential per pair of opposite offsets serves both;
    offsets whose spatial weight is below ``exp(-17)`` (under float32 resolution) for every clip
    are skipped; without autograd, frames are processed in cache-sized chunks, in place.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 2, 1, 16, 16)
        >>> y = bilateral_filter(x, torch.tensor([1.0]), torch.tensor([10.0]), 3)
        >>> y.shape
        torch.Size([1, 2, 1, 16, 16])
    """
    b, t, c, h, w = x.shape
    r = window // 2
    if r == 0:
        return x
    inv_c = (-0.5 / sigma_color.clamp(min=1e-4).square()).repeat_interleave(t)  # (N,)
    inv_s = (-0.5 / sigma_spatial.clamp(min=1e-4).square()).repeat_interleave(t)
    flat = x.reshape(b * t, c, h, w)
    if not _inplace_ok(x, sigma_color, sigma_spatial):
        return _bilateral_frames(flat, inv_s, inv_c, r, inplace=False).reshape(x.shape)
    step = max(1, (1 << 19) // max(1, c * h * w))  # about 2 MB of float32 per chunk
    out = torch.empty_like(flat)
    for i in range(0, b * t, step):
        out[i : i + step] = _bilateral_frames(flat[i : i + step], inv_s[i : i + step], inv_c[i : i + step], r,
                                              inplace=True)
    return out.reshape(x.shape)


def _bilateral_frames(x: Tensor, inv_s: Tensor, inv_c: Tensor, r: int, *, inplace: bool) -> Tensor:
    """Bilateral filter of frames ``(N, C, H, W)`` with per-frame ``-1/(2 sigma^2)`` factors ``(N,)``."""
    n, c, h, w = x.shape
    mode = "reflect" if r < min(h, w) else "replicate"
    pad = F.pad(x, (r, r, r, r), mode=mode)
    kc = inv_c.reshape(n, 1, 1, 1)
    num = x.clone()  # the centre pixel has weight 1
    den = torch.ones((n, 1, h, w), device=x.device, dtype=x.dtype)
    work = torch.empty((n, c, h + r, w + 2 * r), device=x.device, dtype=x.dtype) if inplace else None
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx <= 0:
                continue
            log_s = inv_s * float(dy * dy + dx * dx)  # (N,)
            if float(log_s.max()) < -17.0:
                continue
            ks = log_s.reshape(n, 1, 1, 1)
            dxp, dxn = max(dx, 0), max(-dx, 0)
            # W[q] = w(q, q + o) for q over rows [r - dy, r + h), cols [r - dxp, r + w + dxn)
            base = pad[..., r - dy : r + h, r - dxp : r + w + dxn]
            ahead = pad[..., r : r + h + dy, r - dxp + dx : r + w + dxn + dx]
            if work is not None:
                diff = torch.sub(ahead, base, out=work[..., : h + dy, : w + dxp + dxn])
                dist = diff.square_() if c == 1 else diff.square_().sum(1, keepdim=True)
                wgt = dist.mul_(kc).add_(ks).exp_()
            else:
                diff = ahead - base
                dist = diff.square() if c == 1 else diff.square().sum(1, keepdim=True)
                wgt = torch.exp(dist * kc + ks)
            w_fwd = wgt[..., dy : dy + h, dxp : dxp + w]  # weight of p + o for pixel p
            w_bwd = wgt[..., 0:h, dxn : dxn + w]  # weight of p - o for pixel p
            v_fwd = pad[..., r + dy : r + dy + h, r + dx : r + dx + w]
            v_bwd = pad[..., r - dy : r - dy + h, r - dx : r - dx + w]
            if inplace:
                num.addcmul_(w_fwd, v_fwd).addcmul_(w_bwd, v_bwd)
                den.add_(w_fwd).add_(w_bwd)
            else:
                num = num + w_fwd * v_fwd + w_bwd * v_bwd
                den = den + w_fwd + w_bwd
    return num.div_(den) if inplace else num / den


def _speckle_reduction(x: Tensor, params: Params) -> Tensor:
    params = _expect(params, SpeckleReductionParams)
    window = int(params.window)
    if window < 1 or window % 2 == 0:
        raise InvalidInputError(f"params.window: expected an odd int >= 1, got {params.window!r}")
    _, _, inside = coordinates_for(_geometry(params), x)
    ss = per_clip(params.sigma_spatial, x, "sigma_spatial")
    sc = per_clip(params.sigma_color, x, "sigma_color")
    y = x
    for _ in range(int(params.iterations)):
        y = bilateral_filter(y, ss, sc, window)
    return torch.where(inside, y, x)


def speckle_reduction(clip: Tensor, params: SpeckleReductionParams) -> Tensor:
    """Speckle reduction by an edge-preserving bilateral filter inside the sector.

    See :func:`bilateral_filter` for the formula; ``iterations`` repeats it. The same filter as
    usaugment's ``SpeckleReduction`` (scikit-image ``denoise_bilateral``), which pads with zeros
    where we reflect.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`SpeckleReduction.sample`.

    Returns:
        The smoothed clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> from medsam2kit.augment import ScanGeometry
        >>> one = torch.tensor([1.0])
        >>> p = SpeckleReductionParams(one, one * 0.1, 5, 1, ScanGeometry.full(32, 32))
        >>> x = torch.rand(2, 32, 32)
        >>> bool(speckle_reduction(x, p).std() < x.std())
        True
    """
    if not isinstance(params, SpeckleReductionParams):
        raise InvalidTypeError(f"params: expected SpeckleReductionParams, got {type(params).__name__}")
    return _public(clip, params, _speckle_reduction, "speckle_reduction")


class SpeckleReduction(GeometryAware[SpeckleReductionParams]):
    """Random speckle reduction (see :func:`speckle_reduction`).

    Args:
        sigma_spatial: spatial sigma in pixels (> 0), or a range.
        sigma_color: intensity sigma (> 0, on the [0, 1] scale), or a range.
        window: odd window size (usaugment: 5).
        iterations: number of filter passes (>= 1).
        geometry: a :class:`ScanGeometry`, ``"estimate"`` or ``"full"``.

    Example:
        >>> import torch
        >>> out = SpeckleReduction(geometry="full")(torch.rand(2, 16, 16))
        >>> out.params.window
        5
    """

    params_type = SpeckleReductionParams

    def __init__(
        self,
        sigma_spatial: float | tuple[float, float] = (0.1, 2.0),
        sigma_color: float | tuple[float, float] = (0.01, 1.0),
        *,
        window: int = 5,
        iterations: int = 1,
        geometry: GeometrySpec = "estimate",
    ) -> None:
        super().__init__(geometry)
        self.sigma_spatial = interval("sigma_spatial", sigma_spatial, lo=1e-3, hi=100.0)
        self.sigma_color = interval("sigma_color", sigma_color, lo=1e-4, hi=100.0)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0 or window > 31:
            raise InvalidInputError(f"window: expected an odd int in [1, 31], got {window!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= 20:
            raise InvalidInputError(f"iterations: expected an int in [1, 20], got {iterations!r}")
        self.window = window
        self.iterations = iterations

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> SpeckleReductionParams:
        b = dims[0]
        return SpeckleReductionParams(
            sigma_spatial=uniform(generator, (b,), self.sigma_spatial),
            sigma_color=uniform(generator, (b,), self.sigma_color),
            window=self.window,
            iterations=self.iterations,
            geometry=self._resolve(dims, geometry),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: SpeckleReductionParams) -> tuple[Tensor, Tensor | None]:
        return _speckle_reduction(x, params), m


# --------------------------------------------------------------------------------------------------
# gain / time-gain compensation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GainTGCParams(Params):
    """Per clip: overall ``gain`` (B,) and TGC control gains ``tgc`` (B, K) at depths
    ``linspace(0, 1, K)``; geometry."""

    gain: Tensor
    tgc: Tensor
    geometry: ScanGeometry


def _tgc_curve(x: Tensor, params: GainTGCParams) -> Tensor:
    depth, _, inside = coordinates_for(_geometry(params), x)
    gain = per_clip(params.gain, x, "gain")
    tgc = per_clip(params.tgc, x, "tgc")
    if tgc.ndim != 2 or tgc.shape[1] < 1:
        raise InvalidInputError(f"params.tgc: expected shape (B, K) with K >= 1, got {tuple(tgc.shape)}")
    b, k = tgc.shape
    if k == 1:
        curve = tgc[:, :1, None].expand(b, *depth.shape)
    else:
        pos = depth.clamp(0.0, 1.0) * (k - 1)
        lo = pos.floor().clamp(max=k - 2).long()
        frac = pos - lo
        left = tgc[:, lo]  # (B, H, W)
        right = tgc[:, lo + 1]
        curve = left + (right - left) * frac
    curve = curve * bc(gain, 3)
    return torch.where(inside, curve, torch.ones_like(curve))


def _gain_tgc(x: Tensor, params: Params) -> Tensor:
    params = _expect(params, GainTGCParams)
    return (x * _tgc_curve(x, params)[:, None, None]).clamp(0.0, 1.0)


def gain_tgc(clip: Tensor, params: GainTGCParams) -> Tensor:
    """Gain and time-gain-compensation change: ``I' = clip(I * g * c(d), 0, 1)`` inside the sector.

    ``c`` interpolates the control gains ``tgc[k]`` linearly at depths ``k / (K - 1)`` (the TGC
    sliders of a scanner); ``g`` is the overall gain. All ones is the identity.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`GainTGC.sample`.

    Returns:
        The re-gained clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> from medsam2kit.augment import ScanGeometry
        >>> p = GainTGCParams(torch.tensor([1.0]), torch.tensor([[0.5, 1.0]]), ScanGeometry.full(3, 1))
        >>> gain_tgc(torch.full((1, 3, 1), 0.5), p)[0, :, 0]
        tensor([0.2500, 0.3750, 0.5000])
    """
    if not isinstance(params, GainTGCParams):
        raise InvalidTypeError(f"params: expected GainTGCParams, got {type(params).__name__}")
    return _public(clip, params, _gain_tgc, "gain_tgc")


class GainTGC(GeometryAware[GainTGCParams]):
    """Random overall gain and depth-dependent TGC curve (see :func:`gain_tgc`).

    Args:
        gain: overall gain factor (> 0), or a range (log-uniform).
        tgc: range of each control gain (> 0, log-uniform, drawn independently per control point).
        points: number K of TGC control points (>= 1).
        geometry: a :class:`ScanGeometry`, ``"estimate"`` or ``"full"``.

    Example:
        >>> import torch
        >>> out = GainTGC(points=4, geometry="full")(torch.rand(2, 16, 16))
        >>> out.params.tgc.shape
        torch.Size([1, 4])
    """

    params_type = GainTGCParams

    def __init__(
        self,
        gain: float | tuple[float, float] = (0.8, 1.25),
        tgc: float | tuple[float, float] = (0.7, 1.4),
        *,
        points: int = 5,
        geometry: GeometrySpec = "estimate",
    ) -> None:
        super().__init__(geometry)
        self.gain = interval("gain", gain, lo=1e-3, hi=100.0)
        self.tgc = interval("tgc", tgc, lo=1e-3, hi=100.0)
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 64:
            raise InvalidInputError(f"points: expected an int in [1, 64], got {points!r}")
        self.points = points

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> GainTGCParams:
        b = dims[0]
        return GainTGCParams(
            gain=log_uniform(generator, (b,), self.gain),
            tgc=log_uniform(generator, (b, self.points), self.tgc),
            geometry=self._resolve(dims, geometry),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: GainTGCParams) -> tuple[Tensor, Tensor | None]:
        return _gain_tgc(x, params), m
