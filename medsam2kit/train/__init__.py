"""Fine-tuning SAM2 on clips: task-specific, intermediate adaptation, multi-task joint training.

The pieces (each usable alone):

* :mod:`~medsam2kit.train.config`: the typed, frozen run configuration, read strictly from YAML;
  the three paradigms as presets.
* :mod:`~medsam2kit.train.data`: labelled videos (npz cines, DICOM + masks, frame folders,
  volumes as slice sequences, synthetic ultrasound clips), the stateless clip sampler (clip
  length, stride, short/long split, training-set fraction, weighted mixing), batching.
* :mod:`~medsam2kit.train.prompts`: SAM2's prompt simulation (mask, box, points + correction clicks).
* :mod:`~medsam2kit.train.loss`: SAM2's focal + dice + IoU + object-score loss (20/1/1/1).
* :mod:`~medsam2kit.train.forward`: the training forward pass on the model's own methods.
* :mod:`~medsam2kit.train.loop`: AdamW with a lower encoder rate, cosine schedule, clipping,
  accumulation, bf16 on CUDA, validation (Dice, J&F), checkpoints, records, plot.
* :mod:`~medsam2kit.train.distributed`: torchrun data parallelism (gloo on CPU, nccl on CUDA).
* :mod:`~medsam2kit.train.cli`: ``medsam2kit finetune CONFIG``.

Example:
    >>> from medsam2kit.train import preset, resolve_optim
    >>> cfg = preset("intermediate", **{"data.train": [{"kind": "synthetic"}],
    ...                                 "data.pool": [{"kind": "synthetic", "seed": 1}]})
    >>> cfg = resolve_optim(cfg.replace(**{"model.config": "sam2.1_hiera_t"}))  # SAM2's recipe for SAM2 models
    >>> cfg.optim.lr, cfg.optim.encoder_lr, cfg.optim.grad_clip
    (5e-06, 3e-06, 0.1)
"""

from __future__ import annotations

from medsam2kit.train.config import (
    PARADIGMS,
    DataConfig,
    DatasetSpec,
    LogConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PromptConfig,
    ScheduleConfig,
    Stage,
    TrainConfig,
    config_from_dict,
    load_config,
    plan_stages,
    preset,
    resolve_optim,
)
from medsam2kit.train.data import (
    Batch,
    Clip,
    ClipSampler,
    Video,
    collate,
    filter_duration,
    load_videos,
    make_video,
    phantom_volume_videos,
    synthetic_videos,
    take_fraction,
)
from medsam2kit.train.forward import ClipForward, forward_clips
from medsam2kit.train.loop import (
    FitResult,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    load_training_state,
    plot_curves,
    prepare_model,
    save_checkpoint,
)
from medsam2kit.train.loss import MultiStepLoss
from medsam2kit.train.prompts import PromptPlan, box_prompt, click_prompt, draw_plan

__all__ = [
    "PARADIGMS",
    "Batch",
    "Clip",
    "ClipForward",
    "ClipSampler",
    "DataConfig",
    "DatasetSpec",
    "FitResult",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "MultiStepLoss",
    "OptimConfig",
    "PromptConfig",
    "PromptPlan",
    "ScheduleConfig",
    "Stage",
    "TrainConfig",
    "Video",
    "box_prompt",
    "build_optimizer",
    "build_scheduler",
    "click_prompt",
    "collate",
    "config_from_dict",
    "draw_plan",
    "evaluate",
    "filter_duration",
    "fit",
    "forward_clips",
    "load_config",
    "load_training_state",
    "load_videos",
    "make_video",
    "plan_stages",
    "plot_curves",
    "prepare_model",
    "preset",
    "resolve_optim",
    "save_checkpoint",
    "phantom_volume_videos",
    "synthetic_videos",
    "take_fraction",
]
