"""SAM2's training loss: focal + dice + IoU + object score over the multi-step outputs.

Re-implements ``training/loss_fns.py::MultiStepMultiMasksAndIous`` (weights 20/1/1/1): for every
frame and every prediction step (the first prediction and each correction click), focal and dice
losses on the candidate mask with the lowest ``20 * focal + dice``, the IoU head regressed to the
true IoU of every candidate (``supervise_all_iou``, L1), the object-score head trained by BCE on
"the object is present"; mask and IoU terms only count where the object is present. Sums over
frames and steps; divided by the number of objects per process averaged over processes (so
data-parallel gradients equal those of one process on the whole batch).

Example:
    >>> import torch
    >>> from medsam2kit.train.loss import MultiStepLoss
    >>> logits = torch.full((1, 3, 8, 8), -5.0); logits[:, :, 2:6, 2:6] = 5.0
    >>> gt = torch.zeros(1, 8, 8, dtype=torch.bool); gt[:, 2:6, 2:6] = True
    >>> frame = {"multimasks": [logits], "ious": [torch.ones(1, 3)], "object_scores": [torch.full((1, 1), 9.0)]}
    >>> parts = MultiStepLoss()([frame], gt[None])
    >>> sorted(parts), float(parts["loss"]) < 0.05
    (['loss', 'loss_class', 'loss_dice', 'loss_iou', 'loss_mask'], True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.train.config import LossConfig

#: The loss parts, in the order they are logged.
LOSS_PARTS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Per-element focal loss (RetinaNet); ``alpha < 0`` disables the class weighting.

    Example:
        >>> float(sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0])))
        0.0433...
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - (2|P.G| + 1) / (|P| + |G| + 1)`` over the last two dims: ``(N, M, H, W) -> (N, M)``.

    Example:
        >>> t = torch.ones(1, 1, 4, 4)
        >>> round(float(dice_loss(torch.full((1, 1, 4, 4), 20.0), t)), 4)
        0.0
    """
    p = logits.sigmoid().flatten(2)
    g = targets.flatten(2)
    return 1 - (2 * (p * g).sum(-1) + 1) / (p.sum(-1) + g.sum(-1) + 1)


class MultiStepLoss:
    """SAM2's multi-step, multi-mask loss with IoU and object-score terms.

    Args:
        config: weights and focal settings (default: SAM2's).
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        self.config = config or LossConfig()

    def __call__(self, frames: Sequence[Mapping[str, Sequence[torch.Tensor]]], targets: torch.Tensor,
                 *, num_objects: float | None = None) -> dict[str, torch.Tensor]:
        """The loss parts and their weighted sum ``"loss"``.

        Args:
            frames: per frame, ``"multimasks"`` (list over steps of float ``(N, M, H, W)`` logits),
                ``"ious"`` (list of ``(N, M)``) and ``"object_scores"`` (list of ``(N, 1)`` logits).
            targets: bool ``(T, N, H, W)`` true masks.
            num_objects: the normaliser (default: ``N`` averaged over the processes of the
                default process group, as SAM2 does).

        Returns:
            ``{"loss_mask", "loss_dice", "loss_iou", "loss_class", "loss"}`` scalar tensors.
        """
        if targets.ndim != 4 or len(frames) != targets.shape[0]:
            raise ShapeMismatchError(
                f"targets: expected (T, N, H, W) with T = {len(frames)} frames, got {tuple(targets.shape)}"
            )
        if num_objects is None:
            num_objects = global_mean_objects(int(targets.shape[1]), targets.device)
        parts: dict[str, torch.Tensor] = {k: targets.new_zeros((), dtype=torch.float32) for k in LOSS_PARTS}
        for out, target in zip(frames, targets):
            steps = (out["multimasks"], out["ious"], out["object_scores"])
            if not (len(steps[0]) == len(steps[1]) == len(steps[2])):
                raise InvalidInputError("frames: multimasks, ious and object_scores must have one entry per step")
            for masks, ious, scores in zip(*steps):
                self._step(parts, masks.float(), target[:, None].float(), ious.float(), scores.float(), num_objects)
        c = self.config
        weights = {"loss_mask": c.focal, "loss_dice": c.dice, "loss_iou": c.iou, "loss_class": c.object_score}
        total = sum((parts[k] * w for k, w in weights.items() if w != 0), targets.new_zeros((), dtype=torch.float32))
        return {**parts, "loss": total}

    def _step(self, parts: dict[str, torch.Tensor], masks: torch.Tensor, target: torch.Tensor, ious: torch.Tensor,
              scores: torch.Tensor, num_objects: float) -> None:
        c = self.config
        target = target.expand_as(masks)
        focal = sigmoid_focal_loss(masks, target, alpha=c.focal_alpha, gamma=c.focal_gamma).flatten(2).mean(-1)
        dice = dice_loss(masks, target)
        pred_bin, gt_bin = masks.flatten(2) > 0, target.flatten(2) > 0
        inter = (pred_bin & gt_bin).sum(-1).float()
        union = (pred_bin | gt_bin).sum(-1).float()
        true_iou = inter / union.clamp(min=1.0)
        iou_err = F.l1_loss(ious, true_iou, reduction="none") if c.iou_l1 else F.mse_loss(ious, true_iou, reduction="none")
        present = target[:, 0].flatten(1).any(-1, keepdim=True).float()  # (N, 1)
        obj = sigmoid_focal_loss(scores, present, alpha=-1.0, gamma=0.0)  # plain BCE, as SAM2's defaults
        if masks.shape[1] > 1:
            combo = focal * c.focal + dice * c.dice
            best = combo.argmin(-1)
            rows = torch.arange(masks.shape[0], device=masks.device)
            focal_b, dice_b = focal[rows, best][:, None], dice[rows, best][:, None]
            iou_b = iou_err.mean(-1, keepdim=True) if c.supervise_all_iou else iou_err[rows, best][:, None]
        else:
            focal_b, dice_b, iou_b = focal, dice, iou_err
        parts["loss_mask"] = parts["loss_mask"] + (focal_b * present).sum() / num_objects
        parts["loss_dice"] = parts["loss_dice"] + (dice_b * present).sum() / num_objects
        parts["loss_iou"] = parts["loss_iou"] + (iou_b * present).sum() / num_objects
        parts["loss_class"] = parts["loss_class"] + obj.mean(1).sum() / num_objects


def global_mean_objects(count: int, device: torch.device) -> float:
    """Objects per process averaged over the default process group (``count`` when not distributed),
    at least 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = torch.tensor(float(count), device=device)
        dist.all_reduce(t)
        return max(float(t) / dist.get_world_size(), 1.0)
    return max(float(count), 1.0)


__all__ = ["LOSS_PARTS", "MultiStepLoss", "dice_loss", "global_mean_objects", "sigmoid_focal_loss"]
