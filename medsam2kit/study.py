"""The ultrasound fine-tuning study (Yao et al., arXiv 2511.05731), reproduced at small scale on
the shared real ultrasound.

The paper adapts SAM2 to ultrasound video and varies training-set size, temporal context (clip
length), augmentation and paradigm (task-specific, intermediate adaptation, joint). This module
runs the same kind of grid with :mod:`medsam2kit.train` on what this project has: 11 carotid
recordings and 316 fetal-head images (``../shared/data``).

* Design (:class:`StudyPlan`): one factor at a time around a base cell (:class:`Cell`), each
  cell trained for the same small budget from a bundled model, repeated over seeds. Factors:
  ``fraction`` of the training recordings, ``clip_length``, ``augment`` (none, generic = SAM2's
  video transforms, ultrasound, combined), ``paradigm``, ``init`` (the weights it starts from)
  and ``lr`` (to choose ``finetune``'s defaults for the small models, see
  :func:`medsam2kit.models.finetune_defaults`).
* Data: the task is the carotid recordings minus the held-out ones
  (:data:`medsam2kit.reference.HELD_OUT`: 8 train, 3 held out, split by recording, never by
  frame); the second ultrasound task (intermediate adaptation's pool, joint training's other
  task) is the training fetal-head images, each an 8-frame clip moving along a smooth random
  trajectory (:func:`medsam2kit.train.selfsup.moving_clip`).
* Evaluation (:func:`evaluate_model`): the 3 held-out recordings, prompted on the first
  labelled frame as the paper does (true mask, its box, clicks with simulated corrections:
  :func:`medsam2kit.tasks.track_recording`) and propagated forward, Dice and J&F of the later
  frames; the held-out fetal-head images with box prompts (the joint paradigm's other task).
  The untrained start models are scored too (``zero-shot`` rows).
* Running (:func:`run_study`): cell by cell, each result written atomically to
  ``cells/<name>/result.json``; a rerun skips finished cells (resumable), ``workers`` processes
  share the cores. :func:`write_report` writes ``results.csv``, ``summary.md`` (tables per factor
  and a verdict on each of the paper's relative claims), ``summary.json`` and ``study.png``.

The base cell starts from the default model ``reference``, as a user of the library would. That
model already trained on the 8 carotid training recordings (one of its four sources), so the
``fraction`` factor measures how much task-specific fine-tuning data matters on top of that
exposure, not data scale from nothing; the ``init`` factor's other level, ``reference-phantoms``,
never saw ultrasound (the small analogue of a SAM2 pretrained on natural video). ``medsam2kit study --quick`` runs :data:`QUICK_PLAN` (minutes);
:data:`FULL_PLAN` is the grid of ``docs/us_study.md``.

Example:
    >>> plan = StudyPlan(levels=(("fraction", (0.5, 1.0)), ("clip_length", (1, 8))), seeds=(0, 1))
    >>> [c.name for c in plan.cells()][:2]
    ['frac1_clip8_aug-none_task_specific_init-reference_lr0.0003_seed0', 'frac0.5_clip8_aug-none_task_specific_init-reference_lr0.0003_seed0']
    >>> len(plan.cells())
    6
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from medsam2kit._files import atomic_write
from medsam2kit._parallel import run_calls
from medsam2kit.errors import ConfigError, InvalidInputError, MissingFileError
from medsam2kit.models import REFERENCE, REFERENCE_PHANTOMS
from medsam2kit.reference import CASE_PATTERNS, SharedArrays, Split, shared_files, shared_images, shared_recordings
from medsam2kit.train.config import AugmentName, Paradigm, TrainConfig

Factor = Literal["fraction", "clip_length", "augment", "paradigm", "init", "lr"]
#: The shared cases the study may train on (all but the held-out ones), and those it scores on.
_TRAINABLE: tuple[Split, ...] = ("train", "validation")
_HELD_OUT: tuple[Split, ...] = ("held_out",)
#: The factors a plan may vary, in the order the report lists them.
FACTORS: tuple[Factor, ...] = get_args(Factor)
#: The prompts of the carotid evaluation (first labelled frame).
PROMPTS: tuple[str, ...] = ("mask", "box", "point")
#: The metrics of a cell's result (means over the held-out recordings / images).
METRICS: tuple[str, ...] = (*(f"carotid_{p}_{m}" for p in PROMPTS for m in ("dice", "jf")),
                            "carotid_dice", "carotid_jf", "fetal_box_dice")


@dataclass(frozen=True)
class Cell:
    """One training run of the study.

    Attributes:
        fraction: share of the 8 training carotid recordings kept (drawn with ``seed``; at least one).
        clip_length: frames per training clip.
        augment: clip augmentation preset (see :func:`medsam2kit.train.data.make_augmenter`).
        paradigm: ``"task_specific"`` (carotid only), ``"intermediate"`` (fetal head, then carotid,
            each for the plan's steps) or ``"joint"`` (both mixed 1:1 for the plan's steps).
        init: the zoo model it starts from (``medsam2kit models``).
        lr: learning rate of every part (image encoder included).
        seed: seed of the recording subset, clip sampling, prompts, augmentation and dropout.
    """

    fraction: float = 1.0
    clip_length: int = 8
    augment: AugmentName = "none"
    paradigm: Paradigm = "task_specific"
    init: str = REFERENCE
    lr: float = 3e-4
    seed: int = 0

    @property
    def key(self) -> str:
        """The cell without its seed (what seeds repeat)."""
        return (f"frac{self.fraction:g}_clip{self.clip_length}_aug-{self.augment}_{self.paradigm}_init-{self.init}"
                f"_lr{self.lr:g}")

    @property
    def name(self) -> str:
        """A folder-safe name, unique per cell and seed."""
        return f"{self.key}_seed{self.seed}"


#: The full grid's levels: the paper's knobs, plus the start model and the learning rate.
DEFAULT_LEVELS: tuple[tuple[Factor, tuple[Any, ...]], ...] = (
    ("fraction", (0.25, 0.5, 1.0)),
    ("clip_length", (1, 4, 8)),
    ("augment", ("none", "generic", "ultrasound", "combined")),
    ("paradigm", ("task_specific", "intermediate", "joint")),
    ("init", (REFERENCE_PHANTOMS, REFERENCE)),
    ("lr", (5e-6, 5e-5, 3e-4, 1e-3)),
)


@dataclass(frozen=True)
class StudyPlan:
    """A one-factor-at-a-time grid around ``base``, repeated over ``seeds``.

    Attributes:
        base: the cell every factor varies from (its seed is replaced by each of ``seeds``).
        levels: per factor, the values tried (the others stay at ``base``'s).
        seeds: repetitions of every cell (their spread is reported).
        steps: optimiser steps of every training stage (intermediate adaptation runs two).
        batch_size: clips per step.
        corrections: correction clicks of the point prompt at most.
        images: held-out fetal-head images scored (the first ones; 0: all).
    """

    base: Cell = field(default_factory=Cell)
    levels: tuple[tuple[Factor, tuple[Any, ...]], ...] = DEFAULT_LEVELS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 200
    batch_size: int = 2
    corrections: int = 3
    images: int = 0

    def __post_init__(self) -> None:
        for factor, values in self.levels:
            if factor not in FACTORS:
                raise ConfigError(f"levels: unknown factor {factor!r} (known: {list(FACTORS)})")
            if not values:
                raise ConfigError(f"levels: factor {factor!r} has no value")
        if not self.seeds:
            raise ConfigError("seeds: expected at least one seed")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.corrections < 0 or self.images < 0:
            raise ConfigError(f"corrections, images: expected >= 0, got {self.corrections}, {self.images}")

    def cells(self) -> list[Cell]:
        """Every cell to train: the base, then each factor's other levels; all of seed 0 first,
        then seed 1, ... (so an interrupted run has whole seeds)."""
        keys: list[Cell] = [self.base]
        for factor, values in self.levels:
            for value in values:
                cell = dataclasses.replace(self.base, **{factor: value})
                if cell not in keys:
                    keys.append(cell)
        return [dataclasses.replace(c, seed=s) for s in self.seeds for c in keys]

    def inits(self) -> tuple[str, ...]:
        """The start models of the plan's cells (each also scored untrained)."""
        return tuple(dict.fromkeys(c.init for c in self.cells()))

    @property
    def settings(self) -> dict[str, Any]:
        """What a stored cell result must have been made with to be reused."""
        return {"steps": self.steps, "batch_size": self.batch_size, **self.scoring}

    @property
    def scoring(self) -> dict[str, Any]:
        """What a stored untrained (zero-shot) result must have been made with to be reused."""
        return {"corrections": self.corrections, "images": self.images}


#: The grid of ``docs/us_study.md``: 14 cells x 3 seeds, 200 steps of 2 clips each (under an
#: hour and a half on two CPU cores with two workers).
FULL_PLAN = StudyPlan()
#: ``--quick``: 3 cells, one seed, 30 steps, 16 fetal images (a smoke test of the whole path, minutes).
QUICK_PLAN = StudyPlan(levels=(("fraction", (0.25, 1.0)), ("clip_length", (1, 8))), seeds=(0,), steps=30, images=16)


@dataclass(frozen=True)
class CellResult:
    """The scores of one trained cell, or of a start model untrained (``trained=False``).

    Attributes:
        cell: what was trained (for an untrained model: the base cell with its ``init``).
        trained: ``False`` for the zero-shot rows.
        metrics: see :data:`METRICS`.
        per_recording: recording -> prompt -> ``{"dice", "jf", "clicks"}``.
        recordings: the training recordings used (empty when untrained).
        settings: the plan settings it was made with (:attr:`StudyPlan.settings`; untrained:
            :attr:`StudyPlan.scoring`).
        train_s, eval_s: wall time of training and of scoring.
    """

    cell: Cell
    trained: bool
    metrics: Mapping[str, float]
    per_recording: Mapping[str, Mapping[str, Mapping[str, float]]] = field(repr=False)
    recordings: tuple[str, ...]
    settings: Mapping[str, Any]
    train_s: float = 0.0
    eval_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (read back by :meth:`from_dict`)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellResult:
        """The result a :meth:`to_dict` dict describes."""
        return cls(cell=Cell(**data["cell"]), trained=bool(data["trained"]), metrics=dict(data["metrics"]),
                   per_recording=data["per_recording"], recordings=tuple(data["recordings"]),
                   settings=dict(data["settings"]), train_s=float(data["train_s"]), eval_s=float(data["eval_s"]))


# --------------------------------------------------------------------------------------------
# Data and configuration
# --------------------------------------------------------------------------------------------


def check_data(data_dir: Path) -> None:
    """The shared ultrasound the study needs: carotid recordings (training and held-out ones) and
    fetal-head images.

    Raises:
        MissingFileError: a folder or its held-out or training cases are missing.
    """
    for folder in ("carotid_us", "hc18_fetal_us"):
        held = shared_files(data_dir, folder, _HELD_OUT)
        rest = shared_files(data_dir, folder, _TRAINABLE)
        if not held or not rest:
            raise MissingFileError(
                f"data: {data_dir / folder} must hold {CASE_PATTERNS[folder]} files, training and held-out ones "
                f"(found {len(held) + len(rest)}, {len(held)} held out); the study needs the shared data folder "
                "(--data, $MEDSAM2KIT_DATA or ../shared/data)")


def training_recordings(data_dir: Path) -> list[Path]:
    """The carotid recordings the study may train on (the held-out ones excluded), sorted."""
    return shared_files(data_dir, "carotid_us", _TRAINABLE)


def _fetal_specs(data_dir: Path, seed: int) -> list[dict[str, Any]]:
    images = shared_files(data_dir, "hc18_fetal_us", _TRAINABLE)
    return [{"kind": "images", "path": str(p), "motion_frames": 8, "seed": seed, "weight": 1.0 / len(images),
             "name": f"fetal:{p.stem}"} for p in images]


def cell_config(cell: Cell, plan: StudyPlan, data_dir: Path, output_dir: Path) -> tuple[TrainConfig, tuple[str, ...]]:
    """The training run of ``cell`` and the names of the recordings it trains on.

    The recipe is the bundled models' (AdamW on every part at ``cell.lr`` after a warm-up of a
    tenth of the steps, cosine to 2 %, weight decay 0.01, gradients clipped at norm 1; prompts as
    SAM2 trains: masks, or clicks/boxes with one round of two correction clicks), with the
    cell's clip length, augmentation, paradigm and start model.
    """
    from medsam2kit.models import resolve_model
    from medsam2kit.train.config import config_from_dict
    from medsam2kit.train.data import derive_seed, take_fraction

    spec = resolve_model(cell.init)
    chosen = take_fraction(training_recordings(data_dir), cell.fraction, seed=derive_seed(cell.seed, 17))
    train = [{"kind": "cine", "path": str(p), "name": f"carotid:{p.stem}", "weight": 1.0 / len(chosen)}
             for p in chosen]
    pool = _fetal_specs(data_dir, derive_seed(cell.seed, 19)) if cell.paradigm != "task_specific" else []
    cfg = config_from_dict({
        "paradigm": cell.paradigm,
        "model": {"config": spec.config, "checkpoint": str(spec.checkpoint), "image_size": spec.image_size},
        "data": {"train": train, "pool": pool, "clip_length": cell.clip_length, "batch_size": plan.batch_size,
                 "max_objects": 1, "augment": cell.augment, "augment_p": 0.5},
        "prompts": {"mode": "mixed", "prob_point": 0.5, "frames_to_correct": 1, "correction_clicks": 2},
        "optim": {"lr": cell.lr, "encoder_lr": cell.lr, "weight_decay": 0.01, "grad_clip": 1.0,
                  "warmup_steps": max(plan.steps // 10, 1), "min_lr_ratio": 0.02},
        "schedule": {"steps": plan.steps, "stage1_steps": plan.steps, "steps_per_epoch": plan.steps,
                     "val_every_epochs": 0, "save_every_epochs": 0},
        "log": {"progress": False, "plot": False},
        "output_dir": str(output_dir),
        "seed": cell.seed,
    }, source=f"study cell {cell.name}")
    return cfg, tuple(p.stem for p in chosen)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """The held-out ultrasound of the study's evaluation.

    Attributes:
        recordings: the held-out carotid recordings.
        images: the held-out fetal-head images scored.
    """

    recordings: tuple[SharedArrays, ...] = field(repr=False)
    images: tuple[SharedArrays, ...] = field(repr=False)


def load_held_out(data_dir: Path, *, images: int = 0) -> HeldOut:
    """The held-out carotid recordings and fetal-head images (the first ``images``; 0: all)."""
    pictures = shared_images(data_dir)
    return HeldOut(tuple(shared_recordings(data_dir)), tuple(pictures[:images] if images else pictures))


def evaluate_model(predictor: Any, held_out: HeldOut, *, corrections: int = 3) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]]]:
    """Score a model as the study does: each held-out recording prompted on its first labelled
    frame by mask, box and clicks (at most ``corrections`` corrections), and each held-out image
    by the box around the head.

    Returns:
        ``(metrics, per_recording)``: :data:`METRICS` (means over recordings and images; the
        ``carotid_dice``/``carotid_jf`` means also over the three prompts), and per recording and
        prompt ``{"dice", "jf", "clicks"}``.
    """
    from medsam2kit.metrics import dice
    from medsam2kit.tasks import box_prompt_image, track_recording

    per: dict[str, dict[str, dict[str, float]]] = {}
    for case in held_out.recordings:
        per[case.name] = {}
        for prompt in PROMPTS:
            s = track_recording(predictor, case.image, case.label, prompt=prompt,  # type: ignore[arg-type]
                                corrections=corrections)
            per[case.name][prompt] = {"dice": s.dice, "jf": s.jf, "clicks": float(s.clicks)}
    metrics: dict[str, float] = {}
    for prompt in PROMPTS:
        for m in ("dice", "jf"):
            metrics[f"carotid_{prompt}_{m}"] = float(np.mean([per[r][prompt][m] for r in per]))
    for m in ("dice", "jf"):
        metrics[f"carotid_{m}"] = float(np.mean([metrics[f"carotid_{p}_{m}"] for p in PROMPTS]))
    # SAM2's mask as it is (not cut to the box): the study's figures were measured that way
    scores = [dice(box_prompt_image(predictor, c.image, c.label, inside_box=False), c.label) for c in held_out.images]
    metrics["fetal_box_dice"] = float(np.mean(scores)) if scores else float("nan")
    return metrics, per


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

_MODEL_FILES = ("checkpoint_last.pt", "model_final.pt")


def _load_result(path: Path, settings: Mapping[str, Any], cell: Cell) -> CellResult | None:
    if not path.is_file():
        return None
    try:
        result = CellResult.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"study: {path} is not a study result ({err}); remove it or use another --out") from None
    if dict(result.settings) != dict(settings) or result.cell != cell:
        raise ConfigError(f"study: {path} was made with other settings ({dict(result.settings)}, not "
                          f"{dict(settings)}); use another --out, or --overwrite to redo it")
    return result


def _write_result(path: Path, result: CellResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=1)))


def run_cell(cell: Cell, plan: StudyPlan, data_dir: Path, out: Path, *, keep_models: bool = False,
             overwrite: bool = False) -> CellResult:
    """Train ``cell`` (unless ``out/cells/<name>/result.json`` already holds it), score it on the
    held-out ultrasound and write the result (atomically). The model files are removed after
    scoring unless ``keep_models``; the step records (``metrics.jsonl``) stay."""
    from medsam2kit.predictor import SAM2Predictor
    from medsam2kit.train.loop import fit

    folder = out / "cells" / cell.name
    path = folder / "result.json"
    found = None if overwrite else _load_result(path, plan.settings, cell)
    if found is not None:
        return found
    cfg, recordings = cell_config(cell, plan, data_dir, folder / "run")
    t0 = time.perf_counter()
    fitted = fit(cfg)
    train_s = time.perf_counter() - t0
    predictor = SAM2Predictor.from_config(cfg.model.config, fitted.final_model, device=cfg.device,
                                          image_size=cfg.model.image_size)
    metrics, per = evaluate_model(predictor, load_held_out(data_dir, images=plan.images), corrections=plan.corrections)
    result = CellResult(cell, True, metrics, per, recordings, plan.settings, train_s, time.perf_counter() - t0 - train_s)
    if not keep_models:
        for stale in (f for name in _MODEL_FILES for f in (folder / "run").rglob(name)):
            stale.unlink()
    _write_result(path, result)
    return result


def run_zero_shot(init: str, plan: StudyPlan, data_dir: Path, out: Path, *, overwrite: bool = False) -> CellResult:
    """Score the start model ``init`` untrained (``out/zero_shot/<init>/result.json``)."""
    from medsam2kit.predictor import SAM2Predictor

    cell = dataclasses.replace(plan.base, init=init, seed=0)
    path = out / "zero_shot" / init / "result.json"
    found = None if overwrite else _load_result(path, plan.scoring, cell)
    if found is not None:
        return found
    t0 = time.perf_counter()
    metrics, per = evaluate_model(SAM2Predictor.from_pretrained(init), load_held_out(data_dir, images=plan.images),
                                  corrections=plan.corrections)
    result = CellResult(cell, False, metrics, per, (), plan.scoring, 0.0, time.perf_counter() - t0)
    _write_result(path, result)
    return result


def _job(kind: str, arg: Any, plan: StudyPlan, data_dir: Path, out: Path, keep_models: bool,
         overwrite: bool) -> CellResult:
    if kind == "zero_shot":
        return run_zero_shot(arg, plan, data_dir, out, overwrite=overwrite)
    return run_cell(arg, plan, data_dir, out, keep_models=keep_models, overwrite=overwrite)


def run_study(plan: StudyPlan, data_dir: Path, out: Path, *, workers: int = 1, keep_models: bool = False,
              overwrite: bool = False, log: Callable[[str], None] | None = None) -> list[CellResult]:
    """Run every cell of ``plan`` (and score its start models untrained), then write the report.

    Args:
        plan: the grid.
        data_dir: the shared data folder (see :func:`check_data`).
        out: the study folder; finished cells found there are reused (resumable).
        workers: processes run at once, each with ``usable cores // workers`` torch threads (two
            processes with two threads each on two cores slow each other many times over).
        keep_models: keep every cell's ``model_final.pt`` and ``checkpoint_last.pt``.
        overwrite: redo the cells found in ``out`` instead of reusing them.
        log: called with a line per finished cell and one naming the report files (default: print
            to stderr).

    Returns:
        The zero-shot results, then the cells' in :meth:`StudyPlan.cells` order.

    Raises:
        MissingFileError: the shared data is incomplete.
        ConfigError: ``out`` holds results made with other settings (and not ``overwrite``).
        InvalidInputError: ``workers`` < 1.
    """
    if workers < 1:
        raise InvalidInputError(f"workers: expected >= 1, got {workers}")
    check_data(data_dir)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Any]] = [("zero_shot", i) for i in plan.inits()] + [("cell", c) for c in plan.cells()]
    found: dict[int, CellResult] = {}  # finished earlier; a folder of another plan is refused before any work
    for i, (kind, arg) in enumerate(jobs):
        if overwrite:
            break
        if kind == "zero_shot":
            done = _load_result(out / "zero_shot" / arg / "result.json", plan.scoring,
                                dataclasses.replace(plan.base, init=arg, seed=0))
        else:
            done = _load_result(out / "cells" / arg.name / "result.json", plan.settings, arg)
        if done is not None:
            found[i] = done
    atomic_write(out / "plan.json", lambda tmp: tmp.write_text(json.dumps(_plain_plan(plan), indent=1)))
    results: dict[int, CellResult] = {}
    todo = [i for i in range(len(jobs)) if i not in found]
    t0 = time.perf_counter()

    def report(i: int, res: CellResult) -> None:
        results[i] = res
        m = res.metrics
        what = res.cell.name if res.trained else f"zero-shot {res.cell.init}"
        ran = sum(j not in found for j in results)
        if i in found:
            when = f"found in {out}"
        else:
            when = f"about {(time.perf_counter() - t0) / ran * (len(jobs) - len(results)) / 60:.0f} min left"
        say(f"[{len(results)}/{len(jobs)}] {what}: carotid Dice mask {m['carotid_mask_dice']:.3f} box "
            f"{m['carotid_box_dice']:.3f} point {m['carotid_point_dice']:.3f}, J&F {m['carotid_jf']:.3f}, fetal box "
            f"{m['fetal_box_dice']:.3f} (train {res.train_s:.0f} s, eval {res.eval_s:.0f} s; {when})")

    for i, res in found.items():
        report(i, res)
    args = (plan, data_dir, out, keep_models, overwrite)
    run_calls([partial(_job, jobs[i][0], jobs[i][1], *args) for i in todo], workers,
              lambda k, res: report(todo[k], res))
    ordered = [results[i] for i in range(len(jobs))]
    files = write_report(out, ordered, plan)
    say(f"{len(ordered)} results; wrote {', '.join(str(f) for f in files)}")
    return ordered


def _plain_plan(plan: StudyPlan) -> dict[str, Any]:
    d = dataclasses.asdict(plan)
    d["levels"] = {f: list(v) for f, v in plan.levels}
    return json.loads(json.dumps(d))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelStats:
    """One level of one factor: the metric's mean and standard deviation over seeds.

    Attributes:
        factor, level: which.
        n: seeds.
        mean, std: per metric (``std`` with ``ddof=1``; 0 for one seed).
    """

    factor: str
    level: Any
    n: int
    mean: Mapping[str, float]
    std: Mapping[str, float]

    def se(self, metric: str) -> float:
        """Standard error of the mean (``inf`` for one seed: no spread to judge by)."""
        return self.std[metric] / math.sqrt(self.n) if self.n > 1 else math.inf


def level_stats(results: Sequence[CellResult], plan: StudyPlan) -> dict[str, list[LevelStats]]:
    """Per factor of ``plan``, each level's statistics over the trained cells that differ from the
    base only in that factor (and the seed)."""
    trained = [r for r in results if r.trained]
    out: dict[str, list[LevelStats]] = {}
    for factor, values in plan.levels:
        rows = []
        for value in values:
            key = dataclasses.replace(plan.base, **{factor: value}).key
            group = [r for r in trained if r.cell.key == key]
            if not group:
                continue
            mean = {m: float(np.mean([r.metrics[m] for r in group])) for m in METRICS}
            std = {m: float(np.std([r.metrics[m] for r in group], ddof=1)) if len(group) > 1 else 0.0 for m in METRICS}
            rows.append(LevelStats(factor, value, len(group), mean, std))
        out[factor] = rows
    return out


Verdict = Literal["supports", "contradicts", "cannot resolve"]


@dataclass(frozen=True)
class Claim:
    """One of the paper's relative claims, judged on the study's numbers.

    Attributes:
        claim: the claim as the paper makes it.
        verdict: ``"supports"``, ``"contradicts"`` or ``"cannot resolve"`` (a difference within
            two standard errors of the seed spread, or a level not run).
        evidence: the numbers behind the verdict.
    """

    claim: str
    verdict: Verdict
    evidence: str


def _diff(a: LevelStats, b: LevelStats, metric: str) -> tuple[float, float]:
    """``a - b`` on ``metric`` and two standard errors of that difference."""
    return a.mean[metric] - b.mean[metric], 2.0 * math.hypot(a.se(metric), b.se(metric))


def _find(stats: Mapping[str, list[LevelStats]], factor: str, level: Any) -> LevelStats | None:
    return next((s for s in stats.get(factor, []) if s.level == level), None)


def judge_claims(stats: Mapping[str, list[LevelStats]]) -> list[Claim]:
    """Verdicts on the paper's relative claims from :func:`level_stats` (carotid Dice and J&F
    averaged over the three prompts; fetal-head box Dice for joint training's second task). A
    difference counts when it exceeds two standard errors of the seed spread."""
    claims: list[Claim] = []

    def effect(factor: str, hi: Any, lo: Any, metric: str, text: str) -> None:
        a, b = _find(stats, factor, hi), _find(stats, factor, lo)
        if a is None or b is None:
            claims.append(Claim(text, "cannot resolve", f"{factor} {hi} or {lo} not run"))
            return
        d, tol = _diff(a, b, metric)
        verdict: Verdict = "cannot resolve" if abs(d) <= tol else ("supports" if d > 0 else "contradicts")
        claims.append(Claim(text, verdict, f"{metric} {a.mean[metric]:.3f} ({factor} {hi}) vs {b.mean[metric]:.3f} "
                                           f"({factor} {lo}): {d:+.3f}, 2 SE {tol:.3f}, {min(a.n, b.n)} seeds"))

    effect("fraction", 1.0, 0.25, "carotid_dice", "More training data helps (100 % vs 25 % of the recordings)")
    effect("clip_length", 8, 1, "carotid_jf", "Temporal context helps (8-frame vs 1-frame clips)")
    effect("augment", "ultrasound", "generic", "carotid_dice",
           "Ultrasound-specific augmentations beat generic ones")
    effect("augment", "ultrasound", "none", "carotid_dice", "Ultrasound-specific augmentations beat none")
    frac_hi, frac_lo = _find(stats, "fraction", 1.0), _find(stats, "fraction", 0.25)
    init_hi, init_lo = _find(stats, "init", REFERENCE), _find(stats, "init", REFERENCE_PHANTOMS)
    text = "Data scale matters more than initialisation"
    if None in (frac_hi, frac_lo, init_hi, init_lo):
        claims.append(Claim(text, "cannot resolve", "fraction or init levels not run"))
    else:
        assert frac_hi and frac_lo and init_hi and init_lo
        df, tf = _diff(frac_hi, frac_lo, "carotid_dice")
        di, ti = _diff(init_hi, init_lo, "carotid_dice")
        tol = math.hypot(tf, ti)
        verdict: Verdict = "cannot resolve" if abs(abs(df) - abs(di)) <= tol else (
            "supports" if abs(df) > abs(di) else "contradicts")
        claims.append(Claim(text, verdict, f"carotid_dice: data 100 % vs 25 % {df:+.3f}, init {REFERENCE} vs "
                                           f"{REFERENCE_PHANTOMS} {di:+.3f} (2 SE of the comparison {tol:.3f})"))
    joint, task = _find(stats, "paradigm", "joint"), _find(stats, "paradigm", "task_specific")
    text = "Joint training is a good compromise (the task kept, the other task gained)"
    if joint is None or task is None:
        claims.append(Claim(text, "cannot resolve", "joint or task_specific not run"))
    else:
        dc, tc = _diff(joint, task, "carotid_dice")
        dfh, tfh = _diff(joint, task, "fetal_box_dice")
        kept, lost, gained = abs(dc) <= tc or dc > 0, dc < -tc, dfh > tfh
        verdict = "supports" if kept and gained else ("contradicts" if lost or dfh < -tfh else "cannot resolve")
        claims.append(Claim(text, verdict, f"joint vs task-specific: carotid_dice {dc:+.3f} (2 SE {tc:.3f}), "
                                           f"fetal_box_dice {dfh:+.3f} (2 SE {tfh:.3f})"))
    claims.append(Claim("Architecture matters less than data", "cannot resolve",
                        "one architecture only: a larger sam2 config cannot be trained from these weights on two CPU "
                        "cores within the budget"))
    return claims


def _csv(results: Sequence[CellResult]) -> str:
    buf = io.StringIO()
    fields = ["row", *(f.name for f in dataclasses.fields(Cell)), *METRICS, "train_s", "eval_s", "recordings"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in results:
        writer.writerow({"row": "cell" if r.trained else "zero-shot", **dataclasses.asdict(r.cell),
                         **{m: f"{r.metrics[m]:.4f}" for m in METRICS}, "train_s": f"{r.train_s:.1f}",
                         "eval_s": f"{r.eval_s:.1f}", "recordings": " ".join(r.recordings)})
    return buf.getvalue()


def _markdown(results: Sequence[CellResult], plan: StudyPlan, stats: Mapping[str, list[LevelStats]],
              claims: Sequence[Claim]) -> str:
    shown = ("carotid_mask_dice", "carotid_box_dice", "carotid_point_dice", "carotid_dice", "carotid_jf",
             "fetal_box_dice")
    lines = [f"# Ultrasound fine-tuning study ({len([r for r in results if r.trained])} trained cells, "
             f"{len(plan.seeds)} seed(s), {plan.steps} steps of {plan.batch_size} clips per stage)", "",
             f"Base cell: {plan.base.key}. Scores on the held-out carotid recordings (first-frame prompt, "
             f"propagated forward) and fetal-head images (box); mean +- standard deviation over seeds.", "",
             "## Untrained start models", "", "| model | " + " | ".join(shown) + " |",
             "|---|" + "---|" * len(shown)]
    for r in results:
        if not r.trained:
            lines.append(f"| {r.cell.init} | " + " | ".join(f"{r.metrics[m]:.3f}" for m in shown) + " |")
    for factor, rows in stats.items():
        lines += ["", f"## {factor}", "", f"| {factor} | seeds | " + " | ".join(shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for s in rows:
            lines.append(f"| {s.level} | {s.n} | " + " | ".join(f"{s.mean[m]:.3f} +- {s.std[m]:.3f}" for m in shown) + " |")
    lines += ["", "## The paper's claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.verdict} | {c.evidence} |" for c in claims]
    return "\n".join(lines) + "\n"


def plot_study(results: Sequence[CellResult], plan: StudyPlan, path: Path) -> Path | None:
    """One panel per factor: carotid Dice per prompt, carotid J&F and fetal-head box Dice against
    the level (mean and standard deviation over seeds), the untrained base model's scores dotted. Needs matplotlib
    (``pip install medsam2kit[study]``); without it, says so and returns ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("study: matplotlib is not installed (pip install 'medsam2kit[study]'); study.png not drawn",
              file=sys.stderr)
        return None
    stats = level_stats(results, plan)
    factors = [f for f, rows in stats.items() if rows]
    cols = min(3, max(len(factors), 1))
    rows_n = max(1, math.ceil(len(factors) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), squeeze=False)
    series = [("carotid_mask_dice", "carotid Dice, mask", "#0072B2", "o"),
              ("carotid_box_dice", "carotid Dice, box", "#E69F00", "s"),
              ("carotid_point_dice", "carotid Dice, clicks", "#009E73", "^"),
              ("carotid_jf", "carotid J&F (3 prompts)", "#000000", "x"),
              ("fetal_box_dice", "fetal-head Dice, box", "#CC79A7", "D")]
    base0 = next((r for r in results if not r.trained and r.cell.init == plan.base.init), None)
    for ax, factor in zip(axes.flat, factors):
        rows = stats[factor]
        x = np.arange(len(rows))
        for k, (metric, label, colour, marker) in enumerate(series):
            ax.errorbar(x + (k - 2) * 0.05, [s.mean[metric] for s in rows], yerr=[s.std[metric] for s in rows],
                        color=colour, marker=marker, capsize=3, label=label, lw=1.2, ls="--" if "J&F" in label else "-")
        if base0 is not None:
            ax.axhline(base0.metrics["carotid_dice"], color="grey", ls=":", lw=1.2, label=f"carotid, untrained {plan.base.init}")
            ax.axhline(base0.metrics["fetal_box_dice"], color="#CC79A7", ls=":", lw=1.2,
                       label=f"fetal head, untrained {plan.base.init}")
        ax.set_xticks(x, [_level_label(s.level) for s in rows], fontsize=8)
        ax.set(title=f"{factor} (others at base)", ylim=(0, 1), ylabel="held-out score")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(factors):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"Ultrasound fine-tuning study: {plan.steps} steps x {plan.batch_size} clips, "
                 f"{len(plan.seeds)} seed(s); base {plan.base.key}", fontsize=9)
    fig.tight_layout(rect=(0, 0.09, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _level_label(level: Any) -> str:
    if isinstance(level, float):
        return f"{level:g}"
    return str(level).replace("task_specific", "task").replace("reference-phantoms", "ref-phantoms")


def write_report(out: Path, results: Sequence[CellResult], plan: StudyPlan) -> list[Path]:
    """Write ``results.csv``, ``summary.md``, ``summary.json`` and ``study.png`` to ``out``."""
    stats = level_stats(results, plan)
    claims = judge_claims(stats)
    files = {
        out / "results.csv": _csv(results),
        out / "summary.md": _markdown(results, plan, stats, claims),
        out / "summary.json": json.dumps({
            "plan": _plain_plan(plan),
            "levels": {f: [{"level": s.level, "n": s.n, "mean": dict(s.mean), "std": dict(s.std)} for s in rows]
                       for f, rows in stats.items()},
            "claims": [dataclasses.asdict(c) for c in claims],
            "results": [r.to_dict() for r in results],
        }, indent=1),
    }
    for path, text in files.items():
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text))  # type: ignore[misc]
    written = list(files)
    png = plot_study(results, plan, out / "study.png")
    return written + ([png] if png else [])


def load_results(out: Path) -> list[CellResult]:
    """Every result stored under a study folder (zero-shot rows first)."""
    paths = sorted((out / "zero_shot").glob("*/result.json")) + sorted((out / "cells").glob("*/result.json"))
    return [CellResult.from_dict(json.loads(p.read_text())) for p in paths]


__all__ = [
    "DEFAULT_LEVELS",
    "FACTORS",
    "FULL_PLAN",
    "METRICS",
    "PROMPTS",
    "QUICK_PLAN",
    "Cell",
    "CellResult",
    "Claim",
    "HeldOut",
    "LevelStats",
    "StudyPlan",
    "cell_config",
    "check_data",
    "evaluate_model",
    "judge_claims",
    "level_stats",
    "load_held_out",
    "load_results",
    "plot_study",
    "run_cell",
    "run_study",
    "run_zero_shot",
    "training_recordings",
    "write_report",
]
