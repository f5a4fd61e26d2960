"""Keyboard shortcuts of the annotator, micro-sam's where an action exists there (``T``, ``S``,
``Shift+S``, ``C``, ``Shift+C``), in one table that the widget binds and the docs print.

No Qt import: :func:`bind_shortcuts` takes the viewer and layers as objects with napari's
``bind_key``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shortcut:
    """One key binding: napari key name, action name (a method of the widget), description, and a
    short form for the widget."""

    key: str
    action: str
    description: str
    short: str = ""


#: The annotator's shortcuts. They work when the viewer or one of the annotator's layers (points,
#: boxes, labels) is active.
SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("T", "toggle_polarity", "toggle the next click between positive (green) and negative (red)",
             "positive / negative"),
    Shortcut("S", "segment_slice", "segment now: recompute the masks of changed prompts (micro-sam's 'segment object')",
             "segment now"),
    Shortcut("Shift-S", "propagate", "propagate all labels through the volume in the chosen direction", "propagate"),
    Shortcut("C", "next_label", "commit the current object: the next clicks go to a new label", "next label"),
    Shortcut("Shift-C", "clear_label", "clear the active label (its prompts and its voxels)", "clear label"),
    Shortcut("U", "undo", "undo the last prompt", "undo prompt"),
    Shortcut("P", "points_mode", "click mode: add points to the points layer", "points mode"),
    Shortcut("B", "box_mode", "box mode: draw rectangles on the boxes layer", "box mode"),
    Shortcut("M", "mask_prompt", "use the active label's painted mask on this slice as a mask prompt",
             "painted mask as prompt"),
)


def shortcut_table() -> str:
    """The shortcuts as a Markdown table (for the docs and the widget's help).

    Example:
        >>> shortcut_table().splitlines()[0]
        '| key | action |'
    """
    rows = ["| key | action |", "|---|---|"]
    rows += [f"| `{s.key.replace('-', '+')}` | {s.description} |" for s in SHORTCUTS]
    return "\n".join(rows)


def bind_shortcuts(targets: Iterable[Any], actions: Mapping[str, Callable[[], None]]) -> None:
    """Bind every :data:`SHORTCUTS` key on each target (a napari viewer or layer), replacing the
    target's own binding of that key (e.g. the points layer's ``S``)."""
    for target in targets:
        for sc in SHORTCUTS:
            fn = actions[sc.action]
            target.bind_key(sc.key, _ignore_argument(fn), overwrite=True)


def _ignore_argument(fn: Callable[[], None]) -> Callable[[Any], None]:
    def handler(_target: Any) -> None:
        fn()

    handler.__name__ = getattr(fn, "__name__", "shortcut")
    return handler


__all__ = ["SHORTCUTS", "Shortcut", "bind_shortcuts", "shortcut_table"]
