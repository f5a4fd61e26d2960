"""Resampling through a deformable registration (a ``Warp``) onto a CT-sized grid: memory and time.

FATE-SAM's default (``FewShotPipeline(align=...)``, the CLI's ``fewshot``) and ``RegisteredAtlas``
resample each support's image and every label's indicator onto the query's grid through a
:class:`~medsam2kit.register.Warp`. Side by side in one run, each in a fresh process:

* ``whole grid`` (the previous release, the baseline): the grid's coordinates built at once
  (three arrays of the grid's size for the displaced indices, three for the points);
* ``slabs`` (the library now): the same sampling in slabs of about 4 M points.

The query: a CT grid of ``--shape`` (default 120 x 512 x 512 voxels, 2.5 x 0.7 x 0.7 mm, 31 M voxels), a
smooth random displacement (its own 3 x 4 bytes per voxel, the Warp's size, is in both rows); the
support: a labelled volume of 256 x 256 x 60 with 3 labels. Reports peak RSS above the inputs and
wall time per ``resample`` call (image, then label map) and the ratios slabs / whole grid.

Run: ``python benchmarks/bench_register.py [--shape 120 512 512]``. Prints a table and writes
``benchmarks/results/register.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402


def child(shape: tuple[int, int, int], whole: bool) -> dict[str, Any]:
    """Run in a fresh process: peak RSS and time of resampling an image and a label map."""
    from scipy import ndimage

    from medsam2kit import register
    from medsam2kit.register import AffineAlignment, Warp, resample
    from medsam2kit.volume import Volume

    rng = np.random.default_rng(0)
    onto = Volume(np.zeros(shape, np.float32), np.diag([2.5, 0.7, 0.7, 1.0]))
    support_shape = (60, 256, 256)
    image = Volume(rng.normal(size=support_shape).astype(np.float32), np.diag([5.0, 1.4, 1.4, 1.0]))
    label = Volume(rng.integers(0, 4, size=support_shape).astype(np.uint8), image.affine)
    coarse = rng.normal(scale=3.0, size=(3, 8, 16, 16)).astype(np.float32)  # mm
    zoom = [n / c for n, c in zip(shape, coarse.shape[1:])]
    displacement = np.stack([ndimage.zoom(c, zoom, order=1) for c in coarse]).astype(np.float32)
    warp = Warp(AffineAlignment(np.eye(4), np.zeros(9), 1.0), displacement, (2.5, 0.7, 0.7))
    if whole:  # one slab holding the whole grid: the previous release's memory
        register._sample.__kwdefaults__["chunk_points"] = int(np.prod(shape)) + 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image_s, _ = timed(lambda: resample(image, onto, warp))
    label_s, _ = timed(lambda: resample(label, onto, warp, labels=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"image_s": image_s, "label_s": label_s, "peak_rss_above_inputs_mb": peak - base,
            "inputs_rss_mb": base, "voxels": int(np.prod(shape))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[120, 512, 512], metavar=("D", "H", "W"))
    parser.add_argument("--child", choices=["whole", "slabs"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.shape[0], args.shape[1], args.shape[2])
    if args.child:
        print(json.dumps(child(shape, args.child == "whole")))
        return 0
    runs = {}
    for variant in ("whole", "slabs"):
        done = subprocess.run([sys.executable, __file__, "--child", variant, "--shape", *map(str, shape)],
                              check=True, capture_output=True, text=True)
        runs[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [[name, runs[v]["peak_rss_above_inputs_mb"], runs[v]["image_s"], runs[v]["label_s"]]
            for name, v in (("whole grid (previous release)", "whole"), ("slabs (now)", "slabs"))]
    ratios = {key: runs["slabs"][key] / runs["whole"][key] for key in ("peak_rss_above_inputs_mb", "image_s", "label_s")}
    rows.append(["ratio slabs / whole grid", *ratios.values()])
    print_table(f"resample through a Warp onto {shape[0]}x{shape[1]}x{shape[2]} ({runs['slabs']['voxels'] / 1e6:.1f} M voxels)",
                ["variant", "peak RSS above inputs (MB)", "image (s)", "label map, 3 labels (s)"], rows)
    write_json("register", {"shape": list(shape), "runs": runs, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
