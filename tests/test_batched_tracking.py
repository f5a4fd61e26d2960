"""Batched multi-object tracking equals per-object tracking (sam2's way) on the same prompts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medsam2kit import backend
from medsam2kit.predictor import SAM2Predictor, build_model

S = 128
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def model() -> backend.SAM2Model:
    torch.manual_seed(0)
    m = build_model("sam2.1_hiera_micro", device="cpu")
    with torch.no_grad():  # random weights often say "no object": raise the object-score bias
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
    return m


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:S, 0:S]
    out = []
    for t in range(10):
        img = 0.2 + 0.1 * rng.random((S, S))
        for k in range(4):
            cy, cx = 30 + 20 * k + t, 25 + 25 * (k % 3) + 2 * t
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] += 0.5
        rgb = torch.from_numpy(np.clip(img, 0, 1)).float()[None].repeat(3, 1, 1)
        out.append((rgb - MEAN) / STD)
    return torch.stack(out)


def _disc(cy: int, cx: int, r: int = 12) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _run(model: backend.SAM2Model, frames: torch.Tensor, steps: list[tuple[str, Any]], max_batch: int) -> list[Any]:
    """Replay ``steps`` (("mask", frame, obj, (cy, cx)), ("points", frame, obj, (x, y)),
    ("propagate", direction), ("reset",)) in a fresh session; the results of every propagation."""
    session = SAM2Predictor(model, max_objects_per_batch=max_batch).start(frames)
    results = []
    for step in steps:
        if step[0] == "mask":
            session.add_mask(step[1], _disc(*step[3]), obj_id=step[2])
        elif step[0] == "points":
            session.add_points(step[1], [step[3]], [1], obj_id=step[2])
        elif step[0] == "propagate":
            results.append(session.propagate(step[1]))
        else:
            session.reset()
    return results


def _assert_same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.obj_ids == y.obj_ids
        assert torch.equal(x.visited, y.visited)
        fin = torch.isfinite(y.low_res_logits)
        assert torch.equal(torch.isfinite(x.low_res_logits), fin)
        if fin.any():
            assert (x.low_res_logits[fin] - y.low_res_logits[fin]).abs().max().item() <= 1e-4
        assert torch.allclose(x.object_scores, y.object_scores, atol=1e-4, equal_nan=True)
        assert torch.allclose(x.ious, y.ious, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("num_objects", [1, 3, 16])
def test_objects_prompted_together_equal_per_object_tracking(
    model: backend.SAM2Model, frames: torch.Tensor, num_objects: int
) -> None:
    steps: list[tuple[str, Any]] = [
        ("mask", 4, k + 1, (30 + 6 * (k % 12), 25 + 5 * (k % 16))) for k in range(num_objects)
    ]
    steps.append(("propagate", "both"))
    calls: list[int] = []
    handle = model.memory_attention.register_forward_hook(lambda m, a, out: calls.append(out.shape[1]))
    try:
        batched = _run(model, frames, steps, max_batch=16)
        batch_sizes = list(calls)
        calls.clear()
        alone = _run(model, frames, steps, max_batch=1)
    finally:
        handle.remove()
    _assert_same(batched, alone)
    # 9 unprompted frames, each one memory-attention call over all objects (one call each alone)
    assert batch_sizes == [num_objects] * 9
    assert calls == [1] * 9 * num_objects


def test_batch_cap_splits_the_objects(model: backend.SAM2Model, frames: torch.Tensor) -> None:
    steps: list[tuple[str, Any]] = [("mask", 0, k + 1, (30 + 8 * k, 40)) for k in range(5)]
    steps.append(("propagate", "forward"))
    sizes: list[int] = []
    handle = model.memory_attention.register_forward_hook(lambda m, a, out: sizes.append(out.shape[1]))
    try:
        capped = _run(model, frames, steps, max_batch=2)
    finally:
        handle.remove()
    assert sizes == [2, 2, 1] * 9
    _assert_same(capped, _run(model, frames, steps, max_batch=1))


def test_different_prompt_frames_later_objects_corrections_and_reset(
    model: backend.SAM2Model, frames: torch.Tensor
) -> None:
    steps: list[tuple[str, Any]] = [
        ("mask", 2, 1, (32, 27)), ("mask", 2, 2, (52, 52)), ("mask", 6, 3, (76, 85)),
        ("propagate", "both"),
        ("mask", 3, 4, (93, 33)),  # an object added after a first propagation
        ("points", 5, 2, (55, 57)),  # a correction on one object
        ("propagate", "both"),
        ("reset",),
        ("mask", 7, 1, (37, 39)), ("mask", 7, 2, (57, 64)),
        ("propagate", "reverse"),
    ]
    sizes: list[int] = []
    handle = model.memory_attention.register_forward_hook(lambda m, a, out: sizes.append(out.shape[1]))
    try:
        batched = _run(model, frames, steps, max_batch=16)
    finally:
        handle.remove()
    _assert_same(batched, _run(model, frames, steps, max_batch=1))
    # objects whose memories hold different frames share a step (padded memories)
    # first propagation, forward from frame 2: object 3 alone there (1 and 2 are prompted), all
    # three on frames 3-5 although object 3's memory holds other frames, then 1 and 2 on frame 6
    assert sizes[:5] == [1, 3, 3, 3, 2] and max(sizes) == 4


@settings(max_examples=8, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3)), min_size=1, max_size=5),
    st.sampled_from(["forward", "reverse", "both"]),
)
def test_any_prompt_layout_equals_per_object_tracking(
    model: backend.SAM2Model, frames: torch.Tensor, prompts: list[tuple[int, int]], direction: str
) -> None:
    steps: list[tuple[str, Any]] = [
        ("mask", frame, i + 1, (30 + 20 * k + frame, 25 + 25 * (k % 3) + 2 * frame)) for i, (frame, k) in enumerate(prompts)
    ]
    steps.append(("propagate", direction))
    _assert_same(_run(model, frames, steps, max_batch=16), _run(model, frames, steps, max_batch=1))


def test_bad_cap(model: backend.SAM2Model) -> None:
    from medsam2kit.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="max_objects_per_batch"):
        SAM2Predictor(model, max_objects_per_batch=0)


def test_separate_tracks_together_equal_each_track_alone(model: backend.SAM2Model, frames: torch.Tensor) -> None:
    """SAM2Med3D's separate propagation: one track per prompt, each from its own frame, computed
    as one batch per step, equals resetting and propagating each prompt alone."""
    from medsam2kit.predictor import MaskPrompt, PointPrompt

    prompts = [
        MaskPrompt(frame=0, mask=_disc(30, 25), obj_id=7),  # no reverse pass from frame 0
        MaskPrompt(frame=4, mask=_disc(54, 33), obj_id=7),
        PointPrompt(frame=9, points=torch.tensor([[47.0, 88.0]]), labels=torch.tensor([1], dtype=torch.int32),
                    obj_id=7),
        MaskPrompt(frame=6, mask=_disc(96, 37), obj_id=7),
    ]
    session = SAM2Predictor(model).start(frames)
    alone = []
    for p in prompts:
        session.reset()
        session.add(p)
        alone.append(session.propagate("both"))
    calls = session.encoder_calls
    sizes: list[int] = []
    handle = model.memory_attention.register_forward_hook(lambda m, a, out: sizes.append(out.shape[1]))
    try:
        together = session.propagate_separately(prompts)
    finally:
        handle.remove()
    _assert_same(together, alone)
    assert session.encoder_calls == calls  # nothing encoded again
    assert max(sizes) == 3 and len(sizes) < sum(int(r.visited.sum()) for r in alone)
    with pytest.raises(Exception, match="prompts"):
        session.propagate_separately([])
