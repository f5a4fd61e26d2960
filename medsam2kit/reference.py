"""The bundled micro reference model: a small SAM2.1 trained by this library on phantoms only.

No SAM2 weights can be assumed to be present (tests, CI, a first look at the library), yet with
random weights nothing shows that the pipelines segment anything. The package therefore ships
one small model, ``sam2.1_hiera_micro`` (the real sam2 classes scaled down to 1.8 M parameters,
128 px frames), trained with :mod:`medsam2kit.train` on the 3D phantoms of
:func:`medsam2kit.phantoms.random_phantom`. It is the default model of ``medsam2kit demo`` and of
the semantic tests. It knows phantoms and nothing else: **not for clinical use**, and not a
substitute for Meta's checkpoints on real images (see ``docs/reference_model.md``, the model card).

:func:`reference_train_config` is the exact recipe; ``examples/train_reference_model.py``
reproduces the shipped weights from its seed.

Example:
    >>> cfg = reference_train_config(seed=0)
    >>> cfg.model.config, cfg.data.train[0].phantom, cfg.schedule.steps
    ('sam2.1_hiera_micro', 'volume', 2000)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
REFERENCE_WEIGHTS = "sam2.1_hiera_micro_phantoms.pt"
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


def reference_checkpoint() -> Path:
    """Path of the shipped weights (``{"model": state_dict}``, loadable by sam2's ``build_sam2``).

    Raises:
        MissingFileError: the package was installed without its weights.

    Example:
        >>> reference_checkpoint().name
        'sam2.1_hiera_micro_phantoms.pt'
    """
    path = Path(str(resources.files("medsam2kit") / "weights" / REFERENCE_WEIGHTS))
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


def reference_train_config(*, seed: int = 0, steps: int = 2000, output_dir: str = "runs/reference",
                           progress: bool = False) -> TrainConfig:
    """The training recipe of the reference model (from random initialisation).

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


__all__ = [
    "REFERENCE_CONFIG",
    "REFERENCE_WEIGHTS",
    "HELDOUT_SEED",
    "TRAIN_SEED",
    "VAL_SEED",
    "heldout_phantoms",
    "reference_checkpoint",
    "reference_predictor",
    "reference_train_config",
]
