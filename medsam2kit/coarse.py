"""The lightweight task-specific network of SAM2Med3D: a coarse 3D segmentation from 2D slices.

SAM2Med3D (Chen et al., 2025) starts from a coarse segmentation made by a small task-specific
network; a spatial filter (:mod:`medsam2kit.prompts`) then picks reliable slices of it as SAM2
prompts. The paper gives no architecture; this module is our design:

* **Network.** A small 2D U-Net (:class:`UNet2D`) applied slice by slice along a slicing axis,
  optionally 2.5D: ``context`` neighbouring slices on each side are extra input channels (edge
  slices are replicated). BatchNorm by default (it converges fastest in short CPU fits);
  ``CoarseConfig(norm="group")`` gives GroupNorm, which behaves the same in training and
  inference with tiny batches.
* **Output.** Softmax over background + ``L`` labels: :meth:`CoarseSegmenter.predict_proba`
  returns float32 ``(L + 1, D, H, W)`` on the input's exact voxel grid, summing to 1 over axis 0
  (channel 0 = background, channel ``l`` = label ``l``).
* **Pre-processing.** Per-volume intensity normalisation (:func:`normalize_intensity`: percentile
  clipping to ``[0, 1]`` or z-score), slices resized (bilinear, antialiased when shrinking,
  aspect not kept) to a fixed working size ``S x S``; labels are resized by exact nearest
  neighbour for training; predicted logits are resized back bilinearly to the slice's own
  ``(h, w)`` before the softmax, so the probabilities lie on the exact voxel grid.
* **Axis.** From the geometry (:func:`medsam2kit.sequencer.default_axis`: largest spacing, then
  fewest slices, then nearest superior-inferior) unless the configuration fixes one.
* **Loss.** Cross-entropy + soft Dice over the foreground labels (:func:`soft_dice_loss`).
* **Reproducibility.** :meth:`CoarseSegmenter.fit` draws the initial weights and the slice
  shuffling from one ``torch.Generator`` (``None``: a fresh one seeded by the OS); no global seed is
  touched, and the modules are built on the ``meta`` device so that construction does not even
  consume the global RNG. On the CPU the same seed gives bitwise-identical weights.
* **Persistence.** :meth:`CoarseSegmenter.save` writes the state dict plus a JSON configuration
  atomically; :meth:`CoarseSegmenter.load` reads it back with ``torch.load(weights_only=True)``.

Any callable ``volume -> probabilities`` with the same output layout can replace the network in
the pipelines: see :class:`CoarseModel`.

Example:
    >>> import numpy as np, torch
    >>> from medsam2kit.volume import Volume
    >>> from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(size=(6, 16, 16)).astype(np.float32)
    >>> lab = np.zeros((6, 16, 16), np.uint8); lab[:, 4:12, 4:12] = 1; img[lab == 1] += 3
    >>> vol = Volume(img, np.eye(4))
    >>> seg = CoarseSegmenter(CoarseConfig(num_labels=1, image_size=16, base_channels=4, depth=2))
    >>> result = seg.fit([vol], [lab], steps=5, batch_size=4, generator=torch.Generator().manual_seed(0))
    >>> result.steps, len(result.history)
    (5, 5)
    >>> proba = seg.predict_proba(vol)
    >>> proba.shape, proba.dtype, bool(np.allclose(proba.sum(0), 1, atol=1e-5))
    ((2, 6, 16, 16), dtype('float32'), True)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsam2kit.errors import (
    CheckpointError,
    FileFormatError,
    InvalidInputError,
    InvalidTypeError,
    MedSAM2KitError,
    MissingFileError,
    ShapeMismatchError,
)
from medsam2kit._files import atomic_write, load_torch, one_line
from medsam2kit._validate import check_axis, check_generator, check_int, check_label_map
from medsam2kit.sequencer import default_axis
from medsam2kit.volume import Volume, check_same_grid

NormMode = Literal["percentile", "zscore"]
NormLayer = Literal["batch", "group", "none"]
VolumeInput = Volume | np.ndarray

#: Version of the file layout written by :meth:`CoarseSegmenter.save`.
FORMAT_VERSION = 1


@runtime_checkable
class CoarseModel(Protocol):
    """Anything that maps a volume to coarse class probabilities.

    ``model(volume)`` takes a :class:`~medsam2kit.volume.Volume` ``(D, H, W)`` and returns a
    float32 numpy array ``(L + 1, D, H, W)`` in ``[0, 1]``: channel 0 the background, channel
    ``l`` label ``l``, summing to 1 over the first axis. :class:`CoarseSegmenter` is one (its
    ``__call__`` is :meth:`CoarseSegmenter.predict_proba`); a plain function is another.

    Example:
        >>> import numpy as np
        >>> from medsam2kit.volume import Volume
        >>> def threshold_model(volume: Volume) -> np.ndarray:
        ...     fg = (volume.array > 0).astype(np.float32)
        ...     return np.stack([1 - fg, fg])
        >>> isinstance(threshold_model, CoarseModel)
        True
        >>> threshold_model(Volume(np.ones((2, 3, 4)), np.eye(4))).shape
        (2, 2, 3, 4)
    """

    def __call__(self, volume: Volume) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoarseConfig:
    """Architecture and pre-processing of a :class:`CoarseSegmenter` (JSON-able).

    Attributes:
        num_labels: ``L``, the number of foreground labels (label values ``1..L``); >= 1.
        context: neighbouring slices on each side fed as extra channels (0 = plain 2D); >= 0.
        image_size: working size ``S``; slices are resized to ``S x S``; a multiple of
            ``2 ** depth``.
        base_channels: channels of the first U-Net level (doubled per level); >= 1.
        depth: number of down-sampling steps of the U-Net; >= 1.
        normalization: ``"percentile"`` (clip to the volume's ``percentiles``, scale to
            ``[0, 1]``) or ``"zscore"`` (``(x - mean) / std`` over the volume).
        percentiles: ``(lower, upper)`` in ``[0, 100]``, used by ``"percentile"``.
        axis: slicing axis 0, 1 or 2, or ``None`` for each volume's
            :func:`~medsam2kit.sequencer.default_axis`.
        norm: normalisation layer of the U-Net: ``"batch"`` (default; converges fastest in
            short CPU fits), ``"group"`` or ``"none"``.

    Example:
        >>> CoarseConfig(num_labels=2, context=1).in_channels
        3
    """

    num_labels: int = 1
    context: int = 0
    image_size: int = 64
    base_channels: int = 16
    depth: int = 3
    normalization: NormMode = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    axis: int | None = None
    norm: NormLayer = "batch"

    def __post_init__(self) -> None:
        check_int(self.num_labels, "num_labels", minimum=1)
        check_int(self.context, "context", minimum=0)
        check_int(self.base_channels, "base_channels", minimum=1)
        depth = check_int(self.depth, "depth", minimum=1)
        size = check_int(self.image_size, "image_size", minimum=1)
        if size % (2**depth):
            raise InvalidInputError(f"image_size: expected a multiple of 2 ** depth = {2**depth}, got {size}")
        if self.normalization not in ("percentile", "zscore"):
            raise InvalidInputError(
                f"normalization: expected 'percentile' or 'zscore', got {self.normalization!r}"
            )
        try:
            lo, hi = (float(p) for p in self.percentiles)
        except (TypeError, ValueError):
            raise InvalidTypeError(
                f"percentiles: expected a pair of numbers, got {self.percentiles!r}"
            ) from None
        if not (0.0 <= lo < hi <= 100.0):
            raise InvalidInputError(
                f"percentiles: expected 0 <= lower < upper <= 100, got {self.percentiles!r}"
            )
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.norm not in ("batch", "group", "none"):
            raise InvalidInputError(f"norm: expected 'batch', 'group' or 'none', got {self.norm!r}")
        if self.axis is not None:
            object.__setattr__(self, "axis", check_axis(self.axis))

    @property
    def in_channels(self) -> int:
        """Input channels of the network: ``2 * context + 1``."""
        return 2 * self.context + 1

    @property
    def num_classes(self) -> int:
        """Output channels: ``num_labels + 1`` (background first)."""
        return self.num_labels + 1

    def to_json(self) -> str:
        """The configuration as a JSON string (see :meth:`from_json`).

        Example:
            >>> CoarseConfig.from_json(CoarseConfig(num_labels=3).to_json()).num_labels
            3
        """
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CoarseConfig:
        """A configuration from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise FileFormatError(f"config: expected a JSON object, got {text!r:.80} ({err})") from None
        if not isinstance(data, dict):
            raise FileFormatError(f"config: expected a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise FileFormatError(f"config: unknown keys {unknown}; expected a subset of {sorted(known)}")
        if "percentiles" in data and isinstance(data["percentiles"], list):
            data["percentiles"] = tuple(data["percentiles"])
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def _norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(_groups(channels), channels)
    return nn.Identity()


class _Block(nn.Sequential):
    """(conv3x3 - norm - ReLU) twice."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias),
            _norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias),
            _norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
        )


class UNet2D(nn.Module):
    """A small 2D U-Net: ``depth`` max-pool steps, channels ``base * 2 ** level``, bilinear
    up-sampling with skip concatenation, a 1x1 head.

    Args:
        in_channels: input channels ``C``.
        num_classes: output channels (logits).
        base_channels: channels of the first level.
        depth: number of down-sampling steps; the input side must be a multiple of ``2 ** depth``.
        norm: ``"batch"`` (BatchNorm, default), ``"group"`` (GroupNorm, up to 8 groups) or
            ``"none"`` (convolutions with bias).

    Shapes:
        input float32 ``(B, C, S, S)`` -> logits float32 ``(B, num_classes, S, S)``.

    Example:
        >>> import torch
        >>> net = UNet2D(3, 2, base_channels=4, depth=2)
        >>> tuple(net(torch.zeros(1, 3, 16, 16)).shape)
        (1, 2, 16, 16)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        base_channels: int = 16,
        depth: int = 3,
        norm: NormLayer = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise InvalidInputError(f"norm: expected 'batch', 'group' or 'none', got {norm!r}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_Block(c, w, norm))
            c = w
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(_Block(c + w, w, norm))
            c = w
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        out: torch.Tensor = self.head(x)
        return out


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """(Re)initialise every parameter of ``module`` from ``generator`` (no global RNG).

    Convolutions: Kaiming-normal (fan-in, ReLU gain ``sqrt(2)``; the final 1x1 head with gain 1,
    a near-zero head slows short fits down a lot); biases 0; norm layers weight 1, bias 0,
    running statistics reset.

    Example:
        >>> import torch
        >>> net = UNet2D(1, 2, base_channels=4, depth=1)
        >>> init_weights(net, torch.Generator().manual_seed(0))
        >>> a = net.head.weight.clone(); init_weights(net, torch.Generator().manual_seed(0))
        >>> bool(torch.equal(a, net.head.weight))
        True
    """
    with torch.no_grad():
        head = getattr(module, "head", None)
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                std = math.sqrt((1.0 if m is head else 2.0) / fan_in)
                noise = torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype)
                m.weight.copy_(noise * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                if m.bias is not None:
                    m.bias.zero_()
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()


def build_network(config: CoarseConfig, *, device: torch.device | str = "cpu") -> UNet2D:
    """The U-Net of ``config``, built on the meta device and materialised (uninitialised) on
    ``device``; call :func:`init_weights` or load a state dict next.

    Example:
        >>> net = build_network(CoarseConfig(base_channels=4, depth=2, image_size=16))
        >>> sum(p.numel() for p in net.parameters()) > 0
        True
    """
    with torch.device("meta"):
        net = UNet2D(
            config.in_channels,
            config.num_classes,
            base_channels=config.base_channels,
            depth=config.depth,
            norm=config.norm,
        )
    return net.to_empty(device=torch.device(device))


# --------------------------------------------------------------------------------------------
# Functional core: normalisation, slicing, loss
# --------------------------------------------------------------------------------------------


def normalize_intensity(
    array: np.ndarray,
    *,
    mode: NormMode = "percentile",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Per-volume intensity normalisation.

    Args:
        array: real ``(D, H, W)`` (any shape works), finite values.
        mode: ``"percentile"``: ``(clip(x, lo, hi) - lo) / (hi - lo)`` with ``lo, hi`` the
            ``percentiles`` of the whole array, so the result lies in ``[0, 1]`` (a constant
            volume gives zeros); ``"zscore"``: ``(x - mean) / std`` (``std`` 0 -> 1).
        percentiles: ``(lower, upper)`` for ``"percentile"``.

    Returns:
        float32 array of the same shape.

    Example:
        >>> import numpy as np
        >>> normalize_intensity(np.arange(5.0), percentiles=(0, 100)).tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> float(normalize_intensity(np.array([1.0, 3.0]), mode="zscore").std())
        1.0
    """
    data = np.asarray(array, dtype=np.float64)
    if mode == "percentile":
        lo, hi = np.percentile(data, [percentiles[0], percentiles[1]])
        if not hi > lo:
            return np.zeros(data.shape, np.float32)
        return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if mode == "zscore":
        mean, std = float(data.mean()), float(data.std())
        return ((data - mean) / (std if std > 0 else 1.0)).astype(np.float32)
    raise InvalidInputError(f"mode: expected 'percentile' or 'zscore', got {mode!r}")


def context_indices(num_slices: int, context: int) -> np.ndarray:
    """For each slice ``z`` the slices ``z - context .. z + context``, clamped (edges replicated).

    Returns:
        int64 ``(num_slices, 2 * context + 1)``.

    Example:
        >>> context_indices(3, 1).tolist()
        [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    """
    offsets = np.arange(-context, context + 1)
    return np.clip(np.arange(num_slices)[:, None] + offsets[None, :], 0, num_slices - 1).astype(np.int64)


def _resize_images(stack: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, h, w)`` float -> ``(N, C, *size)``: bilinear, antialiased when shrinking."""
    if tuple(stack.shape[-2:]) == size:
        return stack
    shrink = size[0] < stack.shape[-2] or size[1] < stack.shape[-1]
    return F.interpolate(stack, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, h, w)`` int64 -> ``(N, S, S)`` by exact nearest neighbour."""
    if tuple(labels.shape[-2:]) == (size, size):
        return labels
    out = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest-exact")
    return out[:, 0].round().long()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_l Dice_l`` over the foreground classes ``l = 1..C-1``, each Dice soft and
    pooled over the whole batch: ``(2 sum p t + smooth) / (sum p + sum t + smooth)``.

    Args:
        logits: float ``(B, C, H, W)``, C >= 2.
        target: int64 ``(B, H, W)`` in ``[0, C)``.
        smooth: additive smoothing (> 0), keeps empty classes at Dice 1.

    Returns:
        Scalar tensor in ``[0, 1]``.

    Example:
        >>> import torch
        >>> t = torch.zeros(1, 4, 4, dtype=torch.long); t[0, :2] = 1
        >>> logits = torch.stack([(t == 0).float(), (t == 1).float()], 1) * 50
        >>> round(float(soft_dice_loss(logits, t)), 4)
        0.0
    """
    probs = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice.mean()


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _as_volume(volume: object, name: str) -> Volume:
    if isinstance(volume, torch.Tensor):
        volume = volume.detach().cpu().numpy()
    if isinstance(volume, Volume):
        arr = volume.array
    elif isinstance(volume, np.ndarray):
        arr = volume
        if arr.ndim != 3:
            raise InvalidInputError(f"{name}: expected 3 dimensions (D, H, W), got shape {arr.shape}")
    else:
        raise InvalidTypeError(
            f"{name}: expected a Volume or a (D, H, W) numpy array, got {type(volume).__name__}"
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InvalidTypeError(f"{name}: expected a real numeric image, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InvalidInputError(
                f"{name}: expected finite values, got {bad} NaN/inf voxel(s) in shape {arr.shape}"
            )
    if min(arr.shape) < 1:
        raise InvalidInputError(f"{name}: expected a non-empty volume, got shape {arr.shape}")
    return volume if isinstance(volume, Volume) else Volume(arr, np.eye(4))


def _as_labels(labels: object, like: Volume, num_labels: int, name: str) -> np.ndarray:
    if isinstance(labels, Volume):
        if labels.shape != like.shape:
            raise ShapeMismatchError(f"{name}: expected shape {like.shape} (the image's), got {labels.shape}")
        check_same_grid(labels, like, name=name)
        arr = labels.array
    elif isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        arr = labels
    else:
        raise InvalidTypeError(
            f"{name}: expected a Volume or numpy array of labels, got {type(labels).__name__}"
        )
    if arr.shape != like.shape:
        raise ShapeMismatchError(f"{name}: expected shape {like.shape} (the image's), got {arr.shape}")
    return check_label_map(arr, name, maximum=num_labels)


def _device(device: str | torch.device) -> torch.device:
    from medsam2kit.predictor import resolve_device

    return resolve_device(device)


# --------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """One volume as normalised working-size slices along its axis."""

    images: torch.Tensor  # (n, S, S) float32
    axis: int
    slice_shape: tuple[int, int]
    labels: torch.Tensor | None = field(default=None)  # (n, S, S) int64


@dataclass(frozen=True)
class FitResult:
    """What :meth:`CoarseSegmenter.fit` did; the same kind of result as
    :class:`medsam2kit.train.FitResult` (``steps`` and a ``history`` of step records).

    Attributes:
        steps: optimisation steps run.
        history: one record per step, ``{"kind": "step", "step": s, "epoch": e, "loss": l, "lr": lr}``
            (``step`` counts from 1, ``loss`` is CE + soft Dice, ``lr`` the rate the step used).
        num_slices: training slices available.

    Example:
        >>> FitResult(steps=1, history=({"kind": "step", "step": 1, "epoch": 0, "loss": 0.5, "lr": 0.01},),
        ...           num_slices=4).losses
        (0.5,)
    """

    steps: int
    history: tuple[dict[str, Any], ...] = field(repr=False)
    num_slices: int

    @property
    def losses(self) -> tuple[float, ...]:
        """The training loss of every step, in order."""
        return tuple(float(r["loss"]) for r in self.history if r.get("kind") == "step")


class CoarseSegmenter:
    """Trainable coarse multi-label segmenter (a :class:`CoarseModel`).

    Args:
        config: architecture and pre-processing (default :class:`CoarseConfig`).

    Attributes:
        config: the configuration.
        network: the :class:`UNet2D`, or ``None`` before :meth:`fit` / :meth:`load`.

    Example:
        >>> seg = CoarseSegmenter(CoarseConfig(num_labels=2))
        >>> seg.is_fitted
        False
    """

    def __init__(self, config: CoarseConfig | None = None) -> None:
        if config is not None and not isinstance(config, CoarseConfig):
            raise InvalidTypeError(f"config: expected a CoarseConfig or None, got {type(config).__name__}")
        self.config: CoarseConfig = config if config is not None else CoarseConfig()
        self.network: UNet2D | None = None
        self._device = torch.device("cpu")

    @property
    def is_fitted(self) -> bool:
        """Whether the network has weights (after :meth:`fit` or :meth:`load`)."""
        return self.network is not None

    @property
    def device(self) -> torch.device:
        """The device the network lives on."""
        return self._device

    def axis_for(self, volume: Volume) -> int:
        """The slicing axis used for ``volume``: ``config.axis`` or the geometry's default."""
        return default_axis(volume) if self.config.axis is None else int(self.config.axis)

    def _prepare(self, volume: Volume, labels: np.ndarray | None) -> _Prepared:
        cfg = self.config
        axis = self.axis_for(volume)
        norm = normalize_intensity(volume.array, mode=cfg.normalization, percentiles=cfg.percentiles)
        slices = np.moveaxis(norm, axis, 0)
        size = (cfg.image_size, cfg.image_size)
        images = _resize_images(torch.from_numpy(np.ascontiguousarray(slices))[:, None], size)[:, 0]
        lab = None
        if labels is not None:
            lab = _resize_labels(
                torch.from_numpy(np.ascontiguousarray(np.moveaxis(labels, axis, 0))), cfg.image_size
            )
        return _Prepared(
            images=images.contiguous(), axis=axis, slice_shape=(slices.shape[1], slices.shape[2]), labels=lab
        )

    def fit(
        self,
        volumes: Sequence[VolumeInput],
        labels: Sequence[VolumeInput],
        *,
        steps: int | None = None,
        epochs: int | None = None,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 16,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        warm_start: bool = False,
        progress: Callable[[int, int, float], None] | None = None,
    ) -> FitResult:
        """Train the network on labelled volumes (from scratch unless ``warm_start``).

        Every slice along each volume's axis is a training sample (with its context slices).
        Each epoch visits all slices once in an order drawn from ``generator``; ``steps`` stops
        after that many batches instead. Adam with a cosine learning-rate decay to 0; loss
        cross-entropy + :func:`soft_dice_loss`.

        Args:
            volumes: images, each a :class:`Volume` or a real ``(D, H, W)`` array (identity
                geometry), finite values; shapes may differ between volumes.
            labels: one label map per image, same shape, integers in ``[0, config.num_labels]``
                (bool accepted for one label); a :class:`Volume` must be on the image's grid.
            steps: number of optimisation steps (default: ``epochs`` epochs, or 200 steps when
                neither is given). Give at most one of ``steps`` and ``epochs``.
            epochs: number of passes over all slices.
            lr: peak learning rate (> 0).
            weight_decay: Adam L2 weight decay (>= 0).
            batch_size: slices per step (>= 1).
            generator: CPU ``torch.Generator`` for the weight initialisation and the shuffling;
                ``None`` draws a fresh seed (not reproducible).
            device: ``"cpu"`` (default), ``"auto"``, ``"cuda[:N]"``, ``"mps"`` or a
                ``torch.device`` (resolved by :func:`medsam2kit.predictor.resolve_device`).
            warm_start: keep the current weights instead of re-initialising them.
            progress: called as ``progress(step, total, loss)`` after each step (e.g. to drive
                a progress bar).

        Returns:
            A :class:`FitResult` (steps and per-step history); the segmenter itself is fitted.

        Raises:
            InvalidInputError: empty input, different counts, bad ndim, non-finite values,
                label values outside ``[0, num_labels]``, bad hyper-parameters.
            ShapeMismatchError: a label map's shape differs from its image's.
            InvalidTypeError: wrong types (e.g. an int as ``generator``).
            DeviceError: the device is unknown or not available.

        Example:
            >>> import numpy as np
            >>> seg = CoarseSegmenter(CoarseConfig(image_size=8, base_channels=2, depth=1))
            >>> img = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
            >>> seg.fit([img], [img > 0], steps=2, batch_size=2, generator=torch.Generator().manual_seed(0)).steps
            2
        """
        cfg = self.config
        if isinstance(volumes, (Volume, np.ndarray, torch.Tensor)) or isinstance(
            labels, (Volume, np.ndarray, torch.Tensor)
        ):
            raise InvalidTypeError(
                "volumes, labels: expected sequences (lists) of volumes and label maps, got a single one"
            )
        vols, labs = list(volumes), list(labels)
        if not vols:
            raise InvalidInputError("volumes: expected at least one training volume, got none")
        if len(vols) != len(labs):
            raise InvalidInputError(
                f"labels: expected {len(vols)} label maps (one per volume), got {len(labs)}"
            )
        if steps is not None and epochs is not None:
            raise InvalidInputError(
                f"steps, epochs: expected at most one of them, got steps={steps}, epochs={epochs}"
            )
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise InvalidInputError(f"lr: expected a finite number > 0, got {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise InvalidInputError(f"weight_decay: expected a finite number >= 0, got {weight_decay!r}")
        bs = check_int(batch_size, "batch_size", minimum=1)
        dev = _device(device)
        gen = check_generator(generator)
        if warm_start and self.network is None:
            raise InvalidInputError("warm_start: expected a fitted or loaded model, got an untrained one")

        prepared: list[_Prepared] = []
        for i, (v, lab) in enumerate(zip(vols, labs)):
            vol = _as_volume(v, f"volumes[{i}]")
            lab_arr = _as_labels(lab, vol, cfg.num_labels, f"labels[{i}]")
            prepared.append(self._prepare(vol, lab_arr))

        # Flatten all slices; per sample the indices of its context slices in the flat stack.
        images = torch.cat([p.images for p in prepared]).to(dev)
        targets = torch.cat([p.labels for p in prepared if p.labels is not None]).to(dev)
        ctx_rows, offset = [], 0
        for p in prepared:
            n = p.images.shape[0]
            ctx_rows.append(torch.from_numpy(context_indices(n, cfg.context) + offset))
            offset += n
        ctx = torch.cat(ctx_rows).to(dev)  # (N, C)
        num = images.shape[0]
        per_epoch = math.ceil(num / bs)
        if steps is not None:
            total = check_int(steps, "steps", minimum=1)
        elif epochs is not None:
            total = check_int(epochs, "epochs", minimum=1) * per_epoch
        else:
            total = 200

        if warm_start and self.network is not None:
            net = self.network.to(dev)
        else:
            net = build_network(cfg, device="cpu")
            init_weights(net, gen)
            net = net.to(dev)
        self.network = net
        self._device = dev
        opt = torch.optim.Adam(net.parameters(), lr=float(lr), weight_decay=float(weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / total)))
        net.train()
        history: list[dict[str, Any]] = []
        order = torch.empty(0, dtype=torch.long)
        pos = 0
        for step in range(total):
            if pos >= order.numel():
                order, pos = torch.randperm(num, generator=gen), 0
            idx = order[pos : pos + bs].to(dev)
            pos += bs
            x = images[ctx[idx]]  # (B, C, S, S)
            y = targets[idx]
            logits = net(x)
            loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y)
            lr_used = float(opt.param_groups[0]["lr"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            history.append({"kind": "step", "step": step + 1, "epoch": step // per_epoch,
                            "loss": float(loss.detach()), "lr": lr_used})
            if progress is not None:
                progress(step + 1, total, history[-1]["loss"])
        net.eval()
        return FitResult(steps=total, history=tuple(history), num_slices=num)

    @torch.inference_mode()
    def predict_proba(self, volume: VolumeInput, *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities on the volume's exact voxel grid.

        Args:
            volume: a :class:`Volume` or a real ``(D, H, W)`` array (identity geometry), finite.
            batch_size: slices per forward pass (>= 1).

        Returns:
            float32 ``(L + 1, D, H, W)`` in ``[0, 1]``, summing to 1 over axis 0; channel 0 the
            background, channel ``l`` label ``l``.

        Example:
            >>> import numpy as np
            >>> seg = CoarseSegmenter(CoarseConfig(image_size=8, base_channels=2, depth=1))
            >>> img = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)
            >>> _ = seg.fit([img], [img > 0], steps=1)
            >>> seg.predict_proba(img).shape
            (2, 3, 5, 7)
        """
        if self.network is None:
            raise InvalidInputError(
                "model: expected a fitted or loaded CoarseSegmenter; call fit() or load() first"
            )
        bs = check_int(batch_size, "batch_size", minimum=1)
        vol = _as_volume(volume, "volume")
        prep = self._prepare(vol, None)
        n = prep.images.shape[0]
        ctx = torch.from_numpy(context_indices(n, self.config.context))
        net = self.network
        net.eval()
        out = torch.empty((n, self.config.num_classes, *prep.slice_shape), dtype=torch.float32)
        images = prep.images.to(self._device)
        for start in range(0, n, bs):
            rows = ctx[start : start + bs].to(self._device)
            logits = net(images[rows]).float()
            logits = _resize_images(logits, prep.slice_shape)
            out[start : start + bs] = logits.softmax(dim=1).cpu()
        proba = out.numpy().transpose(1, 0, 2, 3)  # (K, n, h, w), slice axis first
        proba = np.moveaxis(proba, 1, prep.axis + 1)
        return np.ascontiguousarray(proba, dtype=np.float32)

    def __call__(self, volume: Volume) -> np.ndarray:
        """Same as :meth:`predict_proba` (so a segmenter is a :class:`CoarseModel`)."""
        return self.predict_proba(volume)

    def predict_labels(self, volume: VolumeInput) -> np.ndarray:
        """The arg-max label map ``(D, H, W)`` uint8/int (0 background).

        Example:
            >>> import numpy as np
            >>> seg = CoarseSegmenter(CoarseConfig(image_size=8, base_channels=2, depth=1))
            >>> img = np.zeros((2, 4, 4), np.float32)
            >>> _ = seg.fit([img], [img > 0], steps=1)
            >>> seg.predict_labels(img).shape
            (2, 4, 4)
        """
        proba = self.predict_proba(volume)
        dtype = np.uint8 if proba.shape[0] <= 256 else np.int32
        return proba.argmax(axis=0).astype(dtype)

    # ----------------------------------------------------------------------------------------
    # Persistence
    # ----------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights and configuration to ``path`` (a torch file, written atomically).

        The file holds a dict ``{"format_version": int, "config": JSON str, "state_dict": ...}``
        readable with ``torch.load(..., weights_only=True)``.

        Returns:
            ``path`` as a :class:`pathlib.Path`.

        Example:
            >>> import tempfile, pathlib, numpy as np
            >>> seg = CoarseSegmenter(CoarseConfig(image_size=8, base_channels=2, depth=1))
            >>> img = np.zeros((2, 8, 8), np.float32)
            >>> _ = seg.fit([img], [img > 0], steps=1)
            >>> p = seg.save(pathlib.Path(tempfile.mkdtemp()) / "m.pt")
            >>> CoarseSegmenter.load(p).config == seg.config
            True
        """
        if self.network is None:
            raise InvalidInputError(
                "model: expected a fitted or loaded CoarseSegmenter to save, got an untrained one"
            )
        target = Path(path)
        if not target.parent.is_dir():
            raise MissingFileError(f"path: folder {str(target.parent)!r} does not exist")
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_json(),
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
        }
        return atomic_write(target, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> CoarseSegmenter:
        """Read a model written by :meth:`save` (``torch.load(weights_only=True)``).

        Raises:
            MissingFileError: no such file.
            FileFormatError: not a coarse-model file (or a newer format version), a damaged
                config, or a config whose sizes exceed :data:`CONFIG_LIMITS` (checked, and the
                tensor shapes compared, before the network is allocated); the file is named.
            CheckpointError: the weights do not fit the stored configuration.
        """
        source = Path(path)
        payload = load_torch(source, what="coarse model file")
        if not isinstance(payload, dict) or not {"format_version", "config", "state_dict"} <= set(payload):
            raise FileFormatError(
                f"path: {str(source)!r} is not a CoarseSegmenter file (expected keys format_version, config, state_dict)"
            )
        version = payload["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FileFormatError(
                f"path: {source}: format_version {version!r} is not supported (expected <= {FORMAT_VERSION})"
            )
        try:
            config = CoarseConfig.from_json(payload["config"])
        except MedSAM2KitError as err:
            raise FileFormatError(f"path: {source}: {err}") from None
        _check_config_limits(config, source)
        state = payload["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FileFormatError(f"path: {source}: state_dict is not a dict of tensors")
        with torch.device("meta"):  # shapes only: nothing is allocated before they match the file
            meta = UNet2D(config.in_channels, config.num_classes, base_channels=config.base_channels,
                          depth=config.depth, norm=config.norm)
        expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            wrong = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
            raise CheckpointError(
                f"path: weights in {source} do not match the stored config: {len(wrong)} tensor(s) differ, e.g. "
                + ", ".join(f"{k} expected {expected.get(k, 'none')} got {found.get(k, 'none')}" for k in wrong[:3])
            )
        seg = cls(config)
        net = build_network(config, device="cpu")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"path: weights in {source} do not match the stored config: {one_line(err)}"
            ) from None
        dev = _device(device)
        seg.network = net.to(dev).eval()
        seg._device = dev
        return seg


#: Sanity limits of a loaded :class:`CoarseConfig` (a file is data: its sizes are checked before
#: anything is built from them).
CONFIG_LIMITS: dict[str, int] = {
    "num_labels": 1024,
    "context": 32,
    "image_size": 4096,
    "base_channels": 1024,
    "depth": 10,
    "widest_channels": 16384,
}


def _check_config_limits(config: CoarseConfig, source: Path) -> None:
    values = {name: int(getattr(config, name)) for name in CONFIG_LIMITS if name != "widest_channels"}
    values["widest_channels"] = config.base_channels * 2**config.depth
    for name, value in values.items():
        if value > CONFIG_LIMITS[name]:
            what = "base_channels * 2 ** depth" if name == "widest_channels" else name
            raise FileFormatError(
                f"path: {source}: config {what} = {value} exceeds the sane limit {CONFIG_LIMITS[name]} "
                "(damaged or not a medsam2kit coarse model)"
            )


__all__ = [
    "CONFIG_LIMITS",
    "FORMAT_VERSION",
    "CoarseConfig",
    "CoarseModel",
    "CoarseSegmenter",
    "FitResult",
    "UNet2D",
    "build_network",
    "context_indices",
    "init_weights",
    "normalize_intensity",
    "soft_dice_loss",
]
