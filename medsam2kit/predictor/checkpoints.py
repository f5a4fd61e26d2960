"""SAM2 configs and checkpoints: find a config, compose it, build the model, load weights.

Configs are found by name in medsam2kit's own folder (``sam2.1_hiera_micro``) and in sam2's
(``sam2.1_hiera_t``, ``sam2_hiera_l``, ...), or given as a YAML path. Checkpoints are read with
``torch.load(weights_only=True)`` and always loaded strictly.

Checkpoint layouts recognised (:func:`read_checkpoint`):

* ``{"model": state_dict}`` (Meta's SAM 2/2.1 releases, MedSAM2, :mod:`medsam2kit.train`);
* ``{"model_state_dict": ...}`` and ``{"state_dict": ...}`` (common training scripts);
* a bare state dict (Medical-SAM2's ``MedSAM2_pretrain.pth``);
* keys prefixed ``module.`` (DDP), ``_orig_mod.`` (``torch.compile``) or ``model.`` are stripped;
* bf16/fp16 tensors are cast to the model's dtype.

A checkpoint that does not fit the model raises :class:`~medsam2kit.errors.CheckpointError`
naming the file, the missing, unexpected and wrongly shaped keys, and, when the keys look like
another SAM2 generation or size, the config that fits (:func:`guess_config`). Nothing is loaded
then. The weights do not encode the input size (sam2 recomputes the RoPE tables of the memory
attention for any size), so the image size of a checkpoint comes from its zoo entry
(:mod:`medsam2kit.models`) or from the caller.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from medsam2kit._files import load_torch
from medsam2kit.backend import SAM2Model, instantiate_model, sam2_config_dirs
from medsam2kit.errors import CheckpointError, ConfigError, InvalidInputError
from medsam2kit.predictor.device import resolve_device

#: sam2's post-processing for video prediction (as in ``sam2.build_sam.build_sam2_video_predictor``),
#: except ``fill_hole_area``, which needs sam2's optional ``_C`` CUDA extension: we set it to 0 in
#: the model and fill holes with scipy on the outputs instead (see
#: :func:`medsam2kit.predictor.fill_small_holes`).
VIDEO_POSTPROCESSING: dict[str, Any] = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 0,
}

#: How a checkpoint file holds its state dict (see :func:`read_checkpoint`).
Layout = Literal["model", "model_state_dict", "state_dict", "bare"]

#: Keys that SAM 2.1 configs have and SAM 2.0 configs lack (``no_obj_embed_spatial: true`` and
#: ``proj_tpos_enc_in_obj_ptrs: true``); found by comparing randomly initialised ``sam2_hiera_t``
#: and ``sam2.1_hiera_t`` models. Every other key and shape is shared by the two generations.
SAM21_ONLY_KEYS: tuple[str, ...] = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")

# Hiera trunk (embed_dim, number of blocks) -> size suffix of the config names.
_TRUNKS: dict[tuple[int, int], str] = {
    (96, 12): "t",  # stages [1, 2, 7, 2]
    (96, 16): "s",  # stages [1, 2, 11, 2]
    (112, 24): "b+",  # stages [2, 3, 16, 3]
    (144, 48): "l",  # stages [2, 6, 36, 4]
    (24, 5): "micro",  # medsam2kit's sam2.1_hiera_micro, stages [1, 1, 2, 1]
}
_PREFIXES = ("module.", "_orig_mod.", "model.")


def _config_dirs() -> list[Path]:
    return [Path(str(importlib.resources.files("medsam2kit") / "configs")), *sam2_config_dirs()]


def config_name(config: str | Path) -> str:
    """The bare name of a config given by name or path (``.yaml`` and folders dropped).

    Example:
        >>> config_name("configs/sam2.1/sam2.1_hiera_t.yaml"), config_name("sam2.1_hiera_t")
        ('sam2.1_hiera_t', 'sam2.1_hiera_t')
    """
    name = Path(str(config)).name
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def available_configs() -> list[str]:
    """Names of the configs that :func:`build_model` finds without a path.

    Example:
        >>> "sam2.1_hiera_t" in available_configs()
        True
    """
    names = {p.stem for d in _config_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def resolve_config(config: str | Path) -> Path:
    """Find a SAM2 config: an existing YAML path, or a name such as ``"sam2.1_hiera_t"``,
    ``"sam2.1_hiera_t.yaml"``, ``"configs/sam2.1/sam2.1_hiera_t.yaml"`` (sam2's own spelling) or
    ``"sam2.1_hiera_micro"`` (shipped with medsam2kit).

    Example:
        >>> resolve_config("configs/sam2.1/sam2.1_hiera_t.yaml").name
        'sam2.1_hiera_t.yaml'
    """
    path = Path(config)
    if path.is_file():
        return path
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    for folder in _config_dirs():
        candidate = folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config: no file or known SAM2 config named {str(config)!r}; "
        f"expected a YAML path or one of {available_configs()}"
    )


def compose_config(config: str | Path, overrides: Mapping[str, Any]) -> Any:
    """Load a SAM2 config (see :func:`resolve_config`) as OmegaConf and set dotted ``overrides``.

    Example:
        >>> compose_config("sam2.1_hiera_micro", {"model.image_size": 256}).model.image_size
        256
    """
    from omegaconf import OmegaConf

    path = resolve_config(config)
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # omegaconf raises several yaml/parse errors
        raise ConfigError(f"config: could not parse {path}: {err}") from err
    if "model" not in cfg:
        raise ConfigError(f"config: {path} has no top-level 'model' entry (is it a SAM2 model config?)")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def image_size_overrides(image_size: int) -> dict[str, Any]:
    """Config overrides for a square input of ``image_size`` px (the memory-attention RoPE
    feature sizes follow it: ``image_size // 16``).

    Example:
        >>> image_size_overrides(512)["model.memory_attention.layer.self_attention.feat_sizes"]
        [32, 32]
    """
    if image_size <= 0 or image_size % 32 != 0:
        # Hiera downsamples by 32 and the memory attention works on image_size/16 tokens.
        raise InvalidInputError(f"image_size: expected a positive multiple of 32, got {image_size}")
    feat = image_size // 16
    return {
        "model.image_size": image_size,
        "model.memory_attention.layer.self_attention.feat_sizes": [feat, feat],
        "model.memory_attention.layer.cross_attention.feat_sizes": [feat, feat],
    }


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`read_checkpoint` found in a checkpoint file.

    Attributes:
        layout: where the state dict was: ``"model"`` (``{"model": sd}``), ``"model_state_dict"``,
            ``"state_dict"`` or ``"bare"``.
        prefix: the key prefix that was stripped (``"module."`` for DDP, ...), ``""`` if none.
        dtypes: the floating dtypes of the stored tensors, e.g. ``("torch.bfloat16",)``.
        num_tensors: number of tensors in the state dict.
        generation: ``"2.0"`` or ``"2.1"`` when the keys look like a SAM2 model, else ``None``.
        trunk: the Hiera size, ``"t"``, ``"s"``, ``"b+"``, ``"l"`` or ``"micro"``, else ``None``.
        config: the config whose keys these are (see :func:`guess_config`), else ``None``.
    """

    layout: Layout
    prefix: str
    dtypes: tuple[str, ...]
    num_tensors: int
    generation: str | None
    trunk: str | None
    config: str | None


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def guess_config(state: Mapping[str, torch.Tensor]) -> str | None:
    """The SAM2 config whose parameters these are, from the keys and the Hiera trunk's shapes.

    SAM 2.1 has the keys in :data:`SAM21_ONLY_KEYS`, SAM 2.0 does not; the trunk size follows from
    the patch-embedding width and the number of Hiera blocks. The input size cannot be read from
    the weights (no parameter depends on it). Returns ``None`` for anything else.

    Example:
        >>> guess_config(build_model("sam2.1_hiera_micro", device="cpu").state_dict())
        'sam2.1_hiera_micro'
        >>> guess_config({"weight": torch.zeros(2)}) is None
        True
    """
    return _signature(state)[2]


def _signature(state: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if not isinstance(patch, torch.Tensor) or patch.dim() != 4:
        return None, None, None
    generation = "2.1" if any(k in state for k in SAM21_ONLY_KEYS) else "2.0"
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    trunk = _TRUNKS.get((int(patch.shape[0]), max(blocks) + 1 if blocks else 0))
    if trunk is None:
        return generation, None, None
    if trunk == "micro":
        return generation, trunk, "sam2.1_hiera_micro" if generation == "2.1" else None
    return generation, trunk, f"{'sam2.1' if generation == '2.1' else 'sam2'}_hiera_{trunk}"


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read a checkpoint's state dict, whatever its layout (see the module docstring).

    Uses ``torch.load(weights_only=True)``; prefixes ``module.``/``_orig_mod.``/``model.`` shared by
    every key are stripped; tensors keep their stored dtype (the loader casts them).

    Raises:
        MissingFileError: no such file.
        FileFormatError: not a readable torch file.
        CheckpointError: the file holds no state dict of tensors.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"module.w": torch.ones(2, dtype=torch.bfloat16)}, p)
        >>> state, info = read_checkpoint(p)
        >>> list(state), info.layout, info.prefix, info.dtypes
        (['w'], 'bare', 'module.', ('torch.bfloat16',))
    """
    path = Path(checkpoint)
    obj = load_torch(path, what="torch checkpoint", name="checkpoint")
    layout: Layout = "bare"
    state: Any = obj
    if isinstance(obj, Mapping):
        # a wrapper key holding a mapping (a bare state dict maps names to tensors only)
        wrappers: tuple[Layout, ...] = ("model", "model_state_dict", "state_dict")
        for key in wrappers:
            if _is_state_dict(obj.get(key)):
                layout, state = key, obj[key]
                break
    if not _is_state_dict(state):
        found = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint: {path} holds no state dict of tensors; expected {{'model': state_dict}}, "
            f"{{'model_state_dict': ...}}, {{'state_dict': ...}} or a bare state dict, found {found}"
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    stripped = ""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                stripped += prefix
                changed = True
    dtypes = tuple(sorted({str(v.dtype) for v in tensors.values() if v.is_floating_point()}))
    generation, trunk, config = _signature(tensors)
    info = CheckpointInfo(layout=layout, prefix=stripped, dtypes=dtypes, num_tensors=len(tensors),
                          generation=generation, trunk=trunk, config=config)
    return tensors, info


def inspect_checkpoint(checkpoint: str | Path) -> CheckpointInfo:
    """Layout, dtypes and the guessed SAM2 config of a checkpoint file (see :func:`read_checkpoint`).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"model": build_model("sam2.1_hiera_micro", device="cpu").state_dict()}, p)
        >>> info = inspect_checkpoint(p)
        >>> info.layout, info.generation, info.config
        ('model', '2.1', 'sam2.1_hiera_micro')
    """
    return read_checkpoint(checkpoint)[1]


def _show(keys: list[str], limit: int = 6) -> str:
    return f"{len(keys)} {keys[:limit]}{' ...' if len(keys) > limit else ''}"


def load_state(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    config: str | Path | None = None,
) -> None:
    """Load ``state`` into ``model`` strictly; floating tensors are cast to the model's dtypes.

    Args:
        model: the model.
        state: a state dict (as from :func:`read_checkpoint`).
        source: what the weights are, for messages (the file, and the zoo entry if any).
        config: the model's config name, for messages.

    Raises:
        CheckpointError: missing, unexpected or wrongly shaped keys (the first few of each, and
            their counts) and, when the keys look like another SAM2 config, which one; nothing is
            loaded then.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> load_state(m, {k: v.bfloat16() for k, v in m.state_dict().items()}, source="example")
        >>> m.weight.dtype
        torch.float32
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:
        shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in wrong_shape[:4]]
        target = f"config {config}" if config is not None else "the model"
        message = (
            f"checkpoint: {source} does not fit {target}: missing keys {_show(missing)}; "
            f"unexpected keys {_show(unexpected)}; shape mismatches {len(wrong_shape)} {shapes}"
            f"{' ...' if len(wrong_shape) > 4 else ''}."
        )
        generation, trunk, guess = _signature(state)
        wanted = _signature(expected)
        if guess is not None and (config is None or config_name(config) != guess):
            message += (
                f" These keys look like SAM {generation} hiera-{trunk}: use config {guess!r} "
                f"(from_pretrained(path, config={guess!r}), or --config {guess} on the command line)."
            )
        elif generation is not None and wanted[0] is not None and generation != wanted[0]:
            message += f" These keys look like SAM {generation}, the config is SAM {wanted[0]}."
        raise CheckpointError(message + " Nothing was loaded.")
    cast = {}
    for key, value in state.items():
        target_t = expected[key]
        cast[key] = value.to(target_t.dtype) if value.is_floating_point() and target_t.is_floating_point() else value
    model.load_state_dict(cast, strict=True)


def load_checkpoint(
    model: torch.nn.Module,
    checkpoint: str | Path,
    *,
    config: str | Path | None = None,
    entry: str | None = None,
) -> CheckpointInfo:
    """Load a SAM2 checkpoint strictly, whatever its layout (see :func:`read_checkpoint`).

    Args:
        model: the model to load into.
        checkpoint: the file.
        config: the model's config name, for messages.
        entry: the model-zoo entry the file belongs to, for messages.

    Returns:
        What was found in the file (layout, prefix, dtypes, guessed config).

    Raises:
        CheckpointError: the checkpoint does not fit the model (the message lists the keys and
            suggests the fitting config); nothing is loaded then.

    Example:
        >>> import tempfile, os
        >>> m = torch.nn.Linear(2, 2)
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"model": m.state_dict()}, p)
        >>> load_checkpoint(m, p).layout
        'model'
    """
    state, info = read_checkpoint(checkpoint)
    source = f"{checkpoint}" + (f" (model zoo entry {entry!r})" if entry else "")
    load_state(model, state, source=source, config=config)
    return info


def build_model(
    config: str | Path,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SAM2Model:
    """Build sam2's video predictor model (real sam2 classes) from a config and a checkpoint.

    Args:
        config: a YAML path or a config name (see :func:`resolve_config`).
        checkpoint: ``sam2.1_hiera_*.pt`` as released by Meta, a ``{"model": state_dict}`` file
            written by :mod:`medsam2kit.train`, any layout :func:`read_checkpoint` knows, or
            ``None`` for random initialisation. For files by name, see
            :func:`medsam2kit.models.load_model`.
        device: ``"auto"`` (cuda, then mps, then cpu) or an explicit device.
        image_size: the model's square input size; changes the memory-attention feature sizes
            with it. ``None`` keeps the config's (1024 for Meta's configs).
        overrides: dotted config keys to set, e.g. ``{"model.num_maskmem": 5}``; applied last.

    Returns:
        The model in eval mode on ``device`` (weights in fp32).

    Example:
        >>> m = build_model("sam2.1_hiera_micro", device="cpu")
        >>> m.image_size
        128
    """
    dev = resolve_device(device)
    all_overrides: dict[str, Any] = dict(VIDEO_POSTPROCESSING)
    if image_size is not None:
        all_overrides.update(image_size_overrides(int(image_size)))
    all_overrides.update(overrides or {})
    cfg = compose_config(config, all_overrides)
    try:
        model = instantiate_model(cfg.model)
    except Exception as err:  # hydra wraps constructor errors in its own types
        raise ConfigError(f"config: could not build a SAM2 model from {config}: {err}") from err
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, config=config)
    return model.to(dev).eval()


__all__ = [
    "SAM21_ONLY_KEYS",
    "VIDEO_POSTPROCESSING",
    "CheckpointInfo",
    "Layout",
    "available_configs",
    "build_model",
    "compose_config",
    "config_name",
    "guess_config",
    "image_size_overrides",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_state",
    "read_checkpoint",
    "resolve_config",
]
