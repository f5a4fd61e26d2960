"""Tests of medsam2kit.io: readers, label loading and atomic mask writing."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

import medsam2kit.io as mio
from medsam2kit.errors import (
    FileFormatError,
    GeometryError,
    InvalidInputError,
    InvalidTypeError,
    MissingDependencyError,
    MissingFileError,
    ShapeMismatchError,
)
from medsam2kit.io import load_label, load_volume, save_mask
from medsam2kit.volume import Volume

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------
# helpers: synthetic DICOM
# ------------------------------------------------------------------------------------------


def _nii(path: Path) -> Any:
    """nibabel.load, typed loosely (its stubs return the generic FileBasedImage)."""
    return nib.load(str(path))


def _ds(values: Sequence[float] | np.ndarray) -> list[str]:
    """Numbers as DICOM DS strings (<= 16 characters)."""
    return [f"{v:.8f}"[:16] for v in values]


def _parsed(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.array([float(s) for s in _ds(values)])


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _file_meta(sop_class: Any) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base_dataset(path: Path, sop_class: Any, modality: str, series_uid: str) -> FileDataset:
    meta = _file_meta(sop_class)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Phantom^Test"
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, *, signed: bool = True) -> None:
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    ipp: Sequence[float],
    iop: Sequence[float],
    spacing: Sequence[float] = (0.7, 0.9),
    series_uid: str = "1.2.3.4.5",
    slope: float | None = None,
    intercept: float | None = None,
    sop_class: str = MRImageStorage,
    modality: str = "MR",
) -> None:
    ds = _base_dataset(path, sop_class, modality, series_uid)
    ds.ImagePositionPatient = _ds(ipp)
    ds.ImageOrientationPatient = _ds(iop)
    ds.PixelSpacing = _ds(spacing)
    ds.SliceThickness = "2.5"
    if slope is not None:
        ds.RescaleSlope = _ds([slope])[0]
        ds.RescaleIntercept = _ds([intercept or 0.0])[0]
    _set_pixels(ds, pixels)
    ds.save_as(path, enforce_file_format=True)


def make_series(
    folder: Path,
    *,
    n: int = 6,
    rows: int = 5,
    cols: int = 7,
    rot: np.ndarray | None = None,
    step: float = 2.5,
    tilt: Sequence[float] = (0.0, 0.0),
    origin: Sequence[float] = (-100.0, 40.0, 12.5),
    spacing: Sequence[float] = (0.7, 0.9),
    series_uid: str = "1.2.3.4.5",
    rescale: bool = False,
    positions: Sequence[float] | None = None,
    rng: np.random.Generator | None = None,
    sop_class: str = MRImageStorage,
    modality: str = "MR",
    prefix: str = "",
) -> dict[str, Any]:
    """Write a series in shuffled file order; return what the reader should produce."""
    rng = np.random.default_rng(0) if rng is None else rng
    rot = np.eye(3) if rot is None else rot
    row_cos, col_cos = rot[:, 0], rot[:, 1]
    normal = np.cross(row_cos, col_cos)
    iop = [*row_cos, *col_cos]
    offsets = np.arange(n) * step if positions is None else np.asarray(positions, dtype=float)
    in_plane = np.asarray(tilt[0]) * row_cos + np.asarray(tilt[1]) * col_cos
    ipps = [np.asarray(origin) + off * normal + k * in_plane for k, off in enumerate(offsets)]
    raw = rng.integers(-500, 1500, size=(n, rows, cols)).astype(np.int16)
    slopes = rng.uniform(0.5, 2.0, n) if rescale else np.ones(n)
    intercepts = rng.uniform(-1024, 10, n) if rescale else np.zeros(n)
    names = rng.permutation(n)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        write_slice(
            folder / f"{prefix}{names[k]:03d}.dcm",
            raw[k],
            ipp=ipps[k],
            iop=iop,
            spacing=spacing,
            series_uid=series_uid,
            slope=float(slopes[k]) if rescale else None,
            intercept=float(intercepts[k]) if rescale else None,
            sop_class=sop_class,
            modality=modality,
        )
    expected = np.stack(
        [raw[k] * _parsed([slopes[k]])[0] + _parsed([intercepts[k]])[0] for k in range(n)]
    ).astype(np.float32)
    return {
        "raw": raw,
        "expected": expected,
        "ipps": [_parsed(p) for p in ipps],
        "iop": _parsed(iop),
        "spacing": _parsed(spacing),
    }


def closed_form(info: dict[str, Any], k: int, r: int, c: int) -> np.ndarray:
    """World RAS of voxel (k, r, c): IPP_k + c*dc*row + r*dr*col, LPS -> RAS."""
    iop = info["iop"]
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    dr, dc = info["spacing"]
    lps = info["ipps"][k] + c * dc * row + r * dr * col
    return np.array([-lps[0], -lps[1], lps[2]])


def check_closed_form(vol: Volume, info: dict[str, Any]) -> None:
    d, h, w = vol.shape
    for k in range(d):
        for r, c in [(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1), (h // 2, w // 3)]:
            got = (vol.affine @ [k, r, c, 1.0])[:3]
            np.testing.assert_allclose(got, closed_form(info, k, r, c), atol=1e-4)


OBLIQUE = _rotation(0.3, -0.45, 1.1)
SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # row A, col I


# ------------------------------------------------------------------------------------------
# DICOM series
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rot", [np.eye(3), SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"])
def test_dicom_series_affine_closed_form_and_order(tmp_path: Path, rot: np.ndarray) -> None:
    info = make_series(tmp_path / "s", rot=rot, rescale=True)
    vol = load_volume(tmp_path / "s")
    assert vol.kind == "volume" and vol.modality == "MR"
    assert vol.array.dtype == np.float32 and vol.shape == (6, 5, 7)
    np.testing.assert_allclose(vol.array, info["expected"], rtol=1e-6, atol=1e-3)  # rescale per slice
    check_closed_form(vol, info)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.7, 0.9), atol=1e-5)
    assert vol.source == str(tmp_path / "s")


def test_dicom_series_reversed_positions_and_gantry_tilt(tmp_path: Path) -> None:
    # positions listed high-to-low and shifted in-plane per slice (tilt): sheared affine
    info = make_series(tmp_path / "s", rot=OBLIQUE, positions=[10, 7.5, 5, 2.5, 0], tilt=(0.4, -0.2), n=5)
    vol = load_volume(tmp_path / "s")
    # sorted ascending along the normal: file order reversed
    np.testing.assert_array_equal(vol.array, info["expected"][::-1])
    info["ipps"] = info["ipps"][::-1]
    check_closed_form(vol, info)


def test_dicom_series_without_rescale_is_float32(tmp_path: Path) -> None:
    info = make_series(tmp_path / "s", n=3)
    vol = load_volume(tmp_path / "s")
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, info["raw"].astype(np.float32))


def test_dicom_series_ignores_non_dicom_files(tmp_path: Path) -> None:
    make_series(tmp_path / "s", n=3)
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    assert load_volume(tmp_path / "s").shape[0] == 3


def test_dicom_several_series_error_and_pick(tmp_path: Path) -> None:
    make_series(tmp_path / "s", n=3, series_uid="1.2.3.111", prefix="a")
    make_series(tmp_path / "s", n=4, series_uid="1.2.3.222", prefix="b")
    with pytest.raises(InvalidInputError, match="2 DICOM series") as err:
        load_volume(tmp_path / "s")
    assert "1.2.3.111" in str(err.value) and "1.2.3.222" in str(err.value)
    assert load_volume(tmp_path / "s", series_uid="1.2.3.222").shape[0] == 4
    assert load_volume(tmp_path / "s", series_uid="1.2.3.111").shape[0] == 3
    with pytest.raises(InvalidInputError, match="1.2.3.999"):
        load_volume(tmp_path / "s", series_uid="1.2.3.999")


@pytest.mark.parametrize(
    ("positions", "pattern"),
    [
        ([0, 2.5, 2.5, 5.0], "duplicated slice position"),
        ([0, 2.5, 5.0, 10.0, 12.5], "missing slice"),
        ([0, 2.5, 5.0, 6.5, 9.0], "uneven slice spacing"),
    ],
    ids=["duplicate", "missing", "uneven"],
)
def test_dicom_series_geometry_errors(tmp_path: Path, positions: list[float], pattern: str) -> None:
    make_series(tmp_path / "s", rot=OBLIQUE, positions=positions, n=len(positions))
    with pytest.raises(GeometryError, match=pattern) as err:
        load_volume(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value)


def test_dicom_mixed_orientation_is_error(tmp_path: Path) -> None:
    make_series(tmp_path / "s", n=3)
    write_slice(
        tmp_path / "s" / "x.dcm", np.zeros((5, 7)), ipp=[0, 0, 50], iop=[*OBLIQUE[:, 0], *OBLIQUE[:, 1]]
    )
    with pytest.raises(GeometryError, match="mixed orientations"):
        load_volume(tmp_path / "s")


def test_garbage_and_truncated_dicom(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"this is not a DICOM file at all" * 10)
    with pytest.raises(FileFormatError, match="bad.dcm"):
        load_volume(bad)
    folder = tmp_path / "s"
    make_series(folder, n=3)
    shutil.copy(bad, folder / "zzz.dcm")
    with pytest.raises(FileFormatError, match="zzz.dcm"):
        load_volume(folder)
    # a slice whose pixel data is cut short
    one = tmp_path / "one"
    make_series(one, n=1, rows=32, cols=32)
    f = next(one.iterdir())
    f.write_bytes(f.read_bytes()[:-500])
    with pytest.raises(FileFormatError, match="000.dcm"):
        load_volume(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileFormatError, match="no DICOM image"):
        load_volume(empty)


def test_single_slice_file_and_folder(tmp_path: Path) -> None:
    info = make_series(tmp_path / "s", n=1, rot=OBLIQUE, rescale=True)
    vol = load_volume(tmp_path / "s")
    assert vol.shape == (1, 5, 7)
    check_closed_form(vol, info)
    # the slice step of a single slice comes from SliceThickness (2.5) along the normal
    normal_ras = FLIP[:3, :3] @ np.cross(OBLIQUE[:, 0], OBLIQUE[:, 1])
    np.testing.assert_allclose(vol.affine[:3, 0], 2.5 * normal_ras, atol=1e-5)
    file_vol = load_volume(next((tmp_path / "s").iterdir()))
    np.testing.assert_array_equal(file_vol.array, vol.array)
    np.testing.assert_allclose(file_vol.affine, vol.affine)


# ------------------------------------------------------------------------------------------
# multi-frame DICOM (synthetic)
# ------------------------------------------------------------------------------------------


def _item(**kwargs: Any) -> Dataset:
    ds = Dataset()
    for k, v in kwargs.items():
        setattr(ds, k, v)
    return ds


def test_enhanced_multiframe_volume(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n, rows, cols = 5, 4, 6
    row_cos, col_cos = OBLIQUE[:, 0], OBLIQUE[:, 1]
    normal = np.cross(row_cos, col_cos)
    order = rng.permutation(n)  # frame f holds slice order[f]
    origin = np.array([10.0, -20.0, 30.0])
    raw = rng.integers(0, 1000, size=(n, rows, cols)).astype(np.uint16)
    path = tmp_path / "enh.dcm"
    ds = _base_dataset(path, EnhancedMRImageStorage, "MR", "1.2.9")
    shared = _item(
        PlaneOrientationSequence=DicomSequence([_item(ImageOrientationPatient=_ds([*row_cos, *col_cos]))]),
        PixelMeasuresSequence=DicomSequence([_item(PixelSpacing=_ds([0.5, 0.8]), SliceThickness="3.0")]),
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for f in range(n):
        ipp = origin + 3.0 * order[f] * normal
        per_frame.append(
            _item(
                PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=_ds(ipp))]),
                PixelValueTransformationSequence=DicomSequence(
                    [_item(RescaleSlope=str(f + 1), RescaleIntercept="-5", RescaleType="US")]
                ),
            )
        )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _set_pixels(ds, raw, signed=False)
    ds.save_as(path, enforce_file_format=True)

    vol = load_volume(path)
    assert vol.kind == "volume" and vol.shape == (n, rows, cols)
    for f in range(n):
        np.testing.assert_allclose(vol.array[order[f]], raw[f] * (f + 1) - 5.0)
    info = {
        "iop": _parsed([*row_cos, *col_cos]),
        "spacing": _parsed([0.5, 0.8]),
        "ipps": [_parsed(origin + 3.0 * k * normal) for k in range(n)],
    }
    check_closed_form(vol, info)


def _us_cine(path: Path, frames: np.ndarray, **extra: Any) -> None:
    ds = _base_dataset(path, UltrasoundMultiFrameImageStorage, "US", "1.2.8")
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.NumberOfFrames = frames.shape[0]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames.ndim == 4:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_us_cine_frame_time_vector_regions_and_color(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(4, 6, 8, 3)).astype(np.uint8)
    region = _item(
        RegionSpatialFormat=1,
        RegionDataType=1,
        RegionFlags=0,
        RegionLocationMinX0=0,
        RegionLocationMinY0=0,
        RegionLocationMaxX1=7,
        RegionLocationMaxY1=5,
        PhysicalUnitsXDirection=3,
        PhysicalUnitsYDirection=3,
        PhysicalDeltaX=0.02,
        PhysicalDeltaY=0.03,
    )
    path = tmp_path / "cine.dcm"
    _us_cine(
        path,
        rgb,
        FrameTimeVector=["0", "30", "35", "40"],
        SequenceOfUltrasoundRegions=DicomSequence([region]),
    )
    vol = load_volume(path)
    assert vol.kind == "cine" and vol.shape == (4, 6, 8) and vol.modality == "US"
    assert vol.frame_times == pytest.approx((0.0, 30.0, 65.0, 105.0))
    assert vol.spacing[1:] == pytest.approx((0.3, 0.2))  # rows: DeltaY 0.03 cm, columns: DeltaX 0.02 cm
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(vol.array, luma, atol=1e-3)
    mean = load_volume(path, color="mean")
    np.testing.assert_allclose(mean.array, rgb.mean(axis=-1), atol=1e-3)
    with pytest.raises(InvalidInputError, match="color='luma'"):
        load_volume(path, color="error")
    with pytest.raises(InvalidInputError, match="color"):
        load_volume(path, color="bogus")  # type: ignore[arg-type]


def test_us_cine_frame_time_and_default_spacing(tmp_path: Path) -> None:
    frames = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    path = tmp_path / "cine.dcm"
    _us_cine(path, frames, FrameTime="40.0")
    vol = load_volume(path)
    assert vol.kind == "cine" and vol.frame_times == (0.0, 40.0, 80.0)
    assert vol.spacing == pytest.approx((1.0, 1.0, 1.0))
    np.testing.assert_array_equal(vol.array, frames.astype(np.float32))


# ------------------------------------------------------------------------------------------
# pydicom's own test files
# ------------------------------------------------------------------------------------------


def _testdata(name: str) -> Path:
    from pydicom.data import get_testdata_file

    try:
        found = get_testdata_file(name)
    except (OSError, ValueError, RuntimeError) as err:  # pragma: no cover - no network
        pytest.skip(f"pydicom test file {name} unavailable: {err}")
    if found is None:
        pytest.skip(f"pydicom test file {name} is not installed (pydicom-data missing?)")
    return Path(str(found))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_single_slices(tmp_path: Path, name: str) -> None:
    src = _testdata(name)
    ds = pydicom.dcmread(src)
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(src, folder / name)
    vol = load_volume(folder)
    assert vol.shape == (1, ds.Rows, ds.Columns) and vol.array.dtype == np.float32
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_allclose(vol.array[0], expected)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], [-ipp[0], -ipp[1], ipp[2]], atol=1e-5)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    assert vol.spacing[1:] == pytest.approx((dr, dc))
    assert vol.modality == ds.Modality
    np.testing.assert_allclose(load_volume(src).affine, vol.affine)


def test_pydicom_emri_multiframe() -> None:
    src = _testdata("emri_small.dcm")
    ds = pydicom.dcmread(src)
    with pytest.warns(UserWarning, match="no plane positions"):
        vol = load_volume(src)
    # emri_small has 10 frames but no functional groups: a volume with placeholder geometry
    assert vol.kind == "volume" and vol.shape == (10, 64, 64)
    np.testing.assert_array_equal(vol.array, ds.pixel_array.astype(np.float32))
    assert vol.spacing[0] == pytest.approx(float(ds.SpacingBetweenSlices))


def test_pydicom_us1_uncr_rgb() -> None:
    src = _testdata("US1_UNCR.dcm")
    rgb = pydicom.dcmread(src).pixel_array.astype(np.float64)
    vol = load_volume(src)
    assert vol.kind == "cine" and vol.shape == (1, 480, 640) and vol.modality == "US"
    luma = rgb @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(vol.array[0], luma, atol=1e-3)
    with pytest.raises(InvalidInputError, match="US1_UNCR"):
        load_volume(src, color="error")


def test_pydicom_data_color_cine_jpeg() -> None:
    if importlib.util.find_spec("data_store") is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder (pillow or pylibjpeg) for color3d_jpeg_baseline.dcm")
    src = _testdata("color3d_jpeg_baseline.dcm")
    vol = load_volume(src)
    assert vol.kind == "cine" and vol.shape == (120, 480, 640) and vol.array.dtype == np.float32
    assert vol.frame_times is not None and vol.frame_times[:3] == pytest.approx((0.0, 33.333, 66.666))
    assert vol.spacing[1:] == pytest.approx((0.5104970559477806, 0.5104970559477806))
    rgb = pydicom.dcmread(src).pixel_array[::30].astype(np.float32)
    np.testing.assert_allclose(vol.array[::30], rgb @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-3)


# ------------------------------------------------------------------------------------------
# NIfTI reading
# ------------------------------------------------------------------------------------------


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, **scl: float) -> Path:
    img = nib.Nifti1Image(data, affine)
    if scl:
        img.header.set_slope_inter(scl["slope"], scl["inter"])
    nib.save(img, str(path))
    return path


def test_nifti_dtypes_and_squeeze(tmp_path: Path) -> None:
    aff = np.diag([1.5, 1.0, 2.0, 1.0])
    labels = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    v = load_volume(_save_nifti(tmp_path / "l.nii.gz", labels, aff))
    assert v.array.dtype == np.int16 and np.array_equal(v.array, labels)
    np.testing.assert_array_equal(v.affine, aff)
    scaled = load_volume(_save_nifti(tmp_path / "s.nii", labels, aff, slope=0.5, inter=1.0))
    assert scaled.array.dtype == np.float32
    np.testing.assert_allclose(scaled.array, labels * 0.5 + 1.0)
    f64 = load_volume(_save_nifti(tmp_path / "f.nii.gz", labels.astype(np.float64), aff))
    assert f64.array.dtype == np.float32
    sq = load_volume(_save_nifti(tmp_path / "sq.nii.gz", labels[..., None], aff))
    assert sq.shape == (2, 3, 4)


@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (5, 6)], ids=["4d", "2d"])
def test_nifti_not_3d(tmp_path: Path, shape: tuple[int, ...]) -> None:
    p = _save_nifti(tmp_path / "x.nii.gz", np.zeros(shape, np.float32), np.eye(4))
    with pytest.raises(InvalidInputError, match="expected 3D") as err:
        load_volume(p)
    assert "x.nii.gz" in str(err.value)


def test_nifti_nonfinite(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), np.float32)
    data[1, 2, 3] = np.nan
    p = _save_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(InvalidInputError, match=r"1 non-finite voxel.*\(1, 2, 3\)"):
        load_volume(p)
    assert np.isnan(load_volume(p, allow_nonfinite=True).array[1, 2, 3])


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    p = _save_nifti(
        tmp_path / "t.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)
    )
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FileFormatError, match="t.nii.gz"):
        load_volume(p)
    garbage = tmp_path / "g.nii"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(FileFormatError, match="g.nii"):
        load_volume(garbage)
    with pytest.raises(MissingFileError, match="nope.nii.gz"):
        load_volume(tmp_path / "nope.nii.gz")
    with pytest.raises(FileNotFoundError):  # the hierarchy keeps built-in semantics
        load_volume(tmp_path / "nope")
    other = tmp_path / "x.txt"
    other.write_text("hello")
    with pytest.raises(FileFormatError, match="unsupported"):
        load_volume(other)
    with pytest.raises(InvalidInputError, match="key"):
        load_volume(_save_nifti(tmp_path / "k.nii", np.zeros((2, 2, 2), np.uint8), np.eye(4)), key="image")


# ------------------------------------------------------------------------------------------
# NRRD
# ------------------------------------------------------------------------------------------


def test_nrrd_oblique_lps(tmp_path: Path) -> None:
    nrrd = pytest.importorskip("nrrd")
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    dirs = (OBLIQUE * [0.5, 0.7, 2.0]).T  # rows: the direction of axes 0, 1, 2
    origin = np.array([10.0, -5.0, 3.0])
    p = tmp_path / "x.nrrd"
    nrrd.write(
        str(p),
        data,
        {"space": "left-posterior-superior", "space directions": dirs, "space origin": origin},
        index_order="F",
    )
    vol = load_volume(p)
    np.testing.assert_array_equal(vol.array, data)
    expected = np.eye(4)
    expected[:3, :3] = dirs.T
    expected[:3, 3] = origin
    np.testing.assert_allclose(vol.affine, FLIP @ expected, atol=1e-9)
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(FileFormatError, match="x.nrrd"):
        load_volume(p)


def test_nrrd_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.nrrd"
    p.write_text("NRRD0004\n")
    monkeypatch.setitem(sys.modules, "nrrd", None)  # import nrrd -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install medsam2kit\[nrrd\]"):
        load_volume(p)


# ------------------------------------------------------------------------------------------
# npz
# ------------------------------------------------------------------------------------------


def test_npz_keys_affine_spacing(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    aff = np.array([[0, 0, 2.0, 1], [0, -1.0, 0, 2], [0.5, 0, 0, 3], [0, 0, 0, 1]])
    np.savez(tmp_path / "a.npz", volume=arr, affine=aff, other=arr * 2)
    v = load_volume(tmp_path / "a.npz")
    assert v.kind == "volume" and v.array.dtype == np.float32
    np.testing.assert_array_equal(v.affine, aff)
    assert np.array_equal(load_volume(tmp_path / "a.npz", key="other").array, arr * 2)
    with pytest.raises(InvalidInputError, match="missing"):
        load_volume(tmp_path / "a.npz", key="missing")
    np.savez(
        tmp_path / "b.npz",
        frames=arr.astype(np.uint8),
        spacing=np.array([1.0, 0.3, 0.2]),
        frame_times=np.array([0.0, 20.0]),
    )
    c = load_volume(tmp_path / "b.npz")
    assert c.kind == "cine" and c.array.dtype == np.uint8 and c.frame_times == (0.0, 20.0)
    assert c.spacing == pytest.approx((1.0, 0.3, 0.2))
    np.savez(tmp_path / "c.npz", nothing=arr)
    with pytest.raises(InvalidInputError, match="nothing"):
        load_volume(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", image=arr[0])
    with pytest.raises(InvalidInputError, match="expected 3D"):
        load_volume(tmp_path / "d.npz")
    (tmp_path / "e.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(FileFormatError, match="e.npz"):
        load_volume(tmp_path / "e.npz")


# ------------------------------------------------------------------------------------------
# load_label
# ------------------------------------------------------------------------------------------


def test_load_label_checks(tmp_path: Path) -> None:
    aff = np.diag([1.0, 2.0, 3.0, 1.0])
    image = load_volume(_save_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), aff))
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1:3, 2:4, 3:5] = 2.0
    ok = load_label(_save_nifti(tmp_path / "lab.nii.gz", lab, aff), like=image)
    assert ok.array.dtype == np.uint8 and set(np.unique(ok.array)) == {0, 2}
    np.testing.assert_array_equal(ok.affine, image.affine)
    with pytest.raises(ShapeMismatchError) as err:
        load_label(_save_nifti(tmp_path / "small.nii.gz", lab[:3], aff), like=image)
    assert "small.nii.gz" in str(err.value) and "img.nii.gz" in str(err.value)
    assert "(3, 5, 6)" in str(err.value) and "(4, 5, 6)" in str(err.value)
    shifted = aff.copy()
    shifted[0, 3] = 0.01
    with pytest.raises(GeometryError) as gerr:
        load_label(_save_nifti(tmp_path / "moved.nii.gz", lab, shifted), like=image)
    assert "moved.nii.gz" in str(gerr.value) and "img.nii.gz" in str(gerr.value)
    tiny = aff.copy()
    tiny[0, 3] = 5e-4  # within 1e-3 mm
    assert load_label(_save_nifti(tmp_path / "tiny.nii.gz", lab, tiny), like=image).shape == image.shape
    with pytest.raises(InvalidInputError, match="fractional"):
        load_label(_save_nifti(tmp_path / "frac.nii.gz", lab + 0.5, aff), like=image)
    with pytest.raises(InvalidInputError, match="non-negative"):
        load_label(_save_nifti(tmp_path / "neg.nii.gz", lab.astype(np.int16) - 1, aff), like=image)
    with pytest.raises(InvalidTypeError):
        load_label(tmp_path / "lab.nii.gz", like=np.zeros((4, 5, 6)))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# save_mask
# ------------------------------------------------------------------------------------------


def _grid_affine(
    perm: Sequence[int],
    signs: Sequence[int],
    zooms: Sequence[float],
    angles: Sequence[float],
    shear: float,
    shift: Sequence[float],
) -> np.ndarray:
    base = np.zeros((3, 3))
    for i, (p, s, z) in enumerate(zip(perm, signs, zooms)):
        base[p, i] = s * z
    lin = _rotation(*angles) @ base
    lin[:, 1] += shear * lin[:, 0]
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = shift
    return aff.astype(np.float32).astype(np.float64)  # NIfTI stores float32


@settings(max_examples=25, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    signs=st.lists(st.sampled_from([-1, 1]), min_size=3, max_size=3),
    zooms=st.lists(st.floats(0.3, 5.0), min_size=3, max_size=3),
    angles=st.lists(st.floats(-0.6, 0.6), min_size=3, max_size=3),
    shear=st.sampled_from([0.0, 0.0, 0.2]),
    shift=st.lists(st.floats(-300, 300), min_size=3, max_size=3),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
    seed=st.integers(0, 2**16),
)
def test_nifti_round_trip(
    perm: list[int],
    signs: list[int],
    zooms: list[float],
    angles: list[float],
    shear: float,
    shift: list[float],
    shape: tuple[int, int, int],
    seed: int,
) -> None:
    aff = _grid_affine(perm, signs, zooms, angles, shear, shift)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        image = load_volume(_save_nifti(Path(tmp) / "img.nii.gz", rng.random(shape).astype(np.float32), aff))
        mask = rng.integers(0, 3, size=shape)
        out = save_mask(mask, image, Path(tmp) / "mask.nii.gz")
        back = load_volume(out)
        np.testing.assert_array_equal(back.array, mask)
        assert back.array.dtype == np.uint8
        np.testing.assert_array_equal(back.affine, image.affine)
        assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(image.affine)
        hdr = _nii(out).header
        assert int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0
        np.testing.assert_array_equal(hdr.get_sform(), aff)  # exact, also when sheared
        if shear == 0.0:  # the qform holds rigid + zooms: same orientation
            assert nib.aff2axcodes(hdr.get_qform()) == nib.aff2axcodes(aff)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["img.nii.gz", "mask.nii.gz"]


def test_save_mask_from_dicom_geometry(tmp_path: Path) -> None:
    make_series(tmp_path / "s", rot=OBLIQUE, n=3)
    image = load_volume(tmp_path / "s")
    mask = np.zeros(image.shape, bool)
    mask[1, 2:4, 3:6] = True
    back = load_label(save_mask(mask, image, tmp_path / "m.nii"), like=image)
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))
    assert nib.aff2axcodes(_nii(tmp_path / "m.nii").affine) == nib.aff2axcodes(image.affine)


def test_save_mask_dtypes_and_value_errors(tmp_path: Path) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), source="img.nii.gz")
    big = np.zeros((2, 3, 4), np.int64)
    big[0, 0, 0] = 300
    assert _nii(save_mask(big, like, tmp_path / "a.nii.gz")).get_data_dtype() == np.int16
    big[0, 0, 0] = 40000
    assert _nii(save_mask(big, like, tmp_path / "b.nii.gz")).get_data_dtype() == np.int32
    assert _nii(save_mask(np.ones((2, 3, 4)), like, tmp_path / "c.nii")).get_data_dtype() == np.uint8
    for bad, pattern in [
        (np.full((2, 3, 4), 0.5), "fractional"),
        (np.full((2, 3, 4), -1), "non-negative"),
        (np.full((2, 3, 4), np.nan), "finite"),
    ]:
        with pytest.raises(InvalidInputError, match=pattern):
            save_mask(bad, like, tmp_path / "bad.nii.gz")
    with pytest.raises(InvalidInputError, match=r"\.nii or \.nii\.gz"):
        save_mask(np.zeros((2, 3, 4), bool), like, tmp_path / "m.nrrd")
    with pytest.raises(MissingFileError, match="no_such_folder"):
        save_mask(np.zeros((2, 3, 4), bool), like, tmp_path / "no_such_folder" / "m.nii.gz")
    with pytest.raises(InvalidTypeError):
        save_mask(np.zeros((2, 3, 4), bool), np.eye(4), tmp_path / "m.nii.gz")  # type: ignore[arg-type]
    assert not (tmp_path / "bad.nii.gz").exists() and not (tmp_path / "m.nrrd").exists()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_mask_wrong_shape_leaves_nothing(tmp_path: Path) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
    with pytest.raises(ShapeMismatchError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        save_mask(np.zeros((2, 3, 5), bool), like, tmp_path / "m.nii.gz")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("name", ["m.nii.gz", "m.nii"])
def test_save_mask_failure_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    like = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
    dest = tmp_path / name
    dest.write_bytes(b"previous content")
    real: Callable[..., None] = mio._write_nifti
    seen: list[Path] = []

    def broken(img: Any, tmp: Path) -> None:
        real(img, tmp)  # the temporary file is complete ...
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.exists()
        raise OSError("disk full")  # ... and then the write "fails"

    monkeypatch.setattr(mio, "_write_nifti", broken)
    with pytest.raises(OSError, match="disk full"):
        save_mask(np.ones((2, 3, 4), bool), like, dest)
    assert seen and not seen[0].exists()
    assert _listing(tmp_path) == [name] and dest.read_bytes() == b"previous content"

    def interrupted(img: Any, tmp: Path) -> None:
        with gzip.open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(mio, "_write_nifti", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_mask(np.ones((2, 3, 4), bool), like, dest)
    assert _listing(tmp_path) == [name] and dest.read_bytes() == b"previous content"
    monkeypatch.undo()
    save_mask(np.ones((2, 3, 4), bool), like, dest)
    assert _listing(tmp_path) == [name] and load_volume(dest).array.sum() == 24


# ------------------------------------------------------------------------------------------
# real data (skips cleanly when ../shared/data is absent)
# ------------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_deeplesion_image_label(shared_data: Path, tmp_path: Path) -> None:
    cases = sorted((shared_data / "deeplesion_ct").glob("*_img.nii.gz"))
    if not cases:
        pytest.skip("deeplesion_ct not present in the shared data folder")
    img_path = cases[0]
    image = load_volume(img_path)
    label = load_label(Path(str(img_path).replace("_img", "_label")), like=image)
    assert image.array.dtype == np.uint8  # stored uint8, unscaled
    assert nib.aff2axcodes(image.affine) == ("P", "L", "I")
    np.testing.assert_array_equal(image.affine, _nii(img_path).affine)
    assert label.array.max() == 1 and label.array.sum() > 0
    out = save_mask(label.array, image, tmp_path / "lesion.nii.gz")
    back = load_volume(out)
    np.testing.assert_array_equal(back.array, label.array)
    np.testing.assert_array_equal(back.affine, image.affine)
    assert nib.aff2axcodes(back.affine) == ("P", "L", "I")


@pytest.mark.shared_data
def test_real_breast1_nrrd_matches_nifti(shared_data: Path) -> None:
    pytest.importorskip("nrrd")
    folder = shared_data / "pyradiomics"
    if not (folder / "breast1_img.nrrd").is_file():
        pytest.skip("pyradiomics/breast1_img.nrrd not present in the shared data folder")
    from_nrrd = load_volume(folder / "breast1_img.nrrd")
    from_nifti = load_volume(folder / "breast1_img.nii.gz")
    # same axis order, no flips of the voxel grid: identical arrays
    assert from_nrrd.array.dtype == from_nifti.array.dtype == np.int16
    np.testing.assert_array_equal(from_nrrd.array, from_nifti.array)
    # the NIfTI affine is the NRRD's LPS geometry with x and y negated (float32 precision)
    np.testing.assert_allclose(from_nrrd.affine, from_nifti.affine, atol=1e-5, rtol=0)
    assert nib.aff2axcodes(from_nrrd.affine) == ("L", "P", "S")
    label = load_label(folder / "breast1_label.nrrd", like=from_nifti)
    label_nifti = load_label(folder / "breast1_label.nii.gz", like=from_nrrd)
    np.testing.assert_array_equal(label.array, label_nifti.array)


@pytest.mark.shared_data
def test_real_carotid_cine(shared_data: Path) -> None:
    files = sorted((shared_data / "carotid_us").glob("*.npz"))
    if not files:
        pytest.skip("carotid_us not present in the shared data folder")
    cine = load_volume(files[0])
    assert cine.kind == "cine" and cine.shape == (90, 375, 355) and cine.array.dtype == np.uint8
    assert cine.frame_times is None  # the archive has frame numbers, not times
    masks = load_label(files[0], like=cine)
    assert masks.kind == "cine" and set(np.unique(masks.array)) == {0, 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(files[0], key="masks").kind == "volume"


def test_save_volume_round_trip_and_atomic(tmp_path: Path) -> None:
    from medsam2kit.io import save_volume

    rng = np.random.default_rng(3)
    affine = np.array([[0.0, -0.7, 0.1, 10.0], [0.9, 0.0, 0.0, -4.0], [0.0, 0.05, 2.5, 3.0], [0, 0, 0, 1]])
    vol = Volume(rng.normal(size=(4, 5, 6)), affine)
    back = load_volume(save_volume(vol, tmp_path / "img.nii.gz"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array.astype(np.float32))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"\.nii"):
        save_volume(vol, tmp_path / "img.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


def _seg_dataset(path: Path, frames: list[tuple[int, int, np.ndarray]], *, iop: Sequence[float],
                 origin: np.ndarray, step: float, spacing: tuple[float, float]) -> None:
    """A minimal BINARY DICOM SEG: frames are (slice index, segment number, bool mask)."""
    from pydicom.pixels import pack_bits
    from pydicom.uid import ExplicitVRLittleEndian

    seg_uid = "1.2.840.10008.5.1.4.1.1.66.4"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = seg_uid
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = seg_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SEG"
    ds.SegmentationType = "BINARY"
    rows, cols = frames[0][2].shape
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_cos, col_cos)
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=_ds(iop))])
    shared.PixelMeasuresSequence = DicomSequence(
        [_item(PixelSpacing=_ds(spacing), SliceThickness=str(step), SpacingBetweenSlices=str(step))]
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for z, seg, _ in frames:
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=_ds(origin + z * step * normal))])
        ident = Dataset()
        ident.ReferencedSegmentNumber = seg
        item.SegmentIdentificationSequence = DicomSequence([ident])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = pack_bits(np.stack([m for _, _, m in frames]).astype(np.uint8))
    ds.save_as(str(path), enforce_file_format=True)


def test_dicom_seg_as_label_on_the_image_grid(tmp_path: Path) -> None:
    iop = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal
    origin, step, spacing = np.array([10.0, -20.0, 30.0]), 2.5, (0.8, 0.6)
    row_cos, col_cos = np.array(iop[:3]), np.array(iop[3:])
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = np.cross(row_cos, col_cos) * step
    affine_lps[:3, 1] = col_cos * spacing[0]
    affine_lps[:3, 2] = row_cos * spacing[1]
    affine_lps[:3, 3] = origin
    image = Volume(np.zeros((6, 12, 10), np.float32), FLIP @ affine_lps, source="image.nii.gz")
    expected = np.zeros((6, 12, 10), np.uint8)
    rng = np.random.default_rng(0)
    frames = []
    for z in (2, 3, 4):
        m = rng.random((12, 10)) > 0.6
        expected[z][m] = 1
        frames.append((z, 1, m))
    m2 = rng.random((12, 10)) > 0.8
    expected[3][m2] = 2  # the higher segment wins where they overlap
    frames.append((3, 2, m2))
    _seg_dataset(tmp_path / "seg.dcm", frames, iop=iop, origin=origin, step=step, spacing=spacing)
    own = load_volume(tmp_path / "seg.dcm")
    assert own.modality == "SEG" and own.shape == (3, 12, 10)  # only the planes the SEG marks
    np.testing.assert_allclose(own.affine[:3, 3], (FLIP @ affine_lps)[:3, 3] + 2 * (FLIP @ affine_lps)[:3, 0])
    placed = load_label(tmp_path / "seg.dcm", like=image)
    np.testing.assert_array_equal(placed.array, expected)
    # a SEG on another grid is an error naming both
    shifted = Volume(image.array, image.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0.5], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
                     source="shifted.nii.gz")
    with pytest.raises(GeometryError, match=r"seg\.dcm.*shifted\.nii\.gz"):
        load_label(tmp_path / "seg.dcm", like=shifted)
