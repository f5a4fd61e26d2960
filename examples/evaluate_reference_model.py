"""Score models on the held-out shared real cases, every task beside its baseline, in one run.

    python examples/evaluate_reference_model.py                    # both bundled models
    python examples/evaluate_reference_model.py --models reference --out runs/eval
    python examples/evaluate_reference_model.py --split validation --models a.pt,b.pt@256

For each model (a zoo name, or a ``.pt`` file of ``sam2.1_hiera_micro`` weights, optionally
``@size`` for a model trained at another input size) and each case of
:data:`medsam2kit.reference.HELD_OUT` (cases no reference model trained on, split by case,
recording or image; ``--split validation``: the recipe-selection cases of
:data:`medsam2kit.reference.VALIDATION`, for models of selection runs that left them out):

* 3D cases (hippocampus, prostate, CT lesions, brain tumour): one-prompt propagation per label,
  prompted on its largest slice by the true mask and by its box (slices zoomed around the
  prompts, :data:`medsam2kit.roi.DEFAULT_ZOOM`; ``--no-zoom``: whole slices; mask prompts with
  their shape as a prior near their slice, :class:`medsam2kit.pipelines.PromptPrior`;
  ``--no-prior``: SAM2's logits as they are, here and in aligned FATE-SAM), against the copy
  baseline (the prompt mask on every slice holding the label), and from the mask after one-shot
  adaptation of a copy of the model to the prompts (:mod:`medsam2kit.adapt`; ``--no-adapt`` skips it);
  each propagation also scored ``on labelled slices`` (kept on the slices the label spans, the
  extent the copy baseline is given: :meth:`medsam2kit.tasks.Propagated.on_labelled_slices`);
* hippocampus: FATE-SAM from the training cases as supports (also after adapting a copy of the
  model to them, :func:`medsam2kit.adapt.adapt_to_supports`), and SAM2Med3D (a coarse network
  fitted on them, fused with SAM2) against the coarse network alone;
* carotid recordings: first-frame mask propagation (Dice, J&F) against copying the first mask;
* fetal-head images: box prompts (zoomed, :data:`medsam2kit.roi.DEFAULT_ZOOM`; the mask cut to the
  box, as SAM2 gives it, and the ellipse fitted to it, ``fit="ellipse"``) against the filled box and
  the ellipse inscribed in it.

Writes ``rows.csv`` (one row per case, label, task and method), ``per_case.md`` (a line per case
and label, fetal-head images as their mean), ``summary.md`` (means per dataset, task and method)
and ``summary.json`` to ``--out``, and prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medsam2kit._data import shared_data_dir
from medsam2kit._files import atomic_write
from medsam2kit.adapt import AdaptConfig, adapt_to_supports
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.demo import Pair, adapted_method, keep_labels, training_supports
from medsam2kit.fewshot import FewShotPipeline, SupportPrior, segment_registered
from medsam2kit.metrics import dice
from medsam2kit.pipelines import Overlaps, PromptPrior, SAM2Med3DPipeline
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import (REFERENCE_CONFIG, SharedArrays, SharedVolume, Split, shared_images,
                                  shared_recordings, shared_volumes)
from medsam2kit.register import align_supports, vote_labels
from medsam2kit.roi import DEFAULT_ZOOM
from medsam2kit.tasks import BOX_BASELINES, PromptKind, box_prompt_image, one_prompt_propagation, track_recording


#: Steps of the hippocampus coarse network (a 2D U-Net at 48 px, 8 base channels, along axis 0,
#: fitted on the two training cases): a usable coarse network, unlike the demo's weak one.
COARSE_STEPS = 150


@dataclass(frozen=True)
class Row:
    model: str
    dataset: str
    case: str
    label: int
    task: str
    method: str
    dice: float
    jf: float = float("nan")


def load_predictor(name: str) -> SAM2Predictor:
    """A zoo name, a ``.pt`` file of micro weights, or ``file.pt@size`` (trained at ``size`` px)."""
    path, _, size = name.partition("@")
    if size and not size.isdigit():
        sys.exit(f"evaluate_reference_model: --models: expected NAME, FILE.pt or FILE.pt@SIZE (SIZE in px), got {name!r}")
    if path.endswith(".pt"):
        return SAM2Predictor.from_config(REFERENCE_CONFIG, path, device="cpu", image_size=int(size) if size else None)
    return SAM2Predictor.from_pretrained(name, device="cpu")


def volume_rows(model: str, pred: SAM2Predictor, case: SharedVolume, *, zoom: bool = True,
                adapt: bool = True, overlaps: Overlaps = "nearest", prior: PromptPrior | None = PromptPrior()) -> list[Row]:
    rows = []
    truth = np.asarray(case.label.array)
    config = AdaptConfig()
    runs: list[tuple[PromptKind, str, AdaptConfig | None]] = [("mask", "sam2", None), ("box", "sam2", None)]
    if adapt:
        runs.append(("mask", adapted_method(config), config))
    for prompt, method, adapting in runs:
        out = one_prompt_propagation(pred, case.image, case.label, prompt=prompt, adapt=adapting, overlaps=overlaps,
                                     prior=prior, zoom=_zoom(zoom))
        bounded = out.on_labelled_slices()
        for lab in out.prompt_slices:
            rows.append(Row(model, case.dataset, case.name, lab, f"propagation ({prompt})", method,
                            dice(out.labels == lab, truth == lab)))
            rows.append(Row(model, case.dataset, case.name, lab, f"propagation ({prompt})", f"{method} on labelled slices",
                            dice(bounded == lab, truth == lab)))
            if prompt == "mask" and adapting is None:
                rows.append(Row(model, case.dataset, case.name, lab, "propagation (mask)", "copy to labelled slices",
                                dice(out.baseline[lab], truth == lab)))
    return rows


def hippocampus_rows(model: str, pred: SAM2Predictor, case: SharedVolume, supports: Sequence[Pair], *,
                     adapt: bool = True, prior: SupportPrior | None = SupportPrior()) -> list[Row]:
    truth = np.asarray(keep_labels(case.label, (1, 2)).array)
    aligned = align_supports(case.image, supports)  # once: the baseline's and the aligned runs' supports
    maps = {"registered supports (vote)": vote_labels(aligned).array}
    config = AdaptConfig()
    runs = [("fate-sam", pred)] + ([(adapted_method(config, "fate-sam"), adapt_to_supports(pred, supports, config))]
                                   if adapt else [])
    for method, run_pred in runs:  # as FewShotPipeline(adapt=..., align=...), adapting and registering once
        maps[method] = FewShotPipeline(run_pred, supports)(case.image).array
        maps[method.replace("fate-sam", "fate-sam aligned")] = segment_registered(
            run_pred, aligned, case.image, prior=prior).labels.array
    rows = [Row(model, case.dataset, case.name, lab, "fewshot", method, dice(m == lab, truth == lab))
            for method, m in maps.items() for lab in (1, 2)]
    coarse = CoarseSegmenter(CoarseConfig(num_labels=2, image_size=48, base_channels=8, depth=2, axis=0))
    coarse.fit([s[0] for s in supports], [keep_labels(s[1], (1, 2)) for s in supports], steps=COARSE_STEPS,
               batch_size=16, generator=torch.Generator().manual_seed(0))
    result = SAM2Med3DPipeline(coarse, pred).run(case.image)
    coarse_map = np.argmax(result.coarse, axis=0)
    for lab in (1, 2):
        rows.append(Row(model, case.dataset, case.name, lab, "sam2med3d", "coarse", dice(coarse_map == lab, truth == lab)))
        rows.append(Row(model, case.dataset, case.name, lab, "sam2med3d", "fused",
                        dice(result.labels.array == lab, truth == lab)))
    return rows


def recording_rows(model: str, pred: SAM2Predictor, case: SharedArrays) -> list[Row]:
    s = track_recording(pred, case.image, case.label)
    return [Row(model, case.dataset, case.name, 1, "propagation (mask)", "sam2", s.dice, s.jf),
            Row(model, case.dataset, case.name, 1, "propagation (mask)", "copy first mask", s.copy_dice, s.copy_jf)]


def image_rows(model: str, pred: SAM2Predictor, case: SharedArrays, *, zoom: bool = True) -> list[Row]:
    masks = {"sam2": box_prompt_image(pred, case.image, case.label, zoom=_zoom(zoom)),
             "sam2 not cut to the box": box_prompt_image(pred, case.image, case.label, inside_box=False, zoom=_zoom(zoom)),
             "sam2, ellipse fitted": box_prompt_image(pred, case.image, case.label, fit="ellipse", zoom=_zoom(zoom)),
             **{method: baseline(case.label) for method, baseline in BOX_BASELINES.items()}}
    return [Row(model, case.dataset, case.name, 1, "box prompt", method, dice(mask, case.label))
            for method, mask in masks.items()]


@dataclass(frozen=True)
class Cases:
    """The shared cases of a split, loaded once for every model, and the hippocampus supports."""

    volumes: list[SharedVolume]
    recordings: list[SharedArrays]
    images: list[SharedArrays]
    supports: tuple[Pair, ...]


def load_cases(data_dir: Path, *, max_images: int | None, split: Split = "held_out") -> Cases:
    without: tuple[Split, ...] = ("held_out", "validation") if split == "validation" else ("held_out",)
    return Cases(shared_volumes(data_dir, split), shared_recordings(data_dir, split),
                 shared_images(data_dir, split)[:max_images], training_supports(data_dir, without=without))


def _zoom(zoom: bool) -> float | None:
    """The tasks' zoom: their default (medsam2kit.roi.DEFAULT_ZOOM), or ``None`` for whole slices and images."""
    return DEFAULT_ZOOM if zoom else None


def evaluate_model(name: str, cases: Cases, *, zoom: bool = True, adapt: bool = True,
                   overlaps: Overlaps = "nearest", prior: PromptPrior | None = PromptPrior()) -> list[Row]:
    pred = load_predictor(name)
    label = name if zoom else f"{name} (no zoom)"
    rows: list[Row] = []
    for case in cases.volumes:
        rows += volume_rows(label, pred, case, zoom=zoom, adapt=adapt, overlaps=overlaps, prior=prior)
        if case.dataset == "msd_hippocampus":
            rows += hippocampus_rows(label, pred, case, cases.supports, adapt=adapt,
                                     prior=None if prior is None else SupportPrior())
    for rec in cases.recordings:
        rows += recording_rows(label, pred, rec)
    for img in cases.images:
        rows += image_rows(label, pred, img, zoom=zoom)
    return rows


def summarise(rows: list[Row]) -> list[dict[str, object]]:
    groups: dict[tuple[str, str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.model, r.dataset, r.task, r.method)].append(r)
    return [{"model": m, "dataset": d, "task": t, "method": me, "n": len(g),
             "dice": round(float(np.mean([r.dice for r in g])), 3),
             "jf": round(float(np.nanmean([r.jf for r in g])), 3) if any(np.isfinite(r.jf) for r in g) else None}
            for (m, d, t, me), g in groups.items()]


def markdown(summary: list[dict[str, object]]) -> str:
    lines = ["| model | dataset | task | method | n | Dice | J&F |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        jf = "" if s["jf"] is None else f"{s['jf']:.3f}"
        lines.append(f"| {s['model']} | {s['dataset']} | {s['task']} | {s['method']} | {s['n']} | {s['dice']:.3f} | {jf} |")
    return "\n".join(lines) + "\n"


def per_case_markdown(rows: list[Row]) -> str:
    """One line per model, case and label; one column per task and method (images: their mean)."""
    methods = list(dict.fromkeys((r.task, r.method) for r in rows))
    groups: dict[tuple[str, str, int, str, str], list[float]] = defaultdict(list)
    for r in rows:
        case = r.dataset if r.dataset == "hc18_fetal_us" else r.case
        groups[(r.model, case, r.label, r.task, r.method)].append(r.dice)
    keys = list(dict.fromkeys(k[:3] for k in groups))
    lines = ["| model | case | label | " + " | ".join(f"{t}: {m}" for t, m in methods) + " |",
             "|" + "---|" * (3 + len(methods))]
    for model, case, lab in keys:
        cells = [f"{np.mean(groups[(model, case, lab, t, m)]):.3f}" if (model, case, lab, t, m) in groups else ""
                 for t, m in methods]
        lines.append(f"| {Path(model).stem} | {case} | {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="reference,reference-phantoms",
                        help="comma-separated zoo names or .pt files of sam2.1_hiera_micro weights")
    parser.add_argument("--out", default="runs/eval_reference", help="output folder")
    parser.add_argument("--max-images", type=int, default=None, help="fetal-head images at most (default all)")
    parser.add_argument("--split", choices=("held_out", "validation"), default="held_out",
                        help="the cases scored (validation: the recipe-selection cases)")
    parser.add_argument("--no-zoom", action="store_true",
                        help="whole slices and images (default: the tasks' zoom around the prompt, medsam2kit.roi)")
    parser.add_argument("--no-adapt", action="store_true",
                        help="skip the adapted rows (mask propagation, FATE-SAM; medsam2kit.adapt; about 38 s per volume on one thread)")
    parser.add_argument("--overlaps", choices=("nearest", "logit"), default="nearest",
                        help="where labels overlap in mask propagation, the label prompted nearest (default) or the "
                             "largest logit (the rule before; medsam2kit.pipelines.PromptPropagationConfig)")
    parser.add_argument("--no-prior", action="store_true",
                        help="without the priors: mask propagation without the prompt masks' shapes near their "
                             "slices (medsam2kit.pipelines.PromptPrior), aligned FATE-SAM without the registered "
                             "supports' labels (medsam2kit.fewshot.SupportPrior); the default adds both")
    args = parser.parse_args()
    data_dir = shared_data_dir()
    if data_dir is None:
        sys.exit("evaluate_reference_model: the shared data folder is absent (../shared/data or $MEDSAM2KIT_DATA)")
    cases = load_cases(data_dir, max_images=args.max_images, split=args.split)
    rows: list[Row] = []
    seconds = {}
    for name in [m for m in args.models.split(",") if m]:
        start = time.perf_counter()
        rows += evaluate_model(name, cases, zoom=not args.no_zoom, adapt=not args.no_adapt, overlaps=args.overlaps,
                               prior=None if args.no_prior else PromptPrior())
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {seconds[name]} s", file=sys.stderr)
    summary = summarise(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    atomic_write(out / "rows.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(markdown(summary)))
    atomic_write(out / "per_case.md", lambda tmp: tmp.write_text(per_case_markdown(rows)))
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(json.dumps({"seconds": seconds, "summary": summary},
                                                                              indent=2)))
    print(markdown(summary))


if __name__ == "__main__":
    main()
