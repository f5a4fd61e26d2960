"""Fine-tune SAM2 on carotid ultrasound recordings (a short CPU run), then validate.

Trains on the carotid recordings of ``../shared/data/carotid_us`` except the held-out ones
(:data:`medsam2kit.reference.HELD_OUT`) and validates (first-frame mask propagation, Dice and J&F)
on those held-out recordings: split by recording, never by frame. Writes ``checkpoint_last.pt``
(resumable; sam2's ``build_sam2`` loads it), ``model_final.pt``, ``metrics.jsonl`` and
``curves.png`` to ``--out``. The optimiser values are the model's fine-tuning defaults
(``medsam2kit models --verbose``; see ``docs/us_study.md`` for how the bundled model's were
chosen) unless ``--lr`` is given.

By default the model is the bundled reference model (micro SAM2, 128 px) so that the run takes a
minute or two on a CPU. With a real checkpoint from the model zoo on a GPU (sam2's own
fine-tuning values are then the defaults)::

    python examples/finetune_carotid.py --model sam2.1_hiera_tiny --image-size 512 --steps 2000 --device cuda
    # or several GPUs, same arguments:
    torchrun --nproc_per_node 4 examples/finetune_carotid.py --model sam2.1_hiera_tiny --steps 2000 --device cuda

(bf16 autocast is used on CUDA automatically; ``medsam2kit models`` says where each checkpoint goes.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsam2kit._data import shared_data_dir
from medsam2kit.models import resolve_model
from medsam2kit.reference import shared_files
from medsam2kit.train import config_from_dict, fit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/carotid"))
    ap.add_argument("--model", default="reference",
                    help="model zoo name or checkpoint file (default: the bundled reference model)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=None,
                    help="learning rate of every part (default: the model's fine-tuning defaults)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    data = shared_data_dir(Path(__file__).resolve().parent)
    train = [] if data is None else shared_files(data, "carotid_us", ("train", "validation"))
    val = [] if data is None else shared_files(data, "carotid_us", ("held_out",))
    if not train or not val:
        print("carotid data not found: set MEDSAM2KIT_DATA or place it at ../shared/data", file=sys.stderr)
        return 1
    spec = resolve_model(args.model)
    cfg = config_from_dict({
        "paradigm": "task_specific",
        "model": {"config": spec.config, "checkpoint": str(spec.checkpoint),
                  "image_size": args.image_size or spec.image_size},
        "data": {
            "train": [{"kind": "cine", "path": str(p), "name": p.stem} for p in train],
            "val": [{"kind": "cine", "path": str(p), "name": p.stem} for p in val],
            "clip_length": 8, "batch_size": 2, "val_max_frames": 30,
        },
        "prompts": {"mode": "mixed", "frames_to_correct": 1, "correction_clicks": 2},
        "optim": {"warmup_steps": 5, **({"lr": args.lr, "encoder_lr": args.lr} if args.lr else {})},
        "schedule": {"steps": args.steps, "steps_per_epoch": max(1, args.steps // 4)},
        "device": args.device,
        "output_dir": str(args.out),
    })
    result = fit(cfg)
    print(f"steps {result.steps}; validation {result.val}")
    print(f"checkpoint: {result.checkpoint}\nmodel: {result.final_model}\ncurves: {result.output_dir / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
