"""Read medical images into :class:`~medsam2kit.volume.Volume` values and write masks back.

Readers (:func:`load_volume`, :func:`load_label`):

* NIfTI (``.nii``, ``.nii.gz``) through nibabel: the affine is ``img.affine``; integer data
  stored without scaling stays integer (label maps), anything else becomes float32.
* A DICOM series folder: files grouped by SeriesInstanceUID, slices ordered along the slice
  normal, rescale applied per slice (float32), the affine built from the DICOM geometry and
  converted from LPS to RAS. Array layout ``(slice, row, column)``.
* A single DICOM file: a one-slice volume, an enhanced multi-frame CT/MR (plane positions per
  frame) as a volume, or an ultrasound cine (no plane positions) as ``kind="cine"``.
* NRRD (``.nrrd``, ``.nhdr``) through the optional pynrrd (``pip install medsam2kit[nrrd]``).
* ``.npz`` archives holding one array (plus optional ``affine`` or ``spacing``).

Writer (:func:`save_mask`): a NIfTI mask on the exact grid of the image it belongs to, written
atomically (never a partial file). :func:`save_dicom_seg` (from :mod:`medsam2kit.dicom_seg`)
writes a label map computed on DICOM images as a DICOM SEG referencing them.

World coordinates are RAS+ millimetres (the NIfTI convention). Arrays keep the file's own voxel
order; nothing is reoriented, so a mask saved with :func:`save_mask` lines up voxel for voxel with
the file it was computed from.

Example:
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from medsam2kit.io import load_volume, save_mask
    >>> from medsam2kit.volume import Volume
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> image = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 1.0, 0.5, 1.0]))
    >>> out = save_mask(np.ones((4, 5, 6), bool), like=image, path=folder / "mask.nii.gz")
    >>> load_volume(out).array.dtype
    dtype('uint8')
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medsam2kit._files import atomic_write
from medsam2kit.errors import (
    FileFormatError,
    FileTooLargeError,
    GeometryError,
    GeometryWarning,
    InvalidInputError,
    InvalidTypeError,
    MedSAM2KitError,
    MissingDependencyError,
    MissingFileError,
    ShapeMismatchError,
)
from medsam2kit.volume import Volume, VolumeKind, array_on_grid, check_affine, check_same_grid

RgbToGray = Literal["luma", "mean", "error"]
"""How colour (RGB/YBR) frames become gray on loading: ITU-R BT.601 luma, channel mean, or an
error (the ``color`` argument of :func:`load_volume`; not to be confused with
:data:`medsam2kit.sequencer.FrameColor`, which says whether frames are kept in colour)."""

_COLOR_MODES = ("luma", "mean", "error")
_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_NPZ_IMAGE_KEYS = ("image", "array", "frames", "volume")
_NPZ_LABEL_KEYS = ("label", "labels", "mask", "masks", "seg", "segmentation")
_LABEL_ATOL_MM = 1e-3
_SUPPORTED = ".nii, .nii.gz, .nrrd, .nhdr, .npz, .dcm (or any DICOM file) or a DICOM series folder"
DEFAULT_MAX_IMAGE_BYTES = 2**31
"""Default of :func:`max_image_bytes`: files whose header claims more voxel bytes are refused."""
_DEFLATE_MAX_RATIO = 1032  # deflate never expands data more than ~1032:1 (RFC 1951 block limits)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def load_volume(
    path: str | os.PathLike[str],
    *,
    color: RgbToGray = "luma",
    key: str | None = None,
    series_uid: str | None = None,
    allow_nonfinite: bool = False,
) -> Volume:
    """Read a 3D image (or an ultrasound cine) with its voxel-to-world geometry.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr`` or ``.npz`` file, a DICOM file
            (single slice, enhanced multi-frame CT/MR, or ultrasound cine) or a folder holding
            a DICOM series.
        color: how RGB/YBR DICOM frames (or an ``.npz`` array of shape ``(T, H, W, 3)``) become
            gray: ``"luma"`` (ITU-R BT.601, ``0.299 R + 0.587 G + 0.114 B``), ``"mean"`` (mean
            of the channels) or ``"error"`` (raise :class:`InvalidInputError`).
        key: for ``.npz`` only, the array to read; default the first of ``image``, ``array``,
            ``frames``, ``volume``.
        series_uid: for a DICOM folder holding several series, the SeriesInstanceUID to read.
        allow_nonfinite: keep NaN/inf voxels instead of raising :class:`InvalidInputError`.

    Returns:
        A :class:`Volume`: ``array`` ``(D, H, W)`` in the file's voxel order (DICOM:
        ``(slice, row, column)``; a cine: ``(frame, row, column)``), integer for unscaled
        integer NIfTI/NRRD/npz data, float32 otherwise (always float32 for DICOM); ``affine``
        4x4 voxel -> RAS+ mm; for a cine ``kind="cine"`` and ``frame_times`` in ms when the file
        has them.

    Raises:
        MissingFileError: ``path`` does not exist.
        FileFormatError: the file cannot be read (unknown format, truncated, corrupt, undecodable
            pixel data).
        GeometryError: inconsistent DICOM geometry (duplicated or missing slices, uneven spacing,
            mixed orientations) or an invalid affine.
        InvalidInputError: not 3D, several DICOM series without ``series_uid``, colour frames with
            ``color="error"``, non-finite voxels, unknown ``key``.
        MissingDependencyError: NRRD without pynrrd installed.
        FileTooLargeError: a NIfTI header claims more voxel data than the file can hold (an
            uncompressed file shorter than claimed; a gzip file more than 1032 times smaller than
            claimed) or more than :func:`max_image_bytes` (default 2 GiB, ``$MEDSAM2KIT_MAX_BYTES``);
            checked before anything is allocated.

    Warns:
        GeometryWarning: a NIfTI with qform_code and sform_code 0 (no stored orientation), naming
            the file and the voxel sizes used (zero or invalid voxel sizes become 1 mm, as nibabel
            reads them).

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from medsam2kit.io import load_volume
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "clip.npz"
        >>> np.savez(p, frames=np.zeros((3, 8, 9), np.uint8), spacing=np.array([1.0, 0.2, 0.2]))
        >>> vol = load_volume(p)
        >>> vol.kind, vol.shape, vol.spacing
        ('cine', (3, 8, 9), (1.0, 0.2, 0.2))
    """
    return _load(
        path,
        color=color,
        key=key,
        series_uid=series_uid,
        allow_nonfinite=allow_nonfinite,
        npz_keys=_NPZ_IMAGE_KEYS,
    )


def load_label(path: str | os.PathLike[str], *, like: Volume, key: str | None = None) -> Volume:
    """Read a label map that must lie on the grid of ``like``.

    Args:
        path: any file :func:`load_volume` reads. For ``.npz`` the default ``key`` is the first
            of ``label``, ``labels``, ``mask``, ``masks``, ``seg``, ``segmentation``, then the
            image keys of :func:`load_volume`.
        like: the image the labels belong to.
        key: for ``.npz`` only, the array to read.

    Returns:
        A :class:`Volume` with a non-negative integer ``array`` of ``like.shape`` (stored integer
        dtype kept; bool or integral floats become the smallest unsigned type that holds them)
        and ``like``'s affine, kind and frame times.

    Raises:
        InvalidTypeError: ``like`` is not a :class:`Volume`.
        ShapeMismatchError: the shapes differ (both files and shapes are named).
        GeometryError: the affines differ by more than 1e-3 mm (both files are named).
        InvalidInputError: fractional, non-finite or negative label values.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from medsam2kit.io import load_label, load_volume
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "case.npz"
        >>> masks = np.eye(4, dtype=np.uint8)[None].repeat(2, 0)
        >>> np.savez(p, frames=np.zeros((2, 4, 4), np.uint8), masks=masks)
        >>> clip = load_volume(p)
        >>> lab = load_label(p, like=clip)
        >>> lab.kind, int(lab.array.sum())
        ('cine', 8)
    """
    if not isinstance(like, Volume):
        raise InvalidTypeError(f"like: expected a medsam2kit Volume, got {type(like).__name__}")
    src = str(path)
    vol = _load(
        path,
        color="error",
        key=key,
        series_uid=None,
        allow_nonfinite=True,
        npz_keys=_NPZ_LABEL_KEYS + _NPZ_IMAGE_KEYS,
    )
    like_name = like.source or "<the in-memory image>"
    if vol.modality == "SEG" and not vol.same_grid(like, atol=_LABEL_ATOL_MM):
        # a DICOM SEG stores only the planes it marks: place them on the image's grid
        placed = _onto_grid(vol, like)
        if placed is None:
            raise GeometryError(
                f"label {src} (DICOM SEG, {vol.shape}) does not lie on the grid of image {like_name} "
                f"({like.shape}): SEG affine {np.round(vol.affine, 4).tolist()}, image "
                f"{np.round(like.affine, 4).tolist()}"
            )
        vol = Volume(placed.array, like.affine, source=src, modality="SEG")
    check_same_grid(Volume(vol.array, vol.affine, source=src), Volume(like.array, like.affine, source=like_name),
                    atol=_LABEL_ATOL_MM)
    labels = _as_label_array(vol.array, name=f"label {src}")
    return Volume(
        labels,
        like.affine.copy(),
        kind=like.kind,
        frame_times=like.frame_times,
        source=src,
        modality=vol.modality,
    )


def save_mask(mask: np.ndarray | Volume, like: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a mask or label map as NIfTI on the exact grid of ``like``.

    The file's sform and qform both carry ``like.affine`` (the sform exactly, up to NIfTI's
    float32 storage, also when oblique or sheared), so shape, affine and orientation
    (``nibabel.aff2axcodes``) of the written file equal those of the input. The data is written
    to a temporary file in the destination folder and moved into place with ``os.replace``; on
    any failure the temporary file is removed and no file appears at ``path``.

    Args:
        mask: ``like.shape`` array (or :class:`Volume` on the same grid), bool or non-negative
            integers (integral floats accepted). Stored as uint8, or int16/int32 when a label
            exceeds 255/32767.
        like: the image the mask belongs to.
        path: destination ending in ``.nii`` or ``.nii.gz``; its folder must exist.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        InvalidTypeError: ``like`` is not a Volume or ``mask`` is not numeric.
        ShapeMismatchError: ``mask.shape != like.shape`` (both shapes named).
        GeometryError: ``mask`` is a Volume on another grid.
        InvalidInputError: fractional, non-finite or negative values, labels above int32,
            a file name without ``.nii``/``.nii.gz``.
        MissingFileError: the destination folder does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np, nibabel as nib
        >>> from medsam2kit.io import save_mask
        >>> from medsam2kit.volume import Volume
        >>> image = Volume(np.zeros((3, 4, 5), np.float32), np.diag([-0.8, -0.8, 2.5, 1.0]))
        >>> p = save_mask(np.zeros((3, 4, 5), bool), image, pathlib.Path(tempfile.mkdtemp()) / "m.nii")
        >>> nib.aff2axcodes(nib.load(p).affine)
        ('L', 'P', 'S')
    """
    if not isinstance(like, Volume):
        raise InvalidTypeError(f"like: expected a medsam2kit Volume, got {type(like).__name__}")
    arr = array_on_grid(mask, like, name="mask")
    dest = _check_destination(path)
    data = _mask_for_nifti(arr)
    return _save_atomic(_nifti_on_grid(data, like.affine), dest)


def save_volume(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write an image volume as NIfTI (float32, or its integer dtype) with its exact geometry.

    Written atomically like :func:`save_mask`: a temporary file in the destination folder, then
    ``os.replace``; nothing appears at ``path`` on failure.

    Args:
        volume: the image; float data is stored as float32, integer and bool data as is (bool as uint8).
        path: destination ending in ``.nii`` or ``.nii.gz``; its folder must exist.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Example:
        >>> import tempfile, pathlib
        >>> import numpy as np
        >>> from medsam2kit.io import load_volume, save_volume
        >>> from medsam2kit.volume import Volume
        >>> v = Volume(np.ones((2, 3, 4), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
        >>> p = save_volume(v, pathlib.Path(tempfile.mkdtemp()) / "v.nii.gz")
        >>> load_volume(p).spacing
        (1.0, 2.0, 3.0)
    """
    if not isinstance(volume, Volume):
        raise InvalidTypeError(f"volume: expected a medsam2kit Volume, got {type(volume).__name__}")
    dest = _check_destination(path)
    arr = volume.array
    if arr.dtype == np.bool_:
        data = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        data = arr.astype(np.float32)
    else:
        data = arr
    return _save_atomic(_nifti_on_grid(data, volume.affine), dest)


def _save_atomic(img: nib.Nifti1Image, dest: Path) -> Path:
    """Write to a temporary file beside ``dest`` and move it into place; never a partial file."""
    return atomic_write(dest, lambda tmp: _write_nifti(img, tmp), suffix=f".tmp{_nifti_suffix(dest)}")


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def _load(
    path: str | os.PathLike[str],
    *,
    color: RgbToGray,
    key: str | None,
    series_uid: str | None,
    allow_nonfinite: bool,
    npz_keys: Sequence[str],
) -> Volume:
    if color not in _COLOR_MODES:
        raise InvalidInputError(f"color: expected one of {_COLOR_MODES}, got {color!r}")
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{p}: no such file or folder")
    name = p.name.lower()
    is_npz = p.is_file() and name.endswith(".npz")
    if key is not None and not is_npz:
        raise InvalidInputError(f"key: only used for .npz files, got key={key!r} for {p}")
    if series_uid is not None and not p.is_dir():
        raise InvalidInputError(f"series_uid: only used for a DICOM series folder, got a file {p}")
    if p.is_dir():
        vol = _load_dicom_folder(p, color=color, series_uid=series_uid)
    elif name.endswith((".nii", ".nii.gz")):
        vol = _load_nifti(p)
    elif name.endswith((".nrrd", ".nhdr")):
        vol = _load_nrrd(p)
    elif is_npz:
        vol = _load_npz(p, key=key, candidates=npz_keys, color=color)
    elif name.endswith(_DICOM_SUFFIXES) or _has_dicom_preamble(p):
        vol = _load_dicom_file(p, color=color)
    else:
        raise FileFormatError(f"{p}: unsupported file type; expected {_SUPPORTED}")
    if not allow_nonfinite:
        _check_finite(vol.array, str(p))
    return vol


def _volume(array: np.ndarray, affine: np.ndarray, source: str, **kwargs: Any) -> Volume:
    """Build a Volume, naming the file in geometry/shape errors."""
    if array.ndim != 3:
        raise InvalidInputError(f"{source}: expected 3D data, got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    check_affine(affine, name=f"{source}: affine")
    return Volume(array, affine, source=source, **kwargs)


def _check_finite(array: np.ndarray, source: str) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"{source}: {int(bad.sum())} non-finite voxel(s) (NaN or inf), the first at index {first};"
            " pass allow_nonfinite=True to keep them"
        )


def _image_dtype(array: np.ndarray) -> np.ndarray:
    """Integer/bool data stays as stored (labels); anything else becomes float32."""
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidTypeError(f"expected real-valued voxels, got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def _squeeze_to_3d(array: np.ndarray, source: str) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InvalidInputError(f"{source}: expected 3D data, got shape {array.shape}")
    return array


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def _load_nifti(p: Path) -> Volume:
    try:
        img = nib.load(str(p), mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise FileFormatError(f"{p}: expected a NIfTI-1/2 image, got {type(img).__name__}")
        _check_nifti_size(p, img)
        _warn_missing_geometry(p, img)
        data = np.asanyarray(img.dataobj)
        affine = np.array(img.affine, dtype=np.float64)
    except MedSAM2KitError:
        raise
    except Exception as err:  # nibabel, gzip and zlib raise many types for damaged files
        raise FileFormatError(f"{p}: cannot read as NIfTI ({type(err).__name__}: {err})") from err
    data = _squeeze_to_3d(np.asarray(data), str(p))
    try:
        data = _image_dtype(data)
    except InvalidTypeError as err:
        raise InvalidTypeError(f"{p}: {err}") from None
    return _volume(data, affine, str(p))


def max_image_bytes() -> int:
    """The most bytes of voxel data a file may claim before it is read: ``$MEDSAM2KIT_MAX_BYTES``
    when set (an integer), else :data:`DEFAULT_MAX_IMAGE_BYTES` (2 GiB).

    Checked against the header before anything is allocated (see :func:`load_volume`), so a small
    file whose header claims a huge image fails at once with :class:`FileTooLargeError`.

    Example:
        >>> max_image_bytes() >= 1
        True
    """
    raw = os.environ.get("MEDSAM2KIT_MAX_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        value = int(float(raw))
    except ValueError:
        raise InvalidInputError(f"MEDSAM2KIT_MAX_BYTES: expected a number of bytes, got {raw!r}") from None
    if value < 1:
        raise InvalidInputError(f"MEDSAM2KIT_MAX_BYTES: expected a positive number of bytes, got {raw!r}")
    return value


def _check_nifti_size(p: Path, img: Any) -> None:
    """What the header claims against what the file can hold and the limit, before reading data."""
    header = img.header
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = np.dtype(header.get_data_dtype())
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else 0
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    size = p.stat().st_size
    what = f"{p}: the header claims {shape} {dtype} voxels ({claimed} bytes)"
    if p.name.lower().endswith(".gz"):
        bound = size * _DEFLATE_MAX_RATIO
        if offset + claimed > bound:
            raise FileTooLargeError(
                f"{what}, but a {size}-byte gzip file holds at most {bound} bytes (truncated or damaged)"
            )
    elif offset + claimed > size:
        raise FileTooLargeError(
            f"{what} from byte {offset}, but the file holds only {max(size - offset, 0)} bytes there"
            " (truncated or damaged)"
        )
    limit = max_image_bytes()
    if claimed > limit:
        raise FileTooLargeError(
            f"{what}, more than the limit of {limit} bytes (set MEDSAM2KIT_MAX_BYTES to allow more)"
        )


def _warn_missing_geometry(p: Path, img: Any) -> None:
    """qform_code and sform_code 0: no stored orientation; say so (and which voxel sizes are used)."""
    header = img.header
    if int(header["qform_code"]) != 0 or int(header["sform_code"]) != 0:
        return
    from nibabel.openers import ImageOpener

    try:  # nibabel silently replaces zero voxel sizes by 1: read the stored ones
        with ImageOpener(str(p)) as fh:
            raw = type(header).from_fileobj(fh, check=False)
        stored = [float(z) for z in raw["pixdim"][1:4]]
    except Exception:  # the header was read once already; fall back to nibabel's view
        stored = [float(z) for z in header["pixdim"][1:4]]
    used = tuple(round(float(z), 6) for z in header.get_zooms()[:3])
    message = (f"{p}: qform_code and sform_code are 0 (no orientation or position stored); loaded with "
               f"voxel sizes {used} mm and nibabel's default orientation")
    if not all(np.isfinite(z) and z > 0 for z in stored):
        message += (f"; the stored voxel sizes {tuple(stored)} are not positive, so 1 mm was assumed: "
                    "distances in mm (spacing, HD95, NSD) are not physical")
    warnings.warn(message, GeometryWarning, stacklevel=4)


def _nifti_suffix(p: Path) -> str:
    return ".nii.gz" if p.name.lower().endswith(".nii.gz") else ".nii"


def _check_destination(path: str | os.PathLike[str]) -> Path:
    dest = Path(path)
    if not dest.name.lower().endswith((".nii", ".nii.gz")):
        raise InvalidInputError(f"path: expected a file name ending in .nii or .nii.gz, got {dest}")
    if not dest.parent.is_dir():
        raise MissingFileError(f"path: the folder {dest.parent} does not exist (writing {dest.name})")
    if os.path.isdir(dest):  # (Path.is_dir raises for a name too long on Python 3.11)
        raise InvalidInputError(f"path: {dest} is a folder, expected a file name")
    return dest


def _mask_for_nifti(arr: np.ndarray) -> np.ndarray:
    """Validate mask values and pick the smallest NIfTI dtype (uint8, int16, int32)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError("mask: expected finite values, got NaN or inf")
        if not np.array_equal(arr, np.round(arr)):
            raise InvalidInputError(
                "mask: expected integer labels, got fractional values (threshold probabilities first)"
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InvalidTypeError(f"mask: expected a bool or integer array, got dtype {arr.dtype}")
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise InvalidInputError(f"mask: expected non-negative labels, got minimum {lo}")
    for dtype in (np.uint8, np.int16, np.int32):
        if hi <= np.iinfo(dtype).max:
            return arr.astype(dtype)
    raise InvalidInputError(f"mask: labels must fit in int32, got maximum {hi}")


def _nifti_on_grid(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)  # nearest rigid + zooms; shears are stripped here ...
    img.set_sform(affine, code=1)  # ... but kept exactly in the sform, which readers prefer
    img.header.set_xyzt_units(xyz="mm")
    stored = img.header.get_best_affine()
    if not np.allclose(stored, affine, atol=_LABEL_ATOL_MM, rtol=0.0):
        raise GeometryError(
            f"like.affine cannot be stored in NIfTI (float32) within {_LABEL_ATOL_MM} mm: "
            f"{np.round(affine, 6).tolist()}"
        )
    return img


def _write_nifti(img: nib.Nifti1Image, tmp: Path) -> None:
    """Write ``img`` to ``tmp`` (created exclusively) and flush it to disk."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    nib.save(img, str(tmp))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------
# NRRD
# --------------------------------------------------------------------------------------------

_NRRD_SPACES = {
    "left-posterior-superior": "LPS",
    "lps": "LPS",
    "right-anterior-superior": "RAS",
    "ras": "RAS",
    "left-anterior-superior": "LAS",
    "las": "LAS",
}


def _load_nrrd(p: Path) -> Volume:
    try:
        import nrrd
    except ImportError as err:
        raise MissingDependencyError(
            f"{p}: reading NRRD needs pynrrd; install it with: pip install medsam2kit[nrrd]"
        ) from err
    try:
        data, header = nrrd.read(str(p), index_order="F")
    except Exception as err:  # pynrrd raises NRRDError, OSError, ValueError, zlib errors ...
        raise FileFormatError(f"{p}: cannot read as NRRD ({type(err).__name__}: {err})") from err
    data = np.asarray(data)
    dirs, origin = _nrrd_geometry(header, data.ndim, p)
    spatial = [i for i in range(data.ndim) if dirs[i] is not None]
    for axis in range(data.ndim):
        if axis not in spatial and data.shape[axis] != 1:
            raise InvalidInputError(
                f"{p}: expected 3D scalar data, got shape {data.shape} with a non-spatial axis {axis}"
            )
    data = data.reshape([data.shape[i] for i in spatial])
    if data.ndim != 3:
        raise InvalidInputError(f"{p}: expected 3D data, got {data.ndim} spatial axes (shape {data.shape})")
    affine = np.eye(4)
    for col, axis in enumerate(spatial):
        vec = dirs[axis]
        if vec is None:  # pragma: no cover - filtered above
            continue
        affine[:3, col] = vec
    affine[:3, 3] = origin
    space = str(header.get("space", "")).strip().lower()
    code = _NRRD_SPACES.get(space)
    if space and code is None and space not in ("scanner-xyz", "3d-right-handed", "3d-left-handed"):
        raise FileFormatError(f"{p}: unsupported NRRD space {header.get('space')!r}")
    if code is not None:
        flip = np.diag([-1.0 if code[0] == "L" else 1.0, -1.0 if code[1] == "P" else 1.0, 1.0, 1.0])
        affine = flip @ affine
    return _volume(_image_dtype(data), affine, str(p))


def _nrrd_geometry(header: dict[str, Any], ndim: int, p: Path) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Per-axis direction vectors (``None`` for non-spatial axes) and the origin, as written."""
    dirs: list[np.ndarray | None] = []
    if "space directions" in header and header["space directions"] is not None:
        raw = np.asarray(header["space directions"], dtype=np.float64)
        if raw.ndim != 2 or raw.shape[0] != ndim:
            raise FileFormatError(f"{p}: 'space directions' has shape {raw.shape}, expected ({ndim}, n)")
        for row in raw:
            dirs.append(None if not np.all(np.isfinite(row)) else np.pad(row, (0, 3 - len(row)))[:3])
    else:
        spacings = np.asarray(header.get("spacings", np.ones(ndim)), dtype=np.float64).ravel()
        if spacings.size != ndim:
            raise FileFormatError(f"{p}: 'spacings' has {spacings.size} values, expected {ndim}")
        kinds = list(header.get("kinds", ["domain"] * ndim))
        spatial_count = 0
        for axis in range(ndim):
            is_spatial = str(kinds[axis]).lower() in ("domain", "space") and spatial_count < 3
            if is_spatial:
                vec = np.zeros(3)
                vec[spatial_count] = spacings[axis] if np.isfinite(spacings[axis]) else 1.0
                dirs.append(vec)
                spatial_count += 1
            else:
                dirs.append(None)
    origin_raw = header.get("space origin")
    origin = np.zeros(3)
    if origin_raw is not None:
        o = np.asarray(origin_raw, dtype=np.float64).ravel()
        if not np.all(np.isfinite(o)):
            raise GeometryError(f"{p}: 'space origin' is not finite: {o.tolist()}")
        origin[: min(3, o.size)] = o[:3]
    return dirs, origin


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def _load_npz(p: Path, *, key: str | None, candidates: Sequence[str], color: RgbToGray) -> Volume:
    try:
        with np.load(p, allow_pickle=False) as archive:
            names = list(archive.files)
            chosen = key if key is not None else next((k for k in candidates if k in names), None)
            if chosen is None or chosen not in names:
                wanted = repr(key) if key is not None else f"one of {list(candidates)}"
                raise InvalidInputError(f"{p}: no array {wanted}; the archive holds {names}")
            array = np.asarray(archive[chosen])
            affine = np.asarray(archive["affine"], dtype=np.float64) if "affine" in names else None
            spacing = np.asarray(archive["spacing"], dtype=np.float64) if "spacing" in names else None
            times = np.asarray(archive["frame_times"], dtype=np.float64) if "frame_times" in names else None
    except MedSAM2KitError:
        raise
    except Exception as err:  # BadZipFile, ValueError (pickled objects), OSError, EOFError
        raise FileFormatError(f"{p}: cannot read as .npz ({type(err).__name__}: {err})") from err
    src = f"{p}[{chosen}]"
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        array = _to_gray(array[..., :3], color=color, source=src)
    if array.ndim != 3:
        raise InvalidInputError(f"{src}: expected 3D data, got shape {array.shape}")
    try:
        array = _image_dtype(array)
    except InvalidTypeError as err:
        raise InvalidTypeError(f"{src}: {err}") from None
    geometry = _npz_affine(affine, spacing, src)
    kind: VolumeKind = "cine" if chosen == "frames" else "volume"
    frame_times = None
    if kind == "cine" and times is not None:
        if times.shape != (array.shape[0],):
            raise ShapeMismatchError(
                f"{p}: 'frame_times' has shape {times.shape}, expected ({array.shape[0]},) (one per frame)"
            )
        frame_times = tuple(float(t) for t in times)
    return _volume(array, geometry, src, kind=kind, frame_times=frame_times)


def _npz_affine(affine: np.ndarray | None, spacing: np.ndarray | None, src: str) -> np.ndarray:
    if spacing is not None and spacing.shape != (3,):
        raise GeometryError(
            f"{src}: 'spacing' must hold 3 values (mm along axes 0, 1, 2), got shape {spacing.shape}"
        )
    if affine is not None:
        if affine.shape != (4, 4):
            raise GeometryError(f"{src}: 'affine' must be 4x4, got shape {affine.shape}")
        if spacing is not None:
            norms = np.linalg.norm(affine[:3, :3], axis=0)
            if not np.allclose(norms, spacing, atol=_LABEL_ATOL_MM, rtol=0.0):
                raise GeometryError(
                    f"{src}: 'spacing' {spacing.tolist()} disagrees with the affine's {norms.tolist()}"
                )
        return affine
    if spacing is not None:
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise GeometryError(f"{src}: 'spacing' must be positive and finite, got {spacing.tolist()}")
        return np.diag([*spacing.tolist(), 1.0])
    return np.eye(4)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _has_dicom_preamble(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _read_dicom(p: Path, *, header_only: bool, strict: bool = True) -> Any:
    """Read a DICOM file; ``None`` for a non-DICOM file when ``strict`` is false."""
    try:
        return pydicom.dcmread(str(p), stop_before_pixels=header_only)
    except InvalidDicomError as err:
        if not strict:
            return None
        raise FileFormatError(f"{p}: not a DICOM file ({err})") from err
    except Exception as err:  # truncated or corrupt headers raise EOFError, OSError, ValueError ...
        raise FileFormatError(f"{p}: cannot read as DICOM ({type(err).__name__}: {err})") from err


def _as_list(value: Any) -> list[Any]:
    """A DICOM value as a list (multi-valued elements are sequences, single values are not)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return [value]


def _floats(ds: Any, keyword: str, count: int, source: str) -> np.ndarray | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        out = np.array([float(v) for v in _as_list(value)])
    except (TypeError, ValueError) as err:
        raise GeometryError(f"{source}: {keyword} is not numeric: {value!r}") from err
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise GeometryError(f"{source}: {keyword} must hold {count} finite numbers, got {value!r}")
    return out


def _frame_pixels(ds: Any, *, color: RgbToGray, source: str) -> np.ndarray:
    """All frames as ``(F, rows, cols)`` float32, gray, before rescale."""
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as err:  # missing pixel data, truncated data, no decoder for the syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise FileFormatError(
            f"{source}: cannot decode the pixel data (transfer syntax {name}): {type(err).__name__}: {err}"
        ) from err
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if samples == 1 and photometric == "PALETTE COLOR":
        if color == "error":
            raise InvalidInputError(f"{source}: has PALETTE COLOR frames; pass color='luma' or 'mean'")
        from pydicom.pixels import apply_color_lut

        arr = np.asarray(apply_color_lut(arr, ds))
        samples = 3
    if samples > 1:
        # pydicom >= 3 returns RGB for RGB and YBR_* data (as_rgb=True is its default)
        arr = _to_gray(arr, color=color, source=source)
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise FileFormatError(f"{source}: unexpected pixel array shape {arr.shape}")
    return arr


def _to_gray(arr: np.ndarray, *, color: RgbToGray, source: str) -> np.ndarray:
    if color == "error":
        raise InvalidInputError(f"{source}: has colour (RGB/YBR) frames; pass color='luma' or 'mean'")
    if arr.shape[-1] != 3:
        raise FileFormatError(f"{source}: expected 3 colour samples per pixel, got shape {arr.shape}")
    rgb = arr.astype(np.float32, copy=False)
    if color == "luma":
        return np.asarray(rgb @ _BT601, dtype=np.float32)
    return np.asarray(rgb.mean(axis=-1), dtype=np.float32)


def _rescale(ds: Any) -> tuple[float, float]:
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _orientation(iop: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > 1e-2 or abs(nc - 1) > 1e-2 or abs(float(row @ col)) > 1e-2:
        raise GeometryError(
            f"{source}: ImageOrientationPatient is not two orthonormal vectors: {iop.tolist()}"
        )
    return row / nr, col / nc


def _slice_step_fallback(ds: Any, source: str) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _floats(ds, keyword, 1, source)
        if value is not None and value[0] > 0:
            return float(value[0])
    return 1.0


def _stack_positioned(
    slices: list[np.ndarray],
    positions: list[np.ndarray],
    labels: list[str],
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    pixel_spacing: np.ndarray,
    single_step: float,
    source: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Order slices along the normal, check the spacing, return ``(array, RAS affine)``."""
    normal = np.cross(row_cos, col_cos)
    pos = np.stack(positions)
    proj = pos @ normal
    order = np.argsort(proj, kind="stable")
    pos, proj = pos[order], proj[order]
    names = [labels[i] for i in order]
    n = len(slices)
    if n == 1:
        step = normal * single_step
    else:
        gaps = np.diff(proj)
        median = float(np.median(gaps))
        dup = np.flatnonzero(gaps < 1e-3 + 1e-3 * abs(median))
        if dup.size:
            i = int(dup[0])
            raise GeometryError(
                f"{source}: duplicated slice position {np.round(pos[i], 3).tolist()} in {names[i]} and "
                f"{names[i + 1]} ({dup.size} duplicate(s) in {n} slices; "
                "several stacks or echoes in one series?)"
            )
        tol = max(1e-3, 1e-2 * median)
        ratio = gaps / median
        missing = np.flatnonzero((ratio > 1.5) & (np.abs(ratio - np.round(ratio)) < 0.1))
        if missing.size:
            i = int(missing[0])
            raise GeometryError(
                f"{source}: missing slice(s): the gap of {gaps[i]:.4g} mm "
                f"between {names[i]} and {names[i + 1]}"
                f" is {ratio[i]:.2f} times the usual step of {median:.4g} mm"
            )
        if np.any(np.abs(gaps - median) > tol):
            raise GeometryError(
                f"{source}: uneven slice spacing: steps range from {gaps.min():.4g} to {gaps.max():.4g} mm "
                f"(median {median:.4g} mm, tolerance {tol:.2g} mm)"
            )
        step = (pos[-1] - pos[0]) / (n - 1)
        residual = np.linalg.norm(pos - (pos[0] + np.arange(n)[:, None] * step), axis=1)
        if residual.max() > tol:
            i = int(np.argmax(residual))
            raise GeometryError(
                f"{source}: slice positions are not on one line: {names[i]} is {residual[i]:.4g} mm off"
            )
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = step
    affine_lps[:3, 1] = col_cos * dr
    affine_lps[:3, 2] = row_cos * dc
    affine_lps[:3, 3] = pos[0]
    array = np.stack([slices[i] for i in order]).astype(np.float32, copy=False)
    return array, _LPS_TO_RAS @ affine_lps


def _pixel_spacing(ds: Any, source: str, required: bool) -> np.ndarray:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _floats(ds, keyword, 2, source)
        if value is not None:
            if np.any(value <= 0):
                raise GeometryError(f"{source}: {keyword} must be positive, got {value.tolist()}")
            return value
    if required:
        raise GeometryError(f"{source}: PixelSpacing is missing")
    return np.ones(2)


def _load_dicom_folder(folder: Path, *, color: RgbToGray, series_uid: str | None) -> Volume:
    headers: dict[str, list[tuple[Path, Any]]] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name.upper() == "DICOMDIR":
            continue
        strict = f.name.lower().endswith(_DICOM_SUFFIXES)
        if not strict and not _has_dicom_preamble(f):
            continue
        ds = _read_dicom(f, header_only=True, strict=strict)
        if ds is None or "Rows" not in ds:
            continue
        headers.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if not headers:
        raise FileFormatError(f"{folder}: no DICOM image files in this folder")
    if series_uid is None:
        if len(headers) > 1:
            listing = "; ".join(
                f"{uid or '<no SeriesInstanceUID>'} ({len(items)} files, "
                f"{items[0][1].get('Modality', '?')} "
                f"{str(items[0][1].get('SeriesDescription', '')).strip()!r})"
                for uid, items in headers.items()
            )
            raise InvalidInputError(
                f"{folder}: holds {len(headers)} DICOM series; pass series_uid= one of: {listing}"
            )
        series_uid = next(iter(headers))
    elif series_uid not in headers:
        raise InvalidInputError(f"series_uid: {series_uid!r} is not in {folder}; it holds {sorted(headers)}")
    files = headers[series_uid]
    multi = [f for f, ds in files if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        if len(files) == 1:
            return _load_dicom_file(files[0][0], color=color, source=str(folder))
        raise FileFormatError(
            f"{folder}: series {series_uid} mixes {len(files)} files including multi-frame {multi[0].name};"
            " load each multi-frame file on its own"
        )
    if len(files) == 1:
        return _load_dicom_file(files[0][0], color=color, source=str(folder))
    return _stack_series(folder, [f for f, _ in files], color=color)


def _stack_series(folder: Path, files: list[Path], *, color: RgbToGray) -> Volume:
    source = str(folder)
    slices: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    ref_iop: np.ndarray | None = None
    ref_spacing: np.ndarray | None = None
    ref_shape: tuple[int, ...] | None = None
    first: Any = None
    for f in files:
        ds = _read_dicom(f, header_only=False)
        first = first if first is not None else ds
        ipp = _floats(ds, "ImagePositionPatient", 3, str(f))
        iop = _floats(ds, "ImageOrientationPatient", 6, str(f))
        if ipp is None or iop is None:
            raise GeometryError(
                f"{f}: ImagePositionPatient/ImageOrientationPatient missing; "
                f"cannot order the slices of {folder}"
            )
        spacing = _pixel_spacing(ds, str(f), required=True)
        if ref_iop is None:
            ref_iop, ref_spacing = iop, spacing
        elif np.max(np.abs(iop - ref_iop)) > 1e-4:
            raise GeometryError(
                f"{source}: mixed orientations: {f.name} has {iop.tolist()}, "
                f"{files[0].name} has {ref_iop.tolist()}"
            )
        elif ref_spacing is not None and np.max(np.abs(spacing - ref_spacing)) > 1e-4:
            raise GeometryError(
                f"{source}: mixed pixel spacing: {f.name} has {spacing.tolist()}, {files[0].name} has "
                f"{ref_spacing.tolist()}"
            )
        frames = _frame_pixels(ds, color=color, source=str(f))
        if ref_shape is None:
            ref_shape = frames.shape[1:]
        elif frames.shape[1:] != ref_shape:
            raise ShapeMismatchError(
                f"{source}: {f.name} has {frames.shape[1:]} pixels, {files[0].name} has {ref_shape}"
            )
        slope, intercept = _rescale(ds)
        slices.append(frames[0] * np.float32(slope) + np.float32(intercept))
        positions.append(ipp)
    if ref_iop is None or ref_spacing is None:  # pragma: no cover - files is never empty
        raise FileFormatError(f"{source}: no slices")
    row, col = _orientation(ref_iop, source)
    array, affine = _stack_positioned(
        slices,
        positions,
        [f.name for f in files],
        row,
        col,
        ref_spacing,
        _slice_step_fallback(first, source),
        source,
    )
    return _volume(array, affine, source, modality=_modality(first))


def _modality(ds: Any) -> str | None:
    value = ds.get("Modality")
    return str(value) if value else None


def _functional(ds: Any, index: int, sequence: str) -> Any:
    """The item of a functional-group ``sequence`` for frame ``index`` (per-frame, then shared)."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > i:
            inner = seq[i].get(sequence)
            if inner is not None and len(inner) > 0:
                return inner[0]
    return None


def _load_dicom_file(p: Path, *, color: RgbToGray, source: str | None = None) -> Volume:
    src = source or str(p)
    ds = _read_dicom(p, header_only=False)
    if "Rows" not in ds:
        raise FileFormatError(f"{p}: a DICOM file without an image (SOP class {ds.get('SOPClassUID', '?')})")
    frames = _frame_pixels(ds, color=color, source=str(p))
    if str(ds.get("SOPClassUID", "")) == _SEG_SOP_CLASS:
        return _segmentation_volume(ds, frames, src)
    n = frames.shape[0]
    modality = _modality(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == n:
        positions = [_functional(ds, i, "PlanePositionSequence") for i in range(n)]
        if all(item is not None and "ImagePositionPatient" in item for item in positions):
            return _enhanced_volume(ds, frames, positions, src)
    ipp = _floats(ds, "ImagePositionPatient", 3, str(p))
    iop = _floats(ds, "ImageOrientationPatient", 6, str(p))
    if n == 1 and ipp is not None and iop is not None:
        row, col = _orientation(iop, str(p))
        slope, intercept = _rescale(ds)
        array, affine = _stack_positioned(
            [frames[0] * np.float32(slope) + np.float32(intercept)],
            [ipp],
            [p.name],
            row,
            col,
            _pixel_spacing(ds, str(p), required=True),
            _slice_step_fallback(ds, str(p)),
            src,
        )
        return _volume(array, affine, src, modality=modality)
    slope, intercept = _rescale(ds)
    if (slope, intercept) != (1.0, 0.0):
        frames = frames * np.float32(slope) + np.float32(intercept)
    is_us = modality == "US" or "ultrasound" in str(getattr(ds.get("SOPClassUID"), "name", "")).lower()
    times = _frame_times(ds, n, str(p))
    if is_us or times is not None:
        dy, dx = _us_spacing(ds, str(p))
        return _volume(
            frames, _placeholder_affine(1.0, dy, dx), src, kind="cine", frame_times=times, modality=modality
        )
    spacing = _pixel_spacing(ds, str(p), required=False)
    warnings.warn(
        f"{p}: no plane positions (ImagePositionPatient/ImageOrientationPatient); using an axial "
        f"placeholder affine with spacing {[_slice_step_fallback(ds, str(p)), *spacing.tolist()]} mm",
        UserWarning,
        stacklevel=4,
    )
    affine = _placeholder_affine(_slice_step_fallback(ds, str(p)), float(spacing[0]), float(spacing[1]))
    return _volume(frames, affine, src, modality=modality)


_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # DICOM Segmentation Storage


def _segmentation_volume(ds: Any, frames: np.ndarray, source: str) -> Volume:
    """A DICOM SEG as a label map: frame ``i`` marks segment ``ReferencedSegmentNumber`` at its plane.

    Frames are placed on a regular grid along the slice normal (step: SpacingBetweenSlices, else
    the smallest gap between stored planes), so planes without any segment are empty slices.
    Overlapping segments: the higher segment number wins. FRACTIONAL segments are thresholded at
    half their maximum value.
    """
    n = frames.shape[0]
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        masks = frames >= float(ds.get("MaximumFractionalValue", 255)) / 2.0
    else:
        masks = frames > 0
    segments, positions = [], []
    for i in range(n):
        ident = _functional(ds, i, "SegmentIdentificationSequence")
        plane = _functional(ds, i, "PlanePositionSequence")
        ipp = _floats(plane, "ImagePositionPatient", 3, f"{source} frame {i + 1}") if plane is not None else None
        if ident is None or ipp is None:
            raise GeometryError(f"{source}: SEG frame {i + 1} has no segment number or plane position")
        segments.append(int(ident.ReferencedSegmentNumber))
        positions.append(ipp)
    orient = _functional(ds, 0, "PlaneOrientationSequence")
    iop = _floats(orient, "ImageOrientationPatient", 6, source) if orient is not None else None
    measures = _functional(ds, 0, "PixelMeasuresSequence")
    spacing = _floats(measures, "PixelSpacing", 2, source) if measures is not None else None
    if iop is None or spacing is None:
        raise GeometryError(f"{source}: SEG without plane orientation or pixel spacing")
    row, col = _orientation(iop, source)
    normal = np.cross(row, col)
    pos = np.stack(positions)
    proj = pos @ normal
    planes = np.unique(np.round(proj, 3))
    given = _floats(measures, "SpacingBetweenSlices", 1, source) if measures is not None else None
    gaps = np.diff(planes)
    step = float(given[0]) if given is not None else (float(gaps.min()) if gaps.size else _slice_step_fallback(measures, source))
    index = (proj - planes[0]) / step
    if np.any(np.abs(index - np.round(index)) > 1e-2):
        raise GeometryError(f"{source}: SEG planes are not on a regular grid of step {step:.4g} mm")
    index = np.round(index).astype(int)
    origin = pos[int(np.argmin(proj))]
    if np.max(np.linalg.norm(pos - (origin + index[:, None] * step * normal), axis=1)) > 1e-2 * max(step, 1.0):
        raise GeometryError(f"{source}: SEG planes are not on one line along the slice normal")
    dtype = np.uint8 if max(segments) <= 255 else np.uint16
    labels = np.zeros((int(index.max()) + 1, *frames.shape[1:]), dtype)
    for i in np.argsort(segments, kind="stable"):
        labels[index[i]][masks[i]] = segments[i]
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = normal * step
    affine_lps[:3, 1] = col * float(spacing[0])
    affine_lps[:3, 2] = row * float(spacing[1])
    affine_lps[:3, 3] = origin
    return _volume(labels, _LPS_TO_RAS @ affine_lps, source, modality="SEG")


def _onto_grid(label: Volume, like: Volume) -> Volume | None:
    """``label`` resampled exactly onto ``like``'s grid when its voxels are a subset of it (same
    spacing and axes up to order and sign, integer offset); ``None`` otherwise."""
    m = np.linalg.solve(like.affine, label.affine)
    lin = m[:3, :3]
    if not (np.allclose(np.abs(lin).sum(axis=0), 1.0, atol=1e-3) and np.allclose(np.abs(lin), np.round(np.abs(lin)), atol=1e-3)):
        return None
    if not np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-2):
        return None
    idx = np.indices(label.shape).reshape(3, -1)
    target = np.round(lin @ idx + m[:3, 3:4]).astype(int)
    inside = np.all((target >= 0) & (target < np.array(like.shape)[:, None]), axis=0)
    values = label.array.reshape(-1)
    if np.any(values[~inside] != 0):
        return None
    out = np.zeros(like.shape, label.array.dtype)
    out[tuple(target[:, inside])] = values[inside]
    return like.with_array(out)


def _placeholder_affine(step: float, dr: float, dc: float) -> np.ndarray:
    """Geometry of an axial stack at the origin (DICOM default orientation), in RAS."""
    lps = np.eye(4)
    lps[:3, 0] = [0.0, 0.0, step]
    lps[:3, 1] = [0.0, dr, 0.0]
    lps[:3, 2] = [dc, 0.0, 0.0]
    return _LPS_TO_RAS @ lps


def _enhanced_volume(ds: Any, frames: np.ndarray, positions: list[Any], source: str) -> Volume:
    n = frames.shape[0]
    slices: list[np.ndarray] = []
    ipps: list[np.ndarray] = []
    ref_iop: np.ndarray | None = None
    ref_spacing: np.ndarray | None = None
    for i in range(n):
        label = f"frame {i + 1}"
        ipp = _floats(positions[i], "ImagePositionPatient", 3, f"{source} {label}")
        orient = _functional(ds, i, "PlaneOrientationSequence")
        iop = (
            _floats(orient, "ImageOrientationPatient", 6, f"{source} {label}") if orient is not None else None
        )
        if iop is None:
            iop = _floats(ds, "ImageOrientationPatient", 6, source)
        measures = _functional(ds, i, "PixelMeasuresSequence")
        spacing = _floats(measures, "PixelSpacing", 2, f"{source} {label}") if measures is not None else None
        if spacing is None:
            spacing = _pixel_spacing(ds, source, required=True)
        if ipp is None or iop is None:
            raise GeometryError(f"{source}: {label} has no ImagePositionPatient/ImageOrientationPatient")
        if ref_iop is None:
            ref_iop, ref_spacing = iop, spacing
        elif np.max(np.abs(iop - ref_iop)) > 1e-4:
            raise GeometryError(
                f"{source}: mixed orientations: {label} has {iop.tolist()}, frame 1 has {ref_iop.tolist()}"
            )
        elif ref_spacing is not None and np.max(np.abs(spacing - ref_spacing)) > 1e-4:
            raise GeometryError(
                f"{source}: mixed pixel spacing: {label} has {spacing.tolist()}, "
                f"frame 1 has {ref_spacing.tolist()}"
            )
        transform = _functional(ds, i, "PixelValueTransformationSequence")
        slope, intercept = _rescale(transform if transform is not None else ds)
        slices.append(frames[i] * np.float32(slope) + np.float32(intercept))
        ipps.append(ipp)
    if ref_iop is None or ref_spacing is None:  # pragma: no cover - n >= 1
        raise FileFormatError(f"{source}: no frames")
    row, col = _orientation(ref_iop, source)
    measures = _functional(ds, 0, "PixelMeasuresSequence")
    step = (
        _slice_step_fallback(measures, source) if measures is not None else _slice_step_fallback(ds, source)
    )
    array, affine = _stack_positioned(
        slices, ipps, [f"frame {i + 1}" for i in range(n)], row, col, ref_spacing, step, source
    )
    return _volume(array, affine, source, modality=_modality(ds))


def _frame_times(ds: Any, n: int, source: str) -> tuple[float, ...] | None:
    vector = ds.get("FrameTimeVector")
    if vector is not None and vector != "":
        try:
            values = np.asarray([float(v) for v in _as_list(vector)], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise FileFormatError(f"{source}: FrameTimeVector is not numeric: {vector!r}") from err
        if values.size == n - 1:
            values = np.concatenate([[0.0], values])
        if values.size != n or not np.all(np.isfinite(values)):
            raise FileFormatError(
                f"{source}: FrameTimeVector holds {values.size} finite increments, "
                f"expected {n} (one per frame)"
            )
        return tuple(float(t) for t in np.cumsum(values))
    frame_time = _floats(ds, "FrameTime", 1, source)
    if frame_time is not None:
        return tuple(float(i * frame_time[0]) for i in range(n))
    return None


def _us_spacing(ds: Any, source: str) -> tuple[float, float]:
    """(row, column) spacing in mm from SequenceOfUltrasoundRegions (cm), else 1 mm."""
    regions = ds.get("SequenceOfUltrasoundRegions") or []
    best: tuple[float, float] | None = None
    for region in regions:
        units_x, units_y = region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection")
        dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
        if units_x != 3 or units_y != 3 or dx is None or dy is None:  # 3 = cm
            continue
        candidate = (abs(float(dy)) * 10.0, abs(float(dx)) * 10.0)
        if candidate[0] <= 0 or candidate[1] <= 0:
            continue
        if best is None or region.get("RegionSpatialFormat") == 1:  # prefer a 2D tissue region
            best = candidate
            if region.get("RegionSpatialFormat") == 1:
                break
    return best if best is not None else (1.0, 1.0)


def _as_label_array(array: np.ndarray, *, name: str) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InvalidInputError(f"{name}: expected integer labels, got NaN or inf")
        if not np.array_equal(array, np.round(array)):
            raise InvalidInputError(f"{name}: expected integer labels, got fractional values")
    elif not np.issubdtype(array.dtype, np.integer):
        raise InvalidTypeError(f"{name}: expected integer labels, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise InvalidInputError(f"{name}: expected non-negative labels, got minimum {array.min()}")
    if np.issubdtype(array.dtype, np.integer):
        return array
    hi = float(array.max()) if array.size else 0.0
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if hi <= np.iinfo(dtype).max:
            return array.astype(dtype)
    raise InvalidInputError(f"{name}: label values too large ({hi})")  # pragma: no cover


from medsam2kit.dicom_seg import save_dicom_seg  # noqa: E402  (DICOM SEG writer, re-exported)

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES", "RgbToGray", "load_label", "load_volume", "max_image_bytes", "save_dicom_seg",
    "save_mask", "save_volume",
]
