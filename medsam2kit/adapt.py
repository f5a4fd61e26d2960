"""One-shot adaptation: fine-tune a copy of the model on the prompt masks before propagating.

A mask prompt tells more than where the object is on its slice: it shows what the object looks
like in *this* scan. SAM2 uses that only through its memory. One-shot video object segmentation
(OSVOS, Caelles et al. 2017) also fine-tunes the network on the annotated frame before
segmenting the others; :func:`adapt_predictor` does that for SAM2. Each prompted frame and its
mask become short clips moving along a smooth random rotation, scale and shift
(:func:`medsam2kit.train.selfsup.moving_clip`); a copy of the model is trained on them as SAM2
trains (mask prompt on the first frame, the object tracked through the others, SAM2's loss,
:mod:`medsam2kit.train`), the image encoder frozen. Nothing but the prompts and the frames is
used: no label beyond the prompt, no other case.

Measured with the micro reference model (``docs/reference_model.md``): one-prompt propagation
through the held-out volumes rises from Dice 0.39 to 0.61 (hippocampus), 0.34 to 0.55
(prostate), 0.44 to 0.79 (CT lesions) and 0.38 to 0.77 (brain tumour); on the validation
carotid recordings (frames far apart, the artery moving) tracking got worse, so only the volume
task offers it, as an option (thin moving phantom tubes lose too). It costs ``steps`` training
steps: about 0.19 s each for the micro model on one CPU thread with one or two prompts, 38 s for
the default 200 (``benchmarks/bench_adapt.py``). :func:`adapt_to_supports` does the same on
labelled volumes, FATE-SAM's supports (held-out hippocampus 0.12 -> 0.24).

Example:
    >>> import numpy as np, torch
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> from medsam2kit.sequencer import sequence_frames
    >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    >>> seq = sequence_frames(np.zeros((3, 64, 64), np.uint8), image_size=pred.image_size, window=None)
    >>> mask = torch.zeros(pred.image_size, pred.image_size, dtype=torch.bool); mask[40:80, 40:80] = True
    >>> adapted = adapt_predictor(pred, seq, [(1, mask)], AdaptConfig(steps=2))
    >>> adapted is not pred and adapted.model is not pred.model
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medsam2kit._validate import check_int
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.sequencer import FrameSequence, default_axis, sequence_volume
from medsam2kit.volume import Volume, check_same_grid


@dataclass(frozen=True)
class AdaptConfig:
    """How :func:`adapt_predictor` fine-tunes (defaults chosen on the validation cases).

    Attributes:
        steps: optimiser steps (each: one clip per prompt, at least two clips and at most
            ``max_clips``).
        lr: AdamW learning rate (no weight decay, no schedule; gradients clipped at norm 1).
        clip_length: frames per clip (the prompted frame first); at least 2.
        max_shift: the clips' translation bound, a fraction of the frame side
            (:func:`~medsam2kit.train.selfsup.moving_clip`).
        max_angle: their rotation bound in degrees.
        max_scale: their scale bound (``1 +- max_scale``).
        seed: seed of the clips' motion and of dropout.
        max_clips: clips per step at most: with more prompts each step takes a random choice
            of them (with fewer, all of them every step).
    """

    steps: int = 200
    lr: float = 3e-4
    clip_length: int = 4
    max_shift: float = 0.2
    max_angle: float = 30.0
    max_scale: float = 0.2
    seed: int = 0
    max_clips: int = 4

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", minimum=1)
        check_int(self.clip_length, "clip_length", minimum=2)
        check_int(self.max_clips, "max_clips", minimum=2)
        if not self.lr > 0:
            raise InvalidInputError(f"lr: expected a learning rate > 0, got {self.lr}")
        for name in ("max_shift", "max_angle", "max_scale"):
            if not getattr(self, name) >= 0:
                raise InvalidInputError(f"{name}: expected a bound >= 0, got {getattr(self, name)}")


def adapt_predictor(predictor: SAM2Predictor, frames: FrameSequence, prompts: Sequence[tuple[int, torch.Tensor]],
                    config: AdaptConfig | None = None, *,
                    progress: Callable[[int, int], None] | None = None) -> SAM2Predictor:
    """A new predictor whose model is a copy of ``predictor``'s fine-tuned on the prompt masks.

    Args:
        predictor: the model to start from (left unchanged).
        frames: the sequence the prompts are on (:func:`~medsam2kit.sequencer.sequence_volume`
            or :func:`~medsam2kit.sequencer.sequence_frames`); colour frames are adapted on
            their grey mean.
        prompts: ``(frame index, mask)`` pairs, each mask a bool ``(S, S)`` tensor on the
            model's frame grid (e.g. from ``frames.mask_to_frame``) holding one object.
        config: the fine-tuning settings (default :class:`AdaptConfig`).
        progress: called as ``progress(steps_done, steps)`` after each step.

    Returns:
        A :class:`~medsam2kit.predictor.SAM2Predictor` on the same device with the same
        settings, except that it has no feature store (its features are not the original
        model's).

    Raises:
        InvalidInputError: no prompt, a frame index outside ``frames``, or an empty mask.
        ShapeMismatchError: a mask is not ``(S, S)`` with ``S`` the model's input size.
    """
    size = predictor.image_size
    if not prompts:
        raise InvalidInputError("prompts: expected at least one (frame, mask) pair to adapt to")
    grey = frames.grey_frames
    items = []
    for frame, mask in prompts:
        if not 0 <= int(frame) < len(frames):
            raise InvalidInputError(f"prompts: frame {frame} is outside the sequence's {len(frames)} frames")
        m = torch.as_tensor(mask).bool().cpu()
        if tuple(m.shape) != (size, size):
            raise ShapeMismatchError(f"prompts: expected ({size}, {size}) masks on the model's grid, got {tuple(m.shape)}")
        if not bool(m.any()):
            raise InvalidInputError(f"prompts: the mask on frame {frame} is empty")
        items.append((grey[int(frame)], m, f"prompt@{int(frame)}"))
    return _fine_tune(predictor, items, config or AdaptConfig(), progress)


def adapt_to_supports(predictor: SAM2Predictor, supports: Sequence[tuple[Volume, Volume]],
                      config: AdaptConfig | None = None, *, slices_per_label: int = 3,
                      progress: Callable[[int, int], None] | None = None) -> SAM2Predictor:
    """A copy of ``predictor``'s model fine-tuned on labelled volumes (few-shot supports), as
    :func:`adapt_predictor` on prompts: each label of each support gives ``slices_per_label``
    slices (at even quantiles of the slices holding it, along the support's
    :func:`~medsam2kit.sequencer.default_axis`), each with its mask a clip source;
    ``progress(steps_done, steps)`` after each step.

    FATE-SAM segments a query from the supports' memories alone
    (:class:`~medsam2kit.fewshot.FewShotPipeline` with ``adapt``): a model adapted to how the
    supports' structures look follows them into the query far better (validation hippocampus,
    selection model, labels 1 / 2: Dice 0.352 / 0.125 -> 0.360 / 0.356 and 0.476 / 0.224 with
    seeds 0 and 1).

    Raises:
        InvalidInputError: no support, a support without any label, or ``slices_per_label < 1``.
        ShapeMismatchError / GeometryError: a label map is not on its image's grid.
    """
    check_int(slices_per_label, "slices_per_label", minimum=1)
    if not supports:
        raise InvalidInputError("supports: expected at least one (image, label) pair to adapt to")
    items = []
    for n, (image, label) in enumerate(supports):
        check_same_grid(label, image)
        axis = default_axis(image)
        seq = sequence_volume(image, axis=axis, image_size=predictor.image_size)
        grey = seq.grey_frames
        arr = np.moveaxis(np.asarray(label.array), axis, 0)
        values = [int(v) for v in np.unique(arr) if v != 0]
        if not values:
            raise InvalidInputError(f"supports: support {n} has no labelled voxel")
        for value in values:
            holding = np.flatnonzero((arr == value).reshape(len(arr), -1).any(1))
            picks = sorted({int(holding[int(q * (len(holding) - 1))])
                            for q in np.arange(1, slices_per_label + 1) / (slices_per_label + 1)})
            for z in picks:
                items.append((grey[seq.frame_of_slice(z)], seq.mask_to_frame(arr[z] == value).bool().cpu(),
                              f"support{n}[label {value}]@{z}"))
    return _fine_tune(predictor, items, config or AdaptConfig(), progress)


def _fine_tune(predictor: SAM2Predictor, prompts: Sequence[tuple[torch.Tensor, torch.Tensor, str]],
               cfg: AdaptConfig, progress: Callable[[int, int], None] | None = None) -> SAM2Predictor:
    """The fine-tuning of :func:`adapt_predictor` on ``(uint8 frame, bool mask, name)`` sources."""
    from medsam2kit.train.data import Clip, collate
    from medsam2kit.train.forward import forward_clips
    from medsam2kit.train.loop import prepare_model
    from medsam2kit.train.loss import MultiStepLoss
    from medsam2kit.train.prompts import PromptPlan
    from medsam2kit.train.selfsup import moving_clip

    items = list(prompts) * (2 if len(prompts) == 1 else 1)
    model = copy.deepcopy(predictor.model)
    prepare_model(model, freeze_image_encoder=True)
    loss_of = MultiStepLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    device = predictor.policy.device
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)  # dropout
        for step in range(cfg.steps):
            chosen = (items if len(items) <= cfg.max_clips
                      else [items[int(i)] for i in torch.randperm(len(items), generator=generator)[:cfg.max_clips]])
            clips = [Clip(*moving_clip(frame, m[None], cfg.clip_length, generator=generator, max_shift=cfg.max_shift,
                                       max_angle=cfg.max_angle, max_scale=cfg.max_scale),
                          seed=cfg.seed * 1_000_003 + step * len(items) + k, source=name)
                     for k, (frame, m, name) in enumerate(chosen)]
            batch = collate(clips).to(device)
            with predictor.policy.autocast():
                tracked = forward_clips(model, batch, PromptPlan.first_frame_mask(), encoder_grad=False)
                # this process's objects only: a caller inside torchrun must not all-reduce here
                loss = loss_of(tracked, batch.masks, num_objects=float(batch.masks.shape[1]))["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if progress is not None:
                progress(step + 1, cfg.steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # the copy keeps the on-disk feature store: its entries are keyed by the image encoder's
    # weights (frozen here), so they stay valid, and a trained encoder would simply miss them
    return SAM2Predictor(model, cache_budget_mb=predictor.cache_budget_bytes / 2**20, cache_dtype=predictor.cache_dtype,
                         fill_hole_area=predictor.fill_hole_area, encode_batch_size=predictor.encode_batch_size,
                         max_objects_per_batch=predictor.max_objects_per_batch, feature_store=predictor.feature_store)


__all__ = ["AdaptConfig", "adapt_predictor", "adapt_to_supports"]
