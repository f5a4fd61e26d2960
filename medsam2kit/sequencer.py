"""A 3D volume or an ultrasound cine as a SAM2 frame sequence, and the exact way back.

SAM2 segments videos. This module turns a volume ``(D, H, W)`` (sliced along one axis) or a
2D frame stack / cine ``(T, H, W)`` / ``(T, H, W, 3)`` into the square frames SAM2 consumes,
and maps whatever SAM2 returns at model resolution (logits, masks, coordinates) back onto the
input's voxel grid with the input's geometry.

Conventions (see ``docs/sequencer.md`` for the full guide):

* **Slicing.** Frames are slices along ``axis``; a frame's rows (``y``) run along the lower of
  the two remaining array axes, its columns (``x``) along the higher one. No reorientation: the
  file's voxel order is kept, so the inverse is a pure index mapping.
* **Default axis.** :func:`default_axis`: the axis with the largest spacing (relative tolerance
  ``1e-3``); ties go to the axis with the fewest slices, then to the axis nearest the world
  superior-inferior direction. A cine always uses axis 0 (time).
* **Windowing.** To uint8 through one window for the whole volume (all frames share it):
  ``u8 = rint(clip((x - low) * 255 / (high - low), 0, 255))``. The default is percentile
  clipping 0.5 / 99.5 % for every modality; CT presets are used only when asked for
  (``window="soft_tissue"``, or :func:`default_window` with ``ct_preset=``); ``window=None``
  passes display-ready uint8 input through unchanged.
* **Resize.** ``"pad"`` (default) keeps the aspect ratio: the longer side becomes ``S`` and the
  frame is zero-padded symmetrically (an odd pixel goes to the bottom/right); ``"squash"`` resizes
  both sides to ``S`` as sam2 does. Images are resized bilinearly (antialiased when shrinking)
  with ``align_corners=False``, so pixel centres map affinely:
  ``frame = pad + (voxel + 0.5) * scale - 0.5`` per in-plane axis, ``scale = resized / original``.
* **Coordinates.** Frame pixels follow SAM2's convention: ``(x, y)`` = (column, row), integers at
  pixel centres; voxel coordinates follow NIfTI: integers at voxel centres.
* **Storage and normalisation.** Frames are stored as uint8 ``(T, S, S)`` (or ``(T, 3, S, S)`` for
  colour kept as colour); ``seq[t]`` gives float32 ``(3, S, S)`` exactly as sam2 computes it:
  ``(float32(u8 / 255) - mean) / std`` with ImageNet mean/std.
* **Inverse.** Logits are evaluated at each voxel's exact frame position by bilinear point
  sampling inside the unpadded region (no antialias; positions in float64, constants kept exact); masks given as bool use exact nearest
  neighbour (integer index arithmetic, the same rule as ``F.interpolate(mode="nearest-exact")``).
  Slices that no frame covers are filled with ``-inf`` (logits) or ``False`` (masks).
* **Types.** Model-side outputs (frames, masks at model resolution) are CPU torch tensors;
  voxel-side outputs are :class:`~medsam2kit.volume.Volume` values (numpy); coordinates are
  float64 numpy arrays. Inputs may be numpy arrays or torch tensors.

Example:
    >>> import numpy as np
    >>> from medsam2kit.volume import Volume
    >>> vol = Volume(np.random.default_rng(0).normal(size=(3, 20, 10)).astype(np.float32),
    ...              np.diag([5.0, 1.0, 1.0, 1.0]))
    >>> seq = sequence_volume(vol, image_size=32)
    >>> len(seq), seq.image_size, tuple(seq[0].shape), seq.layout.axis
    (3, 32, (3, 32, 32), 0)
    >>> logits = np.full((3, 32, 32), 5.0, np.float32)
    >>> bool(seq.to_volume_mask(logits).array.all()), seq.to_volume_mask(logits).shape
    (True, (3, 20, 10))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Union

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from medsam2kit.errors import (
    FrameIndexError,
    InvalidInputError,
    InvalidTypeError,
    MedSAM2KitError,
    ShapeMismatchError,
)
from medsam2kit._validate import SPACING_RTOL, check_axis, check_int, largest_spacing_axis
from medsam2kit.volume import Volume, VolumeKind, check_affine

ResizeMode = Literal["pad", "squash"]
OrderMode = Literal["forward", "reverse", "centre_out"]
FrameColor = Literal["gray", "keep"]
"""Whether RGB input frames are converted to gray (BT.601 luma, then replicated to SAM2's three
channels) or kept in colour (the ``color`` argument of :func:`sequence_frames`)."""
ArrayLike = Union[np.ndarray, torch.Tensor]

#: SAM2's image size must be a multiple of 32: Hiera embeds 4x4 patches and pools 2x three times
#: (total stride 32), and the FPN neck adds the stride-32 level, upsampled 2x, to the stride-16
#: level; Hiera's windowed positional embedding also tiles an 8-pixel window at stride 4. A size
#: that is a multiple of 16 but not of 32 (e.g. 144) fails in the image encoder (verified with
#: sam2 1.1.0), so 16 (the mask decoder's stride) is not enough.
SIZE_MULTIPLE = 32

#: ImageNet mean and std used by sam2 for every frame (RGB order).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: CT window presets in Hounsfield units as ``(centre, width)``; read-only.
WINDOW_PRESETS: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "soft_tissue": (40.0, 400.0),
        "lung": (-600.0, 1500.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
        "liver": (60.0, 160.0),
        "mediastinum": (50.0, 350.0),
    }
)

_CHUNK = 32  # frames resized at once (bounds temporary float32 memory)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, for colour frames converted to gray


# --------------------------------------------------------------------------------------------
# Windowing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """An intensity window: ``low`` maps to 0, ``high`` to 255, linear in between, clipped.

    Attributes:
        low: value shown black (inclusive), finite.
        high: value shown white, finite, ``> low``.

    Example:
        >>> Window.from_centre_width(40, 400)
        Window(low=-160.0, high=240.0)
        >>> Window.preset("lung").centre, Window.preset("lung").width
        (-600.0, 1500.0)
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise InvalidTypeError(f"window.{name}: expected a real number, got {type(value).__name__}")
            if not math.isfinite(float(value)):
                raise InvalidInputError(f"window.{name}: expected a finite value, got {value}")
            object.__setattr__(self, name, float(value))
        if not self.low < self.high:
            raise InvalidInputError(
                f"window: expected low < high (a non-empty window), got low={self.low}, high={self.high}"
            )

    @classmethod
    def from_centre_width(cls, centre: float, width: float) -> Window:
        """The window ``[centre - width / 2, centre + width / 2]`` (the usual CT convention).

        Example:
            >>> Window.from_centre_width(50, 350)
            Window(low=-125.0, high=225.0)
        """
        if not (math.isfinite(float(width)) and float(width) > 0):
            raise InvalidInputError(f"width: expected a finite value > 0, got {width}")
        return cls(float(centre) - float(width) / 2.0, float(centre) + float(width) / 2.0)

    @classmethod
    def preset(cls, name: str) -> Window:
        """A CT preset from :data:`WINDOW_PRESETS` (values in HU).

        Example:
            >>> Window.preset("bone")
            Window(low=-500.0, high=1300.0)
        """
        if name not in WINDOW_PRESETS:
            raise InvalidInputError(f"window: expected one of {sorted(WINDOW_PRESETS)}, got {name!r}")
        centre, width = WINDOW_PRESETS[name]
        return cls.from_centre_width(centre, width)

    @property
    def centre(self) -> float:
        """``(low + high) / 2``."""
        return (self.low + self.high) / 2.0

    @property
    def width(self) -> float:
        """``high - low``."""
        return self.high - self.low


@dataclass(frozen=True)
class PercentileWindow:
    """A window taken from percentiles of the whole input (so every frame shares it).

    Attributes:
        lower: lower percentile in ``[0, 100)``.
        upper: upper percentile in ``(lower, 100]``.

    A constant input gives ``low == high``; the window then becomes ``[low, low + 1]`` (every
    frame black) instead of failing.

    Example:
        >>> import numpy as np
        >>> PercentileWindow(0.0, 100.0).resolve(np.arange(11.0))
        Window(low=0.0, high=10.0)
    """

    lower: float = 0.5
    upper: float = 99.5

    def __post_init__(self) -> None:
        lo, hi = float(self.lower), float(self.upper)
        if not (0.0 <= lo < hi <= 100.0):
            raise InvalidInputError(
                f"percentiles: expected 0 <= lower < upper <= 100, got lower={self.lower}, upper={self.upper}"
            )
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)

    def resolve(self, array: ArrayLike) -> Window:
        """The concrete window for ``array`` (any shape, finite values).

        Example:
            >>> import numpy as np
            >>> PercentileWindow().resolve(np.zeros(5))
            Window(low=0.0, high=1.0)
        """
        data = _as_numpy(array, "array")
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        if data.size == 0:
            raise InvalidInputError("array: expected at least one value to take percentiles of, got none")
        low, high = np.percentile(data, [self.lower, self.upper])
        low, high = float(low), float(high)
        if not high > low:
            high = low + 1.0
        return Window(low, high)


WindowSpec = Union[Window, PercentileWindow, str, tuple[float, float], None]


def display_ready(array: ArrayLike) -> bool:
    """Whether ``array`` holds display-ready 8-bit values: uint8, or floats that are whole numbers
    in ``0..255`` (an 8-bit ultrasound cine read as float32, as DICOM pixel data is here). Such
    frames are shown as they are (window ``None`` for uint8, ``Window(0, 255)`` for the floats,
    which maps every value to itself), as the bundled models were trained on ultrasound.

    Example:
        >>> display_ready(np.array([0, 255], np.uint8)), display_ready(np.array([0.0, 17.0, 255.0]))
        (True, True)
        >>> display_ready(np.array([0.5, 3.0])), display_ready(np.array([-1.0, 3.0])), display_ready(np.array([0, 300]))
        (False, False, False)
    """
    arr = np.asarray(array)
    if arr.dtype == np.uint8:
        return True
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return False
    return bool(np.all((arr >= 0) & (arr <= 255) & (arr == np.round(arr))))


def default_window(modality: str | None, *, ct_preset: str | None = None) -> Window | PercentileWindow:
    """The documented default window for a modality.

    CT gets the preset ``ct_preset`` when the caller names one; everything else (MR, US, unknown,
    or CT without a preset) gets percentile clipping 0.5 / 99.5 % over the whole volume.

    Args:
        modality: DICOM-style modality (``"CT"``, ``"MR"``, ``"US"``...) or ``None``.
        ct_preset: a key of :data:`WINDOW_PRESETS`, used only when ``modality`` is CT.

    Returns:
        A :class:`Window` or a :class:`PercentileWindow`.

    Example:
        >>> default_window("CT", ct_preset="soft_tissue")
        Window(low=-160.0, high=240.0)
        >>> default_window("MR", ct_preset="soft_tissue")
        PercentileWindow(lower=0.5, upper=99.5)
    """
    if ct_preset is not None and modality is not None and modality.upper() == "CT":
        return Window.preset(ct_preset)
    return PercentileWindow()


def resolve_window(window: WindowSpec, array: ArrayLike) -> Window | None:
    """Turn a window specification into a concrete :class:`Window` (or ``None`` = identity).

    Args:
        window: a :class:`Window`; a :class:`PercentileWindow` (resolved over all of ``array``);
            a preset name (:data:`WINDOW_PRESETS`); a ``(low, high)`` pair; or ``None`` for
            display-ready uint8 input, passed through unchanged.
        array: the whole input (any shape).

    Returns:
        The window, or ``None`` for the uint8 identity.

    Example:
        >>> import numpy as np
        >>> resolve_window((0, 10), np.zeros(3))
        Window(low=0.0, high=10.0)
        >>> resolve_window(None, np.zeros(3, np.uint8)) is None
        True
    """
    if window is None:
        dtype = array.dtype
        if not (dtype == torch.uint8 if isinstance(array, torch.Tensor) else dtype == np.uint8):
            raise InvalidInputError(
                f"window: None (identity) needs display-ready uint8 input, got dtype {dtype}; "
                "pass a Window, a preset name, a (low, high) pair or PercentileWindow()"
            )
        return None
    if isinstance(window, Window):
        return window
    if isinstance(window, PercentileWindow):
        return window.resolve(array)
    if isinstance(window, str):
        return Window.preset(window)
    if isinstance(window, tuple) and len(window) == 2:
        return Window(window[0], window[1])
    raise InvalidTypeError(
        "window: expected a Window, PercentileWindow, preset name, (low, high) tuple or None, "
        f"got {window!r}"
    )


def _display_float(array: np.ndarray, window: Window | None) -> np.ndarray:
    """Windowed values as float32 in ``[0, 255]`` (not yet rounded)."""
    if window is None:
        return array.astype(np.float32)
    scaled = (array.astype(np.float64) - window.low) * (255.0 / (window.high - window.low))
    return np.clip(scaled, 0.0, 255.0).astype(np.float32)


def apply_window(array: ArrayLike, window: Window | None) -> np.ndarray:
    """Window an array to uint8: ``rint(clip((x - low) * 255 / (high - low), 0, 255))``.

    The scaled value is rounded to float32 before ``rint`` (half to even), exactly as the frames
    of a sequence are made.

    Args:
        array: any shape, real dtype, finite values.
        window: the window, or ``None`` for uint8 input passed through.

    Returns:
        uint8 array of the same shape.

    Example:
        >>> import numpy as np
        >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), Window.preset("soft_tissue")).tolist()
        [0, 128, 255]
    """
    data = _as_numpy(array, "array")
    if window is None and data.dtype != np.uint8:
        raise InvalidInputError(f"window: None (identity) needs uint8 input, got dtype {data.dtype}")
    return np.rint(_display_float(data, window)).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Axis and frame order
# --------------------------------------------------------------------------------------------


def default_axis(
    geometry: Volume | npt.ArrayLike, *, shape: Sequence[int] | None = None, kind: VolumeKind | None = None
) -> int:
    """The library's default slicing axis, chosen from the geometry.

    A cine uses axis 0 (time). A volume uses, in this order:

    1. the axis of largest spacing (column norms of the affine); spacings within a relative
       :data:`SPACING_RTOL` (``1e-3``) of the largest count as tied;
    2. among tied axes, the one with the fewest slices (needs the shape: a :class:`Volume` has
       it, with an affine pass ``shape=``), so an isotropic ``(384, 384, 10)`` scan gives
       ``384 x 384`` frames, not ``384 x 10`` ones;
    3. among axes still tied, the one nearest the world superior-inferior direction (the unit
       affine column with the largest ``|z|``), then the lowest axis.

    A bare array with spacing but no affine follows the same rule with the affine
    ``diag(spacing)`` (array axes taken as world x, y, z), as :func:`sequence_volume` does.

    Args:
        geometry: a :class:`Volume`, or its ``(4, 4)`` voxel-to-world matrix.
        shape: the ``(D, H, W)`` shape with an affine (not allowed with a :class:`Volume`).
        kind: ``"volume"`` or ``"cine"`` (default: the :class:`Volume`'s, else ``"volume"``).

    Returns:
        0, 1 or 2.

    Raises:
        InvalidTypeError: ``geometry`` is neither a :class:`Volume` nor an array-like matrix.
        GeometryError: the matrix is not a valid 4x4 affine.

    Example:
        >>> import numpy as np
        >>> default_axis(np.diag([0.7, 0.7, 5.0, 1.0])), default_axis(np.eye(4), shape=(384, 384, 10))
        (2, 2)
        >>> default_axis(Volume(np.zeros((4, 5, 6)), np.diag([3.0, 1.0, 1.0, 1.0])))
        0
    """
    if kind not in (None, "volume", "cine"):
        raise InvalidInputError(f"kind: expected 'volume' or 'cine', got {kind!r}")
    dims: tuple[int, int, int] | None
    if isinstance(geometry, Volume):
        if shape is not None:
            raise InvalidInputError("shape: expected None when geometry is a Volume (it has its own shape)")
        matrix, dims, kind = geometry.affine, geometry.shape, kind or geometry.kind
    elif isinstance(geometry, (np.ndarray, list, tuple, torch.Tensor)):
        matrix = np.asarray(geometry, dtype=np.float64)
        check_affine(matrix, name="affine")
        dims = None if shape is None else _check_shape(shape)
    else:
        raise InvalidTypeError(
            f"geometry: expected a Volume or a (4, 4) affine matrix, got {type(geometry).__name__}"
        )
    if kind == "cine":
        return 0
    return largest_spacing_axis(matrix, dims)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        dims = tuple(check_int(s, "shape", minimum=1) for s in shape)
    except TypeError:
        raise InvalidTypeError(f"shape: expected three positive integers, got {shape!r}") from None
    if len(dims) != 3:
        raise InvalidInputError(f"shape: expected three positive integers (D, H, W), got {shape!r}")
    return (dims[0], dims[1], dims[2])


def frame_order(
    num_slices: int, mode: OrderMode = "forward", *, starts: Sequence[int] | None = None
) -> tuple[tuple[int, ...], ...]:
    """The runs of slice indices in which to visit a volume.

    * ``"forward"``: from each start (default ``0``) up to the last slice.
    * ``"reverse"``: from each start (default the last slice) down to slice 0.
    * ``"centre_out"``: from each start (default the middle slice ``num_slices // 2``) one run up to
      the last slice and one run down to slice 0 (both contain the start).

    Each run can be made into its own sequence (``sequence_volume(..., order=run)``); results of all
    runs go back to the right slices through each sequence's frame -> slice mapping.

    Args:
        num_slices: number of slices, ``>= 1``.
        mode: ``"forward"``, ``"reverse"`` or ``"centre_out"``.
        starts: start slices (each in ``[0, num_slices)``); runs are returned start by start.

    Returns:
        A tuple of runs, each a tuple of distinct slice indices.

    Example:
        >>> frame_order(5, "centre_out")
        ((2, 3, 4), (2, 1, 0))
        >>> frame_order(4, "reverse")
        ((3, 2, 1, 0),)
    """
    n = check_int(num_slices, "num_slices", minimum=1)
    if mode not in ("forward", "reverse", "centre_out"):
        raise InvalidInputError(f"mode: expected 'forward', 'reverse' or 'centre_out', got {mode!r}")
    if starts is None:
        starts_list = [{"forward": 0, "reverse": n - 1, "centre_out": n // 2}[mode]]
    else:
        starts_list = [check_int(s, "starts", minimum=0) for s in starts]
        if not starts_list:
            raise InvalidInputError("starts: expected at least one start slice, got none")
        bad = [s for s in starts_list if s >= n]
        if bad:
            raise InvalidInputError(f"starts: expected slice indices in [0, {n - 1}], got {bad}")
    runs: list[tuple[int, ...]] = []
    for s in starts_list:
        if mode in ("forward", "centre_out"):
            runs.append(tuple(range(s, n)))
        if mode in ("reverse", "centre_out"):
            runs.append(tuple(range(s, -1, -1)))
    return tuple(runs)


# --------------------------------------------------------------------------------------------
# Layout: the exact geometry of the slice <-> frame mapping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceLayout:
    """How the slices of a ``(D, H, W)`` grid sit in square ``S x S`` frames.

    Attributes:
        axis: slicing axis of the voxel grid.
        volume_shape: shape of the voxel grid.
        slice_indices: frame ``t`` shows slice ``slice_indices[t]`` (distinct indices).
        image_size: frame side ``S``.
        resize: ``"pad"`` or ``"squash"``.
        resized_shape: ``(rows, cols)`` of the resized slice inside the frame.
        pad: ``(top, left)`` zero padding before the resized slice.

    Example:
        >>> lay = make_layout((4, 20, 10), axis=0, image_size=32)
        >>> lay.slice_shape, lay.resized_shape, lay.pad, lay.scale
        ((20, 10), (32, 16), (0, 8), (1.6, 1.6))
    """

    axis: int
    volume_shape: tuple[int, int, int]
    slice_indices: tuple[int, ...]
    image_size: int
    resize: ResizeMode
    resized_shape: tuple[int, int]
    pad: tuple[int, int]

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The voxel axes along frame rows (``y``) and columns (``x``)."""
        rows, cols = (a for a in range(3) if a != self.axis)
        return (rows, cols)

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of one slice in voxels."""
        r, c = self.in_plane_axes
        return (self.volume_shape[r], self.volume_shape[c])

    @property
    def num_slices(self) -> int:
        """Number of slices along ``axis``."""
        return self.volume_shape[self.axis]

    @property
    def scale(self) -> tuple[float, float]:
        """Frame pixels per voxel along rows and columns (``resized / original``)."""
        (h, w), (nh, nw) = self.slice_shape, self.resized_shape
        return (nh / h, nw / w)

    def frame_of_slice(self, slice_index: int) -> int:
        """The frame that shows slice ``slice_index``.

        Example:
            >>> make_layout((4, 8, 8), axis=0, image_size=32, order=[3, 1]).frame_of_slice(1)
            1
        """
        s = check_int(slice_index, "slice_index")
        try:
            return self.slice_indices.index(s)
        except ValueError:
            raise InvalidInputError(
                f"slice_index: expected one of the sequence's slices {list(self.slice_indices)}, got {s}"
            ) from None

    def frame_matrix(self, t: int) -> np.ndarray:
        """``(4, 4)`` float64 matrix mapping frame ``(x, y, z, 1)`` to voxel ``(i, j, k, 1)``.

        ``x, y`` are frame pixel coordinates (SAM2 convention); ``z`` is a step along the slicing
        axis (``z = 0`` is frame ``t``'s slice, ``z = 1`` one voxel further along ``axis``).

        Example:
            >>> (make_layout((2, 4, 4), axis=0, image_size=32).frame_matrix(1) @ [3.5, 3.5, 0, 1]).tolist()
            [1.0, 0.0, 0.0, 1.0]
        """
        slice_index = self.slice_indices[_frame_index(t, len(self.slice_indices))]
        (sy, sx), (top, left) = self.scale, self.pad
        rows, cols = self.in_plane_axes
        m = np.zeros((4, 4), dtype=np.float64)
        m[cols, 0] = 1.0 / sx
        m[cols, 3] = (0.5 - left) / sx - 0.5
        m[rows, 1] = 1.0 / sy
        m[rows, 3] = (0.5 - top) / sy - 0.5
        m[self.axis, 2] = 1.0
        m[self.axis, 3] = float(slice_index)
        m[3, 3] = 1.0
        return m

    def frame_to_voxel(self, txy: npt.ArrayLike) -> np.ndarray:
        """Frame coordinates ``(..., 3)`` = ``(t, x, y)`` to voxel coordinates ``(..., 3)``.

        ``t`` must be an integer frame index; ``x, y`` may be fractional (SAM2 pixel convention:
        integers at pixel centres). Voxel coordinates have integers at voxel centres.

        Example:
            >>> lay = make_layout((2, 4, 4), axis=0, image_size=32)
            >>> lay.frame_to_voxel([1, 3.5, 3.5]).tolist()
            [1.0, 0.0, 0.0]
        """
        arr = _coords(txy, "txy")
        t = arr[..., 0]
        t_int = np.rint(t)
        n = len(self.slice_indices)
        if np.any(np.abs(t - t_int) > 1e-6) or np.any(t_int < 0) or np.any(t_int >= n):
            raise InvalidInputError(f"txy: expected integer frame indices t in [0, {n - 1}], got {np.unique(t)}")
        (sy, sx), (top, left) = self.scale, self.pad
        rows, cols = self.in_plane_axes
        out = np.empty_like(arr)
        out[..., self.axis] = np.asarray(self.slice_indices, dtype=np.float64)[t_int.astype(np.int64)]
        out[..., cols] = (arr[..., 1] + 0.5 - left) / sx - 0.5
        out[..., rows] = (arr[..., 2] + 0.5 - top) / sy - 0.5
        return out

    def voxel_to_frame(self, ijk: npt.ArrayLike) -> np.ndarray:
        """Voxel coordinates ``(..., 3)`` to frame coordinates ``(..., 3)`` = ``(t, x, y)``.

        The coordinate along ``axis`` must be (within ``1e-6``) a slice of the sequence; in-plane
        coordinates may be fractional. The exact inverse of :meth:`frame_to_voxel`.

        Example:
            >>> lay = make_layout((2, 4, 4), axis=0, image_size=32)
            >>> lay.voxel_to_frame([1, 0, 0]).tolist()
            [1.0, 3.5, 3.5]
        """
        arr = _coords(ijk, "ijk")
        s = arr[..., self.axis]
        s_int = np.rint(s)
        lookup = np.full(self.num_slices, -1, dtype=np.int64)
        lookup[list(self.slice_indices)] = np.arange(len(self.slice_indices))
        inside = (np.abs(s - s_int) <= 1e-6) & (s_int >= 0) & (s_int < self.num_slices)
        t = np.where(inside, lookup[np.clip(s_int, 0, self.num_slices - 1).astype(np.int64)], -1)
        if np.any(t < 0):
            raise InvalidInputError(
                f"ijk: expected coordinates along axis {self.axis} on the sequence's slices "
                f"{list(self.slice_indices)}, got {np.unique(s[t < 0]).tolist()}"
            )
        (sy, sx), (top, left) = self.scale, self.pad
        rows, cols = self.in_plane_axes
        out = np.empty_like(arr)
        out[..., 0] = t
        out[..., 1] = left + (arr[..., cols] + 0.5) * sx - 0.5
        out[..., 2] = top + (arr[..., rows] + 0.5) * sy - 0.5
        return out

    def points_to_frame(self, points: npt.ArrayLike) -> np.ndarray:
        """In-slice points ``(..., 2)`` as ``(x, y)`` = (column, row) voxels -> frame pixels.

        Example:
            >>> make_layout((2, 4, 8), axis=0, image_size=32).points_to_frame([[0, 0], [7, 3]]).tolist()
            [[1.5, 9.5], [29.5, 21.5]]
        """
        arr = _coords(points, "points", last=2)
        (sy, sx), (top, left) = self.scale, self.pad
        out = np.empty_like(arr)
        out[..., 0] = left + (arr[..., 0] + 0.5) * sx - 0.5
        out[..., 1] = top + (arr[..., 1] + 0.5) * sy - 0.5
        return out

    def points_to_slice(self, points: npt.ArrayLike) -> np.ndarray:
        """Frame pixels ``(..., 2)`` as ``(x, y)`` -> in-slice ``(x, y)`` voxels (inverse of
        :meth:`points_to_frame`).

        Example:
            >>> make_layout((2, 4, 8), axis=0, image_size=32).points_to_slice([[1.5, 9.5]]).tolist()
            [[0.0, 0.0]]
        """
        arr = _coords(points, "points", last=2)
        (sy, sx), (top, left) = self.scale, self.pad
        out = np.empty_like(arr)
        out[..., 0] = (arr[..., 0] + 0.5 - left) / sx - 0.5
        out[..., 1] = (arr[..., 1] + 0.5 - top) / sy - 0.5
        return out

    def boxes_to_frame(self, boxes: npt.ArrayLike) -> np.ndarray:
        """In-slice boxes ``(..., 4)`` XYXY in voxels -> frame pixels (corners map as points, as
        SAM2 treats box corners as points).

        Example:
            >>> make_layout((2, 4, 8), axis=0, image_size=32).boxes_to_frame([0, 0, 7, 3]).tolist()
            [1.5, 9.5, 29.5, 21.5]
        """
        arr = _coords(boxes, "boxes", last=4)
        corners = arr.reshape(*arr.shape[:-1], 2, 2)
        return self.points_to_frame(corners).reshape(arr.shape)


def make_layout(
    volume_shape: Sequence[int],
    *,
    axis: int,
    image_size: int,
    resize: ResizeMode = "pad",
    order: Sequence[int] | Literal["forward", "reverse"] | None = None,
) -> SliceLayout:
    """Compute the :class:`SliceLayout` of a grid (pure geometry, no pixels).

    ``"pad"``: the longer in-plane side becomes ``S``, the other ``round(side * S / longer)``
    (half up, at least 1), centred with ``pad = (S - resized) // 2`` before it. ``"squash"``:
    both sides become ``S``.

    Args:
        volume_shape: ``(D, H, W)``, every size ``>= 1``.
        axis: slicing axis 0, 1 or 2.
        image_size: ``S``, positive multiple of :data:`SIZE_MULTIPLE`.
        resize: ``"pad"`` or ``"squash"``.
        order: slice indices frame by frame (distinct, in range), ``"forward"`` (default) or
            ``"reverse"``.

    Returns:
        The layout.

    Example:
        >>> make_layout((5, 3, 6), axis=0, image_size=32, order="reverse").slice_indices
        (4, 3, 2, 1, 0)
    """
    shape = tuple(int(s) for s in volume_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidInputError(f"volume_shape: expected 3 sizes >= 1 (D, H, W), got {tuple(volume_shape)}")
    ax = check_axis(axis)
    size = check_image_size(image_size)
    if resize not in ("pad", "squash"):
        raise InvalidInputError(f"resize: expected 'pad' or 'squash', got {resize!r}")
    n = shape[ax]
    slices = _check_order(order, n)
    h, w = (shape[a] for a in range(3) if a != ax)
    if resize == "squash":
        nh, nw = size, size
    else:
        longer = max(h, w)
        nh = max(1, (2 * h * size + longer) // (2 * longer))
        nw = max(1, (2 * w * size + longer) // (2 * longer))
    return SliceLayout(
        axis=ax,
        volume_shape=(shape[0], shape[1], shape[2]),
        slice_indices=slices,
        image_size=size,
        resize=resize,
        resized_shape=(nh, nw),
        pad=((size - nh) // 2, (size - nw) // 2),
    )


# --------------------------------------------------------------------------------------------
# Functional core: pixels
# --------------------------------------------------------------------------------------------


def resize_slices(slices: torch.Tensor, layout: SliceLayout) -> torch.Tensor:
    """Display-float slices to uint8 frames: resize bilinearly, pad, round.

    Args:
        slices: float32 ``(N, C, h, w)`` in ``[0, 255]`` with ``(h, w) == layout.slice_shape``.
        layout: the layout.

    Returns:
        uint8 ``(N, C, S, S)``; padding is 0.

    Example:
        >>> import torch
        >>> lay = make_layout((1, 2, 4), axis=0, image_size=32)
        >>> resize_slices(torch.full((1, 1, 2, 4), 200.0), lay)[0, 0, :, 0].unique().tolist()
        [0, 200]
    """
    n, c, h, w = slices.shape
    if (h, w) != layout.slice_shape:
        raise ShapeMismatchError(f"slices: expected in-plane shape {layout.slice_shape}, got {(h, w)}")
    (nh, nw), (top, left), size = layout.resized_shape, layout.pad, layout.image_size
    if (nh, nw) == (h, w):
        resized = slices
    else:
        resized = F.interpolate(
            slices, size=(nh, nw), mode="bilinear", align_corners=False, antialias=(nh < h or nw < w)
        )
    out = torch.zeros((n, c, size, size), dtype=torch.uint8)
    out[:, :, top : top + nh, left : left + nw] = resized.round().clamp_(0, 255).to(torch.uint8)
    return out


def _normalisation_lut() -> torch.Tensor:
    """``(3, 256)`` float32: sam2's normalisation of every uint8 value, channel by channel."""
    unit = (torch.arange(256, dtype=torch.float64) / 255.0).to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None]
    return (unit[None, :] - mean) / std


def normalize_frames(frames: torch.Tensor, *, device: torch.device | str | None = None) -> torch.Tensor:
    """sam2's frame normalisation: ``(float32(u8 / 255) - mean) / std``, gray -> 3 channels.

    Bitwise equal to what ``sam2.utils.misc.load_video_frames`` computes from the same uint8
    pixels (float64 ``/ 255`` cast to float32, then float32 subtraction and division), done with a
    256-entry lookup table.

    Args:
        frames: uint8 ``(N, S, S)`` gray or ``(N, 3, S, S)`` RGB.
        device: where to compute and return (default: the frames' device).

    Returns:
        float32 ``(N, 3, S, S)``.

    Example:
        >>> import torch
        >>> normalize_frames(torch.zeros(1, 32, 32, dtype=torch.uint8))[0, :, 0, 0]
        tensor([-2.1179, -2.0357, -1.8044])
    """
    if frames.dtype != torch.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[1] != 3):
        raise InvalidInputError(
            f"frames: expected uint8 (N, S, S) or (N, 3, S, S), got {frames.dtype} {tuple(frames.shape)}"
        )
    dev = frames.device if device is None else torch.device(device)
    lut = _normalisation_lut().to(dev)
    idx = frames.to(dev).long()
    if idx.ndim == 3:
        return torch.stack([lut[c][idx] for c in range(3)], dim=1)
    return torch.stack([lut[c][idx[:, c]] for c in range(3)], dim=1)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Exact nearest-neighbour source indices, ``floor((o + 0.5) * size_in / size_out)``.

    Integer arithmetic, so there is no rounding at ties (the rule of
    ``F.interpolate(mode="nearest-exact")``).

    Example:
        >>> nearest_indices(2, 5).tolist(), nearest_indices(5, 2).tolist()
        ([0, 0, 1, 1, 1], [1, 3])
    """
    o = np.arange(size_out, dtype=np.int64)
    return ((2 * o + 1) * size_in) // (2 * size_out)


def linear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source taps of linear interpolation at output pixel centres (``align_corners=False``).

    Output pixel ``o`` samples the input at ``p = (o + 0.5) * size_in / size_out - 0.5``, clamped to
    ``[0, size_in - 1]``; returns ``(i0, i1, lam)`` with ``value = (1 - lam) * v[i0] + lam * v[i1]``.
    Positions are computed exactly (integer numerator, float64 division).

    Example:
        >>> i0, i1, lam = linear_taps(2, 4)
        >>> i0.tolist(), i1.tolist(), lam.tolist()
        ([0, 0, 0, 1], [1, 1, 1, 1], [0.0, 0.25, 0.75, 0.0])
    """
    o = np.arange(size_out, dtype=np.int64)
    p = np.clip(((2 * o + 1) * size_in - size_out) / (2.0 * size_out), 0.0, size_in - 1.0)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, p - i0


def _lerp(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(1 - lam) a + lam b``, exactly ``a`` where ``a == b`` or ``lam == 0`` (keeps constants
    and infinities)."""
    mixed = (1.0 - lam) * a + lam * b
    return torch.where((a == b) | (lam == 0), a, mixed)


def bilinear_resample(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear point sampling of ``(N, h, w)`` float maps at the pixel centres of ``size``.

    The same sampling positions as ``F.interpolate(mode="bilinear", align_corners=False)``
    without antialias, but computed in float64 and separably, so constant regions (including
    ``-inf``) stay exactly constant and integer positions return the input value unchanged.

    Args:
        values: float ``(N, h, w)``.
        size: output ``(H, W)``.

    Returns:
        float ``(N, H, W)`` of the input dtype.

    Example:
        >>> import torch
        >>> bilinear_resample(torch.tensor([[[0.0, 4.0]]]), (1, 4))
        tensor([[[0., 1., 3., 4.]]])
    """
    n, h, w = values.shape
    if (h, w) == tuple(size):
        return values.clone()
    r0, r1, ry = (torch.from_numpy(a) for a in linear_taps(h, size[0]))
    c0, c1, cx = (torch.from_numpy(a) for a in linear_taps(w, size[1]))
    rows = _lerp(values[:, r0, :], values[:, r1, :], ry.to(values.dtype)[None, :, None])
    return _lerp(rows[:, :, c0], rows[:, :, c1], cx.to(values.dtype)[None, None, :])


def mask_to_frame(mask: ArrayLike, layout: SliceLayout) -> torch.Tensor:
    """One slice's mask ``(h, w)`` to model resolution ``(S, S)`` (nearest, same padding).

    Args:
        mask: bool or integer ``(h, w) == layout.slice_shape``; non-zero is foreground.
        layout: the layout.

    Returns:
        bool ``(S, S)`` CPU tensor; padding is False.

    Example:
        >>> import numpy as np
        >>> lay = make_layout((1, 2, 2), axis=0, image_size=32)
        >>> int(mask_to_frame(np.eye(2, dtype=bool), lay).sum())
        512
    """
    m = _as_numpy(mask, "mask")
    if m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer):
        raise InvalidTypeError(f"mask: expected a bool or integer array, got dtype {m.dtype}")
    if m.shape != layout.slice_shape:
        raise ShapeMismatchError(f"mask: expected shape {layout.slice_shape} (one slice), got {m.shape}")
    (h, w), (nh, nw), (top, left) = layout.slice_shape, layout.resized_shape, layout.pad
    resized = (m != 0)[np.ix_(nearest_indices(h, nh), nearest_indices(w, nw))]
    out = torch.zeros((layout.image_size, layout.image_size), dtype=torch.bool)
    out[top : top + nh, left : left + nw] = torch.from_numpy(np.ascontiguousarray(resized))
    return out


def frames_to_slices(
    values: ArrayLike | Mapping[int, ArrayLike],
    layout: SliceLayout,
    *,
    fill: float = float("-inf"),
    name: str = "logits",
) -> np.ndarray:
    """Per-frame values at model resolution back to the voxel grid (the core of the inverse).

    Float values (logits) are bilinearly point-sampled (:func:`bilinear_resample`) at each voxel's
    exact frame position inside the unpadded region; bool values use exact nearest neighbour.

    Args:
        values: ``(T, S, S)`` in frame order, or a mapping ``{t: (S, S)}`` (missing frames get
            ``fill``); float (no NaN) or bool, numpy or torch.
        layout: the layout.
        fill: value of slices no frame covers for float input; bool input always fills False.
        name: argument name for messages.

    Returns:
        ``(D, H, W)`` float32 (float input) or bool (bool input) numpy array.

    Example:
        >>> import numpy as np
        >>> lay = make_layout((3, 2, 2), axis=0, image_size=32, order=[2])
        >>> frames_to_slices(np.ones((1, 32, 32), np.float32), lay, fill=-1.0)[:, 0, 0].tolist()
        [-1.0, -1.0, 1.0]
    """
    size, t_count = layout.image_size, len(layout.slice_indices)
    frames: dict[int, torch.Tensor] = {}
    if isinstance(values, Mapping):
        for key, item in values.items():
            t = _frame_index(key, t_count, name=f"{name} key")
            frames[t] = _as_tensor(item, f"{name}[{key}]")
            if tuple(frames[t].shape) != (size, size):
                raise ShapeMismatchError(
                    f"{name}[{key}]: expected shape ({size}, {size}), got {tuple(frames[t].shape)}"
                )
        dense = None
    else:
        dense = _as_tensor(values, name)
        if tuple(dense.shape) != (t_count, size, size):
            raise ShapeMismatchError(
                f"{name}: expected shape ({t_count}, {size}, {size}) (T frames at model resolution), "
                f"got {tuple(dense.shape)}"
            )
        frames = {t: dense[t] for t in range(t_count)}
    dtypes = {f.dtype for f in frames.values()}
    is_bool = dtypes == {torch.bool}
    if not is_bool and not all(d.is_floating_point for d in dtypes):
        raise InvalidTypeError(f"{name}: expected float logits or bool masks, got dtypes {sorted(map(str, dtypes))}")
    if not is_bool and any(bool(torch.isnan(f).any()) for f in frames.values()):
        raise InvalidInputError(f"{name}: expected no NaN values, got NaN")

    h, w = layout.slice_shape
    (nh, nw), (top, left) = layout.resized_shape, layout.pad
    if is_bool:
        out = np.zeros((layout.num_slices, h, w), dtype=np.bool_)
    else:
        out = np.full((layout.num_slices, h, w), fill, dtype=np.float32)
    keys = sorted(frames)
    if is_bool:
        rows, cols = nearest_indices(nh, h) + top, nearest_indices(nw, w) + left
        for t in keys:
            out[layout.slice_indices[t]] = frames[t].cpu().numpy()[np.ix_(rows, cols)]
    else:
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            crop = torch.stack([frames[t].detach().cpu().float() for t in chunk])[:, top : top + nh, left : left + nw]
            out[[layout.slice_indices[t] for t in chunk]] = bilinear_resample(crop, (h, w)).numpy()
    return np.moveaxis(out, 0, layout.axis).copy()


# --------------------------------------------------------------------------------------------
# The sequence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FrameSequence:
    """Frames of a volume or cine ready for SAM2, with the exact way back to the voxel grid.

    Build it with :func:`sequence_volume` or :func:`sequence_frames`. What a SAM2 video predictor
    needs: ``len(seq)``, ``seq[t]`` -> float32 ``(3, S, S)`` (normalised as sam2 does) and
    ``seq.image_size``; the video size to give sam2 is ``(S, S)`` so that prompts in frame pixels
    are used as they are.

    Attributes:
        frames: uint8 ``(T, S, S)`` (gray) or ``(T, 3, S, S)`` (colour kept), CPU tensor.
        layout: the :class:`SliceLayout` (axis, order, scale, padding).
        window: the window used (``None`` = uint8 identity).
        geometry: a zero-memory :class:`Volume` (broadcast array) carrying the input's grid,
            affine, kind, frame times, modality and source.

    Example:
        >>> import numpy as np
        >>> seq = sequence_frames(np.zeros((2, 16, 16), np.uint8), image_size=32, window=None)
        >>> len(seq), seq.frames.shape, seq[1].dtype
        (2, torch.Size([2, 32, 32]), torch.float32)
    """

    frames: torch.Tensor = field(repr=False)
    layout: SliceLayout
    window: Window | None
    geometry: Volume = field(repr=False)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, t: int) -> torch.Tensor:
        """Frame ``t`` normalised as sam2 does: float32 ``(3, S, S)``."""
        idx = _frame_index(t, len(self), cls=FrameIndexError)
        return normalize_frames(self.frames[idx : idx + 1])[0]

    @property
    def image_size(self) -> int:
        """The frame side ``S``."""
        return self.layout.image_size

    @property
    def slice_indices(self) -> tuple[int, ...]:
        """Frame ``t`` shows slice ``slice_indices[t]``."""
        return self.layout.slice_indices

    @property
    def grey_frames(self) -> torch.Tensor:
        """uint8 ``(T, S, S)``: the frames, colour ones as the rounded mean of their channels."""
        return self.frames if self.frames.ndim == 3 else self.frames.float().mean(1).round().to(torch.uint8)

    @property
    def affine(self) -> np.ndarray:
        """The input's ``(4, 4)`` voxel-to-world affine."""
        return self.geometry.affine

    def normalized(
        self, indices: Sequence[int] | torch.Tensor | None = None, *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Several frames at once, normalised: float32 ``(N, 3, S, S)``.

        Args:
            indices: frame indices (default: all frames).
            device: where to compute and return (the uint8 frames travel, not the floats).

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((3, 8, 8), np.uint8), image_size=32, window=None)
            >>> tuple(seq.normalized([2, 0]).shape)
            (2, 3, 32, 32)
        """
        if indices is None:
            chosen = self.frames
        else:
            idx = [_frame_index(i, len(self), cls=FrameIndexError) for i in _as_index_list(indices)]
            chosen = self.frames[idx]
        return normalize_frames(chosen, device=device)

    def frame_affine(self, t: int) -> np.ndarray:
        """``(4, 4)`` world geometry of frame ``t``: maps ``(x, y, z, 1)`` to RAS mm.

        ``x, y`` in frame pixels (SAM2 convention), ``z`` in voxel steps along the slicing axis.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((1, 16, 16), np.uint8), image_size=32, window=None)
            >>> (seq.frame_affine(0) @ [0.5, 0.5, 0, 1]).tolist()
            [0.0, 0.0, 0.0, 1.0]
        """
        return self.geometry.affine @ self.layout.frame_matrix(t)

    def frame_to_voxel(self, txy: npt.ArrayLike) -> np.ndarray:
        """``(..., 3)`` ``(t, x, y)`` -> ``(..., 3)`` voxel ``(i, j, k)``; see
        :meth:`SliceLayout.frame_to_voxel`.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((2, 16, 16), np.uint8), image_size=32, window=None)
            >>> seq.frame_to_voxel([1, 2.5, 0.5]).tolist()  # (t, x, y) -> (i, j, k)
            [1.0, 0.0, 1.0]
        """
        return self.layout.frame_to_voxel(txy)

    def voxel_to_frame(self, ijk: npt.ArrayLike) -> np.ndarray:
        """``(..., 3)`` voxel ``(i, j, k)`` -> ``(..., 3)`` ``(t, x, y)``; see
        :meth:`SliceLayout.voxel_to_frame`.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((2, 16, 16), np.uint8), image_size=32, window=None)
            >>> seq.voxel_to_frame([1, 0, 1]).tolist()  # (i, j, k) -> (t, x, y)
            [1.0, 2.5, 0.5]
        """
        return self.layout.voxel_to_frame(ijk)

    def frame_to_world(self, txy: npt.ArrayLike) -> np.ndarray:
        """``(..., 3)`` ``(t, x, y)`` -> ``(..., 3)`` world RAS mm.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((2, 16, 16), np.uint8), image_size=32, window=None)
            >>> seq.frame_to_world([1, 0.5, 0.5]).tolist()
            [1.0, 0.0, 0.0]
        """
        ijk = self.layout.frame_to_voxel(txy)
        a = self.geometry.affine
        return ijk @ a[:3, :3].T + a[:3, 3]

    def frame_of_slice(self, slice_index: int) -> int:
        """The frame showing slice ``slice_index`` (error if the sequence skips it).

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((3, 8, 8), np.uint8), image_size=32, window=None, order="reverse")
            >>> seq.frame_of_slice(0)
            2
        """
        return self.layout.frame_of_slice(slice_index)

    def mask_to_frame(self, mask: ArrayLike) -> torch.Tensor:
        """A mask prompt: one slice's bool mask ``(h, w)`` -> bool ``(S, S)``; see
        :func:`mask_to_frame`.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((1, 8, 16), np.uint8), image_size=32, window=None)
            >>> m = seq.mask_to_frame(np.ones((8, 16), bool))
            >>> int(m.sum()), int(m[:8].sum())
            (512, 0)
        """
        return mask_to_frame(mask, self.layout)

    def points_to_frame(self, points: npt.ArrayLike) -> np.ndarray:
        """Point prompts ``(..., 2)`` ``(x, y)`` in slice voxels -> frame pixels.

        Every point must lie on the slice: ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``
        (the voxels' footprint; ``(H, W)`` = ``layout.slice_shape``). :meth:`SliceLayout.points_to_frame`
        is the unchecked mapping.

        Raises:
            InvalidInputError: a point off the slice (the point and the slice size are named).

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((1, 16, 16), np.uint8), image_size=32, window=None)
            >>> seq.points_to_frame([[0, 15]]).tolist()
            [[0.5, 30.5]]
        """
        arr = _coords(points, "points", last=2)
        h, w = self.layout.slice_shape
        off = (arr[..., 0] < -0.5) | (arr[..., 0] > w - 0.5) | (arr[..., 1] < -0.5) | (arr[..., 1] > h - 0.5)
        if off.any():
            bad = arr[off][0].tolist()
            raise InvalidInputError(
                f"points: expected (x, y) on the slice of {w} x {h} voxels (x in [-0.5, {w - 0.5}], "
                f"y in [-0.5, {h - 0.5}]; x is the column, y the row), got {bad}"
                f"{f' and {int(off.sum()) - 1} more off the slice' if off.sum() > 1 else ''}"
            )
        return self.layout.points_to_frame(arr)

    def boxes_to_frame(self, boxes: npt.ArrayLike) -> np.ndarray:
        """Box prompts ``(..., 4)`` XYXY in slice voxels -> frame pixels.

        The slice covers ``x`` in ``[-0.5, W - 0.5]`` and ``y`` in ``[-0.5, H - 0.5]`` (the voxels'
        footprint, ``(H, W)`` = ``layout.slice_shape``). A box must have ``x0 <= x1``,
        ``y0 <= y1`` and overlap the slice; the part outside it is clipped away. Overhanging by
        up to one voxel (e.g. ``max + 1`` as the far corner) is clipped silently; a larger
        overhang is clipped with a :class:`PromptClippedWarning`, as it usually means the box
        was drawn for another slice size or axis. :meth:`SliceLayout.boxes_to_frame` is the
        unchecked mapping.

        Raises:
            InvalidInputError: a box entirely off the slice, or with ``x1 < x0`` or ``y1 < y0``
                (the box and the slice size are named).

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((1, 16, 16), np.uint8), image_size=32, window=None)
            >>> seq.boxes_to_frame([0, 0, 15, 15]).tolist()
            [0.5, 0.5, 30.5, 30.5]
            >>> seq.boxes_to_frame([0, 0, 16, 16]).tolist()  # clipped to the slice's edge
            [0.5, 0.5, 31.5, 31.5]
        """
        arr = _coords(boxes, "boxes", last=4)
        h, w = self.layout.slice_shape
        size = f"the slice of {w} x {h} voxels (x in [-0.5, {w - 0.5}], y in [-0.5, {h - 0.5}])"
        flat = arr.reshape(-1, 4)
        reversed_ = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
        if reversed_.any():
            raise InvalidInputError(
                f"boxes: expected (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {flat[reversed_][0].tolist()}"
            )
        outside = (flat[:, 2] <= -0.5) | (flat[:, 0] >= w - 0.5) | (flat[:, 3] <= -0.5) | (flat[:, 1] >= h - 0.5)
        if outside.any():
            raise InvalidInputError(
                f"boxes: expected a box (x0, y0, x1, y1) that overlaps {size}, got {flat[outside][0].tolist()}, "
                "entirely outside it (x is the column, y the row)"
            )
        low = np.array([-0.5, -0.5, -0.5, -0.5])
        high = np.array([w - 0.5, h - 0.5, w - 0.5, h - 0.5])
        clipped = np.clip(flat, low, high)
        overhang = float(np.max(np.abs(clipped - flat))) if flat.size else 0.0
        if overhang > 1.0:
            import warnings

            worst = flat[np.argmax(np.max(np.abs(clipped - flat), axis=1))].tolist()
            warnings.warn(
                f"boxes: {worst} reaches {overhang:g} voxels beyond {size}; clipped to the slice",
                PromptClippedWarning,
                stacklevel=2,
            )
        return self.layout.boxes_to_frame(clipped.reshape(arr.shape))

    def to_volume_logits(
        self, logits: ArrayLike | Mapping[int, ArrayLike], *, fill: float = float("-inf")
    ) -> Volume:
        """Per-frame logits at model resolution -> float32 logits on the input's grid.

        Args:
            logits: float ``(T, S, S)`` in frame order, or ``{t: (S, S)}`` (missing frames are
                not covered); ``-inf``/``inf`` allowed, NaN not.
            fill: value for slices that no frame covers (default ``-inf``: probability 0).

        Returns:
            A :class:`Volume` with float32 ``(D, H, W)`` and the input's geometry.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((2, 8, 8), np.uint8), image_size=32, window=None)
            >>> seq.to_volume_logits({1: np.ones((32, 32), np.float32)}).array[:, 0, 0].tolist()
            [-inf, 1.0]
        """
        arr = frames_to_slices(logits, self.layout, fill=float(fill), name="logits")
        if arr.dtype != np.float32:
            raise InvalidTypeError("logits: expected float values, got bool masks; use to_volume_mask")
        return self.geometry.with_array(arr)

    def to_volume_mask(self, logits_or_mask: ArrayLike | Mapping[int, ArrayLike], *, threshold: float = 0.0) -> Volume:
        """Per-frame logits or bool masks at model resolution -> bool mask on the input's grid.

        Float logits are resampled first (as :meth:`to_volume_logits`), then ``> threshold``;
        bool masks use exact nearest neighbour. Uncovered slices are False.

        Args:
            logits_or_mask: ``(T, S, S)`` float or bool, or ``{t: (S, S)}``.
            threshold: logit threshold (0 = probability 0.5).

        Returns:
            A :class:`Volume` with bool ``(D, H, W)`` and the input's geometry.

        Example:
            >>> import numpy as np
            >>> seq = sequence_frames(np.zeros((2, 8, 8), np.uint8), image_size=32, window=None)
            >>> int(seq.to_volume_mask(np.ones((2, 32, 32), bool)).array.sum())
            128
        """
        arr = frames_to_slices(logits_or_mask, self.layout, name="logits_or_mask")
        if arr.dtype != np.bool_:
            arr = arr > float(threshold)
        return self.geometry.with_array(arr)


def sequence_volume(
    volume: Volume | ArrayLike,
    *,
    axis: int | None = None,
    image_size: int = 1024,
    window: WindowSpec = PercentileWindow(),
    resize: ResizeMode = "pad",
    order: Sequence[int] | Literal["forward", "reverse"] | None = None,
    affine: npt.ArrayLike | None = None,
) -> FrameSequence:
    """A volume (or a cine :class:`Volume`) as a SAM2 frame sequence.

    Args:
        volume: a :class:`Volume`, or a ``(D, H, W)`` real array (numpy or torch) with ``affine``.
        axis: slicing axis (default: :func:`default_axis`); a cine must use 0.
        image_size: frame side ``S``, a positive multiple of :data:`SIZE_MULTIPLE` (default 1024).
        window: see :func:`resolve_window`; default percentile clipping 0.5 / 99.5 %.
        resize: ``"pad"`` (keep aspect, default) or ``"squash"`` (as sam2).
        order: slice indices frame by frame (e.g. a run of :func:`frame_order`), ``"forward"``
            (default) or ``"reverse"``.
        affine: ``(4, 4)`` voxel-to-world matrix for a bare array (default identity); not allowed
            with a :class:`Volume`.

    Returns:
        The :class:`FrameSequence`.

    Example:
        >>> import numpy as np
        >>> ct = np.full((2, 8, 8), 40.0, np.float32)
        >>> seq = sequence_volume(ct, image_size=32, window="soft_tissue")
        >>> int(seq.frames[0, 16, 16])
        128
    """
    if isinstance(volume, Volume):
        if affine is not None:
            raise InvalidInputError("affine: expected None when volume is a Volume (it has its own affine)")
        vol = volume
    else:
        data = _as_numpy(volume, "volume")
        if data.ndim != 3:
            raise InvalidInputError(f"volume: expected 3 dimensions (D, H, W), got shape {data.shape}")
        vol = Volume(data, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
    if vol.kind == "cine":
        if axis not in (None, 0):
            raise InvalidInputError(f"axis: a cine is sliced along axis 0 (time), got axis={axis}")
        ax = 0
    else:
        ax = default_axis(vol) if axis is None else check_axis(axis)
    return _build(vol, vol.array[None], axis=ax, image_size=image_size, window=window, resize=resize, order=order)


def sequence_frames(
    frames: ArrayLike,
    *,
    image_size: int = 1024,
    window: WindowSpec = PercentileWindow(),
    resize: ResizeMode = "pad",
    order: Sequence[int] | Literal["forward", "reverse"] | None = None,
    color: FrameColor = "gray",
    affine: npt.ArrayLike | None = None,
    frame_times: Sequence[float] | None = None,
) -> FrameSequence:
    """A 2D frame stack or cine ``(T, H, W)`` / ``(T, H, W, 3)`` as a SAM2 frame sequence.

    The result's voxel grid is ``(T, H, W)`` (kind ``"cine"``, axis 0 = time); the inverse returns
    masks of that shape.

    Args:
        frames: real ``(T, H, W)`` gray or ``(T, H, W, 3)`` RGB frames, numpy or torch.
        image_size: frame side ``S``, a positive multiple of :data:`SIZE_MULTIPLE`.
        window: see :func:`resolve_window` (one window for all frames and channels); ``None`` for
            display-ready uint8.
        resize: ``"pad"`` or ``"squash"``.
        order: frame indices in visiting order, ``"forward"`` or ``"reverse"``.
        color: RGB input: ``"gray"`` (BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` before
            windowing, default) or ``"keep"`` (frames stored ``(T, 3, S, S)``).
        affine: ``(4, 4)`` matrix for the ``(T, H, W)`` grid (default identity).
        frame_times: acquisition time of each frame in ms.

    Returns:
        The :class:`FrameSequence`.

    Example:
        >>> import numpy as np
        >>> rgb = np.zeros((4, 20, 30, 3), np.uint8)
        >>> seq = sequence_frames(rgb, image_size=64, window=None, color="keep")
        >>> tuple(seq.frames.shape), seq.to_volume_mask(np.zeros((4, 64, 64), bool)).shape
        ((4, 3, 64, 64), (4, 20, 30))
    """
    data = _as_numpy(frames, "frames")
    if data.ndim == 4 and data.shape[-1] == 3:
        if color not in ("gray", "keep"):
            raise InvalidInputError(f"color: expected 'gray' or 'keep', got {color!r}")
        channels = np.moveaxis(data, -1, 0)  # (3, T, H, W)
        if color == "gray":
            _check_real(data, "frames")
            luma = sum(w * channels[c].astype(np.float64) for c, w in enumerate(_LUMA))
            luma_arr = np.asarray(luma)
            if data.dtype == np.uint8:
                luma_arr = np.clip(np.rint(luma_arr), 0, 255).astype(np.uint8)
            channels = luma_arr[None]
        grid = channels[0]
    elif data.ndim == 3:
        channels, grid = data[None], data
    else:
        raise InvalidInputError(f"frames: expected shape (T, H, W) or (T, H, W, 3), got {data.shape}")
    mat = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    geometry = Volume(
        np.broadcast_to(np.zeros((), np.uint8), grid.shape),
        mat,
        kind="cine",
        frame_times=None if frame_times is None else tuple(frame_times),
    )
    return _build(geometry, channels, axis=0, image_size=image_size, window=window, resize=resize, order=order)


def _build(
    geometry: Volume,
    channels: np.ndarray,
    *,
    axis: int,
    image_size: int,
    window: WindowSpec,
    resize: ResizeMode,
    order: Sequence[int] | Literal["forward", "reverse"] | None,
) -> FrameSequence:
    """Shared core: ``channels`` is ``(C, D, H, W)`` with C in {1, 3}."""
    _check_real(channels, "volume" if geometry.kind == "volume" else "frames")
    layout = make_layout(geometry.shape, axis=axis, image_size=image_size, resize=resize, order=order)
    win = resolve_window(window, channels)
    c = channels.shape[0]
    out = torch.empty((len(layout.slice_indices), c, layout.image_size, layout.image_size), dtype=torch.uint8)
    slices = list(layout.slice_indices)
    for start in range(0, len(slices), _CHUNK):
        chunk = slices[start : start + _CHUNK]
        block = np.take(channels, chunk, axis=axis + 1)  # (C, n, ...) with the slice axis at axis + 1
        block = np.moveaxis(block, axis + 1, 1)  # (C, n, h, w)
        display = torch.from_numpy(np.ascontiguousarray(_display_float(block, win))).transpose(0, 1)
        out[start : start + len(chunk)] = resize_slices(display.contiguous(), layout)
    frames = out[:, 0] if c == 1 else out
    template = geometry.with_array(np.broadcast_to(np.zeros((), np.uint8), geometry.shape))
    return FrameSequence(frames=frames.contiguous(), layout=layout, window=win, geometry=template)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is a positive multiple of :data:`SIZE_MULTIPLE`, else raise.

    Example:
        >>> check_image_size(1024)
        1024
    """
    size = check_int(image_size, "image_size", minimum=1)
    if size % SIZE_MULTIPLE:
        raise InvalidInputError(
            f"image_size: expected a positive multiple of {SIZE_MULTIPLE} (SAM2's image encoder stride), "
            f"got {size}"
        )
    return size


def _frame_index(
    t: object, count: int, *, name: str = "t", cls: type[MedSAM2KitError] = InvalidInputError
) -> int:
    idx = check_int(t, name)
    if idx < 0:
        idx += count
    if not 0 <= idx < count:
        raise cls(f"{name}: expected a frame index in [0, {count - 1}] (or negative from the end), got {t}")
    return idx


def _check_order(order: Sequence[int] | str | None, n: int) -> tuple[int, ...]:
    if order is None or (isinstance(order, str) and order == "forward"):
        return tuple(range(n))
    if isinstance(order, str):
        if order == "reverse":
            return tuple(range(n - 1, -1, -1))
        raise InvalidInputError(
            f"order: expected 'forward', 'reverse' or a sequence of slice indices "
            f"(use frame_order() for {order!r} and build one sequence per run), got {order!r}"
        )
    slices = tuple(check_int(s, "order") for s in _as_index_list(order))
    if not slices:
        raise InvalidInputError("order: expected at least one slice index, got an empty sequence")
    bad = [s for s in slices if not 0 <= s < n]
    if bad:
        raise InvalidInputError(f"order: expected slice indices in [0, {n - 1}], got {bad}")
    if len(set(slices)) != len(slices):
        dup = sorted({s for s in slices if slices.count(s) > 1})
        raise InvalidInputError(f"order: expected distinct slice indices, got repeated {dup}")
    return slices


def _as_index_list(indices: Sequence[int] | torch.Tensor | np.ndarray) -> list[int]:
    if isinstance(indices, (torch.Tensor, np.ndarray)):
        return [int(i) for i in indices.reshape(-1).tolist()]
    return list(indices)


def _as_numpy(array: object, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise InvalidTypeError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")


def _as_tensor(array: object, name: str) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach()
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    raise InvalidTypeError(f"{name}: expected a numpy array or torch tensor, got {type(array).__name__}")


def _check_real(array: np.ndarray, name: str) -> None:
    if array.dtype == np.bool_:
        return
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidTypeError(f"{name}: expected a real numeric dtype, got {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InvalidInputError(f"{name}: expected finite values, got {bad} NaN/inf value(s) in shape {array.shape}")


class PromptClippedWarning(UserWarning):
    """A box prompt reached more than one voxel beyond its slice and was clipped to it."""


def _coords(values: npt.ArrayLike, name: str, *, last: int = 3) -> np.ndarray:
    arr = np.asarray(values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if arr.ndim < 1 or arr.shape[-1] != last:
        raise ShapeMismatchError(f"{name}: expected shape (..., {last}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: expected finite coordinates, got {arr.tolist()}")
    return arr


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SIZE_MULTIPLE",
    "SPACING_RTOL",
    "WINDOW_PRESETS",
    "FrameColor",
    "FrameIndexError",
    "FrameSequence",
    "PercentileWindow",
    "PromptClippedWarning",
    "SliceLayout",
    "Window",
    "WindowSpec",
    "apply_window",
    "check_image_size",
    "default_axis",
    "default_window",
    "frame_order",
    "bilinear_resample",
    "frames_to_slices",
    "linear_taps",
    "make_layout",
    "mask_to_frame",
    "nearest_indices",
    "normalize_frames",
    "resize_slices",
    "display_ready",
    "resolve_window",
    "sequence_frames",
    "sequence_volume",
]
