"""Temporal transforms for clip sampling: crop to a length, frame stride, frame drop, reverse.

They select frames (of the image and the masks alike) by an index list that is shared by every
clip of a batch, so that the batch keeps one length.

Example:
    >>> import torch
    >>> from medsam2kit.augment import TemporalCrop
    >>> out = TemporalCrop(8)(torch.rand(20, 16, 16), generator=torch.Generator().manual_seed(0))
    >>> out.image.shape[0], len(out.params.indices)
    (8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medsam2kit.augment._core import Dims, Params, Transform, from_canonical, interval, to_canonical
from medsam2kit.augment.geometry import ScanGeometry
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError

__all__ = ["FrameDrop", "FrameStride", "Reverse", "TemporalCrop", "TemporalParams", "select_frames"]


@dataclass(frozen=True, eq=False)
class TemporalParams(Params):
    """The frames kept, in order: ``indices`` into the input clip's T axis; ``frames`` = input T."""

    indices: tuple[int, ...]
    frames: int


def _select(x: Tensor, m: Tensor | None, params: TemporalParams) -> tuple[Tensor, Tensor | None]:
    t = x.shape[1]
    if params.frames != t or not params.indices or min(params.indices) < 0 or max(params.indices) >= t:
        raise ShapeMismatchError(
            f"params: expected indices in [0, {t}) for a clip of T={t} frames, got frames={params.frames}, "
            f"indices={list(params.indices)}"
        )
    idx = torch.tensor(params.indices, dtype=torch.long, device=x.device)
    return x.index_select(1, idx), None if m is None else m.index_select(1, idx.to(m.device))


def select_frames(clip: Tensor, mask: Tensor | None, params: TemporalParams) -> tuple[Tensor, Tensor | None]:
    """Keep the frames ``params.indices`` of the clip and its masks.

    Args:
        clip: ``(T, H, W)``, ``(T, C, H, W)`` or ``(B, T, C, H, W)``.
        mask: matching masks or ``None``.
        params: from any temporal transform's ``sample``.

    Returns:
        ``(clip, mask)`` with ``len(params.indices)`` frames.

    Example:
        >>> import torch
        >>> select_frames(torch.rand(5, 4, 4), None, TemporalParams((4, 3), 5))[0].shape
        torch.Size([2, 4, 4])
    """
    if not isinstance(params, TemporalParams):
        raise InvalidTypeError(f"params: expected TemporalParams, got {type(params).__name__}")
    x, m, layout = to_canonical(clip, mask)
    y, m2 = _select(x, m, params)
    return from_canonical(y, m2, layout)


class _Temporal(Transform[TemporalParams]):
    kind = "temporal"
    params_type = TemporalParams

    def _apply(self, x: Tensor, m: Tensor | None, params: TemporalParams) -> tuple[Tensor, Tensor | None]:
        return _select(x, m, params)

    def _output_dims(self, dims: Dims, params: TemporalParams) -> Dims:
        return (dims[0], len(params.indices), dims[2], dims[3], dims[4])


def _int_range(name: str, value: int | tuple[int, int], lo: int) -> tuple[int, int]:
    a, b = interval(name, value, lo=lo)
    if a != int(a) or b != int(b):
        raise InvalidInputError(f"{name}: expected integers, got {value!r}")
    return int(a), int(b)


def _randint(generator: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator, device=generator.device).item())


class TemporalCrop(_Temporal):
    """A random window of ``length`` consecutive frames.

    Args:
        length: frames kept (>= 1); a clip with fewer frames is an error.

    Example:
        >>> import torch
        >>> TemporalCrop(3).sample((10, 8, 8), torch.Generator().manual_seed(0)).indices
        (4, 5, 6)
    """

    def __init__(self, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise InvalidInputError(f"length: expected an int >= 1, got {length!r}")
        self.length = length

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> TemporalParams:
        t = dims[1]
        if t < self.length:
            raise InvalidInputError(f"clip: expected at least {self.length} frames for TemporalCrop, got T={t}")
        start = _randint(generator, 0, t - self.length)
        return TemporalParams(indices=tuple(range(start, start + self.length)), frames=t)


class FrameStride(_Temporal):
    """Every ``stride``-th frame from a random offset in ``[0, stride)`` (stride drawn per call).

    Args:
        stride: stride (>= 1) or an integer range.

    Example:
        >>> import torch
        >>> FrameStride(2).sample((7, 8, 8), torch.Generator().manual_seed(0)).indices
        (1, 3, 5)
    """

    def __init__(self, stride: int | tuple[int, int] = (1, 2)) -> None:
        self.stride = _int_range("stride", stride, 1)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> TemporalParams:
        t = dims[1]
        s = _randint(generator, *self.stride)
        offset = _randint(generator, 0, min(s, t) - 1)
        return TemporalParams(indices=tuple(range(offset, t, s)), frames=t)


class FrameDrop(_Temporal):
    """Remove a random number of frames (drawn in ``count``) at random positions; at least one frame
    is always kept.

    Args:
        count: number of frames to drop (>= 0) or an integer range.

    Example:
        >>> import torch
        >>> len(FrameDrop(2).sample((6, 8, 8), torch.Generator().manual_seed(0)).indices)
        4
    """

    def __init__(self, count: int | tuple[int, int] = (0, 2)) -> None:
        self.count = _int_range("count", count, 0)

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> TemporalParams:
        t = dims[1]
        k = min(_randint(generator, *self.count), t - 1)
        order = torch.randperm(t, generator=generator, device=generator.device).cpu()
        dropped = set(order[:k].tolist())
        return TemporalParams(indices=tuple(i for i in range(t) if i not in dropped), frames=t)


class Reverse(_Temporal):
    """Play the clip backwards; wrap in :class:`RandomApply` for a probability.

    Example:
        >>> import torch
        >>> Reverse().sample((3, 8, 8)).indices
        (2, 1, 0)
    """

    def _sample(self, dims: Dims, generator: torch.Generator, geometry: ScanGeometry | None) -> TemporalParams:
        return TemporalParams(indices=tuple(range(dims[1] - 1, -1, -1)), frames=dims[1])
