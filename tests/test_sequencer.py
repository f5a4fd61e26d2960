"""Tests of medsam2kit.sequencer: geometry, windowing, normalisation, orders, the exact inverse."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medsam2kit import sequencer as sq
from medsam2kit.errors import InvalidInputError, InvalidTypeError, MedSAM2KitError, ShapeMismatchError
from medsam2kit.sequencer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WINDOW_PRESETS,
    FrameIndexError,
    PercentileWindow,
    Window,
    apply_window,
    default_axis,
    default_window,
    frame_order,
    make_layout,
    sequence_frames,
    sequence_volume,
)
from medsam2kit.volume import Volume

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPACINGS = (0.5, 1.0, 2.5, 5.0)


# ---------------------------------------------------------------------------------------------
# strategies and helpers
# ---------------------------------------------------------------------------------------------


@st.composite
def affines(draw: st.DrawFn) -> np.ndarray:
    """Random rotation (sometimes none) x axis permutation x flips x spacing, plus a translation."""
    if draw(st.booleans()):
        q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
        if np.linalg.norm(q) < 0.1:
            q = np.array([1.0, 0.0, 0.0, 0.0])
        w, x, y, z = q / np.linalg.norm(q)
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
    else:
        rot = np.eye(3)
    perm = np.eye(3)[list(draw(st.permutations([0, 1, 2])))]
    flips = np.diag([-1.0 if f else 1.0 for f in draw(st.lists(st.booleans(), min_size=3, max_size=3))])
    spacing = np.array(draw(st.lists(st.sampled_from(SPACINGS), min_size=3, max_size=3)))
    aff = np.eye(4)
    aff[:3, :3] = rot @ perm @ flips @ np.diag(spacing)
    aff[:3, 3] = draw(st.lists(st.floats(-200, 200), min_size=3, max_size=3))
    return aff


def _random_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Blobby random mask (smoothed noise), so boundaries are realistic, plus salt."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.0)
    mask = noise > np.quantile(noise, 0.6)
    mask ^= rng.random(shape) < 0.03
    return mask


def _frames_of_mask(seq: sq.FrameSequence, mask: np.ndarray) -> torch.Tensor:
    """The mask-prompt helper applied to every frame's slice: bool (T, S, S)."""
    axis = seq.layout.axis
    return torch.stack([seq.mask_to_frame(np.take(mask, s, axis=axis)) for s in seq.slice_indices])


def _as_logits(frames: torch.Tensor) -> torch.Tensor:
    return torch.where(frames, torch.tensor(10.0), torch.tensor(-10.0))


def _near_boundary(mask2d: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Voxels with a voxel of the other value within Chebyshev distance (dy, dx) in-plane."""
    size = (2 * dy + 1, 2 * dx + 1)
    m = mask2d.astype(np.uint8)
    return ndimage.maximum_filter(m, size=size, mode="nearest") != ndimage.minimum_filter(
        m, size=size, mode="nearest"
    )


def _sam2_normalisation_reference(frames_u8: np.ndarray) -> torch.Tensor:
    """sam2.utils.misc.load_video_frames_from_jpg_images, written out by hand (without the file
    reading and the PIL resize, which are identities for S x S uint8 frames)."""
    t, (h, w) = frames_u8.shape[0], frames_u8.shape[-2:]
    images = torch.zeros(t, 3, h, w, dtype=torch.float32)
    for n in range(t):
        rgb = frames_u8[n] if frames_u8.ndim == 4 else np.repeat(frames_u8[n][None], 3, axis=0)
        img_np = np.moveaxis(rgb, 0, -1) / 255.0  # float64, as sam2 does on the numpy image
        images[n] = torch.from_numpy(img_np).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    images -= mean
    images /= std
    return images


# ---------------------------------------------------------------------------------------------
# (1) mask round trip volume -> frames (mask prompt helper) -> inverse
# ---------------------------------------------------------------------------------------------


@FAST
@given(
    data=st.data(),
    size=st.sampled_from([32, 64]),
    resize=st.sampled_from(["pad", "squash"]),
    aff=affines(),
)
def test_mask_round_trip_is_identity_at_integer_scale(
    data: st.DataObject, size: int, resize: str, aff: np.ndarray
) -> None:
    # in-plane sides dividing S give integer scales in both modes (in "pad" only the longer must)
    divisors = [1, 2, 4, 8, 16]
    axis = data.draw(st.integers(0, 2))
    shape = [data.draw(st.sampled_from(divisors)) for _ in range(3)]
    shape[axis] = data.draw(st.integers(1, 5))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    mask = _random_mask(rng, tuple(shape))
    vol = Volume(mask.astype(np.float32), aff)
    seq = sequence_volume(vol, axis=axis, image_size=size, resize=resize)  # type: ignore[arg-type]
    sy, sx = seq.layout.scale
    assert sy == int(sy) and sx == int(sx)
    frames = _frames_of_mask(seq, mask)
    assert np.array_equal(seq.to_volume_mask(frames).array, mask)
    assert np.array_equal(seq.to_volume_mask(_as_logits(frames)).array, mask)
    assert np.array_equal(seq.to_volume_mask(_as_logits(frames).numpy()).array, mask)


@FAST
@given(data=st.data(), size=st.sampled_from([32, 64]), resize=st.sampled_from(["pad", "squash"]))
def test_mask_round_trip_nearest_is_identity_whenever_upsampling(data: st.DataObject, size: int, resize: str) -> None:
    # Proof: forward u -> floor((u + .5) h / n), backward i -> u_i = floor((i + .5) n / h); for
    # n >= h, (u_i + .5) h / n lies in [i + .5 - h / 2n, i + .5 + h / 2n) within [i, i + 1).
    shape = tuple(data.draw(st.integers(1, 31)) for _ in range(3))
    axis = data.draw(st.integers(0, 2))
    mask = _random_mask(np.random.default_rng(data.draw(st.integers(0, 2**31))), shape)
    seq = sequence_volume(mask.astype(np.uint8) * 255, axis=axis, image_size=size, resize=resize, window=None)  # type: ignore[arg-type]
    assert min(seq.layout.scale) >= 1.0
    assert np.array_equal(seq.to_volume_mask(_frames_of_mask(seq, mask)).array, mask)


@FAST
@given(data=st.data(), resize=st.sampled_from(["pad", "squash"]))
def test_mask_round_trip_changes_only_near_boundary(data: st.DataObject, resize: str) -> None:
    # Bound (per in-plane axis with scale r = resized / original):
    #  * bool masks (nearest both ways): voxel i takes the value of voxel i' with
    #    |i - i'| <= ceil(1 / (2 r)), so a changed voxel has a voxel of the other value within
    #    that distance (0 when r >= 1: identity);
    #  * logits (nearest forward, bilinear back, threshold): the <= 2 frame pixels bracketing the
    #    sample point (i + .5) r - .5 come from voxels within ceil(1 / r) of i, so a changed voxel
    #    has a voxel of the other value within ceil(1 / r) (one voxel whenever r >= 1).
    shape = tuple(data.draw(st.integers(1, 48)) for _ in range(3))
    axis = data.draw(st.integers(0, 2))
    mask = _random_mask(np.random.default_rng(data.draw(st.integers(0, 2**31))), shape)
    seq = sequence_volume(mask.astype(np.float32), axis=axis, image_size=32, resize=resize)  # type: ignore[arg-type]
    sy, sx = seq.layout.scale
    frames = _frames_of_mask(seq, mask)
    cases = [
        (seq.to_volume_mask(frames).array, math.ceil(1 / (2 * sy)), math.ceil(1 / (2 * sx))),
        (seq.to_volume_mask(_as_logits(frames)).array, math.ceil(1 / sy), math.ceil(1 / sx)),
    ]
    for back, dy, dx in cases:
        for s in range(shape[axis]):
            orig, got = np.take(mask, s, axis=axis), np.take(back, s, axis=axis)
            changed = orig != got
            assert not np.any(changed & ~_near_boundary(orig, dy, dx))


# ---------------------------------------------------------------------------------------------
# (2) geometry of the returned volume
# ---------------------------------------------------------------------------------------------


@FAST
@given(
    aff=affines(),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    kind=st.sampled_from(["volume", "cine"]),
)
def test_returned_geometry_equals_input(aff: np.ndarray, shape: tuple[int, int, int], kind: str) -> None:
    vol = Volume(
        np.arange(np.prod(shape), dtype=np.int16).reshape(shape),
        aff,
        kind=kind,  # type: ignore[arg-type]
        modality="MR",
        source="x.nii.gz",
    )
    seq = sequence_volume(vol, image_size=32)
    t, size = len(seq), seq.image_size
    for out in (
        seq.to_volume_logits(torch.zeros(t, size, size)),
        seq.to_volume_mask(np.zeros((t, size, size), bool)),
    ):
        assert out.shape == vol.shape and out.kind == vol.kind and out.modality == "MR"
        assert np.array_equal(out.affine, vol.affine) and out.same_grid(vol, atol=0.0)
    assert seq.to_volume_logits(torch.zeros(t, size, size)).array.dtype == np.float32
    assert seq.to_volume_mask(torch.zeros(t, size, size)).array.dtype == np.bool_


# ---------------------------------------------------------------------------------------------
# (3) exact coordinate mapping
# ---------------------------------------------------------------------------------------------


@FAST
@given(
    data=st.data(),
    aff=affines(),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    size=st.sampled_from([32, 64]),
    resize=st.sampled_from(["pad", "squash"]),
    axis=st.integers(0, 2),
)
def test_frame_voxel_mapping_is_inverse_and_matches_frame_affine(
    data: st.DataObject, aff: np.ndarray, shape: tuple[int, int, int], size: int, resize: str, axis: int
) -> None:
    order = data.draw(st.permutations(list(range(shape[axis]))))
    lay = make_layout(shape, axis=axis, image_size=size, resize=resize, order=order)  # type: ignore[arg-type]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    n = 50
    txy = np.stack(
        [rng.integers(0, len(order), n), rng.uniform(-1, size, n), rng.uniform(-1, size, n)], axis=-1
    ).astype(np.float64)
    ijk = lay.frame_to_voxel(txy)
    assert np.allclose(lay.voxel_to_frame(ijk), txy, atol=1e-9)
    vox = np.stack([rng.uniform(-1, s, n) for s in shape], axis=-1)
    vox[:, axis] = rng.integers(0, shape[axis], n)
    assert np.allclose(lay.frame_to_voxel(lay.voxel_to_frame(vox)), vox, atol=1e-9)
    # slice index along the axis comes from the frame -> slice mapping
    assert np.array_equal(ijk[:, axis], np.asarray(order)[txy[:, 0].astype(int)])
    # frame_affine(t) = affine o frame -> voxel
    seq_geom = Volume(np.zeros(shape, np.uint8), aff)
    seq = sq.FrameSequence(frames=torch.zeros(len(order), size, size, dtype=torch.uint8), layout=lay,
                           window=None, geometry=seq_geom)
    for k in range(5):
        t = int(txy[k, 0])
        world = seq.frame_affine(t) @ np.array([txy[k, 1], txy[k, 2], 0.0, 1.0])
        assert np.allclose(world[:3], aff[:3, :3] @ ijk[k] + aff[:3, 3], atol=1e-6)
        assert np.allclose(seq.frame_to_world(txy[k]), world[:3], atol=1e-6)
    # in-slice points and boxes use the same mapping
    pts = vox[:, [cols for cols in range(3) if cols != axis]][:, ::-1]  # (x, y) = (col, row)
    pf = lay.points_to_frame(pts)
    assert np.allclose(pf, lay.voxel_to_frame(vox)[:, 1:], atol=1e-9)
    assert np.allclose(lay.points_to_slice(pf), pts, atol=1e-9)
    boxes = np.concatenate([pts[:10], pts[10:20]], axis=-1)
    assert np.allclose(lay.boxes_to_frame(boxes), np.concatenate([pf[:10], pf[10:20]], axis=-1))


@FAST
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    size=st.sampled_from([32, 64]),
    resize=st.sampled_from(["pad", "squash"]),
    axis=st.integers(0, 2),
)
def test_inverse_samples_logits_exactly_at_mapped_positions(
    data: st.DataObject, shape: tuple[int, int, int], size: int, resize: str, axis: int
) -> None:
    # A field linear in (x, y) is reproduced exactly by bilinear point sampling, so the inverse
    # must return a*x + b*y + c_t at each voxel's frame position (x, y) = voxel_to_frame(voxel)
    # wherever that position lies inside the resized region (no edge clamping).
    a, b = data.draw(st.floats(-2, 2)), data.draw(st.floats(-2, 2))
    seq = sequence_volume(np.zeros(shape, np.float32), axis=axis, image_size=size, resize=resize)  # type: ignore[arg-type]
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    offsets = np.arange(len(seq), dtype=np.float64) * 7.0
    field = (a * xx + b * yy)[None] + offsets[:, None, None]
    back = seq.to_volume_logits(torch.from_numpy(field.astype(np.float32))).array
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    txy = seq.voxel_to_frame(grid)
    expected = a * txy[:, 1] + b * txy[:, 2] + offsets[txy[:, 0].astype(int)]
    (top, left), (nh, nw) = seq.layout.pad, seq.layout.resized_shape
    inside = (
        (txy[:, 1] >= left) & (txy[:, 1] <= left + nw - 1) & (txy[:, 2] >= top) & (txy[:, 2] <= top + nh - 1)
    )
    got = back.reshape(-1)
    assert np.allclose(got[inside], expected[inside], atol=2e-3 * (1 + abs(a) + abs(b)) * size)


@FAST
@given(
    data=st.data(),
    shape=st.tuples(st.integers(2, 30), st.integers(2, 30), st.integers(2, 30)),
    size=st.sampled_from([32, 64]),
    resize=st.sampled_from(["pad", "squash"]),
    axis=st.integers(0, 2),
)
def test_frames_sample_the_volume_at_mapped_positions(
    data: st.DataObject, shape: tuple[int, int, int], size: int, resize: str, axis: int
) -> None:
    # Forward direction: a volume linear in the voxel index is reproduced by the (upsampling)
    # bilinear resize, so frame pixel (t, x, y) must show rint(value at frame_to_voxel(t, x, y))
    # (within rounding) wherever that voxel position is inside the grid.
    # |coef| <= 1.4 keeps 127 + grid @ coef inside [5, 249] for sides <= 30: no voxel is clipped by
    # the window, so the volume stays linear (interpolating clipped values would not be).
    coef = np.array([data.draw(st.floats(-1.4, 1.4)) for _ in range(3)])
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    vol = (grid @ coef + 127.0).astype(np.float32)
    seq = sequence_volume(vol, axis=axis, image_size=size, resize=resize, window=(0, 255))  # type: ignore[arg-type]
    t = data.draw(st.integers(0, len(seq) - 1))
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    txy = np.stack([np.full(size * size, t), xx.ravel(), yy.ravel()], axis=-1)
    ijk = seq.frame_to_voxel(txy)
    inside = np.all((ijk >= 0) & (ijk <= np.array(shape) - 1), axis=-1)
    expected = ijk @ coef + 127.0
    got = seq.frames[t].numpy().ravel().astype(np.float64)
    assert np.all(np.abs(got[inside] - expected[inside]) <= 0.5 + 1e-3)


# ---------------------------------------------------------------------------------------------
# (4) frame order
# ---------------------------------------------------------------------------------------------


def test_frame_order_runs() -> None:
    assert frame_order(5) == ((0, 1, 2, 3, 4),)
    assert frame_order(5, "reverse") == ((4, 3, 2, 1, 0),)
    assert frame_order(5, "centre_out") == ((2, 3, 4), (2, 1, 0))
    assert frame_order(6, "centre_out", starts=[1, 4]) == ((1, 2, 3, 4, 5), (1, 0), (4, 5), (4, 3, 2, 1, 0))
    assert frame_order(4, "forward", starts=[2]) == ((2, 3),)
    assert frame_order(1, "centre_out") == ((0,), (0,))


@FAST
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
    axis=st.integers(0, 2),
    size=st.sampled_from([32, 64]),
    resize=st.sampled_from(["pad", "squash"]),
)
def test_slice_constant_volume_comes_back_in_any_order(
    data: st.DataObject, shape: tuple[int, int, int], axis: int, size: int, resize: str
) -> None:
    n = shape[axis]
    index_shape = [1, 1, 1]
    index_shape[axis] = n
    vol = np.broadcast_to(np.arange(n, dtype=np.float32).reshape(index_shape), shape).copy()
    subset = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    runs = (list(range(n)), list(range(n - 1, -1, -1)), subset)
    for order in ("forward", "reverse", *runs):
        seq = sequence_volume(vol, axis=axis, image_size=size, resize=resize, window=(0, 255), order=order)  # type: ignore[arg-type]
        (top, left), (nh, nw) = seq.layout.pad, seq.layout.resized_shape
        for t, s in enumerate(seq.slice_indices):
            inner = seq.frames[t, top : top + nh, left : left + nw]
            assert bool((inner == s).all())  # frame t shows slice s
        back = seq.to_volume_logits(seq.frames.float()).array
        covered = np.zeros(n, bool)
        covered[list(seq.slice_indices)] = True
        for s in range(n):
            sl = np.take(back, s, axis=axis)
            assert np.all(sl == s) if covered[s] else np.all(sl == -np.inf)
        # a mapping {t: frame} in any key order goes to the same slices
        shuffled = {t: seq.frames[t].float() for t in reversed(range(len(seq)))}
        assert np.array_equal(seq.to_volume_logits(shuffled).array, back)


def test_centre_out_runs_fill_the_volume() -> None:
    vol = np.broadcast_to(np.arange(7, dtype=np.float32)[:, None, None], (7, 5, 6)).copy()
    result = np.full(vol.shape, np.nan, np.float32)
    for run in frame_order(7, "centre_out", starts=[3]):
        seq = sequence_volume(vol, axis=0, image_size=32, window=(0, 255), order=run)
        assert seq.frame_of_slice(run[-1]) == len(run) - 1
        back = seq.to_volume_logits(seq.frames.float()).array
        covered = np.isfinite(back)
        result[covered] = back[covered]
    assert np.array_equal(result, vol)


def test_partial_results_and_fill_values() -> None:
    seq = sequence_volume(np.zeros((4, 8, 8), np.float32), image_size=32)
    out = seq.to_volume_logits({2: torch.ones(32, 32)}, fill=-50.0).array
    assert np.all(out[2] == 1.0) and np.all(out[[0, 1, 3]] == -50.0)
    mask = seq.to_volume_mask({1: torch.ones(32, 32, dtype=torch.bool)}).array
    assert mask[1].all() and not mask[[0, 2, 3]].any()
    assert not seq.to_volume_mask({0: -torch.ones(32, 32)}).array.any()


# ---------------------------------------------------------------------------------------------
# (5) normalisation = sam2's formula
# ---------------------------------------------------------------------------------------------


def test_normalisation_matches_sam2_formula_bitwise() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    gray[0, 0, :] = np.arange(32)  # make sure many values appear
    seq = sequence_frames(gray, image_size=32, window=None)
    assert torch.equal(seq.frames, torch.from_numpy(gray))  # identity window, identity resize
    ref = _sam2_normalisation_reference(gray)
    assert torch.equal(seq.normalized(), ref)
    assert torch.equal(seq.normalized([2, 0]), ref[[2, 0]])
    for t in range(3):
        assert seq[t].dtype == torch.float32 and torch.equal(seq[t], ref[t])
    assert torch.equal(seq[-1], ref[2])
    # every uint8 value, through the table
    all_values = torch.arange(256, dtype=torch.uint8).reshape(1, 8, 32)
    assert torch.equal(sq.normalize_frames(all_values), _sam2_normalisation_reference(all_values.numpy()))
    # colour kept as colour
    rgb = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    seq_rgb = sequence_frames(rgb, image_size=32, window=None, color="keep")
    assert torch.equal(seq_rgb.normalized(), _sam2_normalisation_reference(np.moveaxis(rgb, -1, 1)))


def test_normalisation_matches_sam2_loader(tmp_path: Path) -> None:
    misc = pytest.importorskip("sam2.utils.misc")
    pil = pytest.importorskip("PIL.Image")
    frame = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    path = tmp_path / "0.png"
    pil.fromarray(frame).save(path)  # lossless; sam2's loader is format-agnostic past Image.open
    img, _, _ = misc._load_img_as_tensor(str(path), 32)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.float32)
    images[0] = img
    images -= torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    images /= torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    seq = sequence_frames(frame[None], image_size=32, window=None)
    assert torch.equal(seq[0], images[0])


def test_sequence_protocol() -> None:
    seq = sequence_frames(np.zeros((3, 8, 8), np.uint8), image_size=32, window=None)
    assert len(list(seq)) == 3  # iteration stops on FrameIndexError (an IndexError)
    with pytest.raises(FrameIndexError, match="frame index"):
        seq[3]
    with pytest.raises(IndexError):
        seq[-4]
    assert seq[np.int64(1)].shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# (6) default axis
# ---------------------------------------------------------------------------------------------


def _reference_axis(aff: np.ndarray, shape: tuple[int, int, int]) -> int:
    """The documented rule, written out plainly: largest spacing (rtol 1e-3), fewest slices,
    nearest world superior-inferior, lowest axis."""
    cols = aff[:3, :3]
    spacing = [float(np.linalg.norm(cols[:, i])) for i in range(3)]
    tied = [i for i in range(3) if spacing[i] >= max(spacing) * (1 - 1e-3)]
    tied = [i for i in tied if shape[i] == min(shape[j] for j in tied)]
    si = {i: abs(cols[2, i]) / spacing[i] for i in tied}
    return min(i for i in tied if si[i] >= max(si.values()) - 1e-9)


@FAST
@given(aff=affines(), shape=st.tuples(*[st.sampled_from([3, 4, 5])] * 3))
def test_default_axis_follows_the_documented_rule(aff: np.ndarray, shape: tuple[int, int, int]) -> None:
    expected = _reference_axis(aff, shape)
    vol = Volume(np.zeros(shape, np.float32), aff)
    assert default_axis(aff, shape=shape) == expected
    assert default_axis(vol) == expected
    assert sequence_volume(vol, image_size=32).layout.axis == expected
    cine = Volume(np.zeros(shape, np.uint8), aff, kind="cine")
    assert default_axis(aff, kind="cine") == 0 and default_axis(cine) == 0
    assert sequence_volume(cine, image_size=32, window=None).layout.axis == 0


@FAST
@given(
    aff=affines(),
    shape=st.tuples(*[st.sampled_from([4, 9, 30])] * 3),
    perm=st.permutations([0, 1, 2]),
)
def test_default_axis_follows_a_permutation_of_the_array_axes(
    aff: np.ndarray, shape: tuple[int, int, int], perm: list[int]
) -> None:
    """Transposing the array (and the affine's columns with it) keeps the chosen world axis,
    whenever the rule decides before its last resort (the lowest axis)."""
    base = default_axis(aff, shape=shape)
    cols = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    tied = [i for i in range(3) if spacing[i] >= spacing.max() * (1 - 1e-3) and shape[i] == shape[base]]
    if sum(abs(abs(cols[2, i]) - abs(cols[2, base])) < 1e-6 for i in tied) > 1:
        return  # an exact tie in world terms too: only the lowest-axis fallback decides
    moved = aff.copy()
    moved[:3, :3] = aff[:3, perm]
    moved_shape = (shape[perm[0]], shape[perm[1]], shape[perm[2]])
    chosen = default_axis(Volume(np.zeros(moved_shape, np.uint8), moved))
    assert perm[chosen] == base


def test_default_axis_examples() -> None:
    # anisotropic: the thick-slice axis, whatever the shape
    assert default_axis(np.diag([0.7, 0.7, 5.0, 1.0])) == 2
    assert default_axis(np.diag([0.7, 0.7, 5.0, 1.0]), shape=(10, 384, 384)) == 2
    assert default_axis(np.diag([1.0, 3.0, 3.0, 1.0])) == 2  # tie 1-2, no shape: nearest world z
    assert default_axis(np.diag([1.0, 3.0, 3.0, 1.0]), shape=(5, 20, 8)) == 2  # fewest slices
    assert default_axis(np.diag([1.0, 3.0, 3.0, 1.0]), shape=(5, 8, 20)) == 1
    assert default_axis(np.diag([1.0, 3.0, 3.0 * (1 + 1e-4), 1.0]), shape=(5, 8, 20)) == 1  # tie within 1e-3
    assert default_axis(np.diag([1.0, 3.0, 3.0 * (1 + 1e-2), 1.0]), shape=(5, 8, 20)) == 2  # no tie
    # 1 mm everywhere (common after format conversion) with a short axis: that axis, not 384 x 10 frames
    assert default_axis(np.eye(4), shape=(384, 384, 10)) == 2
    assert default_axis(Volume(np.zeros((384, 10, 384), np.uint8), np.eye(4))) == 1
    assert default_axis(np.diag([0.8, 0.8, 0.8, 1.0]), shape=(12, 200, 200)) == 0
    # an isotropic cube: the axis nearest the world superior-inferior direction
    assert default_axis(np.eye(4), shape=(6, 6, 6)) == 2
    permuted = np.eye(4)[:, [2, 0, 1, 3]]  # array axis 0 runs along world z
    assert default_axis(permuted, shape=(6, 6, 6)) == 0
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    oblique = np.eye(4)
    oblique[:3, :3] = np.array([[1.0, 0.0, 0.0], [0.0, s, -c], [0.0, c, s]])  # axis 1 is 30 deg off z
    assert default_axis(oblique, shape=(6, 6, 6)) == 1
    assert sequence_volume(Volume(np.zeros((6, 6, 6), np.float32), oblique), image_size=32).layout.axis == 1


def test_default_axis_accepts_a_volume_or_an_affine_only() -> None:
    vol = Volume(np.zeros((4, 5, 6), np.float32), np.diag([3.0, 1.0, 1.0, 1.0]))
    assert default_axis(vol) == 0
    with pytest.raises(InvalidTypeError, match="geometry: expected a Volume or a \\(4, 4\\) affine"):
        default_axis("RAS")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="shape"):
        default_axis(vol, shape=(4, 5, 6))
    with pytest.raises(InvalidInputError, match="shape"):
        default_axis(np.eye(4), shape=(4, 5))
    with pytest.raises(InvalidInputError, match="kind"):
        default_axis(np.eye(4), kind="video")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# (7) windowing closed forms
# ---------------------------------------------------------------------------------------------


def test_window_presets_closed_form() -> None:
    expected = {
        "soft_tissue": (-160.0, 240.0),
        "lung": (-1350.0, 150.0),
        "bone": (-500.0, 1300.0),
        "brain": (0.0, 80.0),
        "liver": (-20.0, 140.0),
        "mediastinum": (-125.0, 225.0),
    }
    assert set(WINDOW_PRESETS) == set(expected)
    for name, (low, high) in expected.items():
        win = Window.preset(name)
        assert (win.low, win.high) == (low, high)
        assert (win.centre, win.width) == WINDOW_PRESETS[name]
    assert default_window("CT", ct_preset="lung") == Window.preset("lung")
    assert default_window("CT") == PercentileWindow(0.5, 99.5)
    assert default_window("US", ct_preset="lung") == PercentileWindow(0.5, 99.5)


@FAST
@given(
    low=st.floats(-2000, 2000),
    width=st.floats(1e-2, 4000),
    values=st.lists(st.floats(-5000, 5000), min_size=1, max_size=50),
)
def test_window_closed_form(low: float, width: float, values: list[float]) -> None:
    high = low + width
    if not high > low:
        return
    x = np.array(values + [low, high])
    u8 = apply_window(x, Window(low, high))
    assert u8.dtype == np.uint8
    linear = (x - low) * 255.0 / (high - low)
    assert np.all(u8[x <= low] == 0) and np.all(u8[x >= high] == 255)
    inside = (x > low) & (x < high)
    assert np.all(np.abs(u8[inside] - linear[inside]) <= 0.5 + 1e-3)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(u8[order].astype(int)) >= 0)  # monotone


@FAST
@given(
    lower=st.floats(0, 49),
    upper=st.floats(51, 100),
    depth=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_percentile_window_is_global(lower: float, upper: float, depth: int, seed: int) -> None:
    shape = (depth, 32, 32)  # identity resize at S = 32: frames are exactly the windowed slices
    vol = np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 100
    vol[0] += 1000.0  # one bright slice: the window is still shared by all frames
    win = PercentileWindow(lower, upper).resolve(vol)
    lo, hi = np.percentile(vol, [lower, upper])
    assert math.isclose(win.low, lo) and (math.isclose(win.high, hi) or hi <= lo)
    seq = sequence_volume(vol, axis=0, image_size=32, window=PercentileWindow(lower, upper))
    assert seq.window == win
    # every frame went through the same window (the bright slice did not get its own)
    assert np.array_equal(seq.frames.numpy(), apply_window(vol, win))


def test_frames_equal_windowed_slices_at_identity_resize() -> None:
    rng = np.random.default_rng(3)
    vol = rng.normal(40, 300, size=(3, 32, 64)).astype(np.float32)
    seq = sequence_volume(vol, axis=1, image_size=64, window="soft_tissue", resize="squash")
    assert seq.layout.resized_shape == (64, 64) and seq.layout.scale == (64 / 3, 1.0)
    seq = sequence_volume(vol.transpose(1, 0, 2).copy(), axis=0, image_size=64, window="soft_tissue")
    # slices are (3, 64): padded vertically, scale 1 along columns
    assert seq.layout.resized_shape == (3, 64)
    (top, _), expected = seq.layout.pad, apply_window(vol.transpose(1, 0, 2), Window.preset("soft_tissue"))
    assert np.array_equal(seq.frames[:, top : top + 3].numpy(), expected)
    assert int(seq.frames[:, :top].max()) == 0 and int(seq.frames[:, top + 3 :].max()) == 0


def test_constant_volume_gets_a_non_empty_window() -> None:
    seq = sequence_volume(np.full((2, 4, 4), 7.0), image_size=32)
    assert seq.window == Window(7.0, 8.0) and int(seq.frames.max()) == 0


def test_rgb_cine_to_gray() -> None:
    rgb = np.zeros((2, 16, 32, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    seq = sequence_frames(rgb, image_size=32, window=None, frame_times=[0.0, 33.3])
    luma = round(0.299 * 100 + 0.587 * 200)
    assert seq.frames.shape == (2, 32, 32) and int(seq.frames[0, 16, 16]) == luma
    assert seq.geometry.kind == "cine" and seq.geometry.frame_times == (0.0, 33.3)
    out = seq.to_volume_mask(np.ones((2, 32, 32), bool))
    assert out.shape == (2, 16, 32) and out.array.all()


def test_torch_input() -> None:
    t = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    a = sequence_volume(t, image_size=32)
    b = sequence_volume(t.numpy(), image_size=32)
    assert torch.equal(a.frames, b.frames)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: sequence_volume(np.zeros((4, 4)), image_size=32), InvalidInputError, r"volume: expected 3 dim.*\(4, 4\)"),
        (lambda: sequence_frames(np.zeros((2, 4, 4, 2)), image_size=32), InvalidInputError, r"frames: expected shape"),
        (lambda: sequence_volume(np.zeros((2, 4, 4)), axis=3, image_size=32), InvalidInputError, r"axis: expected 0, 1 or 2 \(or -3, -2, -1\), got 3"),
        (lambda: sequence_volume(np.zeros((2, 4, 4)), axis=1.0, image_size=32), InvalidTypeError, r"axis: expected an integer"),
        (lambda: sequence_volume(np.array([[[np.nan]]]), image_size=32), InvalidInputError, r"volume: expected finite values, got 1 NaN"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=0), InvalidInputError, r"image_size: expected an integer >= 1, got 0"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=48), InvalidInputError, r"image_size: expected a positive multiple of 32.*got 48"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=True), InvalidTypeError, r"image_size: expected an integer"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=32, resize="crop"), InvalidInputError, r"resize: expected"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=32, window=(3.0, 3.0)), InvalidInputError, r"window: expected low < high.*low=3.0, high=3.0"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=32, window="lungs"), InvalidInputError, r"window: expected one of"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=32, window=None), InvalidInputError, r"window: None .* uint8 .* float64"),
        (lambda: sequence_volume(np.zeros((1, 2, 2)), image_size=32, window=[0, 1]), InvalidTypeError, r"window: expected a Window"),
        (lambda: sequence_volume(np.zeros((3, 2, 2)), axis=0, image_size=32, order=[0, 0]), InvalidInputError, r"order: expected distinct.*\[0\]"),
        (lambda: sequence_volume(np.zeros((3, 2, 2)), axis=0, image_size=32, order=[3]), InvalidInputError, r"order: expected slice indices in \[0, 2\], got \[3\]"),
        (lambda: sequence_volume(np.zeros((3, 2, 2)), axis=0, image_size=32, order="centre_out"), InvalidInputError, r"frame_order"),
        (lambda: sequence_volume(Volume(np.zeros((3, 2, 2)), np.eye(4), kind="cine"), axis=1, image_size=32), InvalidInputError, r"axis: a cine"),
        (lambda: sequence_volume(Volume(np.zeros((3, 2, 2)), np.eye(4)), affine=np.eye(4), image_size=32), InvalidInputError, r"affine: expected None"),
        (lambda: sequence_volume([[[1.0]]], image_size=32), InvalidTypeError, r"volume: expected a numpy array"),
        (lambda: Window.from_centre_width(0, 0), InvalidInputError, r"width: expected a finite value > 0, got 0"),
        (lambda: Window(0, float("inf")), InvalidInputError, r"window.high: expected a finite value"),
        (lambda: PercentileWindow(60, 40), InvalidInputError, r"percentiles: expected 0 <= lower < upper <= 100"),
        (lambda: frame_order(0), InvalidInputError, r"num_slices: expected an integer >= 1, got 0"),
        (lambda: frame_order(3, "outward"), InvalidInputError, r"mode: expected"),  # type: ignore[arg-type]
        (lambda: frame_order(3, "centre_out", starts=[5]), InvalidInputError, r"starts: expected slice indices in \[0, 2\], got \[5\]"),
    ],
)
def test_bad_input_errors(call: object, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern) as info:
        call()  # type: ignore[operator]
    assert isinstance(info.value, MedSAM2KitError)


def test_inverse_and_prompt_errors() -> None:
    seq = sequence_volume(np.zeros((3, 4, 6), np.float32), image_size=32)
    with pytest.raises(ShapeMismatchError, match=r"logits: expected shape \(3, 32, 32\).*got \(3, 64, 64\)"):
        seq.to_volume_logits(torch.zeros(3, 64, 64))
    with pytest.raises(ShapeMismatchError, match=r"logits: expected shape \(3, 32, 32\).*got \(3, 1, 32, 32\)"):
        seq.to_volume_logits(torch.zeros(3, 1, 32, 32))
    with pytest.raises(ShapeMismatchError, match=r"logits\[1\]: expected shape \(32, 32\)"):
        seq.to_volume_logits({1: torch.zeros(16, 16)})
    with pytest.raises(InvalidInputError, match=r"logits key: expected a frame index in \[0, 2\]"):
        seq.to_volume_logits({5: torch.zeros(32, 32)})
    with pytest.raises(InvalidInputError, match="NaN"):
        seq.to_volume_logits(torch.full((3, 32, 32), float("nan")))
    with pytest.raises(InvalidTypeError, match="float logits or bool masks"):
        seq.to_volume_mask(torch.zeros(3, 32, 32, dtype=torch.int64))
    with pytest.raises(InvalidTypeError, match="use to_volume_mask"):
        seq.to_volume_logits(torch.zeros(3, 32, 32, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError, match=r"mask: expected shape \(4, 6\) \(one slice\), got \(6, 4\)"):
        seq.mask_to_frame(np.zeros((6, 4), bool))
    with pytest.raises(InvalidTypeError, match="mask: expected a bool or integer array"):
        seq.mask_to_frame(np.zeros((4, 6), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"points: expected shape \(\.\.\., 2\)"):
        seq.points_to_frame(np.zeros((2, 3)))
    with pytest.raises(InvalidInputError, match=r"ijk: expected coordinates along axis 0"):
        seq.voxel_to_frame([0.5, 1, 1])
    with pytest.raises(InvalidInputError, match=r"txy: expected integer frame indices"):
        seq.frame_to_voxel([3, 1, 1])
    sub = sequence_volume(np.zeros((3, 4, 6), np.float32), image_size=32, order=[2])
    with pytest.raises(InvalidInputError, match=r"slice_index: expected one of the sequence's slices \[2\], got 0"):
        sub.frame_of_slice(0)


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_deeplesion_default_axis_and_label_round_trip(shared_data: Path) -> None:
    nib = pytest.importorskip("nibabel")
    images = sorted((shared_data / "deeplesion_ct").glob("*_img.nii.gz"))
    if not images:
        pytest.skip("deeplesion_ct not present in the shared data folder")
    for img_path in images:
        img = nib.load(img_path)
        lab = nib.load(str(img_path).replace("_img", "_label"))
        vol = Volume(np.asarray(img.dataobj), img.affine, modality="CT", source=str(img_path))
        label = np.asarray(lab.dataobj) > 0
        assert nib.aff2axcodes(img.affine) == ("P", "L", "I")
        axis = default_axis(vol)
        assert axis == 2 and math.isclose(vol.spacing[2], 5.0, rel_tol=1e-3)
        seq = sequence_volume(vol, image_size=512, window=None)  # already windowed uint8
        assert seq.layout.axis == 2 and len(seq) == vol.shape[2] and seq.layout.scale == (1.0, 1.0)
        assert np.array_equal(seq.frames.numpy(), np.moveaxis(vol.array, 2, 0))
        frames = _frames_of_mask(seq, label)
        for out in (seq.to_volume_mask(frames), seq.to_volume_mask(_as_logits(frames))):
            assert np.array_equal(out.array, label) and out.same_grid(vol, atol=0.0)
        # frame geometry: a frame pixel lands on the world position of its voxel
        t = int(np.argmax(label.sum(axis=(0, 1))))
        i, j = np.argwhere(label[:, :, t])[0]
        txy = seq.voxel_to_frame([i, j, t])
        assert txy.tolist() == [t, j, i]
        assert np.allclose(seq.frame_to_world(txy), img.affine[:3, :3] @ [i, j, t] + img.affine[:3, 3])


def test_prompts_are_checked_against_the_slice() -> None:
    """A box entirely off the slice is an error naming the slice size (the README's old box on a
    51 x 33 hippocampus slice gave a mask over 20 % of the volume); partly off: clipped (silently
    within one voxel, with a warning beyond); points must lie on the slice."""
    import warnings

    seq = sequence_frames(np.zeros((2, 33, 51), np.uint8), image_size=64, window=None)
    with pytest.raises(InvalidInputError, match=r"boxes: .*51 x 33 voxels.*\[40\.0, 52\.0, 90\.0, 110\.0\], entirely"):
        seq.boxes_to_frame([40, 52, 90, 110])
    with pytest.raises(InvalidInputError, match=r"x0 <= x1"):
        seq.boxes_to_frame([10, 5, 4, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edge = seq.boxes_to_frame([0, 0, 51, 33])  # the common "max + 1" far corner: clipped silently
    assert np.allclose(edge, seq.layout.boxes_to_frame([0, 0, 50.5, 32.5]))
    with pytest.warns(sq.PromptClippedWarning, match="51 x 33"):
        far = seq.boxes_to_frame([[40, 2, 90, 20]])
    assert np.allclose(far, seq.layout.boxes_to_frame([[40, 2, 50.5, 20]]))
    assert far.shape == (1, 4)
    assert np.allclose(seq.points_to_frame([[50, 32]]), seq.layout.points_to_frame([[50, 32]]))
    with pytest.raises(InvalidInputError, match=r"points: .*51 x 33 voxels.*got \[60\.0, 4\.0\]"):
        seq.points_to_frame([[3, 4], [60, 4]])
    with pytest.raises(InvalidInputError, match=r"points: .*got \[3\.0, -2\.0\]"):
        seq.points_to_frame([3, -2])
