"""sam2's inference state, built in memory, and the operations medsam2kit runs on it.

:func:`new_inference_state` returns a dict with exactly the keys of upstream ``init_state``
(tested), without reading a video from disk: ``images`` serves frames from a
:class:`FeatureSource` and ``cached_features`` is an encode-once view of the same source, which
upstream's ``_get_image_feature`` reads unchanged (it calls ``.get(frame_idx, (None, None))``).
The other functions are the steps of sam2's ``add_new_*``/``propagate_in_video`` API with
keyword arguments, plus typed read access to the results.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from medsam2kit.backend.model import SAM2Model
from medsam2kit.backend.tracking import BackboneFeatures, FrameOutput, track_frame_batch

#: sam2's inference state (a plain dict with upstream ``init_state``'s keys).
InferenceState = dict[str, Any]


class FeatureSource(Protocol):
    """What the state needs of medsam2kit's feature cache.

    ``image(t)`` is frame ``t`` as ``(1, 3, S, S)`` float32 on the model's device;
    ``features(t)`` returns ``(image_placeholder (1, 3, S, S), {"backbone_fpn": [...],
    "vision_pos_enc": [...]})`` with ``(1, C_l, H_l, W_l)`` tensors, encoding the frame if needed.
    """

    def __len__(self) -> int: ...

    def image(self, index: int) -> torch.Tensor: ...

    def features(self, index: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]: ...


class _Frames:
    """``images`` of the state: ``len()`` and ``[t] -> (3, S, S)`` from the feature source."""

    def __init__(self, source: FeatureSource) -> None:
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._source.image(index)[0]


class _CachedFeatures(Mapping[int, tuple[torch.Tensor, dict[str, list[torch.Tensor]]]]):
    """``cached_features`` of the state: every frame, encoded on first access by the source."""

    def __init__(self, source: FeatureSource) -> None:
        self._source = source

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        if not isinstance(index, int) or not 0 <= index < len(self._source):
            raise KeyError(index)
        return self._source.features(index)

    def __len__(self) -> int:
        return len(self._source)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._source)))


def new_inference_state(
    *,
    source: FeatureSource,
    video_size: tuple[int, int],
    device: torch.device,
    offload_state_to_cpu: bool = False,
) -> InferenceState:
    """sam2's inference state over in-memory frames (the keys of upstream ``init_state``).

    Args:
        source: frames and their encode-once features.
        video_size: ``(height, width)`` the outputs refer to; medsam2kit uses the model size.
        device: the compute device.
        offload_state_to_cpu: keep memory features on the CPU (sam2's option).
    """
    height, width = video_size
    return {
        "images": _Frames(source),
        "num_frames": len(source),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": offload_state_to_cpu,
        "video_height": int(height),
        "video_width": int(width),
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": _CachedFeatures(source),
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def add_mask(model: SAM2Model, state: InferenceState, *, frame_idx: int, obj_id: int, mask: torch.Tensor) -> None:
    """sam2's ``add_new_mask``: a ``(H, W)`` bool mask prompt for one object on one frame."""
    model.add_new_mask(inference_state=state, frame_idx=frame_idx, obj_id=obj_id, mask=mask)


def add_points_or_box(
    model: SAM2Model,
    state: InferenceState,
    *,
    frame_idx: int,
    obj_id: int,
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    box: torch.Tensor | None,
    clear_old_points: bool,
) -> None:
    """sam2's ``add_new_points_or_box`` with coordinates in pixels of the state's video size."""
    model.add_new_points_or_box(
        inference_state=state,
        frame_idx=frame_idx,
        obj_id=obj_id,
        points=points,
        labels=labels,
        clear_old_points=clear_old_points,
        normalize_coords=True,
        box=box,
    )


def preflight(model: SAM2Model, state: InferenceState) -> None:
    """sam2's ``propagate_in_video_preflight``: move the prompts' outputs into each object's
    memory (encoding their memory features)."""
    model.propagate_in_video_preflight(state)


def reset_state(model: SAM2Model, state: InferenceState) -> None:
    """sam2's ``reset_state``: remove every object, prompt and result (features stay)."""
    model.reset_state(state)


def object_ids(state: InferenceState) -> tuple[int, ...]:
    """The object ids of the state, in the order of sam2's object index."""
    return tuple(int(x) for x in state["obj_ids"])


def earliest_conditioning_frame(state: InferenceState) -> int:
    """The earliest prompted (conditioning) frame over all objects (after :func:`preflight`)."""
    frames = [t for outs in state["output_dict_per_obj"].values() for t in outs["cond_frame_outputs"]]
    if not frames:
        raise ValueError("state: no conditioning frame; add a prompt and run preflight first")
    return min(frames)


def conditioning_outputs(state: InferenceState) -> dict[int, dict[int, FrameOutput]]:
    """Per object id, the conditioning frame outputs ``{frame: output}`` (after :func:`preflight`)."""
    return {
        int(state["obj_idx_to_id"][idx]): dict(outs["cond_frame_outputs"])
        for idx, outs in state["output_dict_per_obj"].items()
    }


def track_object(model: SAM2Model, state: InferenceState, *, obj_idx: int, frame_idx: int, reverse: bool) -> FrameOutput:
    """One object on one frame, as the body of sam2's ``propagate_in_video`` (without its
    per-frame resize to the video size).

    A conditioning frame returns its stored output (and, when the model has
    ``clear_non_cond_mem_around_input``, clears that object's non-conditioning memory around it,
    as upstream intends); any other frame is tracked from memory and stored as non-conditioning.
    """
    outs = state["output_dict_per_obj"][obj_idx]
    out: FrameOutput | None = outs["cond_frame_outputs"].get(frame_idx)
    if out is not None:
        if model.clear_non_cond_mem_around_input:
            model._clear_obj_non_cond_mem_around_input(state, frame_idx, obj_idx)
    else:
        out, _ = model._run_single_frame_inference(
            inference_state=state,
            output_dict=outs,
            frame_idx=frame_idx,
            batch_size=1,
            is_init_cond_frame=False,
            point_inputs=None,
            mask_inputs=None,
            reverse=reverse,
            run_mem_encoder=True,
        )
        outs["non_cond_frame_outputs"][frame_idx] = out
    state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
    return out


def track_objects(
    model: SAM2Model,
    state: InferenceState,
    *,
    obj_indices: Sequence[int],
    frame_idx: int,
    reverse: bool,
    max_batch: int,
) -> dict[int, FrameOutput]:
    """Several objects on one frame, batched: :func:`track_object` for each, computed together.

    Objects on their conditioning frames return their stored outputs (as :func:`track_object`).
    The others (at most ``max_batch`` per step) run one tracking step over the object batch
    (:func:`medsam2kit.backend.tracking.track_frame_batch`): the frame's image features are
    expanded (not copied), memories of different lengths are padded and masked, and memory
    attention, the mask decoder and the memory encoder run once. Each object's output is stored
    in its own memory, exactly where the per-object step stores it; results equal
    :func:`track_object`'s within float rounding. With ``non_overlap_masks_for_mem_enc`` (which
    couples the objects of a batch in sam2's memory encoder) or without memory (``num_maskmem``
    0) every object is tracked alone.

    Returns:
        Per object index, its frame output.
    """
    return track_each(model, state, frames={o: frame_idx for o in obj_indices}, reverse=reverse, max_batch=max_batch)


def track_each(
    model: SAM2Model,
    state: InferenceState,
    *,
    frames: Mapping[int, int],
    reverse: bool,
    max_batch: int,
) -> dict[int, FrameOutput]:
    """Each object on its own frame (``frames``: object index -> frame), batched as
    :func:`track_objects` does; objects on different frames use each their frame's features
    (independent tracks advancing together, e.g. one per prompt slice).

    Returns:
        Per object index, its frame output.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
    results: dict[int, FrameOutput] = {}
    todo: list[int] = []
    for o, t in frames.items():
        alone = model.non_overlap_masks_for_mem_enc or model.num_maskmem == 0  # coupled, or no memory
        if t in state["output_dict_per_obj"][o]["cond_frame_outputs"] or alone:
            results[o] = track_object(model, state, obj_idx=o, frame_idx=t, reverse=reverse)
        else:
            todo.append(o)
    if len(todo) == 1 or max_batch == 1:
        for o in todo:
            results[o] = track_object(model, state, obj_idx=o, frame_idx=frames[o], reverse=reverse)
        return results
    features: dict[int, BackboneFeatures] = {}
    for t in sorted({frames[o] for o in todo}):
        _, _, feats, pos, sizes = model._get_image_feature(state, t, 1)
        features[t] = BackboneFeatures(vision_feats=list(feats), vision_pos_embeds=list(pos), feat_sizes=list(sizes))
    for start in range(0, len(todo), max_batch):
        chunk = todo[start : start + max_batch]
        at = [frames[o] for o in chunk]
        outs = track_frame_batch(
            model,
            features=features[at[0]] if len(set(at)) == 1 else [features[t] for t in at],
            memories=[state["output_dict_per_obj"][o] for o in chunk],
            frame_idx=at[0] if len(set(at)) == 1 else at,
            num_frames=state["num_frames"],
            reverse=reverse,
            storage_device=state["storage_device"],
            constants=state["constants"],
        )
        for o, t, out in zip(chunk, at, outs):
            state["output_dict_per_obj"][o]["non_cond_frame_outputs"][t] = out
            state["frames_tracked_per_obj"][o][t] = {"reverse": reverse}
            results[o] = out
    return results


__all__ = [
    "FeatureSource",
    "InferenceState",
    "add_mask",
    "add_points_or_box",
    "conditioning_outputs",
    "earliest_conditioning_frame",
    "new_inference_state",
    "object_ids",
    "preflight",
    "reset_state",
    "track_object",
    "track_each",
    "track_objects",
]
