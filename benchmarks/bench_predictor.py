"""Predictor benchmark: medsam2kit's encode-once sessions against sam2's own JPEG-folder path.

Hiera-t (random init), 256 px, a 32-slice synthetic volume, side by side in one run:

1. two prompted slices, both directions;
2. after 1, one corrective click on a propagated slice and propagation again, both directions;
3. three prompt slices, each propagated separately in both directions (as SAM2Med3D does);
4. (``--with-memory``) peak memory of a 200-slice volume at 1024 px under the default cache budget,
   in a fresh subprocess (measured on ``--memory-slices`` slices, extrapolated to 200 on a CPU).

Run: ``python benchmarks/bench_predictor.py [--slices 32] [--size 256] [--with-memory]``.
Prints a table and writes ``benchmarks/results/predictor.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import count_encoder, print_table, timed, write_json  # noqa: E402

from medsam2kit.predictor import (  # noqa: E402
    DEFAULT_CACHE_BUDGET_MB,
    MaskPrompt,
    SAM2Predictor,
    build_model,
    resolve_device,
)
from medsam2kit.sequencer import sequence_frames  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def phantom(slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 volume (slices, size, size) with a bright ellipsoid in noise, and its mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    c = np.array([slices / 2, size / 2, size / 2])
    r = np.array([slices * 0.45, size * 0.25, size * 0.2])
    mask = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    vol = 60 + 120 * mask + rng.normal(0, 12, mask.shape)
    return np.clip(vol, 0, 255).astype(np.uint8), mask


def write_jpegs(volume: np.ndarray, folder: Path) -> None:
    for t, img in enumerate(volume):
        Image.fromarray(np.stack([img] * 3, -1)).save(folder / f"{t:05d}.jpg", quality=95)


def one_encoder_pass(model: Any, size: int, repeats: int = 8) -> float:
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        model.forward_image(x)
        times = [timed(lambda: model.forward_image(x))[0] for _ in range(repeats)]
    return float(np.median(times))


def point_in(mask2d: np.ndarray) -> list[list[float]]:
    ys, xs = np.nonzero(mask2d)
    return [[float(xs.mean()), float(ys.mean())]]


def run_upstream(model: Any, volume: np.ndarray, mask: np.ndarray, prompts: list[int], correction: int,
                 separate: list[int]) -> dict[str, Any]:
    calls = count_encoder(model)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def scenario1() -> Any:
            write_jpegs(volume, folder)
            state = model.init_state(str(folder))
            for p in prompts:
                model.add_new_mask(state, p, 1, mask[p])
            for reverse in (False, True):
                for _ in model.propagate_in_video(state, reverse=reverse):
                    pass
            return state

        calls[0] = 0
        t1, state = timed(scenario1)
        out["s1"] = {"seconds": t1, "encoder_calls": calls[0]}

        def scenario2() -> None:
            model.add_new_points_or_box(state, correction, 1, points=point_in(mask[correction]), labels=[1])
            for reverse in (False, True):
                for _ in model.propagate_in_video(state, reverse=reverse):
                    pass

        calls[0] = 0
        t2, _ = timed(scenario2)
        out["s2"] = {"seconds": t2, "encoder_calls": calls[0]}

        def scenario3() -> None:
            state3 = model.init_state(str(folder))
            for p in separate:
                model.reset_state(state3)
                model.add_new_mask(state3, p, 1, mask[p])
                for reverse in (False, True):
                    for _ in model.propagate_in_video(state3, reverse=reverse):
                        pass

        calls[0] = 0
        t3, _ = timed(scenario3)
        out["s3"] = {"seconds": t3, "encoder_calls": calls[0]}
    return out


def run_ours(model: Any, volume: np.ndarray, mask: np.ndarray, prompts: list[int], correction: int,
             separate: list[int]) -> dict[str, Any]:
    pred = SAM2Predictor(model)
    out: dict[str, Any] = {}

    def scenario1() -> Any:
        frames = sequence_frames(volume, image_size=pred.image_size, window=None)
        session = pred.start(frames)
        for p in prompts:
            session.add_mask(p, mask[p])
        session.propagate("both")
        return session

    t1, session = timed(scenario1)
    out["s1"] = {"seconds": t1, "encoder_calls": session.encoder_calls}
    before = session.encoder_calls

    def scenario2() -> None:
        session.add_points(correction, point_in(mask[correction]), [1])
        session.propagate("both")

    t2, _ = timed(scenario2)
    out["s2"] = {"seconds": t2, "encoder_calls": session.encoder_calls - before}

    def scenario3() -> int:
        frames = sequence_frames(volume, image_size=pred.image_size, window=None)
        s3 = pred.start(frames)
        # each prompt its own track, all tracks advancing together as one batch per step
        s3.propagate_separately([MaskPrompt(frame=p, mask=torch.as_tensor(mask[p])) for p in separate])
        return s3.encoder_calls

    t3, calls3 = timed(scenario3)
    out["s3"] = {"seconds": t3, "encoder_calls": calls3}
    return out


def memory_scenario(slices: int, size: int, target_slices: int = 200) -> dict[str, Any]:
    """Run in a fresh process: peak RSS of a whole bidirectional propagation at ``size`` px.

    On a CPU a 200-slice propagation at 1024 px takes hours (sam2's memory attention at 4096
    tokens costs seconds per frame), so ``slices`` may be smaller: the run is measured in full,
    and the 200-slice figure is extrapolated from the measured per-frame growth of the cache and
    of the tracking state (both linear in the number of frames; the model and the rest are fixed).
    """
    torch.manual_seed(0)
    pred = SAM2Predictor(build_model(CONFIG, device="auto", image_size=size))
    volume, mask = phantom(slices, size)
    frames = sequence_frames(volume, image_size=pred.image_size, window=None)
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    session = pred.start(frames)
    mid = slices // 2
    session.add_mask(mid, mask[mid])
    seconds, result = timed(lambda: session.propagate("both"))
    stats = session.cache.stats
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    per_frame_cache_mb = stats.stored_bytes / max(stats.stored_frames, 1) / 2**20
    state = session.state["output_dict_per_obj"][0]
    outputs = [*state["cond_frame_outputs"].values(), *state["non_cond_frame_outputs"].values()]
    per_frame_state_mb = sum(
        o["maskmem_features"].numel() * o["maskmem_features"].element_size() + o["pred_masks"].numel() * 4
        for o in outputs
    ) / len(outputs) / 2**20 + result.low_res_logits[0].numel() * 4 / 2**20
    budget_frames = int(DEFAULT_CACHE_BUDGET_MB // per_frame_cache_mb)
    extra = target_slices - slices
    predicted = peak_rss_mb + extra * per_frame_state_mb + max(0, min(target_slices, budget_frames) - slices) * per_frame_cache_mb
    return {
        "slices_measured": slices,
        "image_size": pred.image_size,
        "cache_budget_mb": DEFAULT_CACHE_BUDGET_MB,
        "cache_per_frame_mb": per_frame_cache_mb,
        "cache_frames_within_budget": budget_frames,
        "state_per_frame_mb": per_frame_state_mb,
        "encoder_calls": stats.encoder_calls,
        "rss_before_session_mb": base_rss_mb,
        "peak_rss_mb": peak_rss_mb,
        "peak_cuda_mb": gpu_peak,
        "seconds": seconds,
        "target_slices": target_slices,
        "predicted_peak_rss_mb_for_target": predicted if extra > 0 else peak_rss_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--with-memory", action="store_true", help="also run scenario 4 (slow on CPU)")
    parser.add_argument("--memory-slices", type=int, default=12,
                        help="slices actually propagated in scenario 4 (extrapolated to 200)")
    parser.add_argument("--memory-size", type=int, default=1024)
    parser.add_argument("--only-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.only_memory:
        print(json.dumps(memory_scenario(args.memory_slices, args.memory_size)))
        return

    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    device = str(resolve_device("auto"))
    upstream = build_sam2_video_predictor(
        CONFIG, ckpt_path=None, device=device, hydra_overrides_extra=[f"++model.image_size={args.size}"]
    )
    ours = build_model(CONFIG, device=device, image_size=args.size)
    ours.load_state_dict(upstream.state_dict())
    volume, mask = phantom(args.slices, args.size)
    n = args.slices
    prompts = [n // 3, (2 * n) // 3]
    correction = n // 2
    separate = [n // 4, n // 2, (3 * n) // 4]

    enc = one_encoder_pass(ours, args.size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast:
        up = run_upstream(upstream, volume, mask, prompts, correction, separate)
    me = run_ours(ours, volume, mask, prompts, correction, separate)

    floor = n * enc
    rows = []
    results: dict[str, Any] = {"slices": n, "image_size": args.size, "encoder_pass_s": enc, "scenarios": {}}
    targets = {"s1": "ours: calls/slice 1.00, time/floor <= 1.10", "s2": "ratio <= 0.6", "s3": "ratio <= 0.45"}
    names = {"s1": "1 two prompts, both dirs", "s2": "2 correction + repropagate", "s3": "3 three prompts separately"}
    for key in ("s1", "s2", "s3"):
        u, m = up[key], me[key]
        ratio = m["seconds"] / u["seconds"]
        rows.append([names[key], u["seconds"], m["seconds"], ratio, u["encoder_calls"] / n, m["encoder_calls"] / n,
                     u["seconds"] / floor, m["seconds"] / floor, targets[key]])
        results["scenarios"][key] = {"upstream": u, "medsam2kit": m, "ratio": ratio,
                                     "upstream_time_over_floor": u["seconds"] / floor,
                                     "medsam2kit_time_over_floor": m["seconds"] / floor}
    print_table(
        f"SAM2 predictor, hiera-t random init, {args.size} px, {n} slices, {device} "
        f"(one encoder pass {enc * 1000:.0f} ms; floor = slices x pass = {floor:.2f} s)",
        ["scenario", "upstream s", "ours s", "ours/upstream", "up calls/slice", "our calls/slice",
         "up time/floor", "our time/floor", "target"],
        rows,
    )
    if args.with_memory:
        proc = subprocess.run(
            [sys.executable, __file__, "--only-memory", "--memory-slices", str(args.memory_slices),
             "--memory-size", str(args.memory_size)],
            capture_output=True, text=True, check=True,
        )
        mem = json.loads(proc.stdout.strip().splitlines()[-1])
        results["memory"] = mem
        print_table("4 peak memory, whole bidirectional propagation", list(mem), [list(mem.values())])
    write_json("predictor", results)


if __name__ == "__main__":
    main()
