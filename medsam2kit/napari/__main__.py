"""``python -m medsam2kit.napari [FILE ...]``: napari with the SAM2 annotator docked and the files
opened (needs ``pip install "medsam2kit[napari]"``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Open napari with the annotator; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m medsam2kit.napari", description=__doc__)
    parser.add_argument("files", nargs="*", help="images to open (NIfTI, NRRD, DICOM file or series folder, npz)")
    args = parser.parse_args(argv)
    try:
        import napari
    except ImportError:
        print('napari is not installed: pip install "medsam2kit[napari]"', file=sys.stderr)
        return 1
    from medsam2kit.napari._widget import AnnotatorWidget

    viewer = napari.Viewer()
    widget = AnnotatorWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SAM2 annotator", area="right")
    for path in args.files:
        widget.open_image(path)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
