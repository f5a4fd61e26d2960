"""The encode-once feature cache of a session: every frame through the image encoder once.

The cache counts its encoder calls and the seconds spent in the encoder itself
(:class:`CacheStats`), so that callers (pipelines, benchmarks) never need to wrap it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from medsam2kit.errors import InvalidInputError

#: Default memory budget of the per-session encoder feature cache (MiB).
DEFAULT_CACHE_BUDGET_MB = 4096


class FrameSource(Protocol):
    """What the predictor needs of a frame sequence: ``len()`` and ``[t] -> (3, S, S)`` float32.

    Frames are already resized to the model's square size ``S`` and ImageNet-normalised, as sam2
    expects. A ``(T, 3, S, S)`` float tensor satisfies this protocol, and so does
    :class:`medsam2kit.sequencer.FrameSequence`, which stores uint8 frames and normalises on access.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> torch.Tensor: ...



@dataclass
class CacheStats:
    """Counters of one session's feature cache (mutable: it counts as the session runs).

    Attributes:
        encoder_calls: frames that went through the image encoder.
        encoder_seconds: wall time spent inside the encoder calls.
        hits: feature requests answered from the cache.
        stored_frames, stored_bytes: what the cache holds now.
    """

    encoder_calls: int = 0
    encoder_seconds: float = 0.0
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
            out = self._run_encoder(self.image(index))
            fpn = list(out["backbone_fpn"])
            if self._pos_enc is None:
                self._pos_enc = list(out["vision_pos_enc"])
                self._dtype = fpn[0].dtype
            self._keep(index, fpn)
        assert self._pos_enc is not None  # set on the first encoder call
        # sam2's callers of _get_image_feature ignore the image it returns; a zero-stride view of
        # the right shape avoids normalising the frame again on every visit.
        return self._placeholder, {"backbone_fpn": fpn, "vision_pos_enc": self._pos_enc}

    def _run_encoder(self, images: torch.Tensor) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self._encode(images)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # so that the seconds are the encoder's
        self.stats.encoder_seconds += time.perf_counter() - t0
        self.stats.encoder_calls += images.shape[0]
        return out

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
            out = self._run_encoder(images)
            if self._pos_enc is None:
                self._pos_enc = [p[:1] for p in out["vision_pos_enc"]]
                self._dtype = out["backbone_fpn"][0].dtype
            for i, t in enumerate(chunk):
                self._keep(t, [f[i : i + 1] for f in out["backbone_fpn"]])



__all__ = ["DEFAULT_CACHE_BUDGET_MB", "CacheStats", "FeatureCache", "FrameSource"]
