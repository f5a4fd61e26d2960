"""SAM2 configs and checkpoints: find a config, compose it, build the model, load weights.

Configs are found by name in medsam2kit's own folder (``sam2.1_hiera_micro``) and in sam2's
(``sam2.1_hiera_t``, ``sam2_hiera_l``, ...), or given as a YAML path. Checkpoints are read with
``torch.load(weights_only=True)`` and loaded strictly.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _config_dirs() -> list[Path]:
    return [Path(str(importlib.resources.files("medsam2kit") / "configs")), *sam2_config_dirs()]


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
    if image_size <= 0 or image_size % 32 != 0:
        # Hiera downsamples by 32 and the memory attention works on image_size/16 tokens.
        raise InvalidInputError(f"image_size: expected a positive multiple of 32, got {image_size}")
    feat = image_size // 16
    return {
        "model.image_size": image_size,
        "model.memory_attention.layer.self_attention.feat_sizes": [feat, feat],
        "model.memory_attention.layer.cross_attention.feat_sizes": [feat, feat],
    }

def load_checkpoint(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load a SAM2 checkpoint (``{"model": state_dict}`` as Meta releases it, or a bare state dict).

    Uses ``torch.load(weights_only=True)``. Raises :class:`CheckpointError` listing missing and
    unexpected keys when the checkpoint does not fit the model (nothing is loaded then).

    Example:
        >>> import tempfile, os
        >>> m = torch.nn.Linear(2, 2)
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"model": m.state_dict()}, p)
        >>> load_checkpoint(m, p)
    """
    path = Path(checkpoint)
    obj = load_torch(path, what="torch checkpoint", name="checkpoint")
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"checkpoint: {path} holds neither {{'model': state_dict}} nor a state dict of tensors"
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:

        def show(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:8]}{' ...' if len(keys) > 8 else ''}"

        raise CheckpointError(
            f"checkpoint: {path} does not match the model config: missing keys {show(missing)}; "
            f"unexpected keys {show(unexpected)}; shape mismatches {show(wrong_shape)}"
        )
    model.load_state_dict(state, strict=True)



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
            written by :mod:`medsam2kit.train`, or ``None`` for random initialisation.
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
        load_checkpoint(model, checkpoint)
    return model.to(dev).eval()


__all__ = [
    "available_configs",
    "build_model",
    "VIDEO_POSTPROCESSING",
    "compose_config",
    "image_size_overrides",
    "load_checkpoint",
    "resolve_config",
]
