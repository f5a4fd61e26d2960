"""End-to-end pipelines, each one composable object.

* :func:`propagate_prompts`: label prompts drawn on one or a few slices of a volume (a mask,
  or the box around it, per label and slice) -> zoom around them -> optional one-shot
  adaptation -> SAM2 propagation both ways -> the drawn shapes as a prior near their slices
  -> label map (``medsam2kit propagate``).
* :class:`SAM2Med3DPipeline`: coarse network -> spatial slice filter -> SAM2 propagation from the
  chosen slices (each slice encoded once) -> confidence fusion -> label map (SAM2Med3D).
* :class:`~medsam2kit.fewshot.FewShotPipeline`: FATE-SAM (supports -> bank -> label maps).

Example:
    >>> import numpy as np
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> def coarse(volume):  # any callable volume -> (L+1, D, H, W) probabilities
    ...     fg = (volume.array > 0.4).astype(np.float32)
    ...     return np.stack([1 - fg, fg])
    >>> pipe = SAM2Med3DPipeline(coarse, SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu"))
    >>> image, _ = ellipsoid_phantom((8, 48, 40), rng=0)
    >>> result = pipe.run(image)
    >>> result.labels.shape == image.shape, result.encoder_calls
    (True, 8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from medsam2kit._validate import check_label_map, check_positive
from medsam2kit.adapt import AdaptConfig, adapt_predictor
from medsam2kit.coarse import CoarseModel
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError
from medsam2kit.fewshot import FewShotPipeline, label_map_from_logits
from medsam2kit.fusion import (
    ConsistencyParams,
    FusionParams,
    FusionResult,
    fuse,
    label_vs_rivals,
    sam_inputs_from_propagation,
)
from medsam2kit.predictor import PropagationResult, SAM2Predictor, Session
from medsam2kit.prompts import (PromptKind, SliceFilterConfig, SliceSelection, components_meeting, crop_selection,
                                select_slices, signed_distance, to_predictor_prompts)
from medsam2kit.roi import DEFAULT_ZOOM, Roi, check_zoom, mask_box, roi_around, roi_around_masks
from medsam2kit.sequencer import (FrameSequence, PercentileWindow, Window, WindowSpec, default_axis, display_ready,
                                  sequence_volume)
from medsam2kit.volume import Volume, check_same_grid

Propagation = Literal["joint", "separate"]
LabelPromptKind = Literal["mask", "box"]
Overlaps = Literal["nearest", "logit"]


@dataclass(frozen=True)
class PromptPrior:
    """The drawn masks' shapes as a prior on SAM2's logits near their slices
    (:func:`add_prompt_prior`; mask prompts only).

    On each slice where SAM2 sees a label (its object score is positive), the label's logit
    gains ``strength * exp(-d / reach_mm) * tanh(s / edge_mm)``: ``d`` the distance in mm along
    the slicing axis to the label's nearest prompt slice, ``s`` the signed in-plane distance in
    mm to the mask drawn there (positive inside). SAM2 still decides on which slices a label
    is; the drawing shapes it on its own slice and its near neighbours. The defaults were chosen
    on the validation cases (docs/reference_model.md): on the validation hippocampus and CT
    lesion, plain and adapted propagation gained 0.100 on their mean with a model that never
    trained on them.

    Attributes:
        strength: the prior's logit on the prompt slice, far inside the drawn mask (SAM2's mask
            logits run to about +-10-20).
        reach_mm: the distance along the slicing axis over which the prior falls by ``e``.
        edge_mm: the in-plane distance from the drawn outline over which it saturates.
    """

    strength: float = 8.0
    reach_mm: float = 2.0
    edge_mm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("strength", "reach_mm", "edge_mm"):
            check_positive(getattr(self, name), f"PromptPrior.{name}")

    def weight(self, distance_mm: float) -> float:
        """The prior's logit scale on a slice ``distance_mm`` from the drawn one."""
        return self.strength * math.exp(-distance_mm / self.reach_mm)

    def shape(self, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """``tanh(s / edge_mm)`` per pixel of a drawn 2D ``mask`` (bool, not empty), ``s`` the
        signed distance in mm (pixel ``spacing`` of the rows and columns) to the pixels of the
        other side, positive inside; +1 everywhere for a mask that fills its slice."""
        return np.tanh(signed_distance(mask, spacing) / self.edge_mm).astype(np.float32)


@dataclass(frozen=True)
class PromptPropagationConfig:
    """Settings of :func:`propagate_prompts` (the defaults are those of the scored tasks,
    :func:`medsam2kit.tasks.one_prompt_propagation`, chosen on the validation cases).

    Attributes:
        prompt: ``"mask"``: each drawn slice's mask is the prompt; ``"box"``: the box around it.
        zoom: SAM2 sees every slice cropped to a square of ``zoom`` times the box around all the
            prompts (:func:`medsam2kit.roi.roi_around_masks`; default
            :data:`medsam2kit.roi.DEFAULT_ZOOM`); nothing is labelled outside the crop. ``None``:
            whole slices.
        adapt: first fine-tune a copy of the model on the prompt masks
            (:func:`medsam2kit.adapt.adapt_predictor`; mask prompts only); ``None``: no adaptation.
        connected: keep, per label, only the parts of its mask connected in 3D (26-neighbourhood)
            to its prompt masks (mask prompts only; a box only bounds the object).
        overlaps: where several labels' logits are positive, ``"nearest"``: the label prompted
            on the nearest slice takes the voxel, the largest logit among equally near ones
            (:func:`label_map_nearest_prompt`); ``"logit"``: the largest logit. A label followed
            away from its prompt drifts onto a neighbouring structure that looks like it (the
            hippocampus' anterior and posterior parts), and there outscores the label prompted
            beside it; measured in docs/reference_model.md.
        prior: add each drawn mask's shape to its label's logits near its slice
            (:class:`PromptPrior`, :func:`add_prompt_prior`; mask prompts only); ``None``: SAM2's
            logits as they are.
        axis: the slicing axis (default: :func:`~medsam2kit.sequencer.default_axis` of the image).
        window: the intensity window of the frames (:mod:`medsam2kit.sequencer`); ``None``:
            display-ready uint8 passed through unchanged.
        mirror: SAM2 also propagates the frames mirrored left to right (the prompt masks
            mirrored), and its logits and object scores, mirrored back, are averaged with the
            first run's before the prior and the label map: every slice is encoded twice, and the
            result is mirror-equivariant (exactly, unless the zoomed crop's centred start falls
            half-way between two voxels and is rounded one way). Mask prompts only (on the validation volumes it
            raised mask propagation and lowered box propagation). For a model trained with
            horizontal flips, as SAM2's own checkpoints and the bundled ``reference-volumes``
            are: the commands turn it on with that model (docs/reference_model.md). A model
            trained without them (the bundled ``reference``) can lose an object in the mirrored
            run, and the average with it. Default ``False``: one run.

    These defaults are for volumes; :func:`default_propagation_config` gives a recording's.
    """

    prompt: LabelPromptKind = "mask"
    zoom: float | None = DEFAULT_ZOOM
    adapt: AdaptConfig | None = None
    connected: bool = True
    overlaps: Overlaps = "nearest"
    prior: PromptPrior | None = field(default_factory=PromptPrior)
    axis: int | None = None
    window: WindowSpec | None = field(default_factory=PercentileWindow)
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.prompt not in ("mask", "box"):
            raise InvalidInputError(f"prompt: expected 'mask' or 'box', got {self.prompt!r}")
        if self.overlaps not in ("nearest", "logit"):
            raise InvalidInputError(f"overlaps: expected 'nearest' or 'logit', got {self.overlaps!r}")
        if self.prior is not None and not isinstance(self.prior, PromptPrior):
            raise InvalidTypeError(f"prior: expected a PromptPrior or None, got {type(self.prior).__name__}")
        check_zoom(self.zoom)
        if self.adapt is not None and self.prompt != "mask":
            raise InvalidInputError("adapt: one-shot adaptation needs mask prompts (prompt='mask'), got prompt='box'")
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise InvalidInputError(f"axis: expected 0, 1, 2 or None, got {self.axis!r}")


def default_propagation_config(image: Volume) -> PromptPropagationConfig:
    """The defaults of :func:`propagate_prompts` for ``image``.

    A volume: :class:`PromptPropagationConfig` as it is (zoom 2, kept connected, overlaps to the
    nearest prompt, the drawn shapes as a prior near their slices, percentile window). A
    recording (``image.kind == "cine"``, frames in time): whole frames, the whole mask, overlaps
    to the largest logit, no prior (the nearest prompt and the prior were measured on volumes
    only, and a moving structure leaves its drawn shape), 8-bit frames as they are (:func:`~medsam2kit.sequencer.display_ready`: uint8, or
    float32 holding whole numbers 0..255, as a DICOM cine is read; as the bundled models were
    trained on recordings), other frames windowed by percentiles. Measured
    on the carotid recordings (docs/reference_model.md): a structure that moves leaves the crop
    around its first mask (validation tracking 0.61 on whole frames, 0.03-0.13 zoomed), and the
    masks of frames 10-30 frames apart need not touch, so keeping the parts connected to the
    prompt cut held-out tracking from 0.393 to 0.158.

    Example:
        >>> import numpy as np
        >>> cine = Volume(np.zeros((4, 8, 8), np.uint8), np.eye(4), kind="cine")
        >>> cfg = default_propagation_config(cine)
        >>> cfg.zoom, cfg.connected, cfg.overlaps, cfg.prior, cfg.window
        (None, False, 'logit', None, None)
        >>> default_propagation_config(cine.with_array(np.zeros((4, 8, 8)))).window
        Window(low=0.0, high=255.0)
        >>> default_propagation_config(cine.with_array(np.full((4, 8, 8), 0.5))).window
        PercentileWindow(lower=0.5, upper=99.5)
    """
    if image.kind != "cine":
        return PromptPropagationConfig()
    frames = np.asarray(image.array)
    window: WindowSpec | None = PercentileWindow()
    if display_ready(frames):  # 8-bit frames as they are (float32 from DICOM: the identity window)
        window = None if frames.dtype == np.uint8 else Window(0.0, 255.0)
    return PromptPropagationConfig(zoom=None, connected=False, overlaps="logit", prior=None, window=window)


@dataclass(frozen=True, eq=False)
class PromptPropagationResult:
    """What :func:`propagate_prompts` made.

    Attributes:
        labels: the label map on the image's grid and geometry.
        prompt_slices: per label, the slices (along ``axis``) it was prompted on.
        axis: the slicing axis.
        roi: the in-plane crop SAM2 saw (the whole grid without zoom).
        encoder_calls: image-encoder passes (once per slice of the crop at most).
        seconds: wall time per stage (``adapt`` when adapting, ``propagate``).
    """

    labels: Volume
    prompt_slices: Mapping[int, tuple[int, ...]]
    axis: int
    roi: Roi
    encoder_calls: int
    seconds: Mapping[str, float]


def label_map_nearest_prompt(logits: Mapping[int, Volume], prompt_slices: Mapping[int, Sequence[int]],
                             axis: int) -> np.ndarray:
    """Per voxel, among the labels whose logit is positive, the label prompted nearest to the
    voxel's slice along ``axis`` (a label's distance: to the nearest of its prompt slices); the
    largest logit among equally near labels; 0 where no logit is positive. With every label
    prompted on the same slices this is :func:`~medsam2kit.fewshot.label_map_from_logits`.

    Raises:
        InvalidInputError: no label, or a label of ``logits`` without a prompt slice.

    Example:
        >>> a = Volume(np.array([[[2.0]], [[3.0]], [[-1.0]]], np.float32), np.eye(4))
        >>> b = Volume(np.array([[[1.0]], [[5.0]], [[4.0]]], np.float32), np.eye(4))
        >>> label_map_nearest_prompt({1: a, 2: b}, {1: (0,), 2: (2,)}, axis=0).ravel().tolist()
        [1, 2, 2]
    """
    ids = sorted(logits)
    if not ids:
        raise InvalidInputError("logits: expected at least one label, got none")
    missing = [i for i in ids if not prompt_slices.get(i)]
    if missing:
        raise InvalidInputError(f"prompt_slices: expected at least one prompt slice per label, got none for {missing}")
    stack = np.moveaxis(np.stack([np.asarray(logits[i].array) for i in ids]), axis + 1, 1)  # (labels, slices, ...)
    out = np.zeros(stack.shape[1:], np.uint8 if max(ids) <= 255 else np.int32)
    prompts = [np.asarray(prompt_slices[i]) for i in ids]
    for z in range(stack.shape[1]):
        distance = np.array([np.abs(p - z).min() for p in prompts])
        free = np.ones(stack.shape[2:], dtype=bool)
        for d in np.unique(distance):  # nearest first; each group takes what it holds of the rest
            group = np.flatnonzero(distance == d)
            best = np.argmax(stack[group, z], axis=0)
            held = free & (np.take_along_axis(stack[group, z], best[None], axis=0)[0] > 0)
            out[z][held] = np.asarray(ids)[group][best][held]
            free &= ~held
    return np.moveaxis(out, 0, axis)


def add_prompt_prior(logits: Mapping[int, Volume], drawn: np.ndarray, seen: Mapping[int, np.ndarray], axis: int,
                     prior: PromptPrior) -> dict[int, Volume]:
    """Each label's logits plus its drawn masks' shape near their slices (:class:`PromptPrior`).

    On a slice ``z`` where ``seen[label][z]``, the label's logit gains
    ``prior.strength * exp(-d / prior.reach_mm) * tanh(s / prior.edge_mm)``: ``d`` the distance in
    mm (the volume's spacing along ``axis``) from ``z`` to the label's nearest drawn slice (the
    lower one of two equally near), ``s`` the signed in-plane distance in mm to the label's
    mask on that slice (positive inside: the distance to the nearest pixel outside it; negative
    outside: minus the distance to the nearest pixel inside). Other slices keep their logits.

    Args:
        logits: per label, its logits on the image's grid (one geometry).
        drawn: the drawn label map (``(D, H, W)``; a label's drawn slices are those holding it).
        seen: per label, bool ``(n,)`` over the slices along ``axis``: where SAM2 sees it.
        axis: the slicing axis.
        prior: the prior's strength and reach.

    Raises:
        InvalidInputError: a label of ``logits`` is not drawn or has no ``seen``.
        ShapeMismatchError: ``drawn`` or a ``seen`` does not match the logits' grid.

    Example:
        >>> lg = Volume(np.zeros((3, 1, 3), np.float32), np.eye(4))
        >>> drawn = np.zeros((3, 1, 3), np.uint8); drawn[0, 0, :2] = 1
        >>> out = add_prompt_prior({1: lg}, drawn, {1: np.array([True, True, False])}, 0, PromptPrior(8.0, 1.0, 1.0))
        >>> np.round(out[1].array[:, 0].astype(float), 2).tolist()  # slice 1: 1 mm away; 2: not seen
        [[7.71, 6.09, -6.09], [2.84, 2.24, -2.24], [0.0, 0.0, 0.0]]
    """
    for lab, vol in logits.items():
        if drawn.shape != vol.shape:
            raise ShapeMismatchError(f"drawn: expected the logits' shape {vol.shape}, got {drawn.shape}")
        if lab not in seen:
            raise InvalidInputError(f"seen: expected the slices where label {lab} is seen, got none")
        if np.shape(seen[lab]) != (vol.shape[axis],):
            raise ShapeMismatchError(f"seen[{lab}]: expected shape ({vol.shape[axis]},), got {np.shape(seen[lab])}")
    planes = np.moveaxis(drawn, axis, 0)
    out: dict[int, Volume] = {}
    for lab, vol in logits.items():
        spacing = vol.spacing
        in_plane = tuple(s for a, s in enumerate(spacing) if a != axis)
        prompts = [int(z) for z in np.flatnonzero((planes == lab).any(axis=(1, 2)))]
        if not prompts:
            raise InvalidInputError(f"drawn: expected label {lab} drawn on at least one slice, got none")
        shape = {p: prior.shape(planes[p] == lab, in_plane) for p in prompts}
        array = np.array(vol.array, dtype=np.float32)
        moved = np.moveaxis(array, axis, 0)
        for z in np.flatnonzero(np.asarray(seen[lab], dtype=bool)):
            p = min(prompts, key=lambda q: abs(q - z))
            moved[z] += np.float32(prior.weight(abs(z - p) * spacing[axis])) * shape[p]
        out[lab] = vol.with_array(array)
    return out


def propagate_prompts(predictor: SAM2Predictor, image: Volume, prompts: Volume,
                      config: PromptPropagationConfig | None = None, *,
                      progress: Callable[[int, int], None] | None = None) -> PromptPropagationResult:
    """Propagate label prompts drawn on a few slices through the whole volume.

    ``prompts`` is a label map on ``image``'s grid in which each label is drawn on one or more
    slices along the slicing axis (a reader's outline on a key slice; every slice holding the
    label is one prompt, so do not pass a finished 3D segmentation). Each label is one object
    of one SAM2 session (each slice encoded once), prompted on each of its slices by the drawn
    mask or the box around it, and propagated both ways; with mask prompts and ``config.mirror``
    a second session does the same on the mirrored slices and the two runs' logits are
    averaged. With mask prompts, each drawn mask's
    shape is then added to its label's logits on the slices near it where SAM2 sees the label
    (``config.prior``, :func:`add_prompt_prior`; a volume's default), so a drawn slice comes out
    close to the drawing. Each voxel takes, of the labels with a positive logit there, the one
    prompted nearest to its slice (``config.overlaps``, the volumes' default; or the largest
    logit).

    Args:
        predictor: the SAM2 predictor (left unchanged when adapting: a copy is fine-tuned).
        image: the volume (or cine) to segment.
        prompts: the drawn label map (non-negative integers, ``image``'s grid).
        config: :class:`PromptPropagationConfig` (default: :func:`default_propagation_config`
            of ``image``: for a volume mask prompts, zoom 2, connected).
        progress: called as ``progress(steps_done, steps)`` during the adaptation.

    Raises:
        ShapeMismatchError / GeometryError: ``prompts`` is not on ``image``'s grid.
        InvalidInputError: ``prompts`` holds no label, or negative or non-integer values.
        InvalidTypeError: ``image`` or ``prompts`` is not a :class:`~medsam2kit.volume.Volume`.

    Example:
        >>> import numpy as np
        >>> from medsam2kit.phantoms import ellipsoid_phantom
        >>> image, truth = ellipsoid_phantom((10, 48, 40), rng=0)
        >>> drawn = np.zeros(truth.shape, np.uint8); drawn[5] = truth.array[5]
        >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
        >>> out = propagate_prompts(pred, image, truth.with_array(drawn))
        >>> out.labels.shape == image.shape, dict(out.prompt_slices)
        (True, {1: (5,), 2: (5,)})
    """
    if not isinstance(image, Volume) or not isinstance(prompts, Volume):
        raise InvalidTypeError("image, prompts: expected medsam2kit Volumes "
                               f"(got {type(image).__name__}, {type(prompts).__name__})")
    cfg = config or default_propagation_config(image)
    check_same_grid(prompts, image, name="prompts")
    drawn = check_label_map(prompts.array, "prompts")
    labels = tuple(int(v) for v in np.unique(drawn) if v != 0)
    if not labels:
        raise InvalidInputError("prompts: expected a label map with at least one label drawn on a slice, got none")
    axis = cfg.axis if cfg.axis is not None else default_axis(image)
    others = tuple(a for a in range(3) if a != axis)
    slices = {lab: tuple(int(i) for i in np.flatnonzero((drawn == lab).any(axis=others))) for lab in labels}
    masks = {(lab, i): np.take(drawn, i, axis=axis) == lab for lab in labels for i in slices[lab]}
    roi = roi_around_masks(list(masks.values()), image.shape, axis=axis, zoom=cfg.zoom)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    seq = sequence_volume(roi.crop_volume(image), axis=axis, image_size=predictor.image_size, window=cfg.window)
    crops = {key: roi.crop_slice(m) for key, m in masks.items()}
    frames = {key: (seq.frame_of_slice(key[1]), seq.mask_to_frame(crop)) for key, crop in crops.items()}
    tracker = predictor
    if cfg.adapt is not None:
        tracker = adapt_predictor(predictor, seq, list(frames.values()), cfg.adapt, progress=progress)
        seconds["adapt"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    session = tracker.start(seq)
    for (lab, i), (frame, mask) in frames.items():
        if cfg.prompt == "mask":
            session.add_mask(frame, mask, obj_id=lab)
        else:
            session.add_box(frame, seq.boxes_to_frame(mask_box(crops[lab, i])), obj_id=lab)
    result = session.propagate("both")
    frame_logits, scores, encoder_calls = result.logits(), result.object_scores, session.encoder_calls
    if cfg.mirror and cfg.prompt == "mask":
        twin = tracker.start(replace(seq, frames=seq.frames.flip(-1)))
        for (lab, _), (frame, mask) in frames.items():
            twin.add_mask(frame, mask.flip(-1), obj_id=lab)
        other = twin.propagate("both")
        frame_logits = (frame_logits + other.logits().flip(-1)) / 2
        scores = (scores + other.object_scores) / 2
        encoder_calls += twin.encoder_calls
    logits = {lab: image.with_array(roi.paste(seq.to_volume_logits(frame_logits[:, k].numpy()).array, fill=-np.inf))
              for k, lab in enumerate(result.obj_ids)}
    if cfg.prior is not None and cfg.prompt == "mask":
        seen = {lab: np.zeros(image.shape[axis], dtype=bool) for lab in result.obj_ids}
        for k, lab in enumerate(result.obj_ids):
            seen[lab][list(seq.slice_indices)] = (scores[:, k] > 0).numpy()  # NaN (not visited): False
        logits = add_prompt_prior(logits, drawn, seen, axis, cfg.prior)
    label_map = (label_map_nearest_prompt(logits, slices, axis) if cfg.overlaps == "nearest"
                 else label_map_from_logits(logits, image.shape))
    if cfg.connected and cfg.prompt == "mask":
        inside = label_map[roi.index]  # a view: nothing is labelled outside the crop
        for lab in labels:
            seed = np.zeros(inside.shape, dtype=bool)
            for i in slices[lab]:
                np.moveaxis(seed, axis, 0)[i] = crops[lab, i]
            mine = inside == lab
            inside[mine & ~components_meeting(mine, seed)] = 0
    seconds["propagate"] = time.perf_counter() - t0
    return PromptPropagationResult(image.with_array(label_map), slices, axis, roi, encoder_calls, seconds)


@dataclass(frozen=True)
class SAM2Med3DConfig:
    """Settings of the SAM2Med3D pipeline.

    Attributes:
        slice_filter: how reliable slices are scored and chosen (top-K, minimum gap, ...).
        prompt_kind: ``"mask"``, ``"box"``, ``"box+point"`` or ``"point"`` prompts from the chosen slices.
        propagation: ``"joint"``: all prompts of a label in one propagation (sam2 attends to
            every prompted slice); ``"separate"``: each prompt slice propagated on its own in
            both directions, and each slice takes the run from its nearest prompt slice (the
            features are encoded once for all runs).
        fusion: parameters of the confidence-driven fusion weight.
        consistency: the volumetric post-processing (largest component, small components, holes).
        window: intensity window of the frames (see :mod:`medsam2kit.sequencer`).
        axis: slicing axis (default: :func:`~medsam2kit.sequencer.default_axis` of the volume).
        zoom: SAM2 runs on the slices cropped to a square of ``zoom`` times the in-plane box of
            the coarse foreground (all labels, all slices; :func:`medsam2kit.roi.roi_around`);
            ``None``: whole slices.
    """

    slice_filter: SliceFilterConfig = field(default_factory=SliceFilterConfig)
    prompt_kind: PromptKind = "mask"
    propagation: Propagation = "joint"
    fusion: FusionParams = field(default_factory=FusionParams)
    consistency: ConsistencyParams = field(default_factory=ConsistencyParams)
    window: WindowSpec = field(default_factory=PercentileWindow)
    axis: int | None = None
    zoom: float | None = None

    def __post_init__(self) -> None:
        check_zoom(self.zoom)
        if self.propagation not in ("joint", "separate"):
            raise InvalidInputError(f"propagation: expected 'joint' or 'separate', got {self.propagation!r}")
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise InvalidInputError(f"axis: expected 0, 1, 2 or None, got {self.axis!r}")


@dataclass(frozen=True, eq=False)
class LabelOutcome:
    """What happened for one label: the chosen slices (on the volume's grid), SAM2's propagation
    (over the frames SAM2 saw: those of the zoomed crop when :attr:`SAM2Med3DConfig.zoom` is set)
    and the fusion (on the volume's grid)."""

    label: int
    selection: SliceSelection
    propagation: PropagationResult | None
    fusion: FusionResult


@dataclass(frozen=True, eq=False)
class SAM2Med3DResult:
    """The segmentation of one volume.

    Attributes:
        labels: label map on the input's grid and geometry.
        coarse: float32 ``(L + 1, D, H, W)`` coarse probabilities.
        outcomes: per label, a :class:`LabelOutcome`.
        seconds: wall time per stage (``coarse``, ``select``, ``propagate``, ``fuse``).
        encoder_calls: image-encoder passes (once per slice at most, whatever the prompts).
        encoder_seconds: time spent inside the image encoder.
    """

    labels: Volume
    coarse: np.ndarray = field(repr=False)
    outcomes: Mapping[int, LabelOutcome]
    seconds: Mapping[str, float]
    encoder_calls: int
    encoder_seconds: float


class SAM2Med3DPipeline:
    """SAM2Med3D: a coarse 3D segmentation refined by SAM2 from its most reliable slices.

    Args:
        coarse: a :class:`~medsam2kit.coarse.CoarseModel` (e.g. a fitted
            :class:`~medsam2kit.coarse.CoarseSegmenter`, or any ``volume -> (L+1, D, H, W)``
            probability callable).
        predictor: the SAM2 predictor.
        config: :class:`SAM2Med3DConfig`.
    """

    def __init__(self, coarse: CoarseModel, predictor: SAM2Predictor, config: SAM2Med3DConfig | None = None) -> None:
        if not callable(coarse):
            raise InvalidTypeError(f"coarse: expected a callable volume -> probabilities, got {type(coarse).__name__}")
        if not isinstance(predictor, SAM2Predictor):
            raise InvalidTypeError(f"predictor: expected a SAM2Predictor, got {type(predictor).__name__}")
        self.coarse = coarse
        self.predictor = predictor
        self.config = config or SAM2Med3DConfig()

    def __call__(self, volume: Volume) -> Volume:
        """The label map of ``volume`` (see :meth:`run` for everything else)."""
        return self.run(volume).labels

    def run(self, volume: Volume) -> SAM2Med3DResult:
        """Coarse -> select -> propagate -> fuse on one volume.

        Prompt slices are chosen on each label's coarse probability itself (a prompt needs a
        confident coarse mask, ``p > 0.5``). For the fusion, the coarse output is turned into one
        probability per label, the probability that the label beats its strongest rival class
        (:func:`~medsam2kit.fusion.label_vs_rivals`; its 0.5 threshold is the coarse argmax, so
        a label that wins with ``p < 0.5`` among several classes is not lost where SAM2 says
        nothing). Each label is fused on its own (a label with no reliable slice keeps that
        probability as the fusion's only source); SAM2's weight on a slice rests on its evidence
        (:func:`~medsam2kit.fusion.sam_evidence`: agreement with the voxels that probability is
        sure of, the prompt slices left out of the volume term since SAM2 echoes its mask prompts
        there), so an uninformative SAM2 leaves the coarse result. The label map then gives each
        voxel the label of highest fused probability among the labels whose fused mask holds it,
        background where none does.
        """
        if not isinstance(volume, Volume):
            raise InvalidTypeError(f"volume: expected a medsam2kit Volume, got {type(volume).__name__}")
        cfg = self.config
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        prob = _check_coarse(self.coarse(volume), volume.shape)
        seconds["coarse"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        axis = cfg.axis if cfg.axis is not None else default_axis(volume)
        per_label = label_vs_rivals(prob)
        selections = {
            lab: select_slices(prob[lab], spacing=volume.spacing, axis=axis, config=cfg.slice_filter, label=lab)
            for lab in range(1, prob.shape[0])
        }
        seconds["select"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        # the zoom's crop holds the coarse foreground and every prompt
        footprint = (np.argmax(prob, axis=0) != 0).any(axis=axis)
        for sel in selections.values():
            for p in sel.prompts:
                footprint |= p.mask
        roi = (roi_around(footprint, volume.shape, axis=axis, factor=cfg.zoom)
               if cfg.zoom is not None and footprint.any() else Roi.whole(volume.shape, axis))
        seq = sequence_volume(roi.crop_volume(volume), axis=axis, image_size=self.predictor.image_size,
                              window=cfg.window)
        session = self.predictor.start(seq)
        propagations = self._propagate(session, seq, {lab: crop_selection(sel, roi) for lab, sel in selections.items()})
        seconds["propagate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        outcomes: dict[int, LabelOutcome] = {}
        for lab, sel in selections.items():
            result = propagations.get(lab)
            sam_crop, scores, ious = _sam_inputs(result, seq, lab)
            sam_prob = roi.paste(sam_crop, fill=0.0)
            fused = fuse(per_label[lab - 1], sam_prob, scores, ious, prompt_slices=list(sel.indices) or None, axis=axis,
                         spacing=volume.spacing, params=cfg.fusion, consistency=cfg.consistency)
            outcomes[lab] = LabelOutcome(lab, sel, result, fused)
        labels = _label_map({lab: o.fusion for lab, o in outcomes.items()}, volume.shape)
        seconds["fuse"] = time.perf_counter() - t0
        return SAM2Med3DResult(
            labels=volume.with_array(labels),
            coarse=prob,
            outcomes=outcomes,
            seconds=seconds,
            encoder_calls=session.encoder_calls,
            encoder_seconds=session.cache.stats.encoder_seconds,
        )

    def _propagate(
        self, session: Session, seq: FrameSequence, selections: Mapping[int, SliceSelection]
    ) -> dict[int, PropagationResult]:
        kind = self.config.prompt_kind
        prompts = {lab: to_predictor_prompts(sel, seq, kind=kind, obj_id=lab) for lab, sel in selections.items()}
        prompts = {lab: p for lab, p in prompts.items() if p}
        if not prompts:
            return {}
        if self.config.propagation == "joint":
            for plist in prompts.values():
                for p in plist:
                    session.add(p)
            result = session.propagate("both")
            return dict.fromkeys(prompts, result)
        # every prompt slice of every label its own track, all tracks advancing as one batch
        tracks = [p for plist in prompts.values() for p in plist]
        results = iter(session.propagate_separately(tracks))
        return {lab: _nearest_prompt_merge([(p.frame, next(results)) for p in plist]) for lab, plist in prompts.items()}


def _nearest_prompt_merge(runs: list[tuple[int, PropagationResult]]) -> PropagationResult:
    """One result per frame: from the run whose prompt frame is nearest (ties: the earlier prompt)."""
    first = runs[0][1]
    frames = np.array([f for f, _ in runs])
    t = np.arange(first.visited.shape[0])
    nearest = np.argmin(np.abs(t[:, None] - frames[None, :]), axis=1)
    pick = {name: getattr(first, name).clone() for name in ("low_res_logits", "object_scores", "ious", "visited")}
    for i, (_, run) in enumerate(runs):
        rows = np.flatnonzero(nearest == i)
        for name in pick:
            pick[name][rows] = getattr(run, name)[rows]
    return PropagationResult(obj_ids=first.obj_ids, image_size=first.image_size, **pick)


def _sam_inputs(
    result: PropagationResult | None, seq: FrameSequence, label: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAM2's probability and per-slice scores of ``label`` for :func:`fuse`. Without a
    propagation (no reliable slice) SAM2 visited no slice: NaN scores, so the fusion gives SAM2
    weight 0 and the coarse probability is its only source (probability and mask both from it)."""
    if result is None:
        shape, n = seq.geometry.shape, seq.layout.num_slices
        return np.zeros(shape, np.float32), np.full(n, np.nan), np.full(n, np.nan)
    sam = sam_inputs_from_propagation(result, seq, obj_index=result.obj_ids.index(label))
    return sam.probability, sam.object_scores, sam.ious


def _check_coarse(prob: object, shape: tuple[int, int, int]) -> np.ndarray:
    arr = np.asarray(prob, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != shape or arr.shape[0] < 2:
        raise ShapeMismatchError(
            f"coarse(volume): expected probabilities (L + 1, {', '.join(map(str, shape))}) with L >= 1, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise InvalidInputError("coarse(volume): expected finite probabilities in [0, 1]")
    return arr


def _label_map(fusions: Mapping[int, FusionResult], shape: tuple[int, int, int]) -> np.ndarray:
    """The one exclusive rule: per voxel the label of highest fused probability among the labels
    whose fused mask holds it; background where no label's mask does. So every voxel of label
    ``l`` lies in ``l``'s :attr:`FusionResult.mask` (and thus in its union)."""
    if not fusions:
        return np.zeros(shape, np.uint8)
    ids = sorted(fusions)
    prob = np.stack([np.where(fusions[i].mask, fusions[i].probability, -1.0) for i in ids])
    best = np.argmax(prob, axis=0)
    inside = np.take_along_axis(prob, best[None], axis=0)[0] >= 0
    dtype = np.uint8 if max(ids) <= 255 else np.int32
    return np.where(inside, np.asarray(ids)[best], 0).astype(dtype)


__all__ = [
    "FewShotPipeline",
    "LabelOutcome",
    "PromptPrior",
    "PromptPropagationConfig",
    "PromptPropagationResult",
    "SAM2Med3DConfig",
    "SAM2Med3DPipeline",
    "SAM2Med3DResult",
    "add_prompt_prior",
    "default_propagation_config",
    "label_map_nearest_prompt",
    "propagate_prompts",
]
