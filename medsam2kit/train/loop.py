"""The fine-tuning loop: optimiser, schedule, stages, validation, checkpoints, records, plot.

:func:`fit` runs a :class:`~medsam2kit.train.config.TrainConfig`: every stage of its paradigm,
on one process or under torchrun (data-parallel), and returns a :class:`FitResult`.

Files written in the output folder (one sub-folder per stage when there are two):

* ``checkpoint_last.pt``: ``{"model": state_dict, "optimizer", "scheduler", "step", "stage",
  "rng", "history", "config"}``; ``sam2.build_sam.build_sam2(config, ckpt_path)`` and
  :func:`medsam2kit.predictor.build_model` load it directly (they read ``["model"]``, Meta's keys),
  and ``resume:`` continues from it exactly.
* ``model_final.pt``: ``{"model": state_dict}`` only (what to ship).
* ``metrics.jsonl`` (or ``metrics_step.csv`` + ``metrics_epoch.csv``): a record per step (loss
  parts, learning rate, gradient norm) and per epoch (mean losses, validation Dice and J&F).
* ``curves.png``: training loss and validation curves (matplotlib when installed, else PIL).

On CPU, :func:`fit` flushes denormal floats to zero while it runs (``torch.set_flush_denormal``;
the micro model's backward is ~40x slower with denormals) and restores torch's default after.

Randomness: data, augmentation and prompts derive from ``(seed, stage, step, ...)`` (see
:mod:`medsam2kit.train.data`); dropout uses torch's global generator, reseeded from
``(seed, stage, step, rank)`` inside ``torch.random.fork_rng`` so the caller's state is untouched.

Example:
    >>> import tempfile
    >>> from medsam2kit.train import config_from_dict, fit
    >>> cfg = config_from_dict({"data": {"train": [{"kind": "synthetic", "count": 2, "frames": 4}],
    ...     "clip_length": 2, "max_objects": 1}, "schedule": {"steps": 2, "steps_per_epoch": 2},
    ...     "prompts": {"mode": "mask"}, "optim": {"lr": 1e-4}, "device": "cpu",
    ...     "log": {"progress": False, "plot": False}, "output_dir": tempfile.mkdtemp()})
    >>> result = fit(cfg)
    >>> result.steps, result.checkpoint.name
    (2, 'checkpoint_last.pt')
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam2kit._files import atomic_write, load_torch
from medsam2kit.errors import CheckpointError, ConfigError, InvalidInputError
from medsam2kit.train.config import OptimConfig, Stage, TrainConfig, plan_stages, resolve_optim
from medsam2kit.train.data import (
    Batch,
    ClipSampler,
    Video,
    collate,
    derive_seed,
    filter_duration,
    load_videos,
    make_augmenter,
    take_fraction,
)
from medsam2kit.train.distributed import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown
from medsam2kit.train.forward import ClipForward, forward_clips
from medsam2kit.train.loss import LOSS_PARTS
from medsam2kit.train.prompts import PromptPlan, draw_plan


@dataclass(frozen=True)
class FitResult:
    """What a run produced (of its last stage); the same kind of result as
    :class:`medsam2kit.coarse.FitResult` (``steps``, a ``history`` of records, ``losses``).

    Attributes:
        output_dir: the stage's folder.
        checkpoint: ``checkpoint_last.pt`` (resumable; loadable by sam2's ``build_sam2``).
        final_model: ``model_final.pt`` (``{"model": state_dict}``).
        steps: optimiser steps done in the stage.
        history: the step records (``"kind": "step"``, every ``log.every`` steps) and epoch
            records (``"kind": "epoch"``, with the validation metrics).
        val: the last validation metrics (``None`` without validation data).
    """

    output_dir: Path
    checkpoint: Path
    final_model: Path
    steps: int
    history: tuple[dict[str, Any], ...] = field(repr=False)
    val: dict[str, float] | None

    @property
    def losses(self) -> tuple[float, ...]:
        """The training loss of every recorded step, in order."""
        return tuple(float(r["loss"]) for r in self.history if r.get("kind") == "step")


# --------------------------------------------------------------------------------------------
# Model, optimiser, schedule
# --------------------------------------------------------------------------------------------


def prepare_model(model: torch.nn.Module, *, freeze_image_encoder: bool = False, freeze_prompt_encoder: bool = False,
                  disable_dropout: bool = False) -> torch.nn.Module:
    """Put a SAM2 model in training mode with the chosen parts frozen (in place; returns it).

    Example:
        >>> from medsam2kit.predictor import build_model
        >>> m = prepare_model(build_model("sam2.1_hiera_micro", device="cpu"), freeze_image_encoder=True)
        >>> any(p.requires_grad for p in m.image_encoder.parameters()), m.training
        (False, True)
    """
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze_image_encoder:
        for p in model.image_encoder.parameters():  # type: ignore[union-attr]
            p.requires_grad_(False)
    if freeze_prompt_encoder:
        for p in model.sam_prompt_encoder.parameters():  # type: ignore[union-attr]
            p.requires_grad_(False)
    if disable_dropout:
        for mod in model.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            if hasattr(mod, "dropout_p"):
                setattr(mod, "dropout_p", 0.0)
    return model


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW with four groups: image encoder / rest x decay / no decay (biases and norms).

    The image encoder uses ``encoder_lr``, the rest ``lr`` (SAM2's recipe); frozen parameters are
    left out. Each group keeps its base rate in ``"initial_lr"`` for the schedule.

    Example:
        >>> from medsam2kit.predictor import build_model
        >>> opt = build_optimizer(build_model("sam2.1_hiera_micro", device="cpu"),
        ...                       OptimConfig(lr=5e-6, encoder_lr=3e-6, weight_decay=0.1, grad_clip=0.1))
        >>> sorted({g["lr"] for g in opt.param_groups})
        [3e-06, 5e-06]

    Raises:
        ConfigError: a value is unset (``None``): resolve the run's config first
            (:func:`medsam2kit.train.config.resolve_optim`).
    """
    if config.lr is None or config.encoder_lr is None or config.weight_decay is None:
        raise ConfigError("optim: lr, encoder_lr and weight_decay must be set; resolve_optim(config) fills them "
                          "with the model's defaults")
    norm_params: set[int] = set()
    for mod in model.modules():
        if "norm" in type(mod).__name__.lower():
            norm_params.update(id(p) for p in mod.parameters(recurse=False))
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        enc = name.startswith("image_encoder.")
        decay = not (name.endswith(".bias") or id(p) in norm_params)
        groups.setdefault((enc, decay), []).append(p)
    if not groups:
        raise InvalidInputError("model: every parameter is frozen; nothing to train")
    param_groups = []
    for (enc, decay), params in sorted(groups.items()):
        lr = config.encoder_lr if enc else config.lr
        param_groups.append({"params": params, "lr": lr, "initial_lr": lr,
                             "weight_decay": config.weight_decay if decay else 0.0,
                             "name": f"{'encoder' if enc else 'rest'}_{'decay' if decay else 'no_decay'}"})
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor(step: int, total: int, *, warmup: int = 0, min_ratio: float = 0.1) -> float:
    """Linear warm-up, then cosine from 1 to ``min_ratio`` at ``total`` steps.

    Example:
        >>> [round(lr_factor(s, 10, min_ratio=0.1), 3) for s in (0, 5, 10)]
        [1.0, 0.55, 0.1]
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The cosine schedule (with warm-up) of :func:`lr_factor` as a resumable ``LambdaLR``."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup=config.warmup_steps or 0, min_ratio=config.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on CPU with Meta's key names (no ``module.``/``model.`` prefix)."""
    inner = getattr(model, "module", model)
    if isinstance(inner, ClipForward):
        inner = inner.model
    return {k: v.detach().to("cpu", copy=True) for k, v in inner.state_dict().items()}


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, step: int = 0, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"model": state_dict, ...}`` atomically (never a partial file).

    The file loads with ``torch.load(weights_only=True)``, with sam2's ``build_sam2(config, path)``
    and with :func:`medsam2kit.predictor.build_model`.

    Example:
        >>> import tempfile, pathlib
        >>> p = save_checkpoint(pathlib.Path(tempfile.mkdtemp()) / "m.pt", torch.nn.Linear(2, 2))
        >>> sorted(torch.load(p, weights_only=True))
        ['model', 'step']
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"model": model_state(model), "step": int(step)}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    payload.update(extra or {})
    return atomic_write(dest, lambda tmp: torch.save(payload, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a ``checkpoint_last.pt`` for resuming (``weights_only=True``).

    Raises:
        MissingFileError: no such file.
        CheckpointError: not a training checkpoint (no optimiser or step).
    """
    p = Path(path)
    state = load_torch(p, what="training checkpoint", name="resume")
    missing = [k for k in ("model", "optimizer", "scheduler", "step") if k not in state]
    if missing:
        raise CheckpointError(f"resume: {p} is not a training checkpoint (missing {missing}); "
                              "use model.checkpoint to start from weights only")
    return dict(state)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: Any, videos: Sequence[Video], *, device: torch.device, max_frames: int = 32,
             autocast: contextlib.AbstractContextManager[Any] | None = None, rank: int = 0,
             world_size: int = 1, encode_chunk: int | None = 16) -> dict[str, float]:
    """Dice and J&F of first-frame mask propagation on whole videos (from each video's first frame
    with foreground, at most ``max_frames`` frames; the prompt frame is left out of the scores).

    Under data parallelism each process scores ``videos[rank::world_size]`` and the sums are
    reduced, so every process returns the same numbers.

    Returns:
        ``{"val_dice", "val_j", "val_f", "val_jf", "val_objects"}`` (means over objects).
    """
    from medsam2kit.metrics import dice, j_and_f
    from medsam2kit.sequencer import normalize_frames

    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    try:
        for video in list(videos)[rank::world_size]:
            start = int(torch.nonzero(video.present.any(1)).flatten()[0])
            stop = min(video.num_frames, start + max_frames)
            objs = torch.nonzero(video.present[start]).flatten()
            masks = video.masks[start:stop][:, objs]
            images = normalize_frames(video.frames[start:stop])[:, None]
            batch = Batch(images, masks, torch.zeros(len(objs), dtype=torch.long),
                          tuple(range(len(objs))), (video.name,)).to(device)
            with autocast or contextlib.nullcontext():
                out = forward_clips(model, batch, PromptPlan.first_frame_mask(), encoder_grad=False,
                                    encode_chunk=encode_chunk)
            pred = torch.stack([o["pred"][:, 0] > 0 for o in out]).cpu().numpy()  # (T, K, S, S)
            ref = masks.numpy()
            first = 1 if pred.shape[0] > 1 else 0
            for k in range(ref.shape[1]):
                jf = j_and_f(pred[first:, k], ref[first:, k])
                sums += torch.tensor([dice(pred[first:, k], ref[first:, k]), jf.j_mean, jf.f_mean, jf.jf_mean, 1.0],
                                     dtype=torch.float64)
    finally:
        model.train(was_training)
    sums = all_reduce_sum(sums.to(device) if device.type == "cuda" else sums).cpu()
    n = max(float(sums[4]), 1.0)
    return {"val_dice": float(sums[0]) / n, "val_j": float(sums[1]) / n, "val_f": float(sums[2]) / n,
            "val_jf": float(sums[3]) / n, "val_objects": float(sums[4])}


# --------------------------------------------------------------------------------------------
# Records and plot
# --------------------------------------------------------------------------------------------


def write_records(folder: Path, history: Sequence[Mapping[str, Any]], fmt: str = "jsonl") -> list[Path]:
    """Write the step/epoch records atomically: ``metrics.jsonl`` or two CSV files."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[Path, str] = {}
    if fmt == "jsonl":
        files[folder / "metrics.jsonl"] = "".join(json.dumps(dict(r)) + "\n" for r in history)
    else:
        for kind in ("step", "epoch"):
            rows = [r for r in history if r.get("kind") == kind]
            keys: list[str] = []
            for r in rows:
                keys += [k for k in r if k not in keys]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
            files[folder / f"metrics_{kind}.csv"] = buf.getvalue()
    for path, text in files.items():
        _write_text(path, text)
    return list(files)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


#: What the validation panel of :func:`plot_curves` says when the run had no validation data.
NO_VALIDATION = "no validation data in this run"


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Training loss (per step) and validation Dice / J&F (per epoch) as a PNG.

    Uses matplotlib when installed, else draws with PIL. Returns the path, or ``None`` (with a
    message on stderr) when there is nothing to draw.
    """
    steps = [(r["step"], r["loss"]) for r in history if r.get("kind") == "step"]
    val = [(r["step"], r.get("val_dice"), r.get("val_jf")) for r in history
           if r.get("kind") == "epoch" and r.get("val_dice") is not None]
    if not steps:
        print("plot: no step records; curves not drawn", file=sys.stderr)
        return None
    dest = Path(path)
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return _plot_pil(steps, val, dest)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot([s for s, _ in steps], [v for _, v in steps], lw=1)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    if val:
        axes[1].plot([s for s, _, _ in val], [d for _, d, _ in val], "o-", label="Dice")
        axes[1].plot([s for s, _, _ in val], [j for _, _, j in val], "s-", label="J&F")
        axes[1].legend()
    else:
        axes[1].text(0.5, 0.5, NO_VALIDATION, ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set(title="validation", xlabel="step", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest


def _plot_pil(steps: list[tuple[int, float]], val: list[tuple[int, Any, Any]], dest: Path) -> Path:
    from PIL import Image, ImageDraw

    w, h, pad = 900, 360, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    panels = [(pad, w // 2 - pad // 2), (w // 2 + pad // 2, w - pad)]
    x_max = max(s for s, _ in steps) or 1

    def frame(x0: int, x1: int, title: str) -> None:
        draw.rectangle([x0, pad, x1, h - pad], outline="black")
        draw.text((x0, pad - 16), title, fill="black")
        draw.text((x0, h - pad + 4), "0", fill="black")
        draw.text((x1 - 30, h - pad + 4), f"step {x_max}", fill="black")

    (ax0, ax1), (bx0, bx1) = panels
    logs = [math.log10(max(v, 1e-8)) for _, v in steps]
    lo, hi = min(logs), max(logs)
    hi = hi if hi > lo else lo + 1
    frame(ax0, ax1, f"training loss (log10 {lo:.2f}..{hi:.2f})")
    pts = [(ax0 + (ax1 - ax0) * s / x_max, h - pad - (h - 2 * pad) * (v - lo) / (hi - lo)) for (s, _), v in zip(steps, logs)]
    if len(pts) > 1:
        draw.line(pts, fill=(31, 119, 180), width=2)
    frame(bx0, bx1, "validation Dice (blue), J&F (orange), 0..1")
    if not val:
        draw.text((bx0 + 20, h // 2), NO_VALIDATION, fill="black")
    for col, idx in (((31, 119, 180), 1), ((255, 127, 14), 2)):
        vp = [(bx0 + (bx1 - bx0) * r[0] / x_max, h - pad - (h - 2 * pad) * float(r[idx])) for r in val]
        if len(vp) > 1:
            draw.line(vp, fill=col, width=2)
        for x, y in vp:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
    img.save(dest)
    return dest


class _Progress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.total, self.n, self.desc, self.last = total, initial, desc, 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def update(self, info: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(info, refresh=False)
            self.bar.update(1)
        elif time.time() - self.last > 2 or self.n == self.total:
            self.last = time.time()
            print(f"{self.desc}: {self.n}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def fit(config: TrainConfig) -> FitResult:
    """Run every stage of ``config`` (see the module docs); under torchrun, data-parallel.

    Raises:
        InvalidInputError: a stage has no training video.
        MissingFileError / FileFormatError / CheckpointError: unreadable data or checkpoints.
    """
    config = resolve_optim(config)  # unset optimiser values: the model's defaults
    env = init_distributed(config.device)
    devices = [env.device] if env.device.type == "cuda" else []
    # Denormal floats (e.g. from SAM2's layer-scale 1e-6) make CPU steps ~40x slower: flush them
    # to zero while training (torch's default, off, is restored afterwards).
    ftz = env.device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=devices):
            stages = plan_stages(config)
            resume = load_training_state(config.resume) if config.resume else None
            start_stage = int(resume.get("stage", 0)) if resume else 0
            init_ckpt: str | None = config.model.checkpoint or None
            result: FitResult | None = None
            for i, stage in enumerate(stages):
                folder = Path(config.output_dir)
                if len(stages) > 1:
                    folder = folder / f"stage{i + 1}_{stage.name}"
                if i < start_stage:
                    init_ckpt = str(folder / "model_final.pt")
                    continue
                result = _run_stage(config, stage, i, folder, env, init_ckpt, resume if i == start_stage else None)
                init_ckpt = str(result.final_model)
            assert result is not None
            return result
    finally:
        if ftz:
            torch.set_flush_denormal(False)
        shutdown(env)


def _load_stage_data(config: TrainConfig, stage: Stage, image_size: int) -> tuple[list[list[Video]], list[float], list[Video]]:
    d = config.data
    datasets, weights = [], []
    for j, spec in enumerate(stage.datasets):
        vids = filter_duration(load_videos(spec, image_size=image_size), d.duration)
        vids = take_fraction(vids, d.fraction, seed=derive_seed(config.seed, j))
        datasets.append(vids)
        weights.append(spec.weight)
    if not any(datasets):
        names = [s.label for s in stage.datasets]
        raise InvalidInputError(
            f"data: stage {stage.name!r} has no labelled training video in {names} "
            f"(after duration={d.duration!r}, fraction={d.fraction})"
        )
    val = [v for spec in d.val for v in load_videos(spec, image_size=image_size)]
    return datasets, weights, val


def _run_stage(config: TrainConfig, stage: Stage, stage_idx: int, folder: Path, env: DistEnv,
               init_ckpt: str | None, resume: dict[str, Any] | None) -> FitResult:
    from medsam2kit.predictor import build_model, precision_policy

    mc, oc, sc = config.model, config.optim, config.schedule
    torch.manual_seed(derive_seed(config.seed, stage_idx))  # random init: the same on every process
    model = build_model(mc.config, init_ckpt, device=env.device, image_size=mc.image_size)
    prepare_model(model, freeze_image_encoder=mc.freeze_image_encoder, freeze_prompt_encoder=mc.freeze_prompt_encoder,
                  disable_dropout=mc.disable_dropout)
    datasets, weights, val_videos = _load_stage_data(config, stage, int(model.image_size))
    sampler = ClipSampler(datasets, weights=weights, clip_length=config.data.clip_length, stride=config.data.stride,
                          max_objects=config.data.max_objects, seed=config.seed, stage=stage_idx,
                          augment=make_augmenter(config.data.augment, p=config.data.augment_p))
    module: torch.nn.Module = ClipForward(model, config.loss, encoder_grad=not mc.freeze_image_encoder)
    if env.distributed:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[env.device.index] if env.device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = build_optimizer(model, oc)
    params = [p for p in model.parameters() if p.requires_grad]
    scheduler = build_scheduler(optimizer, oc, stage.steps)
    policy = precision_policy(env.device)
    use_amp = oc.amp and policy.autocast_dtype is not None
    step, history = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        step = int(resume["step"])
        history = [dict(r) for r in resume.get("history", [])]
        rng = resume.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
    progress = _Progress(stage.steps, step, f"finetune[{stage.name}]", env.is_main and config.log.progress)
    last_val: dict[str, float] | None = None
    epoch_losses: list[dict[str, float]] = []
    spe = sc.steps_per_epoch
    while step < stage.steps:
        torch.manual_seed(derive_seed(config.seed, stage_idx, step, env.rank))  # dropout stream
        t0 = time.perf_counter()
        sums = torch.zeros(len(LOSS_PARTS) + 2, dtype=torch.float64)
        for micro in range(oc.accumulate):
            batch = collate(sampler.batch(step=step, micro=micro, batch_size=config.data.batch_size, rank=env.rank))
            batch = batch.to(env.device)
            plan = draw_plan(config.prompts, batch.num_frames,
                             rng=derive_seed(config.seed, stage_idx, step, micro, 7919))
            sync = (contextlib.nullcontext() if not env.distributed or micro == oc.accumulate - 1
                    else module.no_sync())  # type: ignore[operator]
            with sync:
                with policy.autocast() if use_amp else contextlib.nullcontext():
                    parts = module(batch, plan)
                loss = parts["loss"]
                if not loss.requires_grad:  # e.g. every frame mask-prompted: nothing to learn, keep DDP in step
                    loss = loss + sum((p.sum() * 0.0 for p in params), loss.new_zeros(()))
                (loss / oc.accumulate).backward()
            sums += torch.tensor([float(parts[k].detach()) for k in (*LOSS_PARTS, "loss")] + [1.0], dtype=torch.float64)
        clip = oc.grad_clip or float("inf")  # 0 (or unset): no clipping
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        lr = optimizer.param_groups[-1]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        sums = all_reduce_sum(sums.to(env.device) if env.device.type == "cuda" else sums).cpu()
        means = {k: float(sums[i] / sums[-1]) for i, k in enumerate((*LOSS_PARTS, "loss"))}
        epoch_losses.append(means)
        record = {"kind": "step", "stage": stage.name, "step": step, "epoch": (step - 1) // spe, **means,
                  "lr": lr, "grad_norm": grad_norm, "time_s": time.perf_counter() - t0}
        if step % config.log.every == 0 or step == stage.steps:
            history.append(record)
        progress.update(f"loss {means['loss']:.4g}")
        end_epoch = step % spe == 0 or step == stage.steps
        if not end_epoch:
            continue
        epoch = (step - 1) // spe
        rec: dict[str, Any] = {"kind": "epoch", "stage": stage.name, "step": step, "epoch": epoch,
                               **{k: float(np.mean([e[k] for e in epoch_losses])) for k in (*LOSS_PARTS, "loss")}}
        epoch_losses = []
        due_val = sc.val_every_epochs > 0 and (epoch + 1) % sc.val_every_epochs == 0
        if val_videos and (due_val or step == stage.steps):
            with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
                last_val = evaluate(model, val_videos, device=env.device, max_frames=config.data.val_max_frames,
                                    autocast=policy.autocast() if use_amp else None, rank=env.rank,
                                    world_size=env.world_size)
            rec.update(last_val)
        history.append(rec)
        due_save = sc.save_every_epochs > 0 and (epoch + 1) % sc.save_every_epochs == 0
        if env.is_main and (due_save or step == stage.steps):
            _save_last(folder, model, optimizer, scheduler, step, stage_idx, history, config)
            write_records(folder, history, config.log.format)
    progress.close()
    ckpt, final = folder / "checkpoint_last.pt", folder / "model_final.pt"
    if env.is_main:
        if not ckpt.exists() or resume is not None and step == int(resume["step"]):
            _save_last(folder, model, optimizer, scheduler, step, stage_idx, history, config)
        save_checkpoint(final, model, step=step)
        write_records(folder, history, config.log.format)
        if config.log.plot:
            plot_curves(history, folder / "curves.png")
    barrier()
    return FitResult(folder, ckpt, final, step, tuple(history), last_val)


def _save_last(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
               stage_idx: int, history: list[dict[str, Any]], config: TrainConfig) -> None:
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    save_checkpoint(folder / "checkpoint_last.pt", model, optimizer=optimizer, scheduler=scheduler, step=step,
                    extra={"stage": stage_idx, "rng": rng, "history": history, "config": config.to_dict()})


__all__ = [
    "FitResult",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "load_training_state",
    "lr_factor",
    "model_state",
    "plot_curves",
    "prepare_model",
    "save_checkpoint",
    "write_records",
]
