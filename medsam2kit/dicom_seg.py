"""Write label maps as DICOM Segmentation objects (DICOM SEG) that reference their DICOM source.

:func:`save_dicom_seg` turns a label map computed on a DICOM image (a series folder, a single
slice or an enhanced multi-frame file read by :func:`medsam2kit.io.load_volume`) into one DICOM
SEG file written with `highdicom <https://highdicom.readthedocs.io>`_ (``pip install
medsam2kit[dicom-seg]``):

* one BINARY segment per label value ``1..N`` (segment number = label value, so the file reads
  back as the same label map), named ``"label 1"``, ``"label 2"``, ... unless ``segment_names``
  says otherwise; empty frames are omitted;
* the SEG references the source series (its StudyInstanceUID, FrameOfReferenceUID and every
  source SOPInstanceUID, frame by frame) and carries the source's patient and study;
* the algorithm is identified in every segment (AlgorithmIdentificationSequence: name, family
  "Artificial Intelligence", version = medsam2kit's), the equipment as manufacturer
  ``"medsam2kit"``, model name = the algorithm, software version = ``medsam2kit.__version__``;
* written atomically (a temporary file beside ``path``, then ``os.replace``): never a partial file.

The source files are re-read from ``like.source`` and checked to lie exactly on ``like``'s grid
(slice by slice), so the SEG always references the images the labels were computed on.

An all-zero label map is written as a valid SEG whose segments (one ``"label 1"``, or one per
``segment_names`` entry) are empty on every frame: a model that finds nothing still produces an
output file, which reads back as all zeros.

:func:`medsam2kit.io.load_label` reads a SEG back onto the source grid (``load_label(seg, like=
image)``), and ``medsam2kit evaluate`` scores it like any other label map.

The command line helpers (:func:`resolve_output_format`, :func:`check_dicom_inputs`,
:func:`write_labels`) give ``medsam2kit segment``/``fewshot`` their ``--format {nifti,dicom-seg}``.

Example:
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from pydicom.data import get_testdata_file
    >>> from medsam2kit.io import load_label, load_volume
    >>> from medsam2kit.dicom_seg import save_dicom_seg
    >>> ct = load_volume(get_testdata_file("CT_small.dcm"))
    >>> labels = np.zeros(ct.shape, np.uint8)
    >>> labels[0, 40:60, 50:90] = 2
    >>> out = save_dicom_seg(labels, like=ct, path=pathlib.Path(tempfile.mkdtemp()) / "seg.dcm")
    >>> np.array_equal(load_label(out, like=ct).array, labels)
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medsam2kit._files import atomic_write
from medsam2kit.errors import (
    FileFormatError,
    GeometryError,
    InvalidInputError,
    InvalidTypeError,
    MissingDependencyError,
    MissingFileError,
)
from medsam2kit.volume import Volume, array_on_grid

OutputFormat = Literal["nifti", "dicom-seg"]
"""The label-map file formats of ``medsam2kit segment``/``fewshot`` (``--format``)."""

OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("nifti", "dicom-seg")
MAX_SEGMENTS = 255
"""The largest label value :func:`save_dicom_seg` writes (one segment per label value)."""

_NOT_DICOM = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".npz", ".png", ".jpg", ".jpeg", ".pt")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_GRID_ATOL_MM = 1e-3
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass(frozen=True)
class _Frame:
    """One source image plane: the dataset, its 0-based frame index and its slice in ``like``."""

    dataset: Any
    frame: int
    slice_index: int
    path: Path


def save_dicom_seg(
    labels: np.ndarray | Volume,
    like: Volume,
    path: str | os.PathLike[str],
    *,
    segment_names: Sequence[str] | Mapping[int, str] | None = None,
    algorithm: str = "medsam2kit",
    source_series_uid: str | None = None,
) -> Path:
    """Write a label map as a DICOM SEG that references the DICOM images it was computed on.

    Args:
        labels: ``like.shape`` label map (``(slice, row, column)``, the layout
            :func:`~medsam2kit.io.load_volume` gives DICOM), bool or integers in ``[0, 255]``
            (integral floats accepted), or a :class:`Volume` on ``like``'s grid. Label ``i``
            becomes segment number ``i``; 0 is background.
        like: the DICOM image, as read by :func:`medsam2kit.io.load_volume` from a series
            folder, a single-slice file or an enhanced multi-frame file. Its ``source`` is
            re-read to reference the source instances.
        path: the output file (conventionally ``.dcm``); its folder must exist. An existing file
            is replaced atomically.
        segment_names: segment labels, either a sequence (entry ``i`` names label ``i + 1``;
            may be longer than the largest label, adding empty segments) or a mapping
            ``{label: name}``; default ``"label 1"``, ``"label 2"``, ...
        algorithm: the algorithm (model) name recorded in the SEG, e.g. a model zoo name
            (``"reference"``, ``"sam2.1_hiera_tiny"``).
        source_series_uid: for a folder holding several series on the same grid, the
            SeriesInstanceUID of the one ``like`` was read from.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        InvalidTypeError: ``like`` is not a Volume, ``labels`` is not numeric or ``segment_names``
            is neither a sequence nor a mapping.
        InvalidInputError: ``like`` is not DICOM (an in-memory, NIfTI, NRRD or npz volume: use
            :func:`medsam2kit.io.save_mask`), is a cine or a SEG itself; labels negative,
            fractional, non-finite or above 255; bad ``segment_names`` or ``algorithm``; ``path``
            names a NIfTI file or a folder; several matching series without ``source_series_uid``.
        ShapeMismatchError: ``labels.shape != like.shape``.
        GeometryError: ``labels`` is a Volume on another grid, or the source files (no plane
            positions, changed since loading) do not lie on ``like``'s grid.
        MissingFileError: the source or the destination folder does not exist.
        MissingDependencyError: highdicom is not installed.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np, pydicom
        >>> from pydicom.data import get_testdata_file
        >>> from medsam2kit.io import load_volume
        >>> ct = load_volume(get_testdata_file("CT_small.dcm"))
        >>> labels = np.zeros(ct.shape, np.uint8)
        >>> labels[0, 10:20, 10:20] = 1
        >>> p = save_dicom_seg(labels, ct, pathlib.Path(tempfile.mkdtemp()) / "seg.dcm",
        ...                    segment_names=["liver"], algorithm="reference")
        >>> seg = pydicom.dcmread(p)
        >>> seg.Modality, seg.SegmentSequence[0].SegmentLabel, seg.ManufacturerModelName
        ('SEG', 'liver', 'reference')
    """
    if not isinstance(like, Volume):
        raise InvalidTypeError(f"like: expected a medsam2kit Volume, got {type(like).__name__}")
    label_map = _label_map(labels, like)
    if not isinstance(algorithm, str) or not algorithm.strip():
        raise InvalidInputError(f"algorithm: expected a non-empty name, got {algorithm!r}")
    names = _segment_names(segment_names, int(label_map.max()) if label_map.size else 0)
    dest = _check_destination(path)
    source = _dicom_source(like)
    frames = _source_frames(like, source, source_series_uid)
    hd = _highdicom()
    seg = _build(hd, label_map, frames, names, algorithm.strip(), _slice_step(like, frames))
    return atomic_write(dest, lambda tmp: _write(seg, tmp), suffix=".tmp.dcm")


def is_dicom_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is something :func:`medsam2kit.io.load_volume` reads as DICOM: a folder
    (a DICOM series), a file with a ``.dcm``/``.dicom``/``.ima`` suffix, or a file with the DICOM
    preamble.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> is_dicom_path(get_testdata_file("CT_small.dcm")), is_dicom_path("case.nii.gz")
        (True, False)
    """
    from medsam2kit.io import _DICOM_SUFFIXES, _has_dicom_preamble

    p = Path(path)
    if p.is_dir():
        return True
    name = p.name.lower()
    if name.endswith(_DICOM_SUFFIXES):
        return True
    return not name.endswith(_NOT_DICOM) and p.is_file() and _has_dicom_preamble(p)


def resolve_output_format(requested: str | None, out: str | os.PathLike[str]) -> OutputFormat:
    """The label-map format of a command: ``requested`` (``--format``), else from ``out``
    (a ``.dcm`` name means ``"dicom-seg"``, anything else ``"nifti"``).

    Raises:
        InvalidInputError: an unknown format, or a format that contradicts the file name of
            ``out`` (``--format nifti`` with ``x.dcm``, ``--format dicom-seg`` with ``x.nii.gz``).

    Example:
        >>> resolve_output_format(None, "seg.dcm"), resolve_output_format(None, "masks/")
        ('dicom-seg', 'nifti')
        >>> resolve_output_format("dicom-seg", "segs/")
        'dicom-seg'
    """
    name = Path(out).name.lower()
    implied: OutputFormat | None = (
        "dicom-seg" if name.endswith(".dcm") else "nifti" if name.endswith((".nii", ".nii.gz")) else None
    )
    if requested is None:
        return implied or "nifti"
    if requested not in OUTPUT_FORMATS:
        raise InvalidInputError(f"--format: expected one of {list(OUTPUT_FORMATS)}, got {requested!r}")
    if implied is not None and implied != requested:
        raise InvalidInputError(
            f"--format: {requested} contradicts --out {out} (a {implied} file name); "
            f"use --out {'NAME.dcm' if requested == 'dicom-seg' else 'NAME.nii.gz'} or drop --format"
        )
    return "dicom-seg" if requested == "dicom-seg" else "nifti"


def output_suffix(fmt: OutputFormat) -> str:
    """The file-name ending of each case's output in a cohort folder, per format.

    Example:
        >>> output_suffix("nifti"), output_suffix("dicom-seg")
        ('_labels.nii.gz', '_seg.dcm')
    """
    return "_seg.dcm" if fmt == "dicom-seg" else "_labels.nii.gz"


def check_dicom_inputs(inputs: Iterable[str | os.PathLike[str]], fmt: OutputFormat, *, name: str) -> None:
    """Refuse ``--format dicom-seg`` before any work when an input is not DICOM.

    Args:
        inputs: the input images (files or series folders) of a command.
        fmt: the resolved output format; nothing is checked for ``"nifti"``.
        name: the option the inputs came from, for the message (``"--query"``, ``"--input"``).

    Raises:
        InvalidInputError: naming the first input that is not DICOM.

    Example:
        >>> check_dicom_inputs(["case.nii.gz"], "nifti", name="--input")
        >>> check_dicom_inputs(["case.nii.gz"], "dicom-seg", name="--input")
        Traceback (most recent call last):
        ...
        medsam2kit.errors.InvalidInputError: --format dicom-seg: ...
    """
    if fmt != "dicom-seg":
        return
    for p in inputs:
        if not is_dicom_path(p):
            raise InvalidInputError(
                f"--format dicom-seg: {name} {p} is not DICOM; a DICOM SEG references DICOM images (a series "
                "folder or a .dcm file); for other inputs write NIfTI (--format nifti, --out NAME.nii.gz)"
            )


def write_labels(
    labels: np.ndarray | Volume,
    like: Volume,
    path: str | os.PathLike[str],
    *,
    fmt: OutputFormat,
    algorithm: str = "medsam2kit",
    segment_names: Sequence[str] | Mapping[int, str] | None = None,
) -> Path:
    """Write a label map in ``fmt``: :func:`medsam2kit.io.save_mask` (NIfTI) or :func:`save_dicom_seg`.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from medsam2kit.volume import Volume
        >>> image = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
        >>> write_labels(np.ones((2, 3, 4), np.uint8), image,
        ...              pathlib.Path(tempfile.mkdtemp()) / "m.nii.gz", fmt="nifti").name
        'm.nii.gz'
    """
    if fmt == "dicom-seg":
        return save_dicom_seg(labels, like, path, segment_names=segment_names, algorithm=algorithm)
    if fmt != "nifti":
        raise InvalidInputError(f"fmt: expected one of {list(OUTPUT_FORMATS)}, got {fmt!r}")
    from medsam2kit.io import save_mask

    return save_mask(labels, like, path)


def algorithm_name(options: Any, default: str | None = None) -> str:
    """The algorithm name a command records in a DICOM SEG, from its model options (``--model``,
    ``--config``, ``--checkpoint``, ``--random-init``): the zoo name (``default`` when none is
    named), else the checkpoint's file stem, and ``"(random init)"`` for random weights.

    Args:
        options: the parsed command line (any object with those attributes; missing ones are unset).
        default: the zoo name of the bundled model the command uses when none is named
            (``None``: ``"reference"``; on a volume the commands use ``"reference-volumes"``).

    Example:
        >>> from argparse import Namespace
        >>> algorithm_name(Namespace(model="sam2.1_hiera_tiny", config=None, checkpoint=None, random_init=False))
        'sam2.1_hiera_tiny'
        >>> algorithm_name(Namespace(model=None, config=None, checkpoint=None, random_init=False))
        'reference'
        >>> algorithm_name(Namespace(model=None, config=None, checkpoint=None, random_init=False), "reference-volumes")
        'reference-volumes'
        >>> algorithm_name(Namespace(model=None, config=None, checkpoint=None, random_init=True))
        'sam2.1_hiera_micro (random init)'
    """
    model = getattr(options, "model", None)
    config = getattr(options, "config", None)
    checkpoint = getattr(options, "checkpoint", None)
    if getattr(options, "random_init", False):
        from medsam2kit.reference import REFERENCE_CONFIG

        return f"{_short(config) if config is not None else REFERENCE_CONFIG} (random init)"
    if model is not None:
        return _short(model)
    if checkpoint is not None:
        return _short(checkpoint) + (f" ({_short(config)})" if config is not None else "")
    from medsam2kit.models import REFERENCE

    return default or REFERENCE


def _short(value: Any) -> str:
    """A zoo or config name as is; a file path as its stem."""
    p = Path(str(value))
    looks_like_file = p.suffix.lower() in (".pt", ".pth", ".ckpt", ".safetensors", ".yaml", ".yml") or p.is_file()
    return p.stem if looks_like_file else str(value)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def _label_map(labels: np.ndarray | Volume, like: Volume) -> np.ndarray:
    arr = array_on_grid(labels, like, name="labels")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("labels: expected finite values, got NaN or inf")
        if not np.array_equal(arr, np.round(arr)):
            raise InvalidInputError("labels: expected integer labels, got fractional values (threshold first)")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InvalidTypeError(f"labels: expected a bool or integer array, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0:
            raise InvalidInputError(f"labels: expected non-negative labels, got minimum {lo}")
        if hi > MAX_SEGMENTS:
            raise InvalidInputError(
                f"labels: a DICOM SEG holds at most {MAX_SEGMENTS} labels (one segment each), got maximum "
                f"{hi}; relabel to 1..{MAX_SEGMENTS} or write NIfTI with save_mask"
            )
    return arr.astype(np.uint8)


def _segment_names(names: Sequence[str] | Mapping[int, str] | None, top: int) -> list[str]:
    """One name per segment ``1..n``, ``n = max(top, 1, len(names))``."""
    if names is None:
        return [f"label {i}" for i in range(1, max(top, 1) + 1)]
    if isinstance(names, Mapping):
        bad = [k for k in names if not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_SEGMENTS]
        if bad:
            raise InvalidInputError(f"segment_names: expected label keys in 1..{MAX_SEGMENTS}, got {bad}")
        n = max([top, 1, *(int(k) for k in names)])
        out = [str(names.get(i, f"label {i}")) for i in range(1, n + 1)]
    elif isinstance(names, Sequence) and not isinstance(names, (str, bytes)):
        out = [str(x) for x in names]
        if len(out) < top:
            raise InvalidInputError(
                f"segment_names: expected at least {top} names (labels 1..{top} are present), got {len(out)}"
            )
        if len(out) > MAX_SEGMENTS:
            raise InvalidInputError(f"segment_names: at most {MAX_SEGMENTS} names, got {len(out)}")
        if not out:
            out = ["label 1"]
    else:
        raise InvalidTypeError(
            f"segment_names: expected a sequence of names or a {{label: name}} mapping, got {type(names).__name__}"
        )
    empty = [i + 1 for i, s in enumerate(out) if not s.strip()]
    if empty:
        raise InvalidInputError(f"segment_names: empty name for label(s) {empty}")
    return out


def _check_destination(path: str | os.PathLike[str]) -> Path:
    dest = Path(path)
    if dest.name.lower().endswith(_NOT_DICOM):
        raise InvalidInputError(
            f"path: {dest} names a non-DICOM file; a DICOM SEG is written to a .dcm file "
            "(use medsam2kit.io.save_mask for NIfTI)"
        )
    if not dest.parent.is_dir():
        raise MissingFileError(f"path: the folder {dest.parent} does not exist (writing {dest.name})")
    if dest.is_dir():
        raise InvalidInputError(f"path: {dest} is a folder, expected a file name")
    return dest


def _dicom_source(like: Volume) -> Path:
    if like.source is None:
        raise InvalidInputError(
            "like: an in-memory Volume (no source file); a DICOM SEG must reference the DICOM images it "
            "segments: read them with medsam2kit.io.load_volume (or use save_mask for NIfTI)"
        )
    src = Path(like.source)
    if not src.exists():
        if like.source.endswith("]") and "[" in like.source:  # an npz member, "file.npz[key]"
            raise InvalidInputError(f"like: {like.source} is not DICOM (npz); use save_mask for NIfTI output")
        raise MissingFileError(f"like: the source {src} no longer exists; cannot reference its DICOM instances")
    if not is_dicom_path(src):
        raise InvalidInputError(
            f"like: {src} is not DICOM; a DICOM SEG must reference DICOM images "
            "(use medsam2kit.io.save_mask for NIfTI)"
        )
    if like.modality == "SEG":
        raise InvalidInputError(f"like: {src} is itself a DICOM SEG; pass the image it segments")
    if like.kind == "cine":
        raise InvalidInputError(
            f"like: {src} is a cine (frames over time, no plane positions); DICOM SEG output needs a "
            "positioned CT/MR volume (use save_mask for NIfTI)"
        )
    return src


# --------------------------------------------------------------------------------------------
# the source instances
# --------------------------------------------------------------------------------------------


def _read(p: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(str(p), stop_before_pixels=True)
    except Exception as err:  # InvalidDicomError, EOFError, OSError ... for damaged files
        raise FileFormatError(f"{p}: cannot read as DICOM ({type(err).__name__}: {err})") from err


def _datasets(src: Path) -> list[tuple[Path, Any]]:
    if src.is_file():
        return [(src, _read(src))]
    from medsam2kit.io import _DICOM_SUFFIXES, _has_dicom_preamble

    out = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name.upper() == "DICOMDIR":
            continue
        if not f.name.lower().endswith(_DICOM_SUFFIXES) and not _has_dicom_preamble(f):
            continue
        ds = _read(f)
        if "Rows" in ds and str(ds.get("SOPClassUID", "")) != _SEG_SOP_CLASS:
            out.append((f, ds))
    return out


def _source_frames(like: Volume, src: Path, series_uid: str | None) -> list[_Frame]:
    """The source planes of ``like``, one per slice, each checked to lie on its grid."""
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in _datasets(src):
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise InvalidInputError(f"source_series_uid: {series_uid!r} is not in {src}; it holds {sorted(series)}")
        series = {series_uid: series[series_uid]}
    matches: dict[str, list[_Frame]] = {}
    problems: list[str] = []
    for uid, items in series.items():
        try:
            matches[uid] = _on_grid(like, items)
        except GeometryError as err:
            problems.append(str(err))
    if not matches:
        detail = "; ".join(problems) if problems else "no DICOM image files"
        raise GeometryError(f"like: the DICOM files at {src} do not lie on the grid of the volume ({detail})")
    if len(matches) > 1:
        raise InvalidInputError(
            f"like: {src} holds {len(matches)} series on the volume's grid ({sorted(matches)}); "
            "pass source_series_uid= the one the volume was read from"
        )
    return next(iter(matches.values()))


def _on_grid(like: Volume, items: list[tuple[Path, Any]]) -> list[_Frame]:
    from medsam2kit.io import _floats, _functional

    inverse = np.linalg.inv(like.affine)
    depth, rows, cols = like.shape
    frames: list[_Frame] = []
    for f, ds in items:
        if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (rows, cols):
            raise GeometryError(f"{f.name} has {ds.get('Rows')}x{ds.get('Columns')} pixels, the volume {rows}x{cols}")
        n = int(ds.get("NumberOfFrames", 1) or 1)
        for i in range(n):
            where = f"{f.name}" + (f" frame {i + 1}" if n > 1 else "")
            plane = _functional(ds, i, "PlanePositionSequence")
            orient = _functional(ds, i, "PlaneOrientationSequence")
            measures = _functional(ds, i, "PixelMeasuresSequence")
            ipp = _floats(plane if plane is not None else ds, "ImagePositionPatient", 3, where)
            iop = _floats(orient if orient is not None else ds, "ImageOrientationPatient", 6, where)
            spacing = _floats(measures, "PixelSpacing", 2, where) if measures is not None else None
            if spacing is None:
                spacing = _floats(ds, "PixelSpacing", 2, where)
            if ipp is None or iop is None or spacing is None:
                raise GeometryError(
                    f"{where} has no plane position, orientation or pixel spacing; a DICOM SEG can only "
                    "reference positioned images"
                )
            col_axis = _LPS_TO_RAS @ (iop[3:] * spacing[0])
            row_axis = _LPS_TO_RAS @ (iop[:3] * spacing[1])
            if not (np.allclose(col_axis, like.affine[:3, 1], atol=_GRID_ATOL_MM)
                    and np.allclose(row_axis, like.affine[:3, 2], atol=_GRID_ATOL_MM)):
                raise GeometryError(f"{where}: orientation/pixel spacing differ from the volume's")
            index = inverse @ np.append(_LPS_TO_RAS @ ipp, 1.0)
            k = int(np.round(index[0]))
            if not (np.allclose(index[1:3], 0.0, atol=1e-2) and abs(index[0] - k) < 1e-2 and 0 <= k < depth):
                raise GeometryError(
                    f"{where}: position {np.round(ipp, 3).tolist()} is not a slice of the volume "
                    f"(voxel index {np.round(index[:3], 3).tolist()})"
                )
            frames.append(_Frame(ds, i, k, f))
    seen = sorted(fr.slice_index for fr in frames)
    if seen != list(range(depth)):
        raise GeometryError(f"the {len(frames)} source planes cover slices {seen[:10]}..., expected 0..{depth - 1}")
    if len({id(fr.dataset) for fr in frames}) > 1 and any(fr.frame for fr in frames):
        raise GeometryError("a series mixing several multi-frame files cannot be referenced as one volume")
    return frames


def _slice_step(like: Volume, frames: list[_Frame]) -> float:
    """The distance between slices along the slice normal, in mm."""
    from medsam2kit.io import _floats, _functional

    fr = frames[0]
    orient = _functional(fr.dataset, fr.frame, "PlaneOrientationSequence")
    iop = _floats(orient if orient is not None else fr.dataset, "ImageOrientationPatient", 6, str(fr.path))
    if iop is None:  # pragma: no cover - checked by _on_grid
        raise GeometryError(f"{fr.path}: no ImageOrientationPatient")
    normal = _LPS_TO_RAS @ np.cross(iop[:3], iop[3:])
    return float(abs(like.affine[:3, 0] @ normal))


# --------------------------------------------------------------------------------------------
# highdicom
# --------------------------------------------------------------------------------------------


def _highdicom() -> Any:
    try:
        import highdicom
    except ImportError as err:
        raise MissingDependencyError(
            "writing DICOM SEG needs highdicom; install it with: pip install medsam2kit[dicom-seg]"
        ) from err
    return highdicom


def _build(
    hd: Any, labels: np.ndarray, frames: list[_Frame], names: list[str], algorithm: str, step: float
) -> Any:
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from medsam2kit import __version__

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for i, name in enumerate(names, start=1)
    ]
    multi = len({id(fr.dataset) for fr in frames}) == 1 and int(frames[0].dataset.get("NumberOfFrames", 1) or 1) > 1
    if multi:
        ordered = sorted(frames, key=lambda fr: fr.frame)
        sources = [ordered[0].dataset]
    else:
        ordered = sorted(frames, key=lambda fr: fr.slice_index)
        sources = [fr.dataset for fr in ordered]
    pixels = labels[[fr.slice_index for fr in ordered]]
    empty = not pixels.any()
    if empty:  # a label map cannot say which segment an empty frame belongs to: one plane per segment
        pixels = np.zeros((*pixels.shape, len(names)), np.uint8)
    number = sources[0].get("SeriesNumber")
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=(int(number) + 1000) % 2**31 if number not in (None, "") else 1000,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medsam2kit",
            manufacturer_model_name=algorithm,
            software_versions=__version__,
            device_serial_number="none",
            content_description=f"{algorithm} segmentation (medsam2kit)"[:64],
            content_label="MEDSAM2KIT",
            omit_empty_frames=not empty,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:  # highdicom's checks of the source
        where = frames[0].path if multi or len(frames) == 1 else frames[0].path.parent
        raise FileFormatError(
            f"like: highdicom cannot build a DICOM SEG from the source {where} ({type(err).__name__}: {err})"
        ) from err
    seg.SeriesDescription = f"{algorithm} (medsam2kit)"[:64]
    _set_slice_step(seg, step)
    return seg


def _set_slice_step(seg: Any, step: float) -> None:
    """Record the source's true slice step in the SEG's pixel measures.

    Readers place the stored frames along the slice normal by SpacingBetweenSlices; without it they
    guess from the gaps between stored (non-empty) frames, which is wrong when slices in between
    are empty. The source's own tag may be missing or stale, so the step measured on the volume's
    grid is written.
    """
    groups = [seg.SharedFunctionalGroupsSequence[0]] if "SharedFunctionalGroupsSequence" in seg else []
    if not groups or "PixelMeasuresSequence" not in groups[0]:
        groups = list(seg.get("PerFrameFunctionalGroupsSequence", []))
    for item in groups:
        if "PixelMeasuresSequence" in item:
            item.PixelMeasuresSequence[0].SpacingBetweenSlices = f"{step:.10g}"


def _write(seg: Any, tmp: Path) -> None:
    """Write ``seg`` to ``tmp`` (created exclusively) and flush it to disk."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as fh:
        seg.save_as(fh, enforce_file_format=True)
        fh.flush()
        os.fsync(fh.fileno())


__all__ = [
    "MAX_SEGMENTS",
    "OUTPUT_FORMATS",
    "OutputFormat",
    "algorithm_name",
    "check_dicom_inputs",
    "is_dicom_path",
    "output_suffix",
    "resolve_output_format",
    "save_dicom_seg",
    "write_labels",
]
