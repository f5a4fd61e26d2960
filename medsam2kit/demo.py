"""The end-to-end demo: the three ways of segmenting a volume with SAM2, scored against truth.

On held-out phantoms (:func:`medsam2kit.reference.heldout_phantoms`: two support volumes and a
query) and, when present, on the real hippocampus MRI cases of the shared data folder, with the
bundled reference model (or any predictor):

* ``propagation``: the query's true mask on one slice per label (its largest) as the only
  prompt, propagated through the volume; beside it the copy-the-prompt baseline (that mask
  repeated on every slice);
* ``fewshot``: FATE-SAM from the two labelled supports, no prompt at all;
* ``sam2med3d``: a deliberately weak coarse network (a small U-Net fitted for a few steps on the
  supports), its reliable slices as prompts, SAM2 propagation and confidence fusion; beside it
  the coarse network alone.

:func:`run_demo` writes, per case, the image, the truth and every prediction as NIfTI (the
input's grid and geometry), one overlay montage per method, and the Dice table
(``dice_table.csv``, ``dice_table.md``) plus ``summary.json``. ``medsam2kit demo`` runs it.

Example:
    >>> from medsam2kit.reference import heldout_phantoms
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> (image, label), = heldout_phantoms(0, 1)
    >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    >>> out = one_prompt_propagation(pred, image, label)
    >>> out.labels.shape == image.shape, sorted(out.prompt_slices) == sorted(set(label.array.ravel()) - {0})
    (True, True)
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam2kit._files import atomic_write
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.errors import InvalidInputError
from medsam2kit.fewshot import FewShotPipeline, label_map_from_logits
from medsam2kit.metrics import dice
from medsam2kit.pipelines import SAM2Med3DPipeline
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.sequencer import sequence_volume
from medsam2kit.volume import Volume

Pair = tuple[Volume, Volume]


@dataclass(frozen=True)
class DiceRow:
    """One line of the Dice table.

    Attributes:
        task: ``"propagation"``, ``"fewshot"`` or ``"sam2med3d"``.
        case: the case's name.
        label: the label value.
        method: ``"sam2"``, ``"copy prompt"``, ``"fate-sam"``, ``"coarse"`` or ``"fused"``.
        dice: Dice against the truth (1.0 when both are empty).
    """

    task: str
    case: str
    label: int
    method: str
    dice: float


@dataclass(frozen=True)
class Propagated:
    """What :func:`one_prompt_propagation` made.

    Attributes:
        labels: the label map on the image's grid.
        prompt_slices: per label, the slice (along ``axis``) whose true mask was the prompt.
        axis: the slicing axis.
        baseline: per label, the copy-the-prompt baseline (the prompt mask on every slice).
    """

    labels: np.ndarray = field(repr=False)
    prompt_slices: Mapping[int, int]
    axis: int
    baseline: Mapping[int, np.ndarray] = field(repr=False)


def one_prompt_propagation(predictor: SAM2Predictor, image: Volume, label: Volume,
                           labels: Sequence[int] | None = None) -> Propagated:
    """Prompt each label with its true mask on its largest slice and propagate both ways.

    All labels are objects of one session (each slice is encoded once); the label map takes
    per voxel the label of the largest positive logit.

    Raises:
        InvalidInputError: ``label`` is not on ``image``'s grid, or a label is absent.
    """
    _check_pair(image, label, "label")
    wanted = _labels_of(label) if labels is None else tuple(int(v) for v in labels)
    seq = sequence_volume(image, image_size=predictor.image_size)
    axis = seq.layout.axis
    others = tuple(a for a in range(3) if a != axis)
    session = predictor.start(seq)
    prompts: dict[int, int] = {}
    baseline: dict[int, np.ndarray] = {}
    for lab in wanted:
        mask = label.array == lab
        areas = mask.sum(axis=others)
        if not areas.any():
            raise InvalidInputError(f"labels: label {lab} is absent from the label map")
        prompts[lab] = int(np.argmax(areas))
        prompt = np.take(mask, prompts[lab], axis=axis)
        session.add_mask(seq.frame_of_slice(prompts[lab]), seq.mask_to_frame(prompt), obj_id=lab)
        baseline[lab] = np.broadcast_to(np.expand_dims(prompt, axis), mask.shape).copy()
    result = session.propagate("both")
    logits = {lab: seq.to_volume_logits(result.logits()[:, k].numpy()) for k, lab in enumerate(result.obj_ids)}
    return Propagated(label_map_from_logits(logits, image.shape), prompts, axis, baseline)


def weak_coarse(supports: Sequence[Pair], *, num_labels: int, steps: int = 40,
                generator: torch.Generator | None = None) -> CoarseSegmenter:
    """A deliberately weak coarse network: a small 2D U-Net (64 px, 4 base channels, depth 2)
    fitted for ``steps`` steps on the support volumes (initial weights and shuffling drawn from
    ``generator``; ``None``: a fresh OS-seeded one)."""
    seg = CoarseSegmenter(CoarseConfig(num_labels=num_labels, image_size=64, base_channels=4, depth=2))
    seg.fit([s[0] for s in supports], [s[1] for s in supports], steps=steps, batch_size=8, generator=generator)
    return seg


def keep_labels(label: Volume, labels: Sequence[int]) -> Volume:
    """``label`` with every value outside ``labels`` set to 0.

    Example:
        >>> import numpy as np
        >>> lab = Volume(np.array([[[0, 1, 2, 3]]], np.uint8), np.eye(4))
        >>> keep_labels(lab, (1, 2)).array.tolist()
        [[[0, 1, 2, 0]]]
    """
    arr = np.asarray(label.array)
    return label.with_array(np.where(np.isin(arr, labels), arr, 0).astype(arr.dtype))


@dataclass(frozen=True)
class DemoCase:
    """A query with its truth and the labelled supports that FATE-SAM and the coarse network use.

    Attributes:
        name: folder and table name.
        query: ``(image, label)``.
        supports: labelled volumes (at least one).
        labels: the labels segmented by ``fewshot`` and ``sam2med3d`` (present in every support).
    """

    name: str
    query: Pair
    supports: tuple[Pair, ...]
    labels: tuple[int, ...]


def phantom_case(seed: int = 0) -> DemoCase:
    """Held-out phantoms (never seen in training): a query and two supports, labels 1 and 2
    (the shell and the core; a tube, label 3, is in some phantoms only and is left to
    ``propagation``)."""
    from medsam2kit.reference import heldout_phantoms

    query, *supports = heldout_phantoms(seed, 3)
    return DemoCase(f"phantom_{seed}", query, tuple(supports), (1, 2))


def hippocampus_cases(data_dir: Path) -> list[DemoCase]:
    """The shared hippocampus MRI cases, each in turn the query with the others as supports
    (labels 1 anterior, 2 posterior); empty when the folder is absent."""
    from medsam2kit.io import load_label, load_volume

    folder = data_dir / "msd_hippocampus"
    images = sorted(folder.glob("*_img.nii.gz")) if folder.is_dir() else []
    pairs = []
    for path in images:
        image = load_volume(path)
        pairs.append((path.name.removesuffix("_img.nii.gz"), (image, load_label(str(path).replace("_img.", "_label."),
                                                                                    like=image))))
    if len(pairs) < 2:
        return []
    return [DemoCase(name, pair, tuple(p for n, p in pairs if n != name), (1, 2))
            for name, pair in pairs]


def run_case(predictor: SAM2Predictor, case: DemoCase, out: Path | None = None, *,
             coarse_steps: int = 40, generator: torch.Generator | None = None,
             progress: Callable[[str], None] | None = None) -> list[DiceRow]:
    """All three tasks on one case; with ``out``, its NIfTI files and overlays go to ``out/<name>``
    (``generator`` draws the weak coarse network's weights and shuffling; ``progress`` is called
    with one line as each stage starts)."""
    image, label = case.query
    rows: list[DiceRow] = []
    maps: dict[str, np.ndarray] = {}
    stage = progress if progress is not None else (lambda line: None)

    stage(f"{case.name} {image.shape}: propagation from one prompted slice per label")
    prop = one_prompt_propagation(predictor, image, label)
    maps["propagation"] = prop.labels
    for lab in prop.prompt_slices:
        truth = label.array == lab
        rows.append(DiceRow("propagation", case.name, lab, "sam2", dice(prop.labels == lab, truth)))
        rows.append(DiceRow("propagation", case.name, lab, "copy prompt", dice(prop.baseline[lab], truth)))

    supports = tuple((img, keep_labels(lab, case.labels)) for img, lab in case.supports)
    truth_map = keep_labels(label, case.labels).array
    stage(f"{case.name}: FATE-SAM from {len(supports)} support(s)")
    fewshot = FewShotPipeline(predictor, supports)(image).array
    maps["fewshot"] = fewshot
    rows += [DiceRow("fewshot", case.name, lab, "fate-sam", dice(fewshot == lab, truth_map == lab)) for lab in case.labels]

    stage(f"{case.name}: SAM2Med3D (fitting a weak coarse network, {coarse_steps} steps, then SAM2)")
    coarse = weak_coarse(supports, num_labels=max(case.labels), steps=coarse_steps, generator=generator)
    result = SAM2Med3DPipeline(coarse, predictor).run(image)
    coarse_map = np.argmax(result.coarse, axis=0)
    maps["coarse"], maps["sam2med3d"] = coarse_map, result.labels.array
    for lab in case.labels:
        rows.append(DiceRow("sam2med3d", case.name, lab, "coarse", dice(coarse_map == lab, truth_map == lab)))
        rows.append(DiceRow("sam2med3d", case.name, lab, "fused", dice(result.labels.array == lab, truth_map == lab)))

    if out is not None:
        stage(f"{case.name}: writing {out / case.name}")
        _write_case(out / case.name, image, label, maps, prop.axis)
    return rows


def run_demo(out: Path, predictor: SAM2Predictor, *, seed: int = 0, data_dir: Path | None = None,
             coarse_steps: int = 40, info: Mapping[str, Any] | None = None,
             say: Callable[[str], None] = print,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every case, write the outputs and the Dice table to ``out``; returns the summary
    (also written to ``summary.json``, with ``info``: facts about the run such as the model).
    ``say`` receives the results (a line per case, the table); ``progress`` one line as each
    stage of each case starts (``medsam2kit demo`` prints them on stderr).

    ``seed`` is the demo's configuration, recorded in the case name: it picks the held-out
    phantom (:func:`phantom_case`) and seeds a fresh ``torch.Generator`` for each case's weak
    coarse network, so a run is reproducible from the command line.

    Raises:
        InvalidInputError: ``out`` is an existing file.
    """
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"out: expected a folder, got the file {out}")
    begin = time.perf_counter()
    cases = [phantom_case(seed)] + (hippocampus_cases(data_dir) if data_dir is not None else [])
    out.mkdir(parents=True, exist_ok=True)
    rows: list[DiceRow] = []
    seconds: dict[str, float] = {}
    for case in cases:
        start = time.perf_counter()
        if progress is not None:
            progress(f"case {len(seconds) + 1}/{len(cases)}: {case.name}")
        rows += run_case(predictor, case, out, coarse_steps=coarse_steps,
                         generator=torch.Generator().manual_seed(seed), progress=progress)
        seconds[case.name] = round(time.perf_counter() - start, 2)
        say(f"{case.name}: done in {seconds[case.name]} s")
    table = dice_table(rows)
    _write_text(out / "dice_table.md", table)
    _write_text(out / "dice_table.csv", _csv(rows))
    summary = {**(info or {}), "cases": [c.name for c in cases], "seconds": seconds,
               "seconds_total": round(time.perf_counter() - begin, 2), "rows": [asdict(r) for r in rows],
               "mean_dice": mean_dice(rows)}
    _write_text(out / "summary.json", json.dumps(summary, indent=2))
    say(table)
    return summary


def mean_dice(rows: Sequence[DiceRow]) -> dict[str, float]:
    """Mean Dice per ``task/method`` over cases and labels.

    Example:
        >>> mean_dice([DiceRow("fewshot", "a", 1, "fate-sam", 0.5), DiceRow("fewshot", "a", 2, "fate-sam", 1.0)])
        {'fewshot/fate-sam': 0.75}
    """
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r.task}/{r.method}", []).append(r.dice)
    return {k: round(float(np.mean(v)), 4) for k, v in groups.items()}


def dice_table(rows: Sequence[DiceRow]) -> str:
    """The rows as a Markdown table, one column per method of each task, one line per case and label."""
    methods = list(dict.fromkeys((r.task, r.method) for r in rows))
    keys = list(dict.fromkeys((r.case, r.label) for r in rows))
    value = {(r.case, r.label, r.task, r.method): r.dice for r in rows}
    head = "| case | label | " + " | ".join(f"{t}: {m}" for t, m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for case, lab in keys:
        cells = [f"{value[(case, lab, t, m)]:.3f}" if (case, lab, t, m) in value else "" for t, m in methods]
        lines.append(f"| {case} | {lab} | " + " | ".join(cells) + " |")
    means = mean_dice(rows)
    lines.append("| **mean** | | " + " | ".join(f"**{means[f'{t}/{m}']:.3f}**" for t, m in methods) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[DiceRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "case", "label", "method", "dice"])
    writer.writerows([r.task, r.case, r.label, r.method, f"{r.dice:.6f}"] for r in rows)
    return buf.getvalue()


def _write_case(folder: Path, image: Volume, label: Volume, maps: Mapping[str, np.ndarray], axis: int) -> None:
    from medsam2kit.io import save_mask, save_volume
    from medsam2kit.viz import overlay_montage, save_png

    folder.mkdir(parents=True, exist_ok=True)
    save_volume(image, folder / "image.nii.gz")
    save_mask(label.array, image, folder / "ground_truth.nii.gz")
    for name, arr in maps.items():
        save_mask(arr.astype(np.uint8), image, folder / f"{name}.nii.gz")
        save_png(overlay_montage(image, {"truth": np.asarray(label.array), name: arr}, axis=axis),
                 folder / f"overlay_{name}.png")


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _labels_of(label: Volume) -> tuple[int, ...]:
    return tuple(int(v) for v in np.unique(label.array) if v != 0)


def _check_pair(image: Volume, label: Volume, name: str) -> None:
    if not image.same_grid(label):
        raise InvalidInputError(f"{name}: expected a label map on the image's grid {image.shape}, got {label.shape} "
                                "or another affine")


__all__ = [
    "DemoCase",
    "DiceRow",
    "Propagated",
    "dice_table",
    "hippocampus_cases",
    "keep_labels",
    "mean_dice",
    "one_prompt_propagation",
    "phantom_case",
    "run_case",
    "run_demo",
    "weak_coarse",
]
