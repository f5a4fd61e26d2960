"""Semantic end-to-end tests of the bundled models.

The phantom-only model (``reference-phantoms``) segments held-out phantoms: every phantom here
comes from :func:`medsam2kit.reference.heldout_phantoms` (generator seeds that training and
validation never used). The default model (``reference``, fine-tuned on real shared cases)
beats the phantom-only model on held-out real cases (:data:`medsam2kit.reference.HELD_OUT`;
skipped without the shared data). Thresholds are the issues' targets where reached, else the
measured gain with a margin; the figures are in docs/reference_model.md. Marked ``semantic``;
``pytest --durations`` shows their times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam2kit.demo import keep_labels, one_prompt_propagation, phantom_case, weak_coarse
from medsam2kit.fewshot import FewShotPipeline
from medsam2kit.register import RegistrationConfig
from medsam2kit.metrics import dice
from medsam2kit.pipelines import SAM2Med3DPipeline
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import (
    CAROTID_WEIGHTS,
    FETAL_HEAD_WEIGHTS,
    PHANTOM_WEIGHTS,
    REFERENCE_CONFIG,
    VOLUMES_WEIGHTS,
    shared_images,
    shared_recordings,
    shared_volumes,
    heldout_phantoms,
    reference_checkpoint,
    reference_predictor,
    reference_train_config,
)
from medsam2kit.volume import Volume

pytestmark = pytest.mark.semantic


@pytest.fixture(scope="module")
def predictor() -> SAM2Predictor:
    """The phantom-only model: the phantom tests below are about it."""
    return SAM2Predictor.from_config(REFERENCE_CONFIG, reference_checkpoint(PHANTOM_WEIGHTS), device="cpu")


def test_the_packaged_weights_stay_within_25_mb() -> None:
    folder = reference_checkpoint().parent
    assert sum(p.stat().st_size for p in folder.glob("*.pt")) <= 25 * 10**6


@pytest.mark.parametrize("filename", ["", PHANTOM_WEIGHTS, FETAL_HEAD_WEIGHTS, CAROTID_WEIGHTS, VOLUMES_WEIGHTS])
def test_the_shipped_weights_are_small_and_load_into_sam2(filename: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from medsam2kit.predictor import resolve_config

    path = reference_checkpoint(filename)
    assert path.stat().st_size <= 10 * 2**20
    # what sam2's build_sam2 does: instantiate the config's model, load the "model" entry strictly
    upstream = instantiate(OmegaConf.load(resolve_config(REFERENCE_CONFIG)).model, _recursive_=True)
    upstream.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], strict=True)
    ours = SAM2Predictor.from_config(REFERENCE_CONFIG, path, device="cpu").model.state_dict()
    theirs = upstream.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # trained, not random: a fresh random model differs
    fresh = SAM2Predictor.from_config(REFERENCE_CONFIG, device="cpu").model.state_dict()
    assert not torch.equal(ours["sam_mask_decoder.iou_token.weight"], fresh["sam_mask_decoder.iou_token.weight"])


def test_the_default_model_beats_the_phantom_model_on_held_out_real_cases(predictor: SAM2Predictor,
                                                                          shared_data: Path) -> None:
    """On cases neither model trained on: hippocampus propagation, carotid tracking, fetal-head
    box prompts, with the tasks' defaults (measured: 0.336 vs 0.104, 0.393 vs 0.000, 0.547 vs 0.135 on
    these 12 images; the default model's hippocampus 0.390 since overlaps go to the label
    prompted nearest)."""
    from medsam2kit.tasks import box_prompt_image, track_recording

    real = reference_predictor()
    (hippo,) = [c for c in shared_volumes(shared_data) if c.dataset == "msd_hippocampus"]
    assert isinstance(hippo.image, Volume) and isinstance(hippo.label, Volume)
    scores: dict[str, list[float]] = {}
    for name, model in (("real", real), ("phantoms", predictor)):
        prop = one_prompt_propagation(model, hippo.image, hippo.label)
        hip = np.mean([dice(prop.labels == lab, hippo.label.array == lab) for lab in prop.prompt_slices])
        car = np.mean([track_recording(model, np.asarray(c.image), np.asarray(c.label)).dice
                       for c in shared_recordings(shared_data)])
        fetal = np.mean([dice(box_prompt_image(model, np.asarray(c.image), np.asarray(c.label)), np.asarray(c.label))
                         for c in shared_images(shared_data)[:12]])
        scores[name] = [float(hip), float(car), float(fetal)]
    print("hippocampus, carotid, fetal (real vs phantom model):", scores)
    assert all(r >= p + 0.1 for r, p in zip(scores["real"], scores["phantoms"])), scores


def test_the_fetal_head_task_model_beats_the_default_model_on_held_out_fetal_heads(shared_data: Path) -> None:
    """Box prompts on held-out fetal-head images neither model trained on, the tasks' defaults
    (measured on these 12 images: 0.842 vs 0.547; on all 76: 0.897 vs 0.702), and the ellipse with
    the task model's mask's moments, SAM2 averaged with its mirror, the mask's convex hull
    (measured on these 12: 0.896; on all 76: 0.928, the issue's target 0.92)."""
    from medsam2kit.models import REFERENCE_FETAL_HEAD
    from medsam2kit.tasks import box_prompt_image

    images = shared_images(shared_data)[:12]
    task = SAM2Predictor.from_pretrained(REFERENCE_FETAL_HEAD, device="cpu")
    scores = {}
    for model in (reference_predictor(), task):
        scores[len(scores)] = float(np.mean([dice(box_prompt_image(model, c.image, c.label), c.label) for c in images]))
    fitted = float(np.mean([dice(box_prompt_image(task, c.image, c.label, fit="ellipse"), c.label) for c in images]))
    print("fetal-head box prompts (default, task model, task model's ellipse):", scores, fitted)
    assert scores[1] >= scores[0] + 0.2, scores
    assert fitted >= scores[1] + 0.02, (fitted, scores)


def test_the_carotid_task_model_tracks_held_out_recordings_better_than_the_default_model(shared_data: Path) -> None:
    """First-mask tracking through the held-out carotid recordings neither model trained on
    (measured: 0.447 vs 0.393 for the default model, copying the first mask 0.264)."""
    from medsam2kit.models import REFERENCE_CAROTID
    from medsam2kit.tasks import track_recording

    recordings = shared_recordings(shared_data)
    assert len(recordings) == 3
    task = SAM2Predictor.from_pretrained(REFERENCE_CAROTID, device="cpu")
    scores = {name: [track_recording(model, r.image, r.label) for r in recordings]
              for name, model in (("default", reference_predictor()), ("task", task))}
    mean = {name: float(np.mean([s.dice for s in runs])) for name, runs in scores.items()}
    copy = float(np.mean([s.copy_dice for s in scores["task"]]))
    print("carotid tracking (default, task model, copy):", mean, copy)
    assert mean["task"] >= mean["default"] + 0.03 and mean["task"] >= copy + 0.1, (mean, copy)


def test_the_volumes_task_model_propagates_held_out_volumes_better_than_the_default_model(shared_data: Path) -> None:
    """One-prompt mask propagation (the tasks' defaults without the prompt prior, no adaptation)
    through the held-out hippocampus, prostate and CT lesions neither model trained on (measured,
    mean per dataset: 0.407 / 0.492 / 0.478 against 0.390 / 0.338 / 0.437 for the default model;
    the mean of the 6 labels 0.459 against 0.388). With the prior both models are level without
    adaptation (0.560 / 0.565), and the task model is ahead after it (docs/reference_model.md)."""
    from medsam2kit.models import REFERENCE_VOLUMES

    cases = [c for c in shared_volumes(shared_data) if c.dataset in ("msd_hippocampus", "msd_prostate", "deeplesion_ct")]
    assert len(cases) == 4
    scores = {}
    for name, model in (("default", reference_predictor()), ("task", SAM2Predictor.from_pretrained(REFERENCE_VOLUMES, device="cpu"))):
        per_label = []
        for case in cases:
            assert isinstance(case.image, Volume) and isinstance(case.label, Volume)
            prop = one_prompt_propagation(model, case.image, case.label, prior=None)
            per_label += [dice(prop.labels == lab, case.label.array == lab) for lab in prop.prompt_slices]
        scores[name] = float(np.mean(per_label))
    print("held-out volume propagation without the prompt prior (default, volumes task model):", scores)
    assert scores["task"] >= scores["default"] + 0.05, scores


def test_task_models_and_the_phantom_model_are_stored_in_float16_and_load_as_float32() -> None:
    from medsam2kit.reference import TASK_RECIPES

    for filename in (*(recipe.weights for recipe in TASK_RECIPES.values()), PHANTOM_WEIGHTS):
        stored = torch.load(reference_checkpoint(filename), map_location="cpu", weights_only=True)["model"]
        assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
        loaded = SAM2Predictor.from_config(REFERENCE_CONFIG, reference_checkpoint(filename), device="cpu").model.state_dict()
        assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float())
                   for k, v in stored.items() if v.is_floating_point())


def test_the_default_zoom_keeps_structures_that_fill_the_crop() -> None:
    """The tasks' default zoom was chosen as the smallest factor at which no validation phantom
    object falls below Dice 0.8 (docs/reference_model.md): the default model at that zoom keeps
    every object of the 8 validation phantoms (measured: min 0.956; at zoom 1.25, 10 of 19 objects
    below 0.8, min 0.107)."""
    from medsam2kit.phantoms import random_phantom
    from medsam2kit.reference import VAL_SEED

    model = reference_predictor()
    scores = []
    for k in range(8):
        image, label = random_phantom(np.random.default_rng([VAL_SEED, k]))
        prop = one_prompt_propagation(model, image, label)
        scores += [dice(prop.labels == lab, label.array == lab) for lab in prop.prompt_slices]
    assert len(scores) == 19 and min(scores) >= 0.8, scores


def test_propagation_from_one_prompted_slice_beats_copying_the_prompt(predictor: SAM2Predictor) -> None:
    ours, copied = [], []
    for image, label in heldout_phantoms(1, 4):
        prop = one_prompt_propagation(predictor, image, label)
        for lab in prop.prompt_slices:
            truth = label.array == lab
            ours.append(dice(prop.labels == lab, truth))
            copied.append(dice(prop.baseline[lab], truth))
    assert np.mean(ours) >= 0.80, (ours, copied)
    assert np.mean(ours) >= np.mean(copied) + 0.2, (ours, copied)
    assert np.mean(np.array(ours) > np.array(copied)) == 1.0, (ours, copied)


def _swap_labels(label: Volume) -> Volume:
    arr = np.asarray(label.array)
    return label.with_array(np.select([arr == 1, arr == 2], [2, 1], 0).astype(arr.dtype))


def _cases() -> list[tuple[int, Volume, Volume, list[tuple[Volume, Volume]]]]:
    """Two held-out cases: (seed, query image, query label, supports with labels 1 and 2)."""
    out = []
    for seed in (1, 2):
        case = phantom_case(seed)
        out.append((seed, *case.query, [(img, keep_labels(lab, (1, 2))) for img, lab in case.supports]))
    return out


def test_fewshot_from_two_support_phantoms_and_worse_with_shuffled_labels(predictor: SAM2Predictor) -> None:
    right, shuffled = [], []
    for _, image, label, supports in _cases():
        swapped = [(img, _swap_labels(lab)) for img, lab in supports]
        for bank, scores in ((supports, right), (swapped, shuffled)):
            pred = FewShotPipeline(predictor, bank)(image).array
            scores += [dice(pred == lab, label.array == lab) for lab in (1, 2)]
    assert np.mean(right) >= 0.60, (right, shuffled)
    assert np.mean(shuffled) <= np.mean(right) - 0.2, (right, shuffled)


def test_fewshot_with_supports_registered_onto_the_query(predictor: SAM2Predictor) -> None:
    """The held-out query whose supports lie rotated and scaled against it (FATE-SAM 0.47 / 0.17
    unaligned) is segmented once they are registered onto it (align=RegistrationConfig())."""
    plain, aligned = [], []
    for _, image, label, supports in _cases():
        for pipe, scores in ((FewShotPipeline(predictor, supports), plain),
                             (FewShotPipeline(predictor, supports, align=RegistrationConfig()), aligned)):
            pred = pipe(image).array
            scores += [dice(pred == lab, label.array == lab) for lab in (1, 2)]
    assert min(aligned) >= 0.85 and np.mean(aligned) >= np.mean(plain) + 0.15, (plain, aligned)


def test_sam2med3d_fusion_is_at_least_the_weak_coarse_network(predictor: SAM2Predictor) -> None:
    coarse_dice, fused_dice = [], []
    for seed, image, label, supports in _cases():
        coarse = weak_coarse(supports, num_labels=2, steps=25, generator=torch.Generator().manual_seed(seed))
        result = SAM2Med3DPipeline(coarse, predictor).run(image)
        coarse_map = np.argmax(result.coarse, axis=0)
        for lab in (1, 2):
            coarse_dice.append(dice(coarse_map == lab, label.array == lab))
            fused_dice.append(dice(result.labels.array == lab, label.array == lab))
    assert np.mean(coarse_dice) < 0.85, coarse_dice  # the coarse network is indeed weak
    assert np.mean(fused_dice) >= np.mean(coarse_dice), (coarse_dice, fused_dice)


def test_finetuning_on_an_ultrasound_phantom_task_raises_validation_dice(tmp_path: Path) -> None:
    from medsam2kit.predictor import build_model
    from medsam2kit.train import fit
    from medsam2kit.train.config import config_from_dict
    from medsam2kit.train.data import synthetic_videos
    from medsam2kit.train.loop import evaluate

    base = reference_train_config()
    cfg = config_from_dict({
        "model": {"config": REFERENCE_CONFIG, "checkpoint": str(reference_checkpoint(PHANTOM_WEIGHTS)),
                  "disable_dropout": True},
        "data": {"train": [{"kind": "synthetic", "count": 16, "frames": 8, "seed": 11}],
                 "val": [{"kind": "synthetic", "count": 4, "frames": 8, "seed": 12}],
                 "clip_length": 6, "batch_size": 2},
        "prompts": {"mode": "mask"},
        "optim": {"lr": 3e-4, "encoder_lr": 3e-4, "grad_clip": base.optim.grad_clip, "weight_decay": 0.0},
        "schedule": {"steps": 40, "steps_per_epoch": 40},
        "log": {"progress": False, "plot": False},
        "output_dir": str(tmp_path / "run"),
    })
    val = synthetic_videos(4, frames=8, image_size=128, seed=12)
    before = evaluate(build_model(REFERENCE_CONFIG, reference_checkpoint(PHANTOM_WEIGHTS), device="cpu"), val,
                      device=torch.device("cpu"))["val_dice"]
    result = fit(cfg)
    assert result.val is not None
    after = result.val["val_dice"]
    print(f"fine-tuning val Dice: untuned {before:.3f}, tuned {after:.3f}")
    assert after >= before + 0.05, (before, after)
