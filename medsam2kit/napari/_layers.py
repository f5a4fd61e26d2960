"""The annotator's napari layers: prompt points (positive green, negative red), prompt boxes, the
label map and the highlighted SAM2Med3D prompt slices; drawn from the session's prompt records.

All layers share the image's ``scale``, so their data coordinates are the image's voxel indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medsam2kit.napari.session import BoxRecord, PointRecord, PromptRecord
from medsam2kit.sequencer import SliceLayout

POINTS = "SAM2 points"
BOXES = "SAM2 boxes"
LABELS = "SAM2 labels"
PROMPT_SLICES = "SAM2Med3D prompt slices"

POSITIVE, NEGATIVE = "positive", "negative"
POLARITY_COLOURS = {POSITIVE: "limegreen", NEGATIVE: "red"}
BOX_COLOUR = "#ffb000"
SLICE_COLOUR = "#ffd700"


def _point_features(n: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "prompt": pd.Categorical([POSITIVE] * n, categories=[POSITIVE, NEGATIVE]),
        "label": np.zeros(n, np.int64),
        "uid": np.full(n, -1, np.int64),
    })


def points_layer(viewer: Any, *, scale: Sequence[float], point_size: float) -> Any:
    """The prompt points layer (created, or the existing one emptied)."""
    if POINTS in viewer.layers:
        layer = viewer.layers[POINTS]
        layer.scale = tuple(scale)
        return layer
    layer = viewer.add_points(
        np.empty((0, 3)), ndim=3, name=POINTS, scale=tuple(scale), size=point_size,
        features=_point_features(), face_color="prompt", face_color_cycle=POLARITY_COLOURS,
        border_color="white", border_width=0.15, out_of_slice_display=False,
    )
    layer.feature_defaults["prompt"] = POSITIVE
    return layer


def boxes_layer(viewer: Any, *, scale: Sequence[float]) -> Any:
    """The prompt boxes layer (rectangles)."""
    if BOXES in viewer.layers:
        layer = viewer.layers[BOXES]
        layer.scale = tuple(scale)
        return layer
    return viewer.add_shapes(
        ndim=3, name=BOXES, scale=tuple(scale), edge_color=BOX_COLOUR, face_color="transparent",
        edge_width=1.5, features={"label": np.zeros(0, np.int64), "uid": np.zeros(0, np.int64)},
    )


def labels_layer(viewer: Any, data: np.ndarray, *, scale: Sequence[float], metadata: dict[str, Any]) -> Any:
    """The label map layer showing ``data`` itself (not a copy)."""
    if LABELS in viewer.layers:
        layer = viewer.layers[LABELS]
        if layer.data is not data:
            layer.data = data
        layer.scale = tuple(scale)
        layer.metadata = dict(metadata)
        return layer
    layer = viewer.add_labels(data, name=LABELS, scale=tuple(scale), metadata=dict(metadata), opacity=0.55)
    layer.selected_label = 1
    return layer


def draw_points(layer: Any, records: Sequence[PromptRecord], *, layout: SliceLayout) -> None:
    """Show the session's clicks: coordinates back in voxels, polarity, label and uid."""
    pts = [r for r in records if isinstance(r, PointRecord)]
    coords = np.zeros((len(pts), 3))
    for i, r in enumerate(pts):
        coords[i] = _voxel(r.slice_index, r.xy, layout)
    features = _point_features(len(pts))
    features["prompt"] = pd.Categorical([POSITIVE if r.positive else NEGATIVE for r in pts],
                                        categories=[POSITIVE, NEGATIVE])
    features["label"] = [r.label for r in pts]
    features["uid"] = [r.uid for r in pts]
    default = layer.feature_defaults["prompt"][0] if len(layer.feature_defaults) else POSITIVE
    layer.data = coords
    layer.features = features
    layer.feature_defaults["prompt"] = default
    layer.refresh_colors()


def draw_boxes(layer: Any, records: Sequence[PromptRecord], *, layout: SliceLayout) -> None:
    """Show the session's boxes as rectangles on their slices."""
    boxes = [r for r in records if isinstance(r, BoxRecord)]
    layer.data = []
    if boxes:
        rects = [slice_rectangle(layout, r.slice_index, r.box) for r in boxes]
        layer.add_rectangles(rects, edge_color=BOX_COLOUR, face_color="transparent")
    layer.features = pd.DataFrame({"label": [r.label for r in boxes], "uid": [r.uid for r in boxes]})


def slice_rectangle(layout: SliceLayout, slice_index: int, box: Sequence[float]) -> np.ndarray:
    """The four ``(4, 3)`` voxel-coordinate corners of an in-slice box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    return np.stack([_voxel(slice_index, xy, layout) for xy in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])


def prompt_slices_layer(viewer: Any, *, layout: SliceLayout, slices: dict[int, tuple[int, ...]],
                        scale: Sequence[float]) -> Any:
    """Highlight SAM2Med3D's chosen prompt slices (along ``layout.axis``): a frame around each,
    with its label."""
    if PROMPT_SLICES in viewer.layers:
        viewer.layers.remove(PROMPT_SLICES)
    h, w = layout.slice_shape
    rects, text = [], []
    for lab, chosen in sorted(slices.items()):
        for s in chosen:
            rects.append(slice_rectangle(layout, s, (-0.5, -0.5, w - 0.5, h - 0.5)))
            text.append(f"prompt slice {s} (label {lab})")
    layer = viewer.add_shapes(
        rects or None, ndim=3, shape_type="rectangle", name=PROMPT_SLICES, scale=tuple(scale),
        edge_color=SLICE_COLOUR, face_color="transparent", edge_width=2.0,
        features={"text": text}, text={"string": "{text}", "color": SLICE_COLOUR, "size": 10, "anchor": "upper_left"},
    )
    layer.editable = False
    return layer


def _voxel(slice_index: int, xy: Sequence[float], layout: SliceLayout) -> np.ndarray:
    """In-slice ``(x, y)`` (column, row) on slice ``slice_index`` -> voxel ``(i, j, k)``: the
    inverse of the session's split (frame rows/columns run along ``layout.in_plane_axes``)."""
    rows, cols = layout.in_plane_axes
    out = np.zeros(3)
    out[layout.axis] = slice_index
    out[cols] = xy[0]
    out[rows] = xy[1]
    return out


__all__ = [
    "BOXES",
    "LABELS",
    "NEGATIVE",
    "POINTS",
    "POSITIVE",
    "PROMPT_SLICES",
    "boxes_layer",
    "draw_boxes",
    "draw_points",
    "labels_layer",
    "points_layer",
    "prompt_slices_layer",
    "slice_rectangle",
]
