"""The encode-once feature cache of a session: every frame through the image encoder once.

The cache counts its encoder calls and the seconds spent in the encoder itself
(:class:`CacheStats`), so that callers (pipelines, benchmarks) never need to wrap it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from medsam2kit.errors import InvalidInputError, MedSAM2KitError

if TYPE_CHECKING:
    from medsam2kit.store import BoundFeatureStore

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
        store_hits: frames read from the on-disk feature store instead of encoded.
        stored_frames, stored_bytes: what the cache holds now.
    """

    encoder_calls: int = 0
    encoder_seconds: float = 0.0
    hits: int = 0
    store_hits: int = 0
    stored_frames: int = 0
    stored_bytes: int = 0


class FeatureCache:
    """Image-encoder outputs of a frame source, each frame encoded once within a byte budget.

    Frames are stored in ``storage_dtype`` (default: the dtype the encoder produced, which makes
    cached results bitwise equal to recomputed ones; ``torch.bfloat16`` halves the memory). The
    positional encodings depend only on the feature shape and are stored once. When the budget
    is full, further frames are not stored; they are recomputed on each visit (the most recent
    one is kept, as upstream does, so a frame visited twice in a row is encoded once).

    With ``disk`` (a :class:`~medsam2kit.store.FeatureStore` bound to the model), a frame not in
    memory is read from the store when it holds it (``stats.store_hits``), and every frame the
    encoder produces is written there. A store that cannot be written is dropped for the rest of
    the session with a warning; the segmentation goes on.
    """

    def __init__(
        self,
        frames: FrameSource,
        encode: Callable[[torch.Tensor], dict[str, Any]],
        *,
        device: torch.device,
        budget_bytes: int,
        storage_dtype: torch.dtype | None = None,
        disk: BoundFeatureStore | None = None,
    ) -> None:
        self._frames = frames
        self._disk = disk
        self._signatures: dict[int, str] = {}
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
            found = self._from_disk(index)
            if found is not None:
                fpn = found
            else:
                out = self._run_encoder(self.image(index))
                fpn = list(out["backbone_fpn"])
                if self._pos_enc is None:
                    self._pos_enc = list(out["vision_pos_enc"])
                    self._dtype = fpn[0].dtype
                self._to_disk(index, fpn)
            self._keep(index, fpn)
        assert self._pos_enc is not None  # set on the first encoder call
        # sam2's callers of _get_image_feature ignore the image it returns; a zero-stride view of
        # the right shape avoids normalising the frame again on every visit.
        return self._placeholder, {"backbone_fpn": fpn, "vision_pos_enc": self._pos_enc}

    def _signature(self, index: int) -> str:
        assert self._disk is not None
        if index not in self._signatures:
            self._signatures[index] = self._disk.frame_signature(self._frames[index])
        return self._signatures[index]

    def _from_disk(self, index: int) -> list[torch.Tensor] | None:
        """Frame ``index``'s features from the store (on the device, as the encoder produced
        them), or ``None``."""
        if self._disk is None:
            return None
        found = self._disk.load(self._signature(index))
        if found is None:
            return None
        fpn, produced = found
        if self._pos_enc is None:
            pos = self._disk.load_pos()
            if pos is None:
                return None
            self._pos_enc = [p.to(self._device) for p in pos]
            self._dtype = produced
        elif produced != self._dtype:
            return None  # another precision than this session's encoder: recompute
        self.stats.store_hits += 1
        return [f.to(self._device, produced) for f in fpn]

    def _to_disk(self, index: int, fpn: list[torch.Tensor]) -> None:
        if self._disk is None:
            return
        try:
            assert self._pos_enc is not None
            self._disk.save_pos(self._pos_enc)
            self._disk.save(self._signature(index), fpn)
        except (MedSAM2KitError, OSError) as err:
            from medsam2kit.store import FeatureStoreWarning

            warnings.warn(f"feature store: cannot write {self._disk.folder} ({err}); going on without it",
                          FeatureStoreWarning, stacklevel=3)
            self._disk = None

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
        todo = []
        for t in wanted:
            if t in self._store:
                continue
            found = self._from_disk(t)
            if found is not None:
                self._keep(t, found)
            else:
                todo.append(t)
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
                fpn = [f[i : i + 1] for f in out["backbone_fpn"]]
                self._to_disk(t, fpn)
                self._keep(t, fpn)



__all__ = ["DEFAULT_CACHE_BUDGET_MB", "CacheStats", "FeatureCache", "FrameSource"]
