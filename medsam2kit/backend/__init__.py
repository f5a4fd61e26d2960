"""The one adapter over ``sam2``: the only package of medsam2kit that imports ``sam2``.

Everything else in medsam2kit reaches sam2 through the small typed, keyword-only functions
exported here. Each private sam2 symbol used is named in :data:`PRIVATE_SAM2_SYMBOLS` and has a
conformance test (its parameter names, and a behavioural check against upstream on a small
random-init model), so a change in sam2 fails one named test instead of shifting arguments.

* :mod:`medsam2kit.backend.model`: the model class (sam2's video predictor with the fixes
  medsam2kit needs), its construction from a composed config, sam2's config folders.
* :mod:`medsam2kit.backend.tracking`: typed wrappers of sam2's per-frame steps (backbone features,
  SAM heads, memory encoder, one tracking step with the predicted IoU kept).
* :mod:`medsam2kit.backend.state`: sam2's inference state built in memory (exactly the keys of
  upstream ``init_state``) and the operations on it (prompts, preflight, per-object tracking,
  reset).
"""

from medsam2kit.backend.model import (
    PRIVATE_SAM2_SYMBOLS,
    SAM2Model,
    image_predictor,
    instantiate_model,
    sam2_config_dirs,
    sam2_version,
)
from medsam2kit.backend.state import (
    FeatureSource,
    InferenceState,
    add_mask,
    add_points_or_box,
    conditioning_outputs,
    earliest_conditioning_frame,
    new_inference_state,
    object_ids,
    preflight,
    reset_state,
    track_each,
    track_object,
    track_objects,
)
from medsam2kit.backend.tracking import (
    BackboneFeatures,
    FrameOutput,
    HeadsOutput,
    MemoryDict,
    TrackStep,
    encode_images,
    encode_memory_in_output,
    forward_sam_heads,
    prepare_backbone_features,
    track_frame,
    track_frame_batch,
    track_step_parts,
    unbatch_output,
    use_multimask,
)

__all__ = [
    "PRIVATE_SAM2_SYMBOLS",
    "BackboneFeatures",
    "FeatureSource",
    "FrameOutput",
    "HeadsOutput",
    "InferenceState",
    "MemoryDict",
    "SAM2Model",
    "TrackStep",
    "add_mask",
    "add_points_or_box",
    "conditioning_outputs",
    "earliest_conditioning_frame",
    "encode_images",
    "encode_memory_in_output",
    "forward_sam_heads",
    "image_predictor",
    "instantiate_model",
    "new_inference_state",
    "object_ids",
    "preflight",
    "prepare_backbone_features",
    "reset_state",
    "sam2_config_dirs",
    "sam2_version",
    "track_each",
    "track_frame",
    "track_frame_batch",
    "track_object",
    "track_objects",
    "track_step_parts",
    "unbatch_output",
    "use_multimask",
]
