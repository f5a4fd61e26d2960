"""Reproduce the bundled micro reference model from its seed (phantoms only, CPU is enough).

    python examples/train_reference_model.py --seed 0 --out runs/reference

trains ``sam2.1_hiera_micro`` from random initialisation with :mod:`medsam2kit.train` on the 3D
phantoms of :func:`medsam2kit.phantoms.random_phantom` (recipe:
:func:`medsam2kit.reference.reference_train_config`), then writes the weights alone
(``{"model": state_dict}``, about 7 MB) to ``--export`` (default: the package's
``medsam2kit/weights/sam2.1_hiera_micro_phantoms.pt``). The shipped file was made with
``--seed 0 --steps 2000`` on two CPU cores (about 25 minutes); ``medsam2kit.reference`` and
``docs/reference_model.md`` give its held-out figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import medsam2kit
from medsam2kit._files import atomic_write
from medsam2kit.reference import REFERENCE_WEIGHTS, reference_train_config
from medsam2kit.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/reference", help="training run folder")
    parser.add_argument("--export", default=str(Path(medsam2kit.__file__).parent / "weights" / REFERENCE_WEIGHTS),
                        help="where the weights go")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = fit(reference_train_config(seed=args.seed, steps=args.steps, output_dir=args.out, progress=True))
    state = torch.load(result.final_model, map_location="cpu", weights_only=True)["model"]
    dest = atomic_write(Path(args.export), lambda tmp: torch.save({"model": state}, tmp))
    print(json.dumps({"weights": str(dest), "bytes": dest.stat().st_size, "val": result.val}, indent=2))


if __name__ == "__main__":
    main()
