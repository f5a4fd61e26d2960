"""Render a grid of every medsam2kit.augment transform on real ultrasound frames.

Rows: a carotid B-mode frame and a fetal-head frame from the shared data folder (``../shared/data``
or ``$MEDSAM2KIT_DATA``) when present, otherwise a synthetic fan-shaped ultrasound-like frame made
here. Columns: the original and each transform (mask outline in red). Uses PIL only.

Run: ``python examples/augmentation_gallery.py [OUTPUT.png] [--tile 160] [--seed 0]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from medsam2kit._data import shared_data_dir
from medsam2kit.augment import (
    AcousticShadow,
    Affine,
    ColorJitter,
    DepthAttenuation,
    FrameDrop,
    GainTGC,
    GaussianBlur,
    Haze,
    HorizontalFlip,
    ScanGeometry,
    SpeckleNoise,
    SpeckleReduction,
    Transform,
    combined,
    estimate_scan_geometry,
    generic_sam2,
    ultrasound,
)


def synthetic_frame(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fan-shaped speckled frame with a dark elliptical 'vessel' and its mask (uint8, bool)."""
    rng = np.random.default_rng(seed)
    geo = ScanGeometry.fan((size / 2 - 0.5, -size * 0.1), (size * 0.15, size * 1.05), (-0.7, 0.7))
    inside = geo.mask(size, size).numpy()
    yy, xx = np.mgrid[0:size, 0:size]
    tissue = 0.45 + 0.15 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    vessel = ((xx - size * 0.55) / (size * 0.14)) ** 2 + ((yy - size * 0.5) / (size * 0.09)) ** 2 < 1
    img = tissue * np.where(vessel, 0.15, 1.0) * rng.rayleigh(0.8, (size, size))
    img = np.clip(img, 0, 1) * inside
    return (img * 255).astype(np.uint8), vessel & inside


def load_rows(size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frame uint8 (H, W), mask bool (H, W)) rows: real data when present, else synthetic."""
    rows: list[tuple[str, np.ndarray, np.ndarray]] = []
    root = shared_data_dir(Path(__file__).resolve().parent)
    if root is not None:
        npz = sorted((root / "carotid_us").glob("*.npz"))
        if npz:
            data = np.load(npz[0])
            rows.append(("carotid", data["frames"][0], data["masks"][0] > 0))
        png = root / "hc18_fetal_us" / "000_HC.png"
        if png.is_file():
            img = np.asarray(Image.open(png).convert("L"))
            mask = np.asarray(Image.open(png.with_name("000_HC_mask.png")).convert("L")) > 127
            rows.append(("fetal head", img, mask))
    if not rows:
        img, mask = synthetic_frame(size)
        rows.append(("synthetic", img, mask))
    return rows


def columns() -> list[tuple[str, Transform[Any] | None]]:
    """Each transform with ranges strong enough to be visible."""
    return [
        ("original", None),
        ("depth attenuation", DepthAttenuation(rate=(2.0, 2.5))),
        ("acoustic shadow", AcousticShadow(width=(0.15, 0.2), strength=(0.8, 0.9))),
        ("haze", Haze(amplitude=0.6, depth=(0.25, 0.35), sigma=(0.05, 0.06), echoes=1)),
        ("speckle noise", SpeckleNoise(strength=(0.8, 0.9))),
        ("speckle reduction", SpeckleReduction(sigma_spatial=(2.0, 2.0), sigma_color=(0.1, 0.1), iterations=3)),
        ("gain / TGC", GainTGC(gain=(1.1, 1.2), tgc=(0.4, 1.8))),
        ("h. flip", HorizontalFlip()),
        ("affine 25/20", Affine(degrees=(20.0, 25.0), shear=(15.0, 20.0))),
        ("colour jitter", ColorJitter(brightness=0.3, contrast=0.3, gamma=(0.6, 0.7))),
        ("blur", GaussianBlur(sigma=(2.0, 2.5))),
        ("ultrasound()", ultrasound(p=0.8)),
        ("generic_sam2()", generic_sam2()),
        ("combined()", combined(p=0.6)),
        ("frame drop", FrameDrop(1)),
    ]


def _tile(frame: np.ndarray, mask: np.ndarray, size: int) -> Image.Image:
    rgb = np.repeat(frame[..., None], 3, axis=2).copy()
    edge = mask & ~(
        np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    )
    rgb[edge] = (255, 40, 40)
    img = Image.fromarray(rgb)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def render(out: Path, tile: int = 160, seed: int = 0) -> Path:
    """Write the gallery PNG to ``out`` (via a temporary file) and return its path."""
    rows = load_rows(256)
    cols = columns()
    label_h = 16
    grid = Image.new("RGB", (tile * len(cols), (tile + label_h) * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (row_name, frame, mask) in enumerate(rows):
        clip = torch.from_numpy(np.array(frame))[None].expand(4, *frame.shape).contiguous()
        masks = torch.from_numpy(np.array(mask))[None].expand(4, *mask.shape).contiguous()
        geometry = estimate_scan_geometry(clip)
        for c, (name, transform) in enumerate(cols):
            if transform is None:
                img, m = clip[0].numpy(), masks[0].numpy()
            else:
                res = transform(clip, masks, generator=torch.Generator().manual_seed(seed + 7 * r + c),
                                geometry=geometry)
                img = res.image[0].numpy()
                m = res.mask[0].numpy() if res.mask is not None else mask
            y0 = r * (tile + label_h)
            grid.paste(_tile(img, m, tile), (c * tile, y0 + label_h))
            draw.text((c * tile + 3, y0 + 2), f"{row_name}: {name}" if c == 0 else name, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    grid.save(tmp, optimize=True)
    tmp.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "images" / "augment_gallery.png")
    parser.add_argument("--tile", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = render(args.output, args.tile, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
