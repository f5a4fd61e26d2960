"""SAM2Med3D on breast MRI: coarse U-Net -> reliable slices -> SAM2 propagation -> fusion.

Uses ../shared/data/pyradiomics/breast1 (or $MEDSAM2KIT_DATA); without it, a synthetic phantom.
Only one labelled breast case is public here, so the coarse network is fitted on that same case:
this shows the mechanics and the timings, not generalisation (train it on your own cases).
Writes the label map (NIfTI with the input's geometry), an overlay picture and a summary to --out.

    python examples/sam2med3d_breast.py --out sam2med3d_out

The default SAM2 is the bundled reference model (a micro SAM 2.1 fine-tuned on a few real cases,
breast1 among them: far from a real checkpoint; the run is real). With a real checkpoint from the model zoo on a GPU:

    python examples/sam2med3d_breast.py --out sam2med3d_out --model sam2.1_hiera_tiny --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from medsam2kit._data import shared_data_dir
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.io import load_label, load_volume, save_mask
from medsam2kit.metrics import dice, inter_slice_consistency
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.pipelines import SAM2Med3DConfig, SAM2Med3DPipeline
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.prompts import SliceFilterConfig
from medsam2kit.viz import overlay_montage, save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("sam2med3d_out"))
    parser.add_argument("--model", default="reference",
                        help="model zoo name or checkpoint file (default: the bundled reference model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=200, help="coarse-network training steps")
    args = parser.parse_args()

    data = shared_data_dir(Path(__file__).resolve().parent)
    if data is not None and (data / "pyradiomics" / "breast1_img.nii.gz").is_file():
        image = load_volume(data / "pyradiomics" / "breast1_img.nii.gz")
        label = load_label(data / "pyradiomics" / "breast1_label.nii.gz", like=image)
        source = "pyradiomics breast1 (breast MRI tumour)"
    else:
        image, label = ellipsoid_phantom((21, 120, 96), (2.1, 0.66, 0.66), rng=0)
        source = "synthetic phantom (shared data not found)"
    truth = label.array > 0
    print(source, image.shape, "spacing", tuple(round(s, 3) for s in image.spacing))

    coarse = CoarseSegmenter(CoarseConfig(num_labels=1, context=1, image_size=96, base_channels=12, depth=3))
    coarse.fit([image], [label.with_array(truth.astype(np.uint8))], steps=args.steps,
               generator=torch.Generator().manual_seed(0))
    predictor = SAM2Predictor.from_pretrained(args.model, device=args.device, image_size=args.image_size)
    pipeline = SAM2Med3DPipeline(coarse, predictor, SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=3)))
    result = pipeline.run(image)
    outcome = result.outcomes[1]
    axis = outcome.selection.axis
    coarse_mask = result.coarse[1] > 0.5
    fused = result.labels.array > 0

    args.out.mkdir(parents=True, exist_ok=True)
    save_mask(result.labels, image, args.out / "breast_labels.nii.gz")
    picture = overlay_montage(image, {"coarse": coarse_mask.astype(np.uint8), "fused": fused.astype(np.uint8)},
                              reference=truth.astype(np.uint8), title=f"{source}: SAM2Med3D", axis=axis,
                              dice={"coarse": {1: dice(coarse_mask, truth)}, "fused": {1: dice(fused, truth)}},
                              label_names={1: "tumour"})
    save_png(picture, args.out / "overlay.png")
    summary = {
        "source": source,
        "model": args.model,
        "prompt_slices": [{"slice": p.slice_index, "score": round(p.score, 3), "reason": p.reason}
                          for p in outcome.selection.prompts],
        "dice_coarse": round(dice(coarse_mask, truth), 4),
        "dice_fused": round(dice(fused, truth), 4),
        "inter_slice_consistency_fused": str(inter_slice_consistency(fused, axis=axis)),
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "encoder_calls": result.encoder_calls,
        "slices": image.shape[axis],
        "note": "the bundled reference model is a micro SAM 2.1 fine-tuned on a few real cases: use --model for a real checkpoint",
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
