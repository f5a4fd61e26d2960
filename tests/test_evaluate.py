from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from medsam2kit.cli import main
from medsam2kit.errors import GeometryError, InvalidInputError, ShapeMismatchError
from medsam2kit.evaluate import box_plot, case_name, evaluate, summarise
from medsam2kit.io import save_mask
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
    assert (s.ci95_low, s.ci95_high) == pytest.approx((low, high))
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
