"""One-shot adaptation to the prompt masks (medsam2kit.adapt) and its use by the tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medsam2kit.adapt import AdaptConfig, adapt_predictor, adapt_to_supports
from medsam2kit.errors import InvalidInputError, ShapeMismatchError
from medsam2kit.metrics import dice
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.reference import heldout_phantoms
from medsam2kit.roi import largest_slice
from medsam2kit.sequencer import FrameSequence, sequence_volume
from medsam2kit.tasks import one_prompt_propagation
from medsam2kit.train.data import Clip, collate
from medsam2kit.train.forward import ClipForward
from medsam2kit.train.prompts import PromptPlan
from medsam2kit.train.selfsup import moving_clip


@pytest.fixture(scope="module")
def phantom_case() -> tuple[SAM2Predictor, FrameSequence, list[tuple[int, torch.Tensor]]]:
    """The phantom model, a held-out phantom as a sequence and its label 1 prompted on its largest slice."""
    (image, label), = heldout_phantoms(0, 1)
    pred = SAM2Predictor.from_pretrained("reference-phantoms", device="cpu")
    seq = sequence_volume(image, image_size=pred.image_size)
    mask = np.asarray(label.array) == 1
    k = largest_slice(mask, axis=seq.layout.axis)
    frame = seq.frame_of_slice(k)
    return pred, seq, [(frame, seq.mask_to_frame(np.take(mask, k, axis=seq.layout.axis)))]


def _weights(pred: SAM2Predictor) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pred.model.state_dict().items()}


def test_adaptation_trains_a_copy_and_leaves_the_encoder_and_the_original_alone(phantom_case) -> None:  # type: ignore[no-untyped-def]
    pred, seq, prompts = phantom_case
    before = _weights(pred)
    adapted = adapt_predictor(pred, seq, prompts, AdaptConfig(steps=3))
    after = _weights(adapted)
    assert all(torch.equal(before[k], v) for k, v in _weights(pred).items())  # the original is unchanged
    encoder = [k for k in before if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # frozen
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("memory_attention.") for k in changed) and any(k.startswith("sam_mask_decoder.") for k in changed)
    assert not adapted.model.training and adapted.image_size == pred.image_size
    again = adapt_predictor(pred, seq, prompts, AdaptConfig(steps=3))
    other = adapt_predictor(pred, seq, prompts, AdaptConfig(steps=3, seed=1))
    assert all(torch.equal(after[k], v) for k, v in _weights(again).items())  # the seed fixes everything
    assert any(not torch.equal(after[k], v) for k, v in _weights(other).items())


def test_adaptation_lowers_the_loss_on_new_moving_clips_of_the_prompt(phantom_case) -> None:  # type: ignore[no-untyped-def]
    pred, seq, prompts = phantom_case
    frame, mask = prompts[0]
    # a hard start: the phantom model with its mask decoder re-initialised knows nothing about masks
    torch.manual_seed(0)
    blank = SAM2Predictor.from_pretrained("reference-phantoms", device="cpu")
    for m in blank.model.sam_mask_decoder.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.02)
    generator = torch.Generator().manual_seed(12345)  # clips the adaptation never saw (it draws from seed 0)
    clips = [Clip(*moving_clip(seq.frames[frame], mask[None], 4, generator=generator), 99 + i, "test") for i in range(4)]
    batch = collate(clips)

    def loss(p: SAM2Predictor) -> float:
        with torch.no_grad():
            return float(ClipForward(p.model)(batch, PromptPlan.first_frame_mask())["loss"])

    adapted = adapt_predictor(blank, seq, prompts, AdaptConfig(steps=25))
    assert loss(adapted) < 0.7 * loss(blank)


def test_adapt_config_and_prompts_are_checked(phantom_case) -> None:  # type: ignore[no-untyped-def]
    pred, seq, prompts = phantom_case
    for kwargs, name in (({"steps": 0}, "steps"), ({"clip_length": 1}, "clip_length"), ({"lr": 0.0}, "lr"),
                         ({"max_shift": -0.1}, "max_shift"), ({"max_angle": float("nan")}, "max_angle")):
        with pytest.raises(InvalidInputError, match=name):
            AdaptConfig(**kwargs)  # type: ignore[arg-type]
    frame, mask = prompts[0]
    with pytest.raises(InvalidInputError, match="at least one"):
        adapt_predictor(pred, seq, [])
    with pytest.raises(InvalidInputError, match="outside"):
        adapt_predictor(pred, seq, [(len(seq), mask)])
    with pytest.raises(InvalidInputError, match="empty"):
        adapt_predictor(pred, seq, [(frame, torch.zeros_like(mask))])
    with pytest.raises(ShapeMismatchError, match=r"\(128, 128\)"):
        adapt_predictor(pred, seq, [(frame, mask[:64])])


def test_the_task_propagates_with_the_adapted_copy() -> None:
    torch.manual_seed(0)
    pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    (image, label), = heldout_phantoms(1, 1)
    config = AdaptConfig(steps=2)
    out = one_prompt_propagation(pred, image, label, adapt=config)
    # by hand: the same crop and prompts, the copy adapted on them, then the plain task with it
    plain = one_prompt_propagation(pred, image, label)
    seq = sequence_volume(plain.roi.crop_volume(image), axis=plain.axis, image_size=pred.image_size)
    truth = np.asarray(label.array)
    prompts = [(seq.frame_of_slice(k), seq.mask_to_frame(plain.roi.crop_slice(np.take(truth == lab, k, axis=plain.axis))))
               for lab, k in plain.prompt_slices.items()]
    by_hand = one_prompt_propagation(adapt_predictor(pred, seq, prompts, config), image, label)
    assert np.array_equal(out.labels, by_hand.labels) and not np.array_equal(out.labels, plain.labels)
    with pytest.raises(InvalidInputError, match="adapt: .*mask prompts"):
        one_prompt_propagation(pred, image, label, prompt="box", adapt=config)


@pytest.mark.semantic
@pytest.mark.slow
def test_adaptation_helps_the_default_model_on_a_held_out_ct_lesion(shared_data: Path, one_torch_thread: None) -> None:
    """The semantic claim of the model card, on one held-out case (the CT lesion 000009)."""
    from medsam2kit.reference import reference_predictor, shared_volumes

    case = next(v for v in shared_volumes(shared_data) if v.name.startswith("CT_Lesion_000009"))
    pred = reference_predictor()
    truth = np.asarray(case.label.array) == 1
    plain = dice(one_prompt_propagation(pred, case.image, case.label).labels == 1, truth)
    adapted = dice(one_prompt_propagation(pred, case.image, case.label, adapt=AdaptConfig()).labels == 1, truth)
    assert adapted >= plain + 0.1, (plain, adapted)


def test_supports_give_slices_at_even_quantiles_of_each_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label 1 on slices 2-9 gives slices 3, 5, 7 (quantiles 1/4, 1/2, 3/4); label 2 on slices 4-5
    gives slice 4 once; each source is that slice's grey frame and mask on the model's grid."""
    import medsam2kit.adapt as adapt_module
    from medsam2kit.volume import Volume

    seen: list[tuple[torch.Tensor, torch.Tensor, str]] = []
    monkeypatch.setattr(adapt_module, "_fine_tune", lambda pred, items, cfg, progress: seen.extend(items) or pred)
    rng = np.random.default_rng(0)
    image = Volume(rng.random((12, 40, 36)).astype(np.float32), np.eye(4))
    lab = np.zeros((12, 40, 36), np.uint8)
    lab[2:10, 5:20, 5:20] = 1
    lab[4:6, 25:35, 20:30] = 2
    pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    assert adapt_to_supports(pred, [(image, image.with_array(lab))]) is pred
    assert [name for _, _, name in seen] == ["support0[label 1]@3", "support0[label 1]@5", "support0[label 1]@7",
                                             "support0[label 2]@4"]
    seq = sequence_volume(image, axis=0, image_size=pred.image_size)
    for frame, mask, name in seen:
        z, value = int(name.rsplit("@", 1)[1]), int(name.split("label ")[1][0])
        assert torch.equal(frame, seq.frames[seq.frame_of_slice(z)])
        assert torch.equal(mask, seq.mask_to_frame(lab[z] == value).bool())


def test_more_prompts_than_max_clips_are_drawn_per_step(phantom_case, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import medsam2kit.train.data as data_module

    pred, seq, prompts = phantom_case
    frame, mask = prompts[0]
    many = [(f, mask) for f in range(5)]
    batches: list[list[str]] = []
    real = data_module.collate
    monkeypatch.setattr(data_module, "collate", lambda clips: batches.append([c.source for c in clips]) or real(clips))
    adapt_predictor(pred, seq, many, AdaptConfig(steps=4, max_clips=4))
    assert [len(b) for b in batches] == [4] * 4 and len(set(map(tuple, batches))) > 1
    assert {s for b in batches for s in b} <= {f"prompt@{f}" for f in range(5)}
    batches.clear()
    adapt_predictor(pred, seq, many[:3], AdaptConfig(steps=2, max_clips=4))
    assert batches == [[f"prompt@{f}" for f in range(3)]] * 2  # all of them, every step
    with pytest.raises(InvalidInputError, match="max_clips"):
        AdaptConfig(max_clips=1)


def test_fewshot_pipeline_adapts_to_its_supports_first() -> None:
    from medsam2kit.fewshot import FewShotPipeline, SupportBank
    from medsam2kit.phantoms import ellipsoid_phantom

    torch.manual_seed(0)
    pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    supports = [ellipsoid_phantom((6, 40, 40), rng=1)]
    query, _ = ellipsoid_phantom((6, 40, 40), rng=2)
    config = AdaptConfig(steps=2)
    pipe = FewShotPipeline(pred, supports, adapt=config)
    by_hand = FewShotPipeline(adapt_to_supports(pred, supports, config), supports)
    assert pipe.predictor is not pred
    assert np.array_equal(pipe(query).array, by_hand(query).array)
    with pytest.raises(InvalidInputError, match="adapt: needs the support volumes"):
        FewShotPipeline(pred, SupportBank.build(pred, supports), adapt=config)
    with pytest.raises(InvalidInputError, match="supports: expected at least one"):
        adapt_to_supports(pred, [])
    image, label = supports[0]
    with pytest.raises(InvalidInputError, match="support 0 has no labelled voxel"):
        adapt_to_supports(pred, [(image, label.with_array(np.zeros(label.shape, np.uint8)))])
    with pytest.raises(InvalidInputError, match="slices_per_label"):
        adapt_to_supports(pred, supports, slices_per_label=0)


@pytest.mark.semantic
@pytest.mark.slow
def test_adapting_to_the_supports_helps_fate_sam_on_the_held_out_hippocampus(shared_data: Path,
                                                                            one_torch_thread: None) -> None:
    """The model card's FATE-SAM row: hippocampus 199 from the training cases (measured, mean of
    the two labels: Dice 0.123 plain, 0.237 adapted, 0.396 adapted with the supports registered
    onto the query). The adaptation is not bit-identical across machines: on another machine of
    the same set-up, 0.123 / 0.325 / 0.396, so the margins are those both machines keep."""
    from medsam2kit.demo import keep_labels, training_supports
    from medsam2kit.fewshot import FewShotPipeline
    from medsam2kit.reference import reference_predictor, shared_volumes
    from medsam2kit.register import RegistrationConfig

    case = next(v for v in shared_volumes(shared_data) if v.dataset == "msd_hippocampus")
    supports = tuple((im, keep_labels(lab, (1, 2))) for im, lab in training_supports(shared_data))
    truth = np.asarray(keep_labels(case.label, (1, 2)).array)
    pred = reference_predictor()
    adapted = adapt_to_supports(pred, supports, AdaptConfig())  # as FewShotPipeline(adapt=AdaptConfig())
    scores = {}
    for name, pipe in (("plain", FewShotPipeline(pred, supports)), ("adapted", FewShotPipeline(adapted, supports)),
                       ("adapted, aligned", FewShotPipeline(adapted, supports, align=RegistrationConfig()))):
        out = pipe(case.image).array
        scores[name] = float(np.mean([dice(out == lab, truth == lab) for lab in (1, 2)]))
    assert scores["adapted"] >= scores["plain"] + 0.05, scores
    assert scores["adapted, aligned"] >= scores["adapted"] + 0.05, scores
