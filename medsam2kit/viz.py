"""Pictures for people: label overlays and slice montages (PIL only, no plotting library).

Example:
    >>> import numpy as np
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> from medsam2kit.viz import overlay_montage
    >>> image, label = ellipsoid_phantom((8, 40, 32), rng=0)
    >>> rgb = overlay_montage(image, {"truth": label.array}, count=4)
    >>> rgb.dtype, rgb.ndim
    (dtype('uint8'), 3)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medsam2kit._files import atomic_write
from medsam2kit._validate import resolve_axis
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.volume import Volume

#: Outline colours per overlay (RGB), cycled.
PALETTE: tuple[tuple[int, int, int], ...] = ((255, 64, 64), (64, 220, 64), (80, 160, 255), (255, 200, 40), (220, 80, 255))


def to_uint8(slice2d: np.ndarray, *, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Window a 2D array to uint8 (default 1st/99th percentile).

    Example:
        >>> to_uint8(np.array([[0.0, 1.0]]), low=0, high=1).tolist()
        [[0, 255]]
    """
    arr = np.asarray(slice2d, dtype=np.float64)
    lo = float(np.percentile(arr, 1)) if low is None else float(low)
    hi = float(np.percentile(arr, 99)) if high is None else float(high)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip(np.rint((arr - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def outline(mask2d: np.ndarray) -> np.ndarray:
    """The inner boundary of a 2D mask (foreground pixels with a background 4-neighbour).

    Example:
        >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
        >>> int(outline(m).sum())
        8
    """
    m = np.asarray(mask2d, dtype=bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def overlay_slice(gray: np.ndarray, masks: Sequence[np.ndarray], *, fill_alpha: float = 0.0) -> np.ndarray:
    """``(H, W)`` uint8 gray plus label maps -> ``(H, W, 3)`` uint8 with coloured outlines.

    Each entry of ``masks`` is an integer label map; every label gets its outline, in the colour
    of its map (``PALETTE``), optionally with a translucent fill.
    """
    rgb = np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=-1).astype(np.float64)
    for k, labels in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float64)
        for lab in np.unique(labels):
            if lab == 0:
                continue
            region = labels == lab
            if fill_alpha > 0:
                rgb[region] = (1 - fill_alpha) * rgb[region] + fill_alpha * colour
            rgb[outline(region)] = colour
    return rgb.astype(np.uint8)


def overlay_montage(
    image: Volume,
    overlays: Mapping[str, np.ndarray],
    *,
    axis: int | None = None,
    slices: Sequence[int] | None = None,
    count: int = 8,
    columns: int = 4,
    tile: int = 192,
) -> np.ndarray:
    """A grid of slices of ``image`` with the outlines of each overlay (legend on top).

    Args:
        image: the volume.
        overlays: name -> label map of ``image.shape`` (e.g. ``{"truth": ..., "prediction": ...}``).
        axis: slicing axis (default: :func:`~medsam2kit.sequencer.default_axis` of ``image``).
        slices: slice indices to show (default ``count`` slices spread over the overlays' extent).
        count: number of slices when ``slices`` is not given.
        columns: tiles per row.
        tile: tile size in pixels (slices are resized keeping their aspect ratio in mm).

    Returns:
        ``(H, W, 3)`` uint8 RGB picture.
    """
    for name, arr in overlays.items():
        if np.shape(arr) != image.shape:
            raise ShapeMismatchError(f"overlays[{name!r}]: expected shape {image.shape}, got {np.shape(arr)}")
    if columns < 1 or count < 1 or tile < 16:
        raise InvalidInputError(f"columns, count, tile: expected >= 1, >= 1, >= 16, got {columns}, {count}, {tile}")
    ax = resolve_axis(axis, shape=image.shape, volume=image)
    depth = image.shape[ax]
    if slices is None:
        union = np.zeros(depth, bool)
        for arr in overlays.values():
            union |= np.moveaxis(np.asarray(arr) > 0, ax, 0).reshape(depth, -1).any(axis=1)
        idx = np.flatnonzero(union) if union.any() else np.arange(depth)
        slices = sorted({int(i) for i in np.linspace(idx[0], idx[-1], min(count, len(idx))).round()})
    for z in slices:
        if not 0 <= z < depth:
            raise InvalidInputError(f"slices: expected indices in [0, {depth}), got {z}")
    vol = np.moveaxis(image.array, ax, 0).astype(np.float64)
    low, high = np.percentile(vol, 1), np.percentile(vol, 99)
    others = [a for a in range(3) if a != ax]
    sy, sx = image.spacing[others[0]], image.spacing[others[1]]
    tiles = []
    for z in slices:
        gray = to_uint8(vol[z], low=low, high=high)
        maps = [np.moveaxis(np.asarray(arr), ax, 0)[z].astype(np.int64) for arr in overlays.values()]
        rgb = overlay_slice(gray, maps)
        h_mm, w_mm = rgb.shape[0] * sy, rgb.shape[1] * sx
        scale = tile / max(h_mm, w_mm)
        size = (max(1, round(w_mm * scale)), max(1, round(h_mm * scale)))
        resized = Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (tile, tile))
        canvas.paste(resized, ((tile - size[0]) // 2, (tile - size[1]) // 2))
        ImageDraw.Draw(canvas).text((4, 4), f"{z}", fill=(255, 255, 255))
        tiles.append(np.asarray(canvas))
    rows = -(-len(tiles) // columns)
    grid = np.zeros((18 + rows * tile, columns * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[18 + r * tile : 18 + (r + 1) * tile, c * tile : (c + 1) * tile] = t
    legend = Image.fromarray(grid)
    draw = ImageDraw.Draw(legend)
    x = 4
    for k, name in enumerate(overlays):
        draw.text((x, 3), name, fill=PALETTE[k % len(PALETTE)])
        x += 8 * len(name) + 16
    return np.asarray(legend)


def save_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an RGB uint8 picture as PNG atomically (temporary file, then rename)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise InvalidInputError(f"rgb: expected (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


__all__ = ["PALETTE", "outline", "overlay_montage", "overlay_slice", "save_png", "to_uint8"]
