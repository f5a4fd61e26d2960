"""Fine-tune SAM2 on the carotid ultrasound recording (a short CPU run), then validate.

Trains on frames 0-59 of ``../shared/data/carotid_us`` and validates (first-frame mask
propagation, Dice and J&F) on frames 60-89. Writes ``checkpoint_last.pt`` (resumable; sam2's
``build_sam2`` loads it), ``model_final.pt``, ``metrics.jsonl`` and ``curves.png`` to ``--out``.

By default the model is the bundled reference model (micro SAM2, 128 px, trained on phantoms) so
that the run takes a minute or two on a CPU. With a real checkpoint from the model zoo on a GPU::

    python examples/finetune_carotid.py --model sam2.1_hiera_tiny --image-size 512 --steps 2000 \\
        --lr 5e-6 --device cuda
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
from medsam2kit.train import config_from_dict, fit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/carotid"))
    ap.add_argument("--model", default="reference",
                    help="model zoo name or checkpoint file (default: the bundled reference model)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-4, help="3e-4 for a random-init micro model; SAM2 uses 5e-6")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    data = shared_data_dir(Path(__file__).resolve().parent)
    recording = None if data is None else data / "carotid_us" / "carotid_202201121748100022.npz"
    if recording is None or not recording.is_file():
        print("carotid data not found: set MEDSAM2KIT_DATA or place it at ../shared/data", file=sys.stderr)
        return 1
    spec = resolve_model(args.model)
    cfg = config_from_dict({
        "paradigm": "task_specific",
        "model": {"config": spec.config, "checkpoint": str(spec.checkpoint),
                  "image_size": args.image_size or spec.image_size},
        "data": {
            "train": [{"kind": "cine", "path": str(recording), "frame_range": [0, 60], "name": "carotid-train"}],
            "val": [{"kind": "cine", "path": str(recording), "frame_range": [60, 90], "name": "carotid-val"}],
            "clip_length": 4, "augment": "ultrasound", "val_max_frames": 30,
        },
        "prompts": {"mode": "mixed", "correction_clicks": 3},
        "optim": {"lr": args.lr, "encoder_lr": args.lr * 0.6, "grad_clip": 1.0, "warmup_steps": 5},
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
