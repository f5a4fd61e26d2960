"""The on-disk feature store: a second SAM2Med3D run of the same volume encodes nothing.

Breast MRI (pyradiomics breast1, 21 slices, from ../shared/data; a phantom without it), hiera-t
random init, SAM2Med3D with a small coarse network. Side by side in one run, at each size:

* ``no store``: the pipeline as usual (every slice encoded);
* ``first run, store``: the same with an empty feature store (every slice encoded and written);
* ``second run, store``: another prompt choice (2 prompt slices instead of 3, so different
  propagations) on the same volume, reading the store: 0 encoder calls.

Reports the time ratio second / first (target <= 0.4 at 512 px on CPU) and the disk per frame,
for the exact store (features as produced) and a bf16 one.

Run: ``python benchmarks/bench_store.py [--sizes 256 512]``. Prints a table and writes
``benchmarks/results/store.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sam2med3d import case, fitted_coarse  # noqa: E402
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit.coarse import CoarseSegmenter  # noqa: E402
from medsam2kit.pipelines import SAM2Med3DConfig, SAM2Med3DPipeline  # noqa: E402
from medsam2kit.predictor import SAM2Predictor, build_model  # noqa: E402
from medsam2kit.prompts import SliceFilterConfig  # noqa: E402
from medsam2kit.store import FeatureStore  # noqa: E402


def run(size: int, image: Any, coarse: CoarseSegmenter, dtype: torch.dtype | None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_t", device="auto", image_size=size)
    first_cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=3))
    second_cfg = SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=2))
    SAM2Med3DPipeline(coarse, SAM2Predictor(model), first_cfg).run(image)  # warm-up
    plain, r0 = timed(lambda: SAM2Med3DPipeline(coarse, SAM2Predictor(model), first_cfg).run(image))
    with tempfile.TemporaryDirectory() as folder:
        pred = SAM2Predictor(model, feature_store=FeatureStore(folder, dtype=dtype))
        first, r1 = timed(lambda: SAM2Med3DPipeline(coarse, pred, first_cfg).run(image))
        second, r2 = timed(lambda: SAM2Med3DPipeline(coarse, pred, second_cfg).run(image))
        files = [p for p in Path(folder).rglob("*.safetensors") if p.name != "pos.safetensors"]
        per_frame = sum(p.stat().st_size for p in files) / max(len(files), 1) / 2**20
    return {
        "image_size": size,
        "store_dtype": "as produced" if dtype is None else str(dtype).replace("torch.", ""),
        "no_store_s": plain,
        "first_s": first,
        "second_s": second,
        "ratio_second_first": second / first,
        "write_overhead": first / plain - 1.0,
        "encoder_calls": [r0.encoder_calls, r1.encoder_calls, r2.encoder_calls],
        "frames_stored": len(files),
        "mb_per_frame": per_frame,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    args = ap.parse_args()
    name, image, label = case()
    coarse = fitted_coarse(image, label)
    rows, records = [], []
    for size in args.sizes:
        for dtype in (None, torch.bfloat16):
            r = run(size, image, coarse, dtype)
            records.append(r)
            rows.append([size, r["store_dtype"], r["no_store_s"], r["first_s"], r["second_s"], r["ratio_second_first"],
                         "/".join(map(str, r["encoder_calls"])), r["mb_per_frame"]])
            print(r, flush=True)
    print_table(
        f"SAM2Med3D twice on {name} {image.shape} with a feature store, hiera-t random init, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'} (target: second/first <= 0.4 at 512 px)",
        ["px", "store dtype", "no store s", "first s", "second s", "second/first", "encoder calls (0/1/2)",
         "MB per frame"],
        rows,
    )
    write_json("store", {"case": name, "shape": list(image.shape), "runs": records})


if __name__ == "__main__":
    main()
