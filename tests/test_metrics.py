"""Tests of medsam2kit.metrics against brute-force references, closed forms and MedPy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medsam2kit import metrics as mt
from medsam2kit.errors import GeometryError, InvalidInputError, MedSAM2KitError, ShapeMismatchError
from medsam2kit.volume import Volume

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Brute-force references (no EDT, no erosion)
# --------------------------------------------------------------------------------------------


def bf_border(m: np.ndarray) -> np.ndarray:
    """Foreground voxels with a face neighbour that is background or outside the array."""
    padded = np.pad(m, 1)
    core = tuple(slice(1, -1) for _ in range(m.ndim))
    out = np.zeros_like(m)
    for ax in range(m.ndim):
        for step in (-1, 1):
            shifted = np.roll(padded, step, axis=ax)[core]
            out |= m & ~shifted
    return out


def bf_directed(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    pa = np.argwhere(bf_border(a)) * np.asarray(spacing)
    pb = np.argwhere(bf_border(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1)


def bf_scores(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], tol: float) -> dict[str, float]:
    inter = sum(1 for idx in np.ndindex(a.shape) if a[idx] and b[idx])
    na, nb = int(a.sum()), int(b.sum())
    out = {"dice": 2 * inter / (na + nb), "iou": inter / (na + nb - inter)}
    dab, dba = bf_directed(a, b, spacing), bf_directed(b, a, spacing)
    pooled = np.concatenate([dab, dba])
    out["hd"] = float(pooled.max())
    out["hd95"] = float(max(np.percentile(dab, 95), np.percentile(dba, 95)))
    out["hd95_pooled"] = float(np.percentile(pooled, 95))
    out["assd"] = float(pooled.mean())
    out["nsd"] = float((pooled <= tol * (1 + mt.NSD_RTOL)).mean())
    return out


@st.composite
def mask_pairs(draw: st.DrawFn, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    nd = draw(st.sampled_from([2, 3])) if ndim is None else ndim
    shape = tuple(draw(st.integers(2, 9 if nd == 2 else 6)) for _ in range(nd))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density = draw(st.floats(0.15, 0.85))
    a = rng.random(shape) < density
    b = rng.random(shape) < density
    # Smooth-ish shapes half of the time (blobs), noise otherwise.
    if draw(st.booleans()):
        a = ndimage.binary_closing(ndimage.binary_opening(a))
    spacing = tuple(draw(st.floats(0.3, 4.0)) for _ in range(nd))
    if not a.any():
        a.flat[rng.integers(a.size)] = True
    if not b.any():
        b.flat[rng.integers(b.size)] = True
    return a, b, spacing


# --------------------------------------------------------------------------------------------
# Against brute force
# --------------------------------------------------------------------------------------------


@FAST
@given(mask_pairs(), st.floats(0.0, 5.0))
def test_all_scores_match_brute_force(
    pair: tuple[np.ndarray, np.ndarray, tuple[float, ...]], tol: float
) -> None:
    a, b, sp = pair
    ref = bf_scores(a, b, sp, tol)
    s = mt.segmentation_scores(a, b, spacing=sp, tolerance_mm=tol)
    assert s.dice == pytest.approx(ref["dice"], abs=1e-12)
    assert s.iou == pytest.approx(ref["iou"], abs=1e-12)
    assert s.hd == pytest.approx(ref["hd"], rel=1e-9)
    assert s.hd95 == pytest.approx(ref["hd95"], rel=1e-9)
    assert s.assd == pytest.approx(ref["assd"], rel=1e-9)
    assert s.nsd == pytest.approx(ref["nsd"], abs=1e-12)
    # The standalone functions agree with the bundle.
    assert mt.dice(a, b) == s.dice and mt.iou(a, b) == s.iou
    assert mt.hd95(a, b, spacing=sp) == s.hd95
    assert mt.hausdorff_distance(a, b, spacing=sp) == s.hd
    assert mt.assd(a, b, spacing=sp) == s.assd
    assert mt.surface_dice(a, b, tolerance_mm=tol, spacing=sp) == s.nsd
    assert mt.hd95(a, b, spacing=sp, method="pooled") == pytest.approx(ref["hd95_pooled"], rel=1e-9)


@FAST
@given(mask_pairs())
def test_surface_distances_match_brute_force(pair: tuple[np.ndarray, np.ndarray, tuple[float, ...]]) -> None:
    a, b, sp = pair
    sd = mt.surface_distances(a, b, spacing=sp)
    np.testing.assert_allclose(sd.pred_to_ref, bf_directed(a, b, sp), rtol=1e-9)
    np.testing.assert_allclose(sd.ref_to_pred, bf_directed(b, a, sp), rtol=1e-9)
    np.testing.assert_array_equal(mt.surface_voxels(a), bf_border(a))


@FAST
@given(mask_pairs())
def test_symmetry_and_identity(pair: tuple[np.ndarray, np.ndarray, tuple[float, ...]]) -> None:
    a, b, sp = pair
    s_ab = mt.segmentation_scores(a, b, spacing=sp, tolerance_mm=1.0)
    s_ba = mt.segmentation_scores(b, a, spacing=sp, tolerance_mm=1.0)
    for name in ("dice", "iou", "hd95", "hd", "assd", "nsd"):
        assert getattr(s_ab, name) == pytest.approx(getattr(s_ba, name), rel=1e-12)
    s_aa = mt.segmentation_scores(a, a, spacing=sp, tolerance_mm=0.0)
    assert (s_aa.dice, s_aa.iou, s_aa.hd95, s_aa.hd, s_aa.assd, s_aa.nsd) == (1.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert 0.0 <= s_ab.dice <= 1.0 and 0.0 <= s_ab.nsd <= 1.0
    assert s_ab.iou == pytest.approx(s_ab.dice / (2 - s_ab.dice), abs=1e-12)
    assert s_ab.assd <= s_ab.hd * (1 + 1e-12) and s_ab.hd95 <= s_ab.hd * (
        1 + 1e-12
    )  # mean of equal values may round up


@FAST
@given(mask_pairs(), st.floats(0.1, 3.0))
def test_distances_scale_with_isotropic_spacing(
    pair: tuple[np.ndarray, np.ndarray, tuple[float, ...]], factor: float
) -> None:
    a, b, sp = pair
    s1 = mt.segmentation_scores(a, b, spacing=sp, tolerance_mm=1.0)
    s2 = mt.segmentation_scores(a, b, spacing=tuple(x * factor for x in sp), tolerance_mm=1.0 * factor)
    assert s2.hd == pytest.approx(s1.hd * factor, rel=1e-9)
    assert s2.hd95 == pytest.approx(s1.hd95 * factor, rel=1e-9)
    assert s2.assd == pytest.approx(s1.assd * factor, rel=1e-9)


def test_cropping_does_not_change_distances() -> None:
    rng = np.random.default_rng(0)
    a = np.zeros((20, 30, 25), bool)
    b = np.zeros_like(a)
    a[5:9, 10:15, 3:8] = rng.random((4, 5, 5)) < 0.7
    b[6:12, 12:20, 5:9] = rng.random((6, 8, 4)) < 0.7
    sp = (2.5, 0.7, 0.9)
    full_pr = ndimage.distance_transform_edt(~bf_border(b), sampling=sp)[bf_border(a)]
    np.testing.assert_allclose(mt.surface_distances(a, b, spacing=sp).pred_to_ref, full_pr, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_concentric_squares_closed_form(k: int) -> None:
    sx, sy = 0.7, 1.9
    outer = np.zeros((20, 20), bool)
    outer[3:15, 3:15] = True
    inner = np.zeros_like(outer)
    inner[3 + k : 15 - k, 3 + k : 15 - k] = True
    # Farthest border point: a corner of one square to the matching corner of the other.
    assert mt.hausdorff_distance(outer, inner, spacing=(sx, sy)) == pytest.approx(k * math.hypot(sx, sy))
    # Inner -> outer directed distance is the smaller step k * min(sx, sy) on every border voxel.
    sd = mt.surface_distances(inner, outer, spacing=(sx, sy))
    assert sd.pred_to_ref.min() == pytest.approx(k * min(sx, sy))


def test_concentric_cubes_and_spheres() -> None:
    sp = (2.0, 0.5, 1.0)
    outer = np.zeros((12, 30, 20), bool)
    outer[2:10, 5:25, 4:16] = True
    inner = np.zeros_like(outer)
    inner[3:9, 6:24, 5:15] = True
    assert mt.hausdorff_distance(outer, inner, spacing=sp) == pytest.approx(math.sqrt(sum(s * s for s in sp)))
    # Concentric balls of radii 12 and 8 mm (1 mm grid): HD = 4 mm up to one voxel diagonal.
    z, y, x = np.mgrid[:31, :31, :31] - 15
    r = np.sqrt(x * x + y * y + z * z)
    hd = mt.hausdorff_distance(r <= 12, r <= 8)
    assert abs(hd - 4.0) <= math.sqrt(3)
    # ASSD close to the radius difference too.
    assert abs(mt.assd(r <= 12, r <= 8) - 4.0) < 1.0


def test_nsd_tolerance_steps() -> None:
    a = np.zeros((10, 10), bool)
    a[2:8, 2:8] = True
    b = np.roll(a, 1, axis=1)
    sp = (1.0, 2.0)
    assert mt.surface_dice(a, b, tolerance_mm=0.0, spacing=sp) < 1.0
    assert mt.surface_dice(a, b, tolerance_mm=2.0, spacing=sp) == 1.0
    assert mt.surface_dice(a, b, tolerance_mm=1.99, spacing=sp) < 1.0


# --------------------------------------------------------------------------------------------
# Empty masks, inputs, errors
# --------------------------------------------------------------------------------------------


def test_empty_conventions() -> None:
    e = np.zeros((5, 5), bool)
    f = e.copy()
    f[1:3, 1:3] = True
    both = mt.segmentation_scores(e, e)
    assert (both.dice, both.iou, both.hd95, both.hd, both.assd, both.nsd) == (1.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    for p, r in ((e, f), (f, e)):
        one = mt.segmentation_scores(p, r)
        assert (one.dice, one.iou, one.nsd) == (0.0, 0.0, 0.0)
        assert math.isinf(one.hd95) and math.isinf(one.hd) and math.isinf(one.assd)
        assert mt.hd95(p, r, empty_distance=99.0) == 99.0
        assert mt.assd(p, r, empty_distance=42.0) == 42.0
    sd = mt.surface_distances(e, f)
    assert sd.pred_empty and not sd.ref_empty and sd.pred_to_ref.size == 0


def test_accepts_ints_floats_tensors_and_volumes() -> None:
    a = np.zeros((4, 6, 6), np.uint8)
    a[1:3, 1:5, 1:5] = 1
    b = np.roll(a, 1, axis=2)
    ref = mt.hd95(a.astype(bool), b.astype(bool), spacing=(3.0, 1.0, 0.5))
    assert mt.hd95(a.astype(np.float32), torch.from_numpy(b), spacing=(3.0, 1.0, 0.5)) == ref
    affine = np.diag([3.0, 1.0, 0.5, 1.0])
    assert mt.hd95(Volume(a, affine), Volume(b, affine)) == ref
    with pytest.raises(GeometryError, match="spacings differ"):
        mt.hd95(Volume(a, affine), Volume(b, np.eye(4)))


def test_errors() -> None:
    a = np.zeros((4, 5), bool)
    with pytest.raises(ShapeMismatchError, match=r"\(4, 5\).*\(4, 6\)"):
        mt.dice(a, np.zeros((4, 6), bool))
    with pytest.raises(GeometryError, match="expected 2 values"):
        mt.hd95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="positive"):
        mt.assd(a, a, spacing=(1.0, -1.0))
    with pytest.raises(GeometryError, match="positive"):
        mt.assd(a, a, spacing=(1.0, float("nan")))
    with pytest.raises(InvalidInputError, match=r"pred: expected a binary mask.*\[2\]"):
        mt.dice(np.full((4, 5), 2), a)
    with pytest.raises(InvalidInputError, match="ref: expected a binary"):
        mt.iou(a, np.full((4, 5), 0.5))
    with pytest.raises(InvalidInputError, match="2D or 3D"):
        mt.dice(np.zeros(5, bool), np.zeros(5, bool))
    with pytest.raises(InvalidInputError, match="tolerance_mm"):
        mt.surface_dice(a, a, tolerance_mm=-1.0)
    with pytest.raises(InvalidInputError, match="percentile"):
        mt.hausdorff_distance(a, a, percentile=101)
    with pytest.raises(InvalidInputError, match="method"):
        mt.hd95(a, a, method="mean")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="labels"):
        mt.per_label(a, a, labels=[0, 1])
    with pytest.raises(InvalidInputError, match="integer label map"):
        mt.per_label(np.full((4, 5), 0.5), a)
    with pytest.raises(MedSAM2KitError):
        mt.inter_slice_consistency(a)
    with pytest.raises(ValueError):  # the hierarchy keeps ValueError working
        mt.j_and_f(a, a, bound_th=0.0)
    with pytest.raises(InvalidInputError, match="whole number"):
        mt.boundary_f_measure(a, a, bound_th=2.5)


# --------------------------------------------------------------------------------------------
# per_label
# --------------------------------------------------------------------------------------------


def test_per_label_matches_binary_calls() -> None:
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, (5, 9, 9))
    ref = rng.integers(0, 3, (5, 9, 9))
    sp = (2.0, 0.8, 0.6)
    res = mt.per_label(pred, ref, spacing=sp, tolerance_mm=1.5)
    assert list(res) == [1, 2, 3]
    for lab, s in res.items():
        assert s == mt.segmentation_scores(pred == lab, ref == lab, spacing=sp, tolerance_mm=1.5)
    assert math.isinf(res[3].hd95) and res[3].dice == 0.0  # label 3 only in pred
    only = mt.per_label(pred, ref, labels=[2, 7], spacing=sp)
    assert list(only) == [2, 7] and only[7].dice == 1.0 and only[7].hd95 == 0.0


# --------------------------------------------------------------------------------------------
# MedPy (optional well-kept reference)
# --------------------------------------------------------------------------------------------


@FAST
@given(mask_pairs())
def test_against_medpy(pair: tuple[np.ndarray, np.ndarray, tuple[float, ...]]) -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    a, b, sp = pair
    assert mt.dice(a, b) == pytest.approx(binary.dc(a, b))
    assert mt.iou(a, b) == pytest.approx(binary.jc(a, b))
    assert mt.hausdorff_distance(a, b, spacing=sp) == pytest.approx(binary.hd(a, b, voxelspacing=sp))
    assert mt.hd95(a, b, spacing=sp, method="pooled") == pytest.approx(binary.hd95(a, b, voxelspacing=sp))
    sd = mt.surface_distances(a, b, spacing=sp)
    assert sd.pred_to_ref.mean() == pytest.approx(binary.asd(a, b, voxelspacing=sp))
    assert sd.ref_to_pred.mean() == pytest.approx(binary.asd(b, a, voxelspacing=sp))


@pytest.mark.shared_data
def test_real_hippocampus_against_medpy(shared_data: Path) -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    import nibabel as nib

    img: Any = nib.load(shared_data / "msd_hippocampus" / "hippocampus_184_label.nii.gz")
    lab = np.asarray(img.dataobj).astype(np.int64)
    sp = tuple(float(s) for s in img.header.get_zooms()[:3])
    pred = np.roll(lab, 1, axis=0)
    pred[ndimage.binary_erosion(lab == 2)] = 1  # a wrong label inside the posterior part
    res = mt.per_label(pred, lab, spacing=sp)
    assert set(res) == {1, 2}
    for k, s in res.items():
        assert s.dice == pytest.approx(binary.dc(pred == k, lab == k))
        assert s.hd == pytest.approx(binary.hd(pred == k, lab == k, voxelspacing=sp))
        assert 0 < s.nsd < 1 and 0 < s.assd < s.hd


# --------------------------------------------------------------------------------------------
# J&F
# --------------------------------------------------------------------------------------------


def davis_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS's _seg2bmap transcribed literally (same-size branch)."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def davis_f(fg: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS db_eval_boundary with skimage's disk and scipy dilation instead of cv2.dilate."""
    from skimage.morphology import disk

    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(fg.shape))
    fb, gb = davis_seg2bmap(fg), davis_seg2bmap(gt)
    fd = ndimage.binary_dilation(fb, structure=disk(bound_pix).astype(bool))
    gd = ndimage.binary_dilation(gb, structure=disk(bound_pix).astype(bool))
    gt_match, fg_match = gb * fd, fb * gd
    n_fg, n_gt = np.sum(fb), np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = np.sum(fg_match) / float(n_fg), np.sum(gt_match) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@FAST
@given(
    st.integers(0, 2**32 - 1),
    st.integers(8, 60),
    st.integers(8, 60),
    st.sampled_from([0.008, 0.05, 2.0, 3.0]),
)
def test_f_measure_matches_davis(seed: int, h: int, w: int, bound_th: float) -> None:
    rng = np.random.default_rng(seed)
    a = ndimage.binary_opening(rng.random((h, w)) < 0.55)
    b = ndimage.binary_closing(rng.random((h, w)) < 0.45) if rng.random() < 0.5 else np.roll(a, 2, axis=1)
    np.testing.assert_array_equal(mt.seg2bmap(a), davis_seg2bmap(a))
    assert mt.boundary_f_measure(a, b, bound_th=bound_th) == pytest.approx(davis_f(a, b, bound_th), abs=1e-12)


def test_j_and_f_video() -> None:
    v = np.zeros((5, 100, 100), bool)
    v[:, 20:60, 20:60] = True
    p = v.copy()
    p[2] = False  # a lost frame
    p[3] = np.roll(v[3], 1, axis=0)  # within the 0.008 * diag = 2 px bound
    r = mt.j_and_f(p, v)
    assert r.frames == (0, 1, 2, 3, 4)
    np.testing.assert_allclose(r.j_per_frame, [1.0, 1.0, 0.0, 39 / 41, 1.0])
    np.testing.assert_allclose(r.f_per_frame, [1.0, 1.0, 0.0, 1.0, 1.0])
    assert r.jf_mean == pytest.approx((r.j_mean + r.f_mean) / 2)
    inner = mt.j_and_f(p, v, exclude_first_last=True)
    assert inner.frames == (1, 2, 3) and inner.j_per_frame.size == 3
    assert mt.j_and_f(np.zeros((2, 9, 9)), np.zeros((2, 9, 9))).jf_mean == 1.0
    single = mt.j_and_f(v[0], v[0])
    assert single.frames == (0,) and single.jf_mean == 1.0


# --------------------------------------------------------------------------------------------
# Inter-slice consistency
# --------------------------------------------------------------------------------------------


def test_inter_slice_consistency_prism_and_gaps() -> None:
    m = np.zeros((8, 10, 10), bool)
    m[1:7, 2:8, 3:6] = True
    c = mt.inter_slice_consistency(m, spacing=(2.0, 0.5, 0.4))
    assert (c.mean_adjacent_dice, c.area_variation, c.n_pairs, c.n_gaps) == (1.0, 0.0, 5, 0)
    np.testing.assert_allclose(c.areas_mm2, [0] + [18 * 0.2] * 6 + [0])
    m[3] = False
    c = mt.inter_slice_consistency(m)
    assert c.n_gaps == 1 and c.n_pairs == 3
    e = mt.inter_slice_consistency(np.zeros((3, 4, 4), bool))
    assert (e.mean_adjacent_dice, e.area_variation, e.n_pairs, e.n_gaps) == (1.0, 0.0, 0, 0)


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, -1]))
def test_inter_slice_consistency_brute_force(seed: int, axis: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.random((5, 6, 7)) < 0.3
    c = mt.inter_slice_consistency(m, axis=axis)
    s = np.moveaxis(m, axis, 0)
    dices, num, den = [], 0.0, 0.0
    for z in range(s.shape[0] - 1):
        a, b = s[z], s[z + 1]
        if a.any() and b.any():
            dices.append(mt.dice(a, b))
            num += abs(int(b.sum()) - int(a.sum()))
            den += (int(a.sum()) + int(b.sum())) / 2
    assert c.n_pairs == len(dices)
    if dices:
        assert c.mean_adjacent_dice == pytest.approx(np.mean(dices))
        assert c.area_variation == pytest.approx(num / den)
    np.testing.assert_array_equal(c.areas_mm2, s.reshape(s.shape[0], -1).sum(1))


def test_inter_slice_consistency_default_axis_is_the_library_rule() -> None:
    m = np.zeros((4, 6, 10), bool)
    m[1:3, 1:5, 2:8] = True
    assert mt.inter_slice_consistency(m, spacing=(1.0, 1.0, 3.0)).areas_mm2.shape == (10,)  # thick axis
    assert mt.inter_slice_consistency(m).areas_mm2.shape == (4,)  # 1 mm: fewest slices
    vol = Volume(m.transpose(2, 0, 1).copy(), np.diag([3.0, 1.0, 1.0, 1.0]))
    assert mt.inter_slice_consistency(vol).areas_mm2.shape == (10,)  # a Volume: its geometry
    assert mt.inter_slice_consistency(m, axis=1).areas_mm2.shape == (6,)
