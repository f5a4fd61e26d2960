"""napari reader contribution: NIfTI, NRRD, npz, DICOM files and DICOM series folders (ultrasound
cines included) through :mod:`medsam2kit.io`.

Each file becomes one layer whose ``scale`` is the real voxel spacing (mm; a cine's first axis is
its frame step) and whose metadata keep the :class:`~medsam2kit.volume.Volume` under
:data:`METADATA_KEY`: the annotator saves labels with exactly that geometry. Label files (a
``_label``/``_labels``/``_seg``/``_mask`` name, or a DICOM SEG) open as labels layers.

No Qt and no napari import: napari calls :func:`napari_get_reader` with a path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsam2kit._files import split_case
from medsam2kit.errors import InvalidInputError
from medsam2kit.io import load_volume
from medsam2kit.sequencer import PercentileWindow, resolve_window
from medsam2kit.volume import Volume

#: Key of the :class:`Volume` (array + geometry) in a layer's ``metadata``.
METADATA_KEY = "medsam2kit"
#: File-name endings the reader opens (matched case-insensitively); folders are read as DICOM series.
SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".npz", ".dcm", ".dicom", ".ima")

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """The reader for ``path`` (a file or DICOM folder it can open, or a list of them), else ``None``.

    Example:
        >>> napari_get_reader("notes.txt") is None, napari_get_reader("case.nii.gz") is not None
        (True, True)
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_readable(Path(p)) for p in paths):
        return None
    return read_layers


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read each path into napari layer data (see the module docstring).

    Raises:
        MedSAM2KitError: a file that cannot be read (the message names it and says why).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [layer_data(load_volume(p), name=_name(Path(p)), labels=_is_label_name(Path(p))) for p in paths]


def layer_data(volume: Volume, *, name: str, labels: bool = False) -> LayerData:
    """A :class:`Volume` as napari layer data: image (or labels) array, scale = spacing, the
    volume in ``metadata[METADATA_KEY]``, display contrast from the 0.5-99.5 % percentiles.

    Example:
        >>> vol = Volume(np.zeros((2, 3, 4), np.float32), np.diag([3.0, 0.5, 0.5, 1.0]))
        >>> data, kwargs, kind = layer_data(vol, name="ct")
        >>> kind, kwargs["scale"]
        ('image', (3.0, 0.5, 0.5))
    """
    is_labels = labels or volume.modality == "SEG"
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(float(s) for s in volume.spacing),
        "metadata": {METADATA_KEY: volume, "path": volume.source},
    }
    if is_labels:
        arr = volume.array
        if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.uint16)
        return arr, kwargs, "labels"
    window = resolve_window(PercentileWindow(), volume.array)
    if window is not None and window.high > window.low:
        kwargs["contrast_limits"] = (float(window.low), float(window.high))
    return volume.array, kwargs, "image"


def volume_of_layer(data: Any, scale: Sequence[float], metadata: dict[str, Any] | None, *, name: str) -> Volume:
    """The :class:`Volume` behind a layer: the one the reader kept, else the layer's 3D data with
    the affine ``diag(scale)`` (no orientation known).

    Raises:
        InvalidInputError: the layer is not 3D (the message names it).
    """
    kept = (metadata or {}).get(METADATA_KEY)
    if isinstance(kept, Volume) and tuple(kept.shape) == tuple(np.shape(data)):
        return kept
    arr = np.asarray(data)
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise InvalidInputError(f"image layer {name!r}: expected a gray 3D volume, got an RGB stack {arr.shape}")
    if arr.ndim != 3:
        raise InvalidInputError(f"image layer {name!r}: expected a 3D volume (D, H, W), got shape {arr.shape}")
    spacing = [float(s) for s in scale][-3:]
    return Volume(arr, np.diag([*spacing, 1.0]), source=None)


def _readable(p: Path) -> bool:
    if p.is_dir():
        return _holds_dicom(p)
    return p.name.lower().endswith(SUFFIXES)


def _holds_dicom(folder: Path, *, limit: int = 64) -> bool:
    from medsam2kit.dicom_seg import is_dicom_path

    try:
        files = [f for f in sorted(folder.iterdir())[: limit * 4] if f.is_file()][:limit]
    except OSError:
        return False
    return any(is_dicom_path(f) for f in files)


def _is_label_name(p: Path) -> bool:
    return split_case(p)[1] == "label"


def _name(p: Path) -> str:
    name = p.name
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


__all__ = ["METADATA_KEY", "SUFFIXES", "layer_data", "napari_get_reader", "read_layers", "volume_of_layer"]
