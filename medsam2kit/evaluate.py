"""Evaluation harness: score predicted label maps against references, case by case and overall.

``evaluate(pred, ref, out)`` pairs files (or folders of files), checks that each pair has the same
grid (shape and affine: a mismatch is an error naming both files), scores every label with
:func:`medsam2kit.metrics.per_label` (spacing-aware), and writes:

* ``per_case.csv``: one row per case and label (Dice, IoU, HD95, HD, ASSD, NSD, voxel counts);
* ``summary.csv``: per label and metric the mean, standard deviation, median, the 95 % confidence
  interval of the mean (Student t, clipped to the metric's range: ``[0, 1]`` for Dice, IoU and
  NSD, ``[0, inf)`` for distances; NaN with fewer than two cases) and the number of cases with a
  finite value;
* ``figures/<case>.png``: overlay montages of chosen slices, titled with the case, the Dice per
  label in the heading (prediction filled, reference dashed, one colour per label, a legend);
* ``figures/box_<metric>.png``: box plots per metric and label.

Files pair by case name (:func:`case_name`, the rule every command shares): ``a_labels.nii.gz``
written by ``segment``/``fewshot`` pairs with the reference ``a_label.nii.gz`` and the image
``a_img.nii.gz``. Every file is first written into a hidden staging folder inside ``out`` and
moved into place only when all of them were written, so a failed or interrupted run leaves no
partial file and no half set of outputs.

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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from medsam2kit._files import atomic_write, index_cases, staged_folder
from medsam2kit._files import case_name as _case_name
from medsam2kit.errors import GeometryError, InvalidInputError, MissingFileError
from medsam2kit.io import load_label, load_volume
from medsam2kit.metrics import SegmentationScores, per_label
from medsam2kit.viz import overlay_montage, save_png

METRICS = ("dice", "iou", "hd95", "hd", "assd", "nsd")

#: The range each metric can take; confidence intervals are clipped to it (see :func:`summarise`).
METRIC_RANGES: Mapping[str, tuple[float, float]] = {
    "dice": (0.0, 1.0), "iou": (0.0, 1.0), "nsd": (0.0, 1.0),
    "hd95": (0.0, math.inf), "hd": (0.0, math.inf), "assd": (0.0, math.inf),
}


class EmptyLabelWarning(UserWarning):
    """A requested label is absent from both the prediction and the reference of some cases."""


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
    """A case's name: the file name without its extension and role suffixes such as ``_img`` or
    ``_labels`` (the rule of :func:`medsam2kit._files.split_case`, shared by every command).

    Example:
        >>> case_name(Path("hippocampus_199_label.nii.gz")), case_name(Path("c7_img_labels.nii.gz"))
        ('hippocampus_199', 'c7')
    """
    return _case_name(path)


def pair_cases(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """``(case, prediction, reference)`` triples: two files, or two folders matched by case name.

    Raises:
        MissingFileError: a path does not exist.
        InvalidInputError: a file paired with a folder, no common case, a case missing on one side,
            or two files of one folder naming the same case (all named).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for sub, f in (("out", "a_labels.nii.gz"), ("refs", "a_label.nii.gz"), ("refs", "a_img.nii.gz")):
        ...     (d / sub).mkdir(exist_ok=True)
        ...     _ = (d / sub / f).write_text("")
        >>> [(c, p.name, r.name) for c, p, r in pair_cases(d / "out", d / "refs")]
        [('a', 'a_labels.nii.gz', 'a_label.nii.gz')]
    """
    for name, p in (("PRED", pred), ("GT", ref)):
        if not p.exists():
            raise MissingFileError(f"{name}: {p} does not exist")
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if pred.is_dir() != ref.is_dir():
        raise InvalidInputError(f"PRED, GT: expected two files or two folders, got {pred} and {ref}")

    preds, refs = index_cases(pred, role="label", name="PRED"), index_cases(ref, role="label", name="GT")
    missing = [refs[c].name for c in sorted(set(refs) - set(preds))]
    extra = [preds[c].name for c in sorted(set(preds) - set(refs))]
    if missing or extra:
        raise InvalidInputError(
            f"PRED, GT: the folders do not hold the same cases: no prediction in {pred} for {missing[:10]}; "
            f"no reference in {ref} for {extra[:10]} (case name = file name without extension and role "
            "suffix such as _img, _label, _labels, _seg, _mask, _pred)"
        )
    if not refs:
        raise InvalidInputError(f"GT: no label files in {ref}")
    return [(c, preds[c], refs[c]) for c in sorted(refs)]


def summarise(values: Sequence[float], *, bounds: tuple[float, float] = (-math.inf, math.inf)) -> Summary:
    """Mean, std (ddof 1), median and the 95 % CI of the mean over the finite values.

    The interval is Student's t interval of the mean, ``mean -/+ t(0.975, n - 1) * std / sqrt(n)``,
    clipped to ``bounds``, the range the metric can take (:data:`METRIC_RANGES`: ``[0, 1]`` for
    Dice, IoU and NSD, ``[0, inf)`` for distances), so a small cohort never reports a Dice
    interval below 0 or above 1. With fewer than two finite values the interval is undefined:
    NaN.

    Args:
        values: one value per case; ``inf`` (a distance to an empty mask) is counted apart.
        bounds: ``(lowest, highest)`` value of the metric.

    Example:
        >>> s = summarise([0.8, 0.9, 1.0, float("inf")])
        >>> round(s.mean, 3), s.n, s.n_infinite
        (0.9, 3, 1)
        >>> s = summarise([0.1, 0.95, 1.0], bounds=(0.0, 1.0))
        >>> s.ci95_low, s.ci95_high
        (0.0, 1.0)
    """
    lowest, highest = (float(b) for b in bounds)
    if not lowest <= highest:
        raise InvalidInputError(f"bounds: expected (lowest, highest) with lowest <= highest, got {bounds}")
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n = int(finite.size)
    if n == 0:
        nan = math.nan
        return Summary(nan, nan, nan, nan, nan, 0, int(arr.size))
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
        low, high = min(max(mean - half, lowest), highest), max(min(mean + half, highest), lowest)
    else:
        low = high = math.nan
    return Summary(mean, std, float(np.median(finite)), low, high, n, int(arr.size - n))


def format_interval(low: float, high: float, metric: str) -> str:
    """An interval printed unambiguously: ``[0.712, 0.934]`` (3 decimals for Dice, IoU and NSD,
    ``[1.20, 4.56] mm`` for distances); ``n/a`` when undefined (NaN).

    Example:
        >>> format_interval(-0.0, 1.0, "dice"), format_interval(0.5, math.inf, "hd95"), format_interval(math.nan, math.nan, "iou")
        ('[0.000, 1.000]', '[0.50, inf] mm', 'n/a')
    """
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    if METRIC_RANGES.get(metric, (0.0, math.inf))[1] == 1.0:
        return f"[{low + 0.0:.3f}, {high + 0.0:.3f}]"
    return f"[{low + 0.0:.2f}, {high + 0.0:.2f}] mm"


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
        labels: labels to score (default: every non-zero label in either map of each case). A
            requested label that is in no prediction and no reference is an error; one absent
            from both maps of some cases only is scored there as :mod:`medsam2kit.metrics`
            documents for two empty masks (Dice, IoU, NSD 1; distances 0), with a warning
            naming those cases.
        tolerance_mm: NSD tolerance.
        figures: write overlay montages and box plots.
        images: optional image file or folder to draw the montages on, paired with the cases by
            the same rule as predictions and references (:func:`case_name`: ``a_img.nii.gz`` is
            case ``a``); every case needs an image on its reference's grid. Without it the
            reference label map is the background.

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        MissingFileError: ``pred``, ``ref`` or ``images`` does not exist.
        InvalidInputError: cases that do not pair (the files are named), a case with no image in
            ``images``, a requested label in no file.
        ShapeMismatchError, GeometryError: a prediction or image not on its reference's grid
            (both files named).
    """
    pairs = pair_cases(Path(pred), Path(ref))
    image_paths = _images_by_case(Path(images), pairs) if images is not None else {}
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"out: expected a folder, got the file {out_dir}")
    rows: list[dict[str, object]] = []
    written: list[Path] = []
    montages: list[tuple[str, np.ndarray]] = []  # small RGB pictures, not the volumes: a cohort stays light
    for case, p_path, r_path in pairs:
        reference = load_volume(r_path)
        prediction = load_label(p_path, like=reference)  # same grid or an error naming both files
        scores = per_label(prediction.array, reference.array, labels, spacing=reference.spacing,
                           tolerance_mm=tolerance_mm)
        for lab, s in scores.items():
            rows.append({"case": case, "label": lab, **_row(s)})
        if figures:
            background = reference
            if case in image_paths:
                background = load_volume(image_paths[case])
                if not background.same_grid(reference, atol=1e-3):
                    raise GeometryError(
                        f"images: {image_paths[case]} ({background.shape}) is not on the grid of the reference "
                        f"{r_path} ({reference.shape}; affines differ or shapes differ)"
                    )
            montages.append((case, overlay_montage(
                background, {"prediction": prediction.array}, reference=reference.array, reference_name="reference",
                title=case, dice={"prediction": {lab: s.dice for lab, s in scores.items()}})))
    if labels is not None:
        _check_requested_labels(rows, pairs)
    summary = {
        (lab, metric): summarise([float(r[metric]) for r in rows if r["label"] == lab],  # type: ignore[arg-type]
                                 bounds=METRIC_RANGES[metric])
        for lab in sorted({int(r["label"]) for r in rows})  # type: ignore[call-overload]
        for metric in METRICS
    }
    with staged_folder(out_dir, name="out") as stage:  # every file, or none: moved into out_dir at the end
        written.append(_write_csv(stage / "per_case.csv", rows))
        written.append(_write_csv(stage / "summary.csv", [
            {"label": lab, "metric": metric, **asdict(s)} for (lab, metric), s in summary.items()
        ]))
        if figures:
            fig_dir = stage / "figures"
            fig_dir.mkdir(exist_ok=True)
            for case, montage in montages:
                written.append(save_png(montage, fig_dir / f"{case}.png"))
            for metric in METRICS:
                groups = {f"label {lab}": [float(r[metric]) for r in rows if r["label"] == lab]  # type: ignore[arg-type]
                          for lab in sorted({int(r["label"]) for r in rows})}  # type: ignore[call-overload]
                written.append(save_png(box_plot(groups, title=metric), fig_dir / f"box_{metric}.png"))
        written = [out_dir / p.relative_to(stage) for p in written]
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


def _images_by_case(path: Path, pairs: Sequence[tuple[str, Path, Path]]) -> dict[str, Path]:
    """``{case: image}`` for every case, by the rule of :func:`case_name`; an error names the
    references left without an image."""
    if not path.exists():
        raise MissingFileError(f"images: {path} does not exist")
    if path.is_file():
        if len(pairs) != 1:
            raise InvalidInputError(
                f"images: expected a folder of images for {len(pairs)} cases, got the file {path}"
            )
        return {pairs[0][0]: path}
    found = index_cases(path, role="image", name="images")
    unmatched = [r.name for c, _, r in pairs if c not in found]
    if unmatched:
        raise InvalidInputError(
            f"images: no image in {path} for the references {unmatched[:10]}"
            + (f" (and {len(unmatched) - 10} more)" if len(unmatched) > 10 else "")
            + f"; images found there: {sorted(p.name for p in found.values())[:10]} (case name = file name "
            "without extension and role suffix such as _img or _label)"
        )
    return {c: found[c] for c, _, _ in pairs}


def _check_requested_labels(rows: Sequence[Mapping[str, object]], pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """A requested label in no file is an error; one missing from both maps of some cases a warning."""
    for lab in sorted({int(r["label"]) for r in rows}):  # type: ignore[call-overload]
        both_empty = [str(r["case"]) for r in rows if r["label"] == lab and r["pred_voxels"] == 0
                      and r["ref_voxels"] == 0]
        if len(both_empty) == len(pairs):
            files = [f"{p.name} / {r.name}" for _, p, r in pairs[:5]] + (["..."] if len(pairs) > 5 else [])
            raise InvalidInputError(
                f"labels: label {lab} is in neither the predictions nor the references ({', '.join(files)}); "
                "scoring it would report a perfect match of two empty masks. Give labels present in the files "
                "(or omit --labels to score every label found)"
            )
        if both_empty:
            warnings.warn(
                f"labels: label {lab} is absent from both prediction and reference of {both_empty[:10]}; "
                "scored there as agreement (Dice, IoU, NSD 1, distances 0; see medsam2kit.metrics)",
                EmptyLabelWarning,
                stacklevel=3,
            )


def _write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    buffer = _io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue()))


__all__ = [
    "METRICS",
    "METRIC_RANGES",
    "EmptyLabelWarning",
    "EvaluationReport",
    "Summary",
    "box_plot",
    "case_name",
    "evaluate",
    "format_interval",
    "pair_cases",
    "summarise",
]
