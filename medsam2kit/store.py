"""An on-disk store of image-encoder features: encode a volume once, segment it many times.

The image encoder is most of SAM2's cost; a second run on the same frames (another prompt,
another coarse network, another label) need not pay it again. A :class:`FeatureStore` keeps the
encoder's output of every frame as one safetensors file per frame, in a folder per model:

``<root>/<model signature>/<frame signature>.safetensors`` (the FPN levels of that frame) and
``<root>/<model signature>/pos.safetensors`` (the positional encodings, the same for every frame).

* The **model signature** is a sha256 of the image encoder's weights, the input size and the
  precision the encoder runs in (fp32, or bf16 autocast on CUDA): other weights, another size or
  another device precision never share features.
* The **frame signature** is a sha256 of the frame as the encoder sees it (the normalised
  ``(3, S, S)`` float32 pixels): another window, axis or resize is another frame.
* Every file records both signatures, its shapes and dtypes; a file that does not match what is
  expected, or cannot be read, is ignored with a :class:`FeatureStoreWarning` and recomputed
  (then rewritten), never silently reused. Files are written atomically.
* ``dtype=torch.bfloat16`` halves the disk (the features then differ from recomputed ones by
  bf16 rounding); the default keeps them as produced, so a stored run equals a fresh one bitwise.

Use it through the predictor: ``SAM2Predictor(model, feature_store=FeatureStore("features/"))``;
every session, ``predict_slices`` and FATE-SAM query then read and write it, and
``session.cache.stats`` counts ``store_hits`` beside ``encoder_calls``.

Example:
    >>> import tempfile, torch
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu",
    ...                                  feature_store=FeatureStore(tempfile.mkdtemp()))
    >>> frames = torch.zeros(3, 3, 128, 128)
    >>> first = pred.start(frames); first.encode_all()
    >>> second = pred.start(frames); second.encode_all()
    >>> first.encoder_calls, second.encoder_calls, second.cache.stats.store_hits
    (3, 0, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from medsam2kit._files import atomic_write
from medsam2kit.errors import InvalidInputError, InvalidTypeError

_FORMAT = "medsam2kit-features-1"


class FeatureStoreWarning(UserWarning):
    """A stored feature file did not match (or could not be read); it is recomputed."""


def tensor_signature(tensors: list[torch.Tensor], *extra: str) -> str:
    """A sha256 (hex) of the bytes, shapes and dtypes of ``tensors`` and of ``extra`` strings.

    Example:
        >>> tensor_signature([torch.zeros(2)]) == tensor_signature([torch.zeros(2)])
        True
    """
    digest = hashlib.sha256()
    for t in tensors:
        c = t.detach().contiguous().cpu()
        digest.update(f"{tuple(c.shape)}{c.dtype};".encode())
        digest.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    for e in extra:
        digest.update(e.encode())
    return digest.hexdigest()


def model_signature(image_encoder: torch.nn.Module, *, image_size: int, precision: str) -> str:
    """The signature of what an encoder produces: its weights, the input size and the precision.

    Example:
        >>> m = torch.nn.Linear(2, 2)
        >>> model_signature(m, image_size=128, precision="fp32") != model_signature(m, image_size=256, precision="fp32")
        True
    """
    state = image_encoder.state_dict()
    return tensor_signature([state[k] for k in sorted(state)], *sorted(state), f"size={image_size}",
                            f"precision={precision}")


@dataclass(frozen=True)
class FeatureStore:
    """A folder of encoder features (see the module docstring).

    Args:
        root: the folder (created on the first write).
        dtype: storage dtype of the FPN features; ``None`` keeps them as produced (exact).
    """

    root: Path
    dtype: torch.dtype | None = None

    def __init__(self, root: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise InvalidTypeError(f"root: expected a folder path, got {type(root).__name__}")
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise InvalidInputError(f"dtype: expected None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        if Path(root).exists() and not Path(root).is_dir():
            raise InvalidInputError(f"root: {root} exists and is not a folder")
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(self, "dtype", dtype)

    def bind(self, model_sig: str) -> BoundFeatureStore:
        """The part of the store that holds one model's features."""
        return BoundFeatureStore(self, model_sig)


@dataclass(frozen=True)
class BoundFeatureStore:
    """One model's features in a :class:`FeatureStore` (what a feature cache reads and writes)."""

    store: FeatureStore
    model_sig: str

    @property
    def folder(self) -> Path:
        return self.store.root / self.model_sig[:32]

    def frame_signature(self, frame: torch.Tensor) -> str:
        """The signature of a ``(3, S, S)`` normalised frame."""
        return tensor_signature([frame.float()])

    def load(self, frame_sig: str, *, levels: int | None = None) -> tuple[list[torch.Tensor], torch.dtype] | None:
        """The stored FPN levels of a frame and the dtype the encoder produced them in, or
        ``None`` when absent or not matching (a warning names the file)."""
        path = self.folder / f"{frame_sig}.safetensors"
        if not path.is_file():
            return None
        found = self._read(path, kind="frame", sig=frame_sig)
        if found is None:
            return None
        tensors, meta = found
        n = int(meta.get("levels", -1))
        if n < 1 or (levels is not None and n != levels) or any(f"fpn{i}" not in tensors for i in range(n)):
            self._reject(path, f"holds {n} feature levels, expected {levels if levels is not None else '>= 1'}")
            return None
        produced = _dtype(meta.get("produced", ""))
        if produced is None:
            self._reject(path, f"records an unknown dtype {meta.get('produced')!r}")
            return None
        return [tensors[f"fpn{i}"] for i in range(n)], produced

    def save(self, frame_sig: str, fpn: list[torch.Tensor]) -> None:
        """Store one frame's FPN levels (each ``(1, C, H, W)``), atomically."""
        produced = str(fpn[0].dtype).replace("torch.", "")
        stored = {f"fpn{i}": (f.to(self.store.dtype) if self.store.dtype else f).detach().contiguous().cpu()
                  for i, f in enumerate(fpn)}
        meta = {"levels": str(len(fpn)), "produced": produced}
        self._write(self.folder / f"{frame_sig}.safetensors", stored, kind="frame", sig=frame_sig, meta=meta)

    def load_pos(self) -> list[torch.Tensor] | None:
        """The stored positional encodings, or ``None``."""
        path = self.folder / "pos.safetensors"
        if not path.is_file():
            return None
        found = self._read(path, kind="pos", sig="pos")
        if found is None:
            return None
        tensors, meta = found
        n = int(meta.get("levels", -1))
        if n < 1 or any(f"pos{i}" not in tensors for i in range(n)):
            self._reject(path, "holds no positional encodings")
            return None
        return [tensors[f"pos{i}"] for i in range(n)]

    def save_pos(self, pos: list[torch.Tensor]) -> None:
        """Store the positional encodings (each ``(1, C, H, W)``) once."""
        if (self.folder / "pos.safetensors").is_file():
            return
        tensors = {f"pos{i}": p[:1].detach().contiguous().cpu() for i, p in enumerate(pos)}
        self._write(self.folder / "pos.safetensors", tensors, kind="pos", sig="pos", meta={"levels": str(len(pos))})

    def _read(self, path: Path, *, kind: str, sig: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            self._reject(path, f"cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
            return None
        expected = {"format": _FORMAT, "kind": kind, "model": self.model_sig, "frame": sig}
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            self._reject(path, f"records {json.dumps(wrong)} instead of the expected signatures")
            return None
        return tensors, meta

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], *, kind: str, sig: str, meta: dict[str, str]) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        full = {"format": _FORMAT, "kind": kind, "model": self.model_sig, "frame": sig, **meta}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=full), suffix=".safetensors",
                     name="feature store")

    @staticmethod
    def _reject(path: Path, why: str) -> None:
        warnings.warn(f"feature store: {path} {why}; recomputing it", FeatureStoreWarning, stacklevel=4)


def _dtype(name: str) -> torch.dtype | None:
    value = getattr(torch, name, None) if name else None
    return value if isinstance(value, torch.dtype) else None


__all__ = ["BoundFeatureStore", "FeatureStore", "FeatureStoreWarning", "model_signature", "tensor_signature"]
