"""Pictures for people: label overlays and titled slice montages (PIL only, no plotting library).

Every label value has one colour (:func:`label_colour`, the colour-blind-safe Okabe-Ito palette),
whatever map it comes from; maps differ by style instead: a *prediction* is filled and outlined
with a solid line inside its boundary, the *reference* (truth) is a dashed line just outside its
boundary, so where the two agree both lines are seen side by side. A montage carries a title,
a heading per row (the method and its Dice per label), a caption per panel (the slice) and a
legend (label value -> colour, and which style is truth and which prediction).

Text is drawn with Pillow's built-in font (scalable when Pillow has FreeType, its small bitmap
font otherwise).

Example:
    >>> import numpy as np
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> from medsam2kit.viz import MontageStyle, overlay_montage
    >>> image, label = ellipsoid_phantom((8, 40, 32), rng=0)
    >>> rgb = overlay_montage(image, {"shifted": np.roll(label.array, 2, axis=2)}, reference=label.array,
    ...                       title="phantom", dice={"shifted": {1: 0.8, 2: 0.7}}, style=MontageStyle(count=4))
    >>> rgb.dtype, rgb.ndim
    (dtype('uint8'), 3)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from medsam2kit._files import atomic_write
from medsam2kit._validate import resolve_axis
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.roi import check_zoom, roi_around
from medsam2kit.volume import Volume

Colour = tuple[int, int, int]
Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]

#: One colour per label value, label 1 first (Okabe & Ito's colour-blind-safe palette without
#: black): orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple. Label ``v``
#: gets ``LABEL_COLOURS[(v - 1) % 7]``.
LABEL_COLOURS: tuple[Colour, ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167),
)
#: Page background and text colour of montages.
PAGE: Colour = (255, 255, 255)
INK: Colour = (20, 20, 20)
_STYLE_SAMPLE: Colour = (90, 90, 90)  # the neutral colour of the legend's style samples
_GAP = 4  # pixels between panels
_MARGIN = 8  # pixels around the picture

Mark = Literal["none", "swatch", "prediction", "reference"]


@dataclass(frozen=True)
class MontageStyle:
    """How a montage is drawn.

    Attributes:
        tile: the longer side of a slice panel in pixels (panels keep the slice's aspect in mm).
        columns: panels per line; a row with more panels wraps.
        count: slices shown when :func:`overlay_montage` chooses them.
        fill_alpha: opacity of a prediction's fill, in ``[0, 1]``.
        line_width: outline width in pixels.
        font_size: text height in pixels of headings and the legend (title +4, captions -2).
        zoom: :func:`overlay_montage` shows the slices cropped to a square of ``zoom`` times the
            in-plane box around every label it draws (on any slice; :func:`medsam2kit.roi.roi_around`),
            so that a lesion of 30 voxels on a 512-voxel CT slice is not a speck; ``None``: whole slices.
    """

    tile: int = 192
    columns: int = 4
    count: int = 8
    fill_alpha: float = 0.3
    line_width: int = 2
    font_size: int = 14
    zoom: float | None = 3.0

    def __post_init__(self) -> None:
        ints = {"tile": (self.tile, 16), "columns": (self.columns, 1), "count": (self.count, 1),
                "line_width": (self.line_width, 1), "font_size": (self.font_size, 6)}
        for name, (value, minimum) in ints.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidInputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
        if not 0.0 <= float(self.fill_alpha) <= 1.0:
            raise InvalidInputError(f"fill_alpha: expected a value in [0, 1], got {self.fill_alpha!r}")
        check_zoom(self.zoom)


@dataclass(frozen=True)
class PanelRow:
    """One row of a montage: a heading and its panels (which wrap after ``columns``).

    Attributes:
        heading: the row's name (e.g. the method).
        panels: ``(h, w, 3)`` uint8 pictures, e.g. from :func:`slice_panel`.
        dice: ``(label, Dice)`` pairs shown after the heading, each with its label's colour.
    """

    heading: str
    panels: tuple[np.ndarray, ...]
    dice: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Legend:
    """What a montage's legend lists.

    Attributes:
        labels: the label values, each shown with its :func:`label_colour`.
        label_names: label value -> name (e.g. ``{1: "anterior"}``); others read ``label <v>``.
        prediction_name: the name of the filled, solid style (``None``: not listed).
        reference_name: the name of the dashed style (``None``: not listed).
    """

    labels: tuple[int, ...]
    label_names: Mapping[int, str] = field(default_factory=dict)
    prediction_name: str | None = "prediction"
    reference_name: str | None = "truth"


def label_colour(value: int) -> Colour:
    """The colour of a label value (the same in every picture).

    Example:
        >>> label_colour(1), label_colour(8) == label_colour(1)
        ((230, 159, 0), True)
    """
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise InvalidInputError(f"value: expected a label value >= 1, got {value!r}")
    return LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]


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


def outline(mask2d: np.ndarray, *, width: int = 1) -> np.ndarray:
    """The inner boundary of a 2D mask: foreground pixels within ``width`` steps of the background.

    Example:
        >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
        >>> int(outline(m).sum())
        8
    """
    m = np.asarray(mask2d, dtype=bool)
    return m & ~ndimage.binary_erosion(m, iterations=width, border_value=0)


def _ring(mask2d: np.ndarray, width: int) -> np.ndarray:
    """Background pixels within ``width`` steps of the mask (its outer boundary)."""
    return ndimage.binary_dilation(mask2d, iterations=width) & ~mask2d


def _dashes(shape: tuple[int, ...], width: int) -> np.ndarray:
    """A checkerboard of ``3 * width + 1`` pixel blocks: any line through it is cut into dashes."""
    d = 3 * width + 1
    yy, xx = np.indices(shape[:2])
    return ((yy // d) + (xx // d)) % 2 == 0


def _paint(rgb: np.ndarray, mask: np.ndarray, colour: Colour, *, role: Literal["prediction", "reference"],
           fill_alpha: float, line_width: int) -> None:
    """Draw one region into a float ``(H, W, 3)`` picture, in place, in the style of its role."""
    c = np.asarray(colour, dtype=np.float64)
    if role == "prediction":
        if fill_alpha > 0:
            rgb[mask] = (1 - fill_alpha) * rgb[mask] + fill_alpha * c
        rgb[outline(mask, width=line_width)] = c
    else:
        rgb[_ring(mask, line_width) & _dashes(mask.shape, line_width)] = c


def overlay_slice(
    gray: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    reference: np.ndarray | None = None,
    fill_alpha: float = 0.3,
    line_width: int = 1,
) -> np.ndarray:
    """Gray slice plus label maps -> RGB, each label value in its :func:`label_colour`.

    Args:
        gray: ``(H, W)`` uint8.
        labels: ``(H, W)`` integer label map (0 background), the prediction: filled with
            ``fill_alpha`` and outlined with a solid line inside its boundary.
        reference: ``(H, W)`` integer label map, the truth: a dashed line outside its boundary.
        fill_alpha: opacity of the prediction's fill in ``[0, 1]``.
        line_width: outline width in pixels (>= 1).

    Returns:
        ``(H, W, 3)`` uint8.

    Example:
        >>> lab = np.zeros((9, 9), int); lab[2:7, 2:7] = 1
        >>> rgb = overlay_slice(np.zeros((9, 9), np.uint8), lab, fill_alpha=0)
        >>> tuple(int(v) for v in rgb[2, 4]) == label_colour(1), tuple(int(v) for v in rgb[4, 4])
        (True, (0, 0, 0))
    """
    g = np.asarray(gray)
    if g.ndim != 2:
        raise InvalidInputError(f"gray: expected a 2D (H, W) array, got shape {g.shape}")
    for name, arr in (("labels", labels), ("reference", reference)):
        if arr is not None and np.shape(arr) != g.shape:
            raise ShapeMismatchError(f"{name}: expected shape {g.shape} (gray's), got {np.shape(arr)}")
    rgb = np.repeat(g.astype(np.float64)[..., None], 3, axis=-1)
    layers: list[tuple[np.ndarray, Literal["prediction", "reference"]]] = []
    if labels is not None:
        layers.append((np.asarray(labels), "prediction"))
    if reference is not None:
        layers.append((np.asarray(reference), "reference"))
    for arr, role in layers:
        for value in np.unique(arr):
            if value > 0:
                _paint(rgb, arr == value, label_colour(int(value)), role=role, fill_alpha=fill_alpha,
                       line_width=line_width)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _font(size: int) -> Font:
    """Pillow's built-in font at ``size`` pixels (its fixed bitmap font on builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_width(text: str, font: Font) -> int:
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return int(np.ceil(right - left))


@dataclass(frozen=True)
class _Item:
    """A piece of a text band: an optional mark (colour swatch or style sample) and its text;
    ``word``: the next word of a sentence (a word space before it, not the gap between items)."""

    text: str
    mark: Mark = "none"
    colour: Colour = INK
    word: bool = False


def _mark_width(mark: Mark, size: int) -> int:
    """Pixels taken by a mark (a style sample is twice as wide as a colour swatch)."""
    return 0 if mark == "none" else size if mark == "swatch" else 2 * size


def _item_width(item: _Item, font: Font, size: int) -> int:
    return (_mark_width(item.mark, size) + 4 if item.mark != "none" else 0) + _text_width(item.text, font)


def _layout(items: Sequence[_Item], width: int, font: Font, size: int, gap: int) -> list[list[tuple[int, _Item]]]:
    """Greedy line breaking of ``items`` into ``width`` pixels: lines of ``(x, item)``."""
    space = max(3, _text_width("a b", font) - _text_width("ab", font))
    lines: list[list[tuple[int, _Item]]] = [[]]
    x = 0
    for item in items:
        w = _item_width(item, font, size)
        sep = (space if item.word else gap) if lines[-1] else 0
        if lines[-1] and x + sep + w > width:
            lines.append([])
            x, sep = 0, 0
        lines[-1].append((x + sep, item))
        x += sep + w
    return [line for line in lines if line]


def _draw_mark(band: Image.Image, item: _Item, x: int, y: int, size: int, style: MontageStyle) -> None:
    """A colour swatch, or a sample of the prediction or reference style, ``size`` pixels high."""
    if item.mark == "swatch":
        ImageDraw.Draw(band).rectangle((x, y, x + size - 1, y + size - 1), fill=item.colour, outline=INK)
        return
    w = _mark_width(item.mark, size)
    canvas = np.full((size, w, 3), PAGE, np.float64)
    inner = np.zeros((size, w), bool)
    pad = style.line_width + 1
    inner[pad:-pad, pad:-pad] = True
    _paint(canvas, inner, item.colour, role="prediction" if item.mark == "prediction" else "reference",
           fill_alpha=style.fill_alpha, line_width=style.line_width)
    band.paste(Image.fromarray(canvas.astype(np.uint8)), (x, y))


def _text_band(items: Sequence[_Item], width: int, *, size: int, style: MontageStyle, gap: int = 16) -> np.ndarray:
    """``items`` laid out in lines across ``width`` pixels on the page colour -> ``(h, width, 3)``."""
    font = _font(size)
    lines = _layout(items, width - 2 * _MARGIN, font, size, gap)
    line_h = int(size * 1.45) + 2
    band = Image.new("RGB", (width, max(1, len(lines)) * line_h + 4), PAGE)
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(lines):
        y = 2 + row * line_h
        for x, item in line:
            x += _MARGIN
            if item.mark != "none":
                _draw_mark(band, item, x, y + (line_h - size) // 2, size, style)
                x += _mark_width(item.mark, size) + 4
            _draw_text(draw, (x, y + line_h // 2), item.text, font)
    return np.asarray(band)


def _draw_text(draw: ImageDraw.ImageDraw, left_middle: tuple[int, int], text: str, font: Font) -> None:
    """``text`` in ink, its left end at ``left_middle`` and vertically centred there."""
    x, y = left_middle
    if isinstance(font, ImageFont.FreeTypeFont):
        draw.text((x, y), text, fill=INK, font=font, anchor="lm")
    else:
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((x, y - (top + bottom) // 2), text, fill=INK, font=font)


def _words(text: str) -> list[_Item]:
    """A sentence as items that wrap between words."""
    return [_Item(w, word=i > 0) for i, w in enumerate(text.split())]


# --------------------------------------------------------------------------------------------
# Panels and montages
# --------------------------------------------------------------------------------------------


def panel_size(image: Volume, *, axis: int, tile: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of a slice of ``image`` across ``axis``, longer side ``tile``,
    keeping the slice's aspect in mm.

    Example:
        >>> panel_size(Volume(np.zeros((4, 10, 20)), np.diag([1.0, 2.0, 1.0, 1.0])), axis=0, tile=100)
        (100, 100)
    """
    others = [a for a in range(3) if a != axis]
    h_mm = image.shape[others[0]] * image.spacing[others[0]]
    w_mm = image.shape[others[1]] * image.spacing[others[1]]
    scale = tile / max(h_mm, w_mm)
    return max(1, round(h_mm * scale)), max(1, round(w_mm * scale))


def _resize_labels(labels2d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map resized to ``(h, w)``: smooth boundaries when enlarging, nearest when shrinking."""
    h, w = size
    out = np.zeros((h, w), np.int64)
    shrink = h < labels2d.shape[0] or w < labels2d.shape[1]
    for value in np.unique(labels2d):
        if value <= 0:
            continue
        m = Image.fromarray(((labels2d == value) * 255).astype(np.uint8))
        resample = Image.Resampling.NEAREST if shrink else Image.Resampling.BILINEAR
        out[np.asarray(m.resize((w, h), resample)) >= 128] = int(value)
    return out


def _caption(rgb: np.ndarray, text: str, size: int) -> np.ndarray:
    """``text`` in white on a black box in the top-left corner of a panel."""
    if not text:
        return rgb
    picture = Image.fromarray(rgb)
    draw = ImageDraw.Draw(picture)
    font = _font(size)
    left, top, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((0, 0, right + 3, bottom + 3), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def slice_panel(
    image: Volume,
    index: int,
    *,
    axis: int,
    labels: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    caption: str | None = None,
    window: tuple[float, float] | None = None,
    style: MontageStyle = MontageStyle(),
) -> np.ndarray:
    """One slice of ``image`` with a prediction and a reference drawn on it (see :func:`overlay_slice`),
    resized to :func:`panel_size`, with a caption (default ``"slice <index>"``).

    Args:
        image: the volume.
        index: the slice index along ``axis``.
        axis: the slicing axis.
        labels: integer label map of ``image.shape`` (the prediction), or ``None``.
        reference: integer label map of ``image.shape`` (the truth), or ``None``.
        caption: text in the top-left corner (``""``: none).
        window: gray-level window ``(low, high)`` (default: 1st/99th percentile of the slice).
        style: sizes and line widths.

    Returns:
        ``(h, w, 3)`` uint8.

    Example:
        >>> from medsam2kit.phantoms import ellipsoid_phantom
        >>> image, label = ellipsoid_phantom((6, 40, 20), rng=0)
        >>> slice_panel(image, 3, axis=0, reference=label.array, style=MontageStyle(tile=80)).shape
        (80, 40, 3)
    """
    for name, arr in (("labels", labels), ("reference", reference)):
        if arr is not None and np.shape(arr) != image.shape:
            raise ShapeMismatchError(f"{name}: expected shape {image.shape} (the image's), got {np.shape(arr)}")
    if not 0 <= index < image.shape[axis]:
        raise InvalidInputError(f"index: expected a slice index in [0, {image.shape[axis]}), got {index}")
    h, w = panel_size(image, axis=axis, tile=style.tile)
    low, high = window if window is not None else (None, None)
    gray = to_uint8(np.take(image.array, index, axis=axis), low=low, high=high)
    gray = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR))
    maps = [None if a is None else _resize_labels(np.take(np.asarray(a), index, axis=axis).astype(np.int64), (h, w))
            for a in (labels, reference)]
    rgb = overlay_slice(gray, maps[0], reference=maps[1], fill_alpha=style.fill_alpha, line_width=style.line_width)
    return _caption(rgb, f"slice {index}" if caption is None else caption, max(8, style.font_size - 2))


def _legend_items(legend: Legend) -> list[_Item]:
    """The legend's entries: a colour swatch per label value, then a sample of each style."""
    names = dict(legend.label_names)
    items = [_Item(f"{lab} {names[lab]}" if lab in names else f"label {lab}", "swatch", label_colour(lab))
             for lab in legend.labels]
    if legend.prediction_name:
        items.append(_Item(f"{legend.prediction_name} (filled, solid line)", "prediction", _STYLE_SAMPLE))
    if legend.reference_name:
        items.append(_Item(f"{legend.reference_name} (dashed line)", "reference", _STYLE_SAMPLE))
    return items


def _heading(row: PanelRow) -> list[_Item]:
    items = _words(row.heading)
    if row.dice:
        items.append(_Item("Dice"))
        items += [_Item(f"{lab}: {d:.2f}", "swatch", label_colour(lab)) for lab, d in row.dice]
    return items


def _grid(panels: Sequence[np.ndarray], columns: int, cell: tuple[int, int], width: int) -> np.ndarray:
    """Panels on a page-coloured grid of ``cell``-sized places, ``columns`` per line, ``width`` wide."""
    ch, cw = cell
    lines = -(-len(panels) // columns)
    grid = np.empty((lines * ch + (lines - 1) * _GAP, width, 3), np.uint8)
    grid[:] = PAGE
    for i, p in enumerate(panels):
        r, c = divmod(i, columns)
        y, x = r * (ch + _GAP), _MARGIN + c * (cw + _GAP)
        grid[y : y + p.shape[0], x : x + p.shape[1]] = p
    return grid


def compose(
    rows: Sequence[PanelRow],
    *,
    title: str = "",
    legend: Legend | None = None,
    style: MontageStyle = MontageStyle(),
) -> np.ndarray:
    """Rows of panels under a title, each row under its heading, the legend at the bottom.

    Args:
        rows: the :class:`PanelRow` s, drawn top to bottom.
        title: the picture's title (wrapped to its width; ``""``: none).
        legend: what the legend lists (``None``: no legend).
        style: ``columns`` and ``font_size`` are used.

    Returns:
        ``(H, W, 3)`` uint8 on a white page.

    Example:
        >>> p = np.zeros((20, 30, 3), np.uint8)
        >>> compose([PanelRow("a", (p, p, p))], title="t", legend=Legend((1,)),
        ...         style=MontageStyle(columns=2)).shape[1]
        80
    """
    panels = [p for row in rows for p in row.panels]
    if not panels:
        raise InvalidInputError("rows: expected at least one panel, got none")
    for p in panels:
        if p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3:
            raise InvalidInputError(f"rows: expected (h, w, 3) uint8 panels, got {p.shape} {p.dtype}")
    cell = (max(p.shape[0] for p in panels), max(p.shape[1] for p in panels))
    columns = min(style.columns, max(len(row.panels) for row in rows))
    width = 2 * _MARGIN + columns * cell[1] + (columns - 1) * _GAP
    parts = [np.full((_MARGIN // 2, width, 3), PAGE, np.uint8)]
    if title:
        parts.append(_text_band(_words(title), width, size=style.font_size + 4, style=style))
    for row in rows:
        if row.heading or row.dice:
            parts.append(_text_band(_heading(row), width, size=style.font_size, style=style, gap=10))
        if row.panels:
            parts.append(_grid(row.panels, columns, cell, width))
    if legend is not None:
        parts.append(np.full((_GAP, width, 3), PAGE, np.uint8))
        parts.append(_text_band(_legend_items(legend), width, size=style.font_size, style=style))
    parts.append(np.full((_MARGIN // 2, width, 3), PAGE, np.uint8))
    return np.concatenate(parts, axis=0)


def _spread_slices(maps: Sequence[np.ndarray], axis: int, depth: int, count: int) -> list[int]:
    """``count`` slice indices spread over the extent of the maps' foreground (all slices if none)."""
    union = np.zeros(depth, bool)
    for arr in maps:
        union |= np.moveaxis(np.asarray(arr) > 0, axis, 0).reshape(depth, -1).any(axis=1)
    idx = np.flatnonzero(union) if union.any() else np.arange(depth)
    return sorted({int(i) for i in np.linspace(idx[0], idx[-1], min(count, len(idx))).round()})


def _present(maps: Sequence[np.ndarray]) -> list[int]:
    values: set[int] = set()
    for arr in maps:
        values.update(int(v) for v in np.unique(arr) if v > 0)
    return sorted(values)


def overlay_montage(
    image: Volume,
    overlays: Mapping[str, np.ndarray],
    *,
    reference: np.ndarray | None = None,
    reference_name: str = "truth",
    title: str = "",
    dice: Mapping[str, Mapping[int, float]] | None = None,
    label_names: Mapping[int, str] | None = None,
    axis: int | None = None,
    slices: Sequence[int] | None = None,
    panel_name: str = "slice",
    style: MontageStyle = MontageStyle(),
) -> np.ndarray:
    """A titled grid of slices: one row per overlay (the prediction, filled), the reference dashed
    on every panel, a caption per panel and a legend.

    Args:
        image: the volume (the gray background, windowed to its 1st/99th percentile).
        overlays: row heading -> integer label map of ``image.shape`` (e.g. ``{"fused": ...}``);
            may be empty when only ``reference`` is drawn.
        reference: the truth's label map of ``image.shape``, drawn dashed on every panel.
        reference_name: its name in the legend (e.g. ``"truth"``, ``"reference"``).
        title: the title line (e.g. the case and the method).
        dice: overlay name -> label -> Dice, shown after that row's heading.
        label_names: label value -> name for the legend (e.g. ``{1: "anterior"}``).
        axis: slicing axis (default: :func:`~medsam2kit.sequencer.default_axis` of ``image``).
        slices: slice indices (default ``style.count`` slices spread over the maps' extent).
        panel_name: each panel's caption before its index (``"frame"`` for a recording,
            ``"image"`` for a stack of images).
        style: sizes, columns, line widths.

    Returns:
        ``(H, W, 3)`` uint8 RGB picture.

    Raises:
        ShapeMismatchError: a map not of ``image.shape``.
        InvalidInputError: nothing to draw, a slice index out of range.

    Example:
        >>> from medsam2kit.phantoms import ellipsoid_phantom
        >>> image, label = ellipsoid_phantom((6, 40, 40), rng=0)
        >>> style = MontageStyle(tile=64, columns=2, count=2)
        >>> rgb = overlay_montage(image, {"a": label.array, "b": label.array}, reference=label.array,
        ...                       title="case 0", dice={"a": {1: 1.0}}, axis=0, style=style)
        >>> rgb.shape[1], rgb.shape[0] > 2 * 64
        (148, True)
    """
    maps = dict(overlays)
    for name, arr in [*maps.items(), *([(reference_name, reference)] if reference is not None else [])]:
        if np.shape(arr) != image.shape:
            raise ShapeMismatchError(f"overlays[{name!r}]: expected shape {image.shape}, got {np.shape(arr)}")
    if not maps and reference is None:
        raise InvalidInputError("overlays: expected at least one label map or a reference, got none")
    ax = resolve_axis(axis, shape=image.shape, volume=image)
    every = [np.asarray(a) for a in maps.values()] + ([np.asarray(reference)] if reference is not None else [])
    chosen = list(slices) if slices is not None else _spread_slices(every, ax, image.shape[ax], style.count)
    for z in chosen:
        if not 0 <= z < image.shape[ax]:
            raise InvalidInputError(f"slices: expected indices in [0, {image.shape[ax]}), got {z}")
    if style.zoom is not None:  # crop to the labels' in-plane footprint
        drawn = functools.reduce(np.logical_or, [np.any(a != 0, axis=ax) for a in every])
        if drawn.any():
            roi = roi_around(drawn, image.shape, axis=ax, factor=style.zoom)
            image = roi.crop_volume(image)
            maps = {name: roi.crop(np.asarray(arr)) for name, arr in maps.items()}
            reference = None if reference is None else roi.crop(np.asarray(reference))
    window = (float(np.percentile(image.array, 1)), float(np.percentile(image.array, 99)))
    rows = [
        PanelRow(name, tuple(slice_panel(image, z, axis=ax, labels=arr, reference=reference, window=window,
                                         caption=f"{panel_name} {z}", style=style) for z in chosen),
                 tuple(sorted((dice or {}).get(name, {}).items())))
        for name, arr in (maps.items() if maps else [("", None)])
    ]
    legend = Legend(tuple(_present(every)), label_names=dict(label_names or {}),
                    prediction_name="prediction" if maps else None,
                    reference_name=reference_name if reference is not None else None)
    return compose(rows, title=title, legend=legend, style=style)


def save_png(rgb: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an RGB uint8 picture as PNG atomically (temporary file, then rename).

    Example:
        >>> import tempfile
        >>> save_png(np.zeros((4, 6, 3), np.uint8), Path(tempfile.mkdtemp()) / "a.png").suffix
        '.png'
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise InvalidInputError(f"rgb: expected (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


__all__ = [
    "INK",
    "LABEL_COLOURS",
    "PAGE",
    "Legend",
    "MontageStyle",
    "PanelRow",
    "compose",
    "label_colour",
    "outline",
    "overlay_montage",
    "overlay_slice",
    "panel_size",
    "save_png",
    "slice_panel",
    "to_uint8",
]
