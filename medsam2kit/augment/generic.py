"""Generic transforms: horizontal flip, affine, colour jitter (brightness/contrast/saturation/gamma),
Gaussian blur, grayscale. Spatial ones move the masks with nearest-neighbour sampling (values kept
exactly, so binary masks stay binary); intensity ones leave masks untouched.

Example:
    >>> import torch
    >>> from medsam2kit.augment import Affine
    >>> clip, mask = torch.rand(4, 32, 32), torch.zeros(4, 32, 32, dtype=torch.bool)
    >>> out = Affine(degrees=25, shear=20)(clip, mask, generator=torch.Generator().manual_seed(0))
    >>> out.mask.dtype
    torch.bool
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from medsam2kit.augment._core import (
    Dims,
    NoParams,
    Params,
    Transform,
    from_canonical,
    interval,
    per_clip,
    to_canonical,
    uniform,
)
from medsam2kit.augment.geometry import ScanGeometry
from medsam2kit.errors import InvalidInputError, InvalidTypeError

__all__ = [
    "Affine",
    "AffineParams",
    "ColorJitter",
    "ColorJitterParams",
    "GaussianBlur",
    "GaussianBlurParams",
    "Grayscale",
    "HorizontalFlip",
    "affine",
    "color_jitter",
    "gaussian_blur",
    "grayscale",
    "hflip",
]

_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------------
# horizontal flip
# --------------------------------------------------------------------------------------------------


def hflip(clip: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Mirror every frame (and mask) left-right.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``.
        mask: matching masks or ``None``.

    Returns:
        ``(clip, mask)`` flipped, same layouts and dtypes.

    Example:
        >>> import torch
        >>> hflip(torch.tensor([[[0.0, 1.0]]]))[0]
        tensor([[[1., 0.]]])
    """
    x, m, layout = to_canonical(clip, mask)
    return from_canonical(x.flip(-1), None if m is None else m.flip(-1), layout)


class HorizontalFlip(Transform[NoParams]):
    """Always flips left-right; wrap it in :class:`RandomApply` for a probability.

    Example:
        >>> import torch
        >>> HorizontalFlip()(torch.tensor([[[0.0, 1.0]]])).image
        tensor([[[1., 0.]]])
    """

    kind = "spatial"
    params_type = NoParams

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> NoParams:
        return NoParams()

    def _apply(self, x: Tensor, m: Tensor | None, params: NoParams) -> tuple[Tensor, Tensor | None]:
        return x.flip(-1), None if m is None else m.flip(-1)


# --------------------------------------------------------------------------------------------------
# affine
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AffineParams(Params):
    """Per clip (B,): rotation ``angle`` (degrees, counter-clockwise as displayed), ``shear_x`` and
    ``shear_y`` (degrees), ``scale``, translation ``tx``/``ty`` (fractions of width/height);
    image ``interpolation``."""

    angle: Tensor
    shear_x: Tensor
    shear_y: Tensor
    scale: Tensor
    tx: Tensor
    ty: Tensor
    interpolation: Literal["bilinear", "nearest"]


def affine_matrix(params: AffineParams, height: int, width: int) -> Tensor:
    """Forward affine maps ``(B, 3, 3)`` (float64) in pixel coordinates centred on the image.

    ``A = Translate(tx W, ty H) @ Rotate(angle) @ Shear(shear_x, shear_y) @ Scale(scale)``.

    Example:
        >>> import torch
        >>> z = torch.zeros(1)
        >>> p = AffineParams(z, z, z, torch.ones(1), z, z, "bilinear")
        >>> affine_matrix(p, 8, 8)[0].diagonal().tolist()
        [1.0, 1.0, 1.0]
    """
    a = torch.deg2rad(params.angle.double())
    sx = torch.tan(torch.deg2rad(params.shear_x.double()))
    sy = torch.tan(torch.deg2rad(params.shear_y.double()))
    s = params.scale.double()
    b = a.shape[0]
    eye = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    rot, shear, scale, trans = eye.clone(), eye.clone(), eye.clone(), eye.clone()
    cos, sin = torch.cos(a), torch.sin(a)
    # y points down, so a counter-clockwise rotation on screen is [[cos, sin], [-sin, cos]]
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, sin, -sin, cos
    shear[:, 0, 1], shear[:, 1, 0] = sx, sy
    scale[:, 0, 0], scale[:, 1, 1] = s, s
    trans[:, 0, 2], trans[:, 1, 2] = params.tx.double() * width, params.ty.double() * height
    return trans @ rot @ shear @ scale


def _affine_grid(params: AffineParams, x: Tensor) -> Tensor:
    b, t, _, h, w = x.shape
    for name in ("angle", "shear_x", "shear_y", "scale", "tx", "ty"):
        per_clip(getattr(params, name), x, name)
    forward = affine_matrix(params, h, w)
    norm = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0], dtype=torch.float64))
    theta = torch.linalg.inv(norm) @ torch.linalg.inv(forward) @ norm  # output -> input, normalised
    grid = F.affine_grid(theta[:, :2].to(x.dtype if x.is_floating_point() else torch.float32), [b, 1, h, w], align_corners=False)
    return grid.to(x.device)[:, None].expand(b, t, h, w, 2).reshape(b * t, h, w, 2)


def _warp_mask(m: Tensor, grid: Tensor) -> Tensor:
    b, t, k, h, w = m.shape
    mf = m.reshape(b * t, k, h, w).to(grid.dtype)
    out = F.grid_sample(mf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out = out.reshape(b, t, k, h, w)
    if m.dtype == torch.bool:
        return out > 0.5
    if m.is_floating_point():
        return out.to(m.dtype)
    return out.round().to(m.dtype)


def _affine(x: Tensor, m: Tensor | None, params: AffineParams) -> tuple[Tensor, Tensor | None]:
    if params.interpolation not in ("bilinear", "nearest"):
        raise InvalidInputError(f"params.interpolation: expected 'bilinear' or 'nearest', got {params.interpolation!r}")
    b, t, c, h, w = x.shape
    grid = _affine_grid(params, x)
    y = F.grid_sample(
        x.reshape(b * t, c, h, w), grid, mode=params.interpolation, padding_mode="zeros", align_corners=False
    ).reshape(b, t, c, h, w)
    y = y.clamp(0.0, 1.0)
    return y, None if m is None else _warp_mask(m, grid)


def affine(clip: Tensor, mask: Tensor | None, params: AffineParams) -> tuple[Tensor, Tensor | None]:
    """Warp every frame of a clip by its affine map (same map for all frames of a clip).

    The image is sampled with ``params.interpolation``; masks with nearest neighbour (values kept
    exactly). Pixels mapped from outside the frame become 0.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        mask: matching masks or ``None``.
        params: from :meth:`Affine.sample`.

    Returns:
        ``(clip, mask)`` warped, same layouts and dtypes.

    Example:
        >>> import torch
        >>> z = torch.zeros(1)
        >>> p = AffineParams(z, z, z, torch.ones(1), z, z, "nearest")
        >>> x = torch.rand(2, 8, 8)
        >>> bool((affine(x, None, p)[0] == x).all())
        True
    """
    if not isinstance(params, AffineParams):
        raise InvalidTypeError(f"params: expected AffineParams, got {type(params).__name__}")
    x, m, layout = to_canonical(clip, mask)
    y, m2 = _affine(x, m, params)
    return from_canonical(y, m2, layout)


class Affine(Transform[AffineParams]):
    """Random affine map per clip: rotation, shear, scale, translation (SAM2: ``degrees=25,
    shear=20``).

    Args:
        degrees: rotation range; a number ``a`` means ``(-a, a)``.
        shear: x-shear range in degrees; a number ``s`` means ``(-s, s)``.
        shear_y: y-shear range in degrees (default none).
        scale: scale factor range (> 0).
        translate: maximum translation as fractions ``(fx, fy)`` of width and height.
        interpolation: ``"bilinear"`` or ``"nearest"`` for the image (masks: always nearest).

    Example:
        >>> import torch
        >>> t = Affine(degrees=10, scale=(0.9, 1.1))
        >>> t.sample((4, 32, 32), torch.Generator().manual_seed(0)).angle.shape
        torch.Size([1])
    """

    kind = "spatial"
    params_type = AffineParams

    def __init__(
        self,
        degrees: float | tuple[float, float] = 25.0,
        shear: float | tuple[float, float] = 20.0,
        *,
        shear_y: float | tuple[float, float] = 0.0,
        scale: float | tuple[float, float] = 1.0,
        translate: tuple[float, float] = (0.0, 0.0),
        interpolation: Literal["bilinear", "nearest"] = "bilinear",
    ) -> None:
        self.degrees = _symmetric("degrees", degrees, 180.0)
        self.shear = _symmetric("shear", shear, 80.0)
        self.shear_y = _symmetric("shear_y", shear_y, 80.0)
        self.scale = interval("scale", scale, lo=1e-2, hi=100.0)
        if not (isinstance(translate, (tuple, list)) and len(translate) == 2):
            raise InvalidTypeError(f"translate: expected a pair (fx, fy), got {translate!r}")
        self.translate = (
            interval("translate[0]", translate[0], lo=0.0, hi=1.0)[0],
            interval("translate[1]", translate[1], lo=0.0, hi=1.0)[0],
        )
        if interpolation not in ("bilinear", "nearest"):
            raise InvalidInputError(f"interpolation: expected 'bilinear' or 'nearest', got {interpolation!r}")
        self.interpolation: Literal["bilinear", "nearest"] = interpolation

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> AffineParams:
        b = dims[0]
        fx, fy = self.translate
        return AffineParams(
            angle=uniform(generator, (b,), self.degrees),
            shear_x=uniform(generator, (b,), self.shear),
            shear_y=uniform(generator, (b,), self.shear_y),
            scale=uniform(generator, (b,), self.scale),
            tx=uniform(generator, (b,), (-fx, fx)),
            ty=uniform(generator, (b,), (-fy, fy)),
            interpolation=self.interpolation,
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: AffineParams) -> tuple[Tensor, Tensor | None]:
        return _affine(x, m, params)


def _symmetric(name: str, value: float | tuple[float, float], limit: float) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= float(value) <= limit:
            raise InvalidInputError(f"{name}: expected 0 <= {name} <= {limit}, got {value!r}")
        return (-float(value), float(value))
    return interval(name, value, lo=-limit, hi=limit)


# --------------------------------------------------------------------------------------------------
# colour jitter
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ColorJitterParams(Params):
    """Factors of shape ``(B, T')``, ``T' = T`` when drawn per frame else 1: ``brightness``,
    ``contrast``, ``saturation``, ``gamma``."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    gamma: Tensor


def _gray(x: Tensor) -> Tensor:
    if x.shape[2] != 3:
        return x.mean(2, keepdim=True)
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).reshape(1, 1, 3, 1, 1)
    return (x * w).sum(2, keepdim=True)


def _factor(values: Tensor, x: Tensor, name: str) -> Tensor:
    v = per_clip(values, x, name)
    if v.ndim != 2 or v.shape[1] not in (1, x.shape[1]):
        raise InvalidInputError(f"params.{name}: expected shape (B, 1) or (B, {x.shape[1]}), got {tuple(v.shape)}")
    return v[:, :, None, None, None]


def _color_jitter(x: Tensor, params: ColorJitterParams) -> Tensor:
    y = (x * _factor(params.brightness, x, "brightness")).clamp(0.0, 1.0)
    mean = _gray(y).mean((-1, -2), keepdim=True)
    c = _factor(params.contrast, x, "contrast")
    y = (mean + c * (y - mean)).clamp(0.0, 1.0)
    if y.shape[2] == 3:
        s = _factor(params.saturation, x, "saturation")
        g = _gray(y)
        y = (g + s * (y - g)).clamp(0.0, 1.0)
    gam = _factor(params.gamma, x, "gamma")
    return y.clamp(min=1e-12).pow(gam).clamp(0.0, 1.0) if bool((gam != 1).any()) else y


def color_jitter(clip: Tensor, params: ColorJitterParams) -> Tensor:
    """Brightness, contrast, saturation (3 channels only) and gamma, in this order, clipped to [0, 1].

    ``I1 = b I``; ``I2 = m + c (I1 - m)`` (``m``: the frame's mean gray); ``I3 = g + s (I2 - g)``
    (``g``: per-pixel gray); ``I4 = I3 ** gamma``. All factors 1 is the identity.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`ColorJitter.sample`.

    Returns:
        The adjusted clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> one = torch.ones(1, 1)
        >>> color_jitter(torch.full((1, 2, 2), 0.25), ColorJitterParams(one * 2, one, one, one))[0, 0, 0]
        tensor(0.5000)
    """
    if not isinstance(params, ColorJitterParams):
        raise InvalidTypeError(f"params: expected ColorJitterParams, got {type(params).__name__}")
    x, _, layout = to_canonical(clip, None)
    return from_canonical(_color_jitter(x, params), None, layout)[0]


class ColorJitter(Transform[ColorJitterParams]):
    """Random brightness/contrast/saturation/gamma; a number ``v`` means the factor range
    ``(1 - v, 1 + v)`` as in torchvision (SAM2: ``brightness=0.1, contrast=0.03, saturation=0.03``).

    Args:
        brightness: jitter amount or factor range.
        contrast: jitter amount or factor range.
        saturation: jitter amount or factor range (3-channel clips only).
        gamma: gamma range (default 1: off).
        per_frame: draw the factors for every frame (SAM2's second, inconsistent jitter) instead of
            once per clip.

    Example:
        >>> import torch
        >>> ColorJitter(per_frame=True).sample((5, 8, 8), torch.Generator().manual_seed(0)).brightness.shape
        torch.Size([1, 5])
    """

    params_type = ColorJitterParams

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0.1,
        contrast: float | tuple[float, float] = 0.03,
        saturation: float | tuple[float, float] = 0.03,
        gamma: float | tuple[float, float] = 1.0,
        *,
        per_frame: bool = False,
    ) -> None:
        self.brightness = _jitter("brightness", brightness)
        self.contrast = _jitter("contrast", contrast)
        self.saturation = _jitter("saturation", saturation)
        self.gamma = interval("gamma", gamma, lo=1e-2, hi=100.0)
        self.per_frame = bool(per_frame)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> ColorJitterParams:
        shape = (dims[0], dims[1] if self.per_frame else 1)
        return ColorJitterParams(
            brightness=uniform(generator, shape, self.brightness),
            contrast=uniform(generator, shape, self.contrast),
            saturation=uniform(generator, shape, self.saturation),
            gamma=uniform(generator, shape, self.gamma),
        )

    def _apply(self, x: Tensor, m: Tensor | None, params: ColorJitterParams) -> tuple[Tensor, Tensor | None]:
        return _color_jitter(x, params), m


def _jitter(name: str, value: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= float(value) <= 1:
            raise InvalidInputError(f"{name}: expected a jitter amount in [0, 1] or a (min, max) range, got {value!r}")
        return (1.0 - float(value), 1.0 + float(value))
    return interval(name, value, lo=0.0, hi=100.0)


# --------------------------------------------------------------------------------------------------
# blur and grayscale
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GaussianBlurParams(Params):
    """Per clip (B,): Gaussian ``sigma`` in pixels."""

    sigma: Tensor


def _gaussian_blur(x: Tensor, params: GaussianBlurParams) -> Tensor:
    b, t, c, h, w = x.shape
    sigma = per_clip(params.sigma, x, "sigma").clamp(min=1e-3)
    r = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    offsets = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 2r+1)
    n = b * t * c
    k = kernel[:, None].expand(b, t * c, 2 * r + 1).reshape(n, 1, 1, 2 * r + 1)
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.pad(x.reshape(1, n, h, w), (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, k, groups=n)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    y = F.conv2d(y, k.transpose(2, 3), groups=n)
    return y.reshape(b, t, c, h, w).clamp(0.0, 1.0)


def gaussian_blur(clip: Tensor, params: GaussianBlurParams) -> Tensor:
    """Separable Gaussian blur of every frame (kernel radius ``ceil(3 sigma)``, reflect padding).

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``, uint8 or float in [0, 1].
        params: from :meth:`GaussianBlur.sample`.

    Returns:
        The blurred clip, same shape, dtype and range.

    Example:
        >>> import torch
        >>> x = torch.full((2, 8, 8), 0.5)
        >>> bool(torch.allclose(gaussian_blur(x, GaussianBlurParams(torch.tensor([1.5]))), x))
        True
    """
    if not isinstance(params, GaussianBlurParams):
        raise InvalidTypeError(f"params: expected GaussianBlurParams, got {type(params).__name__}")
    x, _, layout = to_canonical(clip, None)
    return from_canonical(_gaussian_blur(x, params), None, layout)[0]


class GaussianBlur(Transform[GaussianBlurParams]):
    """Random Gaussian blur, one sigma per clip.

    Args:
        sigma: sigma in pixels (> 0), or a range.

    Example:
        >>> import torch
        >>> GaussianBlur(sigma=(0.5, 1.0))(torch.rand(3, 16, 16)).image.shape
        torch.Size([3, 16, 16])
    """

    params_type = GaussianBlurParams

    def __init__(self, sigma: float | tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = interval("sigma", sigma, lo=1e-3, hi=50.0)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> GaussianBlurParams:
        return GaussianBlurParams(sigma=uniform(generator, (dims[0],), self.sigma))

    def _apply(self, x: Tensor, m: Tensor | None, params: GaussianBlurParams) -> tuple[Tensor, Tensor | None]:
        return _gaussian_blur(x, params), m


def grayscale(clip: Tensor) -> Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` replicated to 3 channels; other channel counts unchanged.

    Example:
        >>> import torch
        >>> grayscale(torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)).flatten().tolist()
        [0.29899999499320984, 0.29899999499320984, 0.29899999499320984]
    """
    x, _, layout = to_canonical(clip, None)
    return from_canonical(_grayscale(x), None, layout)[0]


def _grayscale(x: Tensor) -> Tensor:
    return _gray(x).expand_as(x).clamp(0.0, 1.0) if x.shape[2] == 3 else x


class Grayscale(Transform[NoParams]):
    """Convert 3-channel clips to gray (kept 3 channels); wrap in :class:`RandomApply` (SAM2: p=0.05).

    Example:
        >>> import torch
        >>> out = Grayscale()(torch.rand(2, 3, 4, 4)).image
        >>> bool((out[:, 0] == out[:, 1]).all())
        True
    """

    params_type = NoParams

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> NoParams:
        return NoParams()

    def _apply(self, x: Tensor, m: Tensor | None, params: NoParams) -> tuple[Tensor, Tensor | None]:
        return _grayscale(x), m

