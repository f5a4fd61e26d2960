"""The end-to-end demo: SAM2's ways of segmenting volumes, videos and images, each scored
against the truth and beside its simple baseline.

With the bundled reference model (or any predictor), on a held-out phantom (two phantom
supports and a query, :func:`medsam2kit.reference.heldout_phantoms`) and, when the shared data
folder is present, on its held-out real cases (:data:`medsam2kit.reference.HELD_OUT`: cases no
reference model trained on):

* ``propagation (mask)`` / ``propagation (box)``: per label, the true mask of its largest slice,
  or the box around it, as the only prompt, propagated through the volume (slices zoomed around
  the prompts, :mod:`medsam2kit.roi`); from the mask also by a copy of the model adapted to
  the prompt masks first (``sam2 adapted (N steps)``, :mod:`medsam2kit.adapt`); beside them the
  ``copy to labelled slices`` baseline (that mask on every slice holding the label) and the
  mask propagations ``on labelled slices`` (kept on the slices the label spans: the extent the
  baseline is given, :meth:`medsam2kit.tasks.Propagated.on_labelled_slices`);
* ``fewshot``: FATE-SAM from labelled supports registered onto the query
  (:mod:`medsam2kit.register`), no prompt at all (phantom, hippocampus), also after adapting a
  copy of the model to the supports (``fate-sam adapted (N steps)``); beside it the
  ``registered supports (vote)`` baseline (their labels' majority vote on the query's grid);
* ``sam2med3d``: a deliberately weak coarse network (a small U-Net fitted for a few steps on the
  supports), its reliable slices as prompts, SAM2 propagation and confidence fusion; beside it
  the coarse network alone (phantom, hippocampus);
* ``tracking``: a carotid ultrasound recording from the mask of its first labelled frame,
  beside ``copy first mask``;
* ``box prompt``: fetal-head ultrasound images from the box around the head (zoomed, the mask
  cut to the box, then replaced by the ellipse with its moments, as HC18 heads are annotated;
  SAM2 averaged with its mirror image, the moments of the mask's convex hull:
  :func:`medsam2kit.tasks.box_prompt_image` with ``fit="ellipse"``), beside the ``filled box``
  and the ``ellipse in the box``.

:func:`run_demo` writes, per volume, the image, the truth and every prediction as NIfTI (the
input's grid and geometry), one titled overlay montage per method (and per recording and image
set), and the Dice table (``dice_table.csv``, ``dice_table.md``) plus ``summary.json``.
``medsam2kit demo`` runs it.

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
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from medsam2kit._files import atomic_write
from medsam2kit._parallel import in_processes, run_calls
from medsam2kit._validate import check_int
from medsam2kit.adapt import AdaptConfig, adapt_to_supports
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.errors import InvalidInputError
from medsam2kit.fewshot import segment_registered
from medsam2kit.metrics import dice
from medsam2kit.pipelines import SAM2Med3DPipeline
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.register import align_supports, vote_labels
from medsam2kit.reference import Split, heldout_phantoms, label_file, shared_files, shared_images, shared_recordings, shared_volumes
from medsam2kit.tasks import BOX_BASELINES, BoxFit, box_prompt_image, one_prompt_propagation, track_recording
from medsam2kit.volume import Volume

Pair = tuple[Volume, Volume]

#: Fetal-head images the demo scores (of the 76 held out; the model card scores them all).
DEMO_IMAGES = 12
#: Steps of the demo's one-shot adaptation: half of :class:`~medsam2kit.adapt.AdaptConfig`'s
#: default, so that the demo stays well under three minutes on two CPU cores (97-127 s with
#: two processes; 200 steps took 4 minutes in one process of two threads).
DEMO_ADAPT_STEPS = 100
#: The demo's tasks that task models can join (:func:`run_demo`'s ``task_models``).
DEMO_TASKS: tuple[str, ...] = ("box prompt", "tracking")


def adapted_method(config: AdaptConfig, method: str = "sam2") -> str:
    """The name of ``method`` after adapting the model (:mod:`medsam2kit.adapt`), its steps included.

    Example:
        >>> adapted_method(AdaptConfig(steps=100)), adapted_method(AdaptConfig(steps=100), "fate-sam")
        ('sam2 adapted (100 steps)', 'fate-sam adapted (100 steps)')
    """
    return f"{method} adapted ({config.steps} steps)"


@dataclass(frozen=True)
class DiceRow:
    """One line of the Dice table.

    Attributes:
        task: ``"propagation (mask)"``, ``"propagation (box)"``, ``"fewshot"``, ``"sam2med3d"``,
            ``"tracking"`` or ``"box prompt"``.
        case: the case's name.
        label: the label value.
        method: ``"sam2"``, ``"sam2 adapted (N steps)"`` (each also ``"... on labelled
            slices"``), a baseline (``"copy to labelled slices"``, ``"copy first mask"``,
            ``"filled box"``), ``"fate-sam"``, ``"fate-sam adapted (N steps)"``, ``"coarse"`` or
            ``"fused"``.
        dice: Dice against the truth (1.0 when both are empty).
    """

    task: str
    case: str
    label: int
    method: str
    dice: float


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
        adapt_fewshot: with the demo's adaptation, also run FATE-SAM adapted to the supports
            (the phantom case does not: its FATE-SAM is at 0.96 / 0.97 unadapted, and adapting
            would add 23 s).
    """

    name: str
    query: Pair
    supports: tuple[Pair, ...]
    labels: tuple[int, ...]
    adapt_fewshot: bool = True


def phantom_case(seed: int = 0) -> DemoCase:
    """Held-out phantoms (never seen in training): a query and two supports, labels 1 and 2
    (the shell and the core; a tube, label 3, is in some phantoms only and is left to
    ``propagation``)."""
    query, *supports = heldout_phantoms(seed, 3)
    return DemoCase(f"phantom_{seed}", query, tuple(supports), (1, 2), adapt_fewshot=False)


def training_supports(data_dir: Path, dataset: str = "msd_hippocampus", *,
                      without: tuple[Split, ...] = ("held_out",)) -> tuple[Pair, ...]:
    """The labelled cases of a shared 3D dataset outside the splits ``without`` (by default the
    cases no reference model holds out; for the hippocampus 184 and 195), as ``(image, label)``
    supports. ``without=("held_out", "validation")`` gives the supports of a validation query."""
    from medsam2kit.io import load_label, load_volume

    paths = shared_files(data_dir, dataset, set(get_args(Split)) - set(without))
    images = [load_volume(p) for p in paths]
    return tuple((im, load_label(label_file(p), like=im)) for p, im in zip(paths, images))


def real_cases(data_dir: Path) -> list[DemoCase]:
    """The held-out 3D shared cases (:data:`medsam2kit.reference.HELD_OUT`: no reference model
    trained on them): each a query for propagation; the hippocampus case also for FATE-SAM and
    SAM2Med3D, with the two training hippocampus cases as its labelled supports
    (:func:`training_supports`; labels 1 anterior, 2 posterior). Empty when the folder is absent."""
    cases = []
    for case in shared_volumes(data_dir):
        supports = training_supports(data_dir, case.dataset) if case.dataset == "msd_hippocampus" else ()
        cases.append(DemoCase(case.name, (case.image, case.label), supports, (1, 2) if supports else ()))
    return cases


def run_case(predictor: SAM2Predictor, case: DemoCase, out: Path | None = None, *,
             coarse_steps: int = 40, generator: torch.Generator | None = None,
             progress: Callable[[str], None] | None = None, adapt: AdaptConfig | None = None,
             mirror: bool = False) -> list[DiceRow]:
    """The volume tasks on one case: propagation from a mask and from a box (and, with
    ``adapt``, from the mask after one-shot adaptation, :mod:`medsam2kit.adapt`), and, when the
    case has supports, FATE-SAM and SAM2Med3D; with ``out``, its NIfTI files and overlays go to
    ``out/<name>`` (``generator`` draws the weak coarse network's weights and shuffling;
    ``progress`` is called with one line as each stage starts; ``mirror``: mask propagation
    averaged with the mirror image's, :class:`~medsam2kit.pipelines.PromptPropagationConfig`)."""
    image, label = case.query
    rows: list[DiceRow] = []
    maps: dict[str, np.ndarray] = {}
    stage = progress if progress is not None else (lambda line: None)

    stage(f"{case.name} {image.shape}: propagation from one prompted slice per label (mask, then box)")
    prop = one_prompt_propagation(predictor, image, label, mirror=mirror)
    boxed = one_prompt_propagation(predictor, image, label, prompt="box")
    maps["propagation"], maps["propagation_box"] = prop.labels, boxed.labels
    map_rows = dict(_MAP_ROWS)
    runs = {"sam2": prop}
    if adapt is not None:
        stage(f"{case.name}: one-shot adaptation to the prompt masks ({adapt.steps} steps), then propagation")
        name = adapted_method(adapt)
        runs[name] = one_prompt_propagation(predictor, image, label, adapt=adapt, mirror=mirror)
        maps["propagation_adapted"] = runs[name].labels
        map_rows["propagation_adapted"] = ("propagation (mask)", name)
    bounded = {method: run.on_labelled_slices() for method, run in runs.items()}
    for lab in prop.prompt_slices:
        truth = label.array == lab
        for method, run in runs.items():
            rows.append(DiceRow("propagation (mask)", case.name, lab, method, dice(run.labels == lab, truth)))
            rows.append(DiceRow("propagation (mask)", case.name, lab, f"{method} on labelled slices",
                                dice(bounded[method] == lab, truth)))
        rows.append(DiceRow("propagation (mask)", case.name, lab, "copy to labelled slices",
                            dice(prop.baseline[lab], truth)))
        rows.append(DiceRow("propagation (box)", case.name, lab, "sam2", dice(boxed.labels == lab, truth)))

    if case.supports:
        supports = tuple((img, keep_labels(lab, case.labels)) for img, lab in case.supports)
        truth_map = keep_labels(label, case.labels).array
        stage(f"{case.name}: registering {len(supports)} support(s) onto it, then FATE-SAM from them")
        aligned = align_supports(image, supports)  # once for every aligned run below
        maps["fewshot_vote"] = vote_labels(aligned).array
        # FewShotPipeline(predictor, supports, align=RegistrationConfig()) with the registration done once
        maps["fewshot"] = segment_registered(predictor, aligned, image).labels.array
        if adapt is not None and case.adapt_fewshot:
            stage(f"{case.name}: FATE-SAM after adapting a copy of the model to the supports ({adapt.steps} steps)")
            adapted = adapt_to_supports(predictor, supports, adapt)
            maps["fewshot_adapted"] = segment_registered(adapted, aligned, image).labels.array
            map_rows["fewshot_adapted"] = ("fewshot", adapted_method(adapt, "fate-sam"))
        for name in ("fewshot", "fewshot_adapted", "fewshot_vote"):
            if name in maps:
                rows += [DiceRow("fewshot", case.name, lab, map_rows[name][1], dice(maps[name] == lab, truth_map == lab))
                         for lab in case.labels]

        stage(f"{case.name}: SAM2Med3D (fitting a weak coarse network, {coarse_steps} steps, then SAM2)")
        coarse = weak_coarse(supports, num_labels=max(case.labels), steps=coarse_steps, generator=generator)
        result = SAM2Med3DPipeline(coarse, predictor).run(image)
        coarse_map = np.argmax(result.coarse, axis=0)
        maps["coarse"], maps["sam2med3d"] = coarse_map, result.labels.array
        for lab in case.labels:
            rows.append(DiceRow("sam2med3d", case.name, lab, "coarse", dice(coarse_map == lab, truth_map == lab)))
            rows.append(DiceRow("sam2med3d", case.name, lab, "fused",
                                dice(result.labels.array == lab, truth_map == lab)))

    if out is not None:
        stage(f"{case.name}: writing {out / case.name}")
        _write_case(out / case.name, image, label, maps, prop.axis, case=case.name, rows=rows, map_rows=map_rows)
    return rows


def run_recording(predictor: SAM2Predictor, name: str, frames: np.ndarray, masks: np.ndarray,
                  out: Path | None = None, *, task_models: Mapping[str, SAM2Predictor] | None = None) -> list[DiceRow]:
    """Track a recording from its first labelled frame's mask (:func:`medsam2kit.tasks.track_recording`)
    against copying that mask; ``task_models`` (method name -> predictor, e.g. the carotid task
    model) are scored beside ``predictor`` (method ``sam2``). With ``out``, an overlay montage of
    its frames, a row per model, goes to ``out/<name>/overlay_tracking.png``.

    Raises:
        InvalidInputError: a name of ``task_models`` is ``sam2`` or the baseline's.
    """
    models = _with_task_models(predictor, task_models, ("copy first mask",))
    scores = {method: track_recording(model, frames, masks) for method, model in models.items()}
    first = scores["sam2"]
    rows = [DiceRow("tracking", name, 1, method, s.dice) for method, s in scores.items()]
    rows.append(DiceRow("tracking", name, 1, "copy first mask", first.copy_dice))
    if out is not None:
        video = Volume(np.asarray(frames, dtype=np.float32), np.eye(4))
        jf = ", ".join(f"{method} {s.jf:.3f}" for method, s in scores.items())
        title = f"{name}: tracking from the mask of frame {first.prompt_frame} (J&F: {jf})"
        _write_montage(out / name / "overlay_tracking.png", video,
                       {method: s.masks.astype(np.uint8) for method, s in scores.items()},
                       (np.asarray(masks) != 0).astype(np.uint8), title,
                       {method: {1: s.dice} for method, s in scores.items()}, axis=0, panel_name="frame")
    return rows


def _with_task_models(predictor: SAM2Predictor, task_models: Mapping[str, SAM2Predictor] | None,
                      baselines: Sequence[str]) -> dict[str, SAM2Predictor]:
    """``{"sam2": predictor}`` and the task models, whose names must be neither ``sam2`` nor a
    baseline's (their rows would mix)."""
    taken = sorted(set(task_models or {}) & {"sam2", *baselines})
    if taken:
        raise InvalidInputError(f"task_models: expected names other than the model's and the baselines', got {taken}")
    return {"sam2": predictor, **(task_models or {})}


def run_images(predictor: SAM2Predictor, images: Sequence[tuple[str, np.ndarray, np.ndarray]],
               out: Path | None = None, *, name: str = "images",
               task_models: Mapping[str, SAM2Predictor] | None = None, fit: BoxFit = "none") -> list[DiceRow]:
    """Box prompts on 2D images (:func:`medsam2kit.tasks.box_prompt_image`, with its ``fit``)
    against the filled box and the ellipse inscribed in it (:func:`medsam2kit.tasks.box_ellipse`);
    ``task_models`` (method name -> predictor, e.g. the fetal-head task model) are scored beside
    ``predictor`` (method ``sam2``). With ``out``, a montage of the first images (all of one
    size), a row per model, goes to ``out/<name>/overlay_box_prompt.png``.

    Raises:
        InvalidInputError: a name of ``task_models`` is ``sam2`` or a baseline's.
    """
    models = _with_task_models(predictor, task_models, tuple(BOX_BASELINES))
    rows: list[DiceRow] = []
    shown: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]] = []
    for case, image, mask in images:
        preds = {method: box_prompt_image(model, image, mask, fit=fit) for method, model in models.items()}
        scored = {**preds, **{method: baseline(mask) for method, baseline in BOX_BASELINES.items()}}
        rows += [DiceRow("box prompt", f"{name}/{case}", 1, method, dice(m, mask)) for method, m in scored.items()]
        if len(shown) < 6 and (not shown or image.shape == shown[0][0].shape):
            shown.append((image, preds, mask))
    if out is not None and shown:
        stack = Volume(np.stack([s[0] for s in shown]).astype(np.float32), np.eye(4))
        stacks = {method: np.stack([s[1][method] for s in shown]).astype(np.uint8) for method in models}
        means = {method: {1: float(np.mean([r.dice for r in rows if r.method == method]))} for method in models}
        truth = np.stack([s[2] for s in shown]).astype(np.uint8)
        _write_montage(out / name / "overlay_box_prompt.png", stack, stacks, truth,
                       f"{name}: box prompts{', ellipse fitted' if fit == 'ellipse' else ''}, {len(shown)} of "
                       f"{len(images)} images (Dice: mean of all)", means, axis=0,
                       panel_name="image")
    return rows


def run_demo(out: Path, predictor: SAM2Predictor, *, seed: int = 0, data_dir: Path | None = None,
             coarse_steps: int = 40, max_images: int = DEMO_IMAGES, info: Mapping[str, Any] | None = None,
             say: Callable[[str], None] = print, progress: Callable[[str], None] | None = None,
             adapt: AdaptConfig | None = AdaptConfig(steps=DEMO_ADAPT_STEPS),
             task_models: Mapping[str, Mapping[str, SAM2Predictor]] | None = None, jobs: int = 1,
             cases: Sequence[DemoCase] | None = None, volumes_model: SAM2Predictor | None = None,
             mirror: bool = False) -> dict[str, Any]:
    """Run every case, write the outputs and the Dice table to ``out``; returns the summary
    (also written to ``summary.json``, with ``info``: facts about the run such as the model).
    ``say`` receives the results (a line per case, the table); ``progress`` one line as each
    stage of each case starts (``medsam2kit demo`` prints them on stderr). ``adapt``: the
    one-shot adaptation of the volumes' ``sam2 adapted (N steps)`` rows (``None``: no such rows;
    default :data:`DEMO_ADAPT_STEPS` steps). ``task_models``: task models scored beside
    ``predictor``, per task (``"box prompt"``: the fetal-head images, :func:`run_images`;
    ``"tracking"``: the recordings, :func:`run_recording`), each method name -> predictor;
    ``medsam2kit demo`` passes the ``reference-fetal-head`` and ``reference-carotid`` models
    with the default model. ``volumes_model``: the model of the volume cases (propagation,
    FATE-SAM, SAM2Med3D) in place of ``predictor``; ``medsam2kit demo`` passes
    ``reference-volumes`` with the default model, as the commands use it on volumes, and
    ``mirror`` (the volumes' mask propagation averaged with the mirror image's, :func:`run_case`)
    with it. ``jobs``: cases run at once, each in a process of its own with the
    cores shared among them (:func:`medsam2kit._parallel.run_calls`; the predictors then travel
    to the workers by pickling); the table and summary are the same whatever order they end in.
    ``medsam2kit demo`` runs two at once on a CPU of two cores or more: the small model's steps
    use a second thread poorly (the demo: 177 s with one process of two threads). The workers
    are spawned, so a script that calls this with ``jobs > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    The cases: a held-out phantom (:func:`phantom_case`) and, with ``data_dir``, the held-out
    shared cases (:data:`medsam2kit.reference.HELD_OUT`): the 3D ones (:func:`real_cases`), the
    carotid recordings and the first ``max_images`` fetal-head images. ``cases``: other volume
    cases (:class:`DemoCase`, e.g. your own) instead of the phantom and the shared 3D ones.

    ``seed`` is the demo's configuration, recorded in the case name: it picks the held-out
    phantom and seeds a fresh ``torch.Generator`` for each case's weak coarse network, so a run
    is reproducible from the command line.

    Raises:
        InvalidInputError: ``out`` is an existing file; ``task_models`` names another task;
            ``jobs < 1``.
    """
    check_int(jobs, "jobs", minimum=1)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"out: expected a folder, got the file {out}")
    unknown = sorted(set(task_models or {}) - set(DEMO_TASKS))
    if unknown:
        raise InvalidInputError(f"task_models: expected tasks among {', '.join(DEMO_TASKS)}, got {unknown}")
    per_task = {task: dict((task_models or {}).get(task, {})) for task in DEMO_TASKS}
    begin = time.perf_counter()
    if cases is None:
        cases = [phantom_case(seed)] + (real_cases(data_dir) if data_dir is not None else [])
    recordings = shared_recordings(data_dir) if data_dir is not None else []
    images = shared_images(data_dir)[:max_images] if data_dir is not None else []
    out.mkdir(parents=True, exist_ok=True)
    parallel = in_processes(len(cases) + len(recordings) + (1 if images else 0), jobs)  # one call per case, one for the images
    with ExitStack() as stack:
        stage = progress
        if progress is not None and parallel:  # the workers' lines, passed on here as they come
            stage = _Lines(stack.enter_context(multiprocessing.get_context("spawn").Manager()).Queue())
            stack.enter_context(_passing_on(stage.queue, progress))
        work: list[tuple[str, Callable[[], list[DiceRow]]]] = [
            (case.name, partial(run_case, volumes_model or predictor, case, out, coarse_steps=coarse_steps,
                                generator=torch.Generator().manual_seed(seed), progress=stage, adapt=adapt,
                                mirror=mirror))
            for case in cases]
        work += [(rec.name, partial(run_recording, predictor, rec.name, rec.image, rec.label, out,
                                    task_models=per_task["tracking"])) for rec in recordings]
        if images:
            pairs = [(c.name, c.image, c.label) for c in images]
            work.append(("hc18_fetal_us", partial(run_images, predictor, pairs, out, name="hc18_fetal_us",
                                                  task_models=per_task["box prompt"], fit="ellipse")))
        done: dict[int, tuple[list[DiceRow], float]] = {}

        def report(i: int, result: tuple[list[DiceRow], float]) -> None:
            done[i] = result
            say(f"{work[i][0]}: done in {round(result[1], 2)} s")

        run_calls([partial(_timed, call, f"case {i + 1}/{len(work)}: {name}", stage)
                   for i, (name, call) in enumerate(work)], jobs, report)
    rows = [row for i in range(len(work)) for row in done[i][0]]  # in the cases' order, however they finished
    seconds = {name: round(done[i][1], 2) for i, (name, _) in enumerate(work)}
    table = dice_table(rows)
    _write_text(out / "dice_table.md", table)
    _write_text(out / "dice_table.csv", _csv(rows))
    summary = {**(info or {}), "cases": list(seconds), "seconds": seconds,
               "seconds_total": round(time.perf_counter() - begin, 2), "rows": [asdict(r) for r in rows],
               "mean_dice": mean_dice(rows)}
    _write_text(out / "summary.json", json.dumps(summary, indent=2))
    say(table)
    return summary


def _timed(work: Callable[[], list[DiceRow]], line: str,
           progress: Callable[[str], None] | None) -> tuple[list[DiceRow], float]:
    """``work``'s rows and its seconds, ``line`` passed to ``progress`` first."""
    start = time.perf_counter()
    if progress is not None:
        progress(line)
    rows = work()
    return rows, time.perf_counter() - start


@dataclass(frozen=True)
class _Lines:
    """A progress callback that puts its lines on a queue (it pickles into a worker)."""

    queue: Any

    def __call__(self, line: str) -> None:
        self.queue.put(line)


@contextmanager
def _passing_on(queue: Any, progress: Callable[[str], None]) -> Iterator[None]:
    """Pass every line put on ``queue`` to ``progress``, from a thread, until the block ends."""

    def pass_on() -> None:
        while (line := queue.get()) is not None:
            progress(line)

    thread = threading.Thread(target=pass_on, daemon=True)
    thread.start()
    try:
        yield
    finally:
        queue.put(None)
        thread.join()


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
    """The rows as a Markdown table, one column per method of each task, one line per case and
    label; cases named ``"<set>/<item>"`` (the images of a set) share one line, their mean, with
    the count.

    Example:
        >>> rows = [DiceRow("box prompt", "us/1", 1, "sam2", 0.5), DiceRow("box prompt", "us/2", 1, "sam2", 1.0)]
        >>> dice_table(rows).splitlines()[2]
        '| us (2) | 1 | 0.750 |'
    """
    methods = list(dict.fromkeys((r.task, r.method) for r in rows))
    groups: dict[tuple[str, int, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r.case.split("/")[0], r.label, r.task, r.method), []).append(r.dice)
    keys = list(dict.fromkeys((case, lab) for case, lab, _, _ in groups))
    counts = {case: len({r.case for r in rows if r.case.split("/")[0] == case}) for case, _ in keys}
    head = "| case | label | " + " | ".join(f"{t}: {m}" for t, m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for case, lab in keys:
        cells = [f"{np.mean(groups[(case, lab, t, m)]):.3f}" if (case, lab, t, m) in groups else "" for t, m in methods]
        name = f"{case} ({counts[case]})" if any("/" in r.case and r.case.startswith(case + "/") for r in rows) else case
        lines.append(f"| {name} | {lab} | " + " | ".join(cells) + " |")
    means = mean_dice(rows)
    lines.append("| **mean** | | " + " | ".join(f"**{means[f'{t}/{m}']:.3f}**" for t, m in methods) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[DiceRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "case", "label", "method", "dice"])
    writer.writerows([r.task, r.case, r.label, r.method, f"{r.dice:.6f}"] for r in rows)
    return buf.getvalue()


#: The Dice rows (task, method) of each map that :func:`run_case` writes, for the montages' headings.
_MAP_ROWS: Mapping[str, tuple[str, str]] = {
    "propagation": ("propagation (mask)", "sam2"), "propagation_box": ("propagation (box)", "sam2"),
    "fewshot": ("fewshot", "fate-sam"), "fewshot_vote": ("fewshot", "registered supports (vote)"),
    "coarse": ("sam2med3d", "coarse"), "sam2med3d": ("sam2med3d", "fused"),
}


def _write_case(folder: Path, image: Volume, label: Volume, maps: Mapping[str, np.ndarray], axis: int, *,
                case: str = "", rows: Sequence[DiceRow] = (),
                map_rows: Mapping[str, tuple[str, str]] = _MAP_ROWS) -> None:
    """The case's NIfTI files and one montage per method: titled with the case and the method,
    its Dice per label (from ``rows``) in the heading, the truth (of the labels scored) dashed."""
    from medsam2kit.io import save_mask, save_volume

    folder.mkdir(parents=True, exist_ok=True)
    save_volume(image, folder / "image.nii.gz")
    save_mask(label.array, image, folder / "ground_truth.nii.gz")
    for name, arr in maps.items():
        save_mask(arr.astype(np.uint8), image, folder / f"{name}.nii.gz")
        task, method = map_rows.get(name, (name, name))
        scores = {r.label: r.dice for r in rows if (r.task, r.method) == (task, method) and r.case == case}
        truth = keep_labels(label, sorted(scores)).array if scores else np.asarray(label.array)
        title = f"{case}: {task}" + (f", {method}" if method not in (task, "sam2") else "")
        _write_montage(folder / f"overlay_{name}.png", image, {method: arr}, truth, title, {method: scores}, axis=axis)


def _write_montage(path: Path, image: Volume, preds: Mapping[str, np.ndarray], truth: np.ndarray, title: str,
                   scores: Mapping[str, Mapping[int, float]], *, axis: int, panel_name: str = "slice") -> None:
    """One titled montage: a row per method of ``preds`` (filled, its Dice per label from
    ``scores``), ``truth`` dashed; panels captioned ``<panel_name> <index>``."""
    from medsam2kit.viz import overlay_montage, save_png

    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(overlay_montage(image, preds, reference=truth, title=title, dice={m: dict(d) for m, d in scores.items()},
                             axis=axis, panel_name=panel_name), path)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


__all__ = [
    "DemoCase",
    "DEMO_ADAPT_STEPS",
    "DEMO_TASKS",
    "DiceRow",
    "adapted_method",
    "dice_table",
    "keep_labels",
    "mean_dice",
    "one_prompt_propagation",
    "phantom_case",
    "real_cases",
    "training_supports",
    "run_case",
    "run_demo",
    "run_images",
    "run_recording",
    "weak_coarse",
]
