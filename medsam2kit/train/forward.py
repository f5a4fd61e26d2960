"""The training forward pass of SAM2 over a batch of clips (SAM2Train's, on the model's own methods).

:func:`forward_clips` encodes every frame of the batch once, then tracks the objects frame by
frame in SAM2's order (conditioning frames first, then the others): ``model._track_step`` (memory
attention + SAM heads, or the mask-as-output path for mask prompts), the correction clicks through
``model._forward_sam_heads``, and ``model._encode_memory_in_output`` for the memory of later
frames. It returns what :class:`~medsam2kit.train.loss.MultiStepLoss` needs and the final logits.
No ``sam2`` import: only the model object :func:`medsam2kit.predictor.build_model` returns.

:class:`ClipForward` wraps the model as an ``nn.Module`` whose ``forward`` returns the loss parts,
so that ``DistributedDataParallel`` sees the whole computation.

Example:
    >>> import torch
    >>> from medsam2kit.predictor import build_model
    >>> from medsam2kit.train.data import ClipSampler, collate, synthetic_videos
    >>> from medsam2kit.train.prompts import PromptPlan
    >>> model = build_model("sam2.1_hiera_micro", device="cpu")
    >>> batch = collate(ClipSampler([synthetic_videos(1, frames=3)], clip_length=3).batch(step=0, micro=0, batch_size=1))
    >>> with torch.no_grad():
    ...     out = forward_clips(model, batch, PromptPlan.first_frame_mask())
    >>> len(out), tuple(out[0]["pred"].shape)
    (3, (2, 1, 128, 128))
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from medsam2kit.train.config import LossConfig
from medsam2kit.train.data import Batch
from medsam2kit.train.loss import MultiStepLoss
from medsam2kit.train.prompts import PromptPlan, box_prompt, click_prompt


def _concat_points(old: dict[str, torch.Tensor] | None, coords: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    if old is None:
        return {"point_coords": coords, "point_labels": labels}
    return {
        "point_coords": torch.cat([old["point_coords"], coords], 1),
        "point_labels": torch.cat([old["point_labels"], labels], 1),
    }


def encode_frames(model: Any, images: torch.Tensor, *, chunk: int | None = None,
                  grad: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    """Image features of ``(T, B, 3, S, S)`` frames, flattened as sam2 does: ``(HW, T*B, C)`` per level.

    Args:
        model: the SAM2 model.
        images: normalised frames.
        chunk: encode this many images at a time (``None``: all at once).
        grad: keep the autograd graph (``False`` for a frozen encoder or evaluation).
    """
    flat = images.flatten(0, 1)
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        if chunk is None or chunk >= flat.shape[0]:
            backbone = model.forward_image(flat)
        else:
            parts = [model.forward_image(flat[i : i + chunk]) for i in range(0, flat.shape[0], chunk)]
            backbone = {
                "backbone_fpn": [torch.cat([p["backbone_fpn"][k] for p in parts]) for k in range(len(parts[0]["backbone_fpn"]))],
                "vision_pos_enc": [torch.cat([p["vision_pos_enc"][k] for p in parts]) for k in range(len(parts[0]["vision_pos_enc"]))],
            }
        _, feats, pos, sizes = model._prepare_backbone_features(backbone)
    return feats, pos, sizes


def forward_clips(model: Any, batch: Batch, plan: PromptPlan, *, encoder_grad: bool = True,
                  encode_chunk: int | None = None) -> list[dict[str, Any]]:
    """Track every object of ``batch`` through its clip with the prompts of ``plan``.

    Args:
        model: the SAM2 model (``train()`` for training, ``eval()`` for validation).
        batch: images ``(T, B, 3, S, S)`` and masks ``(T, N, S, S)`` on the model's device.
        plan: prompt kind, conditioning frames and correction frames.
        encoder_grad: run the image encoder with gradients.
        encode_chunk: encode this many images at a time.

    Returns:
        Per frame ``t``: ``{"multimasks": [(N, M, S, S) logits per step], "ious": [(N, M)],
        "object_scores": [(N, 1)], "pred": (N, 1, S, S) final logits}``.
    """
    num_frames, num_clips = batch.images.shape[:2]
    gt = batch.masks
    feats, pos, sizes = encode_frames(model, batch.images, chunk=encode_chunk, grad=encoder_grad)
    seeds = list(batch.obj_seeds)
    output_dict: dict[str, dict[int, Any]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    cond = set(plan.init_cond_frames)
    correct = set(plan.frames_to_correct) if plan.kind != "mask" else set()
    order = list(plan.init_cond_frames) + [t for t in range(num_frames) if t not in cond]
    results: dict[int, dict[str, Any]] = {}
    for t in order:
        ids = t * num_clips + batch.obj_to_clip
        cur_feats = [x[:, ids] for x in feats]
        cur_pos = [x[:, ids] for x in pos]
        is_cond = t in cond
        point_inputs: dict[str, torch.Tensor] | None = None
        mask_inputs: torch.Tensor | None = None
        if is_cond:
            if plan.kind == "mask":
                mask_inputs = gt[t][:, None].float()
            elif plan.kind == "box":
                coords, labels = box_prompt(gt[t], seeds=seeds, salt=(t,))
                point_inputs = _concat_points(None, coords, labels)
            else:
                coords, labels = click_prompt(gt[t], None, seeds=seeds, salt=(t, 0))
                point_inputs = _concat_points(None, coords, labels)
        current_out, sam_out, high_res_features, pix_feat = model._track_step(
            t, is_cond, cur_feats, cur_pos, sizes, point_inputs, mask_inputs, output_dict, num_frames, False, None
        )
        low_mm, high_mm, ious, low, high, obj_ptr, obj_score = sam_out
        steps_masks, steps_ious, steps_scores = [high_mm], [ious], [obj_score]
        if t in correct:
            for j in range(plan.correction_clicks):
                coords, labels = click_prompt(gt[t], high[:, 0] > 0, seeds=seeds, salt=(t, j + 1))
                point_inputs = _concat_points(point_inputs, coords, labels)
                multimask = model._use_multimask(is_cond, point_inputs)
                low_mm, high_mm, ious, low, high, obj_ptr, obj_score = model._forward_sam_heads(
                    backbone_features=pix_feat,
                    point_inputs=point_inputs,
                    mask_inputs=low,
                    high_res_features=high_res_features,
                    multimask_output=multimask,
                )
                steps_masks.append(high_mm)
                steps_ious.append(ious)
                steps_scores.append(obj_score)
        current_out["pred_masks"] = low
        current_out["pred_masks_high_res"] = high
        current_out["obj_ptr"] = obj_ptr
        model._encode_memory_in_output(cur_feats, sizes, point_inputs, True, high, obj_score, current_out)
        as_cond = is_cond or (plan.add_corrected_as_cond and t in correct)
        output_dict["cond_frame_outputs" if as_cond else "non_cond_frame_outputs"][t] = current_out
        results[t] = {"multimasks": steps_masks, "ious": steps_ious, "object_scores": steps_scores, "pred": high}
    if hasattr(model, "_last_pred_iou"):
        model._last_pred_iou = None  # the predictor's IoU hook keeps a graph reference otherwise
    return [results[t] for t in range(num_frames)]


class ClipForward(torch.nn.Module):
    """``nn.Module`` around a SAM2 model whose ``forward(batch, plan)`` returns the loss parts
    (what ``DistributedDataParallel`` wraps).

    Args:
        model: the SAM2 model (its parameters are this module's, under the name ``model``).
        loss: the loss settings.
        encoder_grad: run the image encoder with gradients (``False`` when it is frozen).
    """

    def __init__(self, model: torch.nn.Module, loss: LossConfig | None = None, *, encoder_grad: bool = True) -> None:
        super().__init__()
        self.model = model
        self.loss = MultiStepLoss(loss)
        self.encoder_grad = encoder_grad

    def forward(self, batch: Batch, plan: PromptPlan) -> dict[str, torch.Tensor]:  # noqa: D102
        frames = forward_clips(self.model, batch, plan, encoder_grad=self.encoder_grad)
        return self.loss(frames, batch.masks)


__all__ = ["ClipForward", "encode_frames", "forward_clips"]
