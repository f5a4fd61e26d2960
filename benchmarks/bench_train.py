"""Training-step throughput and peak memory of medsam2kit.train, against sam2's own ``training`` step.

One optimiser step = forward over clips of 8 frames (SAM2's recipe), SAM2's loss, backward, AdamW.
Two prompt plans: mask on frame 0 (no clicks), and a point on frame 0 with 7 correction clicks on
2 frames (SAM2's interactive branch). Set-ups (:data:`SETUPS`): ``sam2.1_hiera_t`` at 256 px with
1 clip x 1 object, and the bundled micro model at 128 px with 4 clips x up to 3 objects (what the
ultrasound study and ``finetune`` on the bundled model train); random init (no weights can be
downloaded here), fp32 on CPU; on CUDA also hiera-t with bf16 autocast at 256 and 1024 px. The
two implementations' steps are interleaved, so a slow spell of the machine hits both alike.

Upstream: ``training.model.sam2.SAM2Train`` (same config, same prompts, its own forward) with
``training.loss_fns.MultiStepMultiMasksAndIous``. ``training.loss_fns`` imports
``training.trainer``, which needs tensorboard; when it is missing, the benchmark stubs that module's
single constant (``CORE_LOSS_KEY``) and says so in the JSON.

Run: ``python benchmarks/bench_train.py [--steps 5] [--frames 8]``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import types
from pathlib import Path
from collections.abc import Callable
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


def ours(batch: Any, plan: PromptPlan, *, device: torch.device, config: str, size: int, amp: bool) -> Callable[[], float]:
    """One optimiser step of medsam2kit.train (as :func:`medsam2kit.train.fit` runs it)."""
    torch.manual_seed(0)
    model = prepare_model(build_model(config, device=device, image_size=size))
    module = ClipForward(model)
    opt = build_optimizer(model, OptimConfig(lr=1e-5, encoder_lr=1e-5, weight_decay=0.1))
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

    return step


def upstream(batch: Any, plan: PromptPlan, *, device: torch.device, config: str, size: int, amp: bool,
             notes: list[str]) -> Callable[[], float] | str:
    """One optimiser step of sam2's ``training`` package on the same batch, or why it cannot run."""
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
        return f"cannot import sam2's training package: {err}"
    cfg = OmegaConf.load(resolve_config(config))
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
    return step


#: The measured set-ups: (config, px, clips per step, objects per clip at most). sam2.1_hiera_t at
#: 256 px is SAM2's architecture; the micro model at 128 px is what the bundled model, the
#: ultrasound study and a newcomer's ``finetune`` train (4 clips of up to 3 objects per step).
SETUPS: tuple[tuple[str, int, int, int], ...] = (("sam2.1_hiera_t", 256, 1, 1), ("sam2.1_hiera_micro", 128, 4, 3))


def _measure(steppers: dict[str, Callable[[], float]], device: torch.device, steps: int) -> dict[str, dict[str, float]]:
    """Median step time of each stepper, their steps interleaved (ours, sam2's, ours, ...) so that a
    slow spell of the machine hits both alike; peak memory of each measured in a run of its own."""
    times: dict[str, list[float]] = {k: [] for k in steppers}
    peaks: dict[str, float] = {}
    for name, step in steppers.items():  # warm-up and peak memory, one at a time
        _reset_peak(device)
        step()
        peaks[name] = _peak(device)
    for _ in range(steps):
        for name, step in steppers.items():
            times[name].append(timed(step)[0])
    return {k: {"s_per_step": float(np.median(v)), "steps_per_s": 1.0 / float(np.median(v)), "peak_mb": peaks[k],
                "times_s": [round(t, 4) for t in v]} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each implementation (interleaved)")
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()
    torch.set_flush_denormal(True)  # as medsam2kit.train.fit does on CPU: denormals slow backward ~40x
    runs: list[tuple[torch.device, str, int, int, int, bool]] = [
        (torch.device("cpu"), config, size, clips, objects, False) for config, size, clips, objects in SETUPS]
    if torch.cuda.is_available():
        runs += [(torch.device("cuda"), "sam2.1_hiera_t", 256, 1, 1, True), (torch.device("cuda"), "sam2.1_hiera_t", 1024, 1, 1, True)]
    rows, records, notes = [], [], []
    for device, config, size, clips, objects, amp in runs:
        vids = synthetic_videos(max(clips, 1), frames=args.frames, image_size=size, seed=0)
        batch = collate(ClipSampler([vids], clip_length=args.frames, max_objects=objects).batch(
            step=0, micro=0, batch_size=clips))
        for name, plan in PLANS.items():
            steppers: dict[str, Callable[[], float]] = {
                "medsam2kit.train": ours(batch, plan, device=device, config=config, size=size, amp=amp)}
            theirs = upstream(batch, plan, device=device, config=config, size=size, amp=amp, notes=notes)
            if isinstance(theirs, str):
                print(theirs, file=sys.stderr)
            else:
                steppers["sam2 training (SAM2Train)"] = theirs
            res = _measure(steppers, device, args.steps)
            ratio = (res["medsam2kit.train"]["steps_per_s"] / res["sam2 training (SAM2Train)"]["steps_per_s"]
                     if len(res) == 2 else float("nan"))
            precision = "bf16 autocast" if amp else "fp32"
            for impl, r in res.items():
                records.append({"impl": impl, "device": str(device), "config": config, "size": size, "clips": clips,
                                "objects": int(batch.masks.shape[1]), "frames": args.frames, "precision": precision,
                                "prompts": name, "speed_vs_sam2": ratio, **r})
                rows.append([impl, str(device), config, size, f"{clips}x{int(batch.masks.shape[1])}", precision, name,
                             r["steps_per_s"], r["s_per_step"], r["peak_mb"],
                             ratio if impl == "medsam2kit.train" else ""])
                print({k: v for k, v in records[-1].items() if k != "times_s"}, flush=True)
    print_table(
        f"training step, random init, {args.frames} frames per clip (median of {args.steps} interleaved steps "
        "after 1 warm-up each)",
        ["impl", "device", "config", "px", "clips x objects", "precision", "prompts", "steps/s", "s/step", "peak MB",
         "speed vs sam2"],
        rows,
    )
    write_json("train", {
        "what": "one optimiser step (forward, SAM2 loss, backward, clip 0.1, AdamW); speed_vs_sam2 = our steps/s "
                "over sam2's, measured with the steps of the two interleaved",
        "flush_denormal": True,
        "peak_memory": "CUDA: torch.cuda.max_memory_allocated; CPU: process max RSS (ru_maxrss, whole process, so "
                       "the later of two runs reads at least the earlier's)",
        "notes": sorted(set(notes)),
        "results": records,
    })


if __name__ == "__main__":
    main()
