"""The ``medsam2kit`` command line.

Subcommands: ``info`` (versions, device, configs found) and ``demo`` (an end-to-end run on a
synthetic volume that writes NIfTI files). Exit codes: 0 success, 1 a medsam2kit error (the
message says what was wrong), 2 bad command-line usage.

Example:
    >>> from medsam2kit.cli import main
    >>> main(["info", "--quiet"])
    0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsam2kit.errors import InvalidInputError, MedSAM2KitError

_DEMO_EXAMPLE = """example:
  medsam2kit demo --out demo_out
  medsam2kit demo --out demo_out --config sam2.1_hiera_t --checkpoint sam2.1_hiera_tiny.pt --device cuda
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam2kit", description="Medical SAM2 adapters.")
    verbosity = argparse.ArgumentParser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    group.add_argument("-v", "--verbose", action="store_true", help="print more detail")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "info",
        parents=[verbosity],
        help="versions, device and SAM2 configs found",
        description="Print versions, the device 'auto' picks, and the SAM2 configs found.",
        epilog="example:\n  medsam2kit info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    demo = sub.add_parser(
        "demo",
        parents=[verbosity],
        help="end-to-end run on a synthetic volume",
        description=(
            "Make a synthetic oblique MR-like volume, turn it into SAM2 frames, prompt the middle "
            "slice with its true mask, propagate both ways, and write the mask (NIfTI, with the "
            "input's geometry), the image, the ground truth and a summary.json to --out. Without "
            "--checkpoint the model has random weights: the run is real, the mask is not meaningful."
        ),
        epilog=_DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    demo.add_argument("--config", default="sam2.1_hiera_micro", help="SAM2 config name or YAML path")
    demo.add_argument("--checkpoint", type=Path, default=None, help="SAM2 checkpoint (.pt)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    demo.add_argument("--image-size", type=int, default=None, help="model input size (default: config's)")
    demo.add_argument("--seed", type=int, default=0, help="phantom seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "demo":
            return _demo(args)
    except MedSAM2KitError as err:
        print(f"medsam2kit {args.command}: error: {err}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)


def _info(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    import torch

    from medsam2kit.predictor import available_configs, resolve_device

    import importlib.util

    has_c = importlib.util.find_spec("sam2._C") is not None
    versions = {name: md.version(name) for name in ("medsam2kit", "torch", "sam2", "numpy", "nibabel", "pydicom")}
    lines = [f"{k} {v}" for k, v in versions.items()]
    lines.append(f"device auto -> {resolve_device('auto')} (cuda available: {torch.cuda.is_available()})")
    lines.append(f"sam2 CUDA extension (_C): {'yes' if has_c else 'no (hole filling done with scipy)'}")
    lines.append(f"configs: {', '.join(available_configs())}")
    _say(args, "\n".join(lines))
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    from medsam2kit.io import save_mask, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom
    from medsam2kit.predictor import SAM2Predictor
    from medsam2kit.sequencer import sequence_volume

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out: expected a folder, got the file {out}")
    start = time.perf_counter()
    image, label = ellipsoid_phantom(rng=args.seed)
    predictor = SAM2Predictor.from_config(
        args.config, args.checkpoint, device=args.device, image_size=args.image_size
    )
    seq = sequence_volume(image, image_size=predictor.image_size)
    axis = seq.layout.axis
    areas = (label.array > 0).sum(axis=tuple(a for a in range(3) if a != axis))
    prompt_slice = int(np.argmax(areas))
    session = predictor.start(seq)
    truth_slice = np.take(label.array > 0, prompt_slice, axis=axis)
    session.add_mask(seq.frame_of_slice(prompt_slice), seq.mask_to_frame(truth_slice), obj_id=1)
    result = session.propagate("both")
    mask = seq.to_volume_mask(result.logits()[:, 0].numpy()).array
    truth = label.array > 0
    inter = float(np.logical_and(mask, truth).sum())
    dice = 2 * inter / max(float(mask.sum() + truth.sum()), 1.0)

    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    save_volume(image, out / "image.nii.gz")
    save_mask(label.array, image, out / "ground_truth.nii.gz")
    save_mask(mask, image, out / "mask.nii.gz")
    summary: dict[str, Any] = {
        "config": str(args.config),
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "weights": "checkpoint" if args.checkpoint else "random init (run is real, mask is not meaningful)",
        "device": str(predictor.device),
        "image_size": predictor.image_size,
        "volume_shape": list(image.shape),
        "spacing_mm": [round(s, 4) for s in image.spacing],
        "slice_axis": axis,
        "prompt_slice": prompt_slice,
        "frames": len(seq),
        "encoder_calls": session.encoder_calls,
        "dice_vs_ground_truth": round(dice, 4),
        "seconds": round(time.perf_counter() - start, 2),
        "torch_threads": torch.get_num_threads(),
    }
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    _say(args, json.dumps(summary, indent=2) if args.verbose else
         f"wrote {out}/mask.nii.gz ({len(seq)} frames, {session.encoder_calls} encoder calls, "
         f"Dice vs ground truth {dice:.3f}, {summary['weights']}, {summary['seconds']} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
