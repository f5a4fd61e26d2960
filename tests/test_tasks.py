"""The scored prompt tasks and their baselines (medsam2kit.tasks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.metrics import dice
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import heldout_phantoms
from medsam2kit.roi import Roi, roi_around
from medsam2kit.tasks import (
    box_ellipse,
    box_prompt_image,
    correction_click,
    filled_box,
    mask_box,
    moment_ellipse,
    Propagated,
    one_prompt_propagation,
    segment_box,
    track_recording,
)
from medsam2kit.volume import Volume


@pytest.fixture(scope="module")
def random_predictor() -> SAM2Predictor:
    import torch

    torch.manual_seed(0)
    return SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_box_and_filled_box_against_brute_force(mask: np.ndarray) -> None:
    if not mask.any():
        with pytest.raises(InvalidInputError, match="empty"):
            mask_box(mask)
        return
    x0, y0, x1, y1 = mask_box(mask)
    rows = [r for r in range(mask.shape[0]) if mask[r].any()]
    cols = [c for c in range(mask.shape[1]) if mask[:, c].any()]
    assert (x0, y0, x1, y1) == (min(cols), min(rows), max(cols), max(rows))
    box = filled_box(mask)
    assert box[mask].all() and box.sum() == (x1 - x0 + 1) * (y1 - y0 + 1)


@settings(max_examples=40, deadline=None)
@given(st.floats(6, 40), st.floats(6, 40), st.floats(-0.5, 0.5), st.floats(-0.5, 0.5))
def test_box_ellipse_recovers_a_drawn_axis_aligned_ellipse(r_radius: float, c_radius: float, dr: float,
                                                           dc: float) -> None:
    from skimage.draw import ellipse

    shape = (int(2 * r_radius) + 10, int(2 * c_radius) + 10)
    drawn = np.zeros(shape, bool)
    drawn[ellipse(shape[0] / 2 + dr, shape[1] / 2 + dc, r_radius, c_radius, shape=shape)] = True
    inscribed = box_ellipse(drawn)
    assert dice(inscribed, drawn) > 0.93  # only the pixel quantisation of the two drawings differs
    assert np.array_equal(mask_box(inscribed), mask_box(drawn))  # it touches the box's four sides
    assert not (inscribed & ~filled_box(drawn)).any()
    assert abs(inscribed.sum() / filled_box(drawn).sum() - np.pi / 4) < 0.05


@settings(max_examples=40, deadline=None)
@given(st.floats(4, 30), st.floats(4, 30), st.floats(-np.pi, np.pi), st.floats(-0.5, 0.5), st.floats(-0.5, 0.5))
def test_moment_ellipse_returns_a_drawn_ellipse_turned_any_way(a: float, b: float, angle: float, dr: float,
                                                               dc: float) -> None:
    from skimage.draw import ellipse

    size = int(2 * max(a, b)) + 12
    drawn = np.zeros((size, size + 3), bool)
    drawn[ellipse(size / 2 + dr, size / 2 + dc, a, b, shape=drawn.shape, rotation=angle)] = True
    fitted = moment_ellipse(drawn)
    assert dice(fitted, drawn) > 0.95  # only the outline's pixels differ
    assert np.array_equal(moment_ellipse(drawn.T), fitted.T)  # no preferred axis
    shifted = np.roll(drawn, (3, -2), axis=(0, 1))  # the drawing stays clear of the edges
    assert np.array_equal(moment_ellipse(shifted), np.roll(fitted, (3, -2), axis=(0, 1)))


@settings(max_examples=30, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(8, 24), st.integers(8, 24)), elements=st.booleans()))
def test_moment_ellipse_against_scikit_image_moments(mask: np.ndarray) -> None:
    """Any mask (blobs, scattered pixels): the ellipse drawn from scikit-image's region moments
    (centroid, orientation and axis lengths, 4 standard deviations, plus the unit pixel's spread)."""
    from skimage.draw import ellipse
    from skimage.measure import regionprops

    if not mask.any():
        assert not moment_ellipse(mask).any()
        return
    props = regionprops(mask.astype(np.uint8))[0]
    major, minor = (np.sqrt(props.axis_major_length ** 2 + 4 / 3), np.sqrt(props.axis_minor_length ** 2 + 4 / 3))
    reference = np.zeros(mask.shape, bool)
    reference[ellipse(*props.centroid, major / 2, minor / 2, shape=mask.shape,
                      rotation=props.orientation)] = True
    fitted = moment_ellipse(mask)
    # the two drawings differ only in pixels whose centre lies on (numerically at) the outline
    assert (fitted ^ reference).sum() <= max(2, 0.03 * reference.sum())


def test_moment_ellipse_small_and_bad_masks() -> None:
    one = np.zeros((5, 6), bool)
    one[2, 3] = True
    assert np.array_equal(moment_ellipse(one), one)
    assert not moment_ellipse(np.zeros((4, 4), bool)).any()
    with pytest.raises(ShapeMismatchError, match="mask: expected a 2D"):
        moment_ellipse(np.ones((2, 4, 4), bool))


@pytest.mark.parametrize("prompt", ["mask", "box"])
def test_one_prompt_propagation_and_its_baseline(random_predictor: SAM2Predictor, prompt: str) -> None:
    (image, label), = heldout_phantoms(1, 1)
    out = one_prompt_propagation(random_predictor, image, label, prompt=prompt)  # type: ignore[arg-type]
    truth = np.asarray(label.array)
    assert out.labels.shape == image.shape
    assert set(np.unique(out.labels)) <= set(np.unique(truth))
    for lab, k in out.prompt_slices.items():
        mask = truth == lab
        moved = np.moveaxis(mask, out.axis, 0)
        areas = moved.reshape(len(moved), -1).sum(1)
        assert k == int(np.argmax(areas))
        expected = np.zeros_like(moved)
        for z in range(len(moved)):  # brute force: the prompt mask on every slice holding the label
            if areas[z]:
                expected[z] = moved[k]
        assert np.array_equal(np.moveaxis(out.baseline[lab], out.axis, 0), expected)


@settings(max_examples=60, deadline=None)
@given(arrays(np.int8, st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)), elements=st.integers(0, 2)),
       st.integers(0, 2), st.data())
def test_on_labelled_slices_against_brute_force(truth: np.ndarray, axis: int, data: st.DataObject) -> None:
    """Each label is kept exactly on the slices its true mask spans, and its Dice never falls."""
    labels = data.draw(arrays(np.int8, truth.shape, elements=st.integers(0, 2)))
    present = [int(v) for v in np.unique(truth) if v]
    moved = np.moveaxis(truth, axis, 0)
    baseline = {}
    for lab in present:  # the copy baseline as one_prompt_propagation builds it
        areas = (moved == lab).reshape(len(moved), -1).sum(1)
        copied = np.zeros(moved.shape, bool)
        copied[areas > 0] = moved[int(np.argmax(areas))] == lab
        baseline[lab] = np.moveaxis(copied, 0, axis)
    out = Propagated(labels, {lab: 0 for lab in present}, axis, baseline, Roi.whole(truth.shape, axis)).on_labelled_slices()
    expected = np.zeros_like(np.moveaxis(labels, axis, 0))
    for z, plane in enumerate(np.moveaxis(labels, axis, 0)):
        for lab in present:
            if (moved[z] == lab).any():
                expected[z][plane == lab] = lab
    assert np.array_equal(np.moveaxis(out, axis, 0), expected)
    for lab in present:
        assert dice(out == lab, truth == lab) >= dice(labels == lab, truth == lab) - 1e-12


def test_mask_propagation_keeps_what_is_connected_to_each_prompt(random_predictor: SAM2Predictor) -> None:
    """``connected`` (the default) equals the unconnected map with each label cut to its 3D
    components that meet its prompt mask; box prompts keep the whole map."""
    from medsam2kit.prompts import components_meeting

    for (image, label), zoom in ((heldout_phantoms(1, 1)[0], 2.0), (_blobs(0), 1.5)):  # the crop: whole, part
        loose = one_prompt_propagation(random_predictor, image, label, connected=False, zoom=zoom)
        tight = one_prompt_propagation(random_predictor, image, label, zoom=zoom)
        truth = np.asarray(label.array)
        expected = np.zeros_like(loose.labels)
        for lab, k in loose.prompt_slices.items():
            seed = np.zeros(truth.shape, bool)
            np.moveaxis(seed, loose.axis, 0)[k] = np.moveaxis(truth == lab, loose.axis, 0)[k]
            expected[components_meeting(loose.labels == lab, seed)] = lab
        assert np.array_equal(tight.labels, expected)
        assert not np.array_equal(tight.labels, loose.labels)  # the random model's mask has parts cut off
    boxed = one_prompt_propagation(random_predictor, image, label, prompt="box")
    assert np.array_equal(boxed.labels, one_prompt_propagation(random_predictor, image, label, prompt="box",
                                                               connected=False).labels)


def test_one_prompt_propagation_rejects_an_unknown_prompt(random_predictor: SAM2Predictor) -> None:
    (image, label), = heldout_phantoms(1, 1)
    with pytest.raises(InvalidInputError, match="prompt"):
        one_prompt_propagation(random_predictor, image, label, prompt="scribble")  # type: ignore[arg-type]


def test_track_recording_scores_against_brute_force(random_predictor: SAM2Predictor) -> None:
    from medsam2kit.metrics import j_and_f
    from medsam2kit.phantoms import ultrasound_clip

    frames, labels = ultrasound_clip(6, (48, 40), rng=np.random.default_rng(0))
    truth = labels == 1
    truth[0] = False  # the first labelled frame is then frame 1
    s = track_recording(random_predictor, frames, truth)
    assert s.prompt_frame == 1 and s.masks.shape == frames.shape
    copied = np.broadcast_to(truth[1], truth[2:].shape)
    assert s.copy_dice == pytest.approx(dice(copied, truth[2:]))
    assert s.copy_jf == pytest.approx(j_and_f(copied, truth[2:]).jf_mean)
    assert s.dice == pytest.approx(dice(s.masks[2:], truth[2:]))


def test_track_recording_rejects_bad_input(random_predictor: SAM2Predictor) -> None:
    frames = np.zeros((3, 16, 16), np.uint8)
    with pytest.raises(ShapeMismatchError, match="frames, masks"):
        track_recording(random_predictor, frames, np.zeros((3, 16, 15), bool))
    late = np.zeros((3, 16, 16), bool)
    late[2, 4:8, 4:8] = True
    with pytest.raises(InvalidInputError, match="followed by"):
        track_recording(random_predictor, frames, late)


def test_box_prompt_image_shape_and_errors(random_predictor: SAM2Predictor) -> None:
    image = np.random.default_rng(0).integers(0, 255, (30, 50)).astype(np.uint8)
    mask = np.zeros((30, 50), bool)
    mask[5:20, 10:40] = True
    out = box_prompt_image(random_predictor, image, mask)
    assert out.shape == image.shape and out.dtype == bool
    raw = box_prompt_image(random_predictor, image, mask, inside_box=False)
    box = filled_box(mask)
    assert (raw & ~box).any()  # the random model's mask leaks past the box ...
    assert np.array_equal(out, raw & box)  # ... and the default cuts exactly that
    with pytest.raises(InvalidInputError, match="fit: expected 'none' or 'ellipse'"):
        box_prompt_image(random_predictor, image, mask, fit="circle")  # type: ignore[arg-type]
    with pytest.raises(ShapeMismatchError, match="image, mask"):
        box_prompt_image(random_predictor, image, mask[:, :10])
    with pytest.raises(InvalidInputError, match="empty"):
        box_prompt_image(random_predictor, image, np.zeros_like(mask))


@pytest.mark.parametrize("zoom", [2.0, None])
def test_segment_box_is_a_sam2_session_built_by_hand(random_predictor: SAM2Predictor, zoom: float | None) -> None:
    """The crop, the box in the crop's frame and the paste back, against the steps written out
    with the sequencer and the ROI helpers (the mask prompt's own box, as the task draws it)."""
    from medsam2kit.roi import roi_around_masks
    from medsam2kit.sequencer import sequence_frames

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (48, 70)).astype(np.uint8)
    mask = np.zeros((48, 70), bool)
    mask[12:30, 25:50] = True
    roi = roi_around_masks([mask], (1, 48, 70), axis=0, zoom=zoom)
    seq = sequence_frames(roi.crop(image[None]), image_size=random_predictor.image_size, window=None)
    session = random_predictor.start(seq)
    session.add_box(0, seq.boxes_to_frame(mask_box(roi.crop_slice(mask))))
    logits = session.propagate("forward").logits()[:, 0].numpy()
    by_hand = roi.paste(np.asarray(seq.to_volume_mask(logits).array, dtype=bool), fill=False)[0]
    assert np.array_equal(segment_box(random_predictor, image, mask_box(mask), zoom=zoom, inside_box=False), by_hand)
    assert np.array_equal(segment_box(random_predictor, image, (25, 12, 49, 29), zoom=zoom), by_hand & mask)


@pytest.mark.parametrize("inside_box", [True, False])
def test_segment_box_ellipse_fit_built_by_hand(random_predictor: SAM2Predictor, inside_box: bool) -> None:
    """``fit="ellipse"`` on the whole image, against its steps written out: SAM2's logits for the
    box on the image and on its left-right mirror (mirrored back) averaged, thresholded at 0, cut
    to the box, the largest part with its holes filled, its convex hull, its moment ellipse."""
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    from medsam2kit.prompts import largest_component
    from medsam2kit.sequencer import sequence_frames

    image = np.random.default_rng(0).integers(0, 255, (30, 50)).astype(np.uint8)

    def logits(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        seq = sequence_frames(frame[None], image_size=random_predictor.image_size, window=None)
        session = random_predictor.start(seq)
        session.add_box(0, seq.boxes_to_frame(np.array(box, dtype=np.float64)))
        return np.asarray(seq.to_volume_logits(session.propagate("forward").logits()[:, 0].numpy()).array)[0]

    # the box is symmetric about the middle column (49 - 39 = 10), so the mirror has the same box
    averaged = (logits(image, (10, 5, 39, 19)) + logits(image[:, ::-1].copy(), (10, 5, 39, 19))[:, ::-1]) / 2
    within = np.zeros(image.shape, bool)
    within[5:20, 10:40] = True
    within |= not inside_box
    part = ndimage.binary_fill_holes(largest_component((averaged > 0) & within))
    assert part.any() and not np.array_equal(part, convex_hull_image(part))  # the hull does something here
    fitted = segment_box(random_predictor, image, (10, 5, 39, 19), zoom=None, inside_box=inside_box, fit="ellipse")
    assert np.array_equal(fitted, moment_ellipse(convex_hull_image(part)) & within)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(st.integers(0, 2**16), st.sampled_from([2.0, None]))
def test_segment_box_ellipse_fit_mirrors_with_the_image(random_predictor: SAM2Predictor, seed: int,
                                                         zoom: float | None) -> None:
    """Averaging SAM2's logits with its mirror's makes the ellipse fit exactly mirror-equivariant:
    the mirrored image and box give the mirrored ellipse (SAM2's own mask does not, below);
    zoomed, whenever the mirrored box's crop is the mirrored crop (a crop whose centred start
    falls half-way between two pixels is rounded one way, not mirrored)."""
    from hypothesis import assume

    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(30, 70, 2))
    image = rng.integers(0, 255, (height, width)).astype(np.uint8)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    x1, y1 = int(rng.integers(x0 + 3, width)), int(rng.integers(y0 + 3, height))
    if zoom is not None:
        crop = roi_around((x0, y0, x1, y1), (1, height, width), axis=0, factor=zoom).cols
        mirror = roi_around((width - 1 - x1, y0, width - 1 - x0, y1), (1, height, width), axis=0, factor=zoom).cols
        assume(mirror == (width - crop[1], width - crop[0]))
    mirrored = image[:, ::-1].copy()
    fitted = segment_box(random_predictor, image, (x0, y0, x1, y1), zoom=zoom, fit="ellipse")
    assert np.array_equal(segment_box(random_predictor, mirrored, (width - 1 - x1, y0, width - 1 - x0, y1),
                                      zoom=zoom, fit="ellipse")[:, ::-1], fitted)


def test_segment_box_mask_alone_is_not_mirror_equivariant(random_predictor: SAM2Predictor) -> None:
    """Why the ellipse fit averages with the mirror: SAM2's mask of the mirrored image is not the
    mirrored mask (so the property above is not a given)."""
    image = np.random.default_rng(0).integers(0, 255, (30, 50)).astype(np.uint8)
    mask = segment_box(random_predictor, image, (10, 5, 39, 19), zoom=None)
    assert not np.array_equal(segment_box(random_predictor, image[:, ::-1].copy(), (10, 5, 39, 19), zoom=None)[:, ::-1], mask)


def test_segment_box_cuts_a_fractional_box_to_the_pixel_centres_inside(random_predictor: SAM2Predictor) -> None:
    image = np.random.default_rng(2).integers(0, 255, (30, 50)).astype(np.uint8)
    raw = segment_box(random_predictor, image, (10.5, 5.2, 39.7, 19.9), inside_box=False)
    cut = segment_box(random_predictor, image, (10.5, 5.2, 39.7, 19.9))
    inside = np.zeros_like(raw)
    inside[6:20, 11:40] = True  # rows 6..19, columns 11..39: the centres within the box
    assert (raw & ~inside).any() and np.array_equal(cut, raw & inside)


@pytest.mark.parametrize(("box", "match"), [
    ((0, 0, 50, 10), r"box: expected \(x0, y0, x1, y1\) with 0 <= x0 <= x1 <= 49 and 0 <= y0 <= y1 <= 29"),
    ((-1, 0, 10, 10), "x0 <= x1 <= 49"),
    ((20, 5, 10, 10), "x0 <= x1 <= 49"),
    ((0, 0, 10), "got \\(0, 0, 10\\)"),
    ((0, float("nan"), 10, 10), "0 <= y0 <= y1 <= 29"),
    (("a", 0, 10, 10), "box: expected"),
    ((3.2, 3.2, 3.8, 3.8), "at least one pixel centre"),
])
def test_segment_box_refuses_a_bad_box_by_name(random_predictor: SAM2Predictor, box: tuple, match: str) -> None:
    image = np.zeros((30, 50), np.uint8)
    with pytest.raises(InvalidInputError, match=match):
        segment_box(random_predictor, image, box)


def test_segment_box_refuses_an_image_that_is_not_2d(random_predictor: SAM2Predictor) -> None:
    with pytest.raises(ShapeMismatchError, match=r"image: expected a 2D \(H, W\) image, got shape \(2, 30, 50\)"):
        segment_box(random_predictor, np.zeros((2, 30, 50), np.uint8), (0, 0, 10, 10))


def _depth_brute_force(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each region pixel to the nearest pixel outside it (outside the image
    counts as outside), by trying every outside pixel of the padded image."""
    padded = np.pad(region, 1)
    outside = np.argwhere(~padded)
    depth = np.zeros(region.shape)
    for r, c in np.argwhere(region):
        depth[r, c] = np.sqrt(((outside - (r + 1, c + 1)) ** 2).sum(1)).min()
    return depth


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 10), st.integers(1, 10))), st.data())
def test_correction_click_is_the_deepest_error_pixel(truth: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(arrays(np.bool_, truth.shape))
    click = correction_click(truth, pred)
    fn, fp = truth & ~pred, pred & ~truth
    if not (fn.any() or fp.any()):
        assert click is None
        return
    assert click is not None
    (x, y), positive = click
    row, col = int(y), int(x)
    assert (fn if positive else fp)[row, col]
    deepest = max(_depth_brute_force(r).max() for r in (fn, fp))
    assert _depth_brute_force(fn if positive else fp)[row, col] == pytest.approx(deepest)


def test_correction_click_rejects_mismatched_shapes() -> None:
    with pytest.raises(ShapeMismatchError, match="truth, pred"):
        correction_click(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_track_recording_prompts_box_and_clicks(random_predictor: SAM2Predictor) -> None:
    from medsam2kit.phantoms import ultrasound_clip
    from medsam2kit.predictor import PointPrompt
    from medsam2kit.sequencer import sequence_frames

    frames, labels = ultrasound_clip(5, (48, 40), rng=np.random.default_rng(1))
    truth = labels == 1
    box = track_recording(random_predictor, frames, truth, prompt="box")
    assert box.prompt == "box" and box.clicks == 0 and box.dice == pytest.approx(dice(box.masks[1:], truth[1:]))
    none = track_recording(random_predictor, frames, truth, prompt="point", corrections=0)
    more = track_recording(random_predictor, frames, truth, prompt="point", corrections=3)
    assert none.clicks == 1 and 1 <= more.clicks <= 4
    # the first click is the deepest point of the frame-grid truth; each correction targets the
    # error of SAM2's mask for the clicks before it (replayed here click by click)
    seq = sequence_frames(frames, image_size=random_predictor.image_size)
    t = seq.mask_to_frame(truth[0]).numpy()
    pred, pts, labs = np.zeros_like(t), [], []
    for _ in range(more.clicks):
        click = correction_click(t, pred)
        assert click is not None
        pts.append(click[0])
        labs.append(int(click[1]))
        import torch

        res = random_predictor.predict_slices(seq, [PointPrompt(frame=0, points=torch.tensor(pts), labels=torch.tensor(labs, dtype=torch.int32))])
        pred = res.logits()[0, 0].numpy() > 0
    assert labs[0] == 1 and (more.clicks == 4 or correction_click(t, pred) is None)
    with pytest.raises(InvalidInputError, match="prompt"):
        track_recording(random_predictor, frames, truth, prompt="scribble")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="corrections"):
        track_recording(random_predictor, frames, truth, prompt="point", corrections=-1)


def _blobs(seed: int) -> tuple[Volume, Volume]:
    """Two ellipsoids (labels 1, 2) on noise, each largest on the middle slice."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:9, :72, :80]
    lab = np.zeros((9, 72, 80), np.uint8)
    lab[((z - 4) / 4.5) ** 2 + ((y - 30) / 7) ** 2 + ((x - 44) / 6) ** 2 <= 1] = 1
    lab[((z - 4) / 3.5) ** 2 + ((y - 40) / 4) ** 2 + ((x - 50) / 5) ** 2 <= 1] = 2
    img = rng.normal(size=lab.shape).astype(np.float32) + 3 * lab
    affine = np.diag([3.0, 0.8, 0.7, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    return Volume(img, affine), Volume(lab, affine)


@pytest.mark.parametrize("prompt", ["mask", "box"])
def test_zoomed_propagation_is_propagation_on_the_crop(random_predictor: SAM2Predictor, prompt: str) -> None:
    image, label = _blobs(0)
    out = one_prompt_propagation(random_predictor, image, label, prompt=prompt, zoom=1.5)  # type: ignore[arg-type]
    # by hand: the crop of 1.5 x the two prompts' box (rows 23..44, cols 38..55 -> side 27),
    # cut with numpy and the affine moved to the crop's first voxel
    side = round(1.5 * max(44 - 23 + 1, 55 - 38 + 1))
    r0 = round((23 + 44) / 2 + 0.5 - side / 2)
    c0 = round((38 + 55) / 2 + 0.5 - side / 2)
    shifted = image.affine.copy()
    shifted[:3, 3] += image.affine[:3, :3] @ [0, r0, c0]
    cut = (slice(None), slice(r0, r0 + side), slice(c0, c0 + side))
    by_hand = one_prompt_propagation(random_predictor, Volume(image.array[cut].copy(), shifted),
                                     Volume(label.array[cut].copy(), shifted), prompt=prompt, zoom=None)  # type: ignore[arg-type]
    expected = np.zeros(image.shape, by_hand.labels.dtype)
    expected[cut] = by_hand.labels
    assert np.array_equal(out.labels, expected)
    assert out.prompt_slices == by_hand.prompt_slices == {1: 4, 2: 4}
    whole = one_prompt_propagation(random_predictor, image, label, prompt=prompt, zoom=None)  # type: ignore[arg-type]
    assert not np.array_equal(whole.labels, out.labels)  # the zoom changes what the model sees
    with pytest.raises(InvalidInputError, match="zoom: expected a crop factor >= 1"):
        one_prompt_propagation(random_predictor, image, label, zoom=0.5)


def test_zoomed_recording_and_image_are_the_crop_pasted_back(random_predictor: SAM2Predictor) -> None:
    image, label = _blobs(1)
    frames = np.clip(np.asarray(image.array) * 40 + 100, 0, 255).astype(np.uint8)
    masks = np.asarray(label.array) == 1
    roi = roi_around(masks[0], frames.shape, axis=0, factor=2.0)
    zoomed = track_recording(random_predictor, frames, masks, zoom=2.0)
    by_hand = track_recording(random_predictor, roi.crop(frames), roi.crop(masks), zoom=None)
    assert np.array_equal(zoomed.masks, roi.paste(by_hand.masks, fill=False))
    assert zoomed.copy_dice == pytest.approx(dice(np.broadcast_to(masks[0], masks[1:].shape), masks[1:]))
    mask = box_prompt_image(random_predictor, frames[4], masks[4], zoom=2.0)
    roi4 = roi_around(masks[4], (1, *masks[4].shape), axis=0, factor=2.0)
    crop = box_prompt_image(random_predictor, roi4.crop_slice(frames[4]), roi4.crop_slice(masks[4]), zoom=None)
    assert np.array_equal(mask, roi4.paste(crop[None], fill=False)[0])
