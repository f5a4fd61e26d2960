"""The scored prompt tasks of the demo and of the model card, each beside its simple baseline.

* :func:`one_prompt_propagation`: a volume, each label prompted on one slice (its largest) by its
  true mask or by the box around it, propagated both ways. Baseline: the prompt slice's true
  mask copied onto every slice that holds the label (an oracle of the label's extent, which the
  propagation has to find itself).
* :func:`track_recording`: a video (an ultrasound recording), the first labelled frame prompted
  by its true mask, the box around it, or clicks with simulated corrections
  (:func:`correction_click`), propagated forward. Baseline: that mask copied onto every later frame.
* :func:`box_prompt_image`: one image, the box around the true mask as the prompt (SAM2's mask,
  or with ``fit="ellipse"`` the ellipse with its moments, :func:`moment_ellipse`, for heads
  annotated as ellipses). Baselines: the filled box, and the ellipse inscribed in it
  (:func:`box_ellipse`). On an image of one's own, with a box and no mask: :func:`segment_box`.

Example:
    >>> from medsam2kit.reference import heldout_phantoms
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> (image, label), = heldout_phantoms(0, 1)
    >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    >>> out = one_prompt_propagation(pred, image, label, prompt="box")
    >>> out.labels.shape == image.shape, sorted(out.prompt_slices) == sorted(set(label.array.ravel()) - {0})
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import convex_hull_image

from medsam2kit.adapt import AdaptConfig
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.metrics import dice, j_and_f
from medsam2kit.pipelines import LabelPromptKind, Overlaps, PromptPrior, PromptPropagationConfig, propagate_prompts
from medsam2kit.predictor import PointPrompt, SAM2Predictor, Session
from medsam2kit.prompts import largest_component
from medsam2kit.roi import DEFAULT_ZOOM, Roi, check_zoom, largest_slice, mask_box, roi_around, roi_around_masks
from medsam2kit.sequencer import FrameSequence, PercentileWindow, default_axis, sequence_frames
from medsam2kit.volume import Volume, check_same_grid

PromptKind = LabelPromptKind
RecordingPrompt = Literal["mask", "box", "point"]
#: What :func:`box_prompt_image` returns: SAM2's mask (``"none"``), or the ellipse with the moments
#: of the convex hull of its largest part, SAM2's logits averaged with its mirror image's
#: (``"ellipse"``, :func:`moment_ellipse`; see :func:`segment_box`).
BoxFit = Literal["none", "ellipse"]


@dataclass(frozen=True)
class Propagated:
    """What :func:`one_prompt_propagation` made.

    Attributes:
        labels: the label map on the image's grid.
        prompt_slices: per label, the slice (along ``axis``) whose true mask (or its box) was the prompt.
        axis: the slicing axis.
        baseline: per label, the prompt slice's true mask on every slice holding the label.
        roi: the in-plane crop the slices were zoomed to (the whole grid without zoom).
    """

    labels: np.ndarray = field(repr=False)
    prompt_slices: Mapping[int, int]
    axis: int
    baseline: Mapping[int, np.ndarray] = field(repr=False)
    roi: Roi

    def on_labelled_slices(self) -> np.ndarray:
        """The label map with each label kept only on the slices its true mask spans.

        The copy baseline is given this extent; propagation has to find it (SAM2's object
        score stays positive beyond the structure's ends, so it does not tell). This view
        scores propagation with the same knowledge, as a reader gives it by marking the first
        and last slice (the slice range of MedSAM2's 3D box workflow). Per label, Dice can only
        rise: only false positives are removed.
        """
        others = tuple(a for a in range(3) if a != self.axis)
        out = np.zeros_like(self.labels)
        for lab, copied in self.baseline.items():
            keep = (self.labels == lab) & np.expand_dims(copied.any(axis=others), others)
            out[keep] = lab
        return out


def filled_box(mask: np.ndarray) -> np.ndarray:
    """The filled box of :func:`mask_box` (the box prompt's own baseline).

    Example:
        >>> m = np.zeros((4, 4), bool); m[1, 1] = m[2, 3] = True
        >>> int(filled_box(m).sum())
        6
    """
    return _box_pixels(mask_box(mask), mask.shape)


def _box_pixels(box: Sequence[float] | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The pixels of a 2D grid whose centre lies in ``box`` ``(x0, y0, x1, y1)`` (inclusive)."""
    x0, y0, x1, y1 = box
    out = np.zeros(shape, dtype=bool)
    out[math.ceil(y0):math.floor(y1) + 1, math.ceil(x0):math.floor(x1) + 1] = True
    return out


def box_ellipse(mask: np.ndarray) -> np.ndarray:
    """The axis-aligned ellipse inscribed in :func:`filled_box` (a second baseline of box prompts
    on elliptical structures, such as the fetal head, whose annotations are drawn as ellipses:
    a tight box nearly fixes them).

    Pixel ``(r, c)`` is inside when its centre lies in the ellipse touching the box's outer edges
    (the box spans pixels ``x0..x1``, so its edges are at ``x0 - 0.5`` and ``x1 + 0.5``).

    Raises:
        InvalidInputError: the mask is empty.

    Example:
        >>> m = np.zeros((5, 7), bool); m[0, 3] = m[4, 3] = m[2, 0] = m[2, 6] = True
        >>> box_ellipse(m).astype(int)
        array([[0, 1, 1, 1, 1, 1, 0],
               [1, 1, 1, 1, 1, 1, 1],
               [1, 1, 1, 1, 1, 1, 1],
               [1, 1, 1, 1, 1, 1, 1],
               [0, 1, 1, 1, 1, 1, 0]])
    """
    x0, y0, x1, y1 = mask_box(mask)
    rows, cols = np.ogrid[:mask.shape[0], :mask.shape[1]]
    half_w, half_h = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
    return ((cols - (x0 + x1) / 2) / half_w) ** 2 + ((rows - (y0 + y1) / 2) / half_h) ** 2 <= 1


def moment_ellipse(mask: np.ndarray) -> np.ndarray:
    """The filled ellipse with the centre and second moments of a 2D bool ``mask``: the pixels
    whose centre ``p`` has ``(p - c)^T S^-1 (p - c) <= 4``, where ``c`` is the mask's centroid and
    ``S`` the covariance of the area it covers (its pixel centres' covariance plus ``I / 12``,
    each pixel a unit square). A filled ellipse of semi-axes ``a``, ``b`` has ``S``'s eigenvalues
    ``a^2 / 4``, ``b^2 / 4``, so a drawn ellipse, turned any way, comes back as itself up to its
    outline's pixels; a single pixel comes back as itself. Empty for an empty mask.

    HC18's fetal heads are annotated as ellipses, and the head circumference is read from the
    ellipse fitted to a segmentation (:func:`box_prompt_image` with ``fit="ellipse"``).

    Raises:
        ShapeMismatchError: ``mask`` is not 2D.

    Example:
        >>> m = np.zeros((7, 9), bool); m[1:6, 1:8] = True  # a rectangle: its ellipse reaches past it
        >>> moment_ellipse(m).astype(int)
        array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
               [0, 0, 1, 1, 1, 1, 1, 0, 0],
               [0, 1, 1, 1, 1, 1, 1, 1, 0],
               [1, 1, 1, 1, 1, 1, 1, 1, 1],
               [0, 1, 1, 1, 1, 1, 1, 1, 0],
               [0, 0, 1, 1, 1, 1, 1, 0, 0],
               [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ShapeMismatchError(f"mask: expected a 2D (H, W) mask, got shape {m.shape}")
    points = np.argwhere(m).astype(np.float64)
    if len(points) == 0:
        return np.zeros(m.shape, dtype=bool)
    centre = points.mean(0)
    spread = np.cov(points.T, bias=True).reshape(2, 2) + np.eye(2) / 12.0
    rows, cols = np.indices(m.shape, dtype=np.float64)
    offsets = np.stack([rows - centre[0], cols - centre[1]], axis=-1)
    return np.einsum("...i,ij,...j->...", offsets, np.linalg.inv(spread), offsets) <= 4.0


#: The model-free baselines of box prompts on an image, by the method name the demo and the
#: evaluation report: each maps the true mask to the baseline's mask.
BOX_BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"filled box": filled_box,
                                                                 "ellipse in the box": box_ellipse}


def one_prompt_propagation(predictor: SAM2Predictor, image: Volume, label: Volume,
                           labels: Sequence[int] | None = None, *, prompt: PromptKind = "mask",
                           zoom: float | None = DEFAULT_ZOOM, adapt: AdaptConfig | None = None,
                           connected: bool = True, overlaps: Overlaps = "nearest",
                           prior: PromptPrior | None = PromptPrior(), mirror: bool = False) -> Propagated:
    """Prompt each label on its largest slice (its true mask, or the box around it) and propagate
    both ways.

    All labels are objects of one session (each slice is encoded once, twice with ``mirror`` and mask prompts); the label map takes per
    voxel the label of the largest positive logit. With ``zoom`` every slice is cropped to the
    square of ``zoom`` times the prompts' box (:func:`medsam2kit.roi.roi_around`, around all the
    labels' prompts together; default :data:`medsam2kit.roi.DEFAULT_ZOOM`) before it is resized
    for the model; the result is pasted back (nothing outside the crop). ``None``: whole slices.
    With ``adapt`` (mask prompts only) a copy of the model is first fine-tuned on the prompt
    masks (:func:`medsam2kit.adapt.adapt_predictor`, all labels together) and propagates instead.
    With ``connected`` (default; mask prompts) each label keeps only the parts of its mask that
    are connected in 3D (26-neighbourhood) to its prompt mask: what is cut off from the prompted
    object is not it (on the validation cases this raised every label, e.g. hippocampus 0.426
    -> 0.481 plain and 0.522 -> 0.577 adapted, and lowered no phantom object). Box prompts keep
    the whole mask: a box only bounds the object, and the rule cost phantom objects there.
    ``overlaps``: where several labels' logits are positive, the label prompted nearest
    (``"nearest"``, default) or the largest logit (``"logit"``; see
    :class:`~medsam2kit.pipelines.PromptPropagationConfig`). ``prior`` (mask prompts): each prompt
    mask's shape added to its label's logits near its slice
    (:class:`~medsam2kit.pipelines.PromptPrior`, default); ``None``: SAM2's logits as they are.
    ``mirror`` (mask prompts): SAM2's logits averaged with those of a second run on the mirrored
    slices, for models trained with horizontal flips
    (:class:`~medsam2kit.pipelines.PromptPropagationConfig`).

    Raises:
        ShapeMismatchError / GeometryError: ``label`` is not on ``image``'s grid.
        InvalidInputError: a label is absent, ``prompt`` is unknown, ``zoom < 1``, or ``adapt``
            is given with box prompts (there is no mask to adapt to).
    """
    config = PromptPropagationConfig(prompt=prompt, zoom=zoom, adapt=adapt, connected=connected, overlaps=overlaps,
                                     prior=prior, mirror=mirror)
    check_same_grid(label, image)
    present = tuple(int(v) for v in np.unique(label.array) if v != 0)
    wanted = present if labels is None else tuple(int(v) for v in labels)
    axis = default_axis(image)
    others = tuple(a for a in range(3) if a != axis)
    prompts: dict[int, int] = {}
    baseline: dict[int, np.ndarray] = {}
    drawn = np.zeros(image.shape, dtype=np.int32)
    for lab in wanted:
        mask = np.asarray(label.array) == lab
        holds = mask.any(axis=others)
        if not holds.any():
            raise InvalidInputError(f"labels: label {lab} is absent from the label map")
        prompts[lab] = largest_slice(mask, axis=axis)
        slice_mask = np.take(mask, prompts[lab], axis=axis)
        np.moveaxis(drawn, axis, 0)[prompts[lab]][slice_mask] = lab
        baseline[lab] = np.expand_dims(slice_mask, axis) & np.expand_dims(holds, others)
    out = propagate_prompts(predictor, image, label.with_array(drawn), config)
    return Propagated(np.asarray(out.labels.array), prompts, axis, baseline, out.roi)


@dataclass(frozen=True)
class RecordingScores:
    """:func:`track_recording`'s scores over the frames after the prompt.

    Attributes:
        prompt_frame: the first frame with foreground (the prompt).
        dice, jf: of the propagation (Dice over all later frames together; DAVIS J&F).
        copy_dice, copy_jf: of the baseline (the prompt mask on every later frame).
        masks: the predicted ``(T, H, W)`` masks (the prompt frame included).
        prompt: the kind of prompt.
        clicks: the clicks given (``"point"``: the first one plus corrections; else 0).
    """

    prompt_frame: int
    dice: float
    jf: float
    copy_dice: float
    copy_jf: float
    masks: np.ndarray = field(repr=False)
    prompt: RecordingPrompt = "mask"
    clicks: int = 0


def correction_click(truth: np.ndarray, pred: np.ndarray) -> tuple[tuple[float, float], bool] | None:
    """The next simulated click of the standard interactive protocol (RITM, SAM's evaluation): at
    the point of the error region farthest from its border (the image edge counts as a border),
    positive in a missed region (false negative), negative in a false positive; ``None`` when the
    prediction is exact. With an empty ``pred`` it is the first click: the deepest point of the truth.

    Args:
        truth: bool ``(H, W)`` true mask.
        pred: bool ``(H, W)`` current prediction.

    Returns:
        ``((x, y), positive)`` with ``x`` the column and ``y`` the row, or ``None``.

    Raises:
        ShapeMismatchError: the two are not the same 2D shape.

    Example:
        >>> t = np.zeros((7, 9), bool); t[1:6, 1:8] = True
        >>> correction_click(t, np.zeros_like(t)), correction_click(t, t)
        (((3.0, 3.0), True), None)
    """
    t, p = np.asarray(truth, bool), np.asarray(pred, bool)
    if t.shape != p.shape or t.ndim != 2:
        raise ShapeMismatchError(f"truth, pred: expected the same (H, W) shape, got {t.shape}, {p.shape}")
    best: tuple[float, tuple[float, float], bool] | None = None
    for region, positive in ((t & ~p, True), (p & ~t, False)):
        if not region.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)  # first maximum in raster order
        if best is None or depth[row, col] > best[0]:
            best = (float(depth[row, col]), (float(col), float(row)), positive)
    return None if best is None else (best[1], best[2])


def track_recording(predictor: SAM2Predictor, frames: np.ndarray, masks: np.ndarray, *,
                    prompt: RecordingPrompt = "mask", corrections: int = 3,
                    zoom: float | None = None) -> RecordingScores:
    """Prompt a recording's first labelled frame, propagate forward, score the later frames.

    The prompt, as the ultrasound fine-tuning study evaluates (first-frame mask, box, point):
    ``"mask"`` the true mask; ``"box"`` the box around it; ``"point"`` one click at the deepest
    point of the true mask, then up to ``corrections`` correction clicks on that frame
    (:func:`correction_click` on the model's frame grid, each from SAM2's mask for the clicks so far),
    as a user would click before propagating.

    Args:
        frames: ``(T, H, W)`` frames (uint8 kept, other types windowed by percentiles).
        masks: ``(T, H, W)`` true masks (non-zero = foreground), some foreground somewhere.
        prompt: ``"mask"``, ``"box"`` or ``"point"``.
        corrections: correction clicks at most (``"point"`` only).
        zoom: crop every frame to ``zoom`` times the first mask's box (see
            :func:`one_prompt_propagation`); ``None`` (default): whole frames.

    Raises:
        ShapeMismatchError: ``frames`` and ``masks`` differ in shape.
        InvalidInputError: no frame has foreground, or fewer than two frames from the first one;
            ``prompt`` unknown, ``corrections`` negative or ``zoom < 1``.
    """
    if prompt not in ("mask", "box", "point"):
        raise InvalidInputError(f"prompt: expected 'mask', 'box' or 'point', got {prompt!r}")
    if corrections < 0:
        raise InvalidInputError(f"corrections: expected >= 0, got {corrections}")
    if frames.shape != masks.shape or frames.ndim != 3:
        raise ShapeMismatchError(f"frames, masks: expected the same (T, H, W) shape, got {frames.shape}, {masks.shape}")
    truth = np.asarray(masks) != 0
    labelled = np.flatnonzero(truth.reshape(len(truth), -1).any(1))
    if labelled.size == 0 or labelled[0] >= len(truth) - 1:
        raise InvalidInputError("masks: expected foreground on a frame followed by at least one other frame")
    first = int(labelled[0])
    roi = roi_around_masks([truth[first]], truth.shape, axis=0, zoom=zoom)
    seq = sequence_frames(roi.crop(frames), image_size=predictor.image_size, window=_window(frames))
    session = predictor.start(seq)
    clicks = 0
    prompt_mask = roi.crop_slice(truth[first])
    if prompt == "mask":
        session.add_mask(first, seq.mask_to_frame(prompt_mask))
    elif prompt == "box":
        session.add_box(first, seq.boxes_to_frame(mask_box(prompt_mask)))
    else:
        points, labels = _clicks(session, seq, first, seq.mask_to_frame(prompt_mask).numpy(), corrections)
        session.add_points(first, points, labels)
        clicks = len(labels)
    result = session.propagate("forward")
    pred = roi.paste(np.asarray(seq.to_volume_mask(result.logits()[:, 0].numpy()).array, dtype=bool), fill=False)
    later, ref = pred[first + 1:], truth[first + 1:]
    copied = np.broadcast_to(truth[first], ref.shape)
    return RecordingScores(first, dice(later, ref), j_and_f(later, ref).jf_mean, dice(copied, ref),
                           j_and_f(copied, ref).jf_mean, pred, prompt, clicks)


def _clicks(session: Session, seq: FrameSequence, frame: int, truth: np.ndarray,
            corrections: int) -> tuple[np.ndarray, np.ndarray]:
    """The first click and up to ``corrections`` correction clicks on ``frame`` (model pixels),
    each from SAM2's mask for the clicks before it (image mode: the frame freshly prompted, on
    the session's cached features: the frame is encoded once)."""
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    pred = np.zeros_like(truth)
    for _ in range(corrections + 1):
        click = correction_click(truth, pred)
        if click is None:
            break
        points.append(click[0])
        labels.append(int(click[1]))
        prompt = PointPrompt(frame=frame, points=torch.tensor(points, dtype=torch.float32),
                             labels=torch.tensor(labels, dtype=torch.int32))
        pred = session.predictor.predict_slices(seq, [prompt], cache=session.cache).logits()[frame, 0].numpy() > 0
    return np.asarray(points, np.float32), np.asarray(labels, np.int32)


def box_prompt_image(predictor: SAM2Predictor, image: np.ndarray, mask: np.ndarray, *,
                     zoom: float | None = DEFAULT_ZOOM, inside_box: bool = True, fit: BoxFit = "none") -> np.ndarray:
    """The mask SAM2 gives for the box around ``mask`` on a 2D ``image`` (bool, ``image``'s shape):
    :func:`segment_box` with the box :func:`mask_box` draws around ``mask`` (the scored task).

    Raises:
        ShapeMismatchError: ``image`` and ``mask`` differ in shape or are not 2D.
        InvalidInputError: ``mask`` is empty, ``zoom < 1``, or ``fit`` is not ``"none"`` or ``"ellipse"``.
    """
    if image.shape != mask.shape or image.ndim != 2:
        raise ShapeMismatchError(f"image, mask: expected the same (H, W) shape, got {image.shape}, {mask.shape}")
    return segment_box(predictor, image, mask_box(np.asarray(mask) != 0), zoom=zoom, inside_box=inside_box, fit=fit)


def segment_box(predictor: SAM2Predictor, image: np.ndarray, box: Sequence[float] | np.ndarray, *,
                zoom: float | None = DEFAULT_ZOOM, inside_box: bool = True, fit: BoxFit = "none") -> np.ndarray:
    """The mask SAM2 gives for a box prompt on a 2D ``image`` (bool, ``image``'s shape).

    ``box``: ``(x0, y0, x1, y1)``, the columns and rows of the box's first and last pixels
    (inclusive, as :func:`mask_box` gives them; fractions allowed), inside the image. ``zoom``:
    crop the image to ``zoom`` times the box first (see :func:`one_prompt_propagation`; default
    :data:`medsam2kit.roi.DEFAULT_ZOOM`); ``None``: the whole image. ``inside_box`` (default):
    the mask is cut to the box (the pixels whose centre lies in it), which says where the object
    lies (a small model's masks leak past it: on the validation fetal-head images, 11 % of the
    selection model's mask lay outside the box, and the cut raised its Dice from 0.821 to
    0.873); ``False``: SAM2's mask as it is. ``fit="ellipse"``: SAM2 runs on the crop and on its
    left-right mirror and the two logit maps are averaged (so the fit is mirror-equivariant, unless the
    zoomed crop's centred start falls half-way between two pixels; at twice the cost); the mask's largest part (cut to the box first with ``inside_box``), its
    holes filled, its convex hull, replaced by the ellipse with its moments
    (:func:`moment_ellipse`), cut to the box again with ``inside_box``; for structures annotated
    as ellipses, such as the fetal head (validation images: the mask 0.927, the moment ellipse
    0.939, with the mirror and the hull 0.947; docs/reference_model.md). Empty when SAM2's mask is.

    Raises:
        ShapeMismatchError: ``image`` is not 2D.
        InvalidInputError: ``box`` is not four finite numbers with ``0 <= x0 <= x1 <= W - 1`` and
            ``0 <= y0 <= y1 <= H - 1``, or covers no pixel centre; ``zoom < 1``; ``fit`` is not
            ``"none"`` or ``"ellipse"``.

    Example:
        >>> from medsam2kit.predictor import SAM2Predictor
        >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
        >>> image = np.zeros((40, 60), np.uint8); image[10:20, 20:40] = 200
        >>> mask = segment_box(pred, image, (20, 10, 39, 19))
        >>> mask.shape, bool(mask[:10].any() or mask[:, :20].any())  # cut to the box
        ((40, 60), False)
    """
    if fit not in ("none", "ellipse"):
        raise InvalidInputError(f"fit: expected 'none' or 'ellipse', got {fit!r}")
    if np.ndim(image) != 2:
        raise ShapeMismatchError(f"image: expected a 2D (H, W) image, got shape {np.shape(image)}")
    height, width = np.shape(image)
    x0, y0, x1, y1 = _check_box(box, height, width)
    factor = check_zoom(zoom)
    roi = Roi.whole((1, height, width), 0) if factor is None else roi_around(
        (x0, y0, x1, y1), (1, height, width), axis=0, factor=factor)
    crop = roi.crop(np.asarray(image)[None])
    (r0, _), (c0, _) = roi.rows, roi.cols
    window = _window(image)
    left, top, right, bottom = x0 - c0, y0 - r0, x1 - c0, y1 - r0  # the box in the crop's pixels
    logits = _box_logits(predictor, crop, (left, top, right, bottom), window)
    if fit == "ellipse":  # averaged with the left-right mirror's, mirrored back
        last = crop.shape[2] - 1
        mirrored = _box_logits(predictor, crop[:, :, ::-1], (last - right, top, last - left, bottom), window)
        logits = (logits + mirrored[:, ::-1]) / 2
    out = roi.paste(logits[None] > 0, fill=False)[0]
    inside = _box_pixels((x0, y0, x1, y1), out.shape) if inside_box else np.ones(out.shape, dtype=bool)
    if fit == "ellipse":
        part = ndimage.binary_fill_holes(largest_component(out & inside))
        out = moment_ellipse(convex_hull_image(part) if part.any() else part)
    return out & inside


def _box_logits(predictor: SAM2Predictor, crop: np.ndarray, box: tuple[float, float, float, float],
                window: PercentileWindow | None) -> np.ndarray:
    """SAM2's float32 ``(H, W)`` logits on the one-frame ``crop`` ``(1, H, W)`` for ``box``, in its pixels."""
    seq = sequence_frames(np.ascontiguousarray(crop), image_size=predictor.image_size, window=window)
    session = predictor.start(seq)
    session.add_box(0, seq.boxes_to_frame(np.array(box, dtype=np.float64)))
    return np.asarray(seq.to_volume_logits(session.propagate("forward").logits()[:, 0].numpy()).array)[0]


def _check_box(box: Sequence[float] | np.ndarray, height: int, width: int) -> tuple[float, float, float, float]:
    """``box`` as four floats, or an error naming it (see :func:`segment_box`)."""
    try:
        values = np.asarray(box, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.full(1, np.nan)
    x0, y0, x1, y1 = (float(v) for v in values) if values.size == 4 else (math.nan,) * 4
    if not (0 <= x0 <= x1 <= width - 1 and 0 <= y0 <= y1 <= height - 1):  # NaN compares False
        raise InvalidInputError(f"box: expected (x0, y0, x1, y1) with 0 <= x0 <= x1 <= {width - 1} and "
                                f"0 <= y0 <= y1 <= {height - 1}, got {box!r}")
    if math.ceil(x0) > math.floor(x1) or math.ceil(y0) > math.floor(y1):
        raise InvalidInputError(f"box: expected a box holding at least one pixel centre, got {box!r}")
    return x0, y0, x1, y1


def _window(frames: np.ndarray) -> PercentileWindow | None:
    return None if frames.dtype == np.uint8 else PercentileWindow()


__all__ = ["BOX_BASELINES", "BoxFit", "PromptKind", "Propagated", "RecordingPrompt", "RecordingScores", "box_ellipse", "box_prompt_image",
           "correction_click", "filled_box", "mask_box", "moment_ellipse", "one_prompt_propagation", "segment_box",
           "track_recording"]
