"""sam2's model class as medsam2kit uses it, and how it is built.

:class:`SAM2Model` is sam2's ``SAM2VideoPredictor`` with four fixes, all inside this adapter:

1. ``_run_single_frame_inference`` runs sam2's tracking step through
   :func:`medsam2kit.backend.tracking.track_frame`, which keeps the predicted IoU of the output
   mask (upstream computes it and drops it) in the frame output under ``"pred_iou"``.
2. A forward pre-hook on the memory attention casts the memory to the query's dtype: upstream
   stores memory features in bf16, and an fp32 run without object pointers then crashes in
   memory attention (with pointers, ``torch.cat`` already promotes to fp32 and the cast is a no-op).
3. ``_clear_obj_non_cond_mem_around_input``: upstream 1.1.0 calls it when
   ``clear_non_cond_mem_around_input=True`` but never defines it (an ``AttributeError``); here it
   clears one object's non-conditioning memory around a prompted frame, as upstream's
   ``_clear_non_cond_mem_around_input`` does for all objects.
4. The memory attention's cross-attentions accept a key-padding mask
   (:mod:`medsam2kit.backend.attention`), so that objects with memories of different lengths
   can be tracked as one batch; without a mask they are sam2's own.

Image features come from the inference state's ``cached_features`` slot, which medsam2kit fills
with an encode-once view (see :func:`medsam2kit.backend.state.new_inference_state`); upstream's
own ``_get_image_feature`` reads it unchanged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path
from typing import Any

import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

#: Every private sam2 symbol the adapter uses, with the parameter names it expects (``self``
#: excluded). ``tests/test_backend.py`` checks each one against the installed sam2.
PRIVATE_SAM2_SYMBOLS: dict[str, tuple[str, ...]] = {
    "SAM2Base._prepare_backbone_features": ("backbone_out",),
    "SAM2Base._track_step": (
        "frame_idx", "is_init_cond_frame", "current_vision_feats", "current_vision_pos_embeds",
        "feat_sizes", "point_inputs", "mask_inputs", "output_dict", "num_frames",
        "track_in_reverse", "prev_sam_mask_logits",
    ),
    "SAM2Base._forward_sam_heads": (
        "backbone_features", "point_inputs", "mask_inputs", "high_res_features", "multimask_output",
    ),
    "SAM2Base._use_multimask": ("is_init_cond_frame", "point_inputs"),
    "SAM2Base._prepare_memory_conditioned_features": (
        "frame_idx", "is_init_cond_frame", "current_vision_feats", "current_vision_pos_embeds",
        "feat_sizes", "output_dict", "num_frames", "track_in_reverse",
    ),
    "SAM2Base._encode_memory_in_output": (
        "current_vision_feats", "feat_sizes", "point_inputs", "run_mem_encoder", "high_res_masks",
        "object_score_logits", "current_out",
    ),
    "SAM2VideoPredictor._get_image_feature": ("inference_state", "frame_idx", "batch_size"),
    "SAM2VideoPredictor._run_single_frame_inference": (
        "inference_state", "output_dict", "frame_idx", "batch_size", "is_init_cond_frame",
        "point_inputs", "mask_inputs", "reverse", "run_mem_encoder", "prev_sam_mask_logits",
    ),
    "SAM2VideoPredictor._clear_non_cond_mem_around_input": ("inference_state", "frame_idx"),
    "SAM2ImagePredictor._bb_feat_sizes": (),
    "RoPEAttention._separate_heads": ("x", "num_heads"),
    "RoPEAttention._recombine_heads": ("x",),
}


def sam2_version() -> str:
    """The installed sam2 distribution's version, e.g. ``"1.1.0"``."""
    try:
        return importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:  # an editable checkout without metadata
        return "unknown"


class SAM2Model(SAM2VideoPredictor):
    """sam2's video predictor model with medsam2kit's four fixes (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory_attention.register_forward_pre_hook(_cast_memory_to_query_dtype, with_kwargs=True)
        from medsam2kit.backend.attention import make_maskable

        make_maskable(self.memory_attention)  # a key-padding mask for batched tracking; no-op without one

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled (e.g. in a worker process): the cast hook is registered anew. Hook ids come
        from a per-process counter, so the pickled hook's id could be handed again to a hook
        registered here, and removing that one (as :mod:`medsam2kit.backend.tracking` does with
        its own) would remove the cast, and the next fp32 run would crash on bf16 memory."""
        super().__setstate__(state)
        hooks, with_kwargs = self.memory_attention._forward_pre_hooks, self.memory_attention._forward_pre_hooks_with_kwargs
        for key in [k for k, hook in hooks.items() if hook is _cast_memory_to_query_dtype]:
            del hooks[key]
            with_kwargs.pop(key, None)
        self.memory_attention.register_forward_pre_hook(_cast_memory_to_query_dtype, with_kwargs=True)

    def _run_single_frame_inference(
        self,
        inference_state: dict[str, Any],
        output_dict: dict[str, dict[int, Any]],
        frame_idx: int,
        batch_size: int,
        is_init_cond_frame: bool,
        point_inputs: dict[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        reverse: bool,
        run_mem_encoder: bool,
        prev_sam_mask_logits: torch.Tensor | None = None,
    ) -> tuple[dict[str, Any], torch.Tensor]:
        from medsam2kit.backend.tracking import BackboneFeatures, track_frame

        _, _, feats, pos, sizes = self._get_image_feature(inference_state, frame_idx, batch_size)
        return track_frame(
            self,
            features=BackboneFeatures(vision_feats=list(feats), vision_pos_embeds=list(pos), feat_sizes=list(sizes)),
            output_dict=output_dict,
            frame_idx=frame_idx,
            num_frames=inference_state["num_frames"],
            is_init_cond_frame=is_init_cond_frame,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
            storage_device=inference_state["storage_device"],
            constants=inference_state["constants"],
        )

    def _clear_obj_non_cond_mem_around_input(
        self, inference_state: dict[str, Any], frame_idx: int, obj_idx: int
    ) -> None:
        r = self.memory_temporal_stride_for_eval
        outputs = inference_state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        for t in range(frame_idx - r * self.num_maskmem, frame_idx + r * self.num_maskmem + 1):
            outputs.pop(t, None)


def _cast_memory_to_query_dtype(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    curr = kwargs.get("curr")
    if isinstance(curr, (list, tuple)):  # sam2 passes the current features as a one-item list
        curr = curr[0] if curr else None
    memory = kwargs.get("memory")
    if isinstance(curr, torch.Tensor) and isinstance(memory, torch.Tensor) and memory.dtype != curr.dtype:
        if not torch.is_autocast_enabled(curr.device.type):
            kwargs = dict(kwargs)
            kwargs["memory"] = memory.to(curr.dtype)
            pos = kwargs.get("memory_pos")
            if isinstance(pos, torch.Tensor):
                kwargs["memory_pos"] = pos.to(curr.dtype)
    return args, kwargs


#: The dotted ``_target_`` that makes hydra build :class:`SAM2Model`.
MODEL_TARGET = f"{__name__}.SAM2Model"


def instantiate_model(model_config: Any) -> SAM2Model:
    """Build :class:`SAM2Model` from a composed OmegaConf ``model`` node (random weights, CPU).

    The node's ``_target_`` is set to :data:`MODEL_TARGET`; hydra builds the sub-modules. Errors
    of the constructors propagate (the caller names the config).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(model_config, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"model config: expected a mapping, got {type(container).__name__}")
    model = instantiate({**container, "_target_": MODEL_TARGET}, _recursive_=True)
    if not isinstance(model, SAM2Model):  # pragma: no cover - hydra honours _target_
        raise TypeError(f"expected {MODEL_TARGET}, got {type(model).__name__}")
    return model


def sam2_config_dirs() -> list[Path]:
    """sam2's own config folders (SAM 2.1 first, then SAM 2.0, then the package root)."""
    root = Path(str(importlib.resources.files("sam2")))
    return [root / "configs" / "sam2.1", root / "configs" / "sam2", root]


def image_predictor(model: SAM2Model) -> Any:
    """Upstream ``SAM2ImagePredictor`` on ``model``, fixed for any ``image_size``.

    Upstream hard-codes the backbone feature sizes for 1024 px (``_bb_feat_sizes``); they are set
    from the model's size so that ``set_image`` works at 256 or 512 px too.
    """
    predictor = SAM2ImagePredictor(model)
    s = int(model.image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


__all__ = [
    "MODEL_TARGET",
    "PRIVATE_SAM2_SYMBOLS",
    "SAM2Model",
    "image_predictor",
    "instantiate_model",
    "sam2_config_dirs",
    "sam2_version",
]
