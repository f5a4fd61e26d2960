"""Tests of medsam2kit.augment: closed forms per transform, properties (hypothesis), errors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medsam2kit.augment import (
    AcousticShadow,
    AcousticShadowParams,
    Affine,
    AffineParams,
    ColorJitter,
    Compose,
    DepthAttenuation,
    DepthAttenuationParams,
    FrameDrop,
    FrameStride,
    GainTGC,
    GainTGCParams,
    GaussianBlur,
    Grayscale,
    Haze,
    HazeParams,
    HorizontalFlip,
    OneOf,
    RandomApply,
    Reverse,
    ScanGeometry,
    SpeckleNoise,
    SpeckleNoiseParams,
    SpeckleReduction,
    SpeckleReductionParams,
    TemporalCrop,
    Transform,
    acoustic_shadow,
    affine,
    bilateral_filter,
    combined,
    depth_attenuation,
    estimate_scan_geometry,
    gain_tgc,
    generic_sam2,
    haze,
    sector_coordinates,
    speckle_noise,
    speckle_reduction,
    ultrasound,
)
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError

FAN = ScanGeometry.fan(apex=(31.5, -8.0), radii=(12.0, 70.0), angles=(-0.6, 0.6))
ONE = torch.ones(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def us_transforms(geometry: Any = FAN) -> list[Transform[Any]]:
    return [
        DepthAttenuation(geometry=geometry),
        AcousticShadow(geometry=geometry),
        Haze(geometry=geometry),
        SpeckleNoise(geometry=geometry),
        SpeckleNoise(distribution="gamma", geometry=geometry),
        SpeckleReduction(geometry=geometry),
        GainTGC(geometry=geometry),
    ]


def generic_transforms() -> list[Transform[Any]]:
    return [HorizontalFlip(), Affine(scale=(0.8, 1.2), translate=(0.1, 0.1)), ColorJitter(gamma=(0.7, 1.4)),
            GaussianBlur(), Grayscale()]


def spatial_transforms() -> list[Transform[Any]]:
    return [HorizontalFlip(), Affine(interpolation="nearest", scale=(0.8, 1.2), translate=(0.1, 0.1)),
            TemporalCrop(3), FrameStride((1, 2)), FrameDrop((0, 2)), Reverse()]


def all_transforms() -> list[Transform[Any]]:
    return [*us_transforms(), *generic_transforms(), ultrasound(p=0.7, geometry=FAN), generic_sam2(),
            combined(p=0.7, geometry="estimate"), OneOf([HorizontalFlip(), GaussianBlur()]),
            RandomApply(Affine(), p=0.5)]


# ------------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------------


def test_sector_coordinates_fan_are_radial_and_angular() -> None:
    depth, lateral, inside = sector_coordinates(FAN, 64, 64, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(64.0, dtype=torch.float64), torch.arange(64.0, dtype=torch.float64), indexing="ij")
    r = torch.hypot(xs - 31.5, ys + 8.0)
    theta = torch.atan2(xs - 31.5, ys + 8.0)
    assert torch.allclose(depth, (r - 12.0) / 58.0)
    assert torch.allclose(lateral, (theta + 0.6) / 1.2)
    assert torch.equal(inside, (r >= 12.0) & (r <= 70.0) & (theta.abs() <= 0.6))


def test_estimate_scan_geometry_recovers_fan_and_linear() -> None:
    truth = ScanGeometry.fan((64.0, -20.0), (30.0, 140.0), (-0.55, 0.55))
    frames = truth.mask(128, 128).float()[None] * (0.2 + 0.8 * torch.rand(5, 128, 128, generator=gen()))
    est = estimate_scan_geometry(frames)
    assert est.kind == "fan" and est.apex is not None and est.angles is not None and est.radii is not None
    assert abs(est.apex[0] - 64.0) < 2.0 and abs(est.apex[1] + 20.0) < 4.0
    assert abs(est.angles[0] + 0.55) < 0.04 and abs(est.angles[1] - 0.55) < 0.04
    assert abs(est.radii[1] - 140.0) < 4.0
    iou = (est.mask(128, 128) & truth.mask(128, 128)).sum() / (est.mask(128, 128) | truth.mask(128, 128)).sum()
    assert iou > 0.95
    lin = torch.zeros(3, 60, 50)
    lin[:, 5:55, 8:45] = 0.5
    est_lin = estimate_scan_geometry((lin * 255).to(torch.uint8))
    assert est_lin == ScanGeometry.linear(5, 54, 8, 44)
    assert estimate_scan_geometry(torch.zeros(2, 10, 12)) == ScanGeometry.full(10, 12)


@pytest.mark.shared_data
def test_estimate_scan_geometry_on_real_carotid(shared_data: Path) -> None:
    files = sorted((shared_data / "carotid_us").glob("*.npz"))
    if not files:
        pytest.skip("carotid_us npz not found in the shared data")
    frames = torch.from_numpy(np.load(files[0])["frames"][:16])
    geo = estimate_scan_geometry(frames)
    support = frames.amax(0).float() / 255 > 0.04
    covered = (geo.mask(*frames.shape[-2:]) & support).sum() / support.sum()
    assert covered > 0.9
    out = ultrasound(p=1.0)(frames, generator=gen(3))
    assert out.image.dtype == torch.uint8 and out.image.shape == frames.shape


# ------------------------------------------------------------------------------------------------
# closed forms per transform
# ------------------------------------------------------------------------------------------------


def test_depth_attenuation_curve_along_depth() -> None:
    geo = ScanGeometry.full(11, 4)
    p = DepthAttenuationParams(torch.tensor([2.0]), torch.tensor([0.2]), geo)
    out = depth_attenuation(torch.ones(3, 11, 4), p)
    d = torch.linspace(0, 1, 11)
    expected = 0.8 * torch.exp(-2.0 * d) + 0.2
    assert torch.allclose(out[:, :, 2], expected.expand(3, 11), atol=1e-6)
    # fan: equal radius -> equal attenuation; outside the sector unchanged
    x = torch.full((2, 64, 64), 0.8)
    fan = depth_attenuation(x, DepthAttenuationParams(torch.tensor([1.5]), torch.zeros(1), FAN))
    depth, _, inside = sector_coordinates(FAN, 64, 64)
    assert torch.allclose(fan[0][inside], 0.8 * torch.exp(-1.5 * depth[inside]), atol=1e-6)
    assert torch.equal(fan[:, ~inside], x[:, ~inside])


def test_zero_strength_is_identity() -> None:
    x = torch.rand(4, 64, 64, generator=gen())
    z = torch.zeros(1)
    assert torch.equal(depth_attenuation(x, DepthAttenuationParams(z, z, FAN)), x)
    assert torch.equal(acoustic_shadow(x, AcousticShadowParams(ONE / 2, ONE / 2, z, z, ONE / 3, FAN)), x)
    assert torch.equal(haze(x, HazeParams(z, ONE / 2, ONE / 10, 2, 0.5, 7, True, FAN)), x)
    assert torch.equal(speckle_noise(x, SpeckleNoiseParams(z, ONE, "rayleigh", 7, True, FAN)), x)
    assert torch.equal(speckle_noise(x, SpeckleNoiseParams(z, ONE * 3, "gamma", 7, True, FAN)), x)
    assert torch.equal(gain_tgc(x, GainTGCParams(ONE, torch.ones(1, 5), FAN)), x)
    assert torch.allclose(speckle_reduction(x, SpeckleReductionParams(ONE * 1e-3, ONE, 5, 1, FAN)), x)
    identity = AffineParams(z, z, z, ONE, z, z, "nearest")
    assert torch.equal(affine(x, None, identity)[0], x)
    u8 = (x * 255).to(torch.uint8)
    assert torch.equal(depth_attenuation(u8, DepthAttenuationParams(z, z, FAN)), u8)


def test_shadow_darkens_only_inside_its_beam_band_and_below_start() -> None:
    x = torch.full((2, 64, 64), 0.7)
    p = AcousticShadowParams(ONE * 0.4, ONE * 0.3, ONE * 0.35, ONE * 0.9, ONE * 0.2, FAN)
    out = acoustic_shadow(x, p)
    depth, lateral, inside = sector_coordinates(FAN, 64, 64)
    changed = (out != x).any(0)
    band = inside & ((lateral - 0.4).abs() < 0.15) & (depth > 0.35)
    assert changed.any() and not (changed & ~band).any()
    core = inside & ((lateral - 0.4).abs() < 0.1) & (depth > 0.45)
    assert torch.allclose(out[:, core], torch.full_like(out[:, core], 0.7 * 0.1), atol=1e-6)
    assert bool((out <= x).all())


def test_speckle_noise_keeps_local_mean_and_varies_per_frame() -> None:
    x = torch.full((8, 128, 128), 0.3)
    geo = ScanGeometry.full(128, 128)
    for dist, shape in (("rayleigh", 1.0), ("gamma", 4.0)):
        p = SpeckleNoiseParams(ONE * 0.8, ONE * shape, dist, 11, True, geo)  # type: ignore[arg-type]
        out = speckle_noise(x, p)
        blocks = out.reshape(8, 4, 32, 4, 32).mean((0, 2, 4))
        assert torch.allclose(blocks, torch.full_like(blocks, 0.3), atol=0.01), dist
        assert out.std() > 0.05
        assert not torch.equal(out[0], out[1])
    once = speckle_noise(x, SpeckleNoiseParams(ONE * 0.8, ONE, "rayleigh", 11, False, geo))
    assert torch.equal(once[0], once[5])


def test_haze_band_follows_depth_and_matches_formula_bounds() -> None:
    x = torch.full((4, 64, 64), 0.2)
    geo = ScanGeometry.full(64, 64)
    out = haze(x, HazeParams(ONE * 0.5, ONE * 0.5, ONE * 0.05, 0, 0.5, 3, True, geo))
    added = (out - x).mean((0, 2))
    assert added.argmax().item() in (31, 32)
    assert added[:10].max() < 1e-3 and 0.15 < added.max() < 0.3  # E[0.5 * U] = 0.25 at the band centre
    echo = haze(x, HazeParams(ONE * 0.5, ONE * 0.3, ONE * 0.03, 1, 0.5, 3, True, geo))
    prof = (echo - x).mean((0, 2))
    assert prof[round(0.6 * 63)] > 0.05  # first reverberation echo at twice the depth


def test_gain_tgc_interpolates_control_points() -> None:
    geo = ScanGeometry.full(9, 2)
    p = GainTGCParams(torch.tensor([2.0]), torch.tensor([[0.1, 0.3, 0.2]]), geo)
    out = gain_tgc(torch.full((1, 9, 2), 0.5), p)
    d = torch.linspace(0, 1, 9)
    curve = torch.from_numpy(np.interp(d.numpy(), [0, 0.5, 1], [0.1, 0.3, 0.2])).float()
    assert torch.allclose(out[0, :, 0], (0.5 * 2.0 * curve).clamp(0, 1), atol=1e-6)


def _naive_bilateral(x: torch.Tensor, ss: float, sc: float, win: int) -> torch.Tensor:
    r = win // 2
    b, t, c, h, w = x.shape
    pad = F.pad(x.reshape(b * t, c, h, w), (r, r, r, r), mode="reflect").reshape(b, t, c, h + 2 * r, w + 2 * r)
    num, den = torch.zeros_like(x), torch.zeros_like(x[:, :, :1])
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            sh = pad[..., r + dy : r + dy + h, r + dx : r + dx + w]
            wgt = torch.exp(-((sh - x) ** 2).sum(2, keepdim=True) / (2 * sc**2) - (dy * dy + dx * dx) / (2 * ss**2))
            num, den = num + wgt * sh, den + wgt
    return num / den


def test_bilateral_matches_direct_formula_and_skimage() -> None:
    x = torch.rand(2, 3, 2, 20, 17, generator=gen(), dtype=torch.float64)
    got = bilateral_filter(x, torch.tensor([1.0, 0.5]), torch.tensor([0.3, 0.1]), 5)
    want = torch.cat([_naive_bilateral(x[:1], 1.0, 0.3, 5), _naive_bilateral(x[1:], 0.5, 0.1, 5)])
    assert torch.allclose(got, want, atol=1e-10)
    skimage = pytest.importorskip("skimage.restoration")
    img = torch.rand(40, 40, generator=gen(1), dtype=torch.float64)
    # a flat spatial kernel: skimage's 5x5 spatial table is built on a 6x6 grid (arange(-3, 3)), so only
    # its range weights (a 10000-bin table of the same Gaussian) are comparable
    ref = skimage.denoise_bilateral(img.numpy(), win_size=5, sigma_color=0.2, sigma_spatial=100.0)
    ours = bilateral_filter(img[None, None, None], torch.tensor([100.0]), torch.tensor([0.2]), 5)[0, 0, 0]
    assert np.abs(ours.numpy()[2:-2, 2:-2] - ref[2:-2, 2:-2]).max() < 5e-3


def test_speckle_reduction_is_edge_preserving_and_smoothing() -> None:
    x = torch.zeros(2, 32, 32)
    x[:, :, 16:] = 0.8
    noisy = (x + 0.05 * torch.randn(2, 32, 32, generator=gen())).clamp(0, 1)
    p = SpeckleReductionParams(ONE * 2.0, ONE * 0.1, 5, 2, ScanGeometry.full(32, 32))
    out = speckle_reduction(noisy, p)
    assert out[:, 4:-4, 4:12].std() < noisy[:, 4:-4, 4:12].std() * 0.7
    assert (out[:, :, 17] - out[:, :, 14]).mean() > 0.7  # the edge stays sharp


def test_ultrasound_effects_stay_inside_the_sector() -> None:
    x = torch.rand(3, 64, 64, generator=gen()) * 0.8 + 0.1
    _, _, inside = sector_coordinates(FAN, 64, 64)
    for t in us_transforms():
        out = t(x, generator=gen(5)).image
        assert torch.equal(out[:, ~inside], x[:, ~inside]), type(t).__name__
        assert not torch.equal(out[:, inside], x[:, inside]), type(t).__name__


# ------------------------------------------------------------------------------------------------
# generic, temporal, composition
# ------------------------------------------------------------------------------------------------


def test_affine_and_flip_move_masks_and_keep_them_binary() -> None:
    x = torch.rand(4, 3, 32, 40, generator=gen())
    mask = torch.zeros(4, 2, 32, 40, dtype=torch.bool)
    mask[:, 0, 8:20, 10:25] = True
    mask[:, 1, 15:30, 20:38] = True
    out = Affine(degrees=30, shear=15, scale=(0.9, 1.1), translate=(0.1, 0.1))(x, mask, generator=gen(2))
    assert out.mask is not None and out.mask.dtype == torch.bool and out.mask.shape == mask.shape
    assert not torch.equal(out.mask, mask) and out.mask.any()
    assert torch.equal(out.mask[0], out.mask[3])  # same map for every frame
    flipped = HorizontalFlip()(x, mask.to(torch.uint8))
    assert flipped.mask is not None and torch.equal(flipped.mask, mask.flip(-1).to(torch.uint8))


def test_affine_rotation_by_90_degrees_is_exact() -> None:
    x = torch.rand(2, 16, 16, generator=gen())
    z = torch.zeros(1)
    out = affine(x, None, AffineParams(ONE * 90.0, z, z, ONE, z, z, "nearest"))[0]
    assert torch.equal(out, torch.rot90(x, 1, dims=(-2, -1))) or torch.equal(out, torch.rot90(x, -1, dims=(-2, -1)))


def test_temporal_transforms_select_frames_of_image_and_mask() -> None:
    x = torch.arange(10.0).reshape(10, 1, 1).expand(10, 4, 4) / 10
    m = torch.arange(10).reshape(10, 1, 1).expand(10, 4, 4).clone()
    out = TemporalCrop(4)(x, m, generator=gen())
    assert out.mask is not None
    assert torch.equal(out.image[:, 0, 0] * 10, out.mask[:, 0, 0].float())
    assert (out.mask[1:, 0, 0] - out.mask[:-1, 0, 0]).eq(1).all()
    assert Reverse()(x).image[0, 0, 0] == pytest.approx(0.9)
    assert len(FrameDrop(3)(x, generator=gen()).image) == 7
    assert FrameStride(3).sample((10, 4, 4), gen()).indices[1:3] in ((3, 6), (4, 7), (5, 8))
    with pytest.raises(InvalidInputError, match="TemporalCrop"):
        TemporalCrop(20)(x)


def test_composition_random_apply_and_one_of() -> None:
    x = torch.rand(3, 2, 16, 16, generator=gen())
    batch = torch.rand(6, 3, 1, 16, 16, generator=gen(1))
    assert torch.equal(RandomApply(DepthAttenuation(rate=2.0, geometry="full"), p=0.0)(x).image, x)
    assert not torch.equal(RandomApply(DepthAttenuation(rate=2.0, geometry="full"), p=1.0)(x).image, x)
    ra = RandomApply(HorizontalFlip(), p=0.5)(batch, generator=gen(4))
    applied = ra.params.applied  # type: ignore[attr-defined]
    assert 0 < int(applied.sum()) < 6
    for i in range(6):
        want = batch[i].flip(-1) if applied[i] else batch[i]
        assert torch.equal(ra.image[i], want)
    one = OneOf([HorizontalFlip(), Reverse()], weights=[1.0, 0.0])(batch, generator=gen())
    assert torch.equal(one.image, batch.flip(-1))
    with pytest.raises(InvalidInputError, match="weights"):
        OneOf([HorizontalFlip()], weights=[-1.0])


def test_presets_and_replay_with_logged_params() -> None:
    clip = (torch.rand(6, 3, 48, 48, generator=gen()) * 255).to(torch.uint8)
    masks = torch.rand(6, 2, 48, 48, generator=gen(1)) > 0.7
    for t in (ultrasound(p=1.0, geometry="full"), generic_sam2(), combined(p=0.8, geometry="full")):
        out = t(clip, masks, generator=gen(9))
        assert out.image.dtype == torch.uint8 and out.image.shape == clip.shape
        assert out.mask is not None and out.mask.dtype == torch.bool and out.mask.shape == masks.shape
        image, mask = t.apply(clip, masks, out.params)
        assert torch.equal(image, out.image) and mask is not None and torch.equal(mask, out.mask)
        assert isinstance(out.params.to_dict(), dict)
    assert [type(t.transform).__name__ for t in ultrasound().transforms] == [  # type: ignore[attr-defined]
        "DepthAttenuation", "AcousticShadow", "Haze", "GainTGC", "SpeckleNoise", "SpeckleReduction"]


def test_batch_equals_per_clip_application() -> None:
    batch = torch.rand(3, 4, 1, 32, 32, generator=gen())
    t = DepthAttenuation(geometry=FAN)
    p = t.sample(batch.shape, gen(1))
    out = t.apply(batch, None, p)[0]
    assert len(set(p.rate.tolist())) == 3
    for i in range(3):
        pi = dataclasses.replace(p, rate=p.rate[i : i + 1], floor=p.floor[i : i + 1])
        assert torch.allclose(out[i], t.apply(batch[i], None, pi)[0])


def test_global_rng_untouched_and_seed_is_everything() -> None:
    x = torch.rand(4, 32, 32, generator=gen())
    state = torch.random.get_rng_state()
    t = combined(p=0.9, geometry="full")
    torch.manual_seed(1)
    a = t(x, generator=gen(123)).image
    torch.manual_seed(2)
    b = t(x, generator=gen(123)).image
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    t(x, generator=gen(5))
    t(x)  # no generator: a fresh OS-seeded one, still no global state
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), state)


def test_gradients_flow_through_intensity_and_spatial_transforms() -> None:
    for t in [*us_transforms(ScanGeometry.full(16, 16)), Affine(), GaussianBlur(), ColorJitter()]:
        x = (torch.rand(2, 16, 16, generator=gen()) * 0.6 + 0.2).requires_grad_(True)
        p = t.sample(x.shape, gen(1))
        y, _ = t.apply(x, None, p)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, type(t).__name__


def test_speckle_reduction_gradient_matches_no_grad_output() -> None:
    x = torch.rand(1, 2, 1, 12, 12, generator=gen(), dtype=torch.float64)
    with torch.no_grad():
        fast = bilateral_filter(x, ONE.double(), ONE.double() * 0.2, 5)
    xg = x.clone().requires_grad_(True)
    slow = bilateral_filter(xg, ONE.double(), ONE.double() * 0.2, 5)
    assert torch.allclose(fast, slow)
    assert torch.autograd.gradcheck(lambda v: bilateral_filter(v, ONE.double(), ONE.double() * 0.2, 3),
                                    (x[..., :6, :6].clone().requires_grad_(True),))


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors() -> None:
    t = DepthAttenuation(geometry="full")
    with pytest.raises(InvalidInputError, match=r"clip: expected a clip of rank 3.*got shape \(4, 4\)"):
        t(torch.rand(4, 4))
    bad = torch.rand(2, 8, 8)
    bad[0, 1, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="clip.*NaN"):
        t(bad)
    with pytest.raises(InvalidInputError, match=r"clip: expected float values in \[0, 1\].*max 2"):
        t(torch.full((2, 8, 8), 2.0))
    with pytest.raises(ShapeMismatchError, match=r"mask: expected shape \(2, 8, 8\).*got \(2, 8, 9\)"):
        t(torch.rand(2, 8, 8), torch.zeros(2, 8, 9, dtype=torch.bool))
    with pytest.raises(InvalidTypeError, match="clip: expected a torch.Tensor"):
        t(np.zeros((2, 8, 8), dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="clip: expected dtype uint8 or a floating dtype"):
        t(torch.zeros(2, 8, 8, dtype=torch.int32))
    with pytest.raises(InvalidInputError, match=r"rate: expected 0.0 <= min <= max <= 50.0, got \(-1.0, 2.0\)"):
        DepthAttenuation(rate=(-1.0, 2.0))
    with pytest.raises(InvalidInputError, match="strength"):
        AcousticShadow(strength=1.5)
    with pytest.raises(InvalidInputError, match="window: expected an odd int"):
        SpeckleReduction(window=4)
    with pytest.raises(InvalidInputError, match="p: expected a probability"):
        RandomApply(t, p=1.2)
    with pytest.raises(InvalidTypeError, match="params: expected DepthAttenuationParams"):
        t.apply(torch.rand(2, 8, 8), None, Haze().sample((2, 8, 8), gen()))  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match="params.rate"):
        t.apply(torch.rand(3, 2, 1, 8, 8), None, t.sample((2, 1, 8, 8), gen()))
    with pytest.raises(InvalidInputError, match="geometry"):
        DepthAttenuation(geometry="fan")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="radii"):
        ScanGeometry.fan((0.0, 0.0), (10.0, 5.0), (-0.5, 0.5))
    with pytest.raises(InvalidTypeError, match="transforms"):
        Compose(HorizontalFlip())  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# property tests
# ------------------------------------------------------------------------------------------------

ALL = all_transforms()
SPATIAL = spatial_transforms()
PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clips(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    layout = draw(st.sampled_from(["thw", "tchw", "btchw"]))
    t, h, w = draw(st.integers(3, 5)), draw(st.integers(8, 24)), draw(st.integers(8, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    shape = {"thw": (t, h, w), "tchw": (t, 3, h, w), "btchw": (2, t, 1, h, w)}[layout]
    mshape = {"thw": (t, h, w), "tchw": (t, 2, h, w), "btchw": (2, t, h, w)}[layout]
    x = torch.rand(shape, generator=g)
    if draw(st.booleans()):
        x = (x * 255).to(torch.uint8)
    return x, torch.rand(mshape, generator=g) > 0.5


@PROPS
@given(clips(), st.integers(0, len(ALL) - 1), st.integers(0, 2**31 - 1))
def test_shape_dtype_range_and_binary_masks_are_preserved(
    data: tuple[torch.Tensor, torch.Tensor], index: int, seed: int
) -> None:
    x, m = data
    t = ALL[index]
    out = t(x, m, generator=gen(seed))
    assert out.image.dtype == x.dtype and out.image.shape == x.shape
    if x.is_floating_point():
        assert bool(((out.image >= 0) & (out.image <= 1)).all())
    assert out.mask is not None and out.mask.dtype == torch.bool and out.mask.shape == m.shape
    again = t(x, m, generator=gen(seed))
    assert torch.equal(out.image, again.image) and again.mask is not None and torch.equal(out.mask, again.mask)


@PROPS
@given(st.integers(0, len(SPATIAL) - 1), st.integers(0, 2**31 - 1), st.integers(8, 24), st.integers(8, 24))
def test_image_equal_to_its_mask_stays_equal_after_geometric_transforms(
    index: int, seed: int, h: int, w: int
) -> None:
    g = gen(seed)
    mask = torch.rand(5, h, w, generator=g) > 0.5
    out = SPATIAL[index](mask.float(), mask, generator=gen(seed))
    assert out.mask is not None and torch.equal(out.image, out.mask.float())
    out8 = SPATIAL[index](mask.to(torch.uint8) * 255, mask.to(torch.uint8), generator=gen(seed))
    assert out8.mask is not None and torch.equal(out8.image, out8.mask * 255)


@PROPS
@given(st.integers(0, 6), st.integers(0, 2**31 - 1))
def test_per_clip_parameters_are_identical_over_frames(index: int, seed: int) -> None:
    frame = torch.rand(1, 32, 32, generator=gen(seed)) * 0.8 + 0.1
    clip = frame.expand(4, 32, 32).contiguous()
    transforms = [*us_transforms(ScanGeometry.full(32, 32)), Affine(), ColorJitter(), GaussianBlur()]
    t = transforms[index] if index < 7 else transforms[index]
    noisy = isinstance(t, (SpeckleNoise, Haze))
    if noisy:  # with noise drawn once per clip, every frame must be identical too
        t = SpeckleNoise(per_frame_noise=False, geometry="full") if isinstance(t, SpeckleNoise) else Haze(
            per_frame_noise=False, geometry="full")
    out = t(clip, generator=gen(seed)).image
    for k in range(1, 4):
        assert torch.equal(out[k], out[0])


def test_noise_is_redrawn_per_frame_by_default() -> None:
    clip = torch.full((3, 32, 32), 0.4)
    for t in (SpeckleNoise(geometry="full"), Haze(amplitude=0.5, sigma=0.3, geometry="full")):
        out = t(clip, generator=gen(1)).image
        assert not torch.equal(out[0], out[1])


def test_geometry_is_estimated_once_and_logged() -> None:
    frames = FAN.mask(64, 64).float()[None] * (0.3 + 0.7 * torch.rand(4, 64, 64, generator=gen()))
    out = ultrasound(p=1.0)(frames, generator=gen(1))
    geos = {c.inner.geometry for c in out.params.children}  # type: ignore[attr-defined]
    assert len(geos) == 1
    geo = geos.pop()
    assert geo.kind == "fan" and math.isclose(geo.apex[0], 31.5, abs_tol=2.0)
