from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.viz import (
    LABEL_COLOURS,
    PAGE,
    Legend,
    MontageStyle,
    PanelRow,
    compose,
    label_colour,
    outline,
    overlay_montage,
    overlay_slice,
    panel_size,
    save_png,
    slice_panel,
)
from medsam2kit.volume import Volume


def _has(rgb: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(rgb == np.asarray(colour, np.uint8), axis=-1).any())


def _grid_rows(rgb: np.ndarray, width: int = 24) -> np.ndarray:
    """Indices of the rows that cross the panels of the first column (``width`` pixels from the
    left margin almost all off the page colour; text never is)."""
    span = rgb[:, 8 : 8 + width]
    return np.flatnonzero(np.any(span != np.asarray(PAGE, np.uint8), axis=-1).mean(axis=1) > 0.9)


def _two_labels() -> tuple[Volume, np.ndarray]:
    image, label = ellipsoid_phantom((10, 40, 30), rng=0)
    return image, np.where(label.array == 3, 0, label.array).astype(np.int64)  # labels 1 and 2


def test_outline_is_the_inner_boundary() -> None:
    m = np.zeros((7, 7), bool)
    m[1:6, 2:5] = True
    ref = m.copy()
    ref[2:5, 3:4] = False  # interior pixels (all 4 neighbours inside)
    np.testing.assert_array_equal(outline(m), ref)
    assert outline(m, width=2).sum() == m.sum()  # 3 columns wide: nothing is 2 steps inside


def test_label_colours_are_distinct_fixed_and_indexed_by_value() -> None:
    colours = [label_colour(v) for v in range(1, len(LABEL_COLOURS) + 1)]
    assert len(set(colours)) == len(colours) == 7
    assert all(min(abs(a - b) for a, b in zip(c, PAGE)) > 0 for c in colours)  # never the page colour
    assert label_colour(1) == (230, 159, 0) and label_colour(2) == (86, 180, 233)  # Okabe-Ito, stable
    assert label_colour(8) == label_colour(1)
    for bad in (0, -1, True):
        with pytest.raises(InvalidInputError, match="value"):
            label_colour(bad)


def test_overlay_slice_colours_by_label_value_prediction_solid_reference_dashed_outside() -> None:
    gray = np.full((40, 40), 100, np.uint8)
    lab = np.zeros((40, 40), int)
    lab[5:15, 5:15] = 1
    lab[20:35, 20:35] = 2
    rgb = overlay_slice(gray, lab, fill_alpha=0.0)
    assert tuple(rgb[5, 10]) == label_colour(1) and tuple(rgb[20, 25]) == label_colour(2)
    assert tuple(rgb[10, 10]) == (100, 100, 100)  # interior untouched without fill
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    filled = overlay_slice(gray, lab, fill_alpha=0.5)
    assert tuple(filled[10, 10]) == tuple(int(round(0.5 * 100 + 0.5 * c)) for c in label_colour(1))
    # the same map as the reference: a dashed ring just outside each region, in the same colours
    ref = overlay_slice(gray, reference=lab)
    inside = lab > 0
    assert np.all(ref[inside] == 100)
    ring = (np.abs(np.diff(np.pad(inside, 1).astype(int), axis=0))[1:, 1:-1] > 0) & ~inside
    coloured = np.any(ref != 100, axis=-1)
    assert coloured[ring].any() and not coloured[ring].all()  # dashed
    assert _has(ref, label_colour(1)) and _has(ref, label_colour(2))
    with pytest.raises(ShapeMismatchError, match="reference"):
        overlay_slice(gray, reference=lab[:-1])


def test_a_label_keeps_its_colour_whatever_map_and_order() -> None:
    gray = np.zeros((20, 20), np.uint8)
    only2 = np.zeros((20, 20), int)
    only2[5:15, 5:15] = 2
    a = overlay_slice(gray, only2, fill_alpha=0)
    b = overlay_slice(gray, None, reference=only2)
    assert _has(a, label_colour(2)) and _has(b, label_colour(2))
    assert not _has(a, label_colour(1)) and not _has(b, label_colour(1))


def test_panel_keeps_the_aspect_in_mm() -> None:
    image = Volume(np.zeros((5, 20, 40), np.float32), np.diag([3.0, 2.0, 0.5, 1.0]))
    assert panel_size(image, axis=0, tile=64) == (64, 32)  # 40 mm x 20 mm
    panel = slice_panel(image, 2, axis=0, style=MontageStyle(tile=64))
    assert panel.shape == (64, 32, 3) and panel.dtype == np.uint8
    with pytest.raises(InvalidInputError, match="index"):
        slice_panel(image, 5, axis=0)


def test_montage_has_a_title_headings_captions_and_a_legend_of_every_label_colour(tmp_path: Path) -> None:
    image, label = _two_labels()
    shifted = np.roll(label, 2, axis=2)
    style = MontageStyle(count=5, columns=3, tile=64)
    kwargs = dict(reference=label, slices=[3, 4, 5, 6, 7], axis=0, style=style)
    plain = overlay_montage(image, {"shifted": shifted}, **kwargs)  # type: ignore[arg-type]
    titled = overlay_montage(image, {"shifted": shifted}, title="case 7: shifted", **kwargs)  # type: ignore[arg-type]
    h, w = panel_size(image, axis=0, tile=64)
    assert titled.shape[1] == plain.shape[1] == 2 * 8 + 3 * w + 2 * 4  # margins, 3 columns, gaps
    band = titled.shape[0] - plain.shape[0]
    assert band > 10  # a title line
    title_rows = titled[4 : 4 + band]
    assert (title_rows.astype(int).sum(axis=-1) < 200).sum() > 30  # dark text drawn in the title band
    np.testing.assert_array_equal(titled[4 + band :], plain[4:])  # the rest is unchanged
    grid = _grid_rows(titled)
    assert len(grid) == 2 * h  # two lines of panels (5 slices, 3 columns)
    legend = titled[grid.max() + 1 :]
    for lab in (1, 2):
        assert _has(legend, label_colour(lab))  # a swatch per label
    assert not _has(legend, label_colour(3))
    assert (legend.astype(int).sum(axis=-1) < 200).sum() > 50  # the legend's text
    path = save_png(titled, tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), titled)


def test_montage_panels_are_captioned_with_their_kind_and_index() -> None:
    image, label = _two_labels()
    style = MontageStyle(count=2, columns=2, tile=64)
    kwargs = dict(reference=label, slices=[3, 5], axis=0, style=style)
    default = overlay_montage(image, {"p": label}, **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(overlay_montage(image, {"p": label}, panel_name="slice", **kwargs), default)  # type: ignore[arg-type]
    frames = overlay_montage(image, {"p": label}, panel_name="frame", **kwargs)  # type: ignore[arg-type]
    assert frames.shape == default.shape
    changed = np.argwhere((frames != default).any(axis=-1))
    panel = slice_panel(image, 3, axis=0, reference=label, caption="frame 3", style=style)
    # only the captions differ, in the top rows of the panels
    assert len(changed) > 20 and np.ptp(changed[:, 0]) < panel.shape[0] // 2


def test_montage_heading_shows_the_dice_of_each_label_in_its_colour() -> None:
    image, label = _two_labels()
    style = MontageStyle(count=2, tile=48)
    without = overlay_montage(image, {"p": label}, reference=label, style=style)
    with_dice = overlay_montage(image, {"p": label}, reference=label, dice={"p": {1: 0.9, 2: 0.8}}, style=style)
    top = with_dice[: _grid_rows(with_dice).min()]
    assert _has(top, label_colour(1)) and _has(top, label_colour(2))
    assert not _has(without[: _grid_rows(without).min()], label_colour(1))


def test_one_row_per_overlay() -> None:
    image, label = _two_labels()
    style = MontageStyle(count=3, columns=4, tile=48)
    one = overlay_montage(image, {"a": label}, reference=label, style=style)
    two = overlay_montage(image, {"a": label, "b": np.roll(label, 1, axis=1)}, reference=label, style=style)
    assert len(_grid_rows(two)) == 2 * len(_grid_rows(one))
    assert two.shape[1] == one.shape[1]


def test_compose_wraps_a_long_title_and_checks_panels() -> None:
    p = np.zeros((30, 30, 3), np.uint8)
    short = compose([PanelRow("", (p,))], title="short")
    long = compose([PanelRow("", (p,))], title="a long title " * 6)
    assert long.shape[1] == short.shape[1] == 2 * 8 + 30 and long.shape[0] > short.shape[0] + 40
    legend = compose([PanelRow("", (p, p))], legend=Legend((1, 2, 3), {1: "a"}), style=MontageStyle(columns=2))
    assert all(_has(legend, label_colour(v)) for v in (1, 2, 3))
    with pytest.raises(InvalidInputError, match="rows"):
        compose([PanelRow("", ())])
    with pytest.raises(InvalidInputError, match="rows"):
        compose([PanelRow("", (p[..., 0],))])


def test_montage_errors() -> None:
    image, label = _two_labels()
    with pytest.raises(ShapeMismatchError, match="overlays"):
        overlay_montage(image, {"a": label[:-1]})
    with pytest.raises(ShapeMismatchError, match="truth"):
        overlay_montage(image, {"a": label}, reference=label[:, :-1])
    with pytest.raises(InvalidInputError, match="overlays"):
        overlay_montage(image, {})
    with pytest.raises(InvalidInputError, match="slices"):
        overlay_montage(image, {"a": label}, slices=[10])
    with pytest.raises(InvalidInputError, match="tile"):
        MontageStyle(tile=8)
    with pytest.raises(InvalidInputError, match="fill_alpha"):
        MontageStyle(fill_alpha=1.5)
    with pytest.raises(InvalidInputError, match="rgb"):
        save_png(np.zeros((4, 4), np.uint8), "unused.png")


@pytest.mark.parametrize("centre", [(100, 70), (12, 190)])  # inside the slice; near a corner (crop moved in)
def test_montage_zooms_onto_the_labels_it_draws(centre: tuple[int, int]) -> None:
    """Default style: the panels show a square of 3 times the labels' in-plane box, the same
    picture as the whole-slice montage of that crop cut by hand (the label and the truth on
    different slices both count; a crop that would overhang is moved inside the slice)."""
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=(3, 200, 200)).astype(np.float32), np.diag([4.0, 0.5, 0.5, 1.0]))
    r, c = centre
    pred = np.zeros(image.shape, np.uint8)
    pred[0, max(r - 5, 0):r + 5, max(c - 10, 0):c + 5] = 1   # 10 x 15 box
    truth = np.zeros(image.shape, np.uint8)
    truth[2, max(r - 5, 0):r + 5, c + 5:c + 10] = 2  # widens the footprint to 10 x 20 voxels
    kwargs = dict(reference=truth, axis=0, slices=[0, 2], title="t")
    found = overlay_montage(image, {"p": pred}, style=MontageStyle(tile=96, count=2), **kwargs)  # type: ignore[arg-type]
    rows = np.flatnonzero((pred[0] | truth[2]).any(axis=1))
    cols = np.flatnonzero((pred[0] | truth[2]).any(axis=0))
    side = 3 * max(np.ptp(rows) + 1, np.ptp(cols) + 1)  # 60 voxels
    start = [int(np.clip(round((lo + hi) / 2 - side / 2), 0, 200 - side)) for lo, hi in
             ((rows.min(), rows.max() + 1), (cols.min(), cols.max() + 1))]
    cut = (slice(None), slice(start[0], start[0] + side), slice(start[1], start[1] + side))
    by_hand = overlay_montage(Volume(image.array[cut], image.affine), {"p": pred[cut]},
                              style=MontageStyle(tile=96, count=2, zoom=None),
                              **{**kwargs, "reference": truth[cut]})  # type: ignore[arg-type]
    np.testing.assert_array_equal(found, by_hand)
    whole = overlay_montage(image, {"p": pred}, style=MontageStyle(tile=96, count=2, zoom=None), **kwargs)  # type: ignore[arg-type]
    assert whole.shape == found.shape and not np.array_equal(whole, found)
    with pytest.raises(InvalidInputError, match="zoom: expected a crop factor >= 1"):
        MontageStyle(zoom=0.5)
