"""The scored prompt tasks of the demo and of the model card, each beside its simple baseline.

* :func:`one_prompt_propagation`: a volume, each label prompted on one slice (its largest) by its
  true mask or by the box around it, propagated both ways. Baseline: the prompt slice's true
  mask copied onto every slice that holds the label (an oracle of the label's extent, which the
  propagation has to find itself).
* :func:`track_recording`: a video (an ultrasound recording), the first labelled frame's mask
  as the prompt, propagated forward. Baseline: that mask copied onto every later frame.
* :func:`box_prompt_image`: one image, the box around the true mask as the prompt. Baseline:
  the filled box.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.fewshot import label_map_from_logits
from medsam2kit.metrics import dice, j_and_f
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.sequencer import PercentileWindow, sequence_frames, sequence_volume
from medsam2kit.volume import Volume, check_same_grid

PromptKind = Literal["mask", "box"]


@dataclass(frozen=True)
class Propagated:
    """What :func:`one_prompt_propagation` made.

    Attributes:
        labels: the label map on the image's grid.
        prompt_slices: per label, the slice (along ``axis``) whose true mask (or its box) was the prompt.
        axis: the slicing axis.
        baseline: per label, the prompt slice's true mask on every slice holding the label.
    """

    labels: np.ndarray = field(repr=False)
    prompt_slices: Mapping[int, int]
    axis: int
    baseline: Mapping[int, np.ndarray] = field(repr=False)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The box ``(x0, y0, x1, y1)`` (column, row of the extreme foreground pixels) of a 2D mask.

    Raises:
        InvalidInputError: the mask is empty.

    Example:
        >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
        >>> mask_box(m).tolist()
        [2.0, 1.0, 4.0, 2.0]
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise InvalidInputError("mask: expected some foreground to draw a box around, got an empty mask")
    return np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)


def filled_box(mask: np.ndarray) -> np.ndarray:
    """The filled box of :func:`mask_box` (the box prompt's own baseline).

    Example:
        >>> m = np.zeros((4, 4), bool); m[1, 1] = m[2, 3] = True
        >>> int(filled_box(m).sum())
        6
    """
    x0, y0, x1, y1 = mask_box(mask).astype(int)
    out = np.zeros(mask.shape, dtype=bool)
    out[y0:y1 + 1, x0:x1 + 1] = True
    return out


def one_prompt_propagation(predictor: SAM2Predictor, image: Volume, label: Volume,
                           labels: Sequence[int] | None = None, *, prompt: PromptKind = "mask") -> Propagated:
    """Prompt each label on its largest slice (its true mask, or the box around it) and propagate
    both ways.

    All labels are objects of one session (each slice is encoded once); the label map takes per
    voxel the label of the largest positive logit.

    Raises:
        ShapeMismatchError / GeometryError: ``label`` is not on ``image``'s grid.
        InvalidInputError: a label is absent, or ``prompt`` is unknown.
    """
    if prompt not in ("mask", "box"):
        raise InvalidInputError(f"prompt: expected 'mask' or 'box', got {prompt!r}")
    check_same_grid(label, image)
    present = tuple(int(v) for v in np.unique(label.array) if v != 0)
    wanted = present if labels is None else tuple(int(v) for v in labels)
    seq = sequence_volume(image, image_size=predictor.image_size)
    axis = seq.layout.axis
    others = tuple(a for a in range(3) if a != axis)
    session = predictor.start(seq)
    prompts: dict[int, int] = {}
    baseline: dict[int, np.ndarray] = {}
    for lab in wanted:
        mask = np.asarray(label.array) == lab
        areas = mask.sum(axis=others)
        if not areas.any():
            raise InvalidInputError(f"labels: label {lab} is absent from the label map")
        prompts[lab] = int(np.argmax(areas))
        slice_mask = np.take(mask, prompts[lab], axis=axis)
        frame = seq.frame_of_slice(prompts[lab])
        if prompt == "mask":
            session.add_mask(frame, seq.mask_to_frame(slice_mask), obj_id=lab)
        else:
            session.add_box(frame, seq.boxes_to_frame(mask_box(slice_mask)), obj_id=lab)
        holds = np.expand_dims(areas > 0, others)
        baseline[lab] = np.expand_dims(slice_mask, axis) & holds
    result = session.propagate("both")
    logits = {lab: seq.to_volume_logits(result.logits()[:, k].numpy()) for k, lab in enumerate(result.obj_ids)}
    return Propagated(label_map_from_logits(logits, image.shape), prompts, axis, baseline)


@dataclass(frozen=True)
class RecordingScores:
    """:func:`track_recording`'s scores over the frames after the prompt.

    Attributes:
        prompt_frame: the first frame with foreground (the prompt).
        dice, jf: of the propagation (Dice over all later frames together; DAVIS J&F).
        copy_dice, copy_jf: of the baseline (the prompt mask on every later frame).
        masks: the predicted ``(T, H, W)`` masks (the prompt frame included).
    """

    prompt_frame: int
    dice: float
    jf: float
    copy_dice: float
    copy_jf: float
    masks: np.ndarray = field(repr=False)


def track_recording(predictor: SAM2Predictor, frames: np.ndarray, masks: np.ndarray) -> RecordingScores:
    """Prompt a recording's first labelled frame with its true mask, propagate forward, score.

    Args:
        frames: ``(T, H, W)`` frames (uint8 kept, other types windowed by percentiles).
        masks: ``(T, H, W)`` true masks (non-zero = foreground), some foreground somewhere.

    Raises:
        ShapeMismatchError: ``frames`` and ``masks`` differ in shape.
        InvalidInputError: no frame has foreground, or fewer than two frames from the first one.
    """
    if frames.shape != masks.shape or frames.ndim != 3:
        raise ShapeMismatchError(f"frames, masks: expected the same (T, H, W) shape, got {frames.shape}, {masks.shape}")
    truth = np.asarray(masks) != 0
    labelled = np.flatnonzero(truth.reshape(len(truth), -1).any(1))
    if labelled.size == 0 or labelled[0] >= len(truth) - 1:
        raise InvalidInputError("masks: expected foreground on a frame followed by at least one other frame")
    first = int(labelled[0])
    seq = sequence_frames(frames, image_size=predictor.image_size, window=_window(frames))
    session = predictor.start(seq)
    session.add_mask(first, seq.mask_to_frame(truth[first]))
    result = session.propagate("forward")
    pred = np.asarray(seq.to_volume_mask(result.logits()[:, 0].numpy()).array, dtype=bool)
    later, ref = pred[first + 1:], truth[first + 1:]
    copied = np.broadcast_to(truth[first], ref.shape)
    return RecordingScores(first, dice(later, ref), j_and_f(later, ref).jf_mean, dice(copied, ref),
                           j_and_f(copied, ref).jf_mean, pred)


def box_prompt_image(predictor: SAM2Predictor, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask SAM2 gives for the box around ``mask`` on a 2D ``image`` (bool, ``image``'s shape).

    Raises:
        ShapeMismatchError: ``image`` and ``mask`` differ in shape or are not 2D.
        InvalidInputError: ``mask`` is empty.
    """
    if image.shape != mask.shape or image.ndim != 2:
        raise ShapeMismatchError(f"image, mask: expected the same (H, W) shape, got {image.shape}, {mask.shape}")
    seq = sequence_frames(image[None], image_size=predictor.image_size, window=_window(image))
    session = predictor.start(seq)
    session.add_box(0, seq.boxes_to_frame(mask_box(np.asarray(mask) != 0)))
    result = session.propagate("forward")
    return np.asarray(seq.to_volume_mask(result.logits()[:, 0].numpy()).array[0], dtype=bool)


def _window(frames: np.ndarray) -> PercentileWindow | None:
    return None if frames.dtype == np.uint8 else PercentileWindow()


__all__ = ["PromptKind", "Propagated", "RecordingScores", "box_prompt_image", "filled_box", "mask_box",
           "one_prompt_propagation", "track_recording"]
