"""Device and precision policy: where the model runs and in which precision.

``device="auto"`` picks cuda, then mps, then cpu; bf16 autocast on CUDA (sam2's recommended
setting), fp32 elsewhere (bf16 autocast on CPU is about 11x slower).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from medsam2kit.errors import DeviceError


@dataclass(frozen=True)
class PrecisionPolicy:
    """Where and in which precision the model runs.

    Attributes:
        device: the torch device of the model and its computations.
        autocast_dtype: ``torch.bfloat16`` on CUDA (sam2's recommended setting), ``None`` (plain
            fp32) on CPU and MPS.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for model calls (a no-op context when running in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` (cuda, then mps, then cpu) or an explicit name into an available device.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device: expected 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: 'cuda' was requested but torch.cuda.is_available() is False")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device: 'mps' was requested but torch.backends.mps.is_available() is False")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device: expected a cpu, cuda or mps device, got {dev}")
    return dev


def precision_policy(device: torch.device) -> PrecisionPolicy:
    """bf16 autocast on CUDA, fp32 on CPU and MPS.

    Example:
        >>> precision_policy(torch.device("cpu")).autocast_dtype is None
        True
    """
    return PrecisionPolicy(device=device, autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)



__all__ = ["PrecisionPolicy", "precision_policy", "resolve_device"]
