"""How many slices to draw: prompts drawn on 1, 2 or 3 slices per label, propagated through the
held-out shared volumes (hippocampus, prostate, CT lesions, brain tumour) by
:func:`medsam2kit.pipelines.propagate_prompts` with its defaults (zoom 2, the drawn shapes as a
prior, overlaps to the nearest drawing, kept connected), plain and after one-shot adaptation to
the drawn masks, beside copying the nearest drawn slice's mask onto every slice that holds the
label (a baseline given the label's extent).

One slice is the label's largest (the model card's task); two and three are spread along the
structure, at (j + 0.5) / n of its extent. Needs ../shared/data (or $MEDSAM2KIT_DATA).

    python examples/propagate_drawn_slices.py --out drawn_slices.json     # about 20 minutes on two CPU cores
    python examples/propagate_drawn_slices.py --model medsam2_latest --device cuda --adapt-steps 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from medsam2kit._data import shared_data_dir
from medsam2kit.adapt import AdaptConfig
from medsam2kit.metrics import dice
from medsam2kit.pipelines import PromptPropagationConfig, propagate_prompts
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import shared_volumes
from medsam2kit.roi import largest_slice
from medsam2kit.sequencer import default_axis

COPY = "copy nearest drawn slice"


def drawn_slices(mask: np.ndarray, axis: int, n: int) -> list[int]:
    """The slices a reader draws a structure on: its largest for one, else ``n`` spread along it."""
    if n == 1:
        return [largest_slice(mask, axis=axis)]
    holds = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    return sorted({int(holds[min(len(holds) - 1, int((j + 0.5) / n * len(holds)))]) for j in range(n)})


def copy_nearest(mask: np.ndarray, axis: int, slices: list[int]) -> np.ndarray:
    """The nearest drawn slice's mask on every slice holding the structure."""
    holds = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    out = np.zeros(mask.shape, bool)
    for i in holds:
        nearest = min(slices, key=lambda s: (abs(s - i), s))
        np.moveaxis(out, axis, 0)[i] = np.take(mask, nearest, axis=axis)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("drawn_slices.json"), help="the per-label rows (JSON)")
    parser.add_argument("--model", default="reference", help="model zoo name or checkpoint file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--adapt-steps", type=int, default=200, help="adaptation steps (0: plain propagation only)")
    args = parser.parse_args()
    data = shared_data_dir(Path(__file__).resolve().parent)
    if data is None:
        sys.exit("propagate_drawn_slices: needs the shared data folder (../shared/data or $MEDSAM2KIT_DATA)")
    predictor = SAM2Predictor.from_pretrained(args.model, device=args.device)
    runs = [("sam2", None)] + ([(f"sam2 adapted ({args.adapt_steps} steps)", AdaptConfig(steps=args.adapt_steps))]
                               if args.adapt_steps else [])
    rows = []
    for case in shared_volumes(data, "held_out"):
        truth = np.asarray(case.label.array)
        axis = default_axis(case.image)
        labels = [int(v) for v in np.unique(truth) if v]
        for n in (1, 2, 3):
            slices = {lab: drawn_slices(truth == lab, axis, n) for lab in labels}
            drawn = np.zeros(truth.shape, np.int32)
            for lab, idx in slices.items():
                for i in idx:
                    np.moveaxis(drawn, axis, 0)[i][np.take(truth == lab, i, axis=axis)] = lab
            for method, adapt in runs:
                start = time.perf_counter()
                out = propagate_prompts(predictor, case.image, case.label.with_array(drawn),
                                        PromptPropagationConfig(adapt=adapt)).labels.array
                seconds = time.perf_counter() - start
                rows += [dict(dataset=case.dataset, case=case.name, label=lab, slices=n, drawn=slices[lab],
                              method=method, dice=dice(out == lab, truth == lab), seconds=seconds) for lab in labels]
            rows += [dict(dataset=case.dataset, case=case.name, label=lab, slices=n, drawn=slices[lab], method=COPY,
                          dice=dice(copy_nearest(truth == lab, axis, slices[lab]), truth == lab), seconds=0.0)
                     for lab in labels]
            print(f"{case.name}: {n} slice(s) done", file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(rows, indent=1))
    datasets = sorted({r["dataset"] for r in rows})
    print("| drawn slices per label, method | " + " | ".join(datasets) + " | labels ahead of the copy |")
    print("|---" * (len(datasets) + 2) + "|")
    for n in (1, 2, 3):
        copy = {(r["case"], r["label"]): r["dice"] for r in rows if r["slices"] == n and r["method"] == COPY}
        for method in [m for m, _ in runs] + [COPY]:
            mine = {(r["case"], r["label"]): r for r in rows if r["slices"] == n and r["method"] == method}
            means = [np.mean([r["dice"] for r in mine.values() if r["dataset"] == d]) for d in datasets]
            ahead = "" if method == COPY else f"{sum(r['dice'] > copy[k] for k, r in mine.items())} of {len(mine)}"
            print(f"| {n}: {method} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {ahead} |")


if __name__ == "__main__":
    main()
