"""A thin, CUDA-ready SAM2 predictor: build, device/precision policy, encode-once cache, sessions.

What it adds to upstream ``sam2`` 1.1.0 (reached only through :mod:`medsam2kit.backend`):

* **Build** from a config name or path and an optional checkpoint (Meta's ``.pt`` or a bare
  state dict), loaded strictly with ``torch.load(weights_only=True)``; a mismatch lists the keys
  (:mod:`~medsam2kit.predictor.checkpoints`).
* **Device and precision policy**: ``device="auto"`` picks cuda, then mps, then cpu; bf16
  autocast on CUDA, fp32 elsewhere (:mod:`~medsam2kit.predictor.device`).
* **In-memory frames**: any object with ``len()`` and ``[t] -> (3, S, S)`` float32 (for example a
  :class:`medsam2kit.sequencer.FrameSequence`); no JPEG folder, no file written.
* **Encode-once feature cache**: every frame goes through the image encoder once per session,
  whatever the prompts, directions and resets, within a memory budget; it counts its encoder
  calls and seconds (:mod:`~medsam2kit.predictor.cache`).
* **Typed prompts and results** instead of sam2's raw state dict (:mod:`~medsam2kit.predictor.types`,
  :mod:`~medsam2kit.predictor.session`).

Example:
    >>> import torch
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    >>> frames = torch.zeros(4, 3, pred.image_size, pred.image_size)
    >>> session = pred.start(frames)
    >>> mask = torch.zeros(pred.image_size, pred.image_size, dtype=torch.bool)
    >>> mask[40:80, 40:80] = True
    >>> session.add_mask(1, mask, obj_id=1)
    >>> result = session.propagate("both")
    >>> result.logits().shape, session.encoder_calls
    (torch.Size([4, 1, 128, 128]), 4)
"""

from medsam2kit.predictor.cache import DEFAULT_CACHE_BUDGET_MB, CacheStats, FeatureCache, FrameSource
from medsam2kit.predictor.checkpoints import available_configs, build_model, load_checkpoint, resolve_config
from medsam2kit.predictor.device import PrecisionPolicy, precision_policy, resolve_device
from medsam2kit.predictor.session import SAM2Predictor, Session, fill_small_holes
from medsam2kit.predictor.types import Direction, MaskPrompt, PointPrompt, Prompt, PropagationResult

__all__ = [
    "DEFAULT_CACHE_BUDGET_MB",
    "CacheStats",
    "Direction",
    "FeatureCache",
    "FrameSource",
    "MaskPrompt",
    "PointPrompt",
    "PrecisionPolicy",
    "Prompt",
    "PropagationResult",
    "SAM2Predictor",
    "Session",
    "available_configs",
    "build_model",
    "fill_small_holes",
    "load_checkpoint",
    "precision_policy",
    "resolve_config",
    "resolve_device",
]
