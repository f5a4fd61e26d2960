"""Labelled videos for fine-tuning, a stateless clip sampler, dataset mixing and batching.

Sources (:class:`~medsam2kit.train.config.DatasetSpec` ``kind``):

* ``cine``: an ``.npz`` with ``frames`` ``(T, H, W)`` and ``masks`` ``(T, H, W)``, or any file
  :func:`medsam2kit.io.load_volume` reads (e.g. a multi-frame ultrasound DICOM) plus a label file;
* ``frames``: a folder of frame images (one video) with masks beside them;
* ``images``: the same layout, every image its own one-frame clip;
* ``volume``: a 3D image and label map, sliced along an axis into a frame sequence;
* ``synthetic``: ultrasound-like phantom clips (fan sector, speckle, a moving, beating chamber
  and an occluder; :func:`medsam2kit.phantoms.ultrasound_clip`).

Every video is resized once to the model's square size (aspect kept, zero padding) and kept as
uint8 frames ``(T, S, S)`` and bool per-object masks ``(T, K, S, S)``.

The sampler is stateless: item ``i`` of micro-batch ``m`` of step ``s`` is a pure function of
``(seed, stage, s, m, i)``, so a resumed run sees the same clips, and ``W`` processes with batch
``B`` see exactly the clips that one process with batch ``W * B`` sees (rank ``r`` takes items
``r*B .. r*B+B-1``).

Example:
    >>> from medsam2kit.train.data import synthetic_videos, ClipSampler
    >>> vids = synthetic_videos(2, frames=6, image_size=64, seed=0)
    >>> sampler = ClipSampler([vids], clip_length=4, seed=0)
    >>> clip = sampler.clip(step=0, micro=0, item=0)
    >>> tuple(clip.frames.shape), clip.masks.dtype
    ((4, 64, 64), torch.bool)
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from medsam2kit._validate import check_label_map
from medsam2kit.errors import FileFormatError, InvalidInputError, MissingFileError, ShapeMismatchError
from medsam2kit.train.config import SHORT_MAX_FRAMES, DatasetSpec, Duration
from medsam2kit.volume import Volume

if TYPE_CHECKING:
    from medsam2kit.roi import Roi

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LABEL_KEYS = ("masks", "mask", "labels", "label", "seg", "segmentation")
_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class Video:
    """One labelled video (or slice sequence) at model resolution.

    Attributes:
        frames: uint8 ``(T, S, S)`` CPU tensor.
        masks: bool ``(T, K, S, S)`` CPU tensor, one channel per object.
        obj_ids: the label value of each object.
        name: where it came from.
        present: bool ``(T, K)``: the object has foreground on the frame.
    """

    frames: torch.Tensor = field(repr=False)
    masks: torch.Tensor = field(repr=False)
    obj_ids: tuple[int, ...]
    name: str
    present: torch.Tensor = field(repr=False)

    @property
    def num_frames(self) -> int:
        """``T``."""
        return int(self.frames.shape[0])


@dataclass(frozen=True, eq=False)
class Clip:
    """A training clip.

    Attributes:
        frames: uint8 ``(T, S, S)``.
        masks: bool ``(T, K, S, S)`` (``K >= 1``; objects present on frame 0 when possible).
        seed: the clip's seed (prompt noise and clicks of its objects derive from it).
        source: ``"<video name>@<start>"``.
    """

    frames: torch.Tensor = field(repr=False)
    masks: torch.Tensor = field(repr=False)
    seed: int
    source: str


@dataclass(frozen=True, eq=False)
class Batch:
    """Clips collated for the model.

    Attributes:
        images: float32 ``(T, B, 3, S, S)``, normalised as sam2 expects.
        masks: bool ``(T, N, S, S)``: the ``N`` objects of all clips.
        obj_to_clip: int64 ``(N,)``: the clip of each object.
        obj_seeds: one seed per object (prompt noise, clicks).
        sources: the clips' sources.
    """

    images: torch.Tensor = field(repr=False)
    masks: torch.Tensor = field(repr=False)
    obj_to_clip: torch.Tensor
    obj_seeds: tuple[int, ...]
    sources: tuple[str, ...]

    @property
    def num_frames(self) -> int:
        """``T``."""
        return int(self.images.shape[0])

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device``."""
        return Batch(
            self.images.to(device, non_blocking=True),
            self.masks.to(device, non_blocking=True),
            self.obj_to_clip.to(device),
            self.obj_seeds,
            self.sources,
        )


# --------------------------------------------------------------------------------------------
# Making videos
# --------------------------------------------------------------------------------------------


def make_video(frames: np.ndarray, labels: np.ndarray, *, image_size: int, name: str,
               label_values: Sequence[int] = (), is_volume: bool = False, axis: int | None = None,
               affine: np.ndarray | None = None) -> Video | None:
    """Resize a labelled frame stack (or a volume) to ``image_size`` and split its objects.

    Args:
        frames: ``(T, H, W)`` frames (uint8 kept as is; other dtypes windowed by percentiles
            0.5-99.5 %), or a ``(D, H, W)`` volume when ``is_volume``.
        labels: integer ``(T, H, W)`` label map of the same shape (non-zero = foreground).
        image_size: model input side ``S``.
        name: for messages and logs.
        label_values: labels to keep as objects (default: every non-zero value).
        is_volume: slice ``frames`` along ``axis`` (default: the through-plane axis of ``affine``).
        axis: the slicing axis of a volume.
        affine: a volume's ``(4, 4)`` affine.

    Returns:
        The :class:`Video`, or ``None`` when no kept object has any foreground.

    Example:
        >>> import numpy as np
        >>> f = np.zeros((3, 20, 10), np.uint8); lab = np.zeros((3, 20, 10), np.uint8); lab[:, 5:9, 2:6] = 1
        >>> v = make_video(f, lab, image_size=32, name="toy")
        >>> tuple(v.masks.shape), v.obj_ids
        ((3, 1, 32, 32), (1,))
    """
    from medsam2kit.sequencer import PercentileWindow, sequence_frames, sequence_volume

    if frames.shape != labels.shape:
        raise ShapeMismatchError(f"{name}: frames have shape {frames.shape} but labels have {labels.shape}")
    if frames.ndim != 3:
        raise InvalidInputError(f"{name}: expected frames (T, H, W), got shape {frames.shape}")
    lab = check_label_map(labels, f"{name}: labels")
    values = _object_values(lab, label_values)
    if not values:
        return None
    window = None if frames.dtype == np.uint8 else PercentileWindow()
    if is_volume:
        vol = Volume(np.asarray(frames, dtype=np.float32), np.eye(4) if affine is None else affine)
        seq = sequence_volume(vol, axis=axis, image_size=image_size, window=PercentileWindow())
    else:
        seq = sequence_frames(frames, image_size=image_size, window=window)
    ax = seq.layout.axis
    t_count = len(seq)
    masks = torch.zeros((t_count, len(values), image_size, image_size), dtype=torch.bool)
    for t, s in enumerate(seq.slice_indices):
        sl = np.take(lab, s, axis=ax)
        for k, v in enumerate(values):
            if np.any(sl == v):
                masks[t, k] = seq.mask_to_frame(sl == v)
    present = masks.flatten(2).any(-1)
    if not bool(present.any()):
        return None
    frames_u8 = seq.grey_frames
    return Video(frames_u8.contiguous(), masks, values, name, present)


def zoomed_videos(image: Volume, labels: np.ndarray, *, factors: Sequence[float], image_size: int,
                  label_values: Sequence[int] = (), axis: int | None = None) -> list[Video]:
    """A labelled volume as zoomed slice sequences: per label and factor, the volume cropped
    in-plane around the label's box on its largest slice (:func:`medsam2kit.roi.roi_around`),
    that label the only object.

    Example:
        >>> from medsam2kit.volume import Volume
        >>> img = Volume(np.random.default_rng(0).random((4, 64, 64)), np.eye(4))
        >>> lab = np.zeros((4, 64, 64), np.uint8); lab[:, 10:20, 10:20] = 1
        >>> [v.masks.float().mean().item() for v in zoomed_videos(img, lab, factors=[2.0], image_size=32, axis=0)]
        [0.25]
    """
    from medsam2kit.sequencer import default_axis

    ax = default_axis(image) if axis is None else axis
    out = []
    for value, factor, roi in _zoom_rois(labels, ax, factors, label_values):
        crop = roi.crop_volume(image)
        video = make_video(crop.array, np.where(roi.crop(labels == value), value, 0), image_size=image_size,
                           name=f"{image.source or 'volume'}[label {value}, zoom {factor:g}]",
                           label_values=(value,), is_volume=True, axis=ax, affine=crop.affine)
        if video is not None:
            out.append(video)
    return out


def zoomed_frames(frames: np.ndarray, labels: np.ndarray, *, factors: Sequence[float], image_size: int,
                  name: str, label_values: Sequence[int] = ()) -> list[Video]:
    """Labelled ``(T, H, W)`` frames (an image: ``T = 1``) as zoomed videos: per label and factor,
    every frame cropped to the square of ``factor`` times the label's box on the frame where it
    is largest (:func:`medsam2kit.roi.roi_around`, as :func:`medsam2kit.tasks.box_prompt_image`
    crops at inference), that label the only object.

    Example:
        >>> f = np.zeros((1, 60, 90), np.uint8); lab = np.zeros((1, 60, 90), np.uint8); lab[0, 20:30, 40:50] = 1
        >>> [v.masks.float().mean().item() for v in zoomed_frames(f, lab, factors=[2.0], image_size=32, name="toy")]
        [0.25]
    """
    out = []
    for value, factor, roi in _zoom_rois(labels, 0, factors, label_values):
        video = make_video(roi.crop(frames), np.where(roi.crop(labels == value), value, 0), image_size=image_size,
                           name=f"{name}[label {value}, zoom {factor:g}]", label_values=(value,))
        if video is not None:
            out.append(video)
    return out


def _zoom_rois(labels: np.ndarray, axis: int, factors: Sequence[float],
               label_values: Sequence[int]) -> Iterator[tuple[int, float, Roi]]:
    """Per label present (``label_values``, default all) and factor: the crop around the label's
    box on its largest slice along ``axis``."""
    from medsam2kit.roi import largest_slice, roi_around

    for value in _object_values(labels, label_values):
        mask = labels == value
        if not mask.any():
            continue
        largest = np.take(mask, largest_slice(mask, axis=axis), axis=axis)
        for factor in factors:
            yield value, float(factor), roi_around(largest, labels.shape, axis=axis, factor=float(factor))


def _object_values(labels: np.ndarray, label_values: Sequence[int]) -> tuple[int, ...]:
    """The label values that become objects: ``label_values``, by default every non-zero value,
    except that a mask holding exactly the values 1 and 255 is one object, 255."""
    values = tuple(int(v) for v in label_values) or tuple(int(v) for v in np.unique(labels) if v != 0)
    return (255,) if not label_values and set(values) == {1, 255} else values


def synthetic_videos(count: int, *, frames: int = 12, image_size: int = 128, seed: int = 0,
                     size: tuple[int, int] | None = None) -> list[Video]:
    """Ultrasound-like phantom videos (fan sector, speckle, a moving and beating chamber = object 1,
    a bright occluder with its shadow = object 2).

    Example:
        >>> vids = synthetic_videos(1, frames=4, image_size=64)
        >>> vids[0].obj_ids, vids[0].num_frames
        ((1, 2), 4)
    """
    from medsam2kit.phantoms import ultrasound_clip

    if count < 1 or frames < 1:
        raise InvalidInputError(f"count, frames: expected >= 1, got {count}, {frames}")
    hw = size or (image_size, image_size)
    out = []
    for i in range(count):
        clip, labels = ultrasound_clip(frames, hw, rng=np.random.default_rng([seed, i]))
        video = make_video(clip, labels, image_size=image_size, name=f"synthetic[{seed}:{i}]", label_values=(1, 2))
        if video is not None:
            out.append(video)
    return out


def phantom_volume_videos(count: int, *, image_size: int = 128, seed: int = 0) -> list[Video]:
    """3D phantoms (:func:`medsam2kit.phantoms.random_phantom`) as slice sequences along their
    through-plane axis, one object per label present (1 shell, 2 core, 3 tube).

    Example:
        >>> vids = phantom_volume_videos(1, image_size=64)
        >>> vids[0].obj_ids[:2], vids[0].frames.shape[1:]
        ((1, 2), torch.Size([64, 64]))
    """
    from medsam2kit.phantoms import random_phantom

    if count < 1:
        raise InvalidInputError(f"count: expected >= 1, got {count}")
    out = []
    for i in range(count):
        image, label = random_phantom(np.random.default_rng([seed, i]))
        video = make_video(image.array, np.asarray(label.array), image_size=image_size, name=f"phantom[{seed}:{i}]",
                           is_volume=True, affine=image.affine)
        if video is not None:
            out.append(video)
    return out


def load_videos(spec: DatasetSpec, *, image_size: int) -> list[Video]:
    """Every video of a dataset spec, at model resolution.

    Raises:
        MissingFileError: nothing matches ``spec.path`` (or a mask file is missing).
        FileFormatError: a file cannot be read.
        ShapeMismatchError: masks and frames differ in shape.

    Example:
        >>> from medsam2kit.train.config import DatasetSpec
        >>> len(load_videos(DatasetSpec(kind="synthetic", count=2, frames=3), image_size=64))
        2
    """
    if spec.kind == "synthetic" and spec.phantom == "volume":
        return [_crop(v, spec.frame_range) for v in phantom_volume_videos(spec.count, image_size=image_size, seed=spec.seed)]
    if spec.kind == "synthetic":
        vids = synthetic_videos(spec.count, frames=spec.frames, image_size=image_size, seed=spec.seed)
        return [_crop(v, spec.frame_range) for v in vids]
    paths = _expand(spec.path)
    if spec.kind in ("regions", "pasted"):
        from medsam2kit.train.selfsup import pasted_videos, region_videos

        made = region_videos if spec.kind == "regions" else pasted_videos
        return [_crop(v, spec.frame_range) for p in paths
                for v in made(p, image_size=image_size, count=spec.count, seed=spec.seed, axis=spec.axis)]
    videos: list[Video | None] = []
    for p in paths:
        if spec.kind == "cine":
            frames, labels = _read_cine(p, spec)
            videos.append(make_video(frames, labels, image_size=image_size, name=str(p), label_values=spec.labels))
        elif spec.kind == "volume":
            from medsam2kit.io import load_label, load_volume

            if not spec.mask_path and p.suffix.lower() != ".npz":
                raise InvalidInputError(
                    f"mask_path: required for the volume {p} (kind 'volume' needs the label map of each image, "
                    "e.g. mask_path: 'labels/{stem}_label.nii.gz'; only an .npz can hold its labels itself)"
                )
            vol = load_volume(p)
            lab = load_label(_mask_path(spec, p), like=vol) if spec.mask_path else load_label(p, like=vol)
            if spec.zoom:
                videos += zoomed_videos(vol, np.asarray(lab.array), factors=spec.zoom, image_size=image_size,
                                        label_values=spec.labels, axis=spec.axis)
            else:
                videos.append(make_video(vol.array, np.asarray(lab.array), image_size=image_size, name=str(p),
                                         label_values=spec.labels, is_volume=True, axis=spec.axis, affine=vol.affine))
        else:  # frames / images
            pairs = _frame_files(p, spec.mask_suffix)
            if spec.kind == "frames":
                frames, labels = _read_images(pairs)
                videos.append(make_video(frames, labels, image_size=image_size, name=str(p), label_values=spec.labels))
            else:
                for i, (img, msk) in enumerate(pairs):
                    frames, labels = _read_images([(img, msk)])
                    stills = (zoomed_frames(frames, labels, factors=spec.zoom, image_size=image_size, name=str(img),
                                            label_values=spec.labels) if spec.zoom
                              else [make_video(frames, labels, image_size=image_size, name=str(img),
                                               label_values=spec.labels)])
                    for k, video in enumerate(stills):
                        if video is not None and spec.motion_frames > 1:
                            from medsam2kit.train.selfsup import moving_video

                            seed = derive_seed(spec.seed, i, k) if spec.zoom else derive_seed(spec.seed, i)
                            video = moving_video(video, spec.motion_frames,
                                                 generator=torch.Generator().manual_seed(seed))
                        videos.append(video)
    found = [_crop(v, spec.frame_range) for v in videos if v is not None]
    return [v for v in found if bool(v.present.any())]


def filter_duration(videos: Sequence[Video], duration: Duration) -> list[Video]:
    """The study's split: ``"short"`` keeps videos of at most 7 frames, ``"long"`` the others.

    Example:
        >>> vids = synthetic_videos(1, frames=5, image_size=64) + synthetic_videos(1, frames=9, image_size=64)
        >>> [v.num_frames for v in filter_duration(vids, "short")]
        [5]
    """
    if duration == "all":
        return list(videos)
    if duration == "short":
        return [v for v in videos if v.num_frames <= SHORT_MAX_FRAMES]
    if duration == "long":
        return [v for v in videos if v.num_frames > SHORT_MAX_FRAMES]
    raise InvalidInputError(f"duration: expected 'all', 'short' or 'long', got {duration!r}")


def take_fraction(videos: Sequence[_T], fraction: float, *, seed: int) -> list[_T]:
    """A seeded subset of ``ceil(fraction * n)`` videos (or any items: the study draws recording
    files with it), at least one, in their original order.

    Example:
        >>> vids = synthetic_videos(4, frames=3, image_size=64)
        >>> len(take_fraction(vids, 0.5, seed=0))
        2
    """
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"fraction: expected a value in (0, 1], got {fraction}")
    n = len(videos)
    if n == 0 or fraction >= 1:
        return list(videos)
    keep = max(1, math.ceil(fraction * n))
    chosen = sorted(np.random.default_rng(seed).choice(n, size=keep, replace=False).tolist())
    return [videos[i] for i in chosen]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence), the same on every process.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


Augmenter = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def make_augmenter(name: str, *, p: float = 0.5) -> Augmenter | None:
    """A clip augmentation preset from :mod:`medsam2kit.augment` as a function
    ``(frames uint8 (T,S,S), masks bool (T,K,S,S), generator) -> (frames, masks)``; ``"none"``: None.

    Example:
        >>> make_augmenter("none") is None
        True
    """
    from medsam2kit import augment

    if name == "none":
        return None
    if name == "ultrasound":
        transform = augment.ultrasound(p=p)
    elif name == "generic":
        transform = augment.generic_sam2()
    elif name == "combined":
        transform = augment.combined(p=p)
    else:
        raise InvalidInputError(f"augment: expected none, ultrasound, generic or combined, got {name!r}")

    def run(frames: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        out = transform(frames, masks, generator=generator)
        assert out.mask is not None
        return out.image, out.mask.bool()

    return run


class ClipSampler:
    """Stateless clip sampling from several datasets mixed with weights.

    Args:
        datasets: one list of videos per dataset.
        weights: sampling weight of each dataset (default equal).
        clip_length: frames per clip (temporal context); a shorter video gives a shorter clip.
        stride: step between the frames of a clip.
        max_objects: objects kept per clip (drawn among those present on the first frame).
        seed: the run's seed.
        stage: stage index (a different stream per stage).
        augment: an :data:`Augmenter` or ``None``.

    Example:
        >>> s = ClipSampler([synthetic_videos(2, frames=8, image_size=64)], clip_length=3, stride=2)
        >>> c = s.clip(step=5, micro=0, item=1)
        >>> c.frames.shape[0], c.masks.shape[1] <= 3
        (3, True)
    """

    def __init__(self, datasets: Sequence[Sequence[Video]], *, weights: Sequence[float] | None = None,
                 clip_length: int = 8, stride: int = 1, max_objects: int = 3, seed: int = 0, stage: int = 0,
                 augment: Augmenter | None = None) -> None:
        self.datasets = [list(d) for d in datasets if len(d) > 0]
        w = list(weights) if weights is not None else [1.0] * len(datasets)
        if len(w) != len(datasets):
            raise InvalidInputError(f"weights: expected {len(datasets)} values, got {len(w)}")
        self.weights = np.array([wi for wi, d in zip(w, datasets) if len(d) > 0], dtype=np.float64)
        if not self.datasets:
            raise InvalidInputError("datasets: no labelled video to train on (every dataset is empty after filtering)")
        if np.any(self.weights <= 0):
            raise InvalidInputError(f"weights: expected positive values, got {w}")
        if clip_length < 1 or stride < 1 or max_objects < 1:
            raise InvalidInputError(
                f"clip_length, stride, max_objects: expected >= 1, got {clip_length}, {stride}, {max_objects}"
            )
        self.weights /= self.weights.sum()
        self.clip_length, self.stride, self.max_objects = clip_length, stride, max_objects
        self.seed, self.stage, self.augment = seed, stage, augment

    def clip(self, *, step: int, micro: int, item: int) -> Clip:
        """Item ``item`` of micro-batch ``micro`` of optimiser step ``step`` (pure function)."""
        seed = derive_seed(self.seed, self.stage, step, micro, item)
        rng = np.random.default_rng(seed)
        d = int(rng.choice(len(self.datasets), p=self.weights))
        video = self.datasets[d][int(rng.integers(len(self.datasets[d])))]
        return self._cut(video, rng, seed)

    def batch(self, *, step: int, micro: int, batch_size: int, rank: int = 0) -> list[Clip]:
        """The clips of one process: items ``rank*batch_size .. rank*batch_size + batch_size - 1``."""
        start = rank * batch_size
        return [self.clip(step=step, micro=micro, item=i) for i in range(start, start + batch_size)]

    def _cut(self, video: Video, rng: np.random.Generator, seed: int) -> Clip:
        t_all = video.num_frames
        length = min(self.clip_length, (t_all - 1) // self.stride + 1)
        span = (length - 1) * self.stride + 1
        starts = np.arange(0, t_all - span + 1)
        ok = video.present[starts].any(-1).numpy()
        if ok.any():
            starts = starts[ok]
        start = int(rng.choice(starts))
        idx = torch.arange(start, start + span, self.stride)
        present0 = torch.nonzero(video.present[start]).flatten().tolist() or list(range(len(video.obj_ids)))
        if len(present0) > self.max_objects:
            present0 = sorted(rng.choice(present0, size=self.max_objects, replace=False).tolist())
        frames = video.frames[idx]
        masks = video.masks[idx][:, present0]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(seed)
            frames, masks = self.augment(frames, masks, gen)
        return Clip(frames.contiguous(), masks.contiguous(), seed, f"{video.name}@{start}")


def collate(clips: Sequence[Clip]) -> Batch:
    """Stack clips (cut to the shortest) into a :class:`Batch`; objects of all clips side by side.

    Example:
        >>> s = ClipSampler([synthetic_videos(2, frames=6, image_size=64)], clip_length=4)
        >>> b = collate(s.batch(step=0, micro=0, batch_size=2))
        >>> tuple(b.images.shape), b.masks.shape[1] == b.obj_to_clip.numel()
        ((4, 2, 3, 64, 64), True)
    """
    from medsam2kit.sequencer import normalize_frames

    if not clips:
        raise InvalidInputError("clips: expected at least one clip")
    t = min(int(c.frames.shape[0]) for c in clips)
    images = torch.stack([normalize_frames(c.frames[:t]) for c in clips], dim=1)
    masks = torch.cat([c.masks[:t] for c in clips], dim=1)
    obj_to_clip = torch.cat([torch.full((c.masks.shape[1],), b, dtype=torch.long) for b, c in enumerate(clips)])
    seeds = tuple(derive_seed(c.seed, k) for c in clips for k in range(int(c.masks.shape[1])))
    return Batch(images, masks, obj_to_clip, seeds, tuple(c.source for c in clips))


# --------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------


def _crop(video: Video, frame_range: tuple[int, int] | None) -> Video:
    if frame_range is None:
        return video
    a, b = frame_range
    if a >= video.num_frames:
        raise InvalidInputError(
            f"frame_range: start {a} is beyond the {video.num_frames} frames of {video.name}"
        )
    sl = slice(a, min(b, video.num_frames))
    return Video(video.frames[sl], video.masks[sl], video.obj_ids, f"{video.name}[{a}:{sl.stop}]", video.present[sl])


def _expand(pattern: str) -> list[Path]:
    if any(ch in pattern for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(pattern))
        if not found:
            raise MissingFileError(f"path: nothing matches {pattern!r}")
        return found
    p = Path(pattern)
    if not p.exists():
        raise MissingFileError(f"path: not found: {p}")
    return [p]


def _mask_path(spec: DatasetSpec, image: Path) -> Path:
    stem = image.name.split(".")[0]
    p = Path(spec.mask_path.replace("{stem}", stem))
    if not p.exists():
        raise MissingFileError(f"mask_path: not found: {p} (for {image})")
    return p


def _read_label_array(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = [key] if key else [k for k in _LABEL_KEYS if k in z.files]
            if not keys or keys[0] not in z.files:
                raise FileFormatError(f"{path}: no label array (looked for {[key] if key else list(_LABEL_KEYS)}, found {z.files})")
            arr = np.asarray(z[keys[0]])
    else:
        from medsam2kit.io import load_volume

        arr = np.asarray(load_volume(path).array)
    if arr.shape != shape:
        raise ShapeMismatchError(f"{path}: labels have shape {arr.shape}, frames have {shape}")
    return arr


def _read_cine(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    from medsam2kit.io import load_volume
    from medsam2kit.sequencer import display_ready

    vol = load_volume(path)
    frames = np.asarray(vol.array)
    if spec.mask_path:
        labels = _read_label_array(_mask_path(spec, path), spec.mask_key, frames.shape)
    elif path.suffix == ".npz":
        labels = _read_label_array(path, spec.mask_key, frames.shape)
    else:
        raise InvalidInputError(f"mask_path: required for the cine {path} (its masks are in another file)")
    if frames.dtype != np.uint8 and display_ready(frames):  # 8-bit pixels read as float (DICOM)
        frames = frames.astype(np.uint8)
    return frames, labels


def _natural_key(p: Path) -> list[object]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def _frame_files(path: Path, mask_suffix: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a folder of frame images, or of one image file."""
    if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
        return [(path, _mask_of(path, mask_suffix))]
    if not path.is_dir():
        raise InvalidInputError(f"path: expected a folder of frame images or an image file, got {path}")
    images = sorted((p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES), key=_natural_key)
    pairs = [(img, _mask_of(img, mask_suffix)) for img in images
             if not (mask_suffix and img.stem.endswith(mask_suffix))]
    if not pairs:
        raise MissingFileError(f"path: no frame images ({', '.join(_IMAGE_SUFFIXES)}) in {path}")
    return pairs


def _mask_of(img: Path, mask_suffix: str) -> Path:
    folder = img.parent
    candidates = [folder / "masks" / img.name, folder / "masks" / f"{img.stem}.png",
                  folder / f"{img.stem}{mask_suffix}.png", folder / f"{img.stem}{mask_suffix}{img.suffix}"]
    mask = next((c for c in candidates if c.is_file()), None)
    if mask is None:
        raise MissingFileError(f"{img}: no mask found (looked for {[str(c) for c in candidates]})")
    return mask


def _read_images(pairs: Sequence[tuple[Path, Path]]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    frames, labels = [], []
    for img, msk in pairs:
        try:
            with Image.open(img) as im:
                frames.append(np.asarray(im.convert("L")))
            with Image.open(msk) as im:
                labels.append(np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16", "P", "1") else im))
        except OSError as err:
            raise FileFormatError(f"{img} / {msk}: cannot read image: {err}") from err
    shapes = {f.shape for f in frames} | {m.shape for m in labels}
    if len(shapes) != 1:
        raise ShapeMismatchError(f"{pairs[0][0].parent}: frames and masks differ in size: {sorted(shapes)}")
    return np.stack(frames), np.stack(labels).astype(np.int64)


__all__ = [
    "Augmenter",
    "Batch",
    "Clip",
    "ClipSampler",
    "Video",
    "collate",
    "derive_seed",
    "filter_duration",
    "load_videos",
    "make_augmenter",
    "make_video",
    "phantom_volume_videos",
    "synthetic_videos",
    "take_fraction",
]
