"""Render the pictures of the documentation guides into docs/images/ (PIL only).

    python examples/docs_figures.py [--out docs/images]

Uses ../shared/data when present (DeepLesion CT for the sequencer page), synthetic phantoms
otherwise. Everything shown is independent of SAM2's weights: how a volume becomes frames, which
slices the filter picks from a coarse estimate, what fusion does with two estimates, and the
evaluation figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medsam2kit._data import shared_data_dir
from medsam2kit.evaluate import evaluate
from medsam2kit.fusion import fuse
from medsam2kit.io import load_label, load_volume, save_mask
from medsam2kit.metrics import dice
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.prompts import SliceFilterConfig, select_slices
from medsam2kit.sequencer import sequence_volume
from medsam2kit.viz import overlay_montage, overlay_slice, save_png


def sequencer_figure(out: Path) -> None:
    """The slices of a CT volume as SAM2 frames (padded to a square, uint8), label outlined."""
    data = shared_data_dir(Path(__file__).resolve().parent)
    ct = None if data is None else data / "deeplesion_ct" / "CT_Lesion_000001_02_01_008-023_img.nii.gz"
    if ct is not None and ct.is_file():
        image = load_volume(ct)
        label = load_label(str(ct).replace("_img", "_label"), like=image)
    else:
        image, label = ellipsoid_phantom((16, 120, 90), (5.0, 0.7, 0.7), rng=0)
    seq = sequence_volume(image, image_size=256)
    lab = np.moveaxis(label.array, seq.layout.axis, 0)
    tiles = []
    for t in np.linspace(0, len(seq) - 1, 4).round().astype(int):
        z = seq.slice_indices[t]
        frame = seq.frames[t].numpy()
        mask = seq.mask_to_frame(lab[z] > 0).numpy().astype(np.int64)
        tile = Image.fromarray(overlay_slice(frame, [mask]))
        ImageDraw.Draw(tile).text((4, 4), f"frame {t} = slice {z}", fill=(255, 255, 0))
        tiles.append(np.asarray(tile))
    save_png(np.concatenate(tiles, axis=1), out / "sequencer_frames.png")


def prompts_and_fusion_figures(out: Path) -> None:
    """Slices chosen from a noisy coarse estimate; fusion of two independent noisy estimates."""
    image, label = ellipsoid_phantom((20, 80, 64), (3.0, 0.8, 0.8), rng=2)
    truth = (label.array > 0).astype(np.float32)
    rng = np.random.default_rng(0)

    def estimate(seed_shift: int, drop: float) -> np.ndarray:
        g = np.random.default_rng(seed_shift)
        noisy = np.clip(0.15 + 0.7 * truth + g.normal(0, 0.25, truth.shape), 0, 1)
        for z in g.choice(truth.shape[0], int(drop * truth.shape[0]), replace=False):
            noisy[z] *= 0.4  # unreliable slices
        return noisy.astype(np.float32)

    coarse, second = estimate(1, 0.3), estimate(2, 0.3)
    sel = select_slices(coarse, spacing=image.spacing, axis=0, config=SliceFilterConfig(k=3, min_gap_slices=3))
    chosen = list(sel.indices)
    picture = overlay_montage(image, {"truth": label.array > 0, "coarse > 0.5": (coarse > 0.5).astype(np.uint8)},
                              axis=0, slices=sorted(chosen), columns=3, tile=200)
    save_png(picture, out / "prompts_selection.png")

    present = (second > 0.5).reshape(second.shape[0], -1).any(axis=1)
    ious = 1.0 - 2 * np.mean(np.minimum(second, 1 - second), axis=(1, 2))
    fused = fuse(coarse, second, np.where(present, 4.0, -4.0), ious, prompt_slices=chosen, axis=0,
                 spacing=image.spacing)
    scores = {name: dice(m, truth > 0) for name, m in
              (("coarse", coarse > 0.5), ("second", second > 0.5), ("fused", fused.mask))}
    picture = overlay_montage(image, {f"coarse {scores['coarse']:.2f}": (coarse > 0.5).astype(np.uint8),
                                      f"second {scores['second']:.2f}": (second > 0.5).astype(np.uint8),
                                      f"fused {scores['fused']:.2f}": fused.mask.astype(np.uint8)},
                              axis=0, count=6, columns=3, tile=200)
    save_png(picture, out / "fusion.png")
    _ = rng


def evaluate_figures(out: Path) -> None:
    """Box plot and overlay montage written by the evaluation harness on shifted phantoms."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "gt").mkdir()
        (root / "pred").mkdir()
        for seed in range(1, 7):
            image, label = ellipsoid_phantom((10, 48, 40), (2.5, 0.8, 0.8), rng=seed)
            save_mask(label.array, image, root / "gt" / f"case{seed}_label.nii.gz")
            save_mask(np.roll(label.array, seed % 3, axis=2), image, root / "pred" / f"case{seed}_labels.nii.gz")
        evaluate(root / "pred", root / "gt", root / "eval")
        for name, target in (("box_dice.png", "evaluate_box_dice.png"), ("case2.png", "evaluate_case.png")):
            Image.open(root / "eval" / "figures" / name).save(out / target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sequencer_figure(args.out)
    prompts_and_fusion_figures(args.out)
    evaluate_figures(args.out)
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
