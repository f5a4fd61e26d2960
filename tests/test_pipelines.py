"""The SAM2Med3D pipeline with the real sam2 code (random-init micro model, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.fusion import FusionResult, fuse, label_vs_rivals
from medsam2kit.io import load_label, load_volume, save_mask
from medsam2kit.metrics import dice, inter_slice_consistency
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.pipelines import SAM2Med3DConfig, SAM2Med3DPipeline, _nearest_prompt_merge
from medsam2kit.predictor import PropagationResult, SAM2Predictor
from medsam2kit.prompts import SliceFilterConfig
from medsam2kit.volume import Volume


def one_hot_coarse(label: Volume, noise: float = 0.0, seed: int = 0):  # type: ignore[no-untyped-def]
    """A coarse 'network' from the truth, optionally blurred by noise (a weak estimate)."""

    def model(volume: Volume) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = int(label.array.max()) + 1
        onehot = np.stack([(label.array == k).astype(np.float32) for k in range(n)])
        noisy = np.clip(onehot + rng.normal(0, noise, onehot.shape), 1e-3, None).astype(np.float32)
        return noisy / noisy.sum(axis=0, keepdims=True)

    return model


@pytest.mark.parametrize("propagation", ["joint", "separate"])
def test_pipeline_runs_encodes_each_slice_once_and_keeps_geometry(pred: SAM2Predictor, propagation: str) -> None:
    image, label = ellipsoid_phantom((10, 48, 40), (3.0, 0.9, 0.9), rng=4)
    cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=3, min_gap_slices=2), propagation=propagation)  # type: ignore[arg-type]
    result = SAM2Med3DPipeline(one_hot_coarse(label), pred, cfg).run(image)
    assert result.labels.shape == image.shape
    np.testing.assert_array_equal(result.labels.affine, image.affine)
    assert result.encoder_calls == image.shape[0]  # several prompt slices, both directions: once each
    assert set(result.outcomes) == {1, 2}
    for lab, outcome in result.outcomes.items():
        assert 1 <= len(outcome.selection.indices) <= 3
        # the consistency step never adds voxels outside the union of its inputs
        assert not (outcome.fusion.mask & ~outcome.fusion.union).any()
        assert ((result.labels.array == lab) <= outcome.fusion.mask).all()
    assert set(result.seconds) == {"coarse", "select", "propagate", "fuse"}
    assert 0 < result.encoder_seconds < result.seconds["propagate"]


def test_zoomed_pipeline_is_the_pipeline_on_the_crop(pred: SAM2Predictor) -> None:
    """With ``zoom`` SAM2 sees the slices cropped around the coarse foreground: the same as the
    unzoomed pipeline on that crop, cut by hand, pasted back (nothing outside the crop)."""
    image, label = ellipsoid_phantom((10, 64, 56), (3.0, 0.9, 0.9), rng=4)
    fg = (np.asarray(label.array) != 0).any(axis=0)
    rows, cols = np.nonzero(fg)
    side = round(1.5 * max(np.ptp(rows) + 1, np.ptp(cols) + 1))
    assert side < 56  # a real crop
    r0 = int(min(max(round((rows.min() + rows.max()) / 2 + 0.5 - side / 2), 0), 64 - side))
    c0 = int(min(max(round((cols.min() + cols.max()) / 2 + 0.5 - side / 2), 0), 56 - side))
    cut = (slice(None), slice(r0, r0 + side), slice(c0, c0 + side))
    shifted = image.affine.copy()
    shifted[:3, 3] += image.affine[:3, :3] @ [0, r0, c0]
    cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=2, min_gap_slices=2), axis=0)
    zoomed = SAM2Med3DPipeline(one_hot_coarse(label), pred, SAM2Med3DConfig(**{**cfg.__dict__, "zoom": 1.5})).run(image)
    crop_label = Volume(np.asarray(label.array)[cut].copy(), shifted)
    by_hand = SAM2Med3DPipeline(one_hot_coarse(crop_label), pred, cfg).run(Volume(image.array[cut].copy(), shifted))
    for lab in (1, 2):
        a, b = zoomed.outcomes[lab], by_hand.outcomes[lab]
        assert a.selection.indices == b.selection.indices
        assert a.propagation is not None and b.propagation is not None
        torch.testing.assert_close(a.propagation.low_res_logits, b.propagation.low_res_logits, rtol=0, atol=0)
    expected = np.zeros(image.shape, by_hand.labels.array.dtype)
    expected[cut] = by_hand.labels.array
    assert np.array_equal(zoomed.labels.array, expected)
    assert zoomed.encoder_calls == image.shape[0]
    with pytest.raises(InvalidInputError, match="zoom: expected a crop factor >= 1"):
        SAM2Med3DConfig(zoom=0.9)


def test_separate_runs_merge_by_nearest_prompt() -> None:
    def run(value: float) -> PropagationResult:
        return PropagationResult(
            obj_ids=(1,), low_res_logits=torch.full((6, 1, 2, 2), value), object_scores=torch.full((6, 1), value),
            ious=torch.full((6, 1), value), visited=torch.ones(6, dtype=torch.bool), image_size=8,
        )

    merged = _nearest_prompt_merge([(1, run(1.0)), (4, run(4.0))])
    # frames 0..2 nearest to prompt 1 (tie at 2.5 impossible), 3..5 nearest to prompt 4
    assert merged.object_scores[:, 0].tolist() == [1.0, 1.0, 1.0, 4.0, 4.0, 4.0]
    assert torch.equal(merged.low_res_logits[5], torch.full((1, 2, 2), 4.0))


def test_bad_coarse_output_is_a_clear_error(pred: SAM2Predictor) -> None:
    image, _ = ellipsoid_phantom((6, 32, 32), rng=0)
    with pytest.raises(ShapeMismatchError, match="coarse"):
        SAM2Med3DPipeline(lambda v: np.zeros((2, 6, 32, 31), np.float32), pred).run(image)


@pytest.mark.shared_data
@pytest.mark.usefixtures("one_torch_thread")
def test_hippocampus_coarse_then_fusion_with_a_second_estimate(pred: SAM2Predictor, shared_data: Path,
                                                               tmp_path: Path) -> None:
    """Train the coarse network on two cases, predict the third; fuse it with an independent
    second estimate (a 2.5D network from another seed) in place of SAM2, whose random weights
    cannot be judged here; then run the whole pipeline end to end with the real sam2 code."""
    folder = shared_data / "msd_hippocampus"
    images = [load_volume(folder / f"hippocampus_{c}_img.nii.gz") for c in (184, 195, 199)]
    labels = [load_label(folder / f"hippocampus_{c}_label.nii.gz", like=v) for c, v in zip((184, 195, 199), images)]
    truth = labels[2].array > 0

    def fit(context: int, seed: int) -> CoarseSegmenter:
        # axis 0 as calibrated (1 mm isotropic, identity affine: the default would be axis 2)
        seg = CoarseSegmenter(CoarseConfig(num_labels=1, context=context, image_size=48, base_channels=8, depth=2,
                                           axis=0))
        binary = [lab.with_array((lab.array > 0).astype(np.uint8)) for lab in labels[:2]]
        seg.fit(images[:2], binary, steps=120, batch_size=16, generator=torch.Generator().manual_seed(seed))
        return seg

    first, second = fit(0, 1), fit(1, 2)
    p1, p2 = first.predict_proba(images[2])[1], second.predict_proba(images[2])[1]
    axis = 0
    # the second estimate plays SAM2: per-slice presence and confidence from its own probabilities
    present = (p2 > 0.5).reshape(p2.shape[0], -1).any(axis=1)
    scores = np.where(present, 4.0, -4.0).astype(np.float32)
    ious = (1.0 - np.mean(np.minimum(p2, 1 - p2), axis=(1, 2)) * 2).astype(np.float32)
    fused = fuse(p1, p2, scores, ious, prompt_slices=None, axis=axis, spacing=images[2].spacing)
    d1, d2, df = dice(p1 > 0.5, truth), dice(p2 > 0.5, truth), dice(fused.mask, truth)
    print(f"hippocampus 199: coarse Dice {d1:.3f}, second estimate {d2:.3f}, fused {df:.3f}")
    assert d1 > 0.5 and d2 > 0.5
    assert df >= min(d1, d2) - 0.02

    pipe = SAM2Med3DPipeline(first, pred, SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=3)))
    result = pipe.run(images[2])
    out = save_mask(result.labels, images[2], tmp_path / "mask.nii.gz")
    assert load_label(out, like=images[2]).shape == images[2].shape
    assert result.encoder_calls <= images[2].shape[result.outcomes[1].selection.axis]
    consistency = inter_slice_consistency(result.labels.array > 0, axis=result.outcomes[1].selection.axis)
    d_pipe = dice(result.labels.array > 0, truth)
    print(f"pipeline with random SAM2 weights: Dice {d_pipe:.3f}, {consistency}")
    assert d_pipe >= d1 - 0.02  # random SAM2 weights used to take this down to ~0.2 (the issue)


def _assert_fusion_invariant(fusion: FusionResult, threshold: float) -> None:
    """FusionResult's documented invariant: the mask lies in the union of the thresholded inputs,
    and every mask voxel either passes the threshold on the fused probability or is a filled hole
    (which lies in the union)."""
    assert not (fusion.mask & ~fusion.union).any()
    below = fusion.mask & ~(fusion.probability > threshold)
    assert not (below & ~fusion.union).any()


def test_a_label_that_wins_below_one_half_keeps_its_voxels_and_the_invariant(pred: SAM2Predictor) -> None:
    """Three classes at 0.2/0.45/0.35 (8,400 voxels where label 1 wins the argmax with p < 0.5) and
    a background block, no prompt slice: each label's fusion has the coarse evidence as its only
    source, the label beating its strongest rival (0.45 / (0.45 + 0.35) > 0.5), so label 1's fused
    mask is the coarse argmax, the label map follows the fused masks, and no voxel lies outside its
    label's fused mask (the coarse argmax used to be pasted over the fusion)."""
    image, _ = ellipsoid_phantom((6, 40, 40), rng=0)
    prob = np.empty((3, *image.shape), np.float32)
    prob[0], prob[1], prob[2] = 0.2, 0.45, 0.35
    prob[:, :, :5] = np.array([0.9, 0.05, 0.05], np.float32)[:, None, None, None]
    cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(min_score=1.0))  # no slice qualifies: coarse only
    result = SAM2Med3DPipeline(lambda v: prob, pred, cfg).run(image)
    argmax = np.argmax(prob, axis=0)
    assert int((prob[1:] > 0.5).sum()) == 0 and int((argmax == 1).sum()) == 8400
    for lab, outcome in result.outcomes.items():
        assert not outcome.selection.indices and outcome.propagation is None
        fusion = outcome.fusion
        np.testing.assert_allclose(fusion.probability, label_vs_rivals(prob)[lab - 1])  # the coarse evidence alone
        assert not fusion.sam_weight.any()
        _assert_fusion_invariant(fusion, cfg.consistency.threshold)
        assert ((result.labels.array == lab) <= fusion.mask).all()
    np.testing.assert_array_equal(result.outcomes[1].fusion.mask, argmax == 1)
    assert not result.outcomes[2].fusion.mask.any()
    np.testing.assert_array_equal(result.labels.array, argmax)


def test_label_map_is_one_exclusive_rule_over_the_fused_masks(pred: SAM2Predictor) -> None:
    """With one label above the threshold (no prompt: coarse only) the label map is exactly that
    label's fused mask; a second label below the threshold gets no voxel."""
    image, _ = ellipsoid_phantom((6, 40, 40), rng=0)
    prob = np.zeros((3, *image.shape), np.float32)
    prob[0] = 1.0
    prob[:, 2:4, 10:30, 10:30] = np.array([0.1, 0.6, 0.3], np.float32)[:, None, None, None]
    cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(min_score=1.0))  # no slice qualifies: coarse only
    result = SAM2Med3DPipeline(lambda v: prob, pred, cfg).run(image)
    masks = {lab: o.fusion.mask for lab, o in result.outcomes.items()}
    for o in result.outcomes.values():
        assert not o.selection.indices
        _assert_fusion_invariant(o.fusion, cfg.consistency.threshold)
    np.testing.assert_array_equal(masks[1], prob[1] > 0.5)
    np.testing.assert_array_equal(result.labels.array, np.where(masks[1], 1, 0))


# --------------------------------------------------------------------------------------------
# The fusion never makes the coarse result worse without evidence that SAM2 is right
# --------------------------------------------------------------------------------------------


def blurred_coarse(label: Volume, sigma: float = 2.5, noise: float = 0.15, seed: int = 0):  # type: ignore[no-untyped-def]
    """A weak coarse 'network': the one-hot truth blurred in-plane by ``sigma`` voxels, with
    Gaussian noise, renormalised (a confident core, an uncertain rim)."""
    from scipy import ndimage

    def model(volume: Volume) -> np.ndarray:
        rng = np.random.default_rng(seed)
        n = int(label.array.max()) + 1
        onehot = np.stack([(label.array == k).astype(np.float32) for k in range(n)])
        blurred = ndimage.gaussian_filter(onehot, (0, 0, sigma, sigma)) + rng.normal(0, noise, onehot.shape)
        p = np.clip(blurred, 1e-3, None)
        return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)

    return model


def _coarse_and_fused_dice(result, label: Volume) -> dict[int, tuple[float, float]]:  # type: ignore[no-untyped-def]
    coarse_map = np.argmax(result.coarse, axis=0)
    return {lab: (dice(coarse_map == lab, label.array == lab), dice(result.labels.array == lab, label.array == lab))
            for lab in result.outcomes}


@pytest.mark.parametrize("weights", ["random", "random, object scores ~10"])
def test_a_random_sam2_costs_at_most_002_dice(pred: SAM2Predictor, weights: str) -> None:
    """The issue: an uninformative SAM2 reports high object scores on every slice, and the fusion
    used to follow it (hippocampus 0.21 against the coarse 0.80). With the real pipeline and a
    random-init micro model, as built and with its object scores pushed to ~10 as the issue saw,
    each label's fused Dice is at least the coarse one's - 0.02 on a held-out phantom (the
    fusion without the evidence term gave the core label Dice 0.0 against the coarse 0.94)."""
    from medsam2kit.reference import heldout_phantoms

    if weights == "random":
        torch.manual_seed(1)
        pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    image, label = heldout_phantoms(0, 1)[0]
    result = SAM2Med3DPipeline(blurred_coarse(label), pred).run(image)
    scores = result.outcomes[1].propagation.object_scores  # type: ignore[union-attr]
    if weights != "random":
        assert float(scores.min()) > 8.0  # the symptom: "present" on every slice
    for lab, (d_coarse, d_fused) in _coarse_and_fused_dice(result, label).items():
        assert d_fused >= d_coarse - 0.02, (lab, d_coarse, d_fused)
        assert result.outcomes[lab].fusion.evidence.max() < 0.5


@pytest.mark.shared_data
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("weights", ["random, object scores ~10", "phantom-only reference"])
def test_hippocampus_with_an_uninformative_sam2_keeps_the_coarse_dice(pred: SAM2Predictor, shared_data: Path,
                                                                       weights: str) -> None:
    """The issue's case, kept fast: a coarse network fitted for 60 steps on two shared
    hippocampus cases, the third segmented by the pipeline with an uninformative SAM2 (random
    weights with object scores ~10, or the reference model, which never saw an MRI): fused Dice
    >= coarse Dice - 0.02 (here the fusion without the evidence term gave 0.45 and 0.0 against
    the coarse 0.59)."""
    from medsam2kit.reference import reference_predictor

    folder = shared_data / "msd_hippocampus"
    images = [load_volume(folder / f"hippocampus_{c}_img.nii.gz") for c in (184, 195, 199)]
    labels = [load_label(folder / f"hippocampus_{c}_label.nii.gz", like=v) for c, v in zip((184, 195, 199), images)]
    seg = CoarseSegmenter(CoarseConfig(num_labels=1, context=0, image_size=48, base_channels=8, depth=2, axis=0))
    binary = [lab.with_array((lab.array > 0).astype(np.uint8)) for lab in labels[:2]]
    seg.fit(images[:2], binary, steps=60, batch_size=16, generator=torch.Generator().manual_seed(1))
    predictor = pred if weights.startswith("random") else reference_predictor()
    result = SAM2Med3DPipeline(seg, predictor).run(images[2])
    truth = labels[2].array > 0
    d_coarse = dice(np.argmax(result.coarse, axis=0) == 1, truth)
    d_fused = dice(result.labels.array == 1, truth)
    print(f"hippocampus 199, {weights}: coarse Dice {d_coarse:.3f}, fused {d_fused:.3f}")
    assert d_coarse > 0.3
    assert d_fused >= d_coarse - 0.02


@pytest.mark.semantic
def test_the_reference_model_fused_is_at_least_the_coarse() -> None:
    """With the bundled reference model on a held-out phantom and a blurred coarse estimate,
    the fusion keeps SAM2's weight where it agrees with the confident voxels: fused >= coarse
    on every label, and better on average."""
    from medsam2kit.reference import heldout_phantoms, reference_predictor

    image, label = heldout_phantoms(0, 1)[0]
    result = SAM2Med3DPipeline(blurred_coarse(label), reference_predictor()).run(image)
    rows = _coarse_and_fused_dice(result, label)
    for lab, (d_coarse, d_fused) in rows.items():
        assert d_fused >= d_coarse, (lab, d_coarse, d_fused)
    assert np.mean([f for _, f in rows.values()]) > np.mean([c for c, _ in rows.values()]), rows
