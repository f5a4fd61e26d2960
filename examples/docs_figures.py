"""Render the pictures of the documentation guides into docs/images/ (PIL only).

    python examples/docs_figures.py [--out docs/images]

Uses ../shared/data (or $MEDSAM2KIT_DATA) when present: DeepLesion CT for the sequencer page
(a synthetic phantom otherwise) and the MSD hippocampus cases for the prompt-selection and fusion
pictures (skipped, with a message, otherwise): a small coarse network is trained on cases 195 and
199 (the first fold of tests/test_prompts.py's check, about 15 s on one CPU thread) and predicts
case 184. Everything shown is independent of SAM2's weights: how a volume becomes frames, which
slices the filter picks from the coarse estimate, what fusion does with the coarse estimate and a
simulated SAM2 estimate (exact on its prompt slices, drifting away from them), and the
evaluation figures.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from medsam2kit._data import shared_data_dir
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.evaluate import evaluate
from medsam2kit.fusion import fuse
from medsam2kit.io import load_label, load_volume, save_mask, save_volume
from medsam2kit.metrics import dice
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.prompts import SliceFilterConfig, select_slices_multilabel
from medsam2kit.roi import DEFAULT_ZOOM, Roi, largest_slice, roi_around
from medsam2kit.sequencer import default_axis, sequence_volume
from medsam2kit.viz import Legend, MontageStyle, PanelRow, compose, overlay_slice, save_png, slice_panel
from medsam2kit.volume import Volume


def ct_case() -> tuple[Volume, Volume]:
    """DeepLesion CT lesion 000001 and its label from the shared data (a phantom without it)."""
    data = shared_data_dir(Path(__file__).resolve().parent)
    ct = None if data is None else data / "deeplesion_ct" / "CT_Lesion_000001_02_01_008-023_img.nii.gz"
    if ct is not None and ct.is_file():
        image = load_volume(ct)
        return image, load_label(str(ct).replace("_img", "_label"), like=image)
    return ellipsoid_phantom((16, 240, 200), (5.0, 0.7, 0.7), rng=0)


def sequencer_figure(out: Path) -> None:
    """The slices of a CT volume as SAM2 frames (padded to a square, uint8), label outlined."""
    image, label = ct_case()
    seq = sequence_volume(image, image_size=256)
    lab = np.moveaxis(label.array, seq.layout.axis, 0)
    tiles = []
    for t in np.linspace(0, len(seq) - 1, 4).round().astype(int):
        z = seq.slice_indices[t]
        frame = seq.frames[t].numpy()
        mask = seq.mask_to_frame(lab[z] > 0).numpy().astype(np.int64)
        tile = Image.fromarray(overlay_slice(frame, mask, fill_alpha=0.0, line_width=2))
        ImageDraw.Draw(tile).text((4, 4), f"frame {t} = slice {z}", fill=(255, 255, 0))
        tiles.append(np.asarray(tile))
    save_png(np.concatenate(tiles, axis=1), out / "sequencer_frames.png")


def zoom_figure(out: Path) -> None:
    """The lesion's largest slice as a 128 px SAM2 frame: whole, and zoomed around the lesion
    (:data:`medsam2kit.roi.DEFAULT_ZOOM`), each drawn at twice its size, label outlined."""
    image, label = ct_case()
    axis = default_axis(image)
    mask = np.asarray(label.array) > 0
    z = largest_slice(mask, axis=axis)
    tiles = []
    for roi, name in ((Roi.whole(image.shape, axis), "whole slice"),
                      (roi_around(np.take(mask, z, axis=axis), image.shape, axis=axis, factor=DEFAULT_ZOOM),
                       f"zoom {DEFAULT_ZOOM:g}")):
        seq = sequence_volume(roi.crop_volume(image), axis=axis, image_size=128)
        t = seq.frame_of_slice(z)
        frame_mask = seq.mask_to_frame(roi.crop_slice(np.take(mask, z, axis=axis))).numpy()
        big = np.kron(seq.frames[t].numpy(), np.ones((2, 2), np.uint8))
        tile = Image.fromarray(overlay_slice(big, np.kron(frame_mask, np.ones((2, 2), bool)).astype(np.int64),
                                             fill_alpha=0.0, line_width=2))
        ImageDraw.Draw(tile).text((4, 4), f"{name}: lesion {int(frame_mask.sum())} of 128 x 128 px", fill=(255, 255, 0))
        tiles.append(np.asarray(tile))
    gap = np.full((256, 8, 3), 255, np.uint8)
    save_png(np.concatenate([tiles[0], gap, tiles[1]], axis=1), out / "zoom_frames.png")


#: The shared case the prompt-selection and fusion figures are drawn from, and the cases its
#: coarse network is trained on (the first fold of tests/test_prompts.py's hippocampus check).
QUERY, TRAIN = 184, (195, 199)
HIPPOCAMPUS = {1: "anterior", 2: "posterior"}
STYLE = MontageStyle(tile=220, columns=6, font_size=14)


@dataclass(frozen=True)
class RealCase:
    """The query volume, its truth and the coarse network's class probabilities on it."""

    image: Volume
    truth: np.ndarray
    proba: np.ndarray  # (3, D, H, W): background, anterior, posterior


def hippocampus_case(data: Path | None) -> RealCase | None:
    """Train the coarse network of docs/prompts.md on two shared hippocampus cases, predict the third."""
    folder = None if data is None else data / "msd_hippocampus"
    if folder is None or not folder.is_dir():
        return None
    pairs = {}
    for case in (QUERY, *TRAIN):
        image = load_volume(folder / f"hippocampus_{case}_img.nii.gz")
        pairs[case] = (image, load_label(folder / f"hippocampus_{case}_label.nii.gz", like=image))
    torch.set_num_threads(1)
    seg = CoarseSegmenter(CoarseConfig(num_labels=2, image_size=48, base_channels=8, depth=3, context=1, axis=0))
    seg.fit([pairs[c][0] for c in TRAIN], [pairs[c][1] for c in TRAIN], steps=150, batch_size=16,
            generator=torch.Generator().manual_seed(0))
    image, label = pairs[QUERY]
    return RealCase(image, np.asarray(label.array).astype(np.int64), seg.predict_proba(image))


def slice_dice(pred: np.ndarray, truth: np.ndarray, z: int) -> float:
    """Dice of one slice (axis 0) of two masks."""
    return dice(pred[z], truth[z])


def prompts_figure(case: RealCase, out: Path) -> None:
    """Per label, the 3 slices the filter picks from the coarse estimate, then 3 it does not."""
    sels = select_slices_multilabel(case.proba, like=case.image, axis=0,
                                    config=SliceFilterConfig(k=3, min_gap_slices=2))
    rows = []
    for lab, sel in sels.items():
        pred, truth = case.proba[lab] > 0.5, case.truth == lab
        others = [int(z) for z in np.flatnonzero(truth.any(axis=(1, 2))) if z not in sel.indices]
        shown = {"chosen": sorted(sel.indices), "not chosen": [others[int(i)] for i in np.linspace(1, len(others) - 2, 3)]}
        panels, means = [], {}
        for kind, slices in shown.items():
            scores = [slice_dice(pred, truth, z) for z in slices]
            means[kind] = float(np.mean(scores))
            panels += [slice_panel(case.image, z, axis=0, labels=pred * lab, reference=truth * lab, style=STYLE,
                                   caption=f"slice {z}, {kind}\nDice {d:.2f}") for z, d in zip(slices, scores)]
        rows.append(PanelRow(f"label {lab} ({HIPPOCAMPUS[lab]}): the 3 chosen slices (mean Dice {means['chosen']:.2f}), "
                             f"3 others (mean {means['not chosen']:.2f})", tuple(panels)))
    picture = compose(rows, title=f"Prompt slices chosen from a coarse network's estimate (MSD hippocampus {QUERY}, "
                                  f"MRI; network trained on {TRAIN[0]} and {TRAIN[1]})",
                      legend=Legend((1, 2), HIPPOCAMPUS, "coarse estimate > 0.5", "truth"), style=STYLE)
    save_png(picture, out / "prompts_selection.png")


def simulated_sam2(truth: np.ndarray, prompts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stand-in for SAM2's propagation of one label (probability, object scores, IoUs): exact on
    its prompt slices, drifting 1 pixel per slice away from them and less sure the farther it goes."""
    dist = np.min(np.abs(np.arange(truth.shape[0])[:, None] - np.asarray(prompts)[None, :]), axis=1)
    prob = np.zeros(truth.shape, np.float32)
    for z, d in enumerate(dist):
        prob[z] = np.roll(truth[z], int(d), axis=1)
    prob = ndimage.gaussian_filter(prob, sigma=(0, 0.7, 0.7)).clip(0, 1)
    return prob, (3.0 - 0.3 * dist).astype(np.float32), np.clip(0.95 - 0.05 * dist, 0.05, 1).astype(np.float32)


def fusion_figure(case: RealCase, out: Path) -> None:
    """The coarse estimate, a drifting SAM2 estimate and their fusion, on prompt and distant slices."""
    sels = select_slices_multilabel(case.proba, like=case.image, axis=0,
                                    config=SliceFilterConfig(k=3, min_gap_slices=2))
    maps = {"coarse network": np.argmax(case.proba, axis=0), "SAM2": np.zeros_like(case.truth),
            "fused": np.zeros_like(case.truth)}
    weights = {}
    for lab, sel in sels.items():
        prob, scores, ious = simulated_sam2((case.truth == lab).astype(np.float32), list(sel.indices))
        res = fuse(case.proba[lab], prob, scores, ious, prompt_slices=list(sel.indices), axis=0,
                   spacing=case.image.spacing)
        maps["SAM2"][prob > 0.5] = lab
        maps["fused"][res.mask] = lab
        weights[lab] = res.sam_weight
    dices = {name: {lab: dice(m == lab, case.truth == lab) for lab in sels} for name, m in maps.items()}
    prompt_of = {int(z): lab for lab, sel in sels.items() for z in sel.indices}
    extent = np.flatnonzero((case.truth > 0).any(axis=(1, 2)))
    near = [min(sel.indices) for sel in sels.values()] + [max(sels[1].indices)]
    slices = sorted({int(extent[0]) + 1, *near, int(extent[-1]) - 6, int(extent[-1]) - 1})
    headings = {"coarse network": "coarse network (trained on two other cases)",
                "SAM2": "SAM2, simulated: exact on its prompt slices, 1 px of drift per slice away from them",
                "fused": "fused (w: SAM2's weight for labels 1/2 on the slice)"}
    rows = []
    for name, m in maps.items():
        panels = []
        for z in slices:
            note = f"slice {z}" + (f"\nprompt for label {prompt_of[z]}" if z in prompt_of else "")
            if name == "fused":
                note += "\nw " + " / ".join(f"{weights[lab][z]:.2f}" for lab in sorted(weights))
            panels.append(slice_panel(case.image, z, axis=0, labels=m, reference=case.truth, caption=note, style=STYLE))
        rows.append(PanelRow(headings[name], tuple(panels), tuple(dices[name].items())))
    picture = compose(rows, title=f"Fusion of a coarse network and SAM2 on MSD hippocampus {QUERY} (MRI), "
                                  "prompts chosen by the slice filter",
                      legend=Legend((1, 2), HIPPOCAMPUS, "estimate", "truth"), style=STYLE)
    save_png(picture, out / "fusion.png")


def evaluate_figures(out: Path) -> None:
    """Box plot and overlay montage written by the evaluation harness on shifted phantoms."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder in ("gt", "pred", "img"):
            (root / folder).mkdir()
        for seed in range(1, 7):
            image, label = ellipsoid_phantom((10, 48, 40), (2.5, 0.8, 0.8), rng=seed)
            save_volume(image, root / "img" / f"case{seed}_img.nii.gz")
            save_mask(label.array, image, root / "gt" / f"case{seed}_label.nii.gz")
            save_mask(np.roll(label.array, seed % 3, axis=2), image, root / "pred" / f"case{seed}_labels.nii.gz")
        evaluate(root / "pred", root / "gt", root / "eval", images=root / "img")
        for name, target in (("box_dice.png", "evaluate_box_dice.png"), ("case2.png", "evaluate_case.png")):
            Image.open(root / "eval" / "figures" / name).save(out / target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sequencer_figure(args.out)
    zoom_figure(args.out)
    case = hippocampus_case(shared_data_dir(Path(__file__).resolve().parent))
    if case is None:
        print("skipped prompts_selection.png and fusion.png: the shared hippocampus cases (../shared/data/"
              "msd_hippocampus, or $MEDSAM2KIT_DATA) were not found")
    else:
        prompts_figure(case, args.out)
        fusion_figure(case, args.out)
    evaluate_figures(args.out)
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
