"""Typed, frozen configuration of a fine-tuning run, read from YAML with strict checking.

A run is described by one :class:`TrainConfig` (nested frozen dataclasses). :func:`load_config`
reads it from a YAML file and :func:`config_from_dict` from a mapping; unknown keys and values of
the wrong type are :class:`~medsam2kit.errors.ConfigError` naming the dotted key
(``data.train[0].kind``), the expected type and the value found.

The study's three paradigms are presets (:data:`PARADIGMS`); :func:`plan_stages` turns a config
into the ordered list of :class:`Stage` to run (two stages for intermediate adaptation).

Example:
    >>> from medsam2kit.train.config import config_from_dict, plan_stages
    >>> cfg = config_from_dict({"data": {"train": [{"kind": "synthetic", "count": 4}]},
    ...                         "schedule": {"steps": 10}})
    >>> cfg.optim.lr, cfg.loss.focal, [s.name for s in plan_stages(cfg)]
    (None, 20.0, ['task'])
    >>> resolve_optim(cfg).optim.lr  # the bundled micro model's default (docs/us_study.md)
    0.001
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_args, get_origin, Literal, Union

from medsam2kit.errors import ConfigError, MissingFileError

DatasetKind = Literal["cine", "frames", "images", "volume", "regions", "pasted", "synthetic"]
Duration = Literal["all", "short", "long"]
PhantomKind = Literal["ultrasound", "volume"]
AugmentName = Literal["none", "ultrasound", "generic", "combined"]
PromptMode = Literal["mixed", "mask", "box", "point"]
Paradigm = Literal["task_specific", "intermediate", "joint"]

#: A number as text: PyYAML (YAML 1.1) reads ``1e-4`` without a dot as a string.
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

#: The study's short/long split: a video of at most this many frames is "short".
SHORT_MAX_FRAMES = 7

#: The three paradigms of the ultrasound fine-tuning study.
PARADIGMS: tuple[str, ...] = ("task_specific", "intermediate", "joint")


@dataclass(frozen=True)
class DatasetSpec:
    """One source of labelled clips.

    Attributes:
        kind: ``"cine"`` (npz with ``frames``/``masks``, or a multi-frame DICOM / any
            :func:`medsam2kit.io.load_volume` file plus ``mask_path``), ``"frames"`` (a folder of
            frame images with a ``masks/`` subfolder or ``*<mask_suffix>.png`` masks: one video),
            ``"images"`` (the same layout, each image its own one-frame clip), ``"volume"`` (a 3D
            image plus a label map, sliced along ``axis`` into a sequence), ``"regions"``
            (self-supervised: any 3D image, no labels; ``count`` sequences per volume and slicing
            axis, each object a supervoxel of real texture, see
            :func:`medsam2kit.train.selfsup.region_labels`), ``"pasted"`` (self-supervised the
            same way: each sequence's objects are random 3D shapes pasted into the image with
            its own texture, see :func:`medsam2kit.train.selfsup.pasted_labels`) or ``"synthetic"`` (``count``
            phantoms made by :mod:`medsam2kit.phantoms`, see ``phantom``).
        path: a file or folder, or a glob pattern (``"data/*.npz"``); one video per match.
        name: label in logs (default: the kind and the path).
        mask_path: the label file for ``cine``/``volume`` when it is not ``path`` itself; may
            contain ``{stem}``, replaced by each image's file stem. Required for a ``volume``
            unless ``path`` is an ``.npz`` holding a label array.
        mask_key: the array in an npz label file (default: the first of masks, mask, label, ...).
        mask_suffix: for ``frames``/``images``: mask file = image stem + suffix + ``.png``.
        labels: label values to train as objects (default: every non-zero value).
        weight: sampling weight when several datasets are mixed.
        frame_range: ``[start, stop)`` frames of every video to keep (e.g. a train/val split of
            one recording); ``None`` keeps all.
        axis: slicing axis of a volume (default: the through-plane axis; for ``regions`` and ``pasted``: every
            axis whose in-plane voxel sides differ by at most 2.5x).
        count: number of synthetic clips (``regions``, ``pasted``: sequences per volume and axis);
            ``frames``: their length; ``seed``: their seed (also of ``regions``, ``pasted`` and
            ``motion_frames``).
        motion_frames: for ``images``: each image becomes a clip of this many frames moving along
            a smooth random trajectory (:func:`medsam2kit.train.selfsup.moving_clip`); 1 keeps stills.
        zoom: for ``volume``: instead of the whole slices, one sequence per label and factor,
            cropped in-plane to a square of ``factor`` times the label's box on its largest slice
            (:func:`medsam2kit.roi.roi_around`, as the tasks zoom at inference); for ``images``:
            likewise one clip per image, label and factor (then set in motion by
            ``motion_frames``); ``()`` keeps the whole slices and images.
        phantom: what ``synthetic`` makes: ``"ultrasound"`` clips
            (:func:`~medsam2kit.phantoms.ultrasound_clip`, ``frames`` long) or ``"volume"``
            phantoms sliced into sequences (:func:`~medsam2kit.phantoms.random_phantom`).
    """

    kind: DatasetKind
    path: str = ""
    name: str = ""
    mask_path: str = ""
    mask_key: str = ""
    mask_suffix: str = "_mask"
    labels: tuple[int, ...] = ()
    weight: float = 1.0
    frame_range: tuple[int, int] | None = None
    axis: int | None = None
    count: int = 8
    frames: int = 12
    seed: int = 0
    phantom: PhantomKind = "ultrasound"
    motion_frames: int = 1
    zoom: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        """The name used in logs."""
        return self.name or (f"{self.kind}:{self.path}" if self.path else self.kind)


@dataclass(frozen=True)
class DataConfig:
    """Which clips are trained on and how they are cut.

    Attributes:
        train: the task's datasets (mixed by ``weight``).
        val: validation datasets (whole videos up to ``val_max_frames``, first-frame mask prompt).
        pool: the pooled ultrasound datasets of stage 1 (intermediate adaptation) or the extra
            tasks of joint training.
        clip_length: frames per training clip (temporal context; SAM2 uses 8).
        stride: step between the frames of a clip.
        duration: keep ``"all"`` videos, only ``"short"`` ones (at most 7 frames) or ``"long"``.
        fraction: the share of each training dataset's videos kept (data-scale experiments),
            drawn with ``seed``; at least one video.
        max_objects: objects per clip at most (SAM2 uses 3).
        augment: clip augmentation preset.
        augment_p: probability of each ultrasound augmentation.
        batch_size: clips per process and step.
        val_max_frames: frames of each validation video at most.
    """

    train: tuple[DatasetSpec, ...] = ()
    val: tuple[DatasetSpec, ...] = ()
    pool: tuple[DatasetSpec, ...] = ()
    clip_length: int = 8
    stride: int = 1
    duration: Duration = "all"
    fraction: float = 1.0
    max_objects: int = 3
    augment: AugmentName = "none"
    augment_p: float = 0.5
    batch_size: int = 1
    val_max_frames: int = 32


@dataclass(frozen=True)
class ModelConfig:
    """The SAM2 model to fine-tune.

    Attributes:
        config: SAM2 config name or YAML path (see :func:`medsam2kit.predictor.resolve_config`).
        checkpoint: Meta's ``.pt`` (or one written by this trainer) to start from; empty: random init.
        image_size: model input size (multiple of 32); ``None``: the config's.
        freeze_image_encoder: keep the image encoder fixed (its features are then computed
            without gradients).
        freeze_prompt_encoder: keep the prompt encoder fixed.
        disable_dropout: set every dropout to 0 (exact reproducibility across process counts).
    """

    config: str = "sam2.1_hiera_micro"
    checkpoint: str = ""
    image_size: int | None = None
    freeze_image_encoder: bool = False
    freeze_prompt_encoder: bool = False
    disable_dropout: bool = False


@dataclass(frozen=True)
class PromptConfig:
    """Prompt simulation, as SAM2 trains (defaults: ``sam2.1_hiera_b+_MOSE_finetune.yaml``).

    Attributes:
        mode: ``"mixed"`` (points with probability ``prob_point``, of which boxes with
            ``prob_box``, else masks), or always ``"mask"``, ``"box"`` or ``"point"``.
        prob_point: probability of point/box prompts in ``mixed`` mode.
        prob_box: probability that a point prompt is a box.
        init_cond_frames: conditioning (prompted) frames: the first, plus up to
            ``init_cond_frames - 1`` others; ``-1`` prompts every frame.
        rand_init_cond_frames: draw the number uniformly in ``1..init_cond_frames``.
        frames_to_correct: frames receiving correction clicks (point/box prompts only), at least
            the conditioning ones; ``-1``: every frame.
        correction_clicks: clicks per corrected frame, each from the current error region.
        add_corrected_as_cond: corrected frames become conditioning frames.
        box_noise: box corner noise as a fraction of the box size (SAM: 0.1), bounded by
            ``box_noise_bound`` pixels.
    """

    mode: PromptMode = "mixed"
    prob_point: float = 0.5
    prob_box: float = 0.5
    init_cond_frames: int = 2
    rand_init_cond_frames: bool = True
    frames_to_correct: int = 2
    correction_clicks: int = 7
    add_corrected_as_cond: bool = True
    box_noise: float = 0.1
    box_noise_bound: int = 20


@dataclass(frozen=True)
class LossConfig:
    """Weights of SAM2's multi-step loss (focal 20, dice 1, IoU 1, object score 1).

    Attributes:
        focal, dice, iou, object_score: the weights.
        focal_alpha, focal_gamma: of the mask focal loss.
        supervise_all_iou: IoU loss on every candidate mask (SAM2: True).
        iou_l1: L1 instead of MSE for the IoU loss (SAM2: True).
    """

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    supervise_all_iou: bool = True
    iou_l1: bool = True


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a lower image-encoder learning rate, cosine schedule, clipping, accumulation.

    ``lr``, ``encoder_lr``, ``weight_decay``, ``grad_clip`` and ``warmup_steps`` left unset
    (``None``) take the defaults of the model being trained (:func:`resolve_optim`, from
    :func:`medsam2kit.models.finetune_defaults`): SAM2's fine-tuning values (5e-6, 3e-6, 0.1,
    0.1, no warm-up) for SAM2-sized models, the ultrasound study's for the bundled micro models.

    Attributes:
        lr: learning rate of everything but the image encoder.
        encoder_lr: image-encoder learning rate.
        weight_decay: AdamW weight decay, not applied to biases and norms.
        betas: AdamW betas.
        grad_clip: max gradient norm; 0 disables.
        accumulate: micro-batches per optimiser step.
        warmup_steps: linear warm-up steps (unset: the model's share of ``schedule.steps``).
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio`` (SAM2: 0.1).
        amp: bf16 autocast on CUDA (fp32 elsewhere, whatever this says).
    """

    lr: float | None = None
    encoder_lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    accumulate: int = 1
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    amp: bool = True

    @property
    def resolved(self) -> bool:
        """Whether every model-dependent value is set (see :func:`resolve_optim`)."""
        return None not in (self.lr, self.encoder_lr, self.weight_decay, self.grad_clip, self.warmup_steps)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long each stage runs and how often it validates and saves.

    Attributes:
        steps: optimiser steps of the (last or only) stage.
        stage1_steps: optimiser steps of stage 1 of intermediate adaptation (default: ``steps``).
        steps_per_epoch: optimiser steps per epoch (per-epoch records, validation, checkpoint).
        val_every_epochs: validate every this many epochs (0: never; the end always validates
            when there is validation data).
        save_every_epochs: write ``checkpoint_last.pt`` every this many epochs.
    """

    steps: int = 1000
    stage1_steps: int | None = None
    steps_per_epoch: int = 100
    val_every_epochs: int = 1
    save_every_epochs: int = 1


@dataclass(frozen=True)
class LogConfig:
    """Progress and metric records.

    Attributes:
        format: ``"jsonl"`` (``metrics.jsonl``) or ``"csv"`` (``metrics_step.csv`` and
            ``metrics_epoch.csv``).
        every: write a step record every this many steps.
        progress: show a progress bar (rank 0 only).
        plot: draw ``curves.png`` at the end (matplotlib if installed, else PIL).
    """

    format: Literal["jsonl", "csv"] = "jsonl"
    every: int = 1
    progress: bool = True
    plot: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """A whole fine-tuning run.

    Attributes:
        paradigm: ``"task_specific"`` (train on ``data.train``), ``"intermediate"`` (stage 1 on
            ``data.pool``, stage 2 on ``data.train`` from stage 1's weights) or ``"joint"`` (one
            stage on ``data.train`` and ``data.pool`` mixed by weight).
        output_dir: where checkpoints, metrics and the plot go.
        seed: seed of data order, clip sampling, augmentation, prompts and dropout.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``; under torchrun each process takes
            ``cuda:LOCAL_RANK``.
        resume: a ``checkpoint_last.pt`` to continue from (model, optimiser, scheduler, step, RNG).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    log: LogConfig = field(default_factory=LogConfig)
    paradigm: Paradigm = "task_specific"
    output_dir: str = "runs/finetune"
    seed: int = 0
    device: str = "auto"
    resume: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-ready; tuples become lists).

        Example:
            >>> TrainConfig().to_dict()["optim"]["betas"]
            [0.9, 0.999]
        """
        return _plain(dataclasses.asdict(self))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with dotted keys changed, e.g. ``cfg.replace(**{"optim.lr": 1e-4})``.

        Example:
            >>> TrainConfig().replace(**{"schedule.steps": 5}).schedule.steps
            5
        """
        data = self.to_dict()
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split(".")
            where: list[str] = []
            for key in parents:
                if key in node and not isinstance(node[key], dict):
                    raise ConfigError(
                        f"{dotted}: {'.'.join([*where, key])} is a value, not a section of keys; set it whole "
                        "(e.g. in the YAML file)"
                    )
                if key not in node:
                    sections = sorted(k for k, v in node.items() if isinstance(v, dict))
                    raise ConfigError(f"unknown key {dotted} (known sections{_of(where)}: {sections})")
                node = node[key]
                where.append(key)
            if last not in node:
                raise ConfigError(f"unknown key {dotted} (known keys{_of(where)}: {sorted(node)})")
            node[last] = _plain(value)
        return config_from_dict(data)


@dataclass(frozen=True)
class Stage:
    """One training stage of a paradigm.

    Attributes:
        name: ``"task"``, ``"adapt"`` (stage 1 of intermediate adaptation) or ``"joint"``.
        datasets: what it trains on.
        steps: optimiser steps.
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    steps: int


def plan_stages(config: TrainConfig) -> list[Stage]:
    """The ordered stages of ``config.paradigm``.

    Example:
        >>> cfg = config_from_dict({"paradigm": "intermediate", "schedule": {"steps": 4, "stage1_steps": 2},
        ...     "data": {"train": [{"kind": "synthetic"}], "pool": [{"kind": "synthetic", "seed": 1}]}})
        >>> [(s.name, s.steps) for s in plan_stages(cfg)]
        [('adapt', 2), ('task', 4)]
    """
    d, s = config.data, config.schedule
    if config.paradigm == "task_specific":
        return [Stage("task", d.train, s.steps)]
    if config.paradigm == "joint":
        return [Stage("joint", d.train + d.pool, s.steps)]
    stage1 = s.steps if s.stage1_steps is None else s.stage1_steps
    return [Stage("adapt", d.pool, stage1), Stage("task", d.train, s.steps)]


def preset(paradigm: str, **overrides: Any) -> TrainConfig:
    """A config for one of the three paradigms with SAM2's recipe, plus dotted overrides.

    Args:
        paradigm: ``"task_specific"``, ``"intermediate"`` or ``"joint"``.
        **overrides: dotted keys, e.g. ``**{"data.train": [...], "schedule.steps": 500}``.

    Example:
        >>> preset("joint", **{"data.train": [{"kind": "synthetic"}], "data.pool": [{"kind": "synthetic", "seed": 1}]}).paradigm
        'joint'
    """
    if paradigm not in PARADIGMS:
        raise ConfigError(f"paradigm: expected one of {list(PARADIGMS)}, got {paradigm!r}")
    data: dict[str, Any] = {"paradigm": paradigm}
    for dotted, value in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = _plain(value)
    return config_from_dict(data)


def resolve_optim(config: TrainConfig) -> TrainConfig:
    """``config`` with its unset optimiser values (``None``) taken from the defaults of the model it
    trains (:func:`medsam2kit.models.finetune_defaults` of ``model.config``; the warm-up as its
    share of ``schedule.steps``); values set stay.

    Example:
        >>> cfg = resolve_optim(config_from_dict({"model": {"config": "sam2.1_hiera_t"}, "optim": {"lr": 1e-5}}))
        >>> cfg.optim.lr, cfg.optim.encoder_lr, cfg.optim.grad_clip
        (1e-05, 3e-06, 0.1)
    """
    from medsam2kit.models import finetune_defaults

    o = config.optim
    if o.resolved:
        return config
    d = finetune_defaults(config.model.config)
    optim = dataclasses.replace(
        o,
        lr=d.lr if o.lr is None else o.lr,
        encoder_lr=d.encoder_lr if o.encoder_lr is None else o.encoder_lr,
        weight_decay=d.weight_decay if o.weight_decay is None else o.weight_decay,
        grad_clip=d.grad_clip if o.grad_clip is None else o.grad_clip,
        warmup_steps=round(d.warmup_fraction * config.schedule.steps) if o.warmup_steps is None else o.warmup_steps,
    )
    return dataclasses.replace(config, optim=optim)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a YAML file (strict: unknown keys and wrong types raise).

    Raises:
        MissingFileError: no such file.
        ConfigError: not YAML, not a mapping, an unknown key or a wrong type (the dotted key is named).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.yaml"
        >>> _ = p.write_text("data:\\n  train:\\n    - kind: synthetic\\nschedule:\\n  steps: 3\\n")
        >>> load_config(p).schedule.steps
        3
    """
    yaml = importlib.import_module("yaml")  # PyYAML (via omegaconf); untyped

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"config: file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config: {p} is not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    return config_from_dict(raw, source=str(p))


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested mapping (strict).

    Example:
        >>> config_from_dict({"optim": {"lr": "x"}})
        Traceback (most recent call last):
        ...
        medsam2kit.errors.ConfigError: config: optim.lr: expected float, got 'x' (str)
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        result = _convert(TrainConfig, data, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cast(TrainConfig, result)  # _convert builds the type it is given


def _convert(tp: Any, value: Any, key: str) -> Any:
    name = key or "<top>"
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping of {tp.__name__} fields, got {value!r}")
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown:
            where = f"{key}." if key else ""
            raise ConfigError(
                f"unknown key {where}{unknown[0]} (known keys{' of ' + key if key else ''}: {sorted(fields)})"
            )
        kwargs = {k: _convert(hints[k], v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{err}") from None
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{name}: expected {_tname(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{name}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list ({_tname(tp)}), got {value!r} ({type(value).__name__})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected a list of {len(args)} items, got {len(value)}: {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected bool, got {value!r} ({type(value).__name__})")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected int, got {value!r} ({type(value).__name__})")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected str, got {value!r} ({type(value).__name__})")
        return value
    raise ConfigError(f"{name}: unsupported type {tp!r}")  # pragma: no cover - a bug in this module


def _of(where: Sequence[str]) -> str:
    return f" of {'.'.join(where)}" if where else ""


def _tname(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    return str(tp).replace("typing.", "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _validate(cfg: TrainConfig) -> None:
    d, p, o, s, m = cfg.data, cfg.prompts, cfg.optim, cfg.schedule, cfg.model
    _check(d.clip_length >= 1, f"data.clip_length: expected >= 1, got {d.clip_length}")
    _check(d.stride >= 1, f"data.stride: expected >= 1, got {d.stride}")
    _check(0 < d.fraction <= 1, f"data.fraction: expected a value in (0, 1], got {d.fraction}")
    _check(d.max_objects >= 1, f"data.max_objects: expected >= 1, got {d.max_objects}")
    _check(d.batch_size >= 1, f"data.batch_size: expected >= 1, got {d.batch_size}")
    _check(d.val_max_frames >= 1, f"data.val_max_frames: expected >= 1, got {d.val_max_frames}")
    _check(0 <= d.augment_p <= 1, f"data.augment_p: expected a probability, got {d.augment_p}")
    for group in ("train", "val", "pool"):
        for i, spec in enumerate(getattr(d, group)):
            where = f"data.{group}[{i}]"
            _check(spec.weight > 0, f"{where}.weight: expected > 0, got {spec.weight}")
            _check(spec.kind == "synthetic" or bool(spec.path), f"{where}.path: required for kind {spec.kind!r}")
            _check(spec.count >= 1 and spec.frames >= 1, f"{where}.count/frames: expected >= 1")
            _check(spec.motion_frames >= 1, f"{where}.motion_frames: expected >= 1, got {spec.motion_frames}")
            _check(all(f >= 1 for f in spec.zoom), f"{where}.zoom: expected factors >= 1, got {list(spec.zoom)}")
            _check(not spec.zoom or spec.kind in ("volume", "images"),
                   f"{where}.zoom: only a 'volume' or 'images' dataset zooms, got kind {spec.kind!r}")
            _check(spec.kind != "volume" or bool(spec.mask_path) or spec.path.lower().endswith(".npz"),
                   f"{where}.mask_path: required for kind 'volume' (the label map of each image, e.g. "
                   f"'labels/{{stem}}_label.nii.gz'); only an .npz volume can hold its labels itself, got path "
                   f"{spec.path!r} and no mask_path")
            if spec.frame_range is not None:
                a, b = spec.frame_range
                _check(0 <= a < b, f"{where}.frame_range: expected 0 <= start < stop, got {list(spec.frame_range)}")
    for name in ("prob_point", "prob_box"):
        v = getattr(p, name)
        _check(0 <= v <= 1, f"prompts.{name}: expected a probability, got {v}")
    _check(p.init_cond_frames >= 1 or p.init_cond_frames == -1, f"prompts.init_cond_frames: expected >= 1 or -1, got {p.init_cond_frames}")
    _check(p.frames_to_correct >= 0 or p.frames_to_correct == -1, f"prompts.frames_to_correct: expected >= 0 or -1, got {p.frames_to_correct}")
    _check(p.correction_clicks >= 0, f"prompts.correction_clicks: expected >= 0, got {p.correction_clicks}")
    _check(p.box_noise >= 0 and p.box_noise_bound >= 0, "prompts.box_noise, box_noise_bound: expected >= 0")
    _check(o.lr is None or o.lr > 0, f"optim.lr: expected > 0, got {o.lr}")
    for key in ("encoder_lr", "weight_decay", "grad_clip"):
        value = getattr(o, key)
        _check(value is None or value >= 0, f"optim.{key}: expected >= 0, got {value}")
    _check(o.accumulate >= 1, f"optim.accumulate: expected >= 1, got {o.accumulate}")
    _check(o.warmup_steps is None or o.warmup_steps >= 0, f"optim.warmup_steps: expected >= 0, got {o.warmup_steps}")
    _check(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio: expected a value in [0, 1], got {o.min_lr_ratio}")
    _check(all(0 <= b < 1 for b in o.betas), f"optim.betas: expected values in [0, 1), got {list(o.betas)}")
    _check(s.steps >= 1, f"schedule.steps: expected >= 1, got {s.steps}")
    _check(s.stage1_steps is None or s.stage1_steps >= 1, f"schedule.stage1_steps: expected >= 1, got {s.stage1_steps}")
    _check(s.steps_per_epoch >= 1, f"schedule.steps_per_epoch: expected >= 1, got {s.steps_per_epoch}")
    _check(s.val_every_epochs >= 0 and s.save_every_epochs >= 0, "schedule.val_every_epochs/save_every_epochs: expected >= 0")
    _check(cfg.log.every >= 1, f"log.every: expected >= 1, got {cfg.log.every}")
    _check(m.image_size is None or (m.image_size > 0 and m.image_size % 32 == 0),
           f"model.image_size: expected a positive multiple of 32, got {m.image_size}")
    if cfg.paradigm in ("intermediate", "joint"):
        _check(bool(d.pool), f"data.pool: paradigm {cfg.paradigm!r} needs pooled datasets in data.pool")


__all__ = [
    "PARADIGMS",
    "SHORT_MAX_FRAMES",
    "DataConfig",
    "DatasetSpec",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PromptConfig",
    "ScheduleConfig",
    "Stage",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "plan_stages",
    "preset",
    "resolve_optim",
]
