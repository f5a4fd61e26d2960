"""The annotator's automatic modes without Qt: SAM2Med3D (coarse network + SAM2) and FATE-SAM
(support volumes or a saved support bank), each giving a label map for the volume being annotated.

Example:
    >>> import torch
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> pred = SAM2Predictor.from_pretrained("reference", device="cpu")
    >>> support = ellipsoid_phantom((8, 48, 40), (3.0, 1.0, 1.0), rng=1)
    >>> query, _ = ellipsoid_phantom((8, 48, 40), (3.0, 1.0, 1.0), rng=2)
    >>> result = run_fewshot(pred, build_bank(pred, [support]), query)
    >>> result.labels.shape, result.method
    ((8, 48, 40), 'fewshot')
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medsam2kit._files import IMAGE_EXTENSIONS, split_case
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.errors import InvalidInputError, InvalidTypeError, MissingFileError
from medsam2kit.fewshot import FewShotPipeline, SupportBank
from medsam2kit.io import load_label, load_volume
from medsam2kit.pipelines import SAM2Med3DConfig, SAM2Med3DPipeline
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.register import RegistrationConfig
from medsam2kit.sequencer import default_axis
from medsam2kit.volume import Volume

Pair = tuple[Volume, Volume]
AutoMethod = Literal["sam2med3d", "fewshot"]


@dataclass(frozen=True, eq=False)
class AutoResult:
    """A label map made by an automatic mode.

    Attributes:
        labels: ``(D, H, W)`` label map on the image's grid.
        method: ``"sam2med3d"`` or ``"fewshot"``.
        prompt_slices: SAM2Med3D: per label, the slices the spatial filter chose as prompts
            (``{}`` for FATE-SAM).
        axis: the slicing axis used.
        encoder_calls: image-encoder passes on the image.
        seconds: wall time.
    """

    labels: np.ndarray = field(repr=False)
    method: AutoMethod
    prompt_slices: Mapping[int, tuple[int, ...]]
    axis: int
    encoder_calls: int
    seconds: float


def load_pairs(pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]]) -> list[Pair]:
    """Read ``(image, labels)`` file pairs (the labels must lie on the image's grid)."""
    out = []
    for image_path, label_path in pairs:
        image = load_volume(image_path)
        out.append((image, load_label(label_path, like=image)))
    return out


def label_file_for(image: str | os.PathLike[str]) -> Path | None:
    """The label file beside an image, found by the library's case naming (``a_img.nii.gz`` ->
    ``a_label.nii.gz``, ``a_labels.nii.gz``, ``a_seg.nii.gz``, ...); ``None`` when there is none.

    Example:
        >>> label_file_for("/nonexistent/a_img.nii.gz") is None
        True
    """
    p = Path(image)
    if not p.parent.is_dir():
        return None
    case = split_case(p)[0]
    for candidate in sorted(p.parent.iterdir()):
        if candidate == p or not candidate.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        if split_case(candidate) == (case, "label"):
            return candidate
    return None


def train_coarse(
    pairs: Sequence[Pair],
    *,
    steps: int = 200,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CoarseSegmenter:
    """Train SAM2Med3D's coarse network on labelled volumes (labels ``1..L``, ``L`` the largest
    label found); ``progress(step, total)`` after each step."""
    if not pairs:
        raise InvalidInputError("training volumes: expected at least one (image, labels) pair, got none")
    top = max(int(lab.array.max()) for _, lab in pairs)
    if top < 1:
        raise InvalidInputError("training volumes: the label maps hold no label > 0; annotate or load labels first")
    seg = CoarseSegmenter(CoarseConfig(num_labels=top))
    report = None if progress is None else (lambda step, total, _loss: progress(step, total))
    seg.fit([img for img, _ in pairs], [lab.array for _, lab in pairs], steps=steps, generator=generator,
            progress=report)
    return seg


def run_sam2med3d(
    predictor: SAM2Predictor,
    coarse: CoarseSegmenter,
    volume: Volume,
    *,
    axis: int | None = None,
) -> AutoResult:
    """SAM2Med3D on ``volume``: coarse network -> reliable slices -> SAM2 -> fusion."""
    if not isinstance(coarse, CoarseSegmenter) or not coarse.is_fitted:
        raise InvalidTypeError("coarse: expected a trained or loaded coarse network; train one or load a saved one")
    t0 = time.perf_counter()
    ax = default_axis(volume) if axis is None else axis
    result = SAM2Med3DPipeline(coarse, predictor, SAM2Med3DConfig(axis=ax)).run(volume)
    slices = {lab: tuple(o.selection.indices) for lab, o in result.outcomes.items()}
    return AutoResult(labels=np.asarray(result.labels.array), method="sam2med3d", prompt_slices=slices, axis=ax,
                      encoder_calls=result.encoder_calls, seconds=time.perf_counter() - t0)


def build_bank(predictor: SAM2Predictor, pairs: Sequence[Pair], *, axis: int | None = None) -> SupportBank:
    """FATE-SAM's support bank from labelled support volumes (each slice encoded once)."""
    if not pairs:
        raise InvalidInputError("support volumes: expected at least one (image, labels) pair, got none")
    return SupportBank.build(predictor, list(pairs), axis=axis)


def load_bank(path: str | os.PathLike[str]) -> SupportBank:
    """A support bank saved before (:meth:`SupportBank.save`)."""
    if not Path(path).is_file():
        raise MissingFileError(f"support bank: {path}: no such file")
    return SupportBank.load(Path(path))


def run_fewshot(predictor: SAM2Predictor, supports: SupportBank | Sequence[Pair], volume: Volume) -> AutoResult:
    """FATE-SAM on ``volume``, prompt-free: from a support bank, or from labelled support volumes
    registered onto ``volume`` first (``FewShotPipeline(..., align=RegistrationConfig())``, the
    command line's default; a bank per run)."""
    t0 = time.perf_counter()
    if isinstance(supports, SupportBank):
        result = FewShotPipeline(predictor, supports).run(volume)
    elif isinstance(supports, Sequence) and not isinstance(supports, str):
        if not supports:
            raise InvalidInputError("support volumes: expected at least one (image, labels) pair, got none")
        result = FewShotPipeline(predictor, list(supports), align=RegistrationConfig()).run(volume)
    else:
        raise InvalidTypeError(f"supports: expected a SupportBank or (image, labels) pairs, got {type(supports).__name__}")
    return AutoResult(labels=np.asarray(result.labels.array), method="fewshot", prompt_slices={}, axis=result.axis,
                      encoder_calls=result.encoder_calls, seconds=time.perf_counter() - t0)


__all__ = [
    "AutoResult",
    "build_bank",
    "label_file_for",
    "load_bank",
    "load_pairs",
    "run_fewshot",
    "run_sam2med3d",
    "train_coarse",
]
