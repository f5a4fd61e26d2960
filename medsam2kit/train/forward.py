"""The training forward pass of SAM2 over a batch of clips (SAM2Train's, on the model's own methods).

:func:`forward_clips` encodes every frame of the batch once, then tracks the objects frame by
frame in SAM2's order (conditioning frames first, then the others), as sam2's ``SAM2Train`` does:
:func:`medsam2kit.backend.track_step_parts` (memory attention + SAM heads, or the mask-as-output
path for mask prompts), the correction clicks through :func:`medsam2kit.backend.forward_sam_heads`,
and :func:`medsam2kit.backend.encode_memory_in_output` for the memory of later frames. It returns
what :class:`~medsam2kit.train.loss.MultiStepLoss` needs and the final logits. sam2 is reached only
through :mod:`medsam2kit.backend`.

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

from medsam2kit import backend
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
                  grad: bool = True) -> backend.BackboneFeatures:
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
            backbone = backend.encode_images(model, flat)
        else:
            parts = [backend.encode_images(model, flat[i : i + chunk]) for i in range(0, flat.shape[0], chunk)]
            backbone = {
                "backbone_fpn": [torch.cat([p["backbone_fpn"][k] for p in parts]) for k in range(len(parts[0]["backbone_fpn"]))],
                "vision_pos_enc": [torch.cat([p["vision_pos_enc"][k] for p in parts]) for k in range(len(parts[0]["vision_pos_enc"]))],
            }
        return backend.prepare_backbone_features(model, backbone_out=backbone)


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
    features = encode_frames(model, batch.images, chunk=encode_chunk, grad=encoder_grad)
    seeds = list(batch.obj_seeds)
    output_dict: dict[str, dict[int, Any]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    cond = set(plan.init_cond_frames)
    correct = set(plan.frames_to_correct) if plan.kind != "mask" else set()
    order = list(plan.init_cond_frames) + [t for t in range(num_frames) if t not in cond]
    results: dict[int, dict[str, Any]] = {}
    for t in order:
        ids = t * num_clips + batch.obj_to_clip
        cur = features.select(ids)
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
        step = backend.track_step_parts(
            model,
            frame_idx=t,
            is_init_cond_frame=is_cond,
            features=cur,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=output_dict,
            num_frames=num_frames,
        )
        heads = step.heads
        steps_masks, steps_ious, steps_scores = [heads.high_res_multimasks], [heads.ious], [heads.object_score_logits]
        if t in correct:
            for j in range(plan.correction_clicks):
                coords, labels = click_prompt(gt[t], heads.high_res_masks[:, 0] > 0, seeds=seeds, salt=(t, j + 1))
                point_inputs = _concat_points(point_inputs, coords, labels)
                heads = backend.forward_sam_heads(
                    model,
                    backbone_features=step.pix_feat,
                    point_inputs=point_inputs,
                    mask_inputs=heads.low_res_masks,
                    high_res_features=step.high_res_features,
                    multimask_output=backend.use_multimask(model, is_init_cond_frame=is_cond, point_inputs=point_inputs),
                )
                steps_masks.append(heads.high_res_multimasks)
                steps_ious.append(heads.ious)
                steps_scores.append(heads.object_score_logits)
        current_out = step.current_out
        current_out["pred_masks"] = heads.low_res_masks
        current_out["pred_masks_high_res"] = heads.high_res_masks
        current_out["obj_ptr"] = heads.obj_ptr
        backend.encode_memory_in_output(
            model,
            features=cur,
            point_inputs=point_inputs,
            run_mem_encoder=True,
            high_res_masks=heads.high_res_masks,
            object_score_logits=heads.object_score_logits,
            current_out=current_out,
        )
        as_cond = is_cond or (plan.add_corrected_as_cond and t in correct)
        output_dict["cond_frame_outputs" if as_cond else "non_cond_frame_outputs"][t] = current_out
        results[t] = {"multimasks": steps_masks, "ious": steps_ious, "object_scores": steps_scores,
                      "pred": heads.high_res_masks}
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
