"""Evaluation harness: score predicted label maps against references, case by case and overall.

``evaluate(pred, ref, out)`` pairs files (or folders of files), checks that each pair has the same
grid (shape and affine: a mismatch is an error naming both files), scores every label with
:func:`medsam2kit.metrics.per_label` (spacing-aware), and writes:

* ``per_case.csv``: one row per case and label (Dice, IoU, HD95, HD, ASSD, NSD, voxel counts);
* ``summary.csv``: per label and metric the mean, standard deviation, median, the 95 % confidence
  interval of the mean (Student t) and the number of cases with a finite value;
* ``figures/<case>.png``: overlay montages (reference and prediction outlines) of chosen slices;
* ``figures/box_<metric>.png``: box plots per metric and label.

Every file is written to a temporary name and renamed, so an interrupted run leaves no partial
file.

Example:
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from medsam2kit.io import save_mask
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> image, label = ellipsoid_phantom((6, 32, 32), rng=0)
    >>> _ = save_mask(label.array, image, tmp / "case.nii.gz")
    >>> report = evaluate(tmp / "case.nii.gz", tmp / "case.nii.gz", tmp / "eval", figures=False)
    >>> report.summary[(1, "dice")].mean
    1.0
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from medsam2kit._files import atomic_write
from medsam2kit.errors import InvalidInputError, MissingFileError
from medsam2kit.io import load_label, load_volume
from medsam2kit.metrics import SegmentationScores, per_label
from medsam2kit.viz import overlay_montage, save_png
from medsam2kit.volume import Volume

METRICS = ("dice", "iou", "hd95", "hd", "assd", "nsd")
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".npz", ".dcm")
_TAGS = ("_labels", "_label", "_mask", "_seg", "_pred", "_gt")


@dataclass(frozen=True)
class Summary:
    """Statistics of one metric for one label over the cases with a finite value."""

    mean: float
    std: float
    median: float
    ci95_low: float
    ci95_high: float
    n: int
    n_infinite: int


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """The scores: ``rows`` per case and label, ``summary`` per (label, metric), the files written."""

    rows: Sequence[Mapping[str, object]]
    summary: Mapping[tuple[int, str], Summary]
    files: Sequence[Path]


def case_name(path: Path) -> str:
    """A case's name: the file name without image suffixes and a trailing tag such as ``_labels``.

    Example:
        >>> case_name(Path("hippocampus_199_label.nii.gz")), case_name(Path("c7_labels.nii.gz"))
        ('hippocampus_199', 'c7')
    """
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    for tag in _TAGS:
        if name.endswith(tag):
            return name[: -len(tag)]
    return name


def pair_cases(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """``(case, prediction, reference)`` triples: two files, or two folders matched by case name.

    Raises:
        MissingFileError: a path does not exist.
        InvalidInputError: a file paired with a folder, no common case, or a case missing on one side
            (all named).
    """
    for name, p in (("PRED", pred), ("GT", ref)):
        if not p.exists():
            raise MissingFileError(f"{name}: {p} does not exist")
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if pred.is_dir() != ref.is_dir():
        raise InvalidInputError(f"PRED, GT: expected two files or two folders, got {pred} and {ref}")

    def index(folder: Path) -> dict[str, Path]:
        return {case_name(p): p for p in sorted(folder.iterdir()) if p.name.lower().endswith(_SUFFIXES)}

    preds, refs = index(pred), index(ref)
    missing = sorted(set(refs) - set(preds))
    extra = sorted(set(preds) - set(refs))
    if missing or extra:
        raise InvalidInputError(
            f"PRED, GT: the folders do not hold the same cases: no prediction in {pred} for {missing[:10]}; "
            f"no reference in {ref} for {extra[:10]}"
        )
    if not refs:
        raise InvalidInputError(f"GT: no label files in {ref}")
    return [(c, preds[c], refs[c]) for c in sorted(refs)]


def summarise(values: Sequence[float]) -> Summary:
    """Mean, std (ddof 1), median and the t-based 95 % CI of the mean over the finite values.

    Example:
        >>> s = summarise([0.8, 0.9, 1.0, float("inf")])
        >>> round(s.mean, 3), s.n, s.n_infinite
        (0.9, 3, 1)
    """
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n = int(finite.size)
    if n == 0:
        nan = math.nan
        return Summary(nan, nan, nan, nan, nan, 0, int(arr.size))
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    return Summary(mean, std, float(np.median(finite)), mean - half, mean + half, n, int(arr.size - n))


def evaluate(
    pred: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 1.0,
    figures: bool = True,
    images: str | os.PathLike[str] | None = None,
) -> EvaluationReport:
    """Score predictions against references and write the CSVs and figures to ``out``.

    Args:
        pred: a label-map file or a folder of them.
        ref: the reference file or folder (cases matched by name, see :func:`case_name`).
        out: output folder (created).
        labels: labels to score (default: every non-zero label in either map of each case).
        tolerance_mm: NSD tolerance.
        figures: write overlay montages and box plots.
        images: optional image file or folder (matched by case name) to draw the montages on;
            without it the reference label map is the background.

    Returns:
        The :class:`EvaluationReport`.
    """
    pairs = pair_cases(Path(pred), Path(ref))
    image_paths = _images_by_case(Path(images)) if images is not None else {}
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"out: expected a folder, got the file {out_dir}")
    rows: list[dict[str, object]] = []
    written: list[Path] = []
    loaded: list[tuple[str, Volume, np.ndarray, Path]] = []
    for case, p_path, r_path in pairs:
        reference = load_volume(r_path)
        prediction = load_label(p_path, like=reference)  # same grid or an error naming both files
        scores = per_label(prediction.array, reference.array, labels, spacing=reference.spacing,
                           tolerance_mm=tolerance_mm)
        for lab, s in scores.items():
            rows.append({"case": case, "label": lab, **_row(s)})
        loaded.append((case, reference, prediction.array, r_path))
    summary = {
        (lab, metric): summarise([float(r[metric]) for r in rows if r["label"] == lab])  # type: ignore[arg-type]
        for lab in sorted({int(r["label"]) for r in rows})  # type: ignore[call-overload]
        for metric in METRICS
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written.append(_write_csv(out_dir / "per_case.csv", rows))
    written.append(_write_csv(out_dir / "summary.csv", [
        {"label": lab, "metric": metric, **asdict(s)} for (lab, metric), s in summary.items()
    ]))
    if figures:
        fig_dir = out_dir / "figures"
        fig_dir.mkdir(exist_ok=True)
        for case, ref_vol, pred_array, _ in loaded:
            background = ref_vol
            if case in image_paths:
                img = load_volume(image_paths[case])
                if img.same_grid(ref_vol, atol=1e-3):
                    background = img
            montage = overlay_montage(background, {"reference": ref_vol.array, "prediction": pred_array})
            written.append(save_png(montage, fig_dir / f"{case}.png"))
        for metric in METRICS:
            groups = {f"label {lab}": [float(r[metric]) for r in rows if r["label"] == lab]  # type: ignore[arg-type]
                      for lab in sorted({int(r["label"]) for r in rows})}  # type: ignore[call-overload]
            written.append(save_png(box_plot(groups, title=metric), fig_dir / f"box_{metric}.png"))
    return EvaluationReport(rows=rows, summary=summary, files=written)


def box_plot(groups: Mapping[str, Sequence[float]], *, title: str, size: tuple[int, int] = (480, 320)) -> np.ndarray:
    """A box plot (median, quartiles, 1.5 IQR whiskers, outliers) of finite values per group, as RGB.

    Example:
        >>> box_plot({"a": [0.7, 0.8, 0.9]}, title="dice").shape
        (320, 480, 3)
    """
    from PIL import Image, ImageDraw

    w, h = size
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    data = {k: np.asarray([v for v in vals if np.isfinite(v)], dtype=np.float64) for k, vals in groups.items()}
    finite = np.concatenate([v for v in data.values() if v.size] or [np.zeros(1)])
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    top, bottom, left, right = 30, h - 30, 60, w - 20

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    draw.text((left, 8), title, fill=(0, 0, 0))
    for tick in np.linspace(lo, hi, 5):
        draw.line([(left - 4, y(tick)), (right, y(tick))], fill=(225, 225, 225))
        draw.text((4, y(tick) - 6), f"{tick:.3g}", fill=(0, 0, 0))
    slot = (right - left) / max(len(data), 1)
    for i, (name, vals) in enumerate(data.items()):
        cx = left + slot * (i + 0.5)
        draw.text((cx - 4 * len(name), bottom + 8), name, fill=(0, 0, 0))
        if not vals.size:
            continue
        q1, med, q3 = np.percentile(vals, [25, 50, 75])
        iqr = q3 - q1
        inside = vals[(vals >= q1 - 1.5 * iqr) & (vals <= q3 + 1.5 * iqr)]
        half = slot * 0.25
        draw.rectangle([cx - half, y(q3), cx + half, y(q1)], outline=(40, 90, 200), width=2)
        draw.line([(cx - half, y(med)), (cx + half, y(med))], fill=(200, 40, 40), width=2)
        draw.line([(cx, y(q3)), (cx, y(inside.max()))], fill=(40, 90, 200))
        draw.line([(cx, y(q1)), (cx, y(inside.min()))], fill=(40, 90, 200))
        for v in vals[(vals < q1 - 1.5 * iqr) | (vals > q3 + 1.5 * iqr)]:
            draw.ellipse([cx - 3, y(v) - 3, cx + 3, y(v) + 3], outline=(0, 0, 0))
    return np.asarray(canvas)


def _row(s: SegmentationScores) -> dict[str, object]:
    return {**{m: getattr(s, m) for m in METRICS}, "tolerance_mm": s.tolerance_mm,
            "pred_voxels": s.pred_voxels, "ref_voxels": s.ref_voxels}


def _images_by_case(path: Path) -> dict[str, Path]:
    if not path.exists():
        raise MissingFileError(f"images: {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name.lower().endswith(_SUFFIXES))
    return {case_name(p): p for p in files}


def _write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    buffer = _io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


__all__ = ["METRICS", "EvaluationReport", "Summary", "box_plot", "case_name", "evaluate", "pair_cases", "summarise"]
