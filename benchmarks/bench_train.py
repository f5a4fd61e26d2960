"""Training-step throughput and peak memory of medsam2kit.train, against sam2's own ``training`` step.

One optimiser step = forward over a clip (8 frames, SAM2's recipe), SAM2's loss, backward, AdamW.
Two prompt plans: mask on frame 0 (no clicks), and a point on frame 0 with 7 correction clicks on
2 frames (SAM2's interactive branch). Model: ``sam2.1_hiera_t`` at 256 px, random init (no weights
can be downloaded here), fp32 on CPU; on CUDA also bf16 autocast at 1024 px.

Upstream: ``training.model.sam2.SAM2Train`` (same config, same prompts, its own forward) with
``training.loss_fns.MultiStepMultiMasksAndIous``. ``training.loss_fns`` imports
``training.trainer``, which needs tensorboard; when it is missing, the benchmark stubs that module's
single constant (``CORE_LOSS_KEY``) and says so in the JSON.

Run: ``python benchmarks/bench_train.py [--steps 3] [--frames 8] [--size 256]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit.predictor import build_model, resolve_config  # noqa: E402
from medsam2kit.train import ClipForward, ClipSampler, PromptPlan, build_optimizer, collate, prepare_model  # noqa: E402
from medsam2kit.train.config import OptimConfig  # noqa: E402
from medsam2kit.train.data import synthetic_videos  # noqa: E402

PLANS = {
    "mask": PromptPlan("mask", (0,)),
    "point+7 clicks": PromptPlan("point", (0,), (0, 1), 7, True),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_mb()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def ours(batch: Any, plan: PromptPlan, *, device: torch.device, size: int, steps: int, amp: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = prepare_model(build_model("sam2.1_hiera_t", device=device, image_size=size))
    module = ClipForward(model)
    opt = build_optimizer(model, OptimConfig(lr=1e-5, encoder_lr=1e-5))
    b = batch.to(device)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else None

    def step() -> float:
        if ctx is not None:
            with ctx():
                parts = module(b, plan)
        else:
            parts = module(b, plan)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        return float(parts["loss"].detach())

    step()  # warm-up
    _reset_peak(device)
    times = [timed(step)[0] for _ in range(steps)]
    return {"s_per_step": float(np.median(times)), "steps_per_s": 1.0 / float(np.median(times)),
            "peak_mb": _peak(device)}


def upstream(batch: Any, plan: PromptPlan, *, device: torch.device, size: int, steps: int, amp: bool) -> dict[str, Any]:
    notes = []
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        fake = types.ModuleType("training.trainer")
        fake.CORE_LOSS_KEY = "core_loss"  # type: ignore[attr-defined]
        sys.modules.setdefault("training.trainer", fake)
        notes.append("tensorboard missing: stubbed training.trainer.CORE_LOSS_KEY (logging only) to import training.loss_fns")
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
        from training.loss_fns import MultiStepMultiMasksAndIous
        from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData
    except ImportError as err:
        return {"error": f"cannot import sam2's training package: {err}"}
    cfg = OmegaConf.load(resolve_config("sam2.1_hiera_t"))
    feat = size // 16
    over = {
        "model._target_": "training.model.sam2.SAM2Train",
        "model.image_size": size,
        "model.memory_attention.layer.self_attention.feat_sizes": [feat, feat],
        "model.memory_attention.layer.cross_attention.feat_sizes": [feat, feat],
        "model.prob_to_use_pt_input_for_train": 0.0 if plan.kind == "mask" else 1.0,
        "model.prob_to_use_box_input_for_train": 0.0,
        "model.num_frames_to_correct_for_train": max(1, len(plan.frames_to_correct)),
        "model.num_init_cond_frames_for_train": 1,
        "model.rand_init_cond_frames_for_train": False,
        "model.rand_frames_to_correct_for_train": False,
        "model.add_all_frames_to_correct_as_cond": True,
        "model.num_correction_pt_per_frame": plan.correction_clicks,
    }
    for k, v in over.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=True).to(device).train()
    loss_fn = MultiStepMultiMasksAndIous(
        {"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}, supervise_all_iou=True,
        iou_use_l1_loss=True, pred_obj_scores=True, focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1,
    )
    t, b = batch.images.shape[:2]
    n = batch.masks.shape[1]
    frame_idx = torch.arange(t)[:, None].expand(t, n)
    video_idx = batch.obj_to_clip[None].expand(t, n)
    data = BatchedVideoDatapoint(
        img_batch=batch.images.to(device),
        obj_to_frame_idx=torch.stack([frame_idx, video_idx], -1).int().to(device),
        masks=batch.masks.to(device),
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros(t, n, 3, dtype=torch.long, device=device),
            frame_orig_size=torch.full((t, n, 2), size, dtype=torch.long, device=device),
            batch_size=[t],
        ),
        dict_key="bench",
        batch_size=[t],
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)

    def step() -> float:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
        with ctx:
            outs = model(data)
            losses = loss_fn(outs, data.masks)
        opt.zero_grad(set_to_none=True)
        losses["core_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        return float(losses["core_loss"].detach())

    # SAM2Train.forward_image runs on a flat (B*T) batch in video-major order; ours in frame-major:
    # both encode each image once.
    step()
    _reset_peak(device)
    times = [timed(step)[0] for _ in range(steps)]
    return {"s_per_step": float(np.median(times)), "steps_per_s": 1.0 / float(np.median(times)),
            "peak_mb": _peak(device), "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    torch.set_flush_denormal(True)  # as medsam2kit.train.fit does on CPU: denormals slow backward ~40x
    runs: list[tuple[torch.device, int, bool]] = [(torch.device("cpu"), args.size, False)]
    if torch.cuda.is_available():
        runs += [(torch.device("cuda"), args.size, True), (torch.device("cuda"), 1024, True)]
    rows, records = [], []
    for device, size, amp in runs:
        vids = synthetic_videos(1, frames=args.frames, image_size=size, seed=0)
        batch = collate(ClipSampler([vids], clip_length=args.frames, max_objects=1).batch(step=0, micro=0, batch_size=1))
        for name, plan in PLANS.items():
            for impl, fn in (("medsam2kit.train", ours), ("sam2 training (SAM2Train)", upstream)):
                res = fn(batch, plan, device=device, size=size, steps=args.steps, amp=amp)
                rec = {"impl": impl, "device": str(device), "size": size, "frames": args.frames,
                       "precision": "bf16 autocast" if amp else "fp32", "prompts": name, **res}
                records.append(rec)
                rows.append([impl, str(device), size, rec["precision"], name,
                             res.get("steps_per_s", float("nan")), res.get("s_per_step", float("nan")),
                             res.get("peak_mb", float("nan")), res.get("error", "")])
                print(rec, flush=True)
    print_table(
        f"training step, sam2.1_hiera_t random init, 1 clip x {args.frames} frames x 1 object "
        f"(median of {args.steps} steps after 1 warm-up)",
        ["impl", "device", "px", "precision", "prompts", "steps/s", "s/step", "peak MB", "note"],
        rows,
    )
    write_json("train", {
        "what": "one optimiser step (forward, SAM2 loss, backward, clip 0.1, AdamW)",
        "flush_denormal": True,
        "peak_memory": "CUDA: torch.cuda.max_memory_allocated; CPU: process max RSS (ru_maxrss, whole process)",
        "results": records,
    })


if __name__ == "__main__":
    main()
