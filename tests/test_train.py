"""Tests of medsam2kit.train: config, data, prompts, loss, overfitting, checkpoints, resume, DDP, CLI."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medsam2kit.errors import ConfigError, InvalidInputError
from medsam2kit.predictor import build_model, resolve_config
from medsam2kit.train import (
    ClipForward,
    ClipSampler,
    MultiStepLoss,
    PromptPlan,
    build_optimizer,
    click_prompt,
    collate,
    config_from_dict,
    draw_plan,
    filter_duration,
    fit,
    load_config,
    load_videos,
    plan_stages,
    prepare_model,
    preset,
    synthetic_videos,
    take_fraction,
)
from medsam2kit.train.cli import add_finetune_parser, run_finetune
from medsam2kit.train.config import DatasetSpec, OptimConfig, PromptConfig, TrainConfig, resolve_optim


@pytest.fixture(autouse=True)
def _flush_denormals() -> Any:
    """Denormals (SAM2's layer-scale 1e-6) make CPU backward passes ~40x slower; fit() does the same."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def _cfg(tmp: Path, **over: Any) -> Any:
    base: dict[str, Any] = {
        "data": {"train": [{"kind": "synthetic", "count": 2, "frames": 4}], "clip_length": 2, "max_objects": 1},
        "schedule": {"steps": 2, "steps_per_epoch": 2},
        "prompts": {"mode": "mask"},
        "optim": {"lr": 1e-3, "encoder_lr": 1e-3},
        "device": "cpu",
        "log": {"progress": False, "plot": False},
        "output_dir": str(tmp),
    }
    for k, v in over.items():
        node = base
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return config_from_dict(base)


# ------------------------------------------------------------------------------------ config


def test_config_unknown_key_and_wrong_type_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key optim\.lrr"):
        config_from_dict({"optim": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.kind: expected one of"):
        config_from_dict({"data": {"train": [{"kind": "video"}]}})
    with pytest.raises(ConfigError, match=r"schedule\.steps: expected int, got '10' \(str\)"):
        config_from_dict({"schedule": {"steps": "10"}})
    with pytest.raises(ConfigError, match=r"data\.pool"):
        config_from_dict({"paradigm": "joint"})
    p = tmp_path / "run.yaml"
    p.write_text("optim:\n  lr: 1.0e-4\n  betas: [0.9, 0.99]\nmodel:\n  freeze_image_encoder: yes\n")
    cfg = load_config(p)
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.9, 0.99) and cfg.model.freeze_image_encoder
    p.write_text("model:\n  freeze_image_encoder: 1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: model\.freeze_image_encoder: expected bool"):
        load_config(p)
    assert cfg.replace(**{"optim.lr": 2e-4}).optim.lr == 2e-4
    with pytest.raises(ConfigError):
        cfg.replace(**{"optim.nope": 1})


def test_set_key_errors_list_the_known_keys() -> None:
    """``--set optim.lrr=1e-4`` lists optim's keys, as docs/train.md says."""
    cfg = TrainConfig()
    with pytest.raises(ConfigError, match=r"unknown key optim\.lrr \(known keys of optim: \[.*'lr'.*'weight_decay'\]\)"):
        cfg.replace(**{"optim.lrr": 1e-4})
    with pytest.raises(ConfigError, match=r"unknown key optimm\.lr \(known sections: \[.*'optim'.*\]\)"):
        cfg.replace(**{"optimm.lr": 1e-4})
    with pytest.raises(ConfigError, match=r"unknown key seed2 \(known keys: \[.*'seed'.*\]\)"):
        cfg.replace(seed2=1)
    with pytest.raises(ConfigError, match=r"optim\.lr is a value, not a section"):
        cfg.replace(**{"optim.lr.x": 1})


def test_volume_dataset_without_mask_path_names_mask_path(tmp_path: Path) -> None:
    """A volume dataset with no mask_path used to fail on 'fractional values' of the image."""
    with pytest.raises(ConfigError, match=r"data\.train\[0\]\.mask_path: required for kind 'volume'.*img\.nii\.gz"):
        config_from_dict({"data": {"train": [{"kind": "volume", "path": "cases/img.nii.gz"}]}})
    config_from_dict({"data": {"train": [{"kind": "volume", "path": "cases/*.npz"}]}})  # npz may hold labels
    from medsam2kit.io import save_volume
    from medsam2kit.phantoms import ellipsoid_phantom

    image, _ = ellipsoid_phantom(shape=(6, 32, 32), rng=0)
    save_volume(image, tmp_path / "img.nii.gz")
    with pytest.raises(InvalidInputError, match=r"mask_path: required for the volume .*img\.nii\.gz"):
        load_videos(DatasetSpec(kind="volume", path=str(tmp_path / "img.nii.gz")), image_size=64)


def test_paradigm_presets_and_sam2_recipe() -> None:
    train, pool = [{"kind": "synthetic"}], [{"kind": "synthetic", "seed": 3}]
    ts = preset("task_specific", **{"data.train": train})
    assert [s.name for s in plan_stages(ts)] == ["task"]
    inter = preset("intermediate", **{"data.train": train, "data.pool": pool, "schedule.stage1_steps": 7})
    assert [(s.name, s.steps, len(s.datasets)) for s in plan_stages(inter)] == [("adapt", 7, 1), ("task", 1000, 1)]
    joint = preset("joint", **{"data.train": train, "data.pool": pool})
    assert [(s.name, len(s.datasets)) for s in plan_stages(joint)] == [("joint", 2)]
    o, loss = ts.optim, ts.loss
    assert (o.lr, o.encoder_lr, o.weight_decay, o.grad_clip) == (None, None, None, None)  # the model's defaults
    sam2 = resolve_optim(ts.replace(**{"model.config": "sam2.1_hiera_l"})).optim
    assert (sam2.lr, sam2.encoder_lr, sam2.weight_decay, sam2.grad_clip) == (5e-6, 3e-6, 0.1, 0.1)
    assert (loss.focal, loss.dice, loss.iou, loss.object_score) == (20.0, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError):
        preset("nope")


# ------------------------------------------------------------------------------------ data


def test_sources_npz_frames_images_volume(tmp_path: Path) -> None:
    from PIL import Image

    from medsam2kit.io import save_volume
    from medsam2kit.phantoms import ellipsoid_phantom, ultrasound_clip
    from medsam2kit.volume import Volume

    clip, lab = ultrasound_clip(9, (80, 96), rng=0)
    np.savez(tmp_path / "a.npz", frames=clip, masks=lab)
    vids = load_videos(DatasetSpec(kind="cine", path=str(tmp_path / "*.npz"), frame_range=(2, 8)), image_size=64)
    assert len(vids) == 1 and vids[0].frames.shape == (6, 64, 64) and vids[0].obj_ids == (1, 2)
    assert vids[0].masks.dtype == torch.bool and vids[0].masks.shape == (6, 2, 64, 64)

    folder = tmp_path / "frames"
    (folder / "masks").mkdir(parents=True)
    for t in range(3):
        Image.fromarray(clip[t]).save(folder / f"f{t + 1}.png")
        Image.fromarray(((lab[t] == 1) * 255).astype(np.uint8)).save(folder / "masks" / f"f{t + 1}.png")
    v = load_videos(DatasetSpec(kind="frames", path=str(folder)), image_size=64)
    assert len(v) == 1 and v[0].num_frames == 3 and v[0].obj_ids == (255,)
    imgs = load_videos(DatasetSpec(kind="images", path=str(folder)), image_size=64)
    assert [x.num_frames for x in imgs] == [1, 1, 1]

    image, label = ellipsoid_phantom(shape=(10, 40, 32), rng=0)
    save_volume(image, tmp_path / "img.nii.gz")
    save_volume(Volume(label.array.astype(np.uint8), label.affine), tmp_path / "lab.nii.gz")
    vol = load_videos(DatasetSpec(kind="volume", path=str(tmp_path / "img.nii.gz"),
                                  mask_path=str(tmp_path / "lab.nii.gz"), labels=(1, 2)), image_size=64)
    assert len(vol) == 1 and vol[0].obj_ids == (1, 2) and vol[0].masks.shape[1:] == (2, 64, 64)


def test_sampler_is_stateless_splits_ranks_and_mixes() -> None:
    a = synthetic_videos(3, frames=5, image_size=64, seed=0)
    b = synthetic_videos(2, frames=10, image_size=64, seed=1)
    assert [v.num_frames for v in filter_duration(a + b, "short")] == [5, 5, 5]
    assert [v.num_frames for v in filter_duration(a + b, "long")] == [10, 10]
    assert len(take_fraction(a + b, 0.4, seed=0)) == 2
    s = ClipSampler([a, b], weights=[1.0, 3.0], clip_length=4, stride=2, seed=5)
    whole = s.batch(step=3, micro=0, batch_size=4)
    halves = s.batch(step=3, micro=0, batch_size=2, rank=0) + s.batch(step=3, micro=0, batch_size=2, rank=1)
    assert [c.source for c in whole] == [c.source for c in halves]
    assert all(torch.equal(x.frames, y.frames) and torch.equal(x.masks, y.masks) for x, y in zip(whole, halves))
    assert all(bool(c.masks[0].flatten(1).any(1).all()) for c in whole)  # objects present on the prompt frame
    sources = [s.clip(step=i, micro=0, item=0).source for i in range(40)]
    assert sum(x.startswith("synthetic[1") for x in sources) > 20  # weight 3:1
    batch = collate(whole)
    assert batch.images.shape[1] == 4 and batch.masks.shape[1] == batch.obj_to_clip.numel()


def test_augmented_clips_keep_layout() -> None:
    from medsam2kit.train.data import make_augmenter

    s = ClipSampler([synthetic_videos(1, frames=6, image_size=64)], clip_length=4,
                    augment=make_augmenter("combined", p=1.0))
    c1, c2 = s.clip(step=0, micro=0, item=0), s.clip(step=0, micro=0, item=0)
    assert c1.frames.dtype == torch.uint8 and c1.masks.dtype == torch.bool
    assert torch.equal(c1.frames, c2.frames)  # reproducible


# ------------------------------------------------------------------------------------ prompts, loss


def test_prompts_follow_sam2() -> None:
    gt = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt[:, 8:20, 8:20] = True
    pred = torch.zeros_like(gt)
    pred[0, 8:20, 8:26] = True  # object 0: false positives only -> negative click
    pred[1] = gt[1]  # exact -> negative click in the background
    pts, lab = click_prompt(gt, pred, seeds=[1, 2], salt=(0,))
    x, y = pts[0, 0].long().tolist()
    assert lab[0, 0] == 0 and pred[0, y, x] and not gt[0, y, x]
    x, y = pts[1, 0].long().tolist()
    assert lab[1, 0] == 0 and not gt[1, y, x]
    pts2, _ = click_prompt(gt, None, seeds=[1, 2], salt=(0,))
    assert all(gt[i, int(pts2[i, 0, 1]), int(pts2[i, 0, 0])] for i in range(2))
    plan = draw_plan(PromptConfig(mode="mixed", prob_point=0.0), 8, np.random.default_rng(0))
    assert plan.kind == "mask" and plan.frames_to_correct == () and plan.init_cond_frames[0] == 0
    every = draw_plan(PromptConfig(mode="box", init_cond_frames=-1, frames_to_correct=-1), 5, rng=0)
    assert every.init_cond_frames == (0, 1, 2, 3, 4) and every.kind == "box"


def test_loss_equals_upstream_training_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    # training.loss_fns imports training.trainer (needs tensorboard); stub just its constant.
    fake = types.ModuleType("training.trainer")
    fake.CORE_LOSS_KEY = "core_loss"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.trainer", fake)
    try:
        from training.loss_fns import MultiStepMultiMasksAndIous
    except ImportError as err:  # pragma: no cover
        pytest.skip(f"sam2's training package cannot be imported: {err}")
    g = torch.Generator().manual_seed(0)
    t, n = 3, 2
    targets = torch.rand(t, n, 16, 16, generator=g) > 0.6
    targets[1, 1] = False  # an absent object
    outs = []
    for _ in range(t):
        steps = [1, 2][len(outs) % 2]
        outs.append({
            "multistep_pred_multimasks_high_res": [torch.randn(n, 3, 16, 16, generator=g) * 3 for _ in range(steps)],
            "multistep_pred_ious": [torch.rand(n, 3, generator=g) for _ in range(steps)],
            "multistep_object_score_logits": [torch.randn(n, 1, generator=g) for _ in range(steps)],
        })
    up = MultiStepMultiMasksAndIous(
        {"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}, supervise_all_iou=True,
        iou_use_l1_loss=True, pred_obj_scores=True, focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1,
    )(outs, targets)
    ours = MultiStepLoss()(
        [{"multimasks": o["multistep_pred_multimasks_high_res"], "ious": o["multistep_pred_ious"],
          "object_scores": o["multistep_object_score_logits"]} for o in outs], targets)
    for k in ("loss_mask", "loss_dice", "loss_iou", "loss_class"):
        torch.testing.assert_close(ours[k], torch.as_tensor(up[k]).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss"], up["core_loss"].float(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ training


def test_overfits_one_batch_with_every_prompt_kind() -> None:
    torch.manual_seed(0)
    model = prepare_model(build_model("sam2.1_hiera_micro", device="cpu"))
    batch = collate(ClipSampler([synthetic_videos(1, frames=6)], clip_length=3, max_objects=1).batch(
        step=0, micro=0, batch_size=1))
    module = ClipForward(model)
    opt = build_optimizer(model, OptimConfig(lr=2e-3, encoder_lr=2e-3, weight_decay=0.0))
    plan = PromptPlan("mask", (0,))
    losses = []
    for _ in range(16):
        parts = module(batch, plan)
        opt.zero_grad()
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(parts["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    print(f"overfit one batch: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")
    for plan in (PromptPlan("box", (0,), (0, 2), 1, True), PromptPlan("point", (0, 1), (0, 1), 1, False)):
        parts = module(batch, plan)
        parts["loss"].backward()
        assert all(torch.isfinite(v) for v in parts.values())


def test_checkpoint_round_trip_and_upstream_load(tmp_path: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sam2.build_sam import _load_checkpoint

    result = fit(_cfg(tmp_path, **{"log.plot": True}))
    assert result.checkpoint.is_file() and result.final_model.is_file() and (tmp_path / "curves.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["step", "step", "epoch"]
    assert result.steps == 2 and result.losses == tuple(r["loss"] for r in records[:2])  # as coarse.FitResult
    saved = torch.load(result.checkpoint, weights_only=True)
    ours = build_model("sam2.1_hiera_micro", result.checkpoint, device="cpu")
    for k, v in ours.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    upstream = instantiate(OmegaConf.load(resolve_config("sam2.1_hiera_micro")).model, _recursive_=True)
    _load_checkpoint(upstream, str(result.final_model))  # sam2's own loader: strict, Meta's keys
    for k, v in upstream.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k


def test_resume_is_exact(tmp_path: Path) -> None:
    over = {"schedule.steps": 4, "schedule.steps_per_epoch": 2, "prompts.mode": "mixed", "prompts.prob_point": 0.5,
            "prompts.correction_clicks": 1, "prompts.frames_to_correct": 1, "data.clip_length": 2}
    straight = fit(_cfg(tmp_path / "a", **over))
    ck2 = _checkpoint_at(_cfg(tmp_path / "b", **over), 2, tmp_path / "b")
    assert torch.load(ck2, weights_only=True)["step"] == 2
    resumed = fit(_cfg(tmp_path / "c", **{**over, "resume": str(ck2)}))
    a_state = torch.load(straight.checkpoint, weights_only=True)
    b_state = torch.load(resumed.checkpoint, weights_only=True)
    assert b_state["step"] == 4
    for k, v in a_state["model"].items():
        assert torch.equal(v, b_state["model"][k]), k
    assert a_state["optimizer"]["state"][0]["step"] == b_state["optimizer"]["state"][0]["step"]


def _checkpoint_at(cfg: Any, step: int, folder: Path) -> Path:
    """Run ``cfg`` but stop after ``step`` optimiser steps (the schedule keeps its full length)."""
    import medsam2kit.train.loop as loop

    real = loop._Progress.update
    class Stop(Exception):
        pass

    count = {"n": 0}

    def update(self: Any, info: str) -> None:
        real(self, info)
        count["n"] += 1
        if count["n"] == step + 1:  # after step `step` was saved
            raise Stop

    loop._Progress.update = update  # type: ignore[method-assign]
    try:
        with pytest.raises(Stop):
            fit(cfg.replace(output_dir=str(folder), **{"schedule.steps_per_epoch": step}))
    finally:
        loop._Progress.update = real  # type: ignore[method-assign]
    return folder / "checkpoint_last.pt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict[str, Any]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    fit(config_from_dict(cfg_dict))


def test_two_process_ddp_equals_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    over = {"data.batch_size": 2, "model.disable_dropout": True, "schedule.steps": 1, "schedule.steps_per_epoch": 1,
            "optim.grad_clip": 0.0, "data.clip_length": 3, "data.max_objects": 2}
    ddp_cfg = _cfg(tmp_path / "ddp", **over)
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp_cfg.to_dict()), nprocs=2, join=True)
    one = fit(_cfg(tmp_path / "one", **{**over, "data.batch_size": 4}))
    a = torch.load(tmp_path / "ddp" / "model_final.pt", weights_only=True)["model"]
    b = torch.load(one.final_model, weights_only=True)["model"]
    init = torch.load(tmp_path / "init.pt", weights_only=True)["model"] if (tmp_path / "init.pt").exists() else None
    del init
    # Adam's first step moves each element by ~lr * g / |g|: elements whose true gradient is ~0 (e.g.
    # attention key biases: softmax is shift-invariant) turn float summation-order noise into +-lr.
    # So: all elements within lr, and 99.9 % within 1e-6.
    d = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    close = float((d <= 1e-6).float().mean())
    print(f"DDP vs one process after one step (lr 1e-3): max param diff {float(d.max()):.3g}, "
          f"{100 * close:.3f} % of {d.numel()} elements within 1e-6")
    assert float(d.max()) <= 1.01e-3 and close > 0.999
    stepped = torch.load(one.checkpoint, weights_only=True)["optimizer"]["state"]
    assert all(float(st["step"]) == 1 for st in stepped.values())


def test_cli_finetune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "data:\n  train: [{kind: synthetic, count: 1, frames: 4}]\n  val: [{kind: synthetic, count: 1, frames: 4, seed: 9}]\n"
        "  clip_length: 2\n  max_objects: 1\n  val_max_frames: 3\nschedule: {steps: 1}\nprompts: {mode: mask}\n"
        "device: cpu\nlog: {plot: false}\n"
    )
    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers(dest="command"))
    code = run_finetune(parser.parse_args(["finetune", str(cfg), "--out", str(tmp_path / "out"), "-q",
                                           "--set", "log.format=csv"]))
    assert code == 0 and (tmp_path / "out" / "metrics_epoch.csv").is_file()
    assert "val_jf" in (tmp_path / "out" / "metrics_epoch.csv").read_text()
    cfg.write_text("schedule: {stepz: 1}\n")
    assert run_finetune(parser.parse_args(["finetune", str(cfg)])) == 1
    assert "unknown key schedule.stepz" in capsys.readouterr().err


def test_cli_finetune_weights_are_never_random_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medsam2kit.reference import reference_checkpoint
    from medsam2kit.train.cli import _default_weights

    micro = TrainConfig()
    assert micro.model.checkpoint == ""
    chosen = _default_weights(micro, random_init=False)
    assert chosen.model.checkpoint == str(reference_checkpoint())
    assert "bundled model reference" in capsys.readouterr().err
    assert _default_weights(micro, random_init=True) == micro
    assert "random weights" in capsys.readouterr().err
    tiny = micro.replace(**{"model.config": "sam2.1_hiera_t"})
    with pytest.raises(ConfigError, match="--random-init"):
        _default_weights(tiny, random_init=False)
    given = tiny.replace(**{"model.checkpoint": "w.pt"})
    assert _default_weights(given, random_init=False) == given


def test_empty_data_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, **{"data.duration": "long"})  # 4-frame synthetic videos are all short
    with pytest.raises(InvalidInputError, match="no labelled training video"):
        fit(cfg)


@pytest.mark.shared_data
def test_short_run_on_carotid(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "carotid_us" / "carotid_202201121748100022.npz"
    if not path.is_file():
        pytest.skip(f"carotid recording not found: {path}")
    cfg = config_from_dict({
        "data": {"train": [{"kind": "cine", "path": str(path), "frame_range": [0, 60]}],
                 "val": [{"kind": "cine", "path": str(path), "frame_range": [60, 90]}],
                 "clip_length": 2, "augment": "ultrasound", "val_max_frames": 4},
        "schedule": {"steps": 2, "steps_per_epoch": 2},
        "optim": {"lr": 1e-4, "encoder_lr": 5e-5},
        "device": "cpu", "log": {"progress": False}, "output_dir": str(tmp_path),
    })
    result = fit(cfg)
    assert result.val is not None and 0.0 <= result.val["val_dice"] <= 1.0 and result.val["val_objects"] == 1
    assert (tmp_path / "curves.png").is_file() and result.final_model.is_file()


def test_finetune_defaults_follow_the_model_and_never_override_what_is_set() -> None:
    from medsam2kit.models import MICRO_FINETUNE, SAM2_FINETUNE, get_entry, list_models

    for entry in list_models():  # every SAM2-sized zoo model keeps sam2's recipe; the micro ones theirs
        assert entry.finetune == (MICRO_FINETUNE if entry.config == "sam2.1_hiera_micro" else SAM2_FINETUNE), entry.name
    assert get_entry("medsam2_latest").finetune.lr == 5e-6
    micro = resolve_optim(config_from_dict({"model": {"config": "sam2.1_hiera_micro"}, "schedule": {"steps": 200}})).optim
    assert (micro.lr, micro.encoder_lr, micro.weight_decay, micro.grad_clip, micro.warmup_steps) == (
        MICRO_FINETUNE.lr, MICRO_FINETUNE.encoder_lr, MICRO_FINETUNE.weight_decay, MICRO_FINETUNE.grad_clip,
        round(MICRO_FINETUNE.warmup_fraction * 200))
    assert resolve_optim(config_from_dict({"model": {"config": "sam2.1_hiera_s"}})).optim.warmup_steps == 0
    mixed = resolve_optim(config_from_dict({"model": {"config": "configs/x/sam2.1_hiera_micro.yaml"},
                                            "optim": {"lr": 1e-3, "grad_clip": 0.0}})).optim
    assert (mixed.lr, mixed.grad_clip, mixed.encoder_lr) == (1e-3, 0.0, MICRO_FINETUNE.encoder_lr)
    with pytest.raises(ConfigError, match="resolve_optim"):
        build_optimizer(torch.nn.Linear(2, 2), OptimConfig())
    with pytest.raises(ConfigError, match="optim.lr"):
        config_from_dict({"optim": {"lr": 0.0}})


def test_exponent_without_a_dot_is_a_float() -> None:
    """PyYAML reads ``1e-4`` as a string; a float field takes it (``--set optim.lr=1e-4`` as documented)."""
    from medsam2kit.train.config import load_config

    assert config_from_dict({"optim": {"lr": "1e-4", "grad_clip": "2", "min_lr_ratio": " .5 "}}).optim.lr == 1e-4
    assert TrainConfig().replace(**{"optim.lr": "3E-5"}).optim.lr == 3e-5
    with pytest.raises(ConfigError, match=r"optim\.lr: expected float, got '1e-4x'"):
        config_from_dict({"optim": {"lr": "1e-4x"}})
    with pytest.raises(ConfigError, match=r"schedule\.steps: expected int"):
        config_from_dict({"schedule": {"steps": "10"}})  # only floats read numbers from text
    import tempfile

    path = Path(tempfile.mkdtemp()) / "run.yaml"
    path.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(path).optim.lr == 1e-4


@pytest.mark.parametrize("drawer", ["matplotlib", "pil"])
def test_curves_of_a_run_without_validation_say_so(tmp_path: Path, drawer: str) -> None:
    from PIL import Image

    from medsam2kit.train.loop import _plot_pil, plot_curves

    history = [{"kind": "step", "step": i, "loss": 1.0 / i} for i in range(1, 30)]
    pictures = {}
    for name, hist in (("without", history), ("with", [*history, {"kind": "epoch", "step": 29, "val_dice": 0.5,
                                                                   "val_jf": 0.4}])):
        path = tmp_path / f"{name}.png"
        if drawer == "pil":
            _plot_pil([(r["step"], r["loss"]) for r in history], [] if name == "without" else [(29, 0.5, 0.4)], path)
        else:
            plot_curves(hist, path)
        gray = np.asarray(Image.open(path).convert("L"))
        h, w = gray.shape
        # the middle of the validation panel: text without validation, empty with one point at its right edge
        pictures[name] = int((gray[int(0.4 * h):int(0.6 * h), int(0.55 * w):int(0.85 * w)] < 128).sum())
    assert pictures["without"] > 50 and pictures["with"] < pictures["without"], pictures
