from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam2kit.adapt import AdaptConfig
from medsam2kit.demo import DiceRow, dice_table, keep_labels, mean_dice, one_prompt_propagation, phantom_case
from medsam2kit.errors import InvalidInputError
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import heldout_phantoms, reference_train_config


@pytest.fixture(scope="module")
def predictor() -> SAM2Predictor:
    return SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")


def test_heldout_phantoms_are_not_the_training_phantoms() -> None:
    from medsam2kit.phantoms import random_phantom
    from medsam2kit.reference import TRAIN_SEED

    cfg = reference_train_config()
    spec = cfg.data.train[0]
    assert (spec.seed, spec.phantom) == (TRAIN_SEED, "volume")
    train = [random_phantom(np.random.default_rng([spec.seed, k]))[0].array for k in range(40)]
    for image, _ in heldout_phantoms(0, 3):
        assert not any(t.shape == image.shape and np.array_equal(t, image.array) for t in train)
    # reproducible from the seed
    a, b = heldout_phantoms(5, 1)[0][1].array, heldout_phantoms(5, 1)[0][1].array
    assert np.array_equal(a, b)


def test_propagation_rejects_a_label_map_on_another_grid_or_an_absent_label(predictor: SAM2Predictor) -> None:
    image, label = ellipsoid_phantom((8, 40, 40), rng=0)
    other, _ = ellipsoid_phantom((8, 40, 48), rng=0)
    with pytest.raises(InvalidInputError, match="label"):
        one_prompt_propagation(predictor, other, label)
    with pytest.raises(InvalidInputError, match="label 7 is absent"):
        one_prompt_propagation(predictor, image, label, labels=[7])


def test_keep_labels_and_phantom_case_labels() -> None:
    case = phantom_case(0)
    assert len(case.supports) == 2 and case.labels == (1, 2)
    for _, lab in case.supports:
        kept = keep_labels(lab, case.labels).array
        assert set(np.unique(kept)) <= {0, 1, 2}
        assert np.array_equal(kept == 1, lab.array == 1)


def test_dice_table_has_one_column_per_method_and_the_means() -> None:
    rows = [DiceRow("propagation", "a", 1, "sam2", 0.9), DiceRow("propagation", "a", 1, "copy prompt", 0.5),
            DiceRow("propagation", "b", 1, "sam2", 0.7), DiceRow("fewshot", "b", 1, "fate-sam", 0.25)]
    table = dice_table(rows).splitlines()
    assert table[0] == "| case | label | propagation: sam2 | propagation: copy prompt | fewshot: fate-sam |"
    assert table[2] == "| a | 1 | 0.900 | 0.500 |  |"
    assert table[3] == "| b | 1 | 0.700 |  | 0.250 |"
    assert table[4] == "| **mean** | | **0.800** | **0.500** | **0.250** |"
    assert mean_dice(rows) == {"propagation/sam2": 0.8, "propagation/copy prompt": 0.5, "fewshot/fate-sam": 0.25}


def test_write_case_titles_each_montage_with_the_case_and_its_dice_per_label(tmp_path: Path) -> None:
    """The demo's overlays carried no case, method or Dice: each montage now has a title and a
    heading with the method's Dice per label, each with its label's colour."""
    from PIL import Image

    from medsam2kit.demo import _write_case
    from medsam2kit.viz import label_colour

    image, label = ellipsoid_phantom((8, 32, 28), rng=1)
    maps = {"fewshot": np.roll(label.array, 1, axis=2), "coarse": label.array}
    rows = [DiceRow("fewshot", "c", 1, "fate-sam", 0.81), DiceRow("fewshot", "c", 2, "fate-sam", 0.72),
            DiceRow("sam2med3d", "c", 1, "coarse", 0.6), DiceRow("fewshot", "other", 1, "fate-sam", 0.1)]
    _write_case(tmp_path / "with", image, label, maps, 0, case="c", rows=rows)
    _write_case(tmp_path / "without", image, label, maps, 0)
    pictures = {k: np.asarray(Image.open(tmp_path / k / "overlay_fewshot.png")) for k in ("with", "without")}
    assert pictures["with"].shape == pictures["without"].shape
    off_page = np.any(pictures["with"][:, 8:32] != 255, axis=-1).mean(axis=1) > 0.9
    top = int(np.flatnonzero(off_page)[0])  # the first row of panels: above it the title and the heading
    assert top > 40
    for lab in (1, 2):  # the Dice swatches of labels 1 and 2, only when the rows are given
        assert np.all(pictures["with"][:top] == label_colour(lab), axis=-1).sum() > 50
        assert not np.all(pictures["without"][:top] == label_colour(lab), axis=-1).any()
    assert (tmp_path / "with" / "overlay_coarse.png").is_file() and (tmp_path / "with" / "fewshot.nii.gz").is_file()


def test_run_case_reports_each_stage(predictor: SAM2Predictor, one_torch_thread: None) -> None:
    """``medsam2kit demo`` showed nothing while it worked: run_case now reports each stage."""
    from medsam2kit.demo import DemoCase, run_case

    (q, ql), (s, sl) = [ellipsoid_phantom((6, 32, 32), rng=seed) for seed in (1, 2)]
    lines: list[str] = []
    rows = run_case(predictor, DemoCase("tiny", (q, ql), ((s, sl),), (1, 2)), coarse_steps=1,
                    progress=lines.append)
    assert rows and [line.split(":")[1].split()[0] for line in lines] == ["propagation", "registering", "SAM2Med3D"]
    assert lines[0].startswith("tiny (6, 32, 32): propagation")
    lines.clear()
    rows = run_case(predictor, DemoCase("tiny", (q, ql), ((s, sl),), (1, 2)), coarse_steps=1,
                    progress=lines.append, adapt=AdaptConfig(steps=1))
    assert [line.split(":")[1].split()[0] for line in lines] == ["propagation", "one-shot", "registering", "FATE-SAM",
                                                                   "SAM2Med3D"]
    assert {r.method for r in rows if r.task == "fewshot"} == {"fate-sam", "fate-sam adapted (1 steps)",
                                                              "registered supports (vote)"}
    lines.clear()
    run_case(predictor, DemoCase("tiny", (q, ql), ((s, sl),), (1, 2), adapt_fewshot=False), coarse_steps=1,
             progress=lines.append, adapt=AdaptConfig(steps=1))
    assert sum(line.split(":")[1].split()[0] == "FATE-SAM" for line in lines) == 0  # not adapted


def test_real_cases_are_the_held_out_volumes_with_training_supports(shared_data: Path) -> None:
    from medsam2kit.demo import real_cases
    from medsam2kit.reference import HELD_OUT, VOLUME_DATASETS

    cases = real_cases(shared_data)
    volumes = [p for f in VOLUME_DATASETS for p in HELD_OUT[f]]
    assert sorted(c.name for c in cases) == sorted(
        p.name.removesuffix("_img.nii.gz") for f in VOLUME_DATASETS
        for p in (shared_data / f).glob("*_img.nii.gz") if p.name.startswith(tuple(volumes)))
    for case in cases:
        if case.name.startswith("hippocampus"):
            assert len(case.supports) == 2 and case.labels == (1, 2)
            query = case.query[0].array
            for image, label in case.supports:  # the two training cases, never the query itself
                assert image.shape == label.shape
                assert image.shape != query.shape or not np.array_equal(image.array, query)
        else:
            assert case.supports == () and case.labels == ()


def test_run_recording_and_images_score_against_their_baselines(predictor: SAM2Predictor, shared_data: Path,
                                                                tmp_path: Path, one_torch_thread: None) -> None:
    from medsam2kit.demo import run_images, run_recording
    from medsam2kit.metrics import dice
    from medsam2kit.reference import shared_images, shared_recordings
    from medsam2kit.tasks import box_ellipse, box_prompt_image, filled_box, track_recording
    from PIL import Image

    rec = shared_recordings(shared_data)[0]
    frames, masks = np.asarray(rec.image), np.asarray(rec.label)
    rows = run_recording(predictor, rec.name, frames, masks, tmp_path)
    assert [(r.task, r.method) for r in rows] == [("tracking", "sam2"), ("tracking", "copy first mask")]
    first = int(np.flatnonzero(masks.reshape(len(masks), -1).any(1))[0])
    later = masks[first + 1:]
    assert rows[1].dice == pytest.approx(dice(np.broadcast_to(masks[first], later.shape), later))
    assert (tmp_path / rec.name / "overlay_tracking.png").stat().st_size > 1000
    carotid = SAM2Predictor.from_pretrained("reference-carotid", device="cpu")
    both = run_recording(predictor, rec.name, frames, masks, tmp_path / "both", task_models={"sam2 task": carotid})
    assert [r.method for r in both] == ["sam2", "sam2 task", "copy first mask"]
    assert both[0].dice == pytest.approx(rows[0].dice) and both[2].dice == pytest.approx(rows[1].dice)
    assert both[1].dice == pytest.approx(track_recording(carotid, frames, masks).dice)
    with pytest.raises(InvalidInputError, match="task_models"):
        run_recording(predictor, rec.name, frames, masks, task_models={"copy first mask": carotid})
    one, two = (Image.open(f / rec.name / "overlay_tracking.png").height for f in (tmp_path, tmp_path / "both"))
    assert two > one
    images = [(c.name, np.asarray(c.image), np.asarray(c.label)) for c in shared_images(shared_data)[:2]]
    rows = run_images(predictor, images, tmp_path, name="fetal")
    assert [r.case for r in rows] == [f"fetal/{n}" for n, _, _ in images for _ in range(3)]
    assert [r.method for r in rows[:3]] == ["sam2", "filled box", "ellipse in the box"]
    assert rows[1].dice == pytest.approx(dice(filled_box(images[0][2]), images[0][2]))
    assert rows[2].dice == pytest.approx(dice(box_ellipse(images[0][2]), images[0][2]))
    assert dice_table(rows).splitlines()[2].startswith("| fetal (2) | 1 |")
    assert (tmp_path / "fetal" / "overlay_box_prompt.png").is_file()
    # a task model is scored beside the model, and drawn as a second row of the montage
    task = SAM2Predictor.from_pretrained("reference-fetal-head", device="cpu")
    both = run_images(predictor, images, tmp_path, name="both", task_models={"sam2 task": task})
    assert [r.method for r in both[:4]] == ["sam2", "sam2 task", "filled box", "ellipse in the box"]
    assert both[0].dice == pytest.approx(rows[0].dice)
    assert both[1].dice == pytest.approx(dice(box_prompt_image(task, images[0][1], images[0][2]), images[0][2]))
    assert both[1].dice != pytest.approx(both[0].dice)
    with pytest.raises(InvalidInputError, match="task_models"):
        run_images(predictor, images, name="clash", task_models={"filled box": task})
    one, two = (Image.open(tmp_path / n / "overlay_box_prompt.png").height for n in ("fetal", "both"))
    assert two > one
    fitted = run_images(predictor, images, name="fitted", task_models={"sam2 task": task}, fit="ellipse")
    assert [r.method for r in fitted] == [r.method for r in both]
    assert fitted[1].dice == pytest.approx(
        dice(box_prompt_image(task, images[0][1], images[0][2], fit="ellipse"), images[0][2]))
    assert fitted[1].dice != pytest.approx(both[1].dice)
    assert [r.dice for r in fitted[2:4]] == [r.dice for r in both[2:4]]  # the baselines stay


def test_run_demo_refuses_task_models_of_a_task_it_does_not_run(predictor: SAM2Predictor, tmp_path: Path) -> None:
    from medsam2kit.demo import run_demo

    with pytest.raises(InvalidInputError, match=r"task_models: expected tasks among box prompt, tracking, got \['volumes'\]"):
        run_demo(tmp_path / "out", predictor, task_models={"volumes": {"sam2 task": predictor}})
    assert not (tmp_path / "out").exists()


def test_run_demo_in_two_processes_keeps_the_cases_order_and_their_progress(
        predictor: SAM2Predictor, tmp_path: Path) -> None:
    from itertools import groupby

    from medsam2kit.demo import DemoCase, run_demo

    (q, ql), (s, sl), (r, rl) = [ellipsoid_phantom((5, 28, 28), rng=seed) for seed in (1, 2, 3)]
    # the first case is the slower one (a support to register): the second usually ends first
    cases = [DemoCase("slow", (q, ql), ((s, sl),), (1, 2)), DemoCase("quick", (r, rl), (), ())]
    lines: list[str] = []
    summary = run_demo(tmp_path / "out", predictor, coarse_steps=1, adapt=None, say=lambda line: None,
                       progress=lines.append, jobs=2, cases=cases)
    assert summary["cases"] == ["slow", "quick"]
    # the rows in the cases' order, whichever worker ended first
    assert [case for case, _ in groupby(r["case"] for r in summary["rows"])] == ["slow", "quick"]
    assert {r["task"] for r in summary["rows"] if r["case"] == "slow"} >= {"fewshot", "sam2med3d"}
    # every worker's progress reached this process's callback
    assert sorted(line for line in lines if line.startswith("case ")) == ["case 1/2: slow", "case 2/2: quick"]
    assert any(line.startswith("slow: registering 1 support(s)") for line in lines)
    assert (tmp_path / "out" / "slow" / "fewshot.nii.gz").is_file()
    assert (tmp_path / "out" / "dice_table.md").is_file()


def test_run_demo_runs_the_volume_cases_with_the_volumes_model(predictor: SAM2Predictor, tmp_path: Path) -> None:
    """``volumes_model`` takes ``predictor``'s place on the volume cases (as ``medsam2kit demo``
    passes ``reference-volumes``): the rows are those of :func:`run_case` with it, not with ``predictor``."""
    from medsam2kit.demo import DemoCase, run_case, run_demo

    volumes = SAM2Predictor.from_pretrained("reference-volumes", device="cpu")
    case = DemoCase("quick", ellipsoid_phantom((5, 28, 28), rng=3), (), ())
    summary = run_demo(tmp_path / "out", predictor, adapt=None, say=lambda line: None, cases=[case],
                       volumes_model=volumes)
    got = [(r["task"], r["label"], r["method"], r["dice"]) for r in summary["rows"]]

    def rows(model: SAM2Predictor) -> list[tuple[str, int, str, float]]:
        return [(r.task, r.label, r.method, r.dice) for r in run_case(model, case, adapt=None)]

    assert got == rows(volumes) and got != rows(predictor)
    mirrored = run_demo(tmp_path / "mirrored", predictor, adapt=None, say=lambda line: None, cases=[case],
                        volumes_model=volumes, mirror=True)["rows"]
    assert [(r["task"], r["label"], r["method"], r["dice"]) for r in mirrored] == [
        (r.task, r.label, r.method, r.dice) for r in run_case(volumes, case, adapt=None, mirror=True)]
