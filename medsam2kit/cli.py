"""The ``medsam2kit`` command line.

Subcommands: ``info`` (versions, device, configs found, where the weights are), ``models`` (the
model zoo, see :mod:`medsam2kit.models`), ``demo`` (propagation, FATE-SAM and SAM2Med3D with the
bundled reference model on held-out phantoms and shared real cases, see :mod:`medsam2kit.demo`), ``propagate``
(label prompts drawn on a few slices, propagated through the volume), ``coarse`` (fit the
coarse network ``segment`` needs), ``segment``, ``fewshot``, ``finetune``, ``study`` (the ultrasound
fine-tuning study, see :mod:`medsam2kit.study`) and ``evaluate``. Exit
codes: 0 success, 1 a medsam2kit error (the message says what was wrong), 2 bad command-line
usage. Commands that run for more than a few seconds report progress on stderr (a bar, or one
line per stage), silenced by ``--quiet``.

Output label maps in a folder are named ``<case>_labels.nii.gz``, the case named by the rule
``evaluate`` pairs files with (:func:`medsam2kit._files.case_name`): ``a_img.nii.gz`` ->
``a_labels.nii.gz``, which pairs with the reference ``a_label.nii.gz``.

The commands that run SAM2 take ``--model NAME|PATH`` (a zoo name, downloaded and checked on first
use, or a checkpoint file); without it they use a bundled reference model (a micro SAM 2.1) and
say so in one line: ``reference-volumes`` for a CT or MRI volume (``propagate``, ``fewshot``,
``segment``; chosen on the validation cases), ``reference`` for a recording and in the demo's
ultrasound rows. ``--config``/``--checkpoint`` are the expert form; random weights only with
``--random-init``.

Example:
    >>> from medsam2kit.cli import main
    >>> main(["info", "--quiet"])
    0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any


from medsam2kit.errors import InvalidInputError, MedSAM2KitError

if TYPE_CHECKING:  # the adapter imports torch and sam2 (slow): the CLI imports them only when used
    from medsam2kit.adapt import AdaptConfig

_FEWSHOT_EXAMPLE = """example:
  medsam2kit fewshot --support a_img.nii.gz a_label.nii.gz --support b_img.nii.gz b_label.nii.gz \\
      --query c_img.nii.gz --out c_mask.nii.gz --model medsam2_latest --device cuda
  torchrun --nproc_per_node 4 -m medsam2kit.cli fewshot --bank bank.pt --query cohort/ --out masks/ \\
      --model medsam2_latest      # cases split across the 4 processes
"""

_PROPAGATE_EXAMPLE = """example:
  medsam2kit propagate --input case_img.nii.gz --prompts case_drawn.nii.gz --out case_labels.nii.gz
  medsam2kit propagate --input ct_series/ --prompts drawn.nii.gz --out seg.dcm --prompt box \\
      --model medsam2_latest --device cuda
"""

_SEGMENT_EXAMPLE = """example:
  medsam2kit segment --input breast1_img.nii.gz --coarse coarse.pt --out breast1_mask.nii.gz \\
      --model sam2.1_hiera_tiny --device cuda
  torchrun --nproc_per_node 2 -m medsam2kit.cli segment --input cohort/ --coarse coarse.pt --out masks/ \\
      --model medsam2_latest
"""

_COARSE_EXAMPLE = """example:
  medsam2kit coarse --image a_img.nii.gz a_label.nii.gz --image b_img.nii.gz b_label.nii.gz --out coarse.pt
  medsam2kit segment --input c_img.nii.gz --coarse coarse.pt --out c_labels.nii.gz
"""

_DEMO_EXAMPLE = """example:
  medsam2kit demo --out demo_out                                   # bundled reference model
  medsam2kit demo --out demo_out --model medsam2_latest --device cuda
  medsam2kit demo --out demo_out --config sam2.1_hiera_t --checkpoint my_finetuned.pt
"""

_STUDY_EXAMPLE = """example:
  medsam2kit study --quick --out study_quick            # a few minutes: 3 cells, one seed
  medsam2kit study --out us_study --workers 2           # the full grid (docs/us_study.md), resumable
  medsam2kit study --out us_study --seeds 0 --steps 300 # another budget: a new --out
"""

_MODELS_EXAMPLE = """example:
  medsam2kit models                  # name, config, image size, cached?, licence, path
  medsam2kit models --verbose        # also the description and where each file comes from
  HF_HUB_OFFLINE=1 medsam2kit segment ... --model medsam2_latest   # cached files only, no network
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
        help="versions, device, SAM2 configs found, where the weights are",
        description=("Print versions, the device 'auto' picks, the SAM2 configs found, where the bundled "
                     "reference weights are and the model cache folder."),
        epilog="example:\n  medsam2kit info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    sub.add_parser(
        "models",
        parents=[verbosity],
        help="list the model zoo (SAM 2/2.1, MedSAM2, Medical-SAM2, the bundled reference model)",
        description=(
            "List the checkpoints --model accepts by name: config, input size, whether the file is "
            "already on this machine and where, and its licence. A name not yet cached is downloaded "
            "from the Hugging Face hub on first use (into the model cache folder: $MEDSAM2KIT_HOME/models, "
            "else the platform cache folder) and checked against its sha256; HF_HUB_OFFLINE=1 forbids "
            "downloading."
        ),
        epilog=_MODELS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    demo = sub.add_parser(
        "demo",
        parents=[verbosity],
        help="SAM2 propagation, FATE-SAM and SAM2Med3D on held-out phantoms (and shared data)",
        description=(
            "On a held-out phantom (and on the held-out real cases of the shared data folder when "
            "present: hippocampus, prostate, CT lesions, brain tumour, carotid recordings, fetal-head "
            "images): propagation from one prompted slice per label, from a mask and from a box "
            "(beside copying the prompt mask to the labelled slices), FATE-SAM from two labelled "
            "supports with no prompt, SAM2Med3D from a deliberately weak coarse network (beside the "
            "coarse network alone), tracking of recordings (beside copying the first mask) and box "
            "prompts on images (beside the filled box and the ellipse in it). Writes NIfTI masks "
            "with each input's geometry, titled PNG overlays, dice_table.md/.csv and summary.json "
            "to --out. The default model is the bundled micro reference model, fine-tuned on a few real cases "
            "(not for clinical use), with its volumes task model (reference-volumes) on the volumes, as the "
            "commands use them; --model picks another (see 'medsam2kit models'); "
            "--random-init runs with random weights: the run is real, the masks are not meaningful."
        ),
        epilog=_DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the outputs of an earlier demo in --out (refused without it)")
    _model_options(demo)
    demo.add_argument("--seed", type=int, default=0, help="held-out phantom seed (default 0)")
    demo.add_argument("--data", type=Path, default=None,
                      help="shared data folder (default: $MEDSAM2KIT_DATA or ../shared/data when present)")
    demo.add_argument("--no-data", action="store_true", help="the phantom case only, even when shared data is present")
    demo.add_argument("--adapt-steps", type=int, default=None, metavar="N",
                      help="steps of the one-shot adaptation before the 'sam2 adapted' propagation of each volume "
                           "(medsam2kit.adapt; default 100, about 0.19 s each on a CPU; 0: none)")
    demo.add_argument("--coarse-steps", type=int, default=40,
                      help="training steps of the weak coarse network (default 40)")
    demo.add_argument("--jobs", type=int, default=None, metavar="N",
                      help="cases run at once, each in a process with its share of the cores (default: 2 on a CPU "
                           "with two cores or more, else 1; the small model's steps use a second thread poorly)")

    fewshot = sub.add_parser(
        "fewshot",
        parents=[verbosity],
        help="FATE-SAM: segment a query volume from labelled supports, no prompt",
        description=(
            "Few-shot, training-free, prompt-free segmentation (FATE-SAM): the supports are registered "
            "onto each query and resampled onto its grid (--no-align: as they are), every labelled "
            "support slice is encoded into a support bank, and each query slice takes its support "
            "slices per label as SAM2 memory (aligned: the one at its position). Writes a label map "
            "(NIfTI, or DICOM SEG) with the query's geometry."
        ),
        epilog=_FEWSHOT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fewshot.add_argument("--support", nargs=2, action="append", metavar=("IMG", "LABEL"), default=[],
                         help="a support image and its label map (repeatable)")
    fewshot.add_argument("--bank", type=Path, default=None, help="a saved support bank instead of --support")
    fewshot.add_argument("--save-bank", type=Path, default=None, help="write the support bank here for reuse")
    fewshot.add_argument("--query", type=Path, required=True,
                         help="query image, or a folder of them (a cohort; split across ranks under torchrun)")
    fewshot.add_argument("--overwrite", action="store_true",
                         help="replace existing output files (--out, --save-bank); refused without it")
    fewshot.add_argument("--out", type=Path, required=True,
                         help="output label map (.nii or .nii.gz), or a folder for a cohort")
    fewshot.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                         help="register every support onto each query first (a similarity transform, then demons, "
                              "medsam2kit.register), retrieve support slices by position on the query's grid and "
                              "keep each label within 2 mm of where at least half of the registered supports hold it "
                              "(default with --support; a saved --bank cannot be aligned)")
    fewshot.add_argument("--prior", action=argparse.BooleanOptionalAction, default=None,
                         help="aligned: add where at least half of the registered supports hold each label to its "
                              "logits (medsam2kit.fewshot.SupportPrior; default yes with --align)")
    fewshot.add_argument("--top-k", type=int, default=None,
                         help="supports per query slice and label (default 3; aligned: 1, the one at the slice's position)")
    fewshot.add_argument("--distance", choices=("l1", "cosine"), default="l1", help="retrieval distance")
    fewshot.add_argument("--adapt-steps", type=int, default=None, metavar="N",
                         help="first fine-tune a copy of the model on the supports for N steps "
                              "(medsam2kit.adapt.adapt_to_supports; about 0.2-0.4 s each on a CPU; default: 200 "
                              "with a bundled model when no bank is given or saved, else 0: none)")
    fewshot.add_argument("--format", choices=("nifti", "dicom-seg"), default=None,
                         help="label map format: nifti (default) or dicom-seg (a DICOM query only; "
                              "--out x.dcm implies it)")
    _model_options(fewshot)

    evaluate = sub.add_parser(
        "evaluate",
        parents=[verbosity],
        help="score predicted label maps against references",
        description=(
            "Dice, IoU, HD95, HD, ASSD and NSD per case and label (spacing-aware) for two files or "
            "two folders matched by case name; writes per_case.csv, summary.csv (mean, std, median, "
            "95% CI of the mean) and figures (overlay montages, box plots) to --out. A prediction on "
            "another grid than its reference is an error naming both."
        ),
        epilog="example:\n  medsam2kit evaluate masks/ labels/ --out eval --images images/ --tolerance 1.0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("pred", type=Path, help="predicted label map, or a folder of them")
    evaluate.add_argument("gt", type=Path, help="reference label map, or a folder of them")
    evaluate.add_argument("--out", type=Path, required=True, help="output folder")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace per_case.csv, summary.csv and figures/ already in --out (refused without it)")
    evaluate.add_argument("--labels", type=int, nargs="+", default=None, help="labels to score (default: all found)")
    evaluate.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    evaluate.add_argument("--images", type=Path, default=None, help="images (file or folder) for the montages")
    evaluate.add_argument("--no-figures", action="store_true", help="skip the PNG figures")

    from medsam2kit.train.cli import add_finetune_parser

    add_finetune_parser(sub)

    study = sub.add_parser(
        "study",
        parents=[verbosity],
        help="the ultrasound fine-tuning study (data scale, clip length, augmentation, paradigm) on shared data",
        description=(
            "Reproduce the ultrasound SAM2 fine-tuning study (arXiv 2511.05731) at small scale on the shared "
            "carotid recordings and fetal-head images: one factor at a time (training-set fraction, clip length, "
            "augmentation, paradigm, start model, learning rate) around a base cell, each cell fine-tuned for "
            "the same small budget and scored on held-out recordings (first-frame mask, box and clicks with "
            "simulated corrections) and held-out fetal-head images (box). Resumable: a rerun with the same "
            "--out skips finished cells. Writes results.csv, summary.md (tables and a verdict on each of the "
            "paper's claims), summary.json and study.png to --out."
        ),
        epilog=_STUDY_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study.add_argument("--out", type=Path, required=True, help="study folder (created if missing; reused to resume)")
    study.add_argument("--quick", action="store_true",
                       help="3 cells, one seed, 30 steps, 16 fetal images: a smoke test of a few minutes")
    study.add_argument("--data", type=Path, default=None,
                       help="shared data folder (default: $MEDSAM2KIT_DATA or ../shared/data when present)")
    study.add_argument("--workers", type=int, default=1,
                       help="cells trained at once, sharing the CPU cores (default 1)")
    study.add_argument("--steps", type=int, default=None, help="optimiser steps per stage (default: the plan's)")
    study.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of every cell (default: the plan's)")
    study.add_argument("--keep-models", action="store_true", help="keep every cell's model_final.pt")
    study.add_argument("--overwrite", action="store_true", help="redo the cells already in --out instead of reusing them")

    propagate = sub.add_parser(
        "propagate",
        parents=[verbosity],
        help="propagate label prompts drawn on a few slices through the whole volume",
        description=(
            "The volume as a SAM2 video: each label of --prompts, drawn on one or a few slices (a mask "
            "per slice, e.g. painted in ITK-SNAP or 3D Slicer on the image's grid), is one object prompted "
            "on each of its slices by that mask (or the box around it, --prompt box) and propagated both "
            "ways; each slice is encoded once (twice with --mirror). By default, for a volume, SAM2 sees the slices cropped to "
            "2 times the prompts' box, with the default model a second run on the mirrored slices is averaged in "
            "(--no-mirror: one run), "
            "each drawn mask's shape is added to its label's logits on the slices "
            "near it (--no-prior: SAM2's logits alone), a voxel that several labels claim goes to the label "
            "drawn nearest, each label keeps the parts of its mask connected to its prompts, and "
            "with a bundled model a copy of it is first adapted to the prompts (200 steps); a recording "
            "(cine: an ultrasound clip, a multi-frame DICOM cine) is tracked on whole frames with the whole "
            "masks and no adaptation (measured on the carotid recordings). Writes a label map with the "
            "input's geometry (NIfTI, or DICOM SEG for a DICOM input)."
        ),
        epilog=_PROPAGATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    propagate.add_argument("--input", type=Path, required=True,
                           help="the image (NIfTI, NRRD, npz, a DICOM series folder or multi-frame DICOM)")
    propagate.add_argument("--prompts", type=Path, required=True,
                           help="a label map on the image's grid with each label drawn on the slices to prompt "
                                "(every slice holding a label is a prompt of it)")
    propagate.add_argument("--out", type=Path, required=True, help="output label map (.nii/.nii.gz, or .dcm)")
    propagate.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    propagate.add_argument("--prompt", choices=("mask", "box"), default="mask",
                           help="prompt each drawn slice by its mask or by the box around it (default mask)")
    propagate.add_argument("--zoom", type=float, default=None, metavar="FACTOR",
                           help="SAM2 sees the slices cropped to FACTOR (>= 1) times the prompts' in-plane box "
                                "(0: whole slices; default 2 for a volume, whole frames for a recording)")
    propagate.add_argument("--adapt-steps", type=int, default=None, metavar="N",
                           help="first adapt a copy of the model to the prompt masks for N steps "
                                "(medsam2kit.adapt; default 200 for mask prompts on a volume with a bundled model, "
                                "about 0.2 s each on a CPU; 0 for a recording, where it lowered tracking, and with "
                                "any other model, whose adaptation was not measured; 0: none)")
    propagate.add_argument("--connected", action=argparse.BooleanOptionalAction, default=None,
                           help="keep only the parts of each label's mask connected in 3D to its prompts (default: "
                                "yes for a volume with mask prompts, no for a recording)")
    propagate.add_argument("--overlaps", choices=("nearest", "logit"), default=None,
                           help="where several labels claim a voxel, the label drawn on the nearest slice takes it "
                                "(nearest; the largest logit among equally near ones) or the largest logit (logit) "
                                "(default: nearest for a volume, logit for a recording)")
    propagate.add_argument("--prior", action=argparse.BooleanOptionalAction, default=None,
                           help="add each drawn mask's shape to its label's logits on the slices near it where SAM2 "
                                "sees the label (medsam2kit.pipelines.PromptPrior; mask prompts; default: yes for a "
                                "volume, no for a recording)")
    propagate.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                           help="also propagate the slices mirrored left to right and average the two runs' logits "
                                "(mask prompts; each slice encoded twice; default: yes on a volume with the bundled "
                                "reference-volumes, which trained with horizontal flips; no otherwise)")
    propagate.add_argument("--axis", type=int, choices=(0, 1, 2), default=None,
                           help="slicing axis of the array (default: the axis of largest spacing; time for a recording)")
    propagate.add_argument("--format", choices=("nifti", "dicom-seg"), default=None,
                           help="label map format: nifti (default) or dicom-seg (a DICOM input only; "
                                "--out x.dcm implies it)")
    _model_options(propagate)

    segment = sub.add_parser(
        "segment",
        parents=[verbosity],
        help="SAM2Med3D: coarse network -> reliable slices -> SAM2 -> fusion",
        description=(
            "SAM2Med3D: a coarse network's segmentation, its most reliable slices as SAM2 prompts, "
            "propagation through the volume (each slice encoded once) and confidence-driven fusion. "
            "Writes a label map (NIfTI) with the input's geometry."
        ),
        epilog=_SEGMENT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument("--input", type=Path, required=True,
                         help="image, or a folder of them (a cohort; split across ranks under torchrun)")
    segment.add_argument("--coarse", type=Path, required=True, help="coarse network saved by CoarseSegmenter.save")
    segment.add_argument("--out", type=Path, required=True, help="output label map (.nii/.nii.gz) or folder")
    segment.add_argument("--overwrite", action="store_true",
                         help="replace existing output files (refused without it)")
    segment.add_argument("--k", type=int, default=3, help="prompt slices per label (default 3)")
    segment.add_argument("--prompt", choices=("mask", "box", "box+point", "point"), default="mask",
                         help="prompt kind from each chosen slice (default mask)")
    segment.add_argument("--propagation", choices=("joint", "separate"), default="joint",
                         help="all prompts in one propagation, or each separately (default joint)")
    segment.add_argument("--zoom", type=float, default=None, metavar="FACTOR",
                         help="SAM2 sees the slices cropped to FACTOR (>= 1) times the coarse foreground's "
                              "in-plane box, for small structures (default: whole slices)")
    segment.add_argument("--format", choices=("nifti", "dicom-seg"), default=None,
                         help="label map format: nifti (default) or dicom-seg (a DICOM input only; "
                              "--out x.dcm implies it)")
    _model_options(segment)

    coarse = sub.add_parser(
        "coarse",
        parents=[verbosity],
        help="fit the coarse network that 'segment' needs, from labelled volumes",
        description=(
            "Fit the coarse segmentation network of SAM2Med3D (a small 2D U-Net over slices, see "
            "docs/coarse.md) on labelled volumes and save it for 'segment --coarse'. Every slice of "
            "every volume is a training sample; the network learns the labels given by --labels "
            "(default: every label found), keeping their values, so 'segment' writes the same label "
            "values as the references. Runs on the CPU in about a minute for a few small volumes."
        ),
        epilog=_COARSE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    coarse.add_argument("--image", nargs=2, action="append", metavar=("IMG", "LABEL"), required=True,
                        help="a training image and its label map (repeatable)")
    coarse.add_argument("--out", type=Path, required=True, help="the coarse network file to write (e.g. coarse.pt)")
    coarse.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused without it)")
    coarse.add_argument("--labels", type=int, nargs="+", default=None,
                        help="labels to learn (default: every non-zero label of the label maps); others become "
                             "background")
    coarse.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    coarse.add_argument("--batch-size", type=int, default=16, help="slices per step (default 16)")
    coarse.add_argument("--size", type=int, default=64,
                        help="working size: slices are resized to SIZE x SIZE, a multiple of 8 (default 64)")
    coarse.add_argument("--context", type=int, default=1,
                        help="neighbouring slices on each side as extra input channels (default 1; 0 = plain 2D)")
    coarse.add_argument("--base-channels", type=int, default=16, help="channels of the first U-Net level (default 16)")
    coarse.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the slice order (default 0)")
    coarse.add_argument("--device", default="cpu", help="cpu (default), auto, cuda[:N] or mps")
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (default: a bundled micro SAM 2.1, reference-volumes on CT and MRI "
                                      "volumes, reference on recordings and images)")
    group.add_argument("--model", default=None, metavar="NAME|PATH",
                       help="a model zoo name ('medsam2kit models' lists them; downloaded and checked on first "
                            "use) or a checkpoint file (config guessed from its keys)")
    group.add_argument("--config", default=None,
                       help="expert form: SAM2 config name or YAML path, with --checkpoint (or --random-init)")
    group.add_argument("--checkpoint", type=Path, default=None,
                       help="expert form: checkpoint file for --config (without --config: guessed from its keys)")
    group.add_argument("--random-init", action="store_true",
                       help="random weights (of --config, default sam2.1_hiera_micro): tests the pipeline, "
                            "the masks are not meaningful")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    group.add_argument("--feature-store", type=Path, default=None, metavar="DIR",
                       help="keep the image encoder's features in DIR (one file per frame, keyed by the frame "
                            "and the model): a later run on the same volume encodes nothing")
    group.add_argument("--feature-store-bf16", action="store_true",
                       help="store the features in bf16 (half the disk; results differ by bf16 rounding)")
    group.add_argument("--image-size", type=int, default=None,
                       help="model input size (default: the model's, e.g. 512 for MedSAM2, 1024 for SAM 2)")


def _check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) of the model options."""
    if getattr(args, "random_init", None) is None:
        return
    if args.model is not None and (args.config is not None or args.checkpoint is not None or args.random_init):
        parser.error(f"{args.command}: --model conflicts with --config/--checkpoint/--random-init "
                     "(use --model NAME|PATH, or the expert form --config CONFIG --checkpoint FILE)")
    if args.random_init and args.checkpoint is not None:
        parser.error(f"{args.command}: --random-init conflicts with --checkpoint")


def _predictor(args: argparse.Namespace, default: str | None = None) -> Any:
    """The predictor the model options ask for (``default``: the zoo name used when they name
    none, :data:`~medsam2kit.models.REFERENCE` if ``None``); prints one line saying which model it is."""
    return _load_predictor(args, default)[0]


def _load_predictor(args: argparse.Namespace, default: str | None = None) -> tuple[Any, str, str]:
    """(predictor, one line saying which model, its config); prints the line (a warning for random init)."""
    predictor, line, config = _build_predictor(args, default)
    store = getattr(args, "feature_store", None)
    if store is not None:
        import torch

        from medsam2kit.store import FeatureStore

        dtype = torch.bfloat16 if getattr(args, "feature_store_bf16", False) else None
        predictor.feature_store = FeatureStore(store, dtype=dtype)
    return predictor, line, config


def _build_predictor(args: argparse.Namespace, default_model: str | None = None) -> tuple[Any, str, str]:
    from medsam2kit.predictor import SAM2Predictor, resolve_config
    from medsam2kit.reference import REFERENCE_CONFIG

    size = args.image_size
    if args.random_init:
        config = args.config or REFERENCE_CONFIG
        predictor = SAM2Predictor.from_config(config, None, device=args.device, image_size=size)
        print(f"medsam2kit {args.command}: warning: random weights ({config}, --random-init): the run is real, "
              "the masks are not meaningful", file=sys.stderr)
        return predictor, f"random init {config} (the run is real, the masks are not meaningful)", str(config)
    if args.config is not None and args.checkpoint is None:
        resolve_config(args.config)  # a wrong name is reported as such
        raise InvalidInputError(
            f"--config: {args.config} without --checkpoint would have random weights; add --checkpoint FILE, "
            "or --random-init to use random weights on purpose, or use --model NAME|PATH"
        )
    from medsam2kit.models import REFERENCE, load_model

    if args.config is not None:
        predictor = SAM2Predictor.from_config(args.config, args.checkpoint, device=args.device, image_size=size)
        line, config = f"{args.checkpoint} ({args.config}, {predictor.image_size} px)", str(args.config)
    else:
        target = args.model if args.model is not None else (args.checkpoint or default_model or REFERENCE)
        loaded = load_model(target, image_size=size, device=args.device)
        predictor = SAM2Predictor(loaded.model)
        line, config = loaded.describe(), loaded.config
    default = args.model is None and args.checkpoint is None
    _say(args, f"model: {line}" + ("; use --model for another" if default else ""))
    return predictor, line, config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_model_args(parser, args)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "models":
            return _models(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "fewshot":
            return _fewshot(args)
        if args.command == "propagate":
            return _propagate(args)
        if args.command == "segment":
            return _segment(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "coarse":
            return _coarse(args)
        if args.command == "finetune":
            from medsam2kit.train.cli import run_finetune

            return run_finetune(args)
        if args.command == "study":
            return _study(args)
    except (MedSAM2KitError, OSError) as err:  # OSError: a file the system refused, not yet named
        return _fail(args.command, err, verbose=bool(getattr(args, "verbose", False)))
    except KeyboardInterrupt:  # Ctrl-C: outputs are written whole or not at all, so one line is enough
        print(f"medsam2kit {args.command}: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


def _study(args: argparse.Namespace) -> int:
    import dataclasses

    from medsam2kit._data import shared_data_dir
    from medsam2kit.errors import MissingFileError
    from medsam2kit.study import FULL_PLAN, QUICK_PLAN, run_study

    data = args.data or shared_data_dir()
    if data is None or not data.is_dir():
        raise MissingFileError(f"--data: no shared data folder found ({args.data or '$MEDSAM2KIT_DATA or ../shared/data'}); "
                               "the study needs its carotid_us and hc18_fetal_us folders")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out: {args.out} is a file; expected a folder")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    changes: dict[str, object] = {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    plan = dataclasses.replace(plan, **changes) if changes else plan  # type: ignore[arg-type]
    _stage(args, f"{len(plan.cells())} cells ({len(plan.seeds)} seed(s), {plan.steps} steps each) and "
                 f"{len(plan.inits())} untrained start model(s), {args.workers} worker(s); results in {args.out}")
    run_study(plan, data, args.out, workers=args.workers, keep_models=args.keep_models, overwrite=args.overwrite,
              log=None if not args.quiet else (lambda line: None))
    _say(args, (args.out / "summary.md").read_text())
    return 0


def _fail(command: str, err: BaseException, *, verbose: bool) -> int:
    """Print ``medsam2kit COMMAND: error: MESSAGE`` as one line (the traceback first when
    ``verbose``) and return the exit code 1.

    Example:
        >>> from medsam2kit.errors import OutputError
        >>> _fail("segment", OutputError("--out: cannot write /x.nii.gz: Read-only file system"), verbose=False)
        1
    """
    import traceback

    from medsam2kit._files import one_line

    if verbose:
        traceback.print_exception(type(err), err, err.__traceback__)
    print(f"medsam2kit {command}: error: {one_line(err)}", file=sys.stderr)
    return 1


def _check_out(args: argparse.Namespace, path: Path, *, folder: bool = False, contents: Sequence[str] = (),
               name: str = "--out") -> None:
    """Before any work: the output can be written, and is new unless ``--overwrite`` (one line naming it)."""
    from medsam2kit._files import check_writable

    check_writable(path, overwrite=bool(getattr(args, "overwrite", False)), folder=folder, contents=contents,
                   name=name, hint="add --overwrite to replace it")


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)


def _stage(args: argparse.Namespace, message: str) -> None:
    """One progress line on stderr (``medsam2kit COMMAND: MESSAGE``), silenced by ``--quiet``."""
    if not args.quiet:
        print(f"medsam2kit {args.command}: {message}", file=sys.stderr, flush=True)


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
    from medsam2kit.models import model_cache_dir
    from medsam2kit.reference import reference_checkpoint

    try:
        lines.append(f"bundled reference weights: {reference_checkpoint()}")
    except MedSAM2KitError as err:
        lines.append(f"bundled reference weights: missing ({err})")
    lines.append(f"model cache: {model_cache_dir()} ('medsam2kit models' lists the zoo)")
    _say(args, "\n".join(lines))
    return 0


def _models(args: argparse.Namespace) -> int:
    from medsam2kit.models import cached_checkpoint, expected_path, hub_offline, list_models, model_cache_dir

    rows = [("name", "config", "size", "cached", "licence", "path")]
    entries = list_models()
    for entry in entries:
        found = cached_checkpoint(entry)
        where = found if found is not None else expected_path(entry)
        rows.append((entry.name, entry.config, str(entry.image_size), "yes" if found is not None else "no",
                     entry.licence, str(where) if found is not None else f"(not yet: {where})"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    if args.verbose:
        lines.append("")
        for entry in entries:
            source = ", ".join(entry.download_urls) or "bundled with medsam2kit"
            ft = entry.finetune
            lines += [f"{entry.name}: {entry.description}", f"  source: {source}",
                      f"  sha256: {entry.sha256 or 'not verified (recorded on first use)'}",
                      f"  finetune defaults: lr {ft.lr:g}, encoder_lr {ft.encoder_lr:g}, weight_decay "
                      f"{ft.weight_decay:g}, grad_clip {ft.grad_clip:g}, warm-up {ft.warmup_fraction:.0%} of the "
                      f"steps ({ft.source})",
                      f"  notes: {entry.notes}"]
    lines.append(f"cache folder: {model_cache_dir()}" + (" (HF_HUB_OFFLINE set: no downloads)" if hub_offline() else ""))
    _say(args, "\n".join(lines))
    return 0


_DEMO_OUTPUTS = ("summary.json", "dice_table.md", "dice_table.csv")


def _demo(args: argparse.Namespace) -> int:
    import torch

    from medsam2kit._data import shared_data_dir
    from medsam2kit._parallel import usable_cores, worker_threads
    from medsam2kit.demo import DEMO_ADAPT_STEPS, run_demo
    from medsam2kit.models import REFERENCE_VOLUMES

    out: Path = args.out
    _check_out(args, out, folder=True, contents=_DEMO_OUTPUTS)
    if args.data is not None and not args.data.is_dir():
        raise InvalidInputError(f"--data: expected a folder, got {args.data}")
    adapt = _adapt_config(args.adapt_steps, default=DEMO_ADAPT_STEPS)
    if args.jobs is not None and args.jobs < 1:
        raise InvalidInputError(f"--jobs: expected a number of processes >= 1, got {args.jobs}")
    predictor, model, config = _load_predictor(args)
    data_dir = None if args.no_data else (args.data or shared_data_dir())
    cpu = predictor.device.type == "cpu"
    jobs = args.jobs if args.jobs is not None else (2 if cpu and usable_cores() >= 2 else 1)
    threads = worker_threads(jobs) if jobs > 1 else torch.get_num_threads()
    volumes = _demo_volumes_model(args, predictor.device)
    info = {"config": config, "model": model, "device": str(predictor.device),
            "volumes_model": None if volumes is None else REFERENCE_VOLUMES, "volumes_mirror": volumes is not None,
            "data_dir": None if data_dir is None else str(data_dir), "jobs": jobs, "torch_threads": threads}
    summary = run_demo(out, predictor, seed=args.seed, data_dir=data_dir, coarse_steps=args.coarse_steps,
                       info=info, say=lambda line: _say(args, line), progress=lambda line: _stage(args, line),
                       adapt=adapt, task_models=_demo_task_models(args, predictor.device), jobs=jobs,
                       volumes_model=volumes, mirror=volumes is not None)
    _say(args, f"wrote {out}/ ({len(summary['cases'])} cases, {summary['seconds_total']} s)")
    return 0


def _demo_default_model(args: argparse.Namespace) -> bool:
    """Whether the demo runs the bundled default model (no other model asked for)."""
    from medsam2kit.models import REFERENCE

    return (args.model in (None, REFERENCE) and args.checkpoint is None and args.config is None
            and not args.random_init and args.image_size is None)


def _demo_volumes_model(args: argparse.Namespace, device: Any) -> Any:
    """The model of the demo's volume cases: ``reference-volumes`` with the bundled default
    model, as the commands use it on volumes (``None``: the model asked for)."""
    from medsam2kit.models import REFERENCE_VOLUMES
    from medsam2kit.predictor import SAM2Predictor

    if not _demo_default_model(args):
        return None
    _say(args, f"volumes: bundled model {REFERENCE_VOLUMES} (the default for CT and MRI volumes), "
               "mask propagation averaged with the mirror image")
    return SAM2Predictor.from_pretrained(REFERENCE_VOLUMES, device=device)


def _demo_task_models(args: argparse.Namespace, device: Any) -> dict[str, dict[str, Any]]:
    """The task models the demo scores beside the bundled default model, per task: the
    fetal-head model on the fetal-head images, the carotid model on the recordings (none when
    another model was asked for)."""
    from medsam2kit.models import REFERENCE_CAROTID, REFERENCE_FETAL_HEAD
    from medsam2kit.predictor import SAM2Predictor

    if not _demo_default_model(args):
        return {}
    return {"box prompt": {"sam2 fetal-head model": SAM2Predictor.from_pretrained(REFERENCE_FETAL_HEAD, device=device)},
            "tracking": {"sam2 carotid model": SAM2Predictor.from_pretrained(REFERENCE_CAROTID, device=device)}}


def _adapt_config(steps: int | None, *, default: int = 0) -> AdaptConfig | None:
    """The :class:`~medsam2kit.adapt.AdaptConfig` of ``--adapt-steps`` (``default`` steps when
    not given; ``None`` for 0)."""
    from medsam2kit.adapt import AdaptConfig

    steps = default if steps is None else steps
    if steps < 0:
        raise InvalidInputError(f"--adapt-steps: expected a number of steps >= 0 (0: no adaptation), got {steps}")
    return AdaptConfig(steps=steps) if steps else None


def _label_map_jobs(args: argparse.Namespace, inp: Path, *, name: str) -> tuple[Any, list[tuple[Path, Path]]]:
    """The output format and this rank's (input, output) pairs of a command that writes label
    maps, all checked before any work: inputs DICOM when the format needs it, outputs writable
    and new unless ``--overwrite``."""
    from medsam2kit.dicom_seg import check_dicom_inputs, output_suffix, resolve_output_format

    _check_cohort_out(args, inp)
    fmt = resolve_output_format(args.format, args.out)
    jobs = _my_share(_cohort(inp, args.out, output_suffix(fmt), name=name))
    check_dicom_inputs([i for i, _ in jobs], fmt, name=name)
    for _, out in jobs:
        _check_out(args, out)
    return fmt, jobs


def _fewshot(args: argparse.Namespace) -> int:
    from medsam2kit.dicom_seg import algorithm_name, write_labels
    from medsam2kit.fewshot import FewShotPipeline, SupportBank, SupportMemoryAssembler, SupportPrior
    from medsam2kit.io import load_label, load_volume
    from medsam2kit.models import REFERENCE_VOLUMES
    from medsam2kit.register import RegistrationConfig

    if bool(args.support) == (args.bank is not None):
        raise InvalidInputError("--support/--bank: expected either one or more --support IMG LABEL or one --bank")
    adapt = _adapt_config(args.adapt_steps)
    if adapt is not None and args.bank is not None:
        raise InvalidInputError("--adapt-steps: adapting needs the support volumes (--support), not a saved --bank")
    if adapt is not None and args.save_bank is not None:
        raise InvalidInputError("--save-bank: the bank of an adapted model holds its memories, and the adapted "
                                "model is not saved: drop --adapt-steps or --save-bank")
    if args.top_k is not None and args.top_k < 1:
        raise InvalidInputError(f"--top-k: expected >= 1 support per query slice, got {args.top_k}")
    if args.align and args.bank is not None:
        raise InvalidInputError("--align: aligning registers the support volumes onto each query; a saved --bank "
                                "holds encoded slices only: give --support IMG LABEL, or drop --align")
    if args.align and args.save_bank is not None:
        raise InvalidInputError("--save-bank: aligned supports give each query its own bank; drop --align to "
                                "build one bank for every query and save it")
    # by default aligned, unless a bank is given or asked for (a bank serves every query as it is)
    align = (args.bank is None and args.save_bank is None) if args.align is None else args.align
    if args.prior and not align:
        raise InvalidInputError("--prior: the supports' prior needs them registered onto each query (--align with "
                                "--support); drop --prior, or give --support without --bank / --save-bank")
    if args.adapt_steps is None and args.bank is None and args.save_bank is None and _bundled_model(args):
        adapt = _adapt_config(BUNDLED_ADAPT_STEPS)  # measured with the bundled models only
    fmt, jobs = _label_map_jobs(args, args.query, name="--query")
    if args.save_bank is not None:
        _check_out(args, args.save_bank, name="--save-bank")
    predictor = _predictor(args, REFERENCE_VOLUMES)
    start = time.perf_counter()
    if args.bank is not None:
        _stage(args, f"loading the support bank {args.bank}")
        bank = SupportBank.load(args.bank)
    else:
        pairs = []
        for img_path, lab_path in args.support:
            _stage(args, f"reading the support {img_path} and {lab_path}")
            image = load_volume(img_path)
            pairs.append((image, load_label(lab_path, like=image)))
        if adapt is not None:
            from medsam2kit.adapt import adapt_to_supports

            _stage(args, f"adapting a copy of the model to the supports ({adapt.steps} steps"
                         + ("; --adapt-steps 0 for none)" if args.adapt_steps is None else ")"))

            def report(done: int, steps: int) -> None:
                if done % 50 == 0 or done == steps:
                    _stage(args, f"adaptation step {done} / {steps} ({time.perf_counter() - start:.0f} s)")

            predictor = adapt_to_supports(predictor, pairs, adapt, progress=report)
        if not align:
            _stage(args, f"building the support bank: encoding every labelled slice of {len(pairs)} support(s)")
            bank = SupportBank.build(predictor, pairs)
            _stage(args, f"support bank: {len(bank)} slices, labels {list(bank.labels)} "
                         f"({time.perf_counter() - start:.1f} s)")
            if args.save_bank is not None and _rank()[0] == 0:
                bank.save(args.save_bank)
    options: dict[str, Any] = {"distance": args.distance, **({} if args.top_k is None else {"top_k": args.top_k})}
    if align:
        pipeline = FewShotPipeline(predictor, pairs, align=RegistrationConfig(),
                                   prior=None if args.prior is False else SupportPrior(), **options)
        segment = pipeline.run
        how = (f"registering {len(pairs)} support(s) onto it, encoding them and its slices, propagating each label"
               + (", the supports' labels as a prior" if pipeline.prior is not None else ""))
    else:
        segment = SupportMemoryAssembler(predictor, bank, **options).segment
        how = "encoding its slices, retrieving supports, propagating each label"
    for query_path, out in _progress(args, jobs, "fewshot"):
        query = load_volume(query_path)
        if len(jobs) == 1:
            _stage(args, f"segmenting {query_path} ({query.shape}): {how}")
        result = segment(query)
        write_labels(result.labels, query, out, fmt=fmt, algorithm=algorithm_name(args, REFERENCE_VOLUMES))
        counts = {lab: int((result.labels.array == lab).sum()) for lab in sorted(result.logits)}
        _say(args, f"wrote {out} (voxels per label {counts}; {'aligned supports; ' if align else ''}"
                   f"{result.encoder_calls} query encoder calls; {time.perf_counter() - start:.1f} s)")
    return 0


#: Steps of the adaptation ``propagate`` (to the prompts) and ``fewshot`` (to the supports) run
#: by default with a bundled model (the tasks' :class:`~medsam2kit.adapt.AdaptConfig` default;
#: held-out gains in docs/reference_model.md and docs/fewshot.md).
BUNDLED_ADAPT_STEPS = 200


def _bundled_model(args: argparse.Namespace) -> bool:
    """Whether the model options name a bundled model (none given: a bundled default)."""
    from medsam2kit.models import find_entry

    if args.random_init or args.config is not None or args.checkpoint is not None:
        return False
    if args.model is None:
        return True
    entry = find_entry(args.model)
    return entry is not None and entry.bundled


def _runs_zoo_model(args: argparse.Namespace, name: str, default: str) -> bool:
    """Whether the model options run the zoo model ``name`` (``default`` when they name none)."""
    if args.random_init or args.config is not None or args.checkpoint is not None:
        return False
    return (args.model or default) == name


def _propagate(args: argparse.Namespace) -> int:
    import dataclasses

    from medsam2kit.dicom_seg import algorithm_name, check_dicom_inputs, resolve_output_format, write_labels
    from medsam2kit.io import load_label, load_volume
    from medsam2kit.models import REFERENCE, REFERENCE_VOLUMES
    from medsam2kit.pipelines import PromptPrior, default_propagation_config, propagate_prompts
    from medsam2kit.roi import check_zoom

    if args.zoom is not None and args.zoom != 0:
        check_zoom(args.zoom, name="--zoom")
    adapt = _adapt_config(args.adapt_steps)  # as asked (None when not given: the default comes below)
    if adapt is not None and args.prompt == "box":
        raise InvalidInputError("--adapt-steps: adapting needs mask prompts; with --prompt box give --adapt-steps 0 "
                                "or leave it out")
    if args.input.is_dir() and not _is_dicom_folder(args.input):
        raise InvalidInputError(f"--input: expected one image (a file or a DICOM series folder), got the folder "
                                f"{args.input}: propagate takes one case and its --prompts")
    (_, out), = _cohort(args.input, args.out, "", name="--input")
    if not args.prompts.is_file():
        raise InvalidInputError(f"--prompts: expected a label map file, got {args.prompts} (no such file)")
    fmt = resolve_output_format(args.format, out)
    check_dicom_inputs([args.input], fmt, name="--input")
    _check_out(args, out)
    image = load_volume(args.input)
    prompts = load_label(args.prompts, like=image)
    recording = image.kind == "cine"
    if args.adapt_steps is None and args.prompt == "mask" and not recording and _bundled_model(args):
        adapt = _adapt_config(BUNDLED_ADAPT_STEPS)
    changes: dict[str, Any] = {"prompt": args.prompt, "adapt": adapt, "axis": args.axis}
    if args.zoom is not None:
        changes["zoom"] = None if args.zoom == 0 else args.zoom
    if args.connected is not None:
        changes["connected"] = args.connected
    if args.overlaps is not None:
        changes["overlaps"] = args.overlaps
    if args.prior is not None:
        changes["prior"] = PromptPrior() if args.prior else None
    default_model = REFERENCE if recording else REFERENCE_VOLUMES
    if args.mirror is not None:
        changes["mirror"] = args.mirror
    elif not recording and args.prompt == "mask" and _runs_zoo_model(args, REFERENCE_VOLUMES, default_model):
        changes["mirror"] = True  # the model trained with horizontal flips (measured with it)
    config = dataclasses.replace(default_propagation_config(image), **changes)
    predictor = _predictor(args, default_model)
    start = time.perf_counter()
    _stage(args, f"{'recording' if recording else 'volume'} {image.shape}: "
                 + (f"zoom {config.zoom:g}" if config.zoom else f"whole {'frames' if recording else 'slices'}") + ", "
                 + ("kept connected to the prompts" if config.connected and config.prompt == "mask" else "whole masks")
                 + (", the drawn shapes as a prior near their slices" if config.prior and config.prompt == "mask" else "")
                 + (", overlaps to the nearest prompt" if config.overlaps == "nearest" else "")
                 + (", averaged with the mirror image" if config.mirror and config.prompt == "mask" else "")
                 + (f", adapting a copy of the model to the prompts ({adapt.steps} steps; --adapt-steps 0 for none)"
                    if adapt is not None else ", no adaptation"))

    def report(done: int, steps: int) -> None:
        if done % 50 == 0 or done == steps:
            _stage(args, f"adaptation step {done} / {steps} ({time.perf_counter() - start:.0f} s)")

    result = propagate_prompts(predictor, image, prompts, config, progress=report)
    write_labels(result.labels, image, out, fmt=fmt, algorithm=algorithm_name(args, default_model))
    counts = {lab: int((result.labels.array == lab).sum()) for lab in result.prompt_slices}
    slices = {lab: list(s) for lab, s in result.prompt_slices.items()}
    _say(args, f"wrote {out} (voxels per label {counts}; prompt slices {slices} along axis {result.axis}; "
               f"{result.encoder_calls} encoder calls; {time.perf_counter() - start:.1f} s)")
    return 0


def _segment(args: argparse.Namespace) -> int:
    from medsam2kit.coarse import CoarseSegmenter
    from medsam2kit.dicom_seg import algorithm_name, write_labels
    from medsam2kit.io import load_volume
    from medsam2kit.models import REFERENCE_VOLUMES
    from medsam2kit.pipelines import SAM2Med3DConfig, SAM2Med3DPipeline
    from medsam2kit.prompts import SliceFilterConfig

    from medsam2kit.roi import check_zoom

    check_zoom(args.zoom, name="--zoom")
    fmt, jobs = _label_map_jobs(args, args.input, name="--input")
    coarse = CoarseSegmenter.load(args.coarse)
    config = SAM2Med3DConfig(slice_filter=SliceFilterConfig(k=args.k), prompt_kind=args.prompt,
                             propagation=args.propagation, zoom=args.zoom)
    pipeline = SAM2Med3DPipeline(coarse, _predictor(args, REFERENCE_VOLUMES), config)
    for path, out in _progress(args, jobs, "segment"):
        volume = load_volume(path)
        if len(jobs) == 1:
            _stage(args, f"segmenting {path} ({volume.shape}): coarse network, prompt slices, SAM2 propagation, "
                         "fusion")
        result = pipeline.run(volume)
        write_labels(result.labels, volume, out, fmt=fmt, algorithm=algorithm_name(args, REFERENCE_VOLUMES))
        chosen = {lab: list(o.selection.indices) for lab, o in result.outcomes.items()}
        _say(args, f"wrote {out} (prompt slices {chosen}; {result.encoder_calls} encoder calls; "
                   + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()) + ")")
    return 0


def _coarse(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
    from medsam2kit.io import load_label, load_volume

    _check_out(args, args.out)
    for flag, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--size", args.size, 8), ("--context", args.context, 0),
                             ("--base-channels", args.base_channels, 1)):
        if value < low:
            raise InvalidInputError(f"{flag}: expected >= {low}, got {value}")
    start = time.perf_counter()
    images, labels = [], []
    for img_path, lab_path in args.image:
        _stage(args, f"reading {img_path} and {lab_path}")
        image = load_volume(img_path)
        images.append(image)
        labels.append(np.asarray(load_label(lab_path, like=image).array))
    found = sorted({int(v) for lab in labels for v in np.unique(lab)} - {0})
    if args.labels is None:
        wanted = found
        if not wanted:
            raise InvalidInputError(f"--image: the label maps hold no label above 0 ({[lab for _, lab in args.image]})")
    else:
        wanted = sorted(set(args.labels))
        absent = [lab for lab in wanted if lab not in found]
        if min(wanted) < 1 or absent:
            raise InvalidInputError(
                f"--labels: expected labels >= 1 present in the label maps (found {found}), got {args.labels}"
            )
    labels = [np.where(np.isin(lab, wanted), lab, 0) for lab in labels]
    config = CoarseConfig(num_labels=max(wanted), context=args.context, image_size=args.size,
                          base_channels=args.base_channels, depth=3)
    segmenter = CoarseSegmenter(config)
    _stage(args, f"fitting the coarse network on {len(images)} volume(s), labels {wanted}: {args.steps} steps "
                 f"of {args.batch_size} slices ({args.size} px) on {args.device}")
    bar: Any = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="coarse", unit="step")

    def progress(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        result = segmenter.fit(images, labels, steps=args.steps, batch_size=args.batch_size,
                               generator=torch.Generator().manual_seed(args.seed), device=args.device,
                               progress=progress)
    finally:
        if bar is not None:
            bar.close()
    segmenter.save(args.out)
    _say(args, f"wrote {args.out} (labels {wanted}; {result.steps} steps on {result.num_slices} slices; "
               f"final loss {result.losses[-1]:.3f}; {time.perf_counter() - start:.1f} s); "
               f"use it with: medsam2kit segment --coarse {args.out} --input IMAGE --out LABELS")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import warnings

    from medsam2kit.evaluate import evaluate, format_interval

    _check_out(args, args.out, folder=True,
               contents=("per_case.csv", "summary.csv") + (() if args.no_figures else ("figures",)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(args.pred, args.gt, args.out, labels=args.labels, tolerance_mm=args.tolerance,
                          figures=not args.no_figures, images=args.images)
    for warning in caught:
        print(f"medsam2kit evaluate: warning: {warning.message}", file=sys.stderr)
    cases = len({r["case"] for r in report.rows})
    lines = [f"{cases} case(s); wrote {len(report.files)} files to {args.out}"]
    for (lab, metric), s in report.summary.items():
        if metric in ("dice", "hd95", "nsd") or args.verbose:
            lines.append(f"  label {lab} {metric}: mean {s.mean:.4g} (95% CI {format_interval(s.ci95_low, s.ci95_high, metric)}), "
                         f"median {s.median:.4g}, n {s.n}" + (f", {s.n_infinite} infinite" if s.n_infinite else ""))
    _say(args, "\n".join(lines))
    return 0


def _cohort(inp: Path, out: Path, suffix: str, *, name: str = "--query") -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file -> one output file; a folder -> every image in it -> out folder.

    In a folder, files whose name ends in one of the image suffixes are cases, except label maps
    (role suffix ``_label``, ``_labels``, ``_mask``, ``_seg``, ...); sub-folders are DICOM series.
    Output ``<case><suffix>``, the case named by :func:`medsam2kit._files.case_name` (the rule
    ``evaluate`` pairs by: ``a_img.nii.gz`` -> ``a_labels.nii.gz``).
    """
    from medsam2kit._files import index_cases

    if not inp.exists():
        raise InvalidInputError(f"{name}: {inp} does not exist")
    if inp.is_dir() and not _is_dicom_folder(inp):
        by_case = index_cases(inp, role="image", name=name)
        if not by_case:
            raise InvalidInputError(f"{name}: no image files in the folder {inp}")
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"--out: a folder of inputs needs an output folder, got the file {out}")
        out.mkdir(parents=True, exist_ok=True)
        return [(p, out / f"{case}{suffix}") for case, p in sorted(by_case.items(), key=lambda kv: kv[1])]
    if not out.name.endswith((".nii", ".nii.gz", ".dcm")):
        raise InvalidInputError(f"--out: expected a .nii or .nii.gz (or DICOM SEG .dcm) file name, got {out}")
    if not out.parent.is_dir():
        raise InvalidInputError(f"--out: the folder {out.parent} does not exist")
    return [(inp, out)]


def _check_cohort_out(args: argparse.Namespace, inp: Path) -> None:
    """A folder of inputs writes into the folder --out: check it before it is created."""
    if inp.is_dir() and not _is_dicom_folder(inp):
        _check_out(args, args.out, folder=True)


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def _rank() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK / WORLD_SIZE), else (0, 1)."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _my_share(jobs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Under torchrun each rank takes every WORLD_SIZE-th case (no communication needed)."""
    rank, world = _rank()
    return jobs[rank::world]


def _progress(args: argparse.Namespace, jobs: list[tuple[Path, Path]], what: str) -> Any:
    if len(jobs) > 1 and not args.quiet:
        from tqdm import tqdm

        return tqdm(jobs, desc=f"{what} (rank {_rank()[0]})", unit="case")
    return jobs


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
