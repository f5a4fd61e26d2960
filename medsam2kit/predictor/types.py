"""Typed prompts and results of a session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

#: Propagation direction: ``"forward"`` (increasing frame index), ``"reverse"`` (decreasing) or
#: ``"both"`` (forward, then reverse, from the same start frame). One meaning in all of medsam2kit.
Direction = Literal["forward", "reverse", "both"]


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A mask prompt on one frame: ``mask`` ``(S, S)`` bool at model resolution (or any size:
    sam2 resizes it with antialiasing and thresholds at 0.5)."""

    frame: int
    mask: torch.Tensor
    obj_id: int = 1


@dataclass(frozen=True, eq=False)
class PointPrompt:
    """Clicks and/or a box on one frame, in frame pixels at model resolution ``S``.

    Attributes:
        points: ``(N, 2)`` float ``(x, y)``; may be empty when a box is given.
        labels: ``(N,)`` int, 1 foreground, 0 background.
        box: ``(4,)`` float ``(x0, y0, x1, y1)`` or ``None``.
        clear: replace earlier clicks of this object on this frame (a box requires it).
    """

    frame: int
    points: torch.Tensor
    labels: torch.Tensor
    obj_id: int = 1
    box: torch.Tensor | None = None
    clear: bool = True


Prompt = MaskPrompt | PointPrompt


@dataclass(frozen=True, eq=False)
class PropagationResult:
    """Per-frame outputs of one propagation, all on the CPU.

    Attributes:
        obj_ids: the object ids, in the order of the object axis.
        low_res_logits: ``(T, O, S/4, S/4)`` float32 mask logits as SAM2 predicts them;
            ``-inf`` on frames that were not visited.
        object_scores: ``(T, O)`` float32 object-score logits (> 0: object present); NaN where not visited.
        ious: ``(T, O)`` float32 predicted IoU of the output mask; NaN where not visited.
        visited: ``(T,)`` bool, whether the propagation produced the frame.
        image_size: the model's square input size ``S``.
    """

    obj_ids: tuple[int, ...]
    low_res_logits: torch.Tensor
    object_scores: torch.Tensor
    ious: torch.Tensor
    visited: torch.Tensor
    image_size: int

    def logits(self, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Mask logits upsampled bilinearly (as sam2 does) to ``size`` (default the model size ``S``).

        Returns:
            ``(T, O, H, W)`` float32 logits; ``-inf`` on frames not visited.
        """
        target = (self.image_size, self.image_size) if size is None else size
        t, o = self.low_res_logits.shape[:2]
        flat = self.low_res_logits.reshape(t * o, 1, *self.low_res_logits.shape[-2:])
        finite = torch.where(torch.isfinite(flat), flat, torch.zeros(()))
        up = F.interpolate(finite, size=target, mode="bilinear", align_corners=False)
        up = up.reshape(t, o, *up.shape[-2:])
        return torch.where(self.visited[:, None, None, None], up, torch.tensor(float("-inf")))

    def masks(self, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """``(T, O, H, W)`` bool masks: logits > 0."""
        return self.logits(size) > 0



__all__ = ["Direction", "MaskPrompt", "PointPrompt", "Prompt", "PropagationResult"]
