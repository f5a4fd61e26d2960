"""Throughput of medsam2kit.augment against usaugment (albumentations) on 16-frame 256x256 clips.

Ours: one call per clip (parameters once per clip, vectorised over the frames). usaugment: one
``albumentations.Compose([T(p=1)], additional_targets={"scan_mask": "mask"})`` call per frame, as its
users do. Both get the same fan-shaped scan mask (ours as a :class:`ScanGeometry`). Runs are
interleaved (ours, theirs, ours, ...) so that both see the same machine load; the table gives the
median frames/s over the repetitions and the ratio of the medians.

Run: ``python benchmarks/bench_augment.py [--reps 15] [--threads 1] [--out PATH]``. Without
usaugment installed its columns are left empty. On a machine with CUDA a GPU column is added.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from medsam2kit.augment import (
    AcousticShadow,
    Affine,
    DepthAttenuation,
    GainTGC,
    Haze,
    ScanGeometry,
    SpeckleNoise,
    SpeckleReduction,
    Transform,
    combined,
    generic_sam2,
    ultrasound,
)

FRAMES, SIZE = 16, 256
GEOMETRY = ScanGeometry.fan(apex=(127.5, -30.0), radii=(40.0, 300.0), angles=(-0.65, 0.65))


def _ours(geometry: ScanGeometry) -> dict[str, Transform[Any]]:
    """Our transforms, with usaugment's default ranges where both have the transform."""
    return {
        "depth attenuation": DepthAttenuation(rate=(0.0, 3.0), floor=0.0, geometry=geometry),
        "shadow": AcousticShadow(strength=(0.25, 0.8), geometry=geometry),
        "haze": Haze(amplitude=0.5, depth=(0.05, 0.95), sigma=(1e-4, 0.1), geometry=geometry),
        "speckle reduction": SpeckleReduction(sigma_spatial=(0.1, 2.0), sigma_color=(1e-4, 1.0), window=5,
                                              geometry=geometry),
        "speckle noise": SpeckleNoise(geometry=geometry),
        "gain / TGC": GainTGC(geometry=geometry),
        "affine (SAM2)": Affine(degrees=25.0, shear=20.0),
        "preset ultrasound(p=1)": ultrasound(p=1.0, geometry=geometry),
        "preset generic_sam2": generic_sam2(),
        "preset combined(p=0.5)": combined(p=0.5, geometry=geometry),
    }


def _theirs() -> dict[str, Callable[..., Any]] | None:
    try:
        import albumentations as A
        from usaugment.albumentations import DepthAttenuation as UDepth
        from usaugment.albumentations import GaussianShadow, HazeArtifact
        from usaugment.albumentations import SpeckleReduction as USpeckle
    except ImportError:
        return None
    extra = {"scan_mask": "mask"}
    return {
        "depth attenuation": A.Compose([UDepth(p=1.0)], additional_targets=extra),
        "shadow": A.Compose([GaussianShadow(p=1.0)], additional_targets=extra),
        "haze": A.Compose([HazeArtifact(p=1.0)], additional_targets=extra),
        "speckle reduction": A.Compose([USpeckle(p=1.0)], additional_targets=extra),
    }


def _time(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def run(reps: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    scan = GEOMETRY.mask(SIZE, SIZE).numpy()
    frames = (rng.random((FRAMES, SIZE, SIZE), dtype=np.float32) * scan).astype(np.float32)
    clip = torch.from_numpy(frames)
    masks = torch.from_numpy(rng.random((FRAMES, SIZE, SIZE)) > 0.5)
    scan_u8 = scan.astype(np.uint8)
    ours, theirs = _ours(GEOMETRY), _theirs()
    cuda = torch.cuda.is_available()
    gen = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    for name, transform in ours.items():
        spatial = name.startswith(("affine", "preset"))
        mask_arg = masks if spatial else None

        def ours_once(t: Transform[Any] = transform, m: torch.Tensor | None = mask_arg) -> Any:
            return t(clip, m, generator=gen)

        their = theirs.get(name) if theirs else None

        def theirs_once(t: Callable[..., Any] | None = their) -> Any:
            assert t is not None
            return [t(image=f, scan_mask=scan_u8)["image"] for f in frames]

        for _ in range(2):  # warm-up (caches, allocator)
            ours_once()
            if their is not None:
                theirs_once()
        t_ours, t_theirs = [], []
        for _ in range(reps):
            t_ours.append(_time(ours_once, lambda: None))
            if their is not None:
                t_theirs.append(_time(theirs_once, lambda: None))
        row: dict[str, Any] = {
            "transform": name,
            "ours_cpu_fps": FRAMES / statistics.median(t_ours),
            "ours_cpu_fps_best": FRAMES / min(t_ours),
            "usaugment_cpu_fps": FRAMES / statistics.median(t_theirs) if t_theirs else None,
            "usaugment_cpu_fps_best": FRAMES / min(t_theirs) if t_theirs else None,
        }
        row["ratio"] = row["ours_cpu_fps"] / row["usaugment_cpu_fps"] if t_theirs else None
        if cuda:
            dev_clip, dev_masks = clip.cuda(), masks.cuda() if spatial else None
            dev_gen = torch.Generator(device="cuda").manual_seed(0)

            def ours_cuda(t: Transform[Any] = transform, m: torch.Tensor | None = dev_masks) -> Any:
                return t(dev_clip, m, generator=dev_gen)

            for _ in range(3):
                ours_cuda()
            t_cuda = [_time(ours_cuda, torch.cuda.synchronize) for _ in range(reps)]
            row["ours_cuda_fps"] = FRAMES / statistics.median(t_cuda)
        rows.append(row)
    return {
        "clip": [FRAMES, SIZE, SIZE],
        "dtype": "float32",
        "reps": reps,
        "torch_threads": threads,
        "torch": torch.__version__,
        "usaugment": _version("usaugment"),
        "albumentations": _version("albumentations"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }


def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (usaugment uses one)")
    args = parser.parse_args()
    result = run(args.reps, args.threads)
    cuda = result["cuda_device"] is not None
    header = ["transform", "ours CPU fps", "usaugment fps", "ours/usaugment"] + (["ours CUDA fps"] if cuda else [])
    rows = [
        [r["transform"], r["ours_cpu_fps"], r["usaugment_cpu_fps"] or "-", r["ratio"] or "-"]
        + ([r.get("ours_cuda_fps") or "-"] if cuda else [])
        for r in result["rows"]
    ]
    print_table(
        f"frames/s, median of {result['reps']} runs, {result['clip']} float32 clips, "
        f"torch threads={result['torch_threads']}, usaugment {result['usaugment']} (target ratio >= 3)",
        header,
        rows,
    )
    write_json("augment", result)

if __name__ == "__main__":
    main()
