r"""Reproduce the bundled micro reference models from their seeds (two CPU cores are enough).

    python examples/train_reference_model.py                       # a real-image run (see below)
    python examples/train_reference_model.py --recipe phantoms     # the phantom-only model
    python examples/train_reference_model.py --recipe fetal-head   # the fetal-head task model
    python examples/train_reference_model.py --recipe carotid      # the carotid task model
    python examples/train_reference_model.py --recipe volumes      # the volumes task model

``--recipe real`` fine-tunes the phantom-only model (or ``--init``) on the shared real data
(``../shared/data`` or ``$MEDSAM2KIT_DATA``) with its held-out cases left out: phantoms, the
labelled volumes, the carotid recordings and moving fetal-head images (recipe:
:func:`medsam2kit.reference.real_train_config`; ``--sources`` picks others, e.g. ``regions``,
the self-supervised supervoxel objects, for the ablation). The shipped default model is three
such runs, each from the previous one's weights with another seed (new clips):

    python examples/train_reference_model.py --threads 1 --export runs/stage1.pt
    python examples/train_reference_model.py --threads 1 --seed 1 --init runs/stage1.pt --out runs/reference_real2 --export runs/stage2.pt
    python examples/train_reference_model.py --threads 1 --seed 2 --steps 1200 --init runs/stage2.pt \
        --sources phantoms,volumes,zoom,carotid,fetal --out runs/reference_real3

A recipe-selection run (``--exclude-validation``, with ``--image-size`` / ``--augment`` for the
alternatives) leaves the validation cases (:data:`medsam2kit.reference.VALIDATION`) out of
training; score it with ``examples/evaluate_reference_model.py --split validation``.

``--recipe phantoms`` trains ``sam2.1_hiera_micro`` from random initialisation on
the 3D phantoms (:func:`medsam2kit.reference.reference_train_config`).

``--recipe fetal-head`` and ``--recipe carotid`` fine-tune the packaged real-image model (or
``--init``) on one task's images alone, 600 steps (:func:`medsam2kit.reference.task_train_config`):
the fetal-head images zoomed around the head (9 minutes on two CPU cores, 11 on one thread), the
``reference-fetal-head`` task model; the carotid recordings, the ``reference-carotid`` task
model. ``--recipe volumes``: phantoms and the labelled volumes (whole and zoomed) with SAM2's
generic transforms, the ``reference-volumes`` task model (13 minutes on one thread). They have no
validation curve; score them with ``examples/evaluate_reference_model.py``.
Task models and the phantom model are exported in float16 (half the bytes; the loader casts them
back to the model's float32), the real-image model in float32.

The run folder (``--out``) holds checkpoints, per-step records and the loss/validation curves
(``curves.png``); a run interrupted at any point resumes from its last checkpoint when started
again with the same arguments. At the end the weights alone (``{"model": state_dict}``, about
7 MB, 3.6 MB in float16) are written to ``--export`` (default: the package's file of that recipe).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import medsam2kit
from medsam2kit._data import shared_data_dir
from medsam2kit._files import atomic_write
from medsam2kit.reference import (DEFAULT_SOURCES, PHANTOM_WEIGHTS, REAL_WEIGHTS, SOURCE_WEIGHTS, TASK_RECIPES,
                                  real_train_config, reference_train_config, task_train_config)
from medsam2kit.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("real", "phantoms", *TASK_RECIPES), default="real")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help=f"real recipe: comma-separated sources to train on (of {', '.join(SOURCE_WEIGHTS)})")
    parser.add_argument("--init", default=None,
                        help="real and task recipes: weights to start from (default: the phantom-only "
                             "model; task recipes: the packaged real-image model)")
    parser.add_argument("--out", default=None, help="training run folder (default: runs/reference_<recipe>)")
    parser.add_argument("--export", default=None, help="where the weights go (default: the package's file)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="real and task recipes: the model's input size (default: the configuration's, 128 px)")
    parser.add_argument("--augment", choices=("none", "generic", "ultrasound", "combined"), default=None,
                        help="real and task recipes: clip augmentation preset (default: none; the volumes "
                             "task: generic, medsam2kit.reference.TASK_RECIPES)")
    parser.add_argument("--exclude-validation", action="store_true",
                        help="real and task recipes: a recipe-selection run: leave the validation cases "
                             "(medsam2kit.reference.VALIDATION) out of training and draw the curves on them")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or f"runs/reference_{args.recipe.replace('-', '_')}"
    weights = Path(medsam2kit.__file__).parent / "weights"
    dtype = torch.float32
    if args.recipe == "phantoms":
        if args.image_size is not None:
            sys.exit("train_reference_model: --image-size: the phantoms recipe trains at the configuration's 128 px; "
                     "use it with the real or a task recipe")
        config = reference_train_config(seed=args.seed, steps=args.steps or 2000, output_dir=out, progress=True)
        export = Path(args.export or weights / PHANTOM_WEIGHTS)
        dtype = torch.float16
    else:
        data = shared_data_dir()
        if data is None:
            sys.exit(f"train_reference_model: the {args.recipe} recipe needs the shared data folder (../shared/data "
                     "beside the project, or $MEDSAM2KIT_DATA); use --recipe phantoms without it")
        if args.recipe in TASK_RECIPES:
            config = task_train_config(data, args.recipe, seed=args.seed, steps=args.steps or 600, output_dir=out,
                                       init=args.init, augment=args.augment, image_size=args.image_size,
                                       exclude_validation=args.exclude_validation, progress=True)
            export = Path(args.export or weights / TASK_RECIPES[args.recipe].weights)
            dtype = torch.float16
        else:
            sources = tuple(s for s in args.sources.split(",") if s)
            unknown = sorted(set(sources) - set(SOURCE_WEIGHTS))
            if unknown or not sources:
                sys.exit(f"train_reference_model: --sources: expected names among {', '.join(SOURCE_WEIGHTS)}, got {args.sources!r}")
            config = real_train_config(data, seed=args.seed, steps=args.steps or 2400, output_dir=out, sources=sources,
                                       init=args.init, image_size=args.image_size, augment=args.augment or "none",
                                       exclude_validation=args.exclude_validation, progress=True)
            export = Path(args.export or weights / REAL_WEIGHTS)
    last = Path(out) / "checkpoint_last.pt"
    if last.is_file():
        print(f"resuming from {last}", file=sys.stderr)
        config = config.replace(resume=str(last))
    result = fit(config)
    state = torch.load(result.final_model, map_location="cpu", weights_only=True)["model"]
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    dest = atomic_write(export, lambda tmp: torch.save({"model": state}, tmp))
    print(json.dumps({"weights": str(dest), "bytes": dest.stat().st_size, "val": result.val}, indent=2))


if __name__ == "__main__":
    main()
