"""Conformance of the sam2 adapter (medsam2kit.backend) with the installed sam2.

One test per private sam2 symbol the adapter uses (its parameter names as the adapter calls
them) and behavioural checks of each wrapper against upstream's own code path on a small
random-init model. A sam2 release that renames or reorders anything fails here, by name.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from sam2.modeling.sam.transformer import Attention, RoPEAttention
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from medsam2kit import backend
from medsam2kit.backend.model import PRIVATE_SAM2_SYMBOLS
from medsam2kit.predictor import FeatureCache, SAM2Predictor, build_model
from medsam2kit.predictor.checkpoints import VIDEO_POSTPROCESSING, compose_config

CONFIG = "sam2.1_hiera_micro"
S = 128
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
_CLASSES = {"SAM2Base": SAM2Base, "SAM2VideoPredictor": SAM2VideoPredictor, "SAM2ImagePredictor": SAM2ImagePredictor,
            "RoPEAttention": RoPEAttention}


@pytest.fixture(scope="module")
def model() -> backend.SAM2Model:
    torch.manual_seed(0)
    m = build_model(CONFIG, device="cpu")
    with torch.no_grad():  # random weights often say "no object": raise the object-score bias
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
    return m


def _upstream(model: torch.nn.Module, target: str = "sam2.sam2_video_predictor.SAM2VideoPredictor",
              **overrides: Any) -> Any:
    post = dict(VIDEO_POSTPROCESSING)
    if "SAM2Train" in target:  # a SAM2Base: no video-predictor options
        post.pop("model.fill_hole_area")
    cfg = compose_config(CONFIG, {**post, "model._target_": target, **overrides})
    up = instantiate(cfg.model, _recursive_=True)
    up.load_state_dict(model.state_dict())
    return up.eval()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A 12-frame moving disc as a JPEG folder (what upstream reads) and the decoded frames."""
    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:S, 0:S]
    decoded = []
    for t in range(12):
        img = 40 + 20 * rng.random((S, S))
        img[(yy - 60 - t) ** 2 + (xx - 50 - 2 * t) ** 2 < 18**2] += 150
        rgb = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        Image.fromarray(rgb).save(folder / f"{t:05d}.jpg", quality=95)
        back = np.asarray(Image.open(folder / f"{t:05d}.jpg").convert("RGB"), dtype=np.float32) / 255.0
        decoded.append((torch.from_numpy(back).permute(2, 0, 1) - MEAN) / STD)
    return folder, torch.stack(decoded)


def _disc(cy: int, cx: int, r: int = 18) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _features(model: backend.SAM2Model, frame: torch.Tensor) -> backend.BackboneFeatures:
    with torch.inference_mode():
        return backend.prepare_backbone_features(model, backbone_out=backend.encode_images(model, frame[None]))


# --------------------------------------------------------------------------------------------
# Signatures: one test per private symbol
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", sorted(PRIVATE_SAM2_SYMBOLS))
def test_private_symbol_signature(symbol: str, model: backend.SAM2Model) -> None:
    cls_name, name = symbol.split(".")
    cls = _CLASSES[cls_name]
    expected = PRIVATE_SAM2_SYMBOLS[symbol]
    if name == "_bb_feat_sizes":  # an attribute set by the constructor, three (H, W) levels
        sizes = SAM2ImagePredictor(_upstream(model))._bb_feat_sizes
        assert [tuple(s) for s in sizes] == [(256, 256), (128, 128), (64, 64)]
        return
    owner = next((c for c in cls.__mro__ if name in vars(c)), None)
    assert owner is not None and (owner is cls or owner is Attention), f"{symbol} is no longer defined by sam2"
    params = tuple(p for p in inspect.signature(getattr(cls, name)).parameters if p != "self")
    assert params == expected, f"{symbol}: sam2 has {params}, the adapter calls it with {expected}"


def test_upstream_still_lacks_the_per_object_clear() -> None:
    """Upstream 1.1.0 calls ``_clear_obj_non_cond_mem_around_input`` but never defines it; the
    adapter defines it. If sam2 starts defining it, check its meaning and drop ours."""
    source = inspect.getsource(SAM2VideoPredictor)
    assert "_clear_obj_non_cond_mem_around_input(" in source
    assert "_clear_obj_non_cond_mem_around_input" not in vars(SAM2VideoPredictor)


# --------------------------------------------------------------------------------------------
# Behaviour against upstream
# --------------------------------------------------------------------------------------------


def test_state_has_exactly_upstream_init_state_keys(model: backend.SAM2Model, video: tuple[Path, torch.Tensor]) -> None:
    folder, frames = video
    upstream_state = _upstream(model).init_state(str(folder))
    cache = FeatureCache(frames, lambda x: backend.encode_images(model, x), device=torch.device("cpu"), budget_bytes=2**30)
    ours = backend.new_inference_state(source=cache, video_size=(S, S), device=torch.device("cpu"))
    assert set(ours) == set(upstream_state)
    assert ours["num_frames"] == upstream_state["num_frames"] == 12
    assert isinstance(ours["obj_id_to_idx"], OrderedDict)


def test_cached_features_view_feeds_upstream_get_image_feature(
    model: backend.SAM2Model, video: tuple[Path, torch.Tensor]
) -> None:
    _, frames = video
    cache = FeatureCache(frames, lambda x: backend.encode_images(model, x), device=torch.device("cpu"), budget_bytes=2**30)
    state = backend.new_inference_state(source=cache, video_size=(S, S), device=torch.device("cpu"))
    with torch.inference_mode():
        _, _, feats, pos, sizes = SAM2VideoPredictor._get_image_feature(model, state, 4, 2)  # upstream's code
        ref = _features(model, frames[4])
    assert cache.stats.encoder_calls == 1 and isinstance(state["cached_features"], backend.state._CachedFeatures)
    for a, b in zip(feats, ref.vision_feats):
        assert a.shape[1] == 2 and torch.equal(a[:, 1], b[:, 0])
    assert [tuple(s) for s in sizes] == [tuple(s) for s in ref.feat_sizes]


def test_track_step_parts_and_memory_equal_upstream_track_step(
    model: backend.SAM2Model, video: tuple[Path, torch.Tensor]
) -> None:
    _, frames = video
    feats = _features(model, frames[2])
    points = {"point_coords": torch.tensor([[[50.0, 62.0]]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
    with torch.inference_mode():
        ref = SAM2Base.track_step(
            model, frame_idx=2, is_init_cond_frame=True, current_vision_feats=feats.vision_feats,
            current_vision_pos_embeds=feats.vision_pos_embeds, feat_sizes=feats.feat_sizes,
            point_inputs=points, mask_inputs=None, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            num_frames=12,
        )
        step = backend.track_step_parts(
            model, frame_idx=2, is_init_cond_frame=True, features=feats, point_inputs=points, mask_inputs=None,
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=12,
        )
        out = dict(step.current_out)
        backend.encode_memory_in_output(
            model, features=feats, point_inputs=points, run_mem_encoder=True, high_res_masks=step.heads.high_res_masks,
            object_score_logits=step.heads.object_score_logits, current_out=out,
        )
    assert torch.equal(step.heads.low_res_masks, ref["pred_masks"])
    assert torch.equal(step.heads.obj_ptr, ref["obj_ptr"])
    assert torch.equal(out["maskmem_features"], ref["maskmem_features"])
    assert step.heads.ious.shape[1] == 3  # one click on an initial frame: multimask
    assert step.heads.low_res_multimasks.shape == (1, 3, S // 4, S // 4)


def test_forward_sam_heads_and_use_multimask(model: backend.SAM2Model, video: tuple[Path, torch.Tensor]) -> None:
    _, frames = video
    feats = _features(model, frames[0])
    one = {"point_coords": torch.tensor([[[40.0, 40.0]]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
    two = {"point_coords": torch.tensor([[[40.0, 40.0], [70.0, 70.0]]]),
           "point_labels": torch.tensor([[1, 0]], dtype=torch.int32)}
    # sam2's rule: multimask on initial frames with 0..1 clicks (multimask_min/max_pt_num)
    assert backend.use_multimask(model, is_init_cond_frame=True, point_inputs=one) is True
    assert backend.use_multimask(model, is_init_cond_frame=True, point_inputs=two) is False
    assert backend.use_multimask(model, is_init_cond_frame=False, point_inputs=one) is bool(model.multimask_output_for_tracking)
    with torch.inference_mode():
        step = backend.track_step_parts(
            model, frame_idx=0, is_init_cond_frame=True, features=feats, point_inputs=two, mask_inputs=None,
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=12,
        )
        heads = backend.forward_sam_heads(
            model, backbone_features=step.pix_feat, point_inputs=two, mask_inputs=None,
            high_res_features=step.high_res_features, multimask_output=False,
        )
    assert torch.equal(heads.low_res_masks, step.heads.low_res_masks)
    assert heads.ious.shape == (1, 1)


def test_track_frame_keeps_the_decoder_iou(model: backend.SAM2Model, video: tuple[Path, torch.Tensor]) -> None:
    """pred_iou is the IoU the mask decoder predicted for the chosen mask (captured by a hook on
    upstream's decoder while upstream's own track_step runs)."""
    _, frames = video
    feats = _features(model, frames[5])
    captured: list[torch.Tensor] = []
    handle = model.sam_mask_decoder.register_forward_hook(lambda m, a, out: captured.append(out[1].clone()))
    box = {"point_coords": torch.tensor([[[30.0, 40.0], [95.0, 100.0]]]),
           "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
    try:
        with torch.inference_mode():
            SAM2Base.track_step(
                model, frame_idx=5, is_init_cond_frame=True, current_vision_feats=feats.vision_feats,
                current_vision_pos_embeds=feats.vision_pos_embeds, feat_sizes=feats.feat_sizes, point_inputs=box,
                mask_inputs=None, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}, num_frames=12,
            )
            out, logits = backend.track_frame(
                model, features=feats, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                frame_idx=5, num_frames=12, is_init_cond_frame=True, point_inputs=box,
            )
    finally:
        handle.remove()
    assert len(captured) == 2
    assert torch.equal(captured[0], captured[1])
    assert torch.allclose(out["pred_iou"], captured[0].max(dim=-1).values)
    assert out["maskmem_features"].dtype == torch.bfloat16  # stored as sam2 stores it
    assert torch.equal(out["pred_masks"], logits)


def test_track_frame_equals_upstream_run_single_frame_inference(
    model: backend.SAM2Model, video: tuple[Path, torch.Tensor]
) -> None:
    """Our override of ``_run_single_frame_inference`` against upstream's, on the same state."""
    folder, frames = video
    up = _upstream(model)
    state_up = up.init_state(str(folder))
    pred = SAM2Predictor(model)
    session = pred.start(frames)
    with torch.inference_mode():
        up.add_new_mask(state_up, 3, 1, _disc(63, 56))
    session.add_mask(3, _disc(63, 56))
    with torch.inference_mode():
        up.propagate_in_video_preflight(state_up)
        backend.preflight(model, session.state)
        for t in (4, 5):
            a, _ = up._run_single_frame_inference(
                inference_state=state_up, output_dict=state_up["output_dict_per_obj"][0], frame_idx=t, batch_size=1,
                is_init_cond_frame=False, point_inputs=None, mask_inputs=None, reverse=False, run_mem_encoder=True,
            )
            state_up["output_dict_per_obj"][0]["non_cond_frame_outputs"][t] = a
            b = backend.track_object(model, session.state, obj_idx=0, frame_idx=t, reverse=False)
            for key in ("pred_masks", "obj_ptr", "object_score_logits"):
                assert (a[key].float() - b[key].float()).abs().max().item() <= 1e-4, key
            assert (a["maskmem_features"].float() - b["maskmem_features"].float()).abs().max().item() <= 2e-2
            assert set(b) == set(a) | {"pred_iou"}


def test_clear_non_cond_mem_around_input_equals_sam2_legacy(
    model: backend.SAM2Model, video: tuple[Path, torch.Tensor]
) -> None:
    """With ``clear_non_cond_mem_around_input``, upstream's current predictor crashes (it calls
    a method it never defines); ours clears one object's memory as sam2's legacy predictor does
    (which implements it; with one object it is the same computation)."""
    folder, frames = video
    flag = {"model.clear_non_cond_mem_around_input": True}
    up = _upstream(model, **flag)
    state = up.init_state(str(folder))
    with torch.inference_mode():
        up.add_new_mask(state, 0, 1, _disc(60, 50))
        up.add_new_mask(state, 9, 1, _disc(69, 68))
        with pytest.raises(AttributeError, match="_clear_obj_non_cond_mem_around_input"):
            list(up.propagate_in_video(state))

    legacy = _upstream(model, target="sam2.sam2_video_predictor_legacy.SAM2VideoPredictor", **flag)
    legacy.memory_attention.register_forward_pre_hook(backend.model._cast_memory_to_query_dtype, with_kwargs=True)
    lstate = legacy.init_state(str(folder))
    with torch.inference_mode():
        legacy.add_new_mask(lstate, 0, 1, _disc(60, 50))
        legacy.add_new_mask(lstate, 9, 1, _disc(69, 68))
        expected = {f: m[0, 0] for f, _, m in legacy.propagate_in_video(lstate)}

    ours_model = build_model(CONFIG, device="cpu", overrides={"model.clear_non_cond_mem_around_input": True})
    ours_model.load_state_dict(model.state_dict())
    session = SAM2Predictor(ours_model).start(frames)
    session.add_mask(0, _disc(60, 50))
    session.add_mask(9, _disc(69, 68))
    res = session.propagate("forward")
    got = res.logits()[:, 0]
    for f, m in expected.items():
        assert (got[f] - m).abs().max().item() <= 1e-4, f
    # reaching the prompt on frame 9 cleared the memories within num_maskmem frames of it (2..8)
    assert ours_model.num_maskmem == 7 and ours_model.memory_temporal_stride_for_eval == 1
    assert set(session.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]) == {1, 10, 11}


# --------------------------------------------------------------------------------------------
# Training forward against sam2's SAM2Train
# --------------------------------------------------------------------------------------------


def _import_sam2train() -> Any:
    try:
        import tensorboard  # noqa: F401
    except ImportError:  # training.loss_fns imports training.trainer (logging only): stub its constant
        fake = types.ModuleType("training.trainer")
        fake.CORE_LOSS_KEY = "core_loss"  # type: ignore[attr-defined]
        sys.modules.setdefault("training.trainer", fake)
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    return BatchedVideoDatapoint, BatchedVideoMetaData


def test_train_forward_equals_sam2train(model: backend.SAM2Model) -> None:
    from medsam2kit.train.data import ClipSampler, collate, synthetic_videos
    from medsam2kit.train.forward import forward_clips
    from medsam2kit.train.prompts import PromptPlan

    BatchedVideoDatapoint, BatchedVideoMetaData = _import_sam2train()
    frames = 4
    batch = collate(ClipSampler([synthetic_videos(2, frames=frames, image_size=S, seed=0)], clip_length=frames,
                                max_objects=2).batch(step=0, micro=0, batch_size=2))
    ref_model = _upstream(
        model, target="training.model.sam2.SAM2Train",
        **{"model.prob_to_use_pt_input_for_train": 0.0, "model.num_init_cond_frames_for_train": 1,
           "model.rand_init_cond_frames_for_train": False, "model.num_frames_to_correct_for_train": 1},
    )
    ours = build_model(CONFIG, device="cpu")
    ours.load_state_dict(model.state_dict())
    for m in (ref_model, ours):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            if hasattr(mod, "dropout_p"):  # sam2's attention drops out inside SDPA in train mode
                mod.dropout_p = 0.0
    t, b = batch.images.shape[:2]
    n = batch.masks.shape[1]
    frame_idx = torch.arange(t)[:, None].expand(t, n)
    data = BatchedVideoDatapoint(
        img_batch=batch.images,
        obj_to_frame_idx=torch.stack([frame_idx, batch.obj_to_clip[None].expand(t, n)], -1).int(),
        masks=batch.masks,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros(t, n, 3, dtype=torch.long),
            frame_orig_size=torch.full((t, n, 2), S, dtype=torch.long),
            batch_size=[t],
        ),
        dict_key="test",
        batch_size=[t],
    )
    with torch.no_grad():
        ref = ref_model(data)
        got = forward_clips(ours, batch, PromptPlan.first_frame_mask())
    assert len(ref) == len(got) == frames
    for f in range(frames):
        assert torch.allclose(got[f]["pred"], ref[f]["pred_masks_high_res"], atol=1e-4), f
        assert torch.allclose(got[f]["ious"][0], ref[f]["multistep_pred_ious"][0], atol=1e-4), f
        assert torch.allclose(got[f]["object_scores"][0], ref[f]["multistep_object_score_logits"][0], atol=1e-4), f
        assert torch.allclose(got[f]["multimasks"][0], ref[f]["multistep_pred_multimasks_high_res"][0], atol=1e-4), f


def test_maskable_attention_is_sam2s_without_a_mask_and_ignores_masked_keys(model: backend.SAM2Model) -> None:
    from medsam2kit.backend.attention import MaskableRoPEAttention, key_padding

    attn = model.memory_attention.layers[0].cross_attn_image
    assert isinstance(attn, MaskableRoPEAttention)
    hw = model.memory_attention.layers[0].cross_attn_image.freqs_cis.shape[0]
    torch.manual_seed(1)
    q = torch.randn(1, hw, attn.embedding_dim)
    short = torch.randn(1, 2 * hw + 4, attn.kv_in_dim)  # two memory frames and 4 pointer tokens
    with torch.no_grad():
        ours = attn(q, short.clone(), short.clone(), num_k_exclude_rope=4)
        theirs = RoPEAttention.forward(attn, q, short.clone(), short.clone(), num_k_exclude_rope=4)
        assert torch.equal(ours, theirs)
        # the same memory padded by one frame and two pointer tokens, padding masked
        long = torch.zeros(1, 3 * hw + 6, attn.kv_in_dim)
        long[:, : 2 * hw] = short[:, : 2 * hw]
        long[:, 3 * hw : 3 * hw + 4] = short[:, 2 * hw :]
        long[:, 2 * hw : 3 * hw] = 5.0  # garbage that must not matter
        mask = torch.ones(1, 3 * hw + 6, dtype=torch.bool)
        mask[:, : 2 * hw] = False
        mask[:, 3 * hw : 3 * hw + 4] = False
        with key_padding(model.memory_attention, mask):
            padded = attn(q, long.clone(), long.clone(), num_k_exclude_rope=6)
        assert attn.key_padding_mask is None  # reset after the call
    assert (padded - ours).abs().max().item() <= 1e-5
