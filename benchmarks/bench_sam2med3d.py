"""SAM2Med3D end-to-end benchmark: time per volume by stage and the share outside the image encoder.

Hiera-t random init on CPU at 256 px (and 512 px), a volume from ../shared/data/pyradiomics
(breast1, 21 slices) when present, else a synthetic phantom. The coarse network is a small 2D
U-Net fitted briefly on the same volume (this measures time, not accuracy). Three prompt slices
propagate in both directions; every slice must be encoded once.

Run: ``python benchmarks/bench_sam2med3d.py [--sizes 256 512]``. Prints a table and writes
``benchmarks/results/sam2med3d.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit._data import shared_data_dir  # noqa: E402
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter  # noqa: E402
from medsam2kit.io import load_label, load_volume  # noqa: E402
from medsam2kit.phantoms import ellipsoid_phantom  # noqa: E402
from medsam2kit.pipelines import SAM2Med3DConfig, SAM2Med3DPipeline  # noqa: E402
from medsam2kit.predictor import SAM2Predictor, build_model  # noqa: E402
from medsam2kit.prompts import SliceFilterConfig  # noqa: E402
from medsam2kit.volume import Volume  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def case() -> tuple[str, Volume, Volume]:
    data = shared_data_dir(Path(__file__).resolve().parent)
    if data is not None and (data / "pyradiomics" / "breast1_img.nii.gz").is_file():
        image = load_volume(data / "pyradiomics" / "breast1_img.nii.gz")
        return "pyradiomics breast1", image, load_label(data / "pyradiomics" / "breast1_label.nii.gz", like=image)
    image, label = ellipsoid_phantom((21, 120, 96), (2.1, 0.66, 0.66), rng=0)
    return "phantom (no shared data)", image, label.with_array((label.array > 0).astype("uint8"))


def fitted_coarse(image: Volume, label: Volume) -> CoarseSegmenter:
    """The benchmarks' coarse network: a small 2.5D U-Net fitted on the case itself (time, not accuracy)."""
    coarse = CoarseSegmenter(CoarseConfig(num_labels=1, context=1, image_size=96, base_channels=12, depth=3))
    coarse.fit([image], [label.with_array((label.array > 0).astype("uint8"))], steps=200,
               generator=torch.Generator().manual_seed(0))
    return coarse


def run(size: int, image: Volume, coarse: CoarseSegmenter, propagation: str) -> dict[str, Any]:
    torch.manual_seed(0)
    pred = SAM2Predictor(build_model(CONFIG, device="auto", image_size=size))
    cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=3), propagation=propagation)  # type: ignore[arg-type]
    pipe = SAM2Med3DPipeline(coarse, pred, cfg)
    pipe.run(image)  # warm-up (allocator, RoPE tables)
    total, result = timed(lambda: pipe.run(image))
    prompts = sum(len(o.selection.indices) for o in result.outcomes.values())
    if prompts == 0:
        raise SystemExit("the coarse network found no reliable slice: nothing to propagate, nothing measured")
    slices = image.shape[result.outcomes[1].selection.axis]
    return {
        "image_size": size,
        "propagation": propagation,
        "total_s": total,
        **{f"{k}_s": v for k, v in result.seconds.items()},
        "encoder_s": result.encoder_seconds,
        "outside_encoder_share": 1.0 - result.encoder_seconds / total,
        "encoder_calls": result.encoder_calls,
        "slices": slices,
        "prompt_slices": prompts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    name, image, label = case()
    coarse = fitted_coarse(image, label)
    rows, records = [], []
    for size in args.sizes:
        for propagation in ("joint", "separate"):
            r = run(size, image, coarse, propagation)
            records.append(r)
            rows.append([size, propagation, r["total_s"], r["coarse_s"], r["select_s"], r["propagate_s"], r["fuse_s"],
                         r["encoder_s"], r["outside_encoder_share"], f"{r['encoder_calls']}/{r['slices']}",
                         r["prompt_slices"]])
    print_table(
        f"SAM2Med3D end to end, hiera-t random init, {name} {image.shape}, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'} (target: share outside encoder <= 0.25 at 256 px)",
        ["px", "propagation", "total s", "coarse s", "select s", "propagate s", "fuse s", "encoder s",
         "outside encoder", "encoder calls/slices", "prompt slices"],
        rows,
    )
    write_json("sam2med3d", {"case": name, "shape": list(image.shape), "runs": records})


if __name__ == "__main__":
    main()
