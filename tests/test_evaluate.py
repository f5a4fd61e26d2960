from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medsam2kit.cli import main
from medsam2kit.errors import GeometryError, InvalidInputError, ShapeMismatchError
from medsam2kit.evaluate import (
    METRIC_RANGES,
    EmptyLabelWarning,
    box_plot,
    case_name,
    evaluate,
    format_interval,
    pair_cases,
    summarise,
)
from medsam2kit.io import save_mask, save_volume
from medsam2kit.metrics import per_label
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.volume import Volume


def _cases(folder: Path, shift: int) -> tuple[list[Volume], list[np.ndarray]]:
    (folder / "gt").mkdir(parents=True)
    (folder / "pred").mkdir()
    refs, preds = [], []
    for seed in (1, 2, 3):
        image, label = ellipsoid_phantom((8, 40, 36), (2.0, 0.8, 0.8), rng=seed)
        pred = np.roll(label.array, shift * seed, axis=2)
        save_mask(label.array, image, folder / "gt" / f"case{seed}_label.nii.gz")
        save_mask(pred, image, folder / "pred" / f"case{seed}_labels.nii.gz")
        refs.append(label)
        preds.append(pred)
    return refs, preds


def test_per_case_rows_equal_the_metrics_and_summary_is_their_statistics(tmp_path: Path) -> None:
    refs, preds = _cases(tmp_path, shift=1)
    report = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    for seed, ref, pred in zip((1, 2, 3), refs, preds):
        expected = per_label(pred, ref.array, spacing=ref.spacing)
        for lab, s in expected.items():
            row = next(r for r in report.rows if r["case"] == f"case{seed}" and r["label"] == lab)
            assert row["dice"] == pytest.approx(s.dice) and row["hd95"] == pytest.approx(s.hd95)
    dices = [float(r["dice"]) for r in report.rows if r["label"] == 1]
    s = report.summary[(1, "dice")]
    assert s.mean == pytest.approx(np.mean(dices)) and s.median == pytest.approx(np.median(dices))
    low, high = stats.t.interval(0.95, len(dices) - 1, loc=np.mean(dices), scale=stats.sem(dices))
    assert (s.ci95_low, s.ci95_high) == pytest.approx((max(low, 0.0), min(high, 1.0)))  # clipped to Dice's range
    with open(tmp_path / "out" / "per_case.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6  # 3 cases x 2 labels
    names = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert names[:6] == [f"box_{m}.png" for m in ("assd", "dice", "hd", "hd95", "iou", "nsd")]
    assert names[6:] == ["case1.png", "case2.png", "case3.png"]


def test_grid_mismatch_names_both_files(tmp_path: Path) -> None:
    image, label = ellipsoid_phantom((6, 32, 32), rng=0)
    other = Volume(image.array, image.affine @ np.diag([1.0, 1.0, 1.5, 1.0]))
    save_mask(label.array, image, tmp_path / "gt.nii.gz")
    save_mask(label.array, other, tmp_path / "pred.nii.gz")
    with pytest.raises(GeometryError, match=r"pred\.nii\.gz.*gt\.nii\.gz|gt\.nii\.gz.*pred\.nii\.gz"):
        evaluate(tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz", tmp_path / "out")
    small = Volume(image.array[:, :-1], image.affine)
    save_mask(label.array[:, :-1], small, tmp_path / "pred2.nii.gz")
    with pytest.raises(ShapeMismatchError, match="pred2.nii.gz"):
        evaluate(tmp_path / "pred2.nii.gz", tmp_path / "gt.nii.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_folder_pairing_errors(tmp_path: Path) -> None:
    _cases(tmp_path, shift=0)
    (tmp_path / "pred" / "case2_labels.nii.gz").unlink()
    with pytest.raises(InvalidInputError, match="case2"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    assert case_name(Path("x_seg.nrrd")) == "x"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=20), st.integers(0, 3))
def test_summary_against_numpy(values: list[float], n_inf: int) -> None:
    s = summarise(values + [math.inf] * n_inf)
    assert s.n == len(values) and s.n_infinite == n_inf
    assert s.mean == pytest.approx(np.mean(values)) and s.std == pytest.approx(np.std(values, ddof=1))
    assert s.ci95_low <= s.mean <= s.ci95_high


def test_box_plot_draws_something() -> None:
    rgb = box_plot({"a": [0.1, 0.5, 0.6, 0.9, 3.0], "b": []}, title="x")
    assert rgb.shape == (320, 480, 3) and (rgb != 255).any()


def test_evaluate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cases(tmp_path, shift=0)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "e"),
                 "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "3 case(s)" in out and "label 1 dice: mean 1" in out
    assert main(["evaluate", str(tmp_path / "nope"), str(tmp_path / "gt"), "--out", str(tmp_path / "e2")]) == 1
    assert "PRED" in capsys.readouterr().err


def test_interval_respects_the_metric_range_and_prints_unambiguously(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # three cases, one bad: the unclipped t interval of the mean Dice is about [-0.48, 1.23]
    s = summarise([0.1, 0.95, 1.0], bounds=METRIC_RANGES["dice"])
    assert (s.ci95_low, s.ci95_high) == (0.0, 1.0)
    d = summarise([0.5, 9.0, 0.2], bounds=METRIC_RANGES["hd95"])
    assert d.ci95_low == 0.0 and d.ci95_high > 9.0
    assert math.isnan(summarise([0.7]).ci95_low)  # one case: no interval
    assert format_interval(-0.0, 1.0, "dice") == "[0.000, 1.000]"
    assert format_interval(math.nan, math.nan, "nsd") == "n/a"
    with pytest.raises(InvalidInputError, match="bounds"):
        summarise([1.0, 2.0], bounds=(1.0, 0.0))
    _cases(tmp_path, shift=3)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(tmp_path / "e"),
                 "--no-figures"]) == 0
    out = capsys.readouterr().out
    intervals = re.findall(r"dice: mean \S+ \(95% CI \[(\S+), (\S+)\]\)", out)
    assert intervals and all(0.0 <= float(lo) <= float(hi) <= 1.0 for lo, hi in intervals)


def test_segment_outputs_pair_with_label_references_and_images(tmp_path: Path) -> None:
    """The names segment/fewshot write (<case>_labels.nii.gz, also older <case>_img_labels) pair with
    <case>_label references and <case>_img images, and a folder may hold images beside labels."""
    assert case_name(Path("a_img_labels.nii.gz")) == case_name(Path("a_label.nii.gz")) == "a"
    assert case_name(Path("a_img.nii.gz")) == case_name(Path("a_image.nrrd")) == case_name(Path("a_pred.npz")) == "a"
    (tmp_path / "out").mkdir()
    (tmp_path / "refs").mkdir()
    for seed in (1, 2):
        image, label = ellipsoid_phantom((6, 32, 28), rng=seed)
        save_volume(image, tmp_path / "refs" / f"c{seed}_img.nii.gz")
        save_mask(label.array, image, tmp_path / "refs" / f"c{seed}_label.nii.gz")
        save_mask(label.array, image, tmp_path / "out" / (f"c{seed}_labels.nii.gz" if seed == 1 else
                                                          f"c{seed}_img_labels.nii.gz"))
    assert [c for c, _, _ in pair_cases(tmp_path / "out", tmp_path / "refs")] == ["c1", "c2"]
    report = evaluate(tmp_path / "out", tmp_path / "refs", tmp_path / "e", images=tmp_path / "refs")
    assert {r["case"] for r in report.rows} == {"c1", "c2"}
    # a second file naming the same case is an error naming both
    save_mask(label.array, image, tmp_path / "out" / "c2_labels.nii.gz")
    with pytest.raises(InvalidInputError, match=r"c2_img_labels\.nii\.gz and c2_labels\.nii\.gz"):
        pair_cases(tmp_path / "out", tmp_path / "refs")


def test_images_pair_by_the_case_rule_and_unmatched_are_named(tmp_path: Path) -> None:
    _cases(tmp_path, shift=1)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for seed in (1, 2, 3):
        image, _ = ellipsoid_phantom((8, 40, 36), (2.0, 0.8, 0.8), rng=seed)
        save_volume(image, imgs / f"case{seed}_img.nii.gz")
    report = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", images=imgs)
    assert (tmp_path / "out" / "figures" / "case1.png").exists() and report.rows
    # the montage is drawn on the image, not on the reference label map as without ``images``
    from PIL import Image

    evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out_no_images")
    rgb, on_labels = (np.asarray(Image.open(tmp_path / out / "figures" / "case1.png").convert("L")).astype(int)
                      for out in ("out", "out_no_images"))
    assert rgb.shape == on_labels.shape and (rgb != on_labels).mean() > 0.3
    (imgs / "case3_img.nii.gz").rename(imgs / "other_img.nii.gz")
    with pytest.raises(InvalidInputError, match=r"no image in .*case3_label\.nii\.gz.*other_img\.nii\.gz"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out2", images=imgs)
    assert not (tmp_path / "out2").exists()
    # an image on another grid is an error naming both files
    image, _ = ellipsoid_phantom((8, 40, 30), rng=3)
    save_volume(image, imgs / "case3_img.nii.gz")
    with pytest.raises(GeometryError, match=r"case3_img\.nii\.gz.*case3_label\.nii\.gz"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out3", images=imgs)


def test_requested_label_in_no_file_is_an_error_not_a_perfect_score(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _cases(tmp_path, shift=0)
    with pytest.raises(InvalidInputError, match=r"label 5 is in neither .*case1_labels\.nii\.gz / case1_label\.nii\.gz"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", labels=[1, 5])
    assert not (tmp_path / "out").exists()
    assert main(["evaluate", str(tmp_path / "pred" / "case1_labels.nii.gz"), str(tmp_path / "gt" / "case1_label.nii.gz"),
                 "--out", str(tmp_path / "e"), "--labels", "5"]) == 1
    err = capsys.readouterr().err
    assert "label 5" in err and "case1_label.nii.gz" in err
    # absent from both files of one case only: scored as metrics.py says, with a warning naming the case
    image, label = ellipsoid_phantom((8, 40, 36), (2.0, 0.8, 0.8), rng=1)
    save_mask(np.where(label.array == 2, 0, label.array), image, tmp_path / "gt" / "case1_label.nii.gz")
    save_mask(np.where(label.array == 2, 0, label.array), image, tmp_path / "pred" / "case1_labels.nii.gz")
    with pytest.warns(EmptyLabelWarning, match=r"label 2 is absent from both .*case1"):
        report = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "out", labels=[1, 2], figures=False)
    row = next(r for r in report.rows if r["case"] == "case1" and r["label"] == 2)
    assert row["dice"] == 1.0 and row["pred_voxels"] == row["ref_voxels"] == 0
