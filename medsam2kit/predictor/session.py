"""Predictor and session: one SAM2 model with its precision policy, and prompts plus
propagation on one frame sequence.

sam2 is reached only through :mod:`medsam2kit.backend`; the session's inference state has
exactly the keys of upstream ``init_state`` and its ``cached_features`` slot is the session's
encode-once :class:`~medsam2kit.predictor.cache.FeatureCache`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsam2kit import backend
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError
from medsam2kit._validate import check_int
from medsam2kit.predictor.cache import DEFAULT_CACHE_BUDGET_MB, FeatureCache, FrameSource
from medsam2kit.predictor.checkpoints import build_model
from medsam2kit.predictor.device import precision_policy
from medsam2kit.predictor.types import Direction, MaskPrompt, PointPrompt, Prompt, PropagationResult
from medsam2kit.store import FeatureStore, model_signature


#: Default cap of objects tracked in one batched step (see ``SAM2Predictor(max_objects_per_batch=)``).
DEFAULT_MAX_OBJECTS_PER_BATCH = 16


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
        feature_store: an on-disk :class:`~medsam2kit.store.FeatureStore`: frames it holds (same
            frames, same encoder weights, size and precision) are read instead of encoded, and
            every frame encoded is written to it; ``None`` (default): memory only.
        max_objects_per_batch: how many objects one batched tracking step may hold (objects
            whose memories hold the same frames are tracked together on each frame; see
            :func:`medsam2kit.backend.track_objects`); bounds the memory of a step. 1 tracks
            every object alone, as sam2 does.

    Example:
        >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
        >>> pred.policy.autocast_dtype is None
        True
    """

    def __init__(
        self,
        model: backend.SAM2Model,
        *,
        cache_budget_mb: float = DEFAULT_CACHE_BUDGET_MB,
        cache_dtype: torch.dtype | None = None,
        fill_hole_area: int = 0,
        encode_batch_size: int | None = None,
        max_objects_per_batch: int = DEFAULT_MAX_OBJECTS_PER_BATCH,
        feature_store: FeatureStore | None = None,
    ) -> None:
        if not isinstance(model, backend.SAM2Model):
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
        self.max_objects_per_batch = check_int(max_objects_per_batch, "max_objects_per_batch", minimum=1)
        if feature_store is not None and not isinstance(feature_store, FeatureStore):
            raise InvalidTypeError(f"feature_store: expected a FeatureStore or None, got {type(feature_store).__name__}")
        self.feature_store = feature_store

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

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device = "auto",
        cache_dir: str | Path | None = None,
        config: str | Path | None = None,
        image_size: int | None = None,
        overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> SAM2Predictor:
        """Build a predictor from a model-zoo name (``medsam2kit models``) or a checkpoint file.

        A name is resolved in the model cache, downloaded from the Hugging Face hub if needed and
        allowed, and checked against its sha256; its config and input size come from the zoo
        entry. A file with no entry gets the config its keys fit, or ``config=``. See
        :func:`medsam2kit.models.load_model`; ``kwargs`` go to the predictor.

        Example:
            >>> SAM2Predictor.from_pretrained("reference", device="cpu").image_size
            128
        """
        from medsam2kit.models import load_model  # models imports the predictor package

        loaded = load_model(name_or_path, config=config, image_size=image_size, overrides=overrides,
                            device=device, cache_dir=cache_dir)
        return cls(loaded.model, **kwargs)

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
            return backend.encode_images(self.model, images)

    def feature_cache(self, frames: FrameSource) -> FeatureCache:
        """A new encode-once feature cache of ``frames`` for this model (budget, storage dtype
        and, when set, the on-disk feature store bound to the current encoder weights)."""
        disk = None
        if self.feature_store is not None:
            precision = "fp32" if self.policy.autocast_dtype is None else str(self.policy.autocast_dtype)
            sig = model_signature(self.model.image_encoder, image_size=self.image_size,
                                  precision=f"{precision}@{self.device.type}")
            disk = self.feature_store.bind(sig)
        return FeatureCache(frames, self.encode, device=self.device, budget_bytes=self.cache_budget_bytes,
                            storage_dtype=self.cache_dtype, disk=disk)

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
        cache: FeatureCache | None = None,
    ) -> PropagationResult:
        """Independent per-frame prediction (SAM2 as an image model, no memory) for many frames.

        The image encoder runs in batches of ``batch_size``; every prompted frame is encoded once.
        Works at any model size (unlike upstream ``SAM2ImagePredictor``, whose feature sizes are
        hard-coded for 1024 px). Each prompt is decoded as sam2 does on an initial conditioning
        frame, so the logits equal the video predictor's output on a freshly prompted frame.

        Args:
            frames: the frames (as for :meth:`start`).
            prompts: the prompts, each decoded on its frame.
            batch_size: frames per encoder call.
            cache: features to reuse, e.g. a session's ``session.cache`` over the same
                ``frames`` (repeated calls then encode nothing again); default: a new cache.

        Returns:
            A :class:`PropagationResult` over all frames; only prompted frames are visited.

        Raises:
            InvalidInputError: ``batch_size`` < 1, or ``cache`` holds another number of frames.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size: expected >= 1, got {batch_size}")
        num_frames = _check_frames(frames, self.image_size)
        if cache is not None and len(cache) != num_frames:
            raise InvalidInputError(f"cache: expected a feature cache of the {num_frames} frames, got {len(cache)} frames")
        obj_ids = tuple(sorted({p.obj_id for p in prompts}))
        s4 = self.image_size // 4
        result = _empty_result(num_frames, len(obj_ids), s4)
        cache = cache if cache is not None else self.feature_cache(frames)
        frames_needed = sorted({_check_frame_index(p.frame, num_frames) for p in prompts})
        with self.policy.autocast():
            cache.fill(batch_size=batch_size, indices=frames_needed)  # within the cache budget
            for t in frames_needed:
                _, backbone_out = cache.features(t)
                features = backend.prepare_backbone_features(self.model, backbone_out=backbone_out)
                for p in prompts:
                    if p.frame != t:
                        continue
                    point_inputs, mask_inputs = _prompt_inputs(p, self.image_size, self.device)
                    out, _ = backend.track_frame(
                        self.model,
                        features=features,
                        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                        frame_idx=t,
                        num_frames=num_frames,
                        is_init_cond_frame=True,
                        point_inputs=point_inputs,
                        mask_inputs=mask_inputs,
                        run_mem_encoder=False,
                    )
                    _store(result, t, obj_ids.index(p.obj_id), out)
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
        """Upstream ``SAM2ImagePredictor`` on this model, fixed for any ``image_size``
        (upstream hard-codes 1024-px feature sizes)."""
        return backend.image_predictor(self.model)


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
        self.cache = predictor.feature_cache(frames)
        s = predictor.image_size
        self.state: backend.InferenceState = backend.new_inference_state(
            source=self.cache, video_size=(s, s), device=predictor.device
        )
        self._model: backend.SAM2Model = model

    @property
    def encoder_calls(self) -> int:
        """How many frames the image encoder has processed in this session."""
        return self.cache.stats.encoder_calls

    @property
    def obj_ids(self) -> tuple[int, ...]:
        return backend.object_ids(self.state)

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
                backend.add_mask(self._model, self.state, frame_idx=frame, obj_id=prompt.obj_id, mask=mask)
            elif isinstance(prompt, PointPrompt):
                _check_points(prompt, self.predictor.image_size)
                backend.add_points_or_box(
                    self._model,
                    self.state,
                    frame_idx=frame,
                    obj_id=prompt.obj_id,
                    points=prompt.points if prompt.points.numel() else None,
                    labels=prompt.labels if prompt.labels.numel() else None,
                    box=prompt.box,
                    clear_old_points=prompt.clear,
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
        if not self.obj_ids:
            raise InvalidInputError("propagate: no prompt was added; add a mask, points or a box first")
        if start is not None:
            _check_frame_index(start, self.num_frames)
        obj_ids = self.obj_ids
        raw = _empty_result(self.num_frames, len(obj_ids), self.predictor.image_size // 4)
        with torch.inference_mode(), self.predictor.policy.autocast():
            backend.preflight(self._model, self.state)
            first = start if start is not None else backend.earliest_conditioning_frame(self.state)
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
                    outs = backend.track_objects(
                        self._model, self.state, obj_indices=range(len(obj_ids)), frame_idx=frame_idx,
                        reverse=reverse, max_batch=self.predictor.max_objects_per_batch,
                    )
                    for o, out in outs.items():
                        _store(raw, frame_idx, o, out)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return self.predictor._finish(raw, obj_ids)

    def propagate_separately(self, prompts: Sequence[Prompt]) -> list[PropagationResult]:
        """Each prompt its own track, propagated both ways from its own frame, all at once.

        The result of track ``k`` equals ``reset(); add(prompts[k]); propagate("both")`` (within
        float rounding): a track sees only its own prompt and its own memory. The tracks advance
        together (step ``i`` of the forward pass puts track ``k`` on frame ``f_k + i``, then the
        reverse pass on ``f_k - i``), and every step tracks them as one batch, each on its own
        frame's features (SAM2Med3D's separate propagation of several prompt slices). The
        session's prompts are replaced (as by :meth:`reset`); features stay cached.

        Args:
            prompts: one prompt per track (its ``obj_id`` is kept in the track's result).

        Returns:
            One :class:`PropagationResult` per prompt, in order, each with that prompt's object id.
        """
        if not prompts:
            raise InvalidInputError("prompts: expected at least one prompt, got none")
        starts = [_check_frame_index(p.frame, self.num_frames) for p in prompts]
        self.reset()
        for k, p in enumerate(prompts):  # track k is object k + 1 of the state, alone in its memory
            self.add(dataclasses.replace(p, obj_id=k + 1))
        low = self.predictor.image_size // 4
        raws = [_empty_result(self.num_frames, 1, low) for _ in prompts]
        with torch.inference_mode(), self.predictor.policy.autocast():
            backend.preflight(self._model, self.state)
            index = {oid: i for i, oid in enumerate(self.obj_ids)}  # state index of track k (obj id k + 1)
            for reverse in (False, True):
                # as propagate("both"): forward to the end, then back to frame 0 (skipped from frame 0)
                lengths = [f + 1 if f > 0 else 0 for f in starts] if reverse else [self.num_frames - f for f in starts]
                for i in range(max(lengths)):
                    frames = {index[k + 1]: (f - i if reverse else f + i)
                              for k, (f, n) in enumerate(zip(starts, lengths)) if i < n}
                    outs = backend.track_each(self._model, self.state, frames=frames, reverse=reverse,
                                              max_batch=self.predictor.max_objects_per_batch)
                    for k in range(len(prompts)):
                        o = index[k + 1]
                        if o in outs:
                            _store(raws[k], frames[o], 0, outs[o])
        return [self.predictor._finish(raw, (p.obj_id,)) for raw, p in zip(raws, prompts)]

    def reset(self) -> None:
        """Remove all prompts and results; keep the encoded features."""
        backend.reset_state(self._model, self.state)

    def conditioning_memories(self) -> dict[int, dict[int, backend.FrameOutput]]:
        """Per object id, the memory of each prompted frame ``{frame: output}`` (sam2's
        conditioning frame outputs: ``maskmem_features``, ``maskmem_pos_enc``, ``pred_masks``,
        ``obj_ptr``, ``object_score_logits``, ``pred_iou``), encoded now if not yet."""
        with torch.inference_mode(), self.predictor.policy.autocast():
            backend.preflight(self._model, self.state)
        return backend.conditioning_outputs(self.state)


def _empty_result(num_frames: int, num_obj: int, low_res: int) -> dict[str, torch.Tensor]:
    return {
        "logits": torch.full((num_frames, num_obj, low_res, low_res), float("-inf")),
        "scores": torch.full((num_frames, num_obj), float("nan")),
        "ious": torch.full((num_frames, num_obj), float("nan")),
        "visited": torch.zeros(num_frames, dtype=torch.bool),
    }


def _store(raw: dict[str, torch.Tensor], t: int, o: int, out: backend.FrameOutput) -> None:
    raw["logits"][t, o] = out["pred_masks"][0, 0].detach().float().cpu()
    raw["scores"][t, o] = out["object_score_logits"].reshape(-1)[0].detach().float().cpu()
    iou = out.get("pred_iou")
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




__all__ = ["SAM2Predictor", "Session", "fill_small_holes"]
