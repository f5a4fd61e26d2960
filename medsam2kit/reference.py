"""The bundled micro reference models: small SAM2.1s trained by this library, on CPU.

No SAM2 weights can be assumed to be present (tests, CI, a first look at the library), yet with
random weights nothing shows that the pipelines segment anything. The package therefore ships
``sam2.1_hiera_micro`` (the real sam2 classes scaled down to 1.8 M parameters, 128 px frames)
trained with :mod:`medsam2kit.train`:

* ``reference`` (:data:`REFERENCE_WEIGHTS`, the default model): the phantom model fine-tuned
  three times in a row (:func:`real_train_config`, seeds 0, 1 and 2) on the shared real cases (MRI and CT volumes, carotid recordings, fetal-head images moving along
  random trajectories) minus the held-out ones (:data:`HELD_OUT`), plus phantoms
  (:func:`real_train_config`); recipe choices are made on the :data:`VALIDATION` cases;
* ``reference-phantoms`` (:data:`PHANTOM_WEIGHTS`): trained from random initialisation on the 3D
  phantoms of :func:`medsam2kit.phantoms.random_phantom` only (:func:`reference_train_config`);
* ``reference-fetal-head`` (:data:`FETAL_HEAD_WEIGHTS`), ``reference-carotid``
  (:data:`CAROTID_WEIGHTS`) and ``reference-volumes`` (:data:`VOLUMES_WEIGHTS`): task models,
  ``reference`` fine-tuned once more on one task's data alone (:func:`task_train_config`): box
  prompts on fetal-head ultrasound, tracking the common carotid artery through B-mode
  recordings, one-prompt propagation through CT and MRI volumes; stored in float16 (half the
  bytes, cast back to float32 on loading), as is the phantom model.

All are small models trained for minutes on two CPU cores: **not for clinical use**, and no
substitute for Meta's or MedSAM2's checkpoints on real images (``docs/reference_model.md`` is
the model card, with the held-out figures). ``examples/train_reference_model.py`` reproduces
each from its seed; ``examples/evaluate_reference_model.py`` scores them on the held-out cases.

Example:
    >>> cfg = reference_train_config(seed=0)
    >>> cfg.model.config, cfg.data.train[0].phantom, cfg.schedule.steps
    ('sam2.1_hiera_micro', 'volume', 2000)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from dataclasses import dataclass, field
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medsam2kit.errors import MissingFileError
from medsam2kit.volume import Volume

if TYPE_CHECKING:
    import torch

    from medsam2kit.predictor import SAM2Predictor
    from medsam2kit.train.config import TrainConfig

#: The sam2 configuration of the reference model (shipped in ``medsam2kit/configs``).
REFERENCE_CONFIG = "sam2.1_hiera_micro"
#: File name of the shipped weights inside the package (``medsam2kit/weights``).
REFERENCE_WEIGHTS = "sam2.1_hiera_micro_real.pt"
#: The phantom-only weights (the first reference model; the real-image recipe starts from them).
PHANTOM_WEIGHTS = "sam2.1_hiera_micro_phantoms.pt"
#: The real-image weights (:func:`real_train_config`).
REAL_WEIGHTS = "sam2.1_hiera_micro_real.pt"
#: The fetal-head task model: the real-image weights fine-tuned on fetal-head images
#: (:func:`task_train_config` ``"fetal-head"``), stored in float16 as every task model.
FETAL_HEAD_WEIGHTS = "sam2.1_hiera_micro_fetal_head.pt"
#: The carotid task model: the real-image weights fine-tuned on the carotid recordings
#: (:func:`task_train_config` ``"carotid"``), stored in float16.
CAROTID_WEIGHTS = "sam2.1_hiera_micro_carotid.pt"
#: The volumes task model: the real-image weights fine-tuned on the 3D sources alone
#: (:func:`task_train_config` ``"volumes"``), stored in float16.
VOLUMES_WEIGHTS = "sam2.1_hiera_micro_volumes.pt"
#: Seeds of the phantoms the reference model is trained and validated on; held-out tests and the
#: demo draw theirs from other seeds (see :func:`heldout_phantom`).
TRAIN_SEED, VAL_SEED, HELDOUT_SEED = 1000, 2000, 3000


def heldout_phantoms(seed: int, count: int) -> list[tuple[Volume, Volume]]:
    """``count`` phantoms (:func:`~medsam2kit.phantoms.random_phantom`) that no training or
    validation run of the reference model has seen: their generators are seeded with
    ``[HELDOUT_SEED, seed, k]``, training's with ``[TRAIN_SEED, k]``.

    Example:
        >>> [image.shape == label.shape for image, label in heldout_phantoms(0, 2)]
        [True, True]
    """
    from medsam2kit.phantoms import random_phantom

    return [random_phantom(np.random.default_rng([HELDOUT_SEED, seed, k])) for k in range(count)]


def reference_checkpoint(filename: str = "") -> Path:
    """Path of shipped weights (``{"model": state_dict}``, loadable by sam2's ``build_sam2``):
    ``filename`` in the package's ``weights`` folder (default: the reference model's,
    :data:`REFERENCE_WEIGHTS`).

    Raises:
        MissingFileError: the package was installed without its weights.

    Example:
        >>> reference_checkpoint().name
        'sam2.1_hiera_micro_real.pt'
    """
    path = _packaged(filename or REFERENCE_WEIGHTS)
    if not path.is_file():
        raise MissingFileError(f"reference model: {path} is missing; reinstall medsam2kit or run "
                               "examples/train_reference_model.py to make it")
    return path


def reference_predictor(device: str | torch.device | None = None, **kwargs: Any) -> SAM2Predictor:
    """A :class:`~medsam2kit.predictor.SAM2Predictor` on the reference model (CPU by default:
    the model is small; ``kwargs`` go to the predictor).

    Example:
        >>> reference_predictor().image_size
        128
    """
    from medsam2kit.predictor import SAM2Predictor

    return SAM2Predictor.from_config(REFERENCE_CONFIG, reference_checkpoint(), device=device or "cpu", **kwargs)


#: Shared cases (``../shared/data``, see :func:`medsam2kit._data.shared_data_dir`) that the
#: real-image reference model never trains on, per dataset folder: file-name prefixes, split by
#: case, recording or image (never by slice or frame). Its figures are reported on these.
HELD_OUT: dict[str, tuple[str, ...]] = {
    "msd_hippocampus": ("hippocampus_199",),
    "msd_prostate": ("prostate_28",),
    "deeplesion_ct": ("CT_Lesion_000009", "CT_Lesion_000010"),
    "pyradiomics": ("brain1",),
    "carotid_us": ("carotid_202201121823380035", "carotid_202201121826590036", "carotid_202201121823140034"),
    "hc18_fetal_us": tuple(f"{i:03d}_HC" for i in (*range(0, 16), *range(100, 160))),
}

#: Shared cases set aside to choose between recipes (image size, model size, augmentation):
#: recipe-selection runs (``real_datasets(..., exclude_validation=True)``) never train on them
#: and are compared on them, so that no choice is made on the :data:`HELD_OUT` cases reported.
#: Fixed by name before any comparison (the last training case of each dataset that has more
#: than one). The shipped model, once its recipe is chosen, trains on them too.
VALIDATION: dict[str, tuple[str, ...]] = {
    "msd_hippocampus": ("hippocampus_195",),
    "deeplesion_ct": ("CT_Lesion_000002",),
    "carotid_us": ("carotid_202201121815070032", "carotid_202201121819140033"),
    "hc18_fetal_us": tuple(f"{i:03d}_HC" for i in range(160, 200)),
}

#: A split of the shared cases: reported held-out cases, recipe-selection cases, or the rest.
Split = Literal["held_out", "validation", "train"]
_SPLITS: dict[Split, dict[str, tuple[str, ...]]] = {"held_out": HELD_OUT, "validation": VALIDATION}

#: The shared data folders of labelled 3D cases (``*_img.nii.gz`` beside ``*_label.nii.gz``).
VOLUME_DATASETS: tuple[str, ...] = ("msd_hippocampus", "msd_prostate", "deeplesion_ct", "pyradiomics")

#: Sampling weight of each source of the real-image recipe (see :func:`real_datasets`).
SOURCE_WEIGHTS: dict[str, float] = {"phantoms": 0.5, "volumes": 1.5, "zoom": 1.0, "regions": 0.75, "pasted": 1.0,
                                    "carotid": 1.0, "fetal": 1.0, "fetal_zoom": 1.0}
#: Crop factors of the ``zoom`` source (:func:`medsam2kit.train.data.zoomed_videos`): around the
#: factor the tasks zoom by at inference (:data:`medsam2kit.roi.DEFAULT_ZOOM`).
ZOOM_FACTORS: tuple[float, ...] = (1.5, 2.0, 3.0)
#: The sources of the shipped real-image model: the self-supervised supervoxels (``regions``)
#: lowered every held-out figure in the ablation (docs/reference_model.md), so they are left out.
#: The shipped model's third stage adds the zoomed volumes (``--sources
#: phantoms,volumes,zoom,carotid,fetal``: validation mean 0.542 -> 0.592, docs/reference_model.md).
DEFAULT_SOURCES: tuple[str, ...] = ("phantoms", "volumes", "carotid", "fetal")


def split_of(folder: str, path: Path) -> Split:
    """The split of a shared file: ``"held_out"`` (:data:`HELD_OUT`), ``"validation"``
    (:data:`VALIDATION`) or ``"train"``.

    Example:
        >>> split_of("msd_hippocampus", Path("hippocampus_195_img.nii.gz"))
        'validation'
    """
    for name, prefixes in _SPLITS.items():
        if path.name.startswith(prefixes.get(folder, ())):
            return name
    return "train"


#: The file pattern of one case in each shared data folder (3D cases: their image).
CASE_PATTERNS: dict[str, str] = {**{f: "*_img.nii.gz" for f in VOLUME_DATASETS},
                                 "carotid_us": "*.npz", "hc18_fetal_us": "*_HC.png"}


def shared_files(data_dir: Path, folder: str, splits: Collection[Split]) -> list[Path]:
    """The case files of a shared data folder (:data:`CASE_PATTERNS`) whose split
    (:func:`split_of`) is one of ``splits``, sorted; empty when the folder is absent.

    Example:
        >>> shared_files(Path("/nonexistent"), "carotid_us", ("held_out",))
        []
    """
    return [p for p in sorted((data_dir / folder).glob(CASE_PATTERNS[folder])) if split_of(folder, p) in splits]


def label_file(image: Path) -> Path:
    """The label map beside a shared 3D case's image (``X_img.nii.gz`` -> ``X_label.nii.gz``).

    Example:
        >>> label_file(Path("hippocampus_199_img.nii.gz")).name
        'hippocampus_199_label.nii.gz'
    """
    return image.with_name(image.name.replace("_img.nii.gz", "_label.nii.gz"))


def real_datasets(data_dir: Path, *, sources: tuple[str, ...] = DEFAULT_SOURCES,
                  regions_per_axis: int = 6, seed: int = TRAIN_SEED,
                  exclude_validation: bool = False) -> list[dict[str, Any]]:
    """Training dataset specs (as dicts for :func:`~medsam2kit.train.config.config_from_dict`)
    of the real-image recipe, from the shared data folder, held-out cases excluded (and the
    :data:`VALIDATION` cases with ``exclude_validation``, for recipe-selection runs).

    Sources: ``phantoms`` (600 3D phantoms), ``volumes`` (the labelled 3D cases, sliced along
    their through-plane axis; 1 mm isotropic ones along every axis), ``regions`` (supervoxel
    objects of the same volumes, :func:`medsam2kit.train.selfsup.region_labels`), ``pasted``
    (random 3D shapes pasted into the same volumes with their own texture,
    :func:`medsam2kit.train.selfsup.pasted_labels`), ``zoom`` (the
    labelled volumes cropped around each label at :data:`ZOOM_FACTORS` times its size, as the
    tasks zoom at inference), ``carotid``
    (the labelled recordings), ``fetal`` (the fetal-head images, each an 8-frame moving clip) and
    ``fetal_zoom`` (the same images cropped around the head at :data:`ZOOM_FACTORS` times its box,
    as :func:`medsam2kit.tasks.box_prompt_image` crops at inference, each an 8-frame moving clip).
    Each source's weight (:data:`SOURCE_WEIGHTS`) is shared among its specs.
    """
    from medsam2kit.train.selfsup import region_axes

    kept: tuple[Split, ...] = ("train",) if exclude_validation else ("train", "validation")
    groups: dict[str, list[dict[str, Any]]] = {k: [] for k in sources}
    if "phantoms" in groups:
        groups["phantoms"].append({"kind": "synthetic", "phantom": "volume", "count": 600, "seed": seed})
    for path in [p for f in VOLUME_DATASETS for p in shared_files(data_dir, f, kept)]:
        label = str(label_file(path))
        if "volumes" in groups:
            from medsam2kit.io import load_volume

            vol = load_volume(path)
            axes = region_axes(vol.shape, vol.spacing) if len(set(vol.spacing)) == 1 else [None]
            groups["volumes"] += [{"kind": "volume", "path": str(path), "mask_path": label, "axis": a} for a in axes]
        if "zoom" in groups:
            groups["zoom"].append({"kind": "volume", "path": str(path), "mask_path": label, "zoom": ZOOM_FACTORS})
        if "regions" in groups:
            groups["regions"].append({"kind": "regions", "path": str(path), "count": regions_per_axis, "seed": seed})
        if "pasted" in groups:
            groups["pasted"].append({"kind": "pasted", "path": str(path), "count": regions_per_axis, "seed": seed})
    if "carotid" in groups:
        groups["carotid"] += [{"kind": "cine", "path": str(p)} for p in shared_files(data_dir, "carotid_us", kept)]
    if "fetal" in groups:
        groups["fetal"] += [{"kind": "images", "path": str(p), "motion_frames": 8, "seed": seed}
                            for p in shared_files(data_dir, "hc18_fetal_us", kept)]
    if "fetal_zoom" in groups:
        groups["fetal_zoom"] += [{"kind": "images", "path": str(p), "motion_frames": 8, "seed": seed, "zoom": ZOOM_FACTORS}
                                 for p in shared_files(data_dir, "hc18_fetal_us", kept)]
    return [{**spec, "weight": SOURCE_WEIGHTS[name] / len(specs), "name": f"{name}:{Path(spec.get('path', 'phantoms')).name}"}
            for name, specs in groups.items() for spec in specs]


def real_validation(data_dir: Path, split: Split = "held_out") -> list[dict[str, Any]]:
    """Validation specs (training curves) of the real-image recipe: the 3D cases and carotid
    recordings of ``split``."""
    specs = [{"kind": "volume", "path": str(p), "mask_path": str(label_file(p))}
             for f in VOLUME_DATASETS for p in shared_files(data_dir, f, (split,))]
    return specs + [{"kind": "cine", "path": str(p)} for p in shared_files(data_dir, "carotid_us", (split,))]


@dataclass(frozen=True)
class SharedVolume:
    """One held-out labelled 3D shared case.

    Attributes:
        dataset: the shared data folder it comes from.
        name: the case name (file name without suffixes).
        image: the image.
        label: the label map on the image's grid.
    """

    dataset: str
    name: str
    image: Volume = field(repr=False)
    label: Volume = field(repr=False)


@dataclass(frozen=True)
class SharedArrays:
    """One held-out 2D shared case or recording: frames and true masks as arrays.

    Attributes:
        dataset: the shared data folder it comes from.
        name: the case name (file name without suffixes).
        image: uint8 ``(T, H, W)`` frames of a recording, or ``(H, W)`` for an image.
        label: bool masks of the same shape.
    """

    dataset: str
    name: str
    image: np.ndarray = field(repr=False)
    label: np.ndarray = field(repr=False)


def shared_volumes(data_dir: Path, split: Split = "held_out") -> list[SharedVolume]:
    """The labelled 3D shared cases of a split (``"held_out"``: :data:`HELD_OUT`, hippocampus,
    prostate, CT lesions, brain tumour); empty when the folders are absent."""
    from medsam2kit.io import load_label, load_volume

    out: list[SharedVolume] = []
    for folder in VOLUME_DATASETS:
        for path in shared_files(data_dir, folder, (split,)):
            image = load_volume(path)
            out.append(SharedVolume(folder, path.name.removesuffix("_img.nii.gz"), image,
                                    load_label(label_file(path), like=image)))
    return out


def shared_recordings(data_dir: Path, split: Split = "held_out") -> list[SharedArrays]:
    """The carotid recordings of a split (``"held_out"``: :data:`HELD_OUT`); empty when the
    folder is absent."""
    out: list[SharedArrays] = []
    for path in shared_files(data_dir, "carotid_us", (split,)):
        with np.load(path) as npz:
            out.append(SharedArrays("carotid_us", path.stem, np.asarray(npz["frames"]), np.asarray(npz["masks"]) != 0))
    return out


def shared_images(data_dir: Path, split: Split = "held_out") -> list[SharedArrays]:
    """The fetal-head images of a split (``"held_out"``: :data:`HELD_OUT`); empty when the
    folder is absent."""
    from PIL import Image

    out: list[SharedArrays] = []
    for path in shared_files(data_dir, "hc18_fetal_us", (split,)):
        with Image.open(path) as im, Image.open(path.with_name(path.stem + "_mask.png")) as mk:
            out.append(SharedArrays("hc18_fetal_us", path.stem, np.asarray(im.convert("L")),
                                    np.asarray(mk.convert("L")) > 127))
    return out


def reference_train_config(*, seed: int = 0, steps: int = 2000, output_dir: str = "runs/reference",
                           progress: bool = False) -> TrainConfig:
    """The training recipe of the phantom-only reference model (from random initialisation).

    Clips of 8 slices from 600 phantom volumes (every label an object: shell, core, tube),
    prompted as SAM2 trains (masks, or clicks/boxes with one round of corrections), AdamW at
    5e-4 for every part after a 200-step warm-up, cosine to 2 %, gradients clipped at norm 1
    (sam2's fine-tuning values - lr 5e-6, clip 0.1 - are for adapting pretrained weights, not
    for training from scratch).

    Args:
        seed: seed of clip sampling, prompts, dropout and initial weights.
        steps: optimiser steps.
        output_dir: where the run's checkpoints and records go.
        progress: show a progress bar.
    """
    from medsam2kit.train.config import config_from_dict

    return config_from_dict({
        "model": {"config": REFERENCE_CONFIG},
        "data": {
            "train": [{"kind": "synthetic", "phantom": "volume", "count": 600, "seed": TRAIN_SEED}],
            "val": [{"kind": "synthetic", "phantom": "volume", "count": 8, "seed": VAL_SEED}],
            "clip_length": 8,
            "batch_size": 4,
            "max_objects": 3,
        },
        "prompts": {"mode": "mixed", "prob_point": 0.3, "frames_to_correct": 1, "correction_clicks": 2},
        "optim": {"lr": 5e-4, "encoder_lr": 5e-4, "weight_decay": 0.01, "grad_clip": 1.0,
                  "warmup_steps": 200, "min_lr_ratio": 0.02},
        "schedule": {"steps": steps, "steps_per_epoch": 250, "val_every_epochs": 2},
        "log": {"progress": progress, "plot": True},
        "output_dir": output_dir,
        "seed": seed,
    }, source="reference_train_config")


def real_train_config(data_dir: Path, *, seed: int = 0, steps: int = 2400, output_dir: str = "runs/reference_real",
                      sources: tuple[str, ...] = DEFAULT_SOURCES, init: str | Path | None = None,
                      image_size: int | None = None, augment: str = "none", exclude_validation: bool = False,
                      progress: bool = False) -> TrainConfig:
    """The training recipe of the real-image reference model: the phantom model fine-tuned on
    :func:`real_datasets` (held-out cases excluded), validated on :func:`real_validation`.

    Clips of 8 frames, 4 per step, up to 3 objects each, prompts as SAM2 trains (masks, or
    clicks/boxes with one round of corrections: box prompts matter for ultrasound), AdamW at
    3e-4 for every part after a 100-step warm-up, cosine to 2 %, gradients clipped at norm 1.

    Args:
        data_dir: the shared data folder.
        seed: seed of clip sampling, prompts and dropout.
        steps: optimiser steps.
        output_dir: the run folder.
        sources: the sources kept (an ablation drops some).
        init: the weights to start from (default: the phantom-only model).
        image_size: the model's input size (default: the configuration's, 128 px).
        augment: the clip augmentation preset (``data.augment``).
        exclude_validation: a recipe-selection run: leave the :data:`VALIDATION` cases out of
            training and draw the validation curves on them (default: train on them, curves on
            the held-out cases).
        progress: show a progress bar.
    """
    from medsam2kit.train.config import config_from_dict

    return config_from_dict({
        "model": {"config": REFERENCE_CONFIG, "checkpoint": str(init or _packaged(PHANTOM_WEIGHTS)),
                  "image_size": image_size},
        "data": {
            "train": real_datasets(data_dir, sources=sources, exclude_validation=exclude_validation),
            "val": real_validation(data_dir, "validation" if exclude_validation else "held_out"),
            "augment": augment,
            "clip_length": 8,
            "batch_size": 4,
            "max_objects": 3,
            "val_max_frames": 24,
        },
        "prompts": {"mode": "mixed", "prob_point": 0.5, "frames_to_correct": 1, "correction_clicks": 2},
        "optim": {"lr": 3e-4, "encoder_lr": 3e-4, "weight_decay": 0.01, "grad_clip": 1.0,
                  "warmup_steps": 100, "min_lr_ratio": 0.02},
        "schedule": {"steps": steps, "steps_per_epoch": 250, "val_every_epochs": 2},
        "log": {"progress": progress, "plot": True},
        "output_dir": output_dir,
        "seed": seed,
    }, source="real_train_config")


@dataclass(frozen=True)
class TaskRecipe:
    """What a task model is fine-tuned on (:func:`task_train_config`) and where it is stored.

    Attributes:
        sources: the training sources (keys of :data:`SOURCE_WEIGHTS`, see :func:`real_datasets`).
        weights: the weight file in the package's ``weights`` folder.
        augment: the clip augmentation preset (``data.augment``).
    """

    sources: tuple[str, ...]
    weights: str
    augment: str = "none"


#: The task models' recipes, by task name. The volumes task model trains with SAM2's generic
#: video transforms (chosen on the validation cases, docs/reference_model.md: with them the
#: validation mean rose 0.486 -> 0.520, without them it fell to 0.437).
TASK_RECIPES: dict[str, TaskRecipe] = {
    "fetal-head": TaskRecipe(("fetal_zoom",), FETAL_HEAD_WEIGHTS),
    "carotid": TaskRecipe(("carotid",), CAROTID_WEIGHTS),
    "volumes": TaskRecipe(("phantoms", "volumes", "zoom"), VOLUMES_WEIGHTS, augment="generic"),
}


def task_train_config(data_dir: Path, task: str, *, seed: int = 0, steps: int = 600,
                      output_dir: str | None = None, init: str | Path | None = None, augment: str | None = None,
                      image_size: int | None = None, exclude_validation: bool = False,
                      progress: bool = False) -> TrainConfig:
    """The recipe of a task model: the real-image model (or ``init``) fine-tuned on one task's
    shared data alone (:data:`TASK_RECIPES`; held-out cases excluded), with
    :func:`real_train_config`'s prompts and optimiser, 600 steps, no validation curve (the task
    is scored by ``examples/evaluate_reference_model.py``).

    Task-specific checkpoints, as MedSAM2 ships them: the default model shares its 1.8 M
    parameters among MRI, CT and two ultrasound tasks. Measured on the validation cases, each
    recipe run from the recipe-selection model (docs/reference_model.md):

    * ``"fetal-head"`` (source ``fetal_zoom``: each fetal-head image cropped around the head at
      :data:`ZOOM_FACTORS` times its box, an 8-frame moving clip): box-prompt Dice 0.873 -> 0.922;
    * ``"carotid"`` (source ``carotid``: the labelled carotid recordings): first-mask tracking
      Dice 0.568 -> 0.668;
    * ``"volumes"`` (sources ``phantoms``, ``volumes`` and ``zoom``, with SAM2's generic video
      transforms): mask propagation through the validation hippocampus and CT lesion, plain and
      after one-shot adaptation, mean 0.486 -> 0.520 (from the rebuilt selection model).

    Args:
        data_dir: the shared data folder.
        task: a key of :data:`TASK_RECIPES`.
        seed: seed of clip sampling, prompts and dropout.
        steps: optimiser steps.
        output_dir: the run folder (default ``runs/reference_<task>``).
        init: the weights to start from (default: the packaged real-image model).
        augment: the clip augmentation preset (``data.augment``; default the task's,
            :data:`TASK_RECIPES`).
        image_size: the model's input size (default: the configuration's, 128 px).
        exclude_validation: a recipe-selection run: leave the :data:`VALIDATION` cases out.
        progress: show a progress bar.

    Raises:
        InvalidInputError: ``task`` is not a key of :data:`TASK_RECIPES`.

    Example:
        >>> cfg = task_train_config(Path("../shared/data"), "fetal-head")
        >>> cfg.prompts.mode, cfg.schedule.steps, cfg.data.val, Path(cfg.model.checkpoint).name
        ('mixed', 600, (), 'sam2.1_hiera_micro_real.pt')
    """
    from medsam2kit.errors import InvalidInputError

    if task not in TASK_RECIPES:
        raise InvalidInputError(f"task: expected one of {', '.join(TASK_RECIPES)}, got {task!r}")
    recipe = TASK_RECIPES[task]
    config = real_train_config(data_dir, seed=seed, steps=steps,
                               output_dir=output_dir or f"runs/reference_{task.replace('-', '_')}",
                               sources=recipe.sources, init=init or _packaged(REAL_WEIGHTS),
                               augment=recipe.augment if augment is None else augment, image_size=image_size,
                               exclude_validation=exclude_validation, progress=progress)
    return config.replace(**{"data.val": (), "schedule.val_every_epochs": 0})


def _packaged(name: str) -> Path:
    return Path(str(resources.files("medsam2kit") / "weights" / name))


__all__ = [
    "DEFAULT_SOURCES",
    "CAROTID_WEIGHTS",
    "FETAL_HEAD_WEIGHTS",
    "HELD_OUT",
    "HELDOUT_SEED",
    "PHANTOM_WEIGHTS",
    "REAL_WEIGHTS",
    "REFERENCE_CONFIG",
    "REFERENCE_WEIGHTS",
    "SOURCE_WEIGHTS",
    "TASK_RECIPES",
    "TaskRecipe",
    "VOLUMES_WEIGHTS",
    "TRAIN_SEED",
    "VAL_SEED",
    "VOLUME_DATASETS",
    "VALIDATION",
    "CASE_PATTERNS",
    "SharedArrays",
    "SharedVolume",
    "Split",
    "heldout_phantoms",
    "label_file",
    "real_datasets",
    "real_train_config",
    "real_validation",
    "reference_checkpoint",
    "reference_predictor",
    "reference_train_config",
    "shared_files",
    "shared_images",
    "shared_recordings",
    "shared_volumes",
    "task_train_config",
    "split_of",
]
