"""Many objects: batched multi-object tracking vs per-object tracking vs sam2's own loop.

A many-label phantom video (N discs drifting over ``--frames`` frames) with every object
prompted by its mask on the middle frame, propagated both ways. Three ways, in one run on the
same frames and prompts:

* ``batched``: medsam2kit's session (objects of equal memory layout tracked as one batch,
  ``max_objects_per_batch=64``);
* ``per-object``: the same session with ``max_objects_per_batch=1`` (sam2's batch size 1);
* ``upstream``: sam2's ``SAM2VideoPredictor.propagate_in_video`` on the frames written as a JPEG
  folder, forward then reverse.

The encoder is taken out: our sessions encode every frame first (``encode_all``), and upstream's
encoder time (one pass per visited frame, measured) is subtracted, so the table compares the
tracking step itself (memory attention, mask decoder, memory encoder) per object and frame.
Models: hiera-t random init at 256 px and the bundled reference model (128 px).

A second table asks how low the ratio can go on this machine: sam2's memory attention (most of
the tracking step) with a full memory (``num_maskmem`` frames and the object pointers), one object
and a batch of 16, its floating-point operations counted by ``torch.utils.flop_counter``, against
the best rate of a dense matrix product of its own feed-forward layers on the same cores. If one
object's memory attention already runs near that rate, batching has little left to save on
these cores: ``floor`` = (operations / best rate) / one object's time is the lowest ratio
batching reaches for memory attention with results unchanged (the same operations).

Run: ``python benchmarks/bench_multiobject.py [--objects 1 4 16 41] [--frames 12]``. Prints two
tables and writes ``benchmarks/results/multiobject.json`` and a plot
``benchmarks/results/multiobject.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit.predictor import SAM2Predictor, build_model, resolve_device  # noqa: E402
from medsam2kit.reference import reference_checkpoint  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406])[:, None, None]
STD = np.array([0.229, 0.224, 0.225])[:, None, None]


def phantom(num_objects: int, frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(T, S, S)`` uint8 frames with ``num_objects`` bright discs on a grid, drifting, and
    ``(N, S, S)`` bool masks of the discs on the middle frame."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(num_objects)))
    r = max(2.0, 0.32 * size / side)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = [((i // side + 0.5) * size / side, (i % side + 0.5) * size / side) for i in range(num_objects)]
    video = np.empty((frames, size, size), np.uint8)
    masks = np.zeros((num_objects, size, size), bool)
    for t in range(frames):
        img = 40 + 25 * rng.random((size, size))
        shift = 0.6 * r * np.sin(2 * np.pi * t / frames)
        for k, (cy, cx) in enumerate(centres):
            disc = (yy - cy - shift) ** 2 + (xx - cx) ** 2 < r**2
            img[disc] += 90 + 60 * (k % 3)
            if t == frames // 2:
                masks[k] = disc
        video[t] = np.clip(img, 0, 255)
    return video, masks


def normalised(video: np.ndarray) -> torch.Tensor:
    rgb = np.repeat(video[:, None].astype(np.float64) / 255.0, 3, axis=1)
    return torch.from_numpy((rgb - MEAN) / STD).float()


def ours(model: Any, video: np.ndarray, masks: np.ndarray, max_batch: int) -> dict[str, float]:
    pred = SAM2Predictor(model, max_objects_per_batch=max_batch)
    session = pred.start(normalised(video))
    session.encode_all()
    for k, m in enumerate(masks):
        session.add_mask(len(video) // 2, torch.from_numpy(m), obj_id=k + 1)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    seconds, result = timed(lambda: session.propagate("both"))
    visited = int(result.visited.sum()) - 1  # the prompted frame is not tracked
    n = len(masks)
    state_bytes = sum(v.numel() * v.element_size() for outs in session.state["output_dict_per_obj"].values()
                      for kind in outs.values() for out in kind.values() for v in out.values()
                      if isinstance(v, torch.Tensor))
    record = {"seconds": seconds, "tracked_frames": visited, "state_mb_per_object": state_bytes / n / 2**20}
    if torch.cuda.is_available():
        record["cuda_peak_mb_per_object"] = (torch.cuda.max_memory_allocated() - before) / n / 2**20
    return record


def upstream(model: Any, video: np.ndarray, masks: np.ndarray, config: str, size: int) -> dict[str, float]:
    from hydra.utils import instantiate

    from medsam2kit.predictor.checkpoints import VIDEO_POSTPROCESSING, compose_config, image_size_overrides

    cfg = compose_config(config, {**VIDEO_POSTPROCESSING, **image_size_overrides(size),
                                  "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor"})
    up = instantiate(cfg.model, _recursive_=True)
    up.load_state_dict(model.state_dict())
    up.to(model.device).eval()
    from medsam2kit.backend.model import _cast_memory_to_query_dtype

    # upstream's fp32 run needs the same dtype fix our model has (memory stored in bf16)
    up.memory_attention.register_forward_pre_hook(_cast_memory_to_query_dtype, with_kwargs=True)
    with tempfile.TemporaryDirectory() as folder:
        for t, frame in enumerate(video):
            Image.fromarray(np.repeat(frame[..., None], 3, axis=2)).save(Path(folder) / f"{t:05d}.jpg", quality=95)
        with torch.inference_mode():
            state = up.init_state(folder)
            for k, m in enumerate(masks):
                up.add_new_mask(state, len(video) // 2, k + 1, torch.from_numpy(m))
            images = state["images"]
            enc, _ = timed(lambda: [up.forward_image(images[t][None].float()) for t in range(len(video))])

            def run() -> None:
                for reverse in (False, True):
                    for _ in up.propagate_in_video(state, reverse=reverse):
                        pass

            seconds, _ = timed(run)
    # upstream encodes each visited frame once (its one-frame cache), the middle frame twice
    frames_visited = len(video) + 1
    return {"seconds": seconds - enc / len(video) * frames_visited, "tracked_frames": len(video) - 1}


def best_of(fn: Any, reps: int = 5) -> float:
    """The fastest of ``reps`` calls (after one warm-up), seconds."""
    fn()
    return min(timed(fn)[0] for _ in range(reps))


def attention_floor(model: Any, size: int, batch: int = 16) -> dict[str, float]:
    """sam2's memory attention with a full memory: seconds per object alone and in a batch of
    ``batch``, its operations per object, and the best dense-product rate of its own feed-forward
    layers on these cores (see the module docstring)."""
    tokens = (size // model.backbone_stride) ** 2
    ptr_tokens = model.max_obj_ptrs_in_encoder * (model.hidden_dim // model.mem_dim)
    memory = model.num_maskmem * tokens + ptr_tokens
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(model.device)

    def call(n: int) -> Any:
        curr = randn(tokens, n, model.hidden_dim)
        mem = randn(memory, n, model.mem_dim)
        return lambda: model.memory_attention(curr=[curr], curr_pos=[torch.zeros_like(curr)], memory=mem,
                                              memory_pos=torch.zeros_like(mem), num_obj_ptr_tokens=ptr_tokens)

    layer = model.memory_attention.layers[0]
    x = randn(tokens, layer.linear1.in_features)
    h = randn(tokens, layer.linear2.in_features)
    with torch.inference_mode():
        # torch counts the CUDA attention kernels only; the CPU one does the same products
        cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                    lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)}
        with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
            call(1)()
        flops = counter.get_total_flops()
        alone = best_of(call(1))
        batched = best_of(call(batch)) / batch
        rates = [2 * lin.in_features * lin.out_features * tokens / best_of(lambda: F.linear(a, lin.weight, lin.bias))
                 for lin, a in ((layer.linear1, x), (layer.linear2, h))]
    best = max(rates)
    return {"memory_tokens": memory, "gflop_per_object": flops / 1e9, "ms_alone": alone * 1e3,
            f"ms_per_object_batch{batch}": batched * 1e3, "gflops_alone": flops / alone / 1e9,
            "best_gemm_gflops": best / 1e9, "ratio_measured": batched / alone, "floor": flops / best / alone}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16, 41])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--no-upstream", action="store_true", help="skip sam2's own loop (slow at many objects)")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default: the GPU when there is one)")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = str(resolve_device(args.device))
    models = [
        ("hiera-t random init", "sam2.1_hiera_t", 256,
         build_model("sam2.1_hiera_t", device=device, image_size=256)),
        ("reference (micro)", "sam2.1_hiera_micro", 128,
         build_model("sam2.1_hiera_micro", reference_checkpoint(), device=device)),
    ]
    rows, records, floors = [], [], []
    for name, config, size, model in models:
        floors.append({"model": name, "image_size": size, **attention_floor(model, size)})
        print(floors[-1], flush=True)
        if "random" in name:
            with torch.no_grad():  # random weights often say "no object": keep every object present
                model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
        for n in args.objects:
            video, masks = phantom(n, args.frames, size)
            batched = ours(model, video, masks, 64)
            alone = ours(model, video, masks, 1)
            up = None if args.no_upstream else upstream(model, video, masks, config, size)
            per = {k: v["seconds"] / (v["tracked_frames"] * n) * 1000 for k, v in
                   (("batched", batched), ("per_object", alone), ("upstream", up)) if v is not None}
            rec = {"model": name, "image_size": size, "objects": n, "frames": args.frames,
                   "ms_per_object_frame": per, "ratio_batched_per_object": per["batched"] / per["per_object"],
                   "state_mb_per_object": batched["state_mb_per_object"],
                   "cuda_peak_mb_per_object": batched.get("cuda_peak_mb_per_object"),
                   "ratio_batched_upstream": per["batched"] / per["upstream"] if "upstream" in per else None}
            records.append(rec)
            rows.append([name, size, n, per["batched"], per["per_object"], per.get("upstream", float("nan")),
                         rec["ratio_batched_per_object"], rec["ratio_batched_upstream"] or float("nan"),
                         rec["state_mb_per_object"]])
            print(rec, flush=True)
    print_table(
        f"tracking per object and frame (ms), {args.frames} frames, all objects prompted on the middle frame, "
        f"both directions, encoder excluded (targets at 16 objects, 2 CPU cores: batched/per-object <= 0.5)",
        ["model", "px", "objects", "batched", "per-object", "upstream", "batched/per-object", "batched/upstream",
         "state MB/object"],
        rows,
    )
    print_table(
        "memory attention alone, full memory: one object vs a batch of 16, and the floor batching can reach "
        "(its operations at the best dense-product rate of its own feed-forward layers on these cores)",
        ["model", "px", "memory tokens", "GFLOP/object", "ms alone", "ms/object in 16", "GFLOP/s alone",
         "best GEMM GFLOP/s", "16 / alone", "floor"],
        [[f["model"], f["image_size"], f["memory_tokens"], f["gflop_per_object"], f["ms_alone"],
          f["ms_per_object_batch16"], f["gflops_alone"], f["best_gemm_gflops"], f["ratio_measured"], f["floor"]]
         for f in floors],
    )
    write_json("multiobject", {"what": "tracking time per object and frame, encoder excluded", "results": records,
                               "memory_attention_floor": floors})
    plot(records)


def plot(records: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, dict.fromkeys(r["model"] for r in records)):
        rs = [r for r in records if r["model"] == name]
        n = [r["objects"] for r in rs]
        for key, style in (("batched", "o-"), ("per_object", "s--"), ("upstream", "^:")):
            ys = [r["ms_per_object_frame"].get(key) for r in rs]
            if all(y is not None for y in ys):
                ax.plot(n, [y * k for y, k in zip(ys, n)], style, label=key.replace("_", "-"))
        ax.set_xlabel("objects")
        ax.set_ylabel("tracking ms per frame (all objects)")
        ax.set_title(f"{name}, {rs[0]['image_size']} px")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(__file__).resolve().parent / "results" / "multiobject.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
