"""The predictor wrapper against upstream sam2 (real code, random-init micro model, CPU)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sam2.sam2_video_predictor import SAM2VideoPredictor

from medsam2kit.errors import (
    CheckpointError,
    ConfigError,
    DeviceError,
    FileFormatError,
    InvalidInputError,
    MissingFileError,
    ShapeMismatchError,
)
from medsam2kit.predictor.checkpoints import VIDEO_POSTPROCESSING, compose_config
from medsam2kit.predictor import (
    MaskPrompt,
    PointPrompt,
    SAM2Predictor,
    build_model,
    fill_small_holes,
    load_checkpoint,
    precision_policy,
    resolve_config,
    resolve_device,
)

CONFIG = "sam2.1_hiera_micro"
S = 128
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _seeded_model(**overrides: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(CONFIG, device="cpu", overrides=overrides)
    with torch.no_grad():
        # random weights often say "no object"; raise the object-score bias so masks come out
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
    return model


def _upstream_like(model: torch.nn.Module, **overrides: Any) -> SAM2VideoPredictor:
    """sam2's own SAM2VideoPredictor class with the same config and weights."""
    cfg = compose_config(
        CONFIG,
        {**VIDEO_POSTPROCESSING, "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor", **overrides},
    )
    up = instantiate(cfg.model, _recursive_=True)
    up.load_state_dict(model.state_dict())
    return up.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _seeded_model()


@pytest.fixture(scope="module")
def jpeg_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A 10-frame video stored as sam2 wants it (JPEG folder), and the same decoded pixels in memory."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:S, 0:S]
    frames = []
    for t in range(10):
        cx, cy = 50 + 2 * t, 60 + t
        disk = ((xx - cx) ** 2 + (yy - cy) ** 2 < 20**2) * 150.0
        img = np.clip(40 + disk + rng.normal(0, 10, (S, S)), 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([img] * 3, -1)).save(folder / f"{t:05d}.jpg", quality=95)
        # decode exactly as sam2's loader does (PIL, RGB, same size: resize is a copy)
        dec = np.array(Image.open(folder / f"{t:05d}.jpg").convert("RGB").resize((S, S)))
        frames.append(torch.from_numpy(dec).permute(2, 0, 1).float() / 255.0)
    normalized = (torch.stack(frames) - MEAN) / STD
    return folder, normalized


def _disk(cx: int, cy: int, r: int = 20) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r**2


def _count_encoder(up: torch.nn.Module) -> list[int]:
    calls = [0]
    original = up.forward_image

    def counting(img: torch.Tensor) -> Any:
        calls[0] += img.shape[0]
        return original(img)

    up.forward_image = counting  # type: ignore[method-assign]
    return calls


def _upstream_run(up: SAM2VideoPredictor, video: Path, steps: list[tuple[str, Any]]) -> torch.Tensor:
    """Run prompts/propagations on upstream; returns (T, O, S, S) logits of the last propagation(s)."""
    state = up.init_state(str(video))
    out: dict[int, torch.Tensor] = {}
    for kind, arg in steps:
        if kind == "mask":
            frame, obj, mask = arg
            up.add_new_mask(state, frame, obj, mask)
        elif kind == "points":
            frame, obj, pts, labels = arg
            up.add_new_points_or_box(state, frame, obj, points=pts, labels=labels)
        elif kind == "box":
            frame, obj, box = arg
            up.add_new_points_or_box(state, frame, obj, box=box)
        elif kind == "propagate":
            out = {}
            for reverse in (False, True):
                for f, _ids, masks in up.propagate_in_video(state, reverse=reverse):
                    out[f] = masks[:, 0].clone()
        elif kind == "reset":
            up.reset_state(state)
    n = state["num_frames"]
    return torch.stack([out.get(t, torch.full_like(next(iter(out.values())), float("-inf"))) for t in range(n)])


def _ours_run(pred: SAM2Predictor, frames: torch.Tensor, steps: list[tuple[str, Any]]) -> tuple[torch.Tensor, int]:
    session = pred.start(frames)
    result = None
    for kind, arg in steps:
        if kind == "mask":
            frame, obj, mask = arg
            session.add_mask(frame, mask, obj_id=obj)
        elif kind == "points":
            frame, obj, pts, labels = arg
            session.add_points(frame, pts, labels, obj_id=obj)
        elif kind == "box":
            frame, obj, box = arg
            session.add_box(frame, box, obj_id=obj)
        elif kind == "propagate":
            result = session.propagate("both")
        elif kind == "reset":
            session.reset()
    assert result is not None
    return result.logits(), session.encoder_calls


SCENARIO_TWO_OBJECTS = [
    ("mask", (3, 1, _disk(56, 63))),
    ("points", (3, 2, [[62.0, 66.0]], [1])),
    ("mask", (7, 1, _disk(64, 67))),
    ("propagate", None),
]
# objects first prompted on different frames: in fp32 upstream crashes here (no object pointer
# for object 2 before its prompt, so bf16 memory meets fp32 layers)
SCENARIO_STAGGERED = [
    ("mask", (3, 1, _disk(56, 63))),
    ("points", (6, 2, [[62.0, 66.0]], [1])),
    ("propagate", None),
]


def test_in_memory_equals_upstream_jpeg_folder(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    folder, frames = jpeg_video
    up = _upstream_like(model)
    up_calls = _count_encoder(up)
    expected = _upstream_run(up, folder, SCENARIO_TWO_OBJECTS)
    ours, calls = _ours_run(SAM2Predictor(model), frames, SCENARIO_TWO_OBJECTS)
    assert ours.shape == expected.shape == (10, 2, S, S)
    assert (expected > 0).any(), "the scenario must produce masks (object score bias raised)"
    assert torch.isfinite(ours).all()
    assert (ours - expected).abs().max().item() <= 1e-4
    # every frame encoded exactly once here; upstream re-encodes (init, prompts, both passes)
    assert calls == 10
    assert up_calls[0] > 10


def test_correction_and_reset_reuse_the_cache(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    folder, frames = jpeg_video
    steps = [
        ("box", (4, 1, [36.0, 43.0, 84.0, 90.0])),
        ("propagate", None),
        ("points", (8, 1, [[70.0, 70.0]], [0])),  # a correction on a propagated frame
        ("propagate", None),
    ]
    expected = _upstream_run(_upstream_like(model), folder, steps)
    ours, calls = _ours_run(SAM2Predictor(model), frames, steps)
    assert (ours - expected).abs().max().item() <= 1e-4
    assert calls == 10

    steps_reset = [*steps, ("reset", None), ("mask", (7, 1, _disk(64, 67))), ("propagate", None)]
    expected = _upstream_run(_upstream_like(model), folder, steps_reset)
    ours, calls = _ours_run(SAM2Predictor(model), frames, steps_reset)
    assert (ours - expected).abs().max().item() <= 1e-4
    assert calls == 10


def test_budget_recomputes_instead_of_failing(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    twice = [*SCENARIO_TWO_OBJECTS, ("points", (5, 1, [[60.0, 60.0]], [1])), ("propagate", None)]
    full, calls_full = _ours_run(SAM2Predictor(model), frames, twice)
    probe = SAM2Predictor(model).start(frames)
    probe.encode_all()
    per_frame_mb = probe.cache.stats.stored_bytes / 10 / 2**20
    budget = SAM2Predictor(model, cache_budget_mb=3.5 * per_frame_mb)
    small, calls_small = _ours_run(budget, frames, twice)
    assert torch.equal(full, small)
    assert calls_full == 10
    assert calls_small > 10


def test_bf16_cache_storage_is_close(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    pred = SAM2Predictor(model, cache_dtype=torch.bfloat16)
    session = pred.start(frames)
    session.add_mask(3, _disk(56, 63))
    half = session.propagate("forward")
    exact = SAM2Predictor(model).start(frames)
    exact.add_mask(3, _disk(56, 63))
    full = exact.propagate("forward")
    assert session.cache.stats.stored_bytes * 2 == exact.cache.stats.stored_bytes
    # bf16 features (8 significant bits) move the logits a little, not the masks
    visited = full.visited
    diff = (half.low_res_logits[visited] - full.low_res_logits[visited]).abs()
    assert 0 < diff.max().item() <= 0.5
    agree = (half.masks()[visited] == full.masks()[visited]).float().mean().item()
    assert agree >= 0.99


def test_encode_all_batched_then_no_encoder_calls(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    session = SAM2Predictor(model).start(frames)
    session.encode_all(batch_size=4)
    assert session.encoder_calls == 10
    session.add_mask(5, _disk(60, 65))
    res = session.propagate("both")
    assert session.encoder_calls == 10
    assert res.visited.all()
    # batched encoding agrees with per-frame encoding within float tolerance
    lazy = SAM2Predictor(model).start(frames)
    lazy.add_mask(5, _disk(60, 65))
    assert (lazy.propagate("both").logits() - res.logits()).abs().max().item() < 1e-3


def test_batched_encoding_at_propagation_start(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    session = SAM2Predictor(model, encode_batch_size=4).start(frames)
    session.add_mask(6, _disk(62, 66))
    res = session.propagate("forward")  # visits frames 6..9 only
    assert session.encoder_calls == 4 and res.visited.sum() == 4
    lazy = SAM2Predictor(model).start(frames)
    lazy.add_mask(6, _disk(62, 66))
    assert (lazy.propagate("forward").logits()[6:] - res.logits()[6:]).abs().max().item() < 1e-3
    with pytest.raises(InvalidInputError, match="encode_batch_size"):
        SAM2Predictor(model, encode_batch_size=0)


def test_forward_and_reverse_visit_only_their_side(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    session = SAM2Predictor(model).start(frames)
    session.add_mask(4, _disk(58, 64))
    fwd = session.propagate("forward")
    assert fwd.visited.tolist() == [False] * 4 + [True] * 6
    assert torch.isinf(fwd.logits()[:4]).all()
    rev = session.propagate("reverse")
    assert rev.visited.tolist() == [True] * 5 + [False] * 5
    assert torch.allclose(rev.ious[4], torch.ones(1))  # the mask prompt is the output
    assert torch.isfinite(rev.object_scores[:5]).all()


def test_fp32_without_object_pointers_runs(
    model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]
) -> None:
    """Upstream crashes (bf16 memory meets fp32 layers); the wrapper casts memory to the query dtype."""
    folder, frames = jpeg_video
    with pytest.raises(RuntimeError, match="same dtype"):
        _upstream_run(_upstream_like(model), folder, SCENARIO_STAGGERED)
    ours, calls = _ours_run(SAM2Predictor(model), frames, SCENARIO_STAGGERED)
    assert torch.isfinite(ours).all() and calls == 10


def test_predict_slices_on_a_sessions_cache_encodes_once_and_gives_the_same_logits(
        model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    pred = SAM2Predictor(model)
    fresh = [pred.predict_slices(frames, [PointPrompt(frame=2, points=torch.tensor(pts), labels=torch.tensor(labs))])
             for pts, labs in (([[54.0, 62.0]], [1]), ([[54.0, 62.0], [30.0, 20.0]], [1, 0]))]
    session = pred.start(frames)
    for (pts, labs), ref in zip((([[54.0, 62.0]], [1]), ([[54.0, 62.0], [30.0, 20.0]], [1, 0])), fresh):
        res = pred.predict_slices(frames, [PointPrompt(frame=2, points=torch.tensor(pts), labels=torch.tensor(labs))],
                                  cache=session.cache)
        assert torch.equal(res.logits(), ref.logits())
    assert session.encoder_calls == 1  # frame 2, once for both calls
    session.add_points(2, [[54.0, 62.0]], [1])
    session.propagate("forward")
    assert session.encoder_calls == 8  # frames 2..9, frame 2 not again
    with pytest.raises(InvalidInputError, match="cache: expected a feature cache of the 9 frames, got 10"):
        pred.predict_slices(frames[:9], [PointPrompt(frame=2, points=torch.tensor([[54.0, 62.0]]), labels=torch.tensor([1]))],
                            cache=session.cache)


def test_predict_slices_equals_upstream_prompted_frame(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    folder, frames = jpeg_video
    up = _upstream_like(model)
    prompts = [
        PointPrompt(frame=2, points=torch.tensor([[54.0, 62.0]]), labels=torch.tensor([1]), obj_id=1),
        PointPrompt(frame=7, points=torch.zeros(0, 2), labels=torch.zeros(0, dtype=torch.int32), obj_id=1,
                    box=torch.tensor([44.0, 47.0, 92.0, 95.0])),
        MaskPrompt(frame=9, mask=_disk(70, 70), obj_id=1),
    ]
    pred = SAM2Predictor(model)
    res = pred.predict_slices(frames, prompts, batch_size=2)
    assert res.visited.tolist() == [t in (2, 7, 9) for t in range(10)]
    for p in prompts:
        state = up.init_state(str(folder))
        if isinstance(p, MaskPrompt):
            _, _, masks = up.add_new_mask(state, p.frame, 1, p.mask)
        else:
            _, _, masks = up.add_new_points_or_box(
                state, p.frame, 1,
                points=p.points if p.points.numel() else None,
                labels=p.labels if p.labels.numel() else None,
                box=p.box,
            )
        ours = res.logits()[p.frame, 0]
        assert (ours - masks[0, 0]).abs().max().item() <= 1e-4


def test_image_predictor_below_1024_equals_the_video_path(model: torch.nn.Module) -> None:
    """Upstream SAM2ImagePredictor at 128 px (feature sizes fixed) gives the logits that the
    video path gives on a freshly box-prompted frame (predict_slices) for the same pixels."""
    ip = SAM2Predictor(model).image_predictor()
    img = (np.random.default_rng(1).random((S, S, 3)) * 255).astype(np.uint8)
    img[30:90, 30:90] = 200
    ip.set_image(img)
    box = np.array([30, 30, 90, 90])
    masks, scores, low_res = ip.predict(box=box, multimask_output=False)
    assert masks.shape == (1, S, S) and low_res.shape == (1, S // 4, S // 4)
    frame = (torch.from_numpy(img).permute(2, 0, 1).float() / 255.0 - MEAN) / STD
    res = SAM2Predictor(model).predict_slices(frame[None], [PointPrompt(0, torch.zeros(0, 2), torch.zeros(0, dtype=torch.int32), box=torch.tensor(box, dtype=torch.float32))])
    assert (res.low_res_logits[0, 0] - torch.from_numpy(low_res[0])).abs().max().item() <= 1e-3
    assert abs(res.ious[0, 0].item() - float(scores[0])) <= 1e-4


def test_checkpoint_round_trip_and_errors(model: torch.nn.Module, tmp_path: Path) -> None:
    ckpt = tmp_path / "w.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    loaded = build_model(CONFIG, ckpt, device="cpu")
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    load_checkpoint(build_model(CONFIG, device="cpu"), bare)

    sd = dict(model.state_dict())
    sd.pop("no_mem_embed")
    sd["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.pt"
    torch.save({"model": sd}, broken)
    with pytest.raises(CheckpointError, match=r"no_mem_embed.*extra\.weight"):
        build_model(CONFIG, broken, device="cpu")
    with pytest.raises(CheckpointError, match="shape mismatches 1"):
        wrong = dict(model.state_dict())
        wrong["no_mem_embed"] = torch.zeros(3)
        torch.save(wrong, broken)
        build_model(CONFIG, broken, device="cpu")
    with pytest.raises(MissingFileError, match="missing.pt"):
        build_model(CONFIG, tmp_path / "missing.pt", device="cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FileFormatError, match="garbage.pt"):
        build_model(CONFIG, garbage, device="cpu")


def test_hiera_t_builds_at_256_with_meta_keys() -> None:
    """The released configs build at other sizes; their state-dict keys are Meta's (no extra params)."""
    m = build_model("configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu", image_size=256)
    assert m.image_size == 256
    assert "image_encoder.trunk.patch_embed.proj.weight" in m.state_dict()
    assert sum(p.numel() for p in m.parameters()) > 30e6


def test_config_and_device_errors() -> None:
    assert resolve_config("sam2.1_hiera_t").name == "sam2.1_hiera_t.yaml"
    assert resolve_config("sam2_hiera_s.yaml").is_file()
    with pytest.raises(ConfigError, match="sam2.1_hiera_t"):
        resolve_config("no_such_config")
    with pytest.raises(InvalidInputError, match="image_size"):
        build_model(CONFIG, device="cpu", image_size=100)
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert precision_policy(torch.device("cpu")).autocast_dtype is None
    assert precision_policy(torch.device("cuda")).autocast_dtype == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="cuda"):
            resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("tpu")


def test_bad_prompts_and_frames(model: torch.nn.Module, jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    pred = SAM2Predictor(model)
    with pytest.raises(ShapeMismatchError, match=r"\(3, 128, 128\)"):
        pred.start(torch.zeros(3, 3, 64, 64))
    session = pred.start(frames)
    with pytest.raises(InvalidInputError, match="no prompt"):
        session.propagate()
    with pytest.raises(InvalidInputError, match=r"frame: expected an integer in \[0, 10\)"):
        session.add_mask(10, _disk(50, 50))
    with pytest.raises(ShapeMismatchError, match="mask"):
        session.add_mask(1, torch.zeros(1, S, S, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="binary"):
        session.add_mask(1, torch.full((S, S), 0.5))
    with pytest.raises(ShapeMismatchError, match="labels"):
        session.add_points(1, [[1.0, 2.0]], [1, 0])
    with pytest.raises(InvalidInputError, match="box"):
        session.add_box(1, [50.0, 50.0, 40.0, 60.0])
    with pytest.raises(InvalidInputError, match="direction"):
        session.propagate("sideways")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast path)")
def test_cuda_bf16_session(jpeg_video: tuple[Path, torch.Tensor]) -> None:
    _, frames = jpeg_video
    pred = SAM2Predictor(_seeded_model().cuda())
    assert pred.policy.autocast_dtype == torch.bfloat16
    session = pred.start(frames)
    session.add_mask(3, _disk(56, 63))
    res = session.propagate("both")
    assert res.visited.all() and torch.isfinite(res.logits()).all()
    assert session.encoder_calls == 10


def _reference_fill(x: np.ndarray, max_area: int) -> np.ndarray:
    """Brute-force flood fill (8-connected) of background components of at most max_area pixels."""
    h, w = x.shape
    out = x.copy()
    seen = np.zeros_like(x, dtype=bool)
    for y0 in range(h):
        for x0 in range(w):
            if x[y0, x0] > 0 or seen[y0, x0]:
                continue
            comp, queue = [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, xx = queue.popleft()
                comp.append((y, xx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, xx + dx
                        if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and x[ny, nx] <= 0:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            if len(comp) <= max_area:
                for y, xx in comp:
                    out[y, xx] = np.float32(0.1)
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.integers(3, 12),
    st.integers(3, 12),
    st.integers(1, 20),
    st.integers(0, 2**31 - 1),
)
def test_fill_small_holes_matches_brute_force(h: int, w: int, area: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(h, w)).astype(np.float32)
    ours = fill_small_holes(torch.from_numpy(x)[None], area)[0].numpy()
    np.testing.assert_array_equal(ours, _reference_fill(x, area))
