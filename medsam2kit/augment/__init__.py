"""Augmentations for ultrasound (and other) clips with their masks, sampled once per clip.

Design (kornia-like): parameters are drawn by ``transform.sample(shape, generator)`` into frozen
dataclasses, and applied deterministically by ``transform.apply(clip, mask, params)``;
``transform(clip, mask, generator=g)`` does both and returns the parameters for logging and replay.
Randomness comes only from an explicit :class:`torch.Generator`. Physics is coherent over time:
parameters are per clip; only noise is redrawn per frame (configurable).

Layouts: image ``(T, H, W)``, ``(T, C, H, W)`` or a batch ``(B, T, C, H, W)``; uint8 or float in
``[0, 1]`` (returned in the same dtype). Masks ``(T, H, W)`` / ``(T, K, H, W)`` (per object) or
``(B, T, H, W)`` / ``(B, T, K, H, W)``, any dtype (bool recommended): spatial transforms move them
with nearest neighbour, intensity transforms leave them untouched.

Ultrasound transforms act inside the scan sector (:class:`ScanGeometry`, given or estimated from
the frames) with depth along the beam.

Example:
    >>> import torch
    >>> from medsam2kit.augment import ultrasound
    >>> clip = (torch.rand(8, 64, 64) * 255).to(torch.uint8)
    >>> out = ultrasound(p=1.0, geometry="full")(clip, generator=torch.Generator().manual_seed(0))
    >>> out.image.dtype, out.image.shape
    (torch.uint8, torch.Size([8, 64, 64]))
"""

from __future__ import annotations

from medsam2kit.augment._core import (
    Augmented,
    Compose,
    ComposeParams,
    NoParams,
    OneOf,
    OneOfParams,
    Params,
    RandomApply,
    RandomApplyParams,
    Transform,
)
from medsam2kit.augment.generic import (
    Affine,
    AffineParams,
    ColorJitter,
    ColorJitterParams,
    GaussianBlur,
    GaussianBlurParams,
    Grayscale,
    HorizontalFlip,
    affine,
    color_jitter,
    gaussian_blur,
    grayscale,
    hflip,
)
from medsam2kit.augment.geometry import ScanGeometry, estimate_scan_geometry, sector_coordinates
from medsam2kit.augment.presets import combined, generic_sam2, ultrasound
from medsam2kit.augment.temporal import (
    FrameDrop,
    FrameStride,
    Reverse,
    TemporalCrop,
    TemporalParams,
    select_frames,
)
from medsam2kit.augment.ultrasound import (
    AcousticShadow,
    AcousticShadowParams,
    DepthAttenuation,
    DepthAttenuationParams,
    GainTGC,
    GainTGCParams,
    Haze,
    HazeParams,
    SpeckleNoise,
    SpeckleNoiseParams,
    SpeckleReduction,
    SpeckleReductionParams,
    acoustic_shadow,
    bilateral_filter,
    depth_attenuation,
    gain_tgc,
    haze,
    speckle_noise,
    speckle_reduction,
)

__all__ = [
    "AcousticShadow",
    "AcousticShadowParams",
    "Affine",
    "AffineParams",
    "Augmented",
    "ColorJitter",
    "ColorJitterParams",
    "Compose",
    "ComposeParams",
    "DepthAttenuation",
    "DepthAttenuationParams",
    "FrameDrop",
    "FrameStride",
    "GainTGC",
    "GainTGCParams",
    "GaussianBlur",
    "GaussianBlurParams",
    "Grayscale",
    "Haze",
    "HazeParams",
    "HorizontalFlip",
    "NoParams",
    "OneOf",
    "OneOfParams",
    "Params",
    "RandomApply",
    "RandomApplyParams",
    "Reverse",
    "ScanGeometry",
    "SpeckleNoise",
    "SpeckleNoiseParams",
    "SpeckleReduction",
    "SpeckleReductionParams",
    "TemporalCrop",
    "TemporalParams",
    "Transform",
    "acoustic_shadow",
    "affine",
    "bilateral_filter",
    "color_jitter",
    "combined",
    "depth_attenuation",
    "estimate_scan_geometry",
    "gain_tgc",
    "gaussian_blur",
    "generic_sam2",
    "grayscale",
    "haze",
    "hflip",
    "sector_coordinates",
    "select_frames",
    "speckle_noise",
    "speckle_reduction",
    "ultrasound",
]
