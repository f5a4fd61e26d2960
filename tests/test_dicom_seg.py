"""DICOM SEG output: round trips on axial, oblique and multi-frame sources, references, errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from medsam2kit import __version__
from medsam2kit.dicom_seg import (
    check_dicom_inputs,
    is_dicom_path,
    resolve_output_format,
    save_dicom_seg,
    write_labels,
)
from medsam2kit.errors import (
    GeometryError,
    InvalidInputError,
    MedSAM2KitError,
    MissingFileError,
    ShapeMismatchError,
)
from medsam2kit.io import load_label, load_volume, save_mask
from medsam2kit.volume import Volume

hd = pytest.importorskip("highdicom")

N_SLICES = 5
STEP_MM = 2.5


def _series(folder: Path, *, iop: list[float] | None = None, n: int = N_SLICES, shuffle: bool = True) -> list[Dataset]:
    """``n`` copies of CT_small.dcm forming one series along the slice normal of ``iop``."""
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    orientation = np.array(iop if iop is not None else [float(v) for v in src.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([float(v) for v in src.ImagePositionPatient])
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    order = [3, 0, 4, 1, 2] if shuffle and n == 5 else list(range(n))  # file order != slice order
    for j, i in enumerate(order):
        ds = copy.deepcopy(src)
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + i * STEP_MM * normal]
        ds.InstanceNumber = i + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.SliceThickness = STEP_MM
        ds.save_as(folder / f"im{j:02d}.dcm")
        out.append(ds)
    return out


def _multiframe(path: Path) -> Dataset:
    """pydicom's emri_small.dcm (enhanced MR, 10 frames, no functional groups) given plane geometry."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    n = int(ds.NumberOfFrames)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.9, 1.1]
    measures.SliceThickness = 1.5
    measures.SpacingBetweenSlices = 1.5
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    shared.PlaneOrientationSequence = DicomSequence([orient])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for i in reversed(range(n)):  # frames stored in reverse slice order
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [-30.0, 12.0 + 1.5 * i, 40.0]  # normal = row x col = (0, 1, 0)
        item.PlanePositionSequence = DicomSequence([plane])
        content = Dataset()
        content.DimensionIndexValues = [n - i]
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.save_as(path)
    return ds


@pytest.fixture
def axial(tmp_path: Path) -> tuple[Path, list[Dataset]]:
    folder = tmp_path / "axial"
    return folder, _series(folder)


@pytest.fixture
def oblique(tmp_path: Path) -> tuple[Path, list[Dataset]]:
    a, b = np.deg2rad(20.0), np.deg2rad(15.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), -np.sin(b)])
    folder = tmp_path / "oblique"
    return folder, _series(folder, iop=[*row, *col])


def _labels(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    d, h, w = shape
    lab[1:, h // 4 : h // 2, w // 5 : w // 2] = 1
    lab[: d - 1, h // 2 : 3 * h // 4, w // 2 : 4 * w // 5] = 2
    lab[d // 2, rng.integers(0, h, 30), rng.integers(0, w, 30)] = 3
    return lab


def _hd_read(seg_path: Path, like: Volume, uids_in_slice_order: list[str]) -> np.ndarray:
    seg = hd.seg.segread(str(seg_path))
    return np.asarray(
        seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids_in_slice_order,
            combine_segments=True,
            relabel=False,
            assert_missing_frames_are_empty=True,
        )
    )


def _slice_order(datasets: list[Dataset]) -> list[str]:
    return [ds.SOPInstanceUID for ds in sorted(datasets, key=lambda d: int(d.InstanceNumber))]


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["axial", "oblique"])
def test_series_round_trip(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    folder, datasets = request.getfixturevalue(case)
    image = load_volume(folder)
    assert image.shape == (N_SLICES, 128, 128)
    labels = _labels(image.shape)
    out = save_dicom_seg(labels, image, tmp_path / "seg.dcm", algorithm="reference")
    back = load_label(out, like=image)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.affine, image.affine)
    # highdicom's own reader agrees (InstanceNumber = slice order in _series)
    np.testing.assert_array_equal(_hd_read(out, image, _slice_order(datasets)), labels)


def test_series_references_source(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, datasets = axial
    image = load_volume(folder)
    out = save_dicom_seg(_labels(image.shape), image, tmp_path / "seg.dcm", algorithm="sam2.1_hiera_tiny",
                         segment_names=["liver", "kidney", "spots"])
    seg = pydicom.dcmread(out)
    src = datasets[0]
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.PatientID == src.PatientID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID
    refs = seg.ReferencedSeriesSequence
    assert [r.SeriesInstanceUID for r in refs] == [src.SeriesInstanceUID]
    assert {i.ReferencedSOPInstanceUID for i in refs[0].ReferencedInstanceSequence} == {
        d.SOPInstanceUID for d in datasets
    }
    # every frame names the source instance it was derived from, at that instance's position
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(ipp, [float(v) for v in by_uid[uid].ImagePositionPatient], atol=1e-3)
    # segments, algorithm and equipment
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney", "spots"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    for s in seg.SegmentSequence:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert s.SegmentAlgorithmName == "sam2.1_hiera_tiny"
        alg = s.SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == "sam2.1_hiera_tiny" and alg.AlgorithmVersion == __version__
        assert alg.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.Manufacturer == "medsam2kit"
    assert seg.ManufacturerModelName == "sam2.1_hiera_tiny"
    assert str(seg.SoftwareVersions) == __version__
    # the true slice step, also when the slices in between are empty
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == STEP_MM


def test_default_segment_names_and_gaps(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, datasets = axial
    image = load_volume(folder)
    labels = np.zeros(image.shape, np.uint8)
    labels[2, 5:9, 5:9] = 4  # labels 1-3 absent: still segments 1..4 so numbers = label values
    labels[0, 0, 0] = 1
    out = save_dicom_seg(labels, image, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["label 1", "label 2", "label 3", "label 4"]
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "medsam2kit"
    np.testing.assert_array_equal(load_label(out, like=image).array, labels)
    np.testing.assert_array_equal(_hd_read(out, image, _slice_order(datasets)), labels)


def test_single_file_source(tmp_path: Path) -> None:
    ct = load_volume(get_testdata_file("CT_small.dcm"))
    labels = np.zeros(ct.shape, bool)
    labels[0, 30:70, 40:60] = True
    out = save_dicom_seg(labels, ct, tmp_path / "seg.dcm", segment_names={1: "lesion"})
    np.testing.assert_array_equal(load_label(out, like=ct).array, labels.astype(np.uint8))


def test_multiframe_round_trip(tmp_path: Path) -> None:
    # the bare test file has no plane positions: load_volume gives a placeholder geometry (warning)
    with pytest.warns(UserWarning, match="no plane positions"):
        bare = load_volume(get_testdata_file("emri_small.dcm"))
    with pytest.raises(GeometryError, match="plane position"):
        save_dicom_seg(np.ones(bare.shape, np.uint8), bare, tmp_path / "bare.dcm")
    assert not any(tmp_path.iterdir())
    # with functional groups it is a positioned coronal volume, frames stored in reverse order
    src = tmp_path / "emri_positioned.dcm"
    ds = _multiframe(src)
    image = load_volume(src)
    assert image.shape == (10, 64, 64)
    np.testing.assert_allclose(image.spacing, (1.5, 0.9, 1.1))  # PixelSpacing = [row, column]
    labels = _labels(image.shape, seed=3)
    out = save_dicom_seg(labels, image, tmp_path / "seg.dcm", algorithm="reference")
    np.testing.assert_array_equal(load_label(out, like=image).array, labels)
    # highdicom: frame f of the file is slice n - f of the volume (reverse order)
    seg = hd.seg.segread(str(out))
    n = int(ds.NumberOfFrames)
    by_frame = np.asarray(seg.get_pixels_by_source_frame(
        source_sop_instance_uid=ds.SOPInstanceUID, source_frame_numbers=list(range(1, n + 1)),
        combine_segments=True, relabel=False, assert_missing_frames_are_empty=True,
    ))
    np.testing.assert_array_equal(by_frame, labels[::-1])
    ref = pydicom.dcmread(out).ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ds.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_enhanced_ct_round_trip(tmp_path: Path) -> None:
    """pydicom's eCT_Supplemental.dcm: a real enhanced CT (2 frames, 512 x 512)."""
    image = load_volume(get_testdata_file("eCT_Supplemental.dcm"))
    labels = np.zeros(image.shape, np.uint8)
    labels[1, 100:200, 300:320] = 1
    out = save_dicom_seg(labels, image, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(load_label(out, like=image).array, labels)


def test_empty_labels_write_an_empty_seg(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, datasets = axial
    image = load_volume(folder)
    out = save_dicom_seg(np.zeros(image.shape, np.uint8), image, tmp_path / "seg.dcm",
                         segment_names=["liver", "kidney"])
    seg = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "kidney"]
    assert not load_label(out, like=image).array.any()
    assert not _hd_read(out, image, _slice_order(datasets)).any()


def test_volume_labels_and_overwrite(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, _ = axial
    image = load_volume(folder)
    dest = tmp_path / "seg.dcm"
    save_dicom_seg(image.with_array(_labels(image.shape)), image, dest)
    first = pydicom.dcmread(dest).SOPInstanceUID
    save_dicom_seg(image.with_array(_labels(image.shape, seed=1)), image, dest)
    assert pydicom.dcmread(dest).SOPInstanceUID != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["axial", "seg.dcm"]


# --------------------------------------------------------------------------------------------
# errors: named, and nothing left behind
# --------------------------------------------------------------------------------------------


def test_not_dicom_source(tmp_path: Path) -> None:
    image = Volume(np.zeros((2, 3, 4), np.float32), np.eye(4))
    with pytest.raises(InvalidInputError, match="save_mask"):
        save_dicom_seg(np.zeros((2, 3, 4), np.uint8), image, tmp_path / "seg.dcm")
    nifti = save_mask(np.zeros((2, 3, 4), np.uint8), image, tmp_path / "img.nii.gz")
    loaded = load_volume(nifti)
    with pytest.raises(InvalidInputError, match=r"img\.nii\.gz is not DICOM.*save_mask"):
        save_dicom_seg(np.zeros((2, 3, 4), np.uint8), loaded, tmp_path / "seg.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz"]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda s: np.zeros((s[0] - 1, s[1], s[2]), np.uint8), ShapeMismatchError, r"labels: expected shape \(5, 128, 128\)"),
        (lambda s: np.full(s, -1, np.int16), InvalidInputError, "non-negative"),
        (lambda s: np.full(s, 256, np.int16), InvalidInputError, "at most 255"),
        (lambda s: np.full(s, 0.5, np.float32), InvalidInputError, "fractional"),
    ],
)
def test_bad_labels(axial: tuple[Path, list[Dataset]], tmp_path: Path, make: Callable[[Any], np.ndarray],
                    error: type[Exception], match: str) -> None:
    folder, _ = axial
    image = load_volume(folder)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error, match=match):
        save_dicom_seg(make(image.shape), image, out / "seg.dcm")
    assert not any(out.iterdir())


def test_labels_on_another_grid(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, _ = axial
    image = load_volume(folder)
    affine = image.affine.copy()
    affine[0, 3] += 5.0
    shifted = Volume(_labels(image.shape), affine)
    with pytest.raises(GeometryError, match="different affines"):
        save_dicom_seg(shifted, image, tmp_path / "seg.dcm")
    # a Volume whose affine no longer matches the files on disk
    moved = Volume(image.array, shifted.affine, source=image.source, modality=image.modality)
    with pytest.raises(GeometryError, match="do not lie on the grid"):
        save_dicom_seg(_labels(image.shape), moved, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_bad_names_and_paths(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, _ = axial
    image = load_volume(folder)
    labels = _labels(image.shape)
    with pytest.raises(InvalidInputError, match="at least 3 names"):
        save_dicom_seg(labels, image, tmp_path / "seg.dcm", segment_names=["a"])
    with pytest.raises(InvalidInputError, match="save_mask"):
        save_dicom_seg(labels, image, tmp_path / "seg.nii.gz")
    with pytest.raises(MissingFileError, match="does not exist"):
        save_dicom_seg(labels, image, tmp_path / "nope" / "seg.dcm")
    with pytest.raises(InvalidInputError, match="algorithm"):
        save_dicom_seg(labels, image, tmp_path / "seg.dcm", algorithm=" ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["axial"]


def test_failure_while_writing_leaves_nothing(axial: tuple[Path, list[Dataset]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = axial
    image = load_volume(folder)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "seg.dcm"
    dest.write_bytes(b"previous")

    def broken(self: Any, fp: Any, **kwargs: Any) -> None:
        fp.write(b"\0" * 1000)  # a partial file ...
        raise OSError("disk full")  # ... then the failure

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken)
    with pytest.raises(OSError, match="disk full"):
        save_dicom_seg(_labels(image.shape), image, dest)
    assert [p.name for p in out.iterdir()] == ["seg.dcm"]
    assert dest.read_bytes() == b"previous"


def test_errors_share_the_hierarchy() -> None:
    assert issubclass(InvalidInputError, MedSAM2KitError)


# --------------------------------------------------------------------------------------------
# command-line helpers, CLI and evaluate
# --------------------------------------------------------------------------------------------


def test_output_format_resolution(tmp_path: Path) -> None:
    assert resolve_output_format(None, Path("x.dcm")) == "dicom-seg"
    assert resolve_output_format(None, Path("x.nii.gz")) == "nifti"
    assert resolve_output_format(None, tmp_path) == "nifti"
    assert resolve_output_format("dicom-seg", tmp_path) == "dicom-seg"
    with pytest.raises(InvalidInputError, match="contradicts"):
        resolve_output_format("nifti", Path("x.dcm"))
    with pytest.raises(InvalidInputError, match="contradicts"):
        resolve_output_format("dicom-seg", Path("x.nii.gz"))
    assert is_dicom_path(get_testdata_file("CT_small.dcm")) and not is_dicom_path(tmp_path / "a.nii.gz")
    with pytest.raises(InvalidInputError, match="--query .*a.nii.gz is not DICOM"):
        check_dicom_inputs([tmp_path / "a.nii.gz"], "dicom-seg", name="--query")
    check_dicom_inputs([tmp_path / "a.nii.gz"], "nifti", name="--query")


def test_write_labels_dispatch(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    folder, _ = axial
    image = load_volume(folder)
    labels = _labels(image.shape)
    seg = write_labels(labels, image, tmp_path / "a.dcm", fmt="dicom-seg", algorithm="reference")
    nii = write_labels(labels, image, tmp_path / "a.nii.gz", fmt="nifti")
    assert pydicom.dcmread(seg).Modality == "SEG"
    np.testing.assert_array_equal(load_label(nii, like=image).array, load_label(seg, like=image).array)


def test_evaluate_scores_a_seg_against_nifti(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    from medsam2kit.evaluate import evaluate

    folder, _ = axial
    image = load_volume(folder)
    labels = _labels(image.shape)
    seg = save_dicom_seg(labels, image, tmp_path / "case_seg.dcm")
    ref = save_mask(labels, image, tmp_path / "case_label.nii.gz")
    report = evaluate(seg, ref, tmp_path / "eval", figures=False)
    dice = {r["label"]: r["dice"] for r in report.rows}
    assert dice == {1: 1.0, 2: 1.0, 3: 1.0}


def test_cli_segment_writes_dicom_seg(axial: tuple[Path, list[Dataset]], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--format dicom-seg`` (and ``--out x.dcm``) on a DICOM input; a named error on NIfTI input."""
    torch = pytest.importorskip("torch")
    from medsam2kit.cli import main
    from medsam2kit.coarse import CoarseConfig, CoarseSegmenter

    folder, _ = axial
    image = load_volume(folder)
    coarse_path = tmp_path / "coarse.pt"
    coarse = CoarseSegmenter(CoarseConfig(num_labels=1, image_size=32, base_channels=4, depth=2))
    coarse.fit([image], [image.with_array(_labels(image.shape).clip(0, 1))], steps=2,
               generator=torch.Generator().manual_seed(0))
    coarse.save(coarse_path)
    out = tmp_path / "pred.dcm"
    rc = main(["segment", "--input", str(folder), "--coarse", str(coarse_path), "--out", str(out), "-q",
               "--random-init", "--device", "cpu", "--image-size", "64", "--k", "1"])
    assert rc == 0
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.ManufacturerModelName == "sam2.1_hiera_micro (random init)"
    assert load_label(out, like=image).shape == image.shape
    nifti = save_mask(np.zeros(image.shape, np.uint8), image, tmp_path / "img.nii.gz")
    capsys.readouterr()
    rc = main(["segment", "--input", str(nifti), "--coarse", str(coarse_path), "--out", str(tmp_path / "x.dcm"),
               "-q", "--random-init", "--device", "cpu"])
    assert rc == 1 and not (tmp_path / "x.dcm").exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsam2kit segment: error: --format dicom-seg: --input") and "is not DICOM" in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["axial", "coarse.pt", "img.nii.gz", "pred.dcm"]


def test_cli_propagate_dicom_in_dicom_seg_out(axial: tuple[Path, list[Dataset]], tmp_path: Path) -> None:
    """A DICOM series and prompts painted on its grid (saved as NIfTI) -> a DICOM SEG on the series."""
    pytest.importorskip("torch")
    from medsam2kit.cli import main

    folder, _ = axial
    image = load_volume(folder)
    drawn = np.zeros(image.shape, np.uint8)
    drawn[1] = _labels(image.shape)[1].clip(0, 1)
    prompts = save_mask(drawn, image, tmp_path / "drawn.nii.gz")
    out = tmp_path / "seg.dcm"
    assert main(["propagate", "--input", str(folder), "--prompts", str(prompts), "--out", str(out), "-q",
                 "--random-init", "--device", "cpu", "--image-size", "64"]) == 0
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.ManufacturerModelName == "sam2.1_hiera_micro (random init)"
    assert load_label(out, like=image).shape == image.shape
    # no model named: the SEG records the model that ran, the bundled default for volumes
    assert main(["propagate", "--input", str(folder), "--prompts", str(prompts), "--out", str(out), "-q",
                 "--overwrite", "--adapt-steps", "0", "--device", "cpu"]) == 0
    assert pydicom.dcmread(out).ManufacturerModelName == "reference-volumes"


def test_cli_fewshot_format_errors(axial: tuple[Path, list[Dataset]], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any model is loaded: a NIfTI query with dicom-seg, a format contradicting --out."""
    from medsam2kit.cli import main

    folder, _ = axial
    image = load_volume(folder)
    query = save_mask(np.zeros(image.shape, np.uint8), image, tmp_path / "q.nii.gz")
    base = ["fewshot", "--bank", str(tmp_path / "bank.pt"), "-q"]
    assert main([*base, "--query", str(query), "--out", str(tmp_path / "q_seg.dcm")]) == 1
    assert "--format dicom-seg: --query" in capsys.readouterr().err
    assert main([*base, "--query", str(folder), "--out", str(tmp_path / "x.nii.gz"), "--format", "dicom-seg"]) == 1
    assert "contradicts --out" in capsys.readouterr().err
    assert main([*base, "--query", str(folder), "--out", str(tmp_path / "x.dcm"), "--format", "nifti"]) == 1
    assert "contradicts --out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["axial", "q.nii.gz"]
    # a cohort folder of NIfTI images: the first one is named
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    save_mask(np.zeros(image.shape, np.uint8), image, cohort / "c1_img.nii.gz")
    assert main([*base, "--query", str(cohort), "--out", str(tmp_path / "segs"), "--format", "dicom-seg"]) == 1
    assert "c1_img.nii.gz is not DICOM" in capsys.readouterr().err
    assert not (tmp_path / "segs").exists() or not any((tmp_path / "segs").iterdir())


def test_folder_with_two_series_on_one_grid(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    first = _series(folder)
    second = _series(tmp_path / "tmp_second")
    for f in sorted((tmp_path / "tmp_second").iterdir()):
        f.rename(folder / f"b_{f.name}")
    uid = first[0].SeriesInstanceUID
    image = load_volume(folder, series_uid=uid)
    labels = _labels(image.shape)
    with pytest.raises(InvalidInputError, match="source_series_uid"):
        save_dicom_seg(labels, image, tmp_path / "seg.dcm")
    out = save_dicom_seg(labels, image, tmp_path / "seg.dcm", source_series_uid=uid)
    refs = pydicom.dcmread(out).ReferencedSeriesSequence
    assert [r.SeriesInstanceUID for r in refs] == [uid] != [second[0].SeriesInstanceUID]
    np.testing.assert_array_equal(load_label(out, like=image).array, labels)
