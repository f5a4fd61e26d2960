from __future__ import annotations

import numpy as np
import pytest

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


def test_propagation_prompts_each_label_on_its_largest_slice_and_copies_it_for_the_baseline(
        predictor: SAM2Predictor, one_torch_thread: None) -> None:
    image, label = ellipsoid_phantom((10, 48, 40), tube=True, rng=3)
    out = one_prompt_propagation(predictor, image, label)
    arr = label.array
    assert set(out.prompt_slices) == {1, 2, 3}
    for lab, s in out.prompt_slices.items():
        areas = [(np.take(arr, i, axis=out.axis) == lab).sum() for i in range(arr.shape[out.axis])]
        assert areas[s] == max(areas)
        prompt = np.take(arr, s, axis=out.axis) == lab
        for i in range(arr.shape[out.axis]):  # brute force: the prompt on every slice
            assert np.array_equal(np.take(out.baseline[lab], i, axis=out.axis), prompt)
    assert out.labels.shape == image.shape and set(np.unique(out.labels)) <= {0, 1, 2, 3}


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


def test_run_case_reports_each_stage(predictor: SAM2Predictor, one_torch_thread: None) -> None:
    """``medsam2kit demo`` showed nothing while it worked: run_case now reports each stage."""
    from medsam2kit.demo import DemoCase, run_case

    (q, ql), (s, sl) = [ellipsoid_phantom((6, 32, 32), rng=seed) for seed in (1, 2)]
    lines: list[str] = []
    rows = run_case(predictor, DemoCase("tiny", (q, ql), ((s, sl),), (1, 2)), coarse_steps=1,
                    progress=lines.append)
    assert rows and [line.split(":")[1].split()[0] for line in lines] == ["propagation", "FATE-SAM", "SAM2Med3D"]
    assert lines[0].startswith("tiny (6, 32, 32): propagation")
