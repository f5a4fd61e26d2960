"""What zooming costs: one-prompt propagation on whole slices against slices zoomed around the
prompts (:mod:`medsam2kit.roi`), side by side in one run.

The shared 3D cases (../shared/data; two phantoms without it), the bundled reference model at its
128 px, each label prompted by its mask on its largest slice and propagated both ways
(:func:`medsam2kit.tasks.one_prompt_propagation`), ``zoom=None`` against ``zoom=DEFAULT_ZOOM``.
Every slice goes through the encoder once either way, at the same input size; zooming adds the
crop and the paste, and shrinks the windowing and the resampling back to the (cropped) grid.
Reports the median of ``--repeats`` timed calls after a warm-up, the ratio zoom / whole (target:
<= 1.05, zooming must not cost time) and the crop's share of the slice.

Run: ``python benchmarks/bench_zoom.py [--repeats 3]``. Prints a table and writes
``benchmarks/results/zoom.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit._data import shared_data_dir  # noqa: E402
from medsam2kit.predictor import SAM2Predictor  # noqa: E402
from medsam2kit.reference import VOLUME_DATASETS, heldout_phantoms, label_file  # noqa: E402
from medsam2kit.roi import DEFAULT_ZOOM, Roi  # noqa: E402
from medsam2kit.tasks import one_prompt_propagation  # noqa: E402
from medsam2kit.volume import Volume  # noqa: E402


def cases() -> list[tuple[str, Volume, Volume]]:
    """Every shared labelled volume, or two held-out phantoms when the shared data is absent."""
    from medsam2kit.io import load_label, load_volume

    data = shared_data_dir(Path(__file__).resolve().parent)
    paths = [] if data is None else sorted(p for f in VOLUME_DATASETS for p in (data / f).glob("*_img.nii.gz"))
    if not paths:
        print("shared data absent (../shared/data or $MEDSAM2KIT_DATA): two phantoms instead")
        return [(f"phantom_{k}", image, label) for k, (image, label) in enumerate(heldout_phantoms(0, 2))]
    out = []
    for p in paths:
        image = load_volume(p)
        out.append((p.name.removesuffix("_img.nii.gz"), image, load_label(label_file(p), like=image)))
    return out


def crop_share(roi: Roi) -> float:
    """The crop's area over the slice's."""
    (r0, r1), (c0, c1) = roi.rows, roi.cols
    rows, cols = roi.in_plane_axes
    return (r1 - r0) * (c1 - c0) / float(roi.shape[rows] * roi.shape[cols])


def median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    """The median wall time of ``repeats`` calls after a warm-up, and the last call's value."""
    fn()  # warm-up
    runs = [timed(fn) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    predictor = SAM2Predictor.from_pretrained("reference")
    rows, records = [], []
    for name, image, label in cases():
        whole, _ = median_time(lambda: one_prompt_propagation(predictor, image, label, zoom=None), args.repeats)
        zoomed, out = median_time(lambda: one_prompt_propagation(predictor, image, label, zoom=DEFAULT_ZOOM),
                                  args.repeats)
        share = crop_share(out.roi)
        record = {"case": name, "shape": list(image.shape), "whole_s": whole, "zoom_s": zoomed,
                  "ratio_zoom_whole": zoomed / whole, "crop_share": share}
        records.append(record)
        rows.append([name[:30], "x".join(map(str, image.shape)), whole, zoomed, zoomed / whole, share])
    print_table(
        f"one-prompt propagation, whole slices vs zoom {DEFAULT_ZOOM:g}, bundled reference model (128 px), "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {torch.get_num_threads()} threads, median of "
        f"{args.repeats} (target: zoom / whole <= 1.05)",
        ["case", "shape", "whole s", "zoom s", "zoom/whole", "crop / slice"],
        rows,
    )
    write_json("zoom", {"zoom": DEFAULT_ZOOM, "repeats": args.repeats, "runs": records})


if __name__ == "__main__":
    main()
