"""Resampling through a deformable registration (a ``Warp``) onto a CT-sized grid: memory and time.

FATE-SAM's default (``FewShotPipeline(align=...)``, the CLI's ``fewshot``) and ``RegisteredAtlas``
resample each support's image and every label's indicator onto the query's grid through a
:class:`~medsam2kit.register.Warp`. Side by side in one run, each in a fresh process:

* ``whole grid`` (two releases ago): the grid's coordinates built at once (three arrays of the
  grid's size for the displaced indices, three for the points);
* ``slabs`` (the previous release, the baseline): the same sampling in slabs of about 4 M points,
  each slab reading the whole support, and a label map taken one label at a time over the whole
  grid (two float32 arrays of the grid's size: the running best and the label's indicator);
* ``slabs, box`` (the library now): each slab reads only the box of the support around its
  points, and a label map is taken slab by slab, all labels in each (no float array of the
  grid's size).

The query: a CT grid of ``--shape`` (default 120 x 512 x 512 voxels, 2.5 x 0.7 x 0.7 mm, 31 M voxels), a
smooth random displacement (its own 3 x 4 bytes per voxel, the Warp's size, is in both rows); the
support: a labelled volume of 256 x 256 x 60 with 3 labels. Reports peak RSS above the inputs and
wall time per ``resample`` call (image, then label map) and the ratios to the previous release.

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


def child(shape: tuple[int, int, int], variant: str) -> dict[str, Any]:
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
    resample_labels = lambda: resample(label, onto, warp, labels=True)  # noqa: E731
    if variant == "whole":  # one slab holding the whole grid
        for fn in (register._sample, register._slab_points):
            fn.__kwdefaults__["chunk_points"] = int(np.prod(shape)) + 1
    if variant != "now":  # each slab reads the whole support, labels one at a time: the previous release
        register._slab_points = whole_source(register._slab_points)
        resample_labels = lambda: previous_labels(label, onto, warp)  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image_s, _ = timed(lambda: resample(image, onto, warp))
    label_s, labels = timed(resample_labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"image_s": image_s, "label_s": label_s, "peak_rss_above_inputs_mb": peak - base,
            "inputs_rss_mb": base, "voxels": int(np.prod(shape)),
            "label_counts": np.bincount(labels.array.reshape(-1), minlength=4).tolist()}


def whole_source(slab_points: Any) -> Any:
    """The slabs of ``slab_points``, each reading the whole source instead of its box."""

    def slabs(src_affine: Any, src_shape: Any, *args: Any, **kwargs: Any) -> Any:
        for rows, box, points in slab_points(src_affine, src_shape, *args, **kwargs):
            points += np.array([s.start for s in box], np.float32)[:, None, None, None]
            yield rows, tuple(slice(0, n) for n in src_shape), points

    return slabs


def previous_labels(label: Any, onto: Any, warp: Any) -> Any:
    """The previous release's label path: each label's indicator over the whole grid in turn,
    a running best of the grid's size."""
    from medsam2kit import register

    best = np.full(onto.shape, 0.5, np.float32)
    out = np.zeros(onto.shape, np.uint8)
    for i, p in register._indicators(label, onto, warp):
        win = p > best
        out[win] = i
        np.copyto(best, p, where=win)
    return onto.with_array(out)


VARIANTS = {"whole": "whole grid (two releases ago)", "previous": "slabs (previous release)",
            "now": "slabs, box around the points (now)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[120, 512, 512], metavar=("D", "H", "W"))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.shape[0], args.shape[1], args.shape[2])
    if args.child:
        print(json.dumps(child(shape, args.child)))
        return 0
    runs = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--child", variant, "--shape", *map(str, shape)],
                              check=True, capture_output=True, text=True)
        runs[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    keys = ("peak_rss_above_inputs_mb", "image_s", "label_s")
    rows = [[VARIANTS[v], *(runs[v][k] for k in keys)] for v in VARIANTS]
    ratios = {k: runs["now"][k] / runs["previous"][k] for k in keys}
    rows.append(["ratio now / previous release", *ratios.values()])
    # the two releases' label maps differ only where an indicator is within float rounding of one half
    moved = int(np.abs(np.subtract(runs["now"]["label_counts"], runs["previous"]["label_counts"])).max())
    print_table(f"resample through a Warp onto {shape[0]}x{shape[1]}x{shape[2]} ({runs['now']['voxels'] / 1e6:.1f} M voxels); "
                f"label counts differ from the previous release's by at most {moved} voxels",
                ["variant", "peak RSS above inputs (MB)", "image (s)", "label map, 3 labels (s)"], rows)
    write_json("register", {"shape": list(shape), "runs": runs, "ratios": ratios, "label_count_largest_difference": moved})
    return 0


if __name__ == "__main__":
    sys.exit(main())
