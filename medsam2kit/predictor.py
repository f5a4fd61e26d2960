"""A thin, CUDA-ready wrapper over `sam2`'s video predictor (the only module that imports sam2).

What it adds to upstream ``sam2`` 1.1.0:

* **Build** from a config name or path and an optional checkpoint (Meta's ``.pt`` or a bare
  state dict), loaded with ``torch.load(weights_only=True)``; a mismatch lists the keys.
* **Device and precision policy**: ``device="auto"`` picks cuda, then mps, then cpu; bf16
  autocast on CUDA, fp32 elsewhere (bf16 autocast on CPU is ~11x slower).
* **In-memory frames**: any object with ``len()`` and ``[t] -> (3, S, S)`` float32 (for example a
  :class:`medsam2kit.sequencer.SliceSequence`); no JPEG folder, no file written.
* **Encode-once feature cache**: every frame goes through the image encoder once per session,
  whatever the prompts, directions and resets, within a memory budget (frames beyond it are
  recomputed, never an error). The positional encodings are the same for every frame and are
  stored once.
* **Typed prompts and results** instead of sam2's raw state dict.

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

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sam2.sam2_video_predictor import SAM2VideoPredictor
from scipy import ndimage

from medsam2kit._files import load_torch
from medsam2kit.errors import (
    CheckpointError,
    ConfigError,
    DeviceError,
    InvalidInputError,
    InvalidTypeError,
    ShapeMismatchError,
)

Direction = Literal["forward", "reverse", "both"]

#: Default memory budget of the per-session encoder feature cache (MiB).
DEFAULT_CACHE_BUDGET_MB = 4096

#: sam2's post-processing for video prediction (as in ``sam2.build_sam.build_sam2_video_predictor``),
#: except ``fill_hole_area``, which needs sam2's optional ``_C`` CUDA extension: we set it to 0 in
#: the model and fill holes with scipy on the outputs instead (see :func:`fill_small_holes`).
_VIDEO_POSTPROCESSING: dict[str, Any] = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 0,
}


class FrameSource(Protocol):
    """What the predictor needs of a frame sequence: ``len()`` and ``[t] -> (3, S, S)`` float32.

    Frames are already resized to the model's square size ``S`` and ImageNet-normalised, as sam2
    expects. A ``(T, 3, S, S)`` float tensor satisfies this protocol, and so does
    :class:`medsam2kit.sequencer.SliceSequence`, which stores uint8 frames and normalises on access.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> torch.Tensor: ...


# --------------------------------------------------------------------------------------------
# Device and precision policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionPolicy:
    """Where and in which precision the model runs.

    Attributes:
        device: the torch device of the model and its computations.
        autocast_dtype: ``torch.bfloat16`` on CUDA (sam2's recommended setting), ``None`` (plain
            fp32) on CPU and MPS.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for model calls (a no-op context when running in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` (cuda, then mps, then cpu) or an explicit name into an available device.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device: expected 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device: 'mps' was requested but torch.backends.mps.is_available() is False")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device: expected a cpu, cuda or mps device, got {dev}")
    return dev


def precision_policy(device: torch.device) -> PrecisionPolicy:
    """bf16 autocast on CUDA, fp32 on CPU and MPS.

    Example:
        >>> precision_policy(torch.device("cpu")).autocast_dtype is None
        True
    """
    return PrecisionPolicy(device=device, autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)


# --------------------------------------------------------------------------------------------
# Config and checkpoint
# --------------------------------------------------------------------------------------------


def _config_dirs() -> list[Path]:
    own = Path(str(importlib.resources.files("medsam2kit") / "configs"))
    sam2_root = Path(str(importlib.resources.files("sam2")))
    return [own, sam2_root / "configs" / "sam2.1", sam2_root / "configs" / "sam2", sam2_root]


def available_configs() -> list[str]:
    """Names of the configs that :func:`build_model` finds without a path.

    Example:
        >>> "sam2.1_hiera_t" in available_configs()
        True
    """
    names = {p.stem for d in _config_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def resolve_config(config: str | Path) -> Path:
    """Find a SAM2 config: an existing YAML path, or a name such as ``"sam2.1_hiera_t"``,
    ``"sam2.1_hiera_t.yaml"``, ``"configs/sam2.1/sam2.1_hiera_t.yaml"`` (sam2's own spelling) or
    ``"sam2.1_hiera_micro"`` (shipped with medsam2kit).

    Example:
        >>> resolve_config("configs/sam2.1/sam2.1_hiera_t.yaml").name
        'sam2.1_hiera_t.yaml'
    """
    path = Path(config)
    if path.is_file():
        return path
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    for folder in _config_dirs():
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config: no file or known SAM2 config named {str(config)!r}; "
        f"expected a YAML path or one of {available_configs()}"
    )


def _compose_config(config: str | Path, overrides: Mapping[str, Any]) -> Any:
    from omegaconf import OmegaConf

    path = resolve_config(config)
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # omegaconf raises several yaml/parse errors
        raise ConfigError(f"config: could not parse {path}: {err}") from err
    if "model" not in cfg:
        raise ConfigError(f"config: {path} has no top-level 'model' entry (is it a SAM2 model config?)")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def _image_size_overrides(image_size: int) -> dict[str, Any]:
    if image_size <= 0 or image_size % 32 != 0:
        # Hiera downsamples by 32 and the memory attention works on image_size/16 tokens.
        raise InvalidInputError(f"image_size: expected a positive multiple of 32, got {image_size}")
    feat = image_size // 16
    return {
        "model.image_size": image_size,
        "model.memory_attention.layer.self_attention.feat_sizes": [feat, feat],
        "model.memory_attention.layer.cross_attention.feat_sizes": [feat, feat],
    }


def load_checkpoint(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load a SAM2 checkpoint (``{"model": state_dict}`` as Meta releases it, or a bare state dict).

    Uses ``torch.load(weights_only=True)``. Raises :class:`CheckpointError` listing missing and
    unexpected keys when the checkpoint does not fit the model (nothing is loaded then).

    Example:
        >>> import tempfile, os
        >>> m = torch.nn.Linear(2, 2)
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"model": m.state_dict()}, p)
        >>> load_checkpoint(m, p)
    """
    path = Path(checkpoint)
    obj = load_torch(path, what="torch checkpoint", name="checkpoint")
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint: {path} holds neither {{'model': state_dict}} nor a state dict of tensors"
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:

        def show(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:8]}{' ...' if len(keys) > 8 else ''}"

        raise CheckpointError(
            f"checkpoint: {path} does not match the model config: missing keys {show(missing)}; "
            f"unexpected keys {show(unexpected)}; shape mismatches {show(wrong_shape)}"
        )
    model.load_state_dict(state, strict=True)


class MedSAM2VideoPredictor(SAM2VideoPredictor):
    """sam2's video predictor with three hooks, each a workaround of an upstream limit.

    1. ``_get_image_feature`` consults the session's :class:`FeatureCache` (upstream caches one
       frame, so bidirectional and repeated propagation re-encode every frame).
    2. ``_forward_sam_heads`` remembers the predicted IoU of the chosen mask, which upstream
       computes and then drops; ``_run_single_frame_inference`` stores it in the frame output.
    3. A forward pre-hook on the memory attention casts the memory to the query's dtype:
       upstream stores memory features in bf16, and in an fp32 run without object pointers the
       bf16 memory reaches fp32 linear layers and crashes (with pointers, torch.cat already
       promotes to fp32, so the cast is a no-op and results equal upstream's).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._last_pred_iou: torch.Tensor | None = None
        self.memory_attention.register_forward_pre_hook(_cast_memory_to_query_dtype, with_kwargs=True)

    def _get_image_feature(self, inference_state: dict[str, Any], frame_idx: int, batch_size: int) -> Any:
        cache: FeatureCache | None = inference_state.get("medsam2kit_cache")
        if cache is None:
            return super()._get_image_feature(inference_state, frame_idx, batch_size)
        image, backbone_out = cache.features(frame_idx)
        expanded = {
            "backbone_fpn": [f.expand(batch_size, -1, -1, -1) for f in backbone_out["backbone_fpn"]],
            "vision_pos_enc": [p.expand(batch_size, -1, -1, -1) for p in backbone_out["vision_pos_enc"]],
        }
        features = self._prepare_backbone_features(expanded)
        return (image.expand(batch_size, -1, -1, -1), *features)

    def _forward_sam_heads(self, *args: Any, **kwargs: Any) -> Any:
        out = super()._forward_sam_heads(*args, **kwargs)
        # With multimask output the head returns the mask of the highest predicted IoU; with
        # single-mask output there is one column: max() covers both.
        self._last_pred_iou = out[2].float().max(dim=-1).values
        return out

    def _run_single_frame_inference(self, *args: Any, **kwargs: Any) -> Any:
        self._last_pred_iou = None
        compact, pred_masks = super()._run_single_frame_inference(*args, **kwargs)
        if kwargs.get("mask_inputs") is not None and self.use_mask_input_as_output_without_sam:
            compact["pred_iou"] = torch.ones(pred_masks.shape[0], device=pred_masks.device)  # the prompt is the output
        else:
            compact["pred_iou"] = self._last_pred_iou
        return compact, pred_masks


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


def build_model(
    config: str | Path,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> MedSAM2VideoPredictor:
    """Build sam2's video predictor model (real sam2 classes) from a config and a checkpoint.

    Args:
        config: a YAML path or a config name (see :func:`resolve_config`).
        checkpoint: ``sam2.1_hiera_*.pt`` as released by Meta, a ``{"model": state_dict}`` file
            written by :mod:`medsam2kit.train`, or ``None`` for random initialisation.
        device: ``"auto"`` (cuda, then mps, then cpu) or an explicit device.
        image_size: the model's square input size; changes the memory-attention feature sizes
            with it. ``None`` keeps the config's (1024 for Meta's configs).
        overrides: dotted config keys to set, e.g. ``{"model.num_maskmem": 5}``; applied last.

    Returns:
        The model in eval mode on ``device`` (weights in fp32).

    Example:
        >>> m = build_model("sam2.1_hiera_micro", device="cpu")
        >>> m.image_size
        128
    """
    dev = resolve_device(device)
    all_overrides: dict[str, Any] = {"model._target_": f"{__name__}.MedSAM2VideoPredictor", **_VIDEO_POSTPROCESSING}
    if image_size is not None:
        all_overrides.update(_image_size_overrides(int(image_size)))
    all_overrides.update(overrides or {})
    cfg = _compose_config(config, all_overrides)
    from hydra.utils import instantiate

    try:
        model = instantiate(cfg.model, _recursive_=True)
    except Exception as err:  # hydra wraps constructor errors in its own types
        raise ConfigError(f"config: could not build a SAM2 model from {config}: {err}") from err
    if not isinstance(model, MedSAM2VideoPredictor):
        raise ConfigError(f"config: model._target_ must stay {__name__}.MedSAM2VideoPredictor, got {type(model)}")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.to(dev).eval()


# --------------------------------------------------------------------------------------------
# Encode-once feature cache
# --------------------------------------------------------------------------------------------


@dataclass
class CacheStats:
    """Counters of one session's feature cache (mutable: it counts as the session runs)."""

    encoder_calls: int = 0
    hits: int = 0
    stored_frames: int = 0
    stored_bytes: int = 0


class FeatureCache:
    """Image-encoder outputs of a frame source, each frame encoded once within a byte budget.

    Frames are stored in ``storage_dtype`` (default: the dtype the encoder produced, which makes
    cached results bitwise equal to recomputed ones; ``torch.bfloat16`` halves the memory). The
    positional encodings depend only on the feature shape and are stored once. When the budget
    is full, further frames are not stored; they are recomputed on each visit (the most recent
    one is kept, as upstream does, so a frame visited twice in a row is encoded once).
    """

    def __init__(
        self,
        frames: FrameSource,
        encode: Callable[[torch.Tensor], dict[str, Any]],
        *,
        device: torch.device,
        budget_bytes: int,
        storage_dtype: torch.dtype | None = None,
    ) -> None:
        self._frames = frames
        self._encode = encode
        self._device = device
        self._budget = int(budget_bytes)
        self._storage_dtype = storage_dtype
        self._store: dict[int, list[torch.Tensor]] = {}
        self._recent: tuple[int, list[torch.Tensor]] | None = None
        self._pos_enc: list[torch.Tensor] | None = None
        self._dtype: torch.dtype | None = None
        size = frames[0].shape[-1]
        self._placeholder = torch.zeros((), device=device).expand(1, 3, size, size)
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._frames)

    def image(self, index: int) -> torch.Tensor:
        """Frame ``index`` as a ``(1, 3, S, S)`` float32 tensor on the model's device."""
        return self._frames[index].to(self._device).float().unsqueeze(0)

    def features(self, index: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """A placeholder image and the backbone output ``{"backbone_fpn", "vision_pos_enc"}`` of a frame."""
        if not 0 <= index < len(self._frames):
            raise InvalidInputError(f"frame index: expected 0 <= index < {len(self._frames)}, got {index}")
        stored = self._store.get(index)
        if stored is None and self._recent is not None and self._recent[0] == index:
            stored = self._recent[1]
        if stored is not None:
            self.stats.hits += 1
            fpn = [t.to(self._dtype) if self._dtype is not None else t for t in stored]
        else:
            out = self._encode(self.image(index))
            self.stats.encoder_calls += 1
            fpn = list(out["backbone_fpn"])
            if self._pos_enc is None:
                self._pos_enc = list(out["vision_pos_enc"])
                self._dtype = fpn[0].dtype
            self._keep(index, fpn)
        assert self._pos_enc is not None  # set on the first encoder call
        # sam2's callers of _get_image_feature ignore the image it returns; a zero-stride view of
        # the right shape avoids normalising the frame again on every visit.
        return self._placeholder, {"backbone_fpn": fpn, "vision_pos_enc": self._pos_enc}

    def _keep(self, index: int, fpn: list[torch.Tensor]) -> None:
        stored = [t.to(self._storage_dtype) if self._storage_dtype is not None else t for t in fpn]
        size = sum(t.numel() * t.element_size() for t in stored)
        if self.stats.stored_bytes + size <= self._budget:
            self._store[index] = stored
            self.stats.stored_frames += 1
            self.stats.stored_bytes += size
        else:
            self._recent = (index, stored)

    def fill(self, *, batch_size: int = 1, indices: Sequence[int] | None = None) -> None:
        """Encode the frames not yet stored (all, or ``indices``), ``batch_size`` per encoder call.

        Batched encoding is faster on a GPU; batch 1 equals the lazy path bitwise.
        """
        wanted = range(len(self._frames)) if indices is None else sorted(set(indices))
        todo = [t for t in wanted if t not in self._store]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            if self.stats.stored_bytes >= self._budget:
                return
            images = torch.cat([self.image(t) for t in chunk])
            out = self._encode(images)
            self.stats.encoder_calls += len(chunk)
            if self._pos_enc is None:
                self._pos_enc = [p[:1] for p in out["vision_pos_enc"]]
                self._dtype = out["backbone_fpn"][0].dtype
            for i, t in enumerate(chunk):
                self._keep(t, [f[i : i + 1] for f in out["backbone_fpn"]])


# --------------------------------------------------------------------------------------------
# Prompts and results
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Predictor and session
# --------------------------------------------------------------------------------------------


class SAM2Predictor:
    """One SAM2 model with its device/precision policy; opens :class:`Session` objects on frames.

    Args:
        model: a model from :func:`build_model`.
        cache_budget_mb: memory budget of each session's encoder-feature cache.
        cache_dtype: storage dtype of cached features (``None``: as produced, exact).
        fill_hole_area: fill background holes of at most this many low-res pixels in the output
            masks (sam2's post-processing, done with scipy because upstream needs its CUDA
            extension); 0 disables.
        encode_batch_size: frames per image-encoder call when a propagation starts (the frames
            it will visit are encoded up front, within the cache budget); default 8 on CUDA,
            1 (lazy, frame by frame) elsewhere.

    Example:
        >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
        >>> pred.policy.autocast_dtype is None
        True
    """

    def __init__(
        self,
        model: MedSAM2VideoPredictor,
        *,
        cache_budget_mb: float = DEFAULT_CACHE_BUDGET_MB,
        cache_dtype: torch.dtype | None = None,
        fill_hole_area: int = 0,
        encode_batch_size: int | None = None,
    ) -> None:
        if not hasattr(model, "track_step") or not hasattr(model, "init_state"):
            raise InvalidTypeError(
                f"model: expected a sam2 video predictor from build_model(), got {type(model).__name__}"
            )
        if cache_budget_mb < 0:
            raise InvalidInputError(f"cache_budget_mb: expected >= 0, got {cache_budget_mb}")
        if fill_hole_area < 0:
            raise InvalidInputError(f"fill_hole_area: expected >= 0, got {fill_hole_area}")
        self.model = model
        self.policy = precision_policy(next(model.parameters()).device)
        self.cache_budget_bytes = int(cache_budget_mb * 2**20)
        self.cache_dtype = cache_dtype
        self.fill_hole_area = int(fill_hole_area)
        if encode_batch_size is not None and encode_batch_size < 1:
            raise InvalidInputError(f"encode_batch_size: expected >= 1 or None, got {encode_batch_size}")
        # batching the encoder pays on a GPU; on CPU frames are encoded one by one, lazily
        self.encode_batch_size = encode_batch_size or (8 if self.policy.device.type == "cuda" else 1)

    @classmethod
    def from_config(
        cls,
        config: str | Path,
        checkpoint: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        image_size: int | None = None,
        overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> SAM2Predictor:
        """Build the model (see :func:`build_model`) and wrap it.

        Example:
            >>> SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu").image_size
            128
        """
        model = build_model(config, checkpoint, device=device, image_size=image_size, overrides=overrides)
        return cls(model, **kwargs)

    @property
    def image_size(self) -> int:
        """The model's square input size ``S``."""
        return int(self.model.image_size)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def encode(self, images: torch.Tensor) -> dict[str, Any]:
        """Run the image encoder on ``(B, 3, S, S)`` normalised frames (under the precision policy)."""
        with torch.inference_mode(), self.policy.autocast():
            out: dict[str, Any] = self.model.forward_image(images)
        return out

    def start(self, frames: FrameSource) -> Session:
        """Open a session (sam2's inference state, built in memory) on ``frames``.

        Args:
            frames: ``len()`` and ``[t] -> (3, S, S)`` float32 normalised frames, ``S`` = ``image_size``.
        """
        return Session(self, frames)

    @torch.inference_mode()
    def predict_slices(
        self,
        frames: FrameSource,
        prompts: Sequence[Prompt],
        *,
        batch_size: int = 8,
    ) -> PropagationResult:
        """Independent per-frame prediction (SAM2 as an image model, no memory) for many frames.

        The image encoder runs in batches of ``batch_size``; every prompted frame is encoded once.
        Works at any model size (unlike upstream ``SAM2ImagePredictor``, whose feature sizes are
        hard-coded for 1024 px). Each prompt is decoded as sam2 does on an initial conditioning
        frame, so the logits equal the video predictor's output on a freshly prompted frame.

        Returns:
            A :class:`PropagationResult` over all frames; only prompted frames are visited.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size: expected >= 1, got {batch_size}")
        num_frames = _check_frames(frames, self.image_size)
        obj_ids = tuple(sorted({p.obj_id for p in prompts}))
        s4 = self.image_size // 4
        result = _empty_result(num_frames, len(obj_ids), s4)
        cache = FeatureCache(
            frames, self.encode, device=self.device, budget_bytes=self.cache_budget_bytes, storage_dtype=self.cache_dtype
        )
        frames_needed = sorted({_check_frame_index(p.frame, num_frames) for p in prompts})
        with self.policy.autocast():
            cache.fill(batch_size=batch_size, indices=frames_needed)  # within the cache budget
            for t in frames_needed:
                _, backbone = cache.features(t)
                _, feats, pos, sizes = self.model._prepare_backbone_features(backbone)
                for p in prompts:
                    if p.frame != t:
                        continue
                    point_inputs, mask_inputs = _prompt_inputs(p, self.image_size, self.device)
                    out = self.model.track_step(
                        frame_idx=t,
                        is_init_cond_frame=True,
                        current_vision_feats=feats,
                        current_vision_pos_embeds=pos,
                        feat_sizes=sizes,
                        point_inputs=point_inputs,
                        mask_inputs=mask_inputs,
                        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                        num_frames=num_frames,
                        run_mem_encoder=False,
                    )
                    o = obj_ids.index(p.obj_id)
                    iou = self.model._last_pred_iou
                    if mask_inputs is not None and self.model.use_mask_input_as_output_without_sam:
                        iou = torch.ones(1)
                    _store(result, t, o, out["pred_masks"][0, 0], out["object_score_logits"].reshape(-1)[0], iou)
        return self._finish(result, obj_ids)

    def _finish(self, raw: dict[str, torch.Tensor], obj_ids: tuple[int, ...]) -> PropagationResult:
        logits = raw["logits"]
        if self.fill_hole_area > 0:
            logits = fill_small_holes(logits, self.fill_hole_area)
        return PropagationResult(
            obj_ids=obj_ids,
            low_res_logits=logits,
            object_scores=raw["scores"],
            ious=raw["ious"],
            visited=raw["visited"],
            image_size=self.image_size,
        )

    def image_predictor(self) -> Any:
        """Upstream ``SAM2ImagePredictor`` on this model, fixed for any ``image_size``.

        Upstream hard-codes the backbone feature sizes for 1024 px (``_bb_feat_sizes``); we set
        them from the model's size so that ``set_image`` works at 256 or 512 px too.
        """
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        ip = SAM2ImagePredictor(self.model)
        s = self.image_size
        ip._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        return ip


class Session:
    """Prompts and propagation on one frame sequence; wraps sam2's inference state.

    The encoder-feature cache lives as long as the session: :meth:`reset` clears prompts and
    tracking results but keeps the features, so propagating again (after a correction, or from
    other prompts) encodes nothing.
    """

    def __init__(self, predictor: SAM2Predictor, frames: FrameSource) -> None:
        self.predictor = predictor
        model = predictor.model
        self.num_frames = _check_frames(frames, predictor.image_size)
        self.cache = FeatureCache(
            frames,
            predictor.encode,
            device=predictor.device,
            budget_bytes=predictor.cache_budget_bytes,
            storage_dtype=predictor.cache_dtype,
        )
        s = predictor.image_size
        # The same keys as sam2's init_state, without loading a video from disk.
        self.state: dict[str, Any] = {
            "images": _FrameList(self.cache),
            "num_frames": self.num_frames,
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            "video_height": s,
            "video_width": s,
            "device": predictor.device,
            "storage_device": predictor.device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": {},
            "obj_idx_to_id": {},
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            "medsam2kit_cache": self.cache,
        }
        self._model: MedSAM2VideoPredictor = model

    @property
    def encoder_calls(self) -> int:
        """How many frames the image encoder has processed in this session."""
        return self.cache.stats.encoder_calls

    @property
    def obj_ids(self) -> tuple[int, ...]:
        return tuple(self.state["obj_ids"])

    def encode_all(self, *, batch_size: int = 1) -> None:
        """Fill the feature cache for every frame up front (batched; useful on a GPU)."""
        if batch_size < 1:
            raise InvalidInputError(f"batch_size: expected >= 1, got {batch_size}")
        self.cache.fill(batch_size=batch_size)

    def add_mask(self, frame: int, mask: torch.Tensor | np.ndarray, *, obj_id: int = 1) -> None:
        """Add a mask prompt: ``mask`` ``(S, S)`` bool (any 2D size is resized by sam2)."""
        self.add(MaskPrompt(frame=frame, mask=torch.as_tensor(mask), obj_id=obj_id))

    def add_points(
        self,
        frame: int,
        points: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
        labels: torch.Tensor | np.ndarray | Sequence[int],
        *,
        obj_id: int = 1,
        clear: bool = True,
    ) -> None:
        """Add clicks ``(N, 2)`` ``(x, y)`` in model pixels with labels ``(N,)`` (1 fg, 0 bg)."""
        self.add(
            PointPrompt(
                frame=frame,
                points=torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2),
                labels=torch.as_tensor(labels, dtype=torch.int32).reshape(-1),
                obj_id=obj_id,
                clear=clear,
            )
        )

    def add_box(
        self, frame: int, box: torch.Tensor | np.ndarray | Sequence[float], *, obj_id: int = 1
    ) -> None:
        """Add a box ``(x0, y0, x1, y1)`` in model pixels."""
        self.add(
            PointPrompt(
                frame=frame,
                points=torch.zeros(0, 2),
                labels=torch.zeros(0, dtype=torch.int32),
                obj_id=obj_id,
                box=torch.as_tensor(box, dtype=torch.float32).reshape(4),
            )
        )

    def add(self, prompt: Prompt) -> None:
        """Add one typed prompt (see :class:`MaskPrompt`, :class:`PointPrompt`)."""
        frame = _check_frame_index(prompt.frame, self.num_frames)
        with self.predictor.policy.autocast():
            if isinstance(prompt, MaskPrompt):
                mask = _check_mask(prompt.mask)
                self._model.add_new_mask(self.state, frame, prompt.obj_id, mask)
            elif isinstance(prompt, PointPrompt):
                _check_points(prompt, self.predictor.image_size)
                self._model.add_new_points_or_box(
                    self.state,
                    frame,
                    prompt.obj_id,
                    points=prompt.points if prompt.points.numel() else None,
                    labels=prompt.labels if prompt.labels.numel() else None,
                    clear_old_points=prompt.clear,
                    normalize_coords=True,  # divides by the "video" size S; sam2 then scales by S
                    box=prompt.box,
                )
            else:
                raise InvalidTypeError(f"prompt: expected MaskPrompt or PointPrompt, got {type(prompt).__name__}")

    def propagate(
        self,
        direction: Direction = "both",
        *,
        start: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> PropagationResult:
        """Propagate all prompts through the sequence.

        Args:
            direction: ``"forward"`` (from ``start`` to the last frame), ``"reverse"`` (to frame 0)
                or ``"both"`` (forward, then reverse), as sam2's ``propagate_in_video``.
            start: the first frame; default the earliest prompted frame (every prompted frame is
                a conditioning frame the memory attends to, whichever direction).
            progress: called as ``progress(frames_done, frames_total)`` after each frame.

        Returns:
            A :class:`PropagationResult`; the reverse pass's output wins on the start frame.
        """
        if direction not in ("forward", "reverse", "both"):
            raise InvalidInputError(f"direction: expected 'forward', 'reverse' or 'both', got {direction!r}")
        if not self.state["obj_ids"]:
            raise InvalidInputError("propagate: no prompt was added; add a mask, points or a box first")
        if start is not None:
            _check_frame_index(start, self.num_frames)
        obj_ids = self.obj_ids
        raw = _empty_result(self.num_frames, len(obj_ids), self.predictor.image_size // 4)
        with torch.inference_mode(), self.predictor.policy.autocast():
            self._model.propagate_in_video_preflight(self.state)
            first = start if start is not None else min(
                t for outs in self.state["output_dict_per_obj"].values() for t in outs["cond_frame_outputs"]
            )
            orders = {
                "forward": [(False, range(first, self.num_frames))],
                # sam2 skips the reverse pass when it would start at frame 0
                "reverse": [(True, range(first, -1, -1) if first > 0 else range(0))],
            }
            passes = orders["forward"] + orders["reverse"] if direction == "both" else orders[direction]
            if self.predictor.encode_batch_size > 1:
                self.cache.fill(batch_size=self.predictor.encode_batch_size,
                                indices=[t for _, order in passes for t in order])
            total, done = sum(len(order) for _, order in passes), 0
            for reverse, order in passes:
                for frame_idx in order:
                    for o in range(len(obj_ids)):
                        out = self._track(o, frame_idx, reverse)
                        _store(raw, frame_idx, o, out["pred_masks"][0, 0],
                               out["object_score_logits"].reshape(-1)[0], out.get("pred_iou"))
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return self.predictor._finish(raw, obj_ids)

    def _track(self, obj_idx: int, frame_idx: int, reverse: bool) -> dict[str, Any]:
        """One object on one frame, as the body of sam2's ``propagate_in_video`` (without its
        per-frame resize to the video size, which we leave to the caller)."""
        outs = self.state["output_dict_per_obj"][obj_idx]
        out: dict[str, Any] | None = outs["cond_frame_outputs"].get(frame_idx)
        if out is None:
            out = track_frame(self._model, self.state, outs, frame_idx, reverse=reverse)
            outs["non_cond_frame_outputs"][frame_idx] = out
        self.state["frames_tracked_per_obj"][obj_idx][frame_idx] = {"reverse": reverse}
        return out

    def reset(self) -> None:
        """Remove all prompts and results; keep the encoded features."""
        self._model.reset_state(self.state)


def track_frame(
    model: MedSAM2VideoPredictor,
    state: dict[str, Any],
    output_dict: dict[str, dict[int, Any]],
    frame_idx: int,
    *,
    reverse: bool = False,
) -> dict[str, Any]:
    """Track one object on one unprompted frame from the memories in ``output_dict``.

    sam2's per-frame step (memory attention, mask decoder, memory encoder) as its video
    predictor runs it; ``output_dict`` holds ``cond_frame_outputs`` and ``non_cond_frame_outputs``
    keyed by frame index. Returns the compact frame output (memory, pointer, logits, scores).
    """
    out, _ = model._run_single_frame_inference(
        inference_state=state,
        output_dict=output_dict,
        frame_idx=frame_idx,
        batch_size=1,
        is_init_cond_frame=False,
        point_inputs=None,
        mask_inputs=None,
        reverse=reverse,
        run_mem_encoder=True,
    )
    result: dict[str, Any] = out
    return result


class _FrameList:
    """sam2's state only needs ``len(images)`` and ``images[t]``; serve them from the cache's source."""

    def __init__(self, cache: FeatureCache) -> None:
        self._cache = cache

    def __len__(self) -> int:
        return len(self._cache)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._cache.image(index)[0]


def _empty_result(num_frames: int, num_obj: int, low_res: int) -> dict[str, torch.Tensor]:
    return {
        "logits": torch.full((num_frames, num_obj, low_res, low_res), float("-inf")),
        "scores": torch.full((num_frames, num_obj), float("nan")),
        "ious": torch.full((num_frames, num_obj), float("nan")),
        "visited": torch.zeros(num_frames, dtype=torch.bool),
    }


def _store(
    raw: dict[str, torch.Tensor],
    t: int,
    o: int,
    logits: torch.Tensor,
    score: torch.Tensor,
    iou: torch.Tensor | None,
) -> None:
    raw["logits"][t, o] = logits.detach().float().cpu()
    raw["scores"][t, o] = score.detach().float().cpu()
    if iou is not None:
        raw["ious"][t, o] = iou.detach().float().reshape(-1)[0].cpu()
    raw["visited"][t] = True


def fill_small_holes(low_res_logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """sam2's hole filling without its CUDA extension: background components (logit <= 0) of at
    most ``max_area`` pixels, 8-connected, get the small positive logit 0.1.

    Args:
        low_res_logits: ``(..., H, W)`` float32 logits.
        max_area: largest hole (pixels) to fill.

    Example:
        >>> x = -torch.ones(1, 5, 5); x[0, 1:4, 1:4] = 5.0; x[0, 2, 2] = -5.0
        >>> round(fill_small_holes(x, 1)[0, 2, 2].item(), 3)
        0.1
    """
    flat = low_res_logits.reshape(-1, *low_res_logits.shape[-2:])
    out = flat.clone()
    structure = np.ones((3, 3), dtype=bool)
    for i in range(flat.shape[0]):
        if not torch.isfinite(flat[i]).all():
            continue
        bg = (flat[i] <= 0).numpy()
        labels, n = ndimage.label(bg, structure=structure)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())
        small = (areas <= max_area) & (np.arange(areas.size) > 0)
        hole = torch.from_numpy(small[labels])
        out[i] = torch.where(hole, torch.tensor(0.1), flat[i])
    return out.reshape(low_res_logits.shape)


def _check_frames(frames: FrameSource, image_size: int) -> int:
    if not hasattr(frames, "__len__") or not hasattr(frames, "__getitem__"):
        raise InvalidTypeError(f"frames: expected len() and [t] -> (3, S, S), got {type(frames).__name__}")
    n = len(frames)
    if n < 1:
        raise InvalidInputError("frames: expected at least one frame, got 0")
    first = frames[0]
    if not isinstance(first, torch.Tensor) or tuple(first.shape) != (3, image_size, image_size):
        shape = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise ShapeMismatchError(
            f"frames[0]: expected a (3, {image_size}, {image_size}) tensor (the model's image_size), got {shape}"
        )
    if not first.is_floating_point():
        raise InvalidTypeError(f"frames[0]: expected a float tensor (ImageNet-normalised), got {first.dtype}")
    return n


def _check_frame_index(frame: int, num_frames: int) -> int:
    if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool) or not 0 <= int(frame) < num_frames:
        raise InvalidInputError(f"frame: expected an integer in [0, {num_frames}), got {frame!r}")
    return int(frame)


def _check_mask(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim != 2:
        raise ShapeMismatchError(f"mask: expected a 2D (H, W) mask, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() and not torch.isfinite(mask).all():
            raise InvalidInputError("mask: expected finite values, got NaN or inf")
        values = torch.unique(mask)
        if not bool(((values == 0) | (values == 1)).all()):
            raise InvalidInputError(f"mask: expected a binary mask (bool or 0/1), got values {values[:5].tolist()}")
        mask = mask.bool()
    return mask


def _check_points(prompt: PointPrompt, image_size: int) -> None:
    pts, labels = prompt.points, prompt.labels
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ShapeMismatchError(f"points: expected shape (N, 2), got {tuple(pts.shape)}")
    if labels.shape != (pts.shape[0],):
        raise ShapeMismatchError(f"labels: expected shape ({pts.shape[0]},) to match points, got {tuple(labels.shape)}")
    if pts.numel() == 0 and prompt.box is None:
        raise InvalidInputError("points: expected at least one point or a box")
    if not torch.isfinite(pts).all():
        raise InvalidInputError("points: expected finite coordinates, got NaN or inf")
    if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
        raise InvalidInputError(f"labels: expected 0 (background) or 1 (foreground), got {labels.tolist()}")
    if prompt.box is not None:
        box = prompt.box
        if box.shape != (4,) or not torch.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidInputError(f"box: expected finite (x0, y0, x1, y1) with x1 > x0, y1 > y0, got {box.tolist()}")
        if not prompt.clear:
            raise InvalidInputError("box: a box replaces earlier clicks; expected clear=True with a box")


def _prompt_inputs(
    prompt: Prompt, image_size: int, device: torch.device
) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
    """sam2's point_inputs / mask_inputs for one prompt on an initial conditioning frame."""
    if isinstance(prompt, MaskPrompt):
        mask = _check_mask(prompt.mask).float()[None, None].to(device)
        if mask.shape[-2:] != (image_size, image_size):
            mask = F.interpolate(mask, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
            mask = (mask >= 0.5).float()
        return None, mask
    _check_points(prompt, image_size)
    pts, labels = prompt.points.float(), prompt.labels.int()
    if prompt.box is not None:
        pts = torch.cat([prompt.box.float().reshape(2, 2), pts])
        labels = torch.cat([torch.tensor([2, 3], dtype=torch.int32), labels])
    # the same arithmetic as sam2's add_new_points_or_box with a video of size S x S
    pts = pts / torch.tensor([image_size, image_size]) * image_size
    return {"point_coords": pts[None].to(device), "point_labels": labels[None].to(device)}, None


@dataclass(frozen=True)
class ModelInfo:
    """A short description of a built model (for ``medsam2kit info`` and logs)."""

    image_size: int
    parameters: int
    device: str
    autocast: str
    extras: dict[str, Any] = field(default_factory=dict)


def describe(predictor: SAM2Predictor) -> ModelInfo:
    """Size, device and precision of a predictor's model.

    Example:
        >>> describe(SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")).autocast
        'fp32'
    """
    dtype = predictor.policy.autocast_dtype
    return ModelInfo(
        image_size=predictor.image_size,
        parameters=sum(p.numel() for p in predictor.model.parameters()),
        device=str(predictor.device),
        autocast="fp32" if dtype is None else str(dtype).replace("torch.", ""),
    )


__all__ = [
    "DEFAULT_CACHE_BUDGET_MB",
    "CacheStats",
    "Direction",
    "FeatureCache",
    "FrameSource",
    "MaskPrompt",
    "ModelInfo",
    "PointPrompt",
    "PrecisionPolicy",
    "Prompt",
    "PropagationResult",
    "SAM2Predictor",
    "Session",
    "available_configs",
    "build_model",
    "describe",
    "fill_small_holes",
    "load_checkpoint",
    "precision_policy",
    "resolve_config",
    "resolve_device",
    "track_frame",
]
