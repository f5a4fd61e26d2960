"""Prompt simulation as SAM2 trains: masks, noisy boxes, or points with correction clicks.

What SAM2's ``SAM2Train`` does (``training/model/sam2.py``), rewritten with explicit randomness:

* Per step, one :class:`PromptPlan` for the whole batch (as in SAM2: the mask path and the
  SAM-head path cannot be mixed in one batched call): the prompt kind, the conditioning frames
  (frame 0 plus random others) and the frames that receive correction clicks.
* Per object: the initial click (uniform in the mask), the box noise and every correction click
  (uniform in the current error region, positive in a false-negative pixel, negative in a
  false-positive one) come from the object's own seed, so the same object gets the same prompts
  on one process or many.

Coordinates are SAM2's: ``(x, y)`` pixels of the model input; labels 1 positive, 0 negative,
2/3 box corners.

Example:
    >>> import torch
    >>> from medsam2kit.train.prompts import box_prompt, click_prompt
    >>> gt = torch.zeros(1, 32, 32, dtype=torch.bool); gt[0, 8:16, 4:20] = True
    >>> box_prompt(gt, seeds=[0], noise=0.0)[0].tolist()
    [[[4.0, 8.0], [19.0, 15.0]]]
    >>> pts, lab = click_prompt(gt, None, seeds=[0], salt=(0,))
    >>> bool(gt[0, int(pts[0, 0, 1]), int(pts[0, 0, 0])]), lab.tolist()
    (True, [[1]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from medsam2kit._validate import check_rng
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.train.config import PromptConfig
from medsam2kit.train.data import derive_seed

PromptKind = Literal["mask", "box", "point"]


@dataclass(frozen=True)
class PromptPlan:
    """The prompts of one step.

    Attributes:
        kind: ``"mask"``, ``"box"`` or ``"point"`` on the conditioning frames.
        init_cond_frames: the prompted (conditioning) frames, frame 0 first.
        frames_to_correct: frames that receive correction clicks (empty for mask prompts).
        correction_clicks: clicks per corrected frame.
        add_corrected_as_cond: corrected frames become conditioning frames.
    """

    kind: PromptKind
    init_cond_frames: tuple[int, ...]
    frames_to_correct: tuple[int, ...] = ()
    correction_clicks: int = 0
    add_corrected_as_cond: bool = False

    @staticmethod
    def first_frame_mask() -> PromptPlan:
        """The evaluation plan: the true mask on frame 0, no clicks."""
        return PromptPlan("mask", (0,))


def draw_plan(config: PromptConfig, num_frames: int, rng: np.random.Generator | int | None = None) -> PromptPlan:
    """Draw the prompts of one training step (SAM2's ``prepare_prompt_inputs``).

    Args:
        config: the prompt settings.
        num_frames: frames of the clips in the batch.
        rng: the step's numpy generator (the same on every process), an int seed, or ``None``
            (fresh OS entropy).

    Example:
        >>> import numpy as np
        >>> from medsam2kit.train.config import PromptConfig
        >>> plan = draw_plan(PromptConfig(mode="point", init_cond_frames=1, frames_to_correct=2), 8,
        ...                  rng=0)
        >>> plan.kind, plan.init_cond_frames, len(plan.frames_to_correct)
        ('point', (0,), 2)
    """
    if num_frames < 1:
        raise InvalidInputError(f"num_frames: expected >= 1, got {num_frames}")
    generator = check_rng(rng)
    if config.mode == "mixed":
        use_points = bool(generator.random() < config.prob_point)
    else:
        use_points = config.mode in ("point", "box")
    if num_frames == 1 and config.mode == "mixed":
        use_points = True  # SAM2: single images always train with clicks
    n_init = num_frames if config.init_cond_frames == -1 else min(config.init_cond_frames, num_frames)
    if config.rand_init_cond_frames and n_init > 1 and config.init_cond_frames != -1:
        n_init = int(generator.integers(1, n_init, endpoint=True))
    if not use_points and num_frames > 1:
        n_init = min(n_init, num_frames - 1)  # mask prompts are the output: keep one frame to track
    others = list(range(1, num_frames))
    extra = generator.choice(others, size=n_init - 1, replace=False).tolist() if n_init > 1 else []
    init = (0, *sorted(int(t) for t in extra))
    if not use_points:
        return PromptPlan("mask", init)
    if config.mode == "box":
        kind: PromptKind = "box"
    elif config.mode == "point":
        kind = "point"
    else:
        kind = "box" if bool(generator.random() < config.prob_box) else "point"
    n_corr = num_frames if config.frames_to_correct == -1 else min(max(config.frames_to_correct, n_init), num_frames)
    rest = [t for t in range(num_frames) if t not in init]
    more = generator.choice(rest, size=n_corr - n_init, replace=False).tolist() if n_corr > n_init else []
    correct = (*init, *sorted(int(t) for t in more))
    if config.correction_clicks == 0:
        correct = ()
    return PromptPlan(kind, init, correct, config.correction_clicks, config.add_corrected_as_cond)


def _uniforms(seeds: Sequence[int], salt: Sequence[int], n: int, device: torch.device) -> torch.Tensor:
    """``(N, n)`` float64 uniforms, object ``i``'s from ``seeds[i]`` and ``salt``."""
    out = np.stack([np.random.default_rng(derive_seed(s, *salt)).random(n) for s in seeds]) if seeds else np.zeros((0, n))
    return torch.from_numpy(out).to(device)


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes ``(N, 4)`` float32 of bool masks ``(N, H, W)`` (all zeros for an empty mask).

    Example:
        >>> m = torch.zeros(1, 8, 8, dtype=torch.bool); m[0, 2:4, 1:6] = True
        >>> mask_to_box(m).tolist()
        [[1.0, 2.0, 5.0, 3.0]]
    """
    n, h, w = masks.shape
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    cols, rows = masks.any(1), masks.any(2)
    big = torch.tensor(max(h, w), device=masks.device)
    x0 = torch.where(cols, xs, big).min(1).values
    x1 = torch.where(cols, xs, -1).max(1).values
    y0 = torch.where(rows, ys, big).min(1).values
    y1 = torch.where(rows, ys, -1).max(1).values
    box = torch.stack([x0, y0, x1, y1], 1).float()
    empty = ~masks.flatten(1).any(1)
    return torch.where(empty[:, None], torch.zeros_like(box), box)


def box_prompt(gt: torch.Tensor, *, seeds: Sequence[int], noise: float = 0.1, noise_bound: float = 20.0,
               salt: Sequence[int] = (0,)) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy box per object as two corner points (SAM2's ``sample_box_points``).

    Args:
        gt: bool ``(N, H, W)`` true masks.
        seeds: one seed per object.
        noise: corner noise as a fraction of the box width/height, at most ``noise_bound`` pixels.
        salt: extra integers mixed into the seeds (e.g. the frame).

    Returns:
        ``(coords, labels)``: float32 ``(N, 2, 2)`` corners ``(x, y)``, int32 ``(N, 2)`` = ``[2, 3]``.
    """
    _check_masks(gt, "gt", seeds)
    n, h, w = gt.shape
    box = mask_to_box(gt)
    if noise > 0:
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        bound = torch.tensor(float(noise_bound), device=gt.device)
        mx, my = torch.minimum(bw * noise, bound), torch.minimum(bh * noise, bound)
        u = (2 * _uniforms(seeds, (1, *salt), 4, gt.device) - 1).float()
        box = box + u * torch.stack([mx, my, mx, my], 1)
        hi = torch.tensor([w - 1, h - 1, w - 1, h - 1], device=gt.device, dtype=box.dtype)
        box = torch.minimum(box.clamp(min=0), hi)
    labels = torch.tensor([[2, 3]], dtype=torch.int32, device=gt.device).expand(n, 2).contiguous()
    return box.reshape(n, 2, 2), labels


def click_prompt(gt: torch.Tensor, pred: torch.Tensor | None, *, seeds: Sequence[int],
                 salt: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per object, uniform in the error region (SAM2's "uniform" ``get_next_point``).

    Positive in a false-negative pixel, negative in a false-positive one; with ``pred=None`` a
    positive click in the mask; when the prediction is exact, a negative click in the background.

    Args:
        gt: bool ``(N, H, W)`` true masks.
        pred: bool ``(N, H, W)`` current predictions or ``None``.
        seeds: one seed per object.
        salt: extra integers mixed into the seeds (frame, click number).

    Returns:
        ``(coords, labels)``: float32 ``(N, 1, 2)`` ``(x, y)``, int32 ``(N, 1)``.
    """
    _check_masks(gt, "gt", seeds)
    n, h, w = gt.shape
    if pred is None:
        pred = torch.zeros_like(gt)
    elif pred.shape != gt.shape:
        raise ShapeMismatchError(f"pred: expected shape {tuple(gt.shape)}, got {tuple(pred.shape)}")
    error = (gt ^ pred.bool()).flatten(1)
    exact = ~error.any(1, keepdim=True)
    region = torch.where(exact, ~gt.flatten(1), error)
    region = torch.where(region.any(1, keepdim=True), region, torch.ones_like(region))  # degenerate: anywhere
    count = region.sum(1)
    u = _uniforms(seeds, (2, *salt), 1, gt.device)[:, 0]
    k = torch.minimum((u * count.double()).long(), count - 1)
    csum = region.long().cumsum(1)
    idx = (csum > k[:, None]).long().argmax(1)
    labels = gt.flatten(1).gather(1, idx[:, None]).to(torch.int32)
    coords = torch.stack([idx % w, idx // w], 1).float()[:, None, :]
    return coords, labels


def _check_masks(gt: torch.Tensor, name: str, seeds: Sequence[int]) -> None:
    if gt.ndim != 3 or gt.dtype != torch.bool:
        raise InvalidInputError(f"{name}: expected bool (N, H, W), got {gt.dtype} {tuple(gt.shape)}")
    if len(seeds) != gt.shape[0]:
        raise ShapeMismatchError(f"seeds: expected {gt.shape[0]} (one per object), got {len(seeds)}")


__all__ = ["PromptKind", "PromptPlan", "box_prompt", "click_prompt", "draw_plan", "mask_to_box"]
