"""Ready-made pipelines: the six ultrasound augmentations, SAM2's own video training transforms, and
their combination.

Example:
    >>> import torch
    >>> from medsam2kit.augment import combined
    >>> clip, mask = torch.rand(8, 64, 64), torch.rand(8, 64, 64) > 0.5
    >>> out = combined(geometry="full")(clip, mask, generator=torch.Generator().manual_seed(0))
    >>> out.image.shape, out.mask.dtype
    (torch.Size([8, 64, 64]), torch.bool)
"""

from __future__ import annotations

from medsam2kit.augment._core import Compose, GeometrySpec, RandomApply, probability
from medsam2kit.augment.generic import Affine, ColorJitter, Grayscale, HorizontalFlip
from medsam2kit.augment.ultrasound import (
    AcousticShadow,
    DepthAttenuation,
    GainTGC,
    Haze,
    SpeckleNoise,
    SpeckleReduction,
)

__all__ = ["combined", "generic_sam2", "ultrasound"]


def ultrasound(*, p: float = 0.5, geometry: GeometrySpec = "estimate", per_frame_noise: bool = True) -> Compose:
    """The six ultrasound augmentations, each applied with probability ``p`` (default ranges).

    Order: depth attenuation, acoustic shadow, haze, gain/TGC, speckle noise, speckle reduction.
    The geometry is estimated once per call (the first transform that needs it) and reused.

    Args:
        p: probability of each transform, per clip.
        geometry: a :class:`ScanGeometry`, ``"estimate"`` (from the frames) or ``"full"``.
        per_frame_noise: redraw speckle and haze noise for every frame.

    Returns:
        A :class:`Compose` of six :class:`RandomApply`.

    Example:
        >>> len(ultrasound().transforms)
        6
    """
    p = probability("p", p)
    return Compose(
        [
            RandomApply(DepthAttenuation(geometry=geometry), p),
            RandomApply(AcousticShadow(geometry=geometry), p),
            RandomApply(Haze(per_frame_noise=per_frame_noise, geometry=geometry), p),
            RandomApply(GainTGC(geometry=geometry), p),
            RandomApply(SpeckleNoise(per_frame_noise=per_frame_noise, geometry=geometry), p),
            RandomApply(SpeckleReduction(geometry=geometry), p),
        ]
    )


def generic_sam2(*, interpolation: str = "bilinear") -> Compose:
    """SAM2's video training transforms (``sam2.1_hiera_b+_MOSE_finetune.yaml``), without the resize.

    Horizontal flip (p=0.5), affine (rotation +-25 deg, x-shear +-20 deg), colour jitter consistent
    over the clip (brightness 0.1, contrast 0.03, saturation 0.03), grayscale (p=0.05), colour
    jitter per frame (brightness 0.1, contrast 0.05, saturation 0.05). All consistent over the
    frames of a clip except the last jitter, as in SAM2.

    Args:
        interpolation: image interpolation of the affine, ``"bilinear"`` (SAM2's setting) or
            ``"nearest"``.

    Returns:
        A :class:`Compose`.

    Example:
        >>> len(generic_sam2().transforms)
        5
    """
    if interpolation not in ("bilinear", "nearest"):
        from medsam2kit.errors import InvalidInputError

        raise InvalidInputError(f"interpolation: expected 'bilinear' or 'nearest', got {interpolation!r}")
    return Compose(
        [
            RandomApply(HorizontalFlip(), 0.5),
            Affine(degrees=25.0, shear=20.0, interpolation="bilinear" if interpolation == "bilinear" else "nearest"),
            ColorJitter(brightness=0.1, contrast=0.03, saturation=0.03),
            RandomApply(Grayscale(), 0.05),
            ColorJitter(brightness=0.1, contrast=0.05, saturation=0.05, per_frame=True),
        ]
    )


def combined(*, p: float = 0.5, geometry: GeometrySpec = "estimate", per_frame_noise: bool = True) -> Compose:
    """:func:`ultrasound` then :func:`generic_sam2` (ultrasound first, while the sector is known).

    Example:
        >>> [type(t).__name__ for t in combined().transforms]
        ['Compose', 'Compose']
    """
    return Compose([ultrasound(p=p, geometry=geometry, per_frame_noise=per_frame_noise), generic_sam2()])
