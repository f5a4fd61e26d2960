"""Typed, keyword-only wrappers of sam2's per-frame steps.

sam2's private methods take many positional arguments and return bare tuples; these wrappers
call them with keyword arguments and return frozen dataclasses, so that the rest of medsam2kit
(the session, FATE-SAM's memory assembler, fine-tuning) never depends on argument order.

Shapes follow sam2: flattened features are ``(HW, B, C)`` per FPN level, mask logits
``(B, 1, S/4, S/4)`` (low-res) and ``(B, 1, S, S)`` (high-res), object pointers ``(B, C)``.
"""

from __future__ import annotations

import functools
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medsam2kit.backend.model import SAM2Model

#: sam2's per-object memory: ``{"cond_frame_outputs": {t: out}, "non_cond_frame_outputs": {t: out}}``.
MemoryDict = dict[str, dict[int, Any]]

#: A frame output as sam2 stores it in its memory (``maskmem_features``, ``maskmem_pos_enc``,
#: ``pred_masks``, ``obj_ptr``, ``object_score_logits``), plus ``pred_iou`` ``(B,)`` here.
FrameOutput = dict[str, Any]


@dataclass(frozen=True, eq=False)
class BackboneFeatures:
    """Image features of one frame (or a batch) as sam2's heads consume them.

    Attributes:
        vision_feats: per FPN level, ``(H_l * W_l, B, C_l)`` features.
        vision_pos_embeds: per level, ``(H_l * W_l, B, C)`` positional encodings.
        feat_sizes: per level, ``(H_l, W_l)``.
    """

    vision_feats: list[torch.Tensor]
    vision_pos_embeds: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]

    def expand(self, batch: int) -> BackboneFeatures:
        """The features of a one-entry batch shared by ``batch`` objects (expanded, not copied)."""
        return BackboneFeatures(
            vision_feats=[x.expand(-1, batch, -1) for x in self.vision_feats],
            vision_pos_embeds=[x.expand(-1, batch, -1) for x in self.vision_pos_embeds],
            feat_sizes=self.feat_sizes,
        )

    def select(self, index: torch.Tensor | slice) -> BackboneFeatures:
        """The features of some batch entries (``index`` over the batch axis)."""
        return BackboneFeatures(
            vision_feats=[x[:, index] for x in self.vision_feats],
            vision_pos_embeds=[x[:, index] for x in self.vision_pos_embeds],
            feat_sizes=self.feat_sizes,
        )


@dataclass(frozen=True, eq=False)
class HeadsOutput:
    """What sam2's SAM heads return (``_forward_sam_heads``), named.

    Attributes:
        low_res_multimasks: ``(B, M, S/4, S/4)`` logits of every candidate mask.
        high_res_multimasks: ``(B, M, S, S)``.
        ious: ``(B, M)`` predicted IoU of each candidate.
        low_res_masks: ``(B, 1, S/4, S/4)`` logits of the chosen mask.
        high_res_masks: ``(B, 1, S, S)``.
        obj_ptr: ``(B, C)`` object pointer.
        object_score_logits: ``(B, 1)`` (> 0: object present).
    """

    low_res_multimasks: torch.Tensor
    high_res_multimasks: torch.Tensor
    ious: torch.Tensor
    low_res_masks: torch.Tensor
    high_res_masks: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor

    @property
    def chosen_iou(self) -> torch.Tensor:
        """``(B,)`` predicted IoU of the chosen mask (the best candidate, or the only one)."""
        return self.ious.float().max(dim=-1).values


@dataclass(frozen=True, eq=False)
class TrackStep:
    """sam2's ``_track_step`` result: the partial frame output, the heads' output, and the
    features a correction click needs (``high_res_features``, ``pix_feat``)."""

    current_out: dict[str, Any]
    heads: HeadsOutput
    high_res_features: list[torch.Tensor] | None
    pix_feat: torch.Tensor


def encode_images(model: SAM2Model, images: torch.Tensor) -> dict[str, Any]:
    """sam2's image encoder on ``(B, 3, S, S)`` normalised frames: ``{"backbone_fpn",
    "vision_pos_enc", ...}`` with ``(B, C_l, H_l, W_l)`` tensors per level."""
    out: dict[str, Any] = model.forward_image(images)
    return out


def prepare_backbone_features(model: SAM2Model, *, backbone_out: dict[str, Any]) -> BackboneFeatures:
    """Flatten the encoder output as sam2's heads expect (``_prepare_backbone_features``)."""
    _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    return BackboneFeatures(vision_feats=list(feats), vision_pos_embeds=list(pos), feat_sizes=list(sizes))


def _heads(out: tuple[torch.Tensor, ...]) -> HeadsOutput:
    low_mm, high_mm, ious, low, high, obj_ptr, score = out
    return HeadsOutput(
        low_res_multimasks=low_mm,
        high_res_multimasks=high_mm,
        ious=ious,
        low_res_masks=low,
        high_res_masks=high,
        obj_ptr=obj_ptr,
        object_score_logits=score,
    )


def track_step_parts(
    model: SAM2Model,
    *,
    frame_idx: int,
    is_init_cond_frame: bool,
    features: BackboneFeatures,
    point_inputs: dict[str, torch.Tensor] | None,
    mask_inputs: torch.Tensor | None,
    output_dict: MemoryDict,
    num_frames: int,
    track_in_reverse: bool = False,
    prev_sam_mask_logits: torch.Tensor | None = None,
) -> TrackStep:
    """Memory attention and SAM heads on one frame (sam2's ``_track_step``), memory not encoded."""
    current_out, sam_out, high_res, pix_feat = model._track_step(
        frame_idx=frame_idx,
        is_init_cond_frame=is_init_cond_frame,
        current_vision_feats=features.vision_feats,
        current_vision_pos_embeds=features.vision_pos_embeds,
        feat_sizes=features.feat_sizes,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        output_dict=output_dict,
        num_frames=num_frames,
        track_in_reverse=track_in_reverse,
        prev_sam_mask_logits=prev_sam_mask_logits,
    )
    return TrackStep(current_out=current_out, heads=_heads(sam_out), high_res_features=high_res, pix_feat=pix_feat)


def forward_sam_heads(
    model: SAM2Model,
    *,
    backbone_features: torch.Tensor,
    point_inputs: dict[str, torch.Tensor] | None,
    mask_inputs: torch.Tensor | None,
    high_res_features: list[torch.Tensor] | None,
    multimask_output: bool,
) -> HeadsOutput:
    """Prompt encoder and mask decoder on ``(B, C, H, W)`` memory-conditioned features."""
    return _heads(
        model._forward_sam_heads(
            backbone_features=backbone_features,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            high_res_features=high_res_features,
            multimask_output=multimask_output,
        )
    )


def use_multimask(model: SAM2Model, *, is_init_cond_frame: bool, point_inputs: dict[str, torch.Tensor] | None) -> bool:
    """Whether sam2 asks its mask decoder for several candidate masks on this frame."""
    return bool(model._use_multimask(is_init_cond_frame=is_init_cond_frame, point_inputs=point_inputs))


def encode_memory_in_output(
    model: SAM2Model,
    *,
    features: BackboneFeatures,
    point_inputs: dict[str, torch.Tensor] | None,
    run_mem_encoder: bool,
    high_res_masks: torch.Tensor,
    object_score_logits: torch.Tensor,
    current_out: dict[str, Any],
) -> None:
    """Run the memory encoder on a frame's mask and store ``maskmem_features`` and
    ``maskmem_pos_enc`` in ``current_out`` (``None`` when ``run_mem_encoder`` is false)."""
    model._encode_memory_in_output(
        current_vision_feats=features.vision_feats,
        feat_sizes=features.feat_sizes,
        point_inputs=point_inputs,
        run_mem_encoder=run_mem_encoder,
        high_res_masks=high_res_masks,
        object_score_logits=object_score_logits,
        current_out=current_out,
    )


def track_frame(
    model: SAM2Model,
    *,
    features: BackboneFeatures,
    output_dict: MemoryDict,
    frame_idx: int,
    num_frames: int,
    is_init_cond_frame: bool = False,
    point_inputs: dict[str, torch.Tensor] | None = None,
    mask_inputs: torch.Tensor | None = None,
    reverse: bool = False,
    run_mem_encoder: bool = True,
    prev_sam_mask_logits: torch.Tensor | None = None,
    storage_device: torch.device | None = None,
    constants: MutableMapping[str, Any] | None = None,
) -> tuple[FrameOutput, torch.Tensor]:
    """One tracking step as sam2's video predictor runs it (``_run_single_frame_inference``),
    keeping the predicted IoU.

    Args:
        model: the SAM2 model.
        features: the frame's features, batch ``B`` (one entry per object).
        output_dict: the memories the frame attends to.
        frame_idx: the frame's index in the (possibly virtual) video.
        num_frames: the video length (for the object-pointer temporal encoding).
        is_init_cond_frame, point_inputs, mask_inputs: a prompt on this frame, as in sam2.
        reverse: tracking backwards in time.
        run_mem_encoder: encode the frame's memory.
        prev_sam_mask_logits: earlier low-res logits fed with new clicks.
        storage_device: where the memory features are kept (default: the features' device).
        constants: a dict shared by a session to hold one copy of the memory positional
            encoding (sam2's ``inference_state["constants"]``); ``None`` keeps each frame's own.

    Returns:
        The compact frame output (bf16 ``maskmem_features`` on ``storage_device``, low-res
        ``pred_masks``, ``obj_ptr``, ``object_score_logits``, ``maskmem_pos_enc``, and
        ``pred_iou`` ``(B,)``) and the low-res logits on the compute device (``fill_hole_area``
        applied as sam2 does).
    """
    if point_inputs is not None and mask_inputs is not None:
        raise ValueError("track_frame: point_inputs and mask_inputs cannot both be given on one frame")
    step = track_step_parts(
        model,
        frame_idx=frame_idx,
        is_init_cond_frame=is_init_cond_frame,
        features=features,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        output_dict=output_dict,
        num_frames=num_frames,
        track_in_reverse=reverse,
        prev_sam_mask_logits=prev_sam_mask_logits,
    )
    heads = step.heads
    current_out = step.current_out
    encode_memory_in_output(
        model,
        features=features,
        point_inputs=point_inputs,
        run_mem_encoder=run_mem_encoder,
        high_res_masks=heads.high_res_masks,
        object_score_logits=heads.object_score_logits,
        current_out=current_out,
    )
    return _compact(model, current_out, heads, storage_device=storage_device, constants=constants)


def _compact(
    model: SAM2Model,
    current_out: dict[str, Any],
    heads: HeadsOutput,
    *,
    storage_device: torch.device | None,
    constants: MutableMapping[str, Any] | None,
) -> tuple[FrameOutput, torch.Tensor]:
    """The frame output as sam2's video predictor stores it (bf16 memory on the storage device,
    one shared copy of the memory positional encoding), plus ``pred_iou``."""
    device = storage_device if storage_device is not None else heads.low_res_masks.device
    memory = current_out["maskmem_features"]
    if memory is not None:
        memory = memory.to(torch.bfloat16).to(device, non_blocking=True)
    pred_masks_gpu = heads.low_res_masks
    if model.fill_hole_area > 0:
        from sam2.utils.misc import fill_holes_in_mask_scores

        pred_masks_gpu = fill_holes_in_mask_scores(pred_masks_gpu, model.fill_hole_area)
    compact: FrameOutput = {
        "maskmem_features": memory,
        "maskmem_pos_enc": _shared_pos_enc(current_out["maskmem_pos_enc"], constants),
        "pred_masks": pred_masks_gpu.to(device, non_blocking=True),
        "obj_ptr": heads.obj_ptr,
        "object_score_logits": heads.object_score_logits,
        "pred_iou": heads.chosen_iou,
    }
    return compact, pred_masks_gpu


class _Captured(Exception):
    """Raised by the capturing hook to stop sam2 right after it assembled a memory."""


@dataclass(frozen=True, eq=False)
class _Memory:
    tokens: torch.Tensor  # (N, 1, C_mem)
    pos: torch.Tensor  # (N, 1, C_mem)
    num_ptr_tokens: int


def _gather_memory(
    model: SAM2Model, *, features: BackboneFeatures, output_dict: MemoryDict, frame_idx: int,
    num_frames: int, reverse: bool,
) -> _Memory:
    """The memory tokens sam2 would attend to for one object on this frame (sam2's own
    ``_prepare_memory_conditioned_features`` assembles them; it is stopped before attending)."""
    captured: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.update(kwargs)
        raise _Captured

    # first of the hooks: the others (ours, a user's) see only the real, batched call
    handle = model.memory_attention.register_forward_pre_hook(capture, with_kwargs=True, prepend=True)
    try:
        model._prepare_memory_conditioned_features(
            frame_idx=frame_idx,
            is_init_cond_frame=False,
            current_vision_feats=features.vision_feats[-1:],
            current_vision_pos_embeds=features.vision_pos_embeds[-1:],
            feat_sizes=features.feat_sizes[-1:],
            output_dict=output_dict,
            num_frames=num_frames,
            track_in_reverse=reverse,
        )
    except _Captured:
        pass
    finally:
        handle.remove()
    if "memory" not in captured:
        raise RuntimeError("sam2 attended to no memory on a non-conditioning frame (no memory attention call)")
    return _Memory(tokens=captured["memory"], pos=captured["memory_pos"],
                   num_ptr_tokens=int(captured.get("num_obj_ptr_tokens", 0)))


def _pad_memories(memories: Sequence[_Memory]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """``(N_max, B, C)`` memory and positions, pointer-token count and ``(B, N_max)`` padding mask
    (``None`` when nothing is padded). Spatial memory comes first, object pointers last (sam2's
    order, which its rotary encoding relies on): each part is padded at its end."""
    spatial = [m.tokens.shape[0] - m.num_ptr_tokens for m in memories]
    ptrs = [m.num_ptr_tokens for m in memories]
    s_max, p_max = max(spatial), max(ptrs)
    if all(s == s_max for s in spatial) and all(p == p_max for p in ptrs):
        return (torch.cat([m.tokens for m in memories], dim=1), torch.cat([m.pos for m in memories], dim=1), p_max, None)
    first = memories[0].tokens
    batch, channels = len(memories), first.shape[-1]
    dtype = functools.reduce(torch.promote_types, [m.tokens.dtype for m in memories])  # as torch.cat would
    pos_dtype = functools.reduce(torch.promote_types, [m.pos.dtype for m in memories])
    tokens = torch.zeros((s_max + p_max, batch, channels), dtype=dtype, device=first.device)
    pos = torch.zeros((s_max + p_max, batch, channels), dtype=pos_dtype, device=first.device)
    mask = torch.ones((batch, s_max + p_max), dtype=torch.bool, device=first.device)
    for b, (m, s, p) in enumerate(zip(memories, spatial, ptrs)):
        for src, dst in ((slice(0, s), slice(0, s)), (slice(s, s + p), slice(s_max, s_max + p))):
            tokens[dst, b] = m.tokens[src, 0].to(tokens.dtype)
            pos[dst, b] = m.pos[src, 0].to(pos.dtype)
            mask[b, dst] = False
    return tokens, pos, p_max, mask


def track_frame_batch(
    model: SAM2Model,
    *,
    features: BackboneFeatures | Sequence[BackboneFeatures],
    memories: Sequence[MemoryDict],
    frame_idx: int | Sequence[int],
    num_frames: int,
    reverse: bool = False,
    storage_device: torch.device | None = None,
    constants: MutableMapping[str, Any] | None = None,
) -> list[FrameOutput]:
    """Several objects tracked on one unprompted frame as one batch, whatever their memories.

    Each object's memory is assembled by sam2's own code; memories of different lengths
    (objects prompted on different frames, added later, with fewer object pointers) are padded
    and the padding is masked out of memory attention's cross-attention
    (:mod:`medsam2kit.backend.attention`). Memory attention, the SAM heads and the memory encoder
    then run once over the batch on the frame's features, expanded (not copied). Each output
    equals :func:`track_frame` of that object alone within float rounding.

    Objects may also each be on their own frame (independent tracks advancing together, e.g.
    one track per prompt slice): then ``features`` and ``frame_idx`` give one entry per object.

    Args:
        features: the frame's features, batch 1 (shared by all objects, expanded), or one
            batch-1 entry per object (concatenated).
        memories: one memory per object (each ``{"cond_frame_outputs", "non_cond_frame_outputs"}``
            with at least one conditioning frame).
        frame_idx: the frame of every object, or one per object.

    Returns:
        One compact frame output per object, as :func:`track_frame` returns it.
    """
    batch = len(memories)
    per_frame = [int(frame_idx)] * batch if isinstance(frame_idx, int) else [int(f) for f in frame_idx]
    per_feats = [features] * batch if isinstance(features, BackboneFeatures) else list(features)
    if len(per_frame) != batch or len(per_feats) != batch:
        raise ValueError(f"track_frame_batch: {batch} memories but {len(per_frame)} frames, {len(per_feats)} features")
    gathered = [
        _gather_memory(model, features=f, output_dict=m, frame_idx=t, num_frames=num_frames, reverse=reverse)
        for f, m, t in zip(per_feats, memories, per_frame)
    ]
    tokens, pos, num_ptr, mask = _pad_memories(gathered)
    shared = features.expand(batch) if isinstance(features, BackboneFeatures) else _concat(per_feats)
    from medsam2kit.backend.attention import key_padding

    h, w = shared.feat_sizes[-1]
    with key_padding(model.memory_attention, mask):
        attended = model.memory_attention(
            curr=shared.vision_feats[-1:], curr_pos=shared.vision_pos_embeds[-1:], memory=tokens,
            memory_pos=pos, num_obj_ptr_tokens=num_ptr,
        )
    pix_feat = attended.permute(1, 2, 0).reshape(batch, model.hidden_dim, h, w)
    high_res = [
        x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *size)
        for x, size in zip(shared.vision_feats[:-1], shared.feat_sizes[:-1])
    ] or None
    heads = forward_sam_heads(
        model, backbone_features=pix_feat, point_inputs=None, mask_inputs=None, high_res_features=high_res,
        multimask_output=use_multimask(model, is_init_cond_frame=False, point_inputs=None),
    )
    current_out: dict[str, Any] = {"point_inputs": None, "mask_inputs": None}
    encode_memory_in_output(
        model, features=shared, point_inputs=None, run_mem_encoder=True, high_res_masks=heads.high_res_masks,
        object_score_logits=heads.object_score_logits, current_out=current_out,
    )
    out, _ = _compact(model, current_out, heads, storage_device=storage_device, constants=constants)
    return [unbatch_output(out, b) for b in range(batch)]


def _concat(features: Sequence[BackboneFeatures]) -> BackboneFeatures:
    """Batch-1 features of several frames as one batch (object axis)."""
    return BackboneFeatures(
        vision_feats=[torch.cat([f.vision_feats[i] for f in features], dim=1) for i in range(len(features[0].vision_feats))],
        vision_pos_embeds=[torch.cat([f.vision_pos_embeds[i] for f in features], dim=1)
                           for i in range(len(features[0].vision_pos_embeds))],
        feat_sizes=features[0].feat_sizes,
    )


def unbatch_output(out: FrameOutput, index: int) -> FrameOutput:
    """One object's share (batch entry ``index``) of a batched frame output."""
    part: FrameOutput = {}
    for name, value in out.items():
        if isinstance(value, torch.Tensor):
            part[name] = value[index : index + 1]
        elif isinstance(value, list):
            part[name] = [x[index : index + 1] for x in value]
        else:
            part[name] = value
    return part


def _shared_pos_enc(
    pos_enc: list[torch.Tensor] | None, constants: MutableMapping[str, Any] | None
) -> list[torch.Tensor] | None:
    """sam2's ``_get_maskmem_pos_enc``: the memory positional encoding is the same for every
    frame and object, so a session keeps one copy (one object's slice) and expands it."""
    if pos_enc is None:
        return None
    if constants is None:
        return pos_enc
    if "maskmem_pos_enc" not in constants:
        constants["maskmem_pos_enc"] = [x[0:1].clone() for x in pos_enc]
    batch = pos_enc[0].size(0)
    return [x.expand(batch, -1, -1, -1) for x in constants["maskmem_pos_enc"]]


__all__ = [
    "BackboneFeatures",
    "unbatch_output",
    "FrameOutput",
    "HeadsOutput",
    "MemoryDict",
    "TrackStep",
    "encode_images",
    "encode_memory_in_output",
    "forward_sam_heads",
    "prepare_backbone_features",
    "track_frame",
    "track_frame_batch",
    "track_step_parts",
    "use_multimask",
]
