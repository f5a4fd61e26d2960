"""Scan geometry of an ultrasound image: the sector (fan) or rectangle (linear probe) the beams cover.

Every ultrasound augmentation acts inside the scan sector only, and its "depth" follows the beam:
radial distance from the apex for a fan, the row for a linear probe. Coordinates are in pixels with
pixel ``(row i, column j)`` centred at ``(x=j, y=i)``; ``y`` grows downwards (deeper). Fan angles are
in radians, measured from the downward vertical (the central beam of a symmetric fan is angle 0),
positive towards ``+x``.

Example:
    >>> import torch
    >>> geo = ScanGeometry.fan(apex=(32.0, -10.0), radii=(20.0, 70.0), angles=(-0.6, 0.6))
    >>> depth, lateral, inside = sector_coordinates(geo, 64, 64)
    >>> depth.shape, inside.dtype
    (torch.Size([64, 64]), torch.bool)
    >>> estimate_scan_geometry(geo.mask(64, 64).float()[None]).kind
    'fan'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from medsam2kit.errors import GeometryError, InvalidInputError, InvalidTypeError

__all__ = ["ScanGeometry", "estimate_scan_geometry", "sector_coordinates"]


def _finite(name: str, values: tuple[float, ...]) -> None:
    if not all(math.isfinite(v) for v in values):
        raise GeometryError(f"{name}: expected finite numbers, got {values!r}")


@dataclass(frozen=True)
class ScanGeometry:
    """Where the ultrasound beams are: a fan (curvilinear / phased probe) or a rectangle (linear).

    Build it with :meth:`fan`, :meth:`linear` or :meth:`full`, or estimate it from frames with
    :func:`estimate_scan_geometry`. Fields that do not belong to ``kind`` are ``None``.

    Attributes:
        kind: ``"fan"`` or ``"linear"``.
        apex: fan only, ``(x, y)`` pixels of the point the beams start from (may lie above the image).
        radii: fan only, ``(r_min, r_max)`` pixels: depth 0 and depth 1 of the sector.
        angles: fan only, ``(theta_min, theta_max)`` radians from the downward vertical, positive
            towards ``+x``.
        bounds: linear only, ``(top, bottom, left, right)`` pixels, inclusive.

    Example:
        >>> ScanGeometry.linear(top=5, bottom=60, left=0, right=63).kind
        'linear'
        >>> ScanGeometry.full(64, 48).bounds
        (0.0, 63.0, 0.0, 47.0)
    """

    kind: Literal["fan", "linear"]
    apex: tuple[float, float] | None = None
    radii: tuple[float, float] | None = None
    angles: tuple[float, float] | None = None
    bounds: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind == "fan":
            if self.apex is None or self.radii is None or self.angles is None:
                raise GeometryError(
                    f"ScanGeometry(kind='fan'): expected apex, radii and angles, got apex={self.apex!r}, "
                    f"radii={self.radii!r}, angles={self.angles!r}"
                )
            _finite("apex", self.apex)
            _finite("radii", self.radii)
            _finite("angles", self.angles)
            if not 0.0 <= self.radii[0] < self.radii[1]:
                raise GeometryError(f"radii: expected 0 <= r_min < r_max, got {self.radii!r}")
            if not -math.pi < self.angles[0] < self.angles[1] < math.pi:
                raise GeometryError(f"angles: expected -pi < theta_min < theta_max < pi, got {self.angles!r}")
        elif self.kind == "linear":
            if self.bounds is None:
                raise GeometryError("ScanGeometry(kind='linear'): expected bounds=(top, bottom, left, right), got None")
            _finite("bounds", self.bounds)
            top, bottom, left, right = self.bounds
            if not (top < bottom and left <= right):
                raise GeometryError(
                    f"bounds: expected top < bottom and left <= right, got (top, bottom, left, right)={self.bounds!r}"
                )
        else:
            raise GeometryError(f"kind: expected 'fan' or 'linear', got {self.kind!r}")

    @classmethod
    def fan(
        cls, apex: tuple[float, float], radii: tuple[float, float], angles: tuple[float, float]
    ) -> ScanGeometry:
        """A fan sector.

        Args:
            apex: ``(x, y)`` pixels of the beam origin.
            radii: ``(r_min, r_max)`` pixels.
            angles: ``(theta_min, theta_max)`` radians from the downward vertical.

        Example:
            >>> ScanGeometry.fan((50.0, 0.0), (10.0, 90.0), (-0.7, 0.7)).kind
            'fan'
        """
        return cls(
            kind="fan",
            apex=(float(apex[0]), float(apex[1])),
            radii=(float(radii[0]), float(radii[1])),
            angles=(float(angles[0]), float(angles[1])),
        )

    @classmethod
    def linear(cls, top: float, bottom: float, left: float, right: float) -> ScanGeometry:
        """A rectangle (linear probe), bounds in pixels, inclusive.

        Example:
            >>> ScanGeometry.linear(0, 99, 10, 89).bounds
            (0.0, 99.0, 10.0, 89.0)
        """
        return cls(kind="linear", bounds=(float(top), float(bottom), float(left), float(right)))

    @classmethod
    def full(cls, height: int, width: int) -> ScanGeometry:
        """The whole frame as a linear scan (depth = row).

        Example:
            >>> ScanGeometry.full(10, 20).bounds
            (0.0, 9.0, 0.0, 19.0)
        """
        if height < 2 or width < 1:
            raise GeometryError(f"(height, width): expected height >= 2 and width >= 1, got ({height}, {width})")
        return cls.linear(0.0, float(height - 1), 0.0, float(width - 1))

    def mask(self, height: int, width: int, *, device: torch.device | str | None = None) -> Tensor:
        """The scan sector as a bool tensor of shape ``(height, width)``.

        Example:
            >>> int(ScanGeometry.linear(2, 5, 1, 3).mask(8, 8).sum())
            12
        """
        return sector_coordinates(self, height, width, device=device)[2]


@lru_cache(maxsize=32)
def _coordinates_cached(
    geometry: ScanGeometry, height: int, width: int, device: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=torch.float64)[:, None].expand(height, width)
    xs = torch.arange(width, device=device, dtype=torch.float64)[None, :].expand(height, width)
    if geometry.kind == "fan" and geometry.apex and geometry.radii and geometry.angles:
        (x0, y0), (r0, r1), (t0, t1) = geometry.apex, geometry.radii, geometry.angles
        dx, dy = xs - x0, ys - y0
        depth = (torch.hypot(dx, dy) - r0) / (r1 - r0)
        lateral = (torch.atan2(dx, dy) - t0) / (t1 - t0)
    elif geometry.bounds is not None:
        top, bottom, left, right = geometry.bounds
        depth = (ys - top) / (bottom - top)
        lateral = (xs - left) / max(right - left, 1e-9)
        if right == left:
            lateral = torch.where(xs == left, torch.zeros_like(xs), torch.full_like(xs, -1.0))
    else:  # pragma: no cover - excluded by ScanGeometry.__post_init__
        raise GeometryError(f"geometry: incomplete {geometry!r}")
    eps = 1e-9
    inside = (depth >= -eps) & (depth <= 1 + eps) & (lateral >= -eps) & (lateral <= 1 + eps)
    return depth.to(dtype), lateral.to(dtype), inside


def sector_coordinates(
    geometry: ScanGeometry,
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Beam coordinates of every pixel: normalised depth, lateral position and the sector mask.

    Args:
        geometry: the scan geometry.
        height: image height H in pixels.
        width: image width W in pixels.
        device: device of the outputs (default CPU).
        dtype: floating dtype of ``depth`` and ``lateral``.

    Returns:
        ``(depth, lateral, inside)``, each ``(H, W)``. ``depth`` is 0 at the top of the sector
        (``r_min`` / ``top``) and 1 at its bottom (``r_max`` / ``bottom``), following the beam (radial
        for a fan); ``lateral`` is 0 on the first beam (``theta_min`` / ``left``) and 1 on the last;
        ``inside`` (bool) is true where both lie in ``[0, 1]``. Values outside the sector are
        extrapolated.

    Example:
        >>> d, lat, inside = sector_coordinates(ScanGeometry.full(5, 3), 5, 3)
        >>> d[:, 0].tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if not isinstance(geometry, ScanGeometry):
        raise InvalidTypeError(f"geometry: expected ScanGeometry, got {type(geometry).__name__}")
    if height < 1 or width < 1:
        raise InvalidInputError(f"(height, width): expected positive sizes, got ({height}, {width})")
    dev = str(torch.device(device) if device is not None else torch.device("cpu"))
    depth, lateral, inside = _coordinates_cached(geometry, int(height), int(width), dev, dtype)
    return depth.clone(), lateral.clone(), inside.clone()


def coordinates_for(geometry: ScanGeometry, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Internal: cached (not cloned) coordinates matching a canonical clip ``x`` (..., H, W)."""
    return _coordinates_cached(geometry, x.shape[-2], x.shape[-1], str(x.device), x.dtype)


def _fit_line(ys: np.ndarray, xs: np.ndarray) -> tuple[float, float]:
    """Least-squares x = a*y + b, refit once without the worst 20 % residuals."""
    a, b = np.polyfit(ys, xs, 1)
    res = np.abs(xs - (a * ys + b))
    keep = res <= np.quantile(res, 0.8) + 1e-9
    if keep.sum() >= 2:
        a, b = np.polyfit(ys[keep], xs[keep], 1)
    return float(a), float(b)


def estimate_scan_geometry(frames: Tensor, *, threshold: float = 0.04) -> ScanGeometry:
    """Estimate the scan sector from the non-zero support of the temporal maximum of the frames.

    The support (max over every leading axis, above ``threshold``) is cleaned (largest connected
    component, holes filled). A support that fills its bounding box or whose side edges are
    parallel is a linear scan; otherwise straight lines are fitted to the left and right edges in the
    middle band of rows, their intersection is the apex, their slopes the angles, and the radii are
    the extreme distances of support pixels from the apex.

    Args:
        frames: ``(H, W)``, ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``; uint8 or float in
            ``[0, 1]``.
        threshold: intensity (on the ``[0, 1]`` scale) above which a pixel is part of the scan.

    Returns:
        The estimated :class:`ScanGeometry`; the full frame when the support is empty.

    Example:
        >>> geo = ScanGeometry.fan((64.0, -20.0), (30.0, 140.0), (-0.5, 0.5))
        >>> est = estimate_scan_geometry(geo.mask(128, 128).float()[None])
        >>> est.kind, abs(est.apex[0] - 64.0) < 2
        ('fan', True)
    """
    from scipy import ndimage

    if not isinstance(frames, Tensor):
        raise InvalidTypeError(f"frames: expected a torch.Tensor, got {type(frames).__name__}")
    if frames.ndim < 2 or frames.ndim > 5:
        raise InvalidInputError(f"frames: expected rank 2 to 5 ((H, W) ... (B, T, C, H, W)), got shape {tuple(frames.shape)}")
    if not 0.0 <= threshold < 1.0:
        raise InvalidInputError(f"threshold: expected 0 <= threshold < 1, got {threshold}")
    height, width = frames.shape[-2:]
    peak = frames.detach().reshape(-1, height, width).amax(0).float().cpu()
    if frames.dtype == torch.uint8:
        peak = peak / 255.0
    support = (peak > threshold).numpy()
    labels, count = ndimage.label(support)
    if count == 0 or height < 2:
        return ScanGeometry.full(max(int(height), 2), int(width))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    support = ndimage.binary_fill_holes(labels == int(sizes.argmax()))
    rows = np.flatnonzero(support.any(1))
    cols = np.flatnonzero(support.any(0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if bottom - top < 4:
        return ScanGeometry.linear(top, max(bottom, top + 1), left, right)
    fill = support.sum() / ((bottom - top + 1) * (right - left + 1))
    span = bottom - top + 1
    band = np.arange(top + int(0.2 * span), top + int(0.6 * span) + 1)
    band = band[support[band].any(1)]
    first = support[band].argmax(1).astype(np.float64)
    last = (width - 1 - support[band, ::-1].argmax(1)).astype(np.float64)
    a_l, b_l = _fit_line(band.astype(np.float64), first)
    a_r, b_r = _fit_line(band.astype(np.float64), last)
    if fill > 0.92 or a_r - a_l < 0.08:
        return ScanGeometry.linear(top, bottom, left, right)
    y0 = (b_l - b_r) / (a_r - a_l)
    x0 = a_l * y0 + b_l
    ys, xs = np.nonzero(support)
    radius = np.hypot(xs - x0, ys - y0)
    r_min = max(float(np.quantile(radius, 0.001)), 0.0)
    r_max = float(radius.max())
    t0, t1 = math.atan(a_l), math.atan(a_r)
    return ScanGeometry.fan((x0, y0), (r_min, max(r_max, r_min + 1.0)), (t0, t1))
