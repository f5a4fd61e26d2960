"""``medsam2kit finetune CONFIG``: fine-tune SAM2 from a YAML run configuration.

The lead wires :func:`add_finetune_parser` and :func:`run_finetune` into ``medsam2kit.cli``.
The same command runs on one process or, under ``torchrun --nproc_per_node N``, data-parallel.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="medsam2kit")
    >>> _ = add_finetune_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["finetune", "run.yaml", "--set", "schedule.steps=5"])
    >>> args.config, args.set
    ('run.yaml', ['schedule.steps=5'])
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from medsam2kit._files import check_writable, one_line
from medsam2kit.errors import ConfigError, MedSAM2KitError
from medsam2kit.predictor.checkpoints import config_name
from medsam2kit.train.config import TrainConfig

_EXAMPLE = """example:
  medsam2kit finetune run.yaml
  medsam2kit finetune run.yaml --set schedule.steps=200 --set optim.lr=1e-4 --out runs/try2
  medsam2kit finetune run.yaml --resume runs/try2/checkpoint_last.pt
  medsam2kit finetune run.yaml --model medsam2_latest   # start from MedSAM2 (config and 512 px from the zoo)
  torchrun --nproc_per_node 4 -m medsam2kit.cli finetune run.yaml   # data-parallel, same config

config (YAML; unknown keys and wrong types are errors naming the key):
  paradigm: task_specific          # or intermediate (data.pool then data.train), joint
  model: {config: sam2.1_hiera_t, checkpoint: sam2.1_hiera_tiny.pt, image_size: 512}
  data:
    train: [{kind: cine, path: "data/*.npz", frame_range: [0, 60]}]
    val:   [{kind: cine, path: "data/*.npz", frame_range: [60, 90]}]
    clip_length: 8
    augment: ultrasound
  schedule: {steps: 2000, steps_per_epoch: 200}
  output_dir: runs/carotid
"""


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune SAM2 on labelled clips (YAML config; torchrun for data parallelism)",
        description=(
            "Fine-tune SAM2 as SAM2 trains (prompt simulation, focal/dice/IoU/object-score loss, AdamW "
            "with a lower image-encoder rate, cosine schedule, gradient clipping, bf16 on CUDA) in one "
            "of three paradigms: task_specific, intermediate (pooled data, then the task) or joint. "
            "Writes checkpoint_last.pt (resumable, loadable by sam2's build_sam2), model_final.pt, "
            "metrics.jsonl and curves.png to the output folder."
        ),
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML run configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted key, value parsed as YAML (repeatable), e.g. optim.lr=1e-4")
    p.add_argument("--out", default=None, help="output folder (overrides output_dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoints, metrics and plot of an earlier run in the output folder "
                        "(refused without it, unless --resume continues that run)")
    p.add_argument("--resume", default=None, help="checkpoint_last.pt to continue from")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (overrides device)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="start from a model zoo entry ('medsam2kit models') or a checkpoint file: overrides the "
                        "config's model.config, model.checkpoint and model.image_size (--set still wins)")
    p.add_argument("--random-init", action="store_true",
                   help="start from random weights when the config names no model.checkpoint (a warning is "
                        "printed); without it such a run starts from the bundled reference model "
                        "(config sam2.1_hiera_micro) or is refused")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    p.add_argument("-v", "--verbose", action="store_true", help="a traceback with errors")
    return p


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``finetune`` from parsed arguments; returns the exit code (0 ok, 1 a medsam2kit error)."""
    yaml = importlib.import_module("yaml")  # PyYAML (via omegaconf); untyped

    from medsam2kit.train.config import load_config
    from medsam2kit.train.loop import fit

    try:
        cfg = load_config(args.config)
        if getattr(args, "model", None) and getattr(args, "random_init", False):
            raise ConfigError("--model conflicts with --random-init")
        changes: dict[str, Any] = _model_changes(args.model) if getattr(args, "model", None) else {}
        for item in args.set:
            if "=" not in item:
                raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            changes[key.strip()] = yaml.safe_load(value)
        if args.out:
            changes["output_dir"] = args.out
        if args.resume:
            changes["resume"] = args.resume
        if args.device:
            changes["device"] = args.device
        if args.quiet:
            changes["log.progress"] = False
        if changes:
            cfg = cfg.replace(**changes)
        cfg = _default_weights(cfg, random_init=bool(getattr(args, "random_init", False)))
        cfg = _model_optim(cfg, quiet=bool(args.quiet))
        _check_output_dir(cfg, overwrite=bool(getattr(args, "overwrite", False)), name="--out" if args.out else "output_dir")
        result = fit(cfg)
    except (MedSAM2KitError, OSError) as err:  # OSError: a file the system refused, not yet named
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exception(type(err), err, err.__traceback__)
        print(f"medsam2kit finetune: error: {one_line(err)}", file=sys.stderr)
        return 1
    if not args.quiet:
        summary = {"output_dir": str(result.output_dir), "checkpoint": str(result.checkpoint),
                   "final_model": str(result.final_model), "steps": result.steps, "val": result.val}
        print(json.dumps(summary, indent=2))
    return 0


_RUN_OUTPUTS = ("checkpoint_last.pt", "model_final.pt", "metrics.jsonl", "metrics_step.csv", "metrics_epoch.csv",
                "curves.png")


def _check_output_dir(cfg: TrainConfig, *, overwrite: bool, name: str) -> None:
    """Before training: the output folder can be written and holds no earlier run (unless
    ``--overwrite``, or ``--resume`` continuing it); stage sub-folders count too."""
    from pathlib import Path

    folder = Path(cfg.output_dir)
    contents = list(_RUN_OUTPUTS)
    if folder.is_dir():
        contents += [f"{sub.name}/{f}" for sub in sorted(folder.glob("stage*")) if sub.is_dir() for f in _RUN_OUTPUTS]
    check_writable(folder, overwrite=overwrite or bool(cfg.resume), folder=True, contents=contents, name=name,
                   hint="add --overwrite to replace it, or --resume to continue that run")


def _default_weights(cfg: TrainConfig, *, random_init: bool) -> TrainConfig:
    """The weights a run starts from when its config names no ``model.checkpoint``: random only when
    asked for (``--random-init``, with a warning); the bundled reference model for its own config;
    otherwise a named error (a fine-tuning run from random weights is almost never what was meant)."""
    if cfg.model.checkpoint or cfg.resume:
        return cfg
    if random_init:
        print(f"medsam2kit finetune: warning: starting from random weights of {cfg.model.config} "
              "(--random-init)", file=sys.stderr)
        return cfg
    from medsam2kit.reference import REFERENCE_CONFIG, reference_checkpoint

    if config_name(cfg.model.config) == REFERENCE_CONFIG:
        print(f"model: bundled model reference ({REFERENCE_CONFIG}, 128 px; not for clinical use); "
              "use --model for another", file=sys.stderr)
        return cfg.replace(**{"model.checkpoint": str(reference_checkpoint())})
    raise ConfigError(
        f"model.checkpoint: empty, so the run would start from random weights of {cfg.model.config}; set "
        "model.checkpoint, pass --model NAME|PATH ('medsam2kit models' lists them), or --random-init"
    )


def _model_optim(cfg: TrainConfig, *, quiet: bool) -> TrainConfig:
    """The optimiser values the config leaves unset, from the model's fine-tuning defaults (said on
    stderr, so a run shows which rate it trains with)."""
    from medsam2kit.models import finetune_defaults
    from medsam2kit.train.config import resolve_optim

    if cfg.optim.resolved:
        return cfg
    resolved = resolve_optim(cfg)
    if not quiet:
        o = resolved.optim
        print(f"medsam2kit finetune: optim lr {o.lr:g}, encoder_lr {o.encoder_lr:g}, weight_decay {o.weight_decay:g}, "
              f"grad_clip {o.grad_clip:g}, warmup_steps {o.warmup_steps} where the config sets none: defaults of "
              f"{config_name(cfg.model.config)} "
              f"({finetune_defaults(cfg.model.config).source})", file=sys.stderr)
    return resolved


def _model_changes(name_or_path: str) -> dict[str, Any]:
    """``model.*`` changes for ``--model`` (see :func:`medsam2kit.models.resolve_model`)."""
    from medsam2kit.models import resolve_model

    spec = resolve_model(name_or_path)
    if spec.overrides:
        raise ConfigError(f"--model: {name_or_path} needs config overrides {dict(spec.overrides)} that a "
                          "finetune config cannot express; set model.config to a YAML with them instead")
    print(f"medsam2kit finetune: model {spec.entry.name if spec.entry else spec.checkpoint} "
          f"({spec.config}, {spec.image_size or 'config'} px) from {spec.checkpoint}", file=sys.stderr)
    return {"model.config": spec.config, "model.checkpoint": str(spec.checkpoint), "model.image_size": spec.image_size}


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m medsam2kit.train.cli finetune CONFIG``."""
    parser = argparse.ArgumentParser(prog="medsam2kit")
    add_finetune_parser(parser.add_subparsers(dest="command", required=True))
    return run_finetune(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
