"""Annotator latency: click to mask on the current slice, and propagation over 32 slices.

What a person waits for in the napari annotator (``medsam2kit.napari``), measured on the session
logic the widget runs in its worker thread (:class:`~medsam2kit.napari.session.AnnotationSession`:
record the prompt, replay the prompts into sam2, decode, map back to voxels, write the label map):

1. encode the 32 slices once (the wait after "Start session");
2. click -> mask: a positive click on a slice that has no prompt yet, mask on that slice (median
   over clicks on different slices, the volume not propagated);
3. a second click on the same slice (refinement);
4. propagate both ways over the 32 slices from one click;
5. a correction on a propagated slice: its mask at once and the new propagation (what
   "after propagating, a correction propagates again" does).

Models: the bundled reference model (128 px) and ``sam2.1_hiera_tiny`` with random weights at
512 px (compute does not depend on the weights; a real checkpoint costs the same). With
``--gui`` (needs napari and a display, e.g. ``xvfb-run -a``) step 2 is also timed through the
widget: from the point added to the points layer to the labels layer refreshed.

Run: ``python benchmarks/bench_napari.py [--slices 32] [--threads 1] [--device cpu] [--gui]``.
Prints a table and writes ``benchmarks/results/napari.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit.napari.session import AnnotationSession  # noqa: E402
from medsam2kit.phantoms import ellipsoid_phantom  # noqa: E402
from medsam2kit.predictor import SAM2Predictor, resolve_device  # noqa: E402
from medsam2kit.volume import Volume  # noqa: E402

MODELS = {
    "reference": "the bundled reference model (sam2.1_hiera_micro, 128 px, trained on phantoms)",
    "hiera_t512": "sam2.1_hiera_tiny, random init, 512 px",
}


def build(name: str, device: str) -> SAM2Predictor:
    if name == "reference":
        return SAM2Predictor.from_pretrained("reference", device=device)
    return SAM2Predictor.from_config("sam2.1_hiera_t", device=device, image_size=512)


def interior(mask2d: np.ndarray) -> tuple[int, int]:
    dist = ndimage.distance_transform_edt(mask2d)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def click(ann: AnnotationSession, s: int, rc: tuple[int, int], *, positive: bool = True) -> tuple[float, Any]:
    """Seconds from recording a click to the label map written (plan, run, apply)."""
    return timed(lambda: (ann.add_point((s, *rc), label=1, positive=positive), ann.refresh())[1])


def measure(name: str, predictor: SAM2Predictor, image: Volume, truth: np.ndarray, clicks: int) -> dict[str, Any]:
    n = image.shape[0]
    mid = n // 2
    ann = AnnotationSession(predictor, image, axis=0, model_name=name)
    t_encode, _ = timed(ann.encode)
    calls_after_encode = ann.encoder_calls
    # 2. clicks on slices without prompts, no propagation: each is one slice's mask
    slices = [s for s in range(mid - clicks // 2, mid + clicks - clicks // 2) if truth[s].any()]
    first = [click(ann, s, interior(truth[s]))[0] for s in slices]
    # 3. a second, negative click on the same slice (refinement of its mask)
    edge = truth[mid] & ~ndimage.binary_erosion(truth[mid], iterations=2)
    rows, cols = np.nonzero(edge)
    second, _ = click(ann, mid, (int(rows[np.argmax(cols)]), int(cols.max())), positive=False)
    # 4. propagate both ways from one click (a fresh session's prompts, same features)
    ann.reset_prompts()
    ann.labels[...] = 0
    click(ann, mid, interior(truth[mid]))
    t_prop, update = timed(lambda: ann.propagate("both"))
    visited = len(update.slices)
    # 5. correction on a propagated slice: mask + new propagation
    k = min(mid + 4, n - 1)
    t_corr, corr = click(ann, k, interior(ann.labels[k] == 1) if (ann.labels[k] == 1).any() else interior(truth[k]),
                         positive=False)
    return {
        "model": name,
        "image_size": predictor.image_size,
        "slices": n,
        "encode_s": t_encode,
        "encode_per_slice_ms": 1000 * t_encode / n,
        "click_to_mask_ms": 1000 * statistics.median(first),
        "click_to_mask_all_ms": [1000 * t for t in first],
        "second_click_ms": 1000 * second,
        "propagate_s": t_prop,
        "propagate_slices": visited,
        "propagate_per_slice_ms": 1000 * t_prop / max(visited, 1),
        "correction_s": t_corr,
        "correction_repropagated": corr.direction is not None,
        "encoder_calls_after_encode": ann.encoder_calls - calls_after_encode,
    }


def gui_click(predictor: SAM2Predictor, image: Volume, truth: np.ndarray, clicks: int) -> float:
    """Median seconds from a point added to the points layer to the labels layer refreshed."""
    import napari
    from qtpy.QtWidgets import QApplication

    from medsam2kit.napari._reader import layer_data
    from medsam2kit.napari._widget import AnnotatorWidget

    viewer = napari.Viewer(show=False)
    data, kwargs, _ = layer_data(image, name="phantom")
    viewer.add_image(data, **kwargs)
    widget = AnnotatorWidget(viewer)
    widget._predictors[("reference", "auto")] = predictor
    app = QApplication.instance()

    def wait() -> None:
        while widget.busy or widget.ann is None or widget.ann.pending:
            app.processEvents()
            time.sleep(0.001)
        app.processEvents()

    widget.start_session()
    wait()
    times = []
    mid = image.shape[0] // 2
    for s in range(mid - clicks // 2, mid + clicks - clicks // 2):
        if not truth[s].any():
            continue
        viewer.dims.set_current_step(0, s)
        app.processEvents()
        t0 = time.perf_counter()
        widget.points.add([[s, *interior(truth[s])]])
        wait()
        times.append(time.perf_counter() - t0)
    viewer.close()
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="in-plane voxels of the phantom")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--gui", action="store_true", help="also time a click through the napari widget")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    image, label = ellipsoid_phantom((args.slices, args.size, args.size), (2.0, 0.8, 0.8), rng=0)
    truth = label.array == 1
    rows: list[dict[str, Any]] = []
    for name in args.models:
        predictor = build(name, device)
        row = measure(name, predictor, image, truth, args.clicks)
        row["device"] = device
        if args.gui and name == "reference":
            row["gui_click_to_mask_ms"] = 1000 * gui_click(predictor, image, truth, args.clicks)
        rows.append(row)
        print(f"{name}: done", flush=True)
    header = ["model", "px", "encode 32 (s)", "click->mask (ms)", "2nd click (ms)", "propagate 32 (s)",
              "per slice (ms)", "correction+repropagate (s)", "encoder calls after encode"]
    table = [[r["model"], r["image_size"], r["encode_s"], r["click_to_mask_ms"], r["second_click_ms"],
              r["propagate_s"], r["propagate_per_slice_ms"], r["correction_s"], r["encoder_calls_after_encode"]]
             for r in rows]
    print_table(f"napari annotator latency ({device}, {args.threads} thread(s), {args.slices} slices of "
                f"{args.size}x{args.size})", header, table)
    if any("gui_click_to_mask_ms" in r for r in rows):
        print("\nthrough the napari widget (reference): click -> labels layer refreshed "
              f"{next(r['gui_click_to_mask_ms'] for r in rows if 'gui_click_to_mask_ms' in r):.1f} ms (median)")
    write_json("napari", {"settings": vars(args), "models": MODELS, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
