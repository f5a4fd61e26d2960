"""FATE-SAM on hippocampus MRI: two labelled supports, one query, no prompt, no training.

Uses ../shared/data/msd_hippocampus (or $MEDSAM2KIT_DATA/msd_hippocampus); without it, synthetic
phantoms. Writes the label map (NIfTI, with the query's geometry), an overlay picture and the
Dice per label to --out.

    python examples/fewshot_hippocampus.py --out fewshot_out

The default model is the bundled reference model (a micro SAM 2.1 fine-tuned on a few real cases:
on real MRI its masks are poor; the run is real). With a real checkpoint from the model zoo on a GPU:

    python examples/fewshot_hippocampus.py --out fewshot_out --model medsam2_latest --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medsam2kit._data import shared_data_dir
from medsam2kit.fewshot import FewShotPipeline
from medsam2kit.io import load_label, load_volume, save_mask
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.viz import overlay_montage, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("fewshot_out"))
    parser.add_argument("--model", default="reference",
                        help="model zoo name or checkpoint file (default: the bundled reference model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()

    data = shared_data_dir(Path(__file__).resolve().parent)
    if data is not None and (data / "msd_hippocampus").is_dir():
        folder = data / "msd_hippocampus"
        images = [load_volume(folder / f"hippocampus_{c}_img.nii.gz") for c in (184, 195, 199)]
        labels = [load_label(folder / f"hippocampus_{c}_label.nii.gz", like=v) for c, v in zip((184, 195, 199), images)]
        source = "msd_hippocampus: supports 184, 195; query 199"
    else:
        pairs = [ellipsoid_phantom((30, 48, 40), (1.0, 1.0, 1.0), rng=s) for s in (1, 2, 3)]
        images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        source = "synthetic phantoms (shared data not found)"
    print(source)

    predictor = SAM2Predictor.from_pretrained(args.model, device=args.device, image_size=args.image_size)
    pipeline = FewShotPipeline(predictor, list(zip(images[:2], labels[:2])))
    result = pipeline.assembler.segment(images[2])
    truth = labels[2].array
    dice = {}
    for lab in pipeline.bank.labels:
        p, t = result.labels.array == lab, truth == lab
        dice[lab] = round(2 * float((p & t).sum()) / max(float(p.sum() + t.sum()), 1.0), 4)

    args.out.mkdir(parents=True, exist_ok=True)
    save_mask(result.labels, images[2], args.out / "query_labels.nii.gz")
    save_png(overlay_montage(images[2], {"FATE-SAM": result.labels.array}, reference=truth, title=f"{source}: FATE-SAM",
                             dice={"FATE-SAM": dice}), args.out / "overlay.png")
    summary = {"source": source, "model": args.model,
               "support_slices": len(pipeline.bank), "query_encoder_calls": result.encoder_calls,
               "dice_per_label": dice,
               "note": "the bundled reference model is a micro SAM 2.1 fine-tuned on a few real cases; use --model for a real checkpoint"}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/query_labels.nii.gz and overlay.png; start slices {result.start_slice}")
    assert np.array_equal(result.labels.affine, images[2].affine)


if __name__ == "__main__":
    main()
