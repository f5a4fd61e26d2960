"""The value that carries a 3D array together with its geometry.

A :class:`Volume` is what :mod:`medsam2kit.io` reads and what every other component passes
around: the voxel array in the file's own voxel order (no reorientation), the 4x4 affine that
maps voxel indices ``(i, j, k, 1)`` along array axes ``(0, 1, 2)`` to world coordinates in mm
(RAS+, the NIfTI convention; DICOM's LPS is converted on reading), and for ultrasound cines the
frame times. Spacing is derived from the affine, so the two can never disagree.

Example:
    >>> import numpy as np
    >>> from medsam2kit.volume import Volume
    >>> vol = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 1.0, 0.5, 1.0]))
    >>> vol.shape, vol.spacing
    ((4, 5, 6), (2.0, 1.0, 0.5))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from medsam2kit.errors import GeometryError, InvalidInputError, InvalidTypeError, ShapeMismatchError

VolumeKind = Literal["volume", "cine"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array with its voxel-to-world geometry.

    Attributes:
        array: ``(D, H, W)`` voxels in the file's voxel order; any real or integer dtype
            (images are usually float32, label maps integer).
        affine: ``(4, 4)`` float64 matrix mapping ``(i, j, k, 1)`` voxel indices to RAS+ mm.
        kind: ``"volume"`` for CT/MRI, ``"cine"`` for an ultrasound clip whose axis 0 is time.
        frame_times: for a cine, the acquisition time of each frame in ms when the file has it.
        source: the path it was read from, for messages.
        modality: DICOM-style modality (``"CT"``, ``"MR"``, ``"US"``, ...) when known.
    """

    array: np.ndarray
    affine: np.ndarray
    kind: VolumeKind = "volume"
    frame_times: tuple[float, ...] | None = None
    source: str | None = None
    modality: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise InvalidTypeError(f"array: expected a numpy.ndarray, got {type(self.array).__name__}")
        if self.array.ndim != 3:
            raise InvalidInputError(
                f"array: expected 3 dimensions (D, H, W), got shape {self.array.shape}"
                f"{' from ' + self.source if self.source else ''}"
            )
        if not (np.issubdtype(self.array.dtype, np.number) or self.array.dtype == np.bool_):
            raise InvalidTypeError(f"array: expected a numeric dtype, got {self.array.dtype}")
        affine = np.asarray(self.affine, dtype=np.float64)
        check_affine(affine, name="affine")
        object.__setattr__(self, "affine", affine)
        if self.kind not in ("volume", "cine"):
            raise InvalidInputError(f"kind: expected 'volume' or 'cine', got {self.kind!r}")
        if self.frame_times is not None:
            times = tuple(float(t) for t in self.frame_times)
            if len(times) != self.array.shape[0]:
                raise ShapeMismatchError(
                    f"frame_times: expected {self.array.shape[0]} values (one per frame), got {len(times)}"
                )
            object.__setattr__(self, "frame_times", times)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The array shape ``(D, H, W)``."""
        d, h, w = self.array.shape
        return (int(d), int(h), int(w))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along array axes 0, 1, 2 (the norms of the affine's columns)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> str:
        """Axis codes of the array axes in RAS+ world terms (e.g. ``"RAS"``, ``"LPS"``), from
        :func:`nibabel.orientations.aff2axcodes`.

        Example:
            >>> import numpy as np
            >>> Volume(np.zeros((2, 3, 4)), np.diag([-1.0, -1.0, 1.0, 1.0])).orientation
            'LPS'
        """
        from nibabel.orientations import aff2axcodes

        return "".join(str(c) for c in aff2axcodes(self.affine))

    def __repr__(self) -> str:
        """A one-line summary (never the voxels): shape, dtype, spacing, orientation, kind, and
        the modality and source when known.

        Example:
            >>> import numpy as np
            >>> Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 1.0, 0.5, 1.0]))
            Volume(shape=(4, 5, 6), dtype=float32, spacing=(2, 1, 0.5) mm, orientation='RAS', kind='volume')
        """
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        extra = "".join(f", {k}={v!r}" for k, v in (("modality", self.modality), ("source", self.source)) if v)
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({spacing}) mm, "
            f"orientation={self.orientation!r}, kind={self.kind!r}{extra})"
        )

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume on the same grid with another array (same shape required).

        Args:
            array: ``(D, H, W)`` array of the same shape as ``self.array``.

        Returns:
            A new :class:`Volume` that shares this one's geometry and metadata.

        Example:
            >>> import numpy as np
            >>> v = Volume(np.zeros((2, 3, 4)), np.eye(4))
            >>> v.with_array(np.ones((2, 3, 4), np.uint8)).array.dtype
            dtype('uint8')
        """
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ShapeMismatchError(
                f"array: expected shape {self.array.shape} (the volume's grid), got {array.shape}"
            )
        return replace(self, array=array)

    def same_grid(self, other: Volume, *, atol: float = 1e-4) -> bool:
        """Whether ``other`` has the same shape and (within ``atol`` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol, rtol=0.0))


def check_affine(affine: np.ndarray, *, name: str = "affine") -> None:
    """Raise :class:`GeometryError` unless ``affine`` is a finite, invertible 4x4 voxel-to-world matrix.

    Example:
        >>> import numpy as np
        >>> check_affine(np.eye(4))
    """
    if affine.shape != (4, 4):
        raise GeometryError(f"{name}: expected shape (4, 4), got {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise GeometryError(f"{name}: expected finite values, got {affine.tolist()}")
    if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
        raise GeometryError(f"{name}: expected last row [0, 0, 0, 1], got {affine[3].tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise GeometryError(f"{name}: expected an invertible 3x3 part, got {affine[:3, :3].tolist()}")



LABEL_ATOL_MM = 1e-3
"""How far (mm, per affine entry) a label map's affine may differ from its image's."""


def array_on_grid(values: np.ndarray | Volume, like: Volume, *, name: str = "mask") -> np.ndarray:
    """The array of ``values`` checked to lie on ``like``'s grid: a bare array must have
    ``like``'s shape; a :class:`Volume` must also have its affine (:func:`check_same_grid`).

    The one check of every writer that places a label map on an image's grid
    (:func:`medsam2kit.io.save_mask`, :func:`medsam2kit.dicom_seg.save_dicom_seg`).

    Raises:
        ShapeMismatchError: the shapes differ (names ``name`` and ``like``'s source).
        GeometryError: a Volume on another grid.

    Example:
        >>> import numpy as np
        >>> like = Volume(np.zeros((2, 3, 4)), np.eye(4))
        >>> array_on_grid(np.ones((2, 3, 4), bool), like).shape
        (2, 3, 4)
    """
    if isinstance(values, Volume):
        check_same_grid(values, like, name=name)
        values = values.array
    arr = np.asarray(values)
    if arr.shape != like.shape:
        raise ShapeMismatchError(f"{name}: expected shape {like.shape} (the grid of {like.source or 'like'}), got {arr.shape}")
    return arr


def check_same_grid(label: Volume, image: Volume, *, name: str = "label", atol: float = LABEL_ATOL_MM) -> None:
    """Raise unless ``label`` lies on the grid of ``image``: same shape, affines within ``atol`` mm.

    The one check used wherever an (image, label) pair comes in: :func:`medsam2kit.io.load_label`,
    :meth:`medsam2kit.coarse.CoarseSegmenter.fit` and :meth:`medsam2kit.fewshot.SupportBank.build`.

    Raises:
        ShapeMismatchError: the shapes differ (both named).
        GeometryError: the affines differ by more than ``atol`` (the largest difference and both
            affines named), e.g. a label shifted by a few mm from its image.

    Example:
        >>> import numpy as np
        >>> img = Volume(np.zeros((2, 3, 4)), np.eye(4))
        >>> check_same_grid(Volume(np.zeros((2, 3, 4), np.uint8), np.eye(4)), img)
    """
    label_name = label.source or "<in memory>"
    image_name = image.source or "<in memory>"
    if label.shape != image.shape:
        raise ShapeMismatchError(
            f"{name} {label_name} has shape {label.shape} but image {image_name} has shape {image.shape}"
        )
    diff = float(np.max(np.abs(label.affine - image.affine)))
    if not diff <= atol:
        raise GeometryError(
            f"{name} {label_name} and image {image_name} have different affines (max difference {diff:.6g}"
            f" > {atol} mm): {name} {np.round(label.affine, 4).tolist()}, image "
            f"{np.round(image.affine, 4).tolist()}"
        )


__all__ = ["LABEL_ATOL_MM", "Volume", "VolumeKind", "check_affine", "check_same_grid"]
