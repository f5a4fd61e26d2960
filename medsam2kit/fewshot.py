"""FATE-SAM: few-shot, training-free, prompt-free 3D segmentation from a bank of support slices.

A frozen SAM2 segments a query volume with no prompt at all. Every slice of a few labelled
support volumes is encoded once into a :class:`SupportBank` (image features for retrieval, and
per label the memory-encoder output of the slice with its mask, the "anatomical memory").
For each query slice the :class:`SupportMemoryAssembler` retrieves the top-k support slices that
hold the label (mean L1 over the three FPN levels as the public FATE-SAM code does, or cosine as
the paper says), injects them as SAM2 conditioning memory, adds the previously predicted
neighbouring query slices as non-conditioning memory ("volumetric memory", up to six mask
memories and sam2's usual object pointers), and decodes the slice. Slices are visited from the
middle (or the best-retrieved slice) forward (increasing slice index), then in reverse, as
:meth:`~medsam2kit.predictor.Session.propagate` does for ``"both"``; each label is its own object.

Temporal keys (our design, see ``docs/fewshot.md``): each pass is laid out as sam2 would see a
video ``[support_1 .. support_k, q_start, q_next, ...]`` tracked forward, so supports always lie
in the past: their object pointers are kept in both passes (the public code appends supports
after the query, and sam2 drops their pointers in forward passes), and a query slice at slice
distance d from the previous ones sees them at temporal distance d.

Example:
    >>> from medsam2kit.fewshot import SupportBank, SupportMemoryAssembler
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
    >>> image, label = ellipsoid_phantom((8, 48, 40), (3.0, 1.0, 1.0), rng=1)
    >>> bank = SupportBank.build(pred, [(image, label)])
    >>> bank.labels, len(bank)
    ((1, 2), 6)
    >>> query, _ = ellipsoid_phantom((8, 48, 40), (3.0, 1.0, 1.0), rng=2)
    >>> result = SupportMemoryAssembler(pred, bank).segment(query)
    >>> result.labels.shape == query.shape, result.encoder_calls
    (True, 8)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from medsam2kit._files import atomic_write, load_torch
from medsam2kit._validate import check_positive
from medsam2kit.adapt import AdaptConfig, adapt_to_supports
from medsam2kit.errors import (
    CheckpointError,
    FileFormatError,
    InvalidInputError,
    InvalidTypeError,
    ShapeMismatchError,
)
from medsam2kit import backend
from medsam2kit.predictor import Direction, FeatureCache, SAM2Predictor
from medsam2kit.prompts import signed_distance
from medsam2kit.register import RegistrationConfig, align_supports, check_support_pair, held_by_supports, held_near
from medsam2kit.sequencer import PercentileWindow, WindowSpec, sequence_volume
from medsam2kit.volume import Volume, check_same_grid

Distance = Literal["l1", "cosine"]
Start = Literal["middle", "best"]

_FORMAT_VERSION = 1

#: The assembler options :class:`FewShotPipeline` uses with ``align`` unless given: once the
#: supports lie on the query's grid, support slice ``z`` shows what query slice ``z`` holds, so
#: each query slice takes the support slice at its own position (the most similar one when
#: several supports hold the label there) and no previously predicted query slice as memory.
#: Chosen on the validation hippocampus (docs/fewshot.md, "Registering the supports").
ALIGNED_RETRIEVAL: Mapping[str, Any] = MappingProxyType({"top_k": 1, "position_weight": 100.0, "max_volumetric": 0})
#: With registered supports, how far (mm) from where at least half of them hold a label FATE-SAM
#: may place it (:func:`segment_registered`). Chosen on the validation hippocampus pairs (one
#: support registered onto the other case: labels' mean Dice 0.434 -> 0.781, adapted to the
#: support 0.492 -> 0.688) and the validation phantoms (0.772 -> 0.965, no object lower); 1 mm
#: gave 0.788 / 0.694 / 0.964, 3 and 5 mm less (``docs/fewshot.md``).
NEAR_SUPPORTS_MM = 2.0


@dataclass(frozen=True)
class SupportPrior:
    """Where registered supports hold a label, as a prior on FATE-SAM's logits
    (:func:`segment_registered`, :func:`add_support_prior`).

    Each label's logits gain ``strength * tanh(s / edge_mm)``, ``s`` the signed distance in mm
    (3D, the query's spacing) to the voxels where at least half of the supports hold it
    (positive inside). SAM2 still decides on which slices the label is: where it finds no
    object its logits are sam2's "no object" constant (-1024), far below any prior. Chosen on
    the validation hippocampus (one support; plain and adapted FATE-SAM 0.513 -> 0.650) and the
    validation phantoms (no object lower by more than 0.006; docs/fewshot.md).

    Attributes:
        strength: the prior's logit far inside (and, negated, far outside) the supports' label.
        edge_mm: the distance from the supports' outline over which it saturates.
    """

    strength: float = 4.0
    edge_mm: float = 3.0

    def __post_init__(self) -> None:
        for name in ("strength", "edge_mm"):
            check_positive(getattr(self, name), f"SupportPrior.{name}")


class MissingLabelWarning(UserWarning):
    """A requested label is in no support slice; its output is empty."""


@dataclass(frozen=True)
class SupportSlice:
    """Where a bank entry came from.

    Attributes:
        volume: index of the support volume in the order given to :meth:`SupportBank.build`.
        slice_index: slice index along that volume's slicing axis.
        position: relative position of the slice in its volume, ``slice_index / (D - 1)`` in [0, 1].
        labels: labels present in the slice.
    """

    volume: int
    slice_index: int
    position: float
    labels: tuple[int, ...]


class SupportBank:
    """Encoded support slices: retrieval features and, per label, SAM2 conditioning memories.

    Build it once with :meth:`build` (each support slice goes through the image encoder once),
    save it with :meth:`save`, and reuse it for any number of query volumes.

    Attributes:
        slices: one :class:`SupportSlice` per foreground support slice.
        descriptors: per FPN level, ``(N, C_l, H_l, W_l)`` features of the N slices.
        memories: per label, a dict of tensors over the slices holding the label:
            ``rows`` (n,) bank rows, ``maskmem_features`` (n, C_mem, S/16, S/16),
            ``obj_ptr`` (n, C), ``object_score_logits`` (n, 1), ``pred_masks`` (n, 1, S/4, S/4).
        maskmem_pos_enc: the memory positional encoding (the same for every memory).
        image_size: the model size ``S`` the bank was built at.
        slice_direction: unit world vector of the slicing axis (queries are sliced along the
            axis closest to it).
        fingerprint: a checksum of the model weights, checked when the bank is used.
        source: the file it was loaded from (for messages), else ``None``.
    """

    def __init__(
        self,
        *,
        slices: Sequence[SupportSlice],
        descriptors: Sequence[torch.Tensor],
        memories: Mapping[int, Mapping[str, torch.Tensor]],
        maskmem_pos_enc: Sequence[torch.Tensor],
        image_size: int,
        slice_direction: np.ndarray,
        fingerprint: float,
        source: str | None = None,
    ) -> None:
        self.source = source
        self.slices = tuple(slices)
        self.descriptors = [d.cpu() for d in descriptors]
        self.memories = {int(k): {n: t.cpu() for n, t in v.items()} for k, v in memories.items()}
        self.maskmem_pos_enc = [p.cpu() for p in maskmem_pos_enc]
        self.image_size = int(image_size)
        self.slice_direction = np.asarray(slice_direction, dtype=np.float64)
        self.fingerprint = float(fingerprint)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def labels(self) -> tuple[int, ...]:
        """The labels that at least one support slice holds."""
        return tuple(sorted(self.memories))

    @property
    def positions(self) -> np.ndarray:
        """``(N,)`` relative slice positions in [0, 1]."""
        return np.array([s.position for s in self.slices], dtype=np.float64)

    @classmethod
    def build(
        cls,
        predictor: SAM2Predictor,
        supports: Sequence[tuple[Volume, Volume]],
        *,
        axis: int | None = None,
        window: WindowSpec = PercentileWindow(),
        descriptor_dtype: torch.dtype = torch.float32,
    ) -> SupportBank:
        """Encode the supports: every foreground slice once through the image encoder.

        Args:
            predictor: the frozen SAM2 predictor (its weights define the bank).
            supports: ``(image, label)`` pairs on the same grid; labels are non-negative
                integers (0 background).
            axis: slicing axis of the first support (default from its geometry); the others are
                sliced along their axis closest to the same world direction.
            window: intensity window of each support (see :mod:`medsam2kit.sequencer`).
            descriptor_dtype: storage dtype of the retrieval features (bf16 halves the bank).

        Returns:
            The :class:`SupportBank`.
        """
        if not supports:
            raise InvalidInputError("supports: expected at least one (image, label) pair, got none")
        direction: np.ndarray | None = None
        slices: list[SupportSlice] = []
        descriptors: list[list[torch.Tensor]] = []
        per_label: dict[int, dict[str, list[torch.Tensor]]] = {}
        pos_enc: list[torch.Tensor] | None = None
        for v, pair in enumerate(supports):
            image, label = check_support_pair(pair, v)
            if direction is None:
                ax = axis if axis is not None else _default_axis(image)
                direction = _unit(image.affine[:3, ax])
            else:
                ax = axis_along(image.affine, direction)
            seq = sequence_volume(image, axis=ax, image_size=predictor.image_size, window=window)
            lab = np.moveaxis(label.array, ax, 0)
            session = predictor.start(seq)
            chosen: list[tuple[int, int, tuple[int, ...]]] = []
            for z in range(lab.shape[0]):
                present = tuple(int(x) for x in np.unique(lab[z]) if x > 0)
                if not present:
                    continue
                t = seq.frame_of_slice(z)
                for lab_id in present:
                    session.add_mask(t, seq.mask_to_frame(lab[z] == lab_id), obj_id=lab_id)
                chosen.append((z, t, present))
            if not chosen:
                continue
            memories = session.conditioning_memories()
            depth = max(lab.shape[0] - 1, 1)
            for z, t, present in chosen:
                row = len(slices)
                slices.append(SupportSlice(volume=v, slice_index=z, position=z / depth, labels=present))
                _, feats = session.cache.features(t)
                descriptors.append([f[0].to(descriptor_dtype).cpu() for f in feats["backbone_fpn"]])
                for lab_id in present:
                    out = memories[lab_id][t]
                    entry = per_label.setdefault(lab_id, {k: [] for k in _MEMORY_KEYS})
                    entry["rows"].append(torch.tensor(row))
                    entry["maskmem_features"].append(out["maskmem_features"][0].cpu())
                    entry["obj_ptr"].append(out["obj_ptr"][0].cpu())
                    entry["object_score_logits"].append(out["object_score_logits"][0].cpu())
                    entry["pred_masks"].append(out["pred_masks"][0].cpu())
                    pos_enc = [p[:1].cpu() for p in out["maskmem_pos_enc"]]
        if not slices or pos_enc is None or direction is None:
            raise InvalidInputError("supports: no support slice holds a label > 0; expected labelled supports")
        return cls(
            slices=slices,
            descriptors=[torch.stack([d[level] for d in descriptors]) for level in range(len(descriptors[0]))],
            memories={k: {n: torch.stack(t) for n, t in v.items()} for k, v in per_label.items()},
            maskmem_pos_enc=pos_enc,
            image_size=predictor.image_size,
            slice_direction=direction,
            fingerprint=model_fingerprint(predictor.model),
        )

    def save(self, path: str | Path) -> Path:
        """Write the bank to one ``.pt`` file (atomically: temporary file, then rename).

        Example:
            >>> import tempfile, os
            >>> # bank.save(os.path.join(tempfile.mkdtemp(), "bank.pt"))
        """
        payload = {
            "format": _FORMAT_VERSION,
            "slices": [[s.volume, s.slice_index, s.position, list(s.labels)] for s in self.slices],
            "descriptors": self.descriptors,
            "memories": {str(k): v for k, v in self.memories.items()},
            "maskmem_pos_enc": self.maskmem_pos_enc,
            "image_size": self.image_size,
            "slice_direction": torch.from_numpy(self.slice_direction),
            "fingerprint": self.fingerprint,
        }
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | Path) -> SupportBank:
        """Read a bank written by :meth:`save` (``torch.load(weights_only=True)``).

        Every key, tuple and tensor shape is checked, so a damaged or foreign file is one
        :class:`~medsam2kit.errors.FileFormatError` naming the file and the first problem.

        Raises:
            MissingFileError: no such file.
            FileFormatError: not a support bank, or a malformed one (missing keys, wrong tuples,
                inconsistent tensor shapes).
        """
        src = Path(path)
        obj = load_torch(src, what="support bank")
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT_VERSION:
            raise FileFormatError(f"path: {src} is not a medsam2kit support bank (format {_FORMAT_VERSION})")
        return cls(**_checked_payload(obj, src), source=str(src))


_MEMORY_KEYS = ("rows", "maskmem_features", "obj_ptr", "object_score_logits", "pred_masks")
_MEMORY_NDIM = {"rows": 1, "maskmem_features": 4, "obj_ptr": 2, "object_score_logits": 2, "pred_masks": 4}


def _checked_payload(obj: dict[str, Any], src: Path) -> dict[str, Any]:
    """The constructor arguments of a loaded bank, every key and shape checked (errors name ``src``)."""

    def bad(problem: str) -> FileFormatError:
        return FileFormatError(f"path: {src} is a malformed support bank: {problem}")

    missing = [k for k in ("slices", "descriptors", "memories", "maskmem_pos_enc", "image_size",
                           "slice_direction", "fingerprint") if k not in obj]
    if missing:
        raise bad(f"missing keys {missing}")
    slices: list[SupportSlice] = []
    raw_slices = obj["slices"]
    if not isinstance(raw_slices, (list, tuple)) or not raw_slices:
        raise bad(f"'slices' must be a non-empty list, got {type(raw_slices).__name__}")
    for i, entry in enumerate(raw_slices):
        try:
            a, b, c, d = entry
            slices.append(SupportSlice(int(a), int(b), float(c), tuple(int(x) for x in d)))
        except (TypeError, ValueError):
            raise bad(f"slices[{i}] must be [volume, slice_index, position, labels], got {entry!r:.80}") from None
    n = len(slices)
    descriptors = obj["descriptors"]
    if (not isinstance(descriptors, (list, tuple)) or not descriptors
            or not all(isinstance(d, torch.Tensor) and d.ndim == 4 and d.shape[0] == n for d in descriptors)):
        raise bad(f"'descriptors' must be a non-empty list of (N={n}, C, H, W) tensors")
    memories = obj["memories"]
    if not isinstance(memories, dict) or not memories:
        raise bad("'memories' must be a non-empty dict {label: tensors}")
    checked: dict[int, dict[str, torch.Tensor]] = {}
    for key, mem in memories.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise bad(f"memory label {key!r} is not an integer") from None
        if not isinstance(mem, dict) or set(mem) != set(_MEMORY_KEYS):
            got = sorted(mem) if isinstance(mem, dict) else type(mem).__name__
            raise bad(f"memories[{label}] must hold {list(_MEMORY_KEYS)}, got {got}")
        count = mem["rows"].shape[0] if isinstance(mem["rows"], torch.Tensor) and mem["rows"].ndim == 1 else -1
        for name, ndim in _MEMORY_NDIM.items():
            t = mem[name]
            if not isinstance(t, torch.Tensor) or t.ndim != ndim or t.shape[0] != count or count < 1:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise bad(f"memories[{label}][{name!r}] must be a {ndim}-D tensor over {max(count, 1)} slices, got {shape}")
        rows = mem["rows"]
        if rows.dtype.is_floating_point or rows.dtype == torch.bool or int(rows.min()) < 0 or int(rows.max()) >= n:
            raise bad(f"memories[{label}]['rows'] must be integer rows in [0, {n}), got {rows.tolist()[:10]}")
        checked[label] = dict(mem)
    pos_enc = obj["maskmem_pos_enc"]
    if not isinstance(pos_enc, (list, tuple)) or not pos_enc or not all(isinstance(p, torch.Tensor) for p in pos_enc):
        raise bad("'maskmem_pos_enc' must be a non-empty list of tensors")
    size = obj["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise bad(f"'image_size' must be a positive integer, got {size!r:.40}")
    direction = obj["slice_direction"]
    if (not isinstance(direction, torch.Tensor) or tuple(direction.shape) != (3,)
            or not bool(torch.isfinite(direction).all()) or float(direction.abs().sum()) == 0.0):
        raise bad("'slice_direction' must be a tensor of 3 finite numbers, not all 0")
    fingerprint = obj["fingerprint"]
    if isinstance(fingerprint, bool) or not isinstance(fingerprint, (int, float)) or not np.isfinite(fingerprint):
        raise bad(f"'fingerprint' must be a finite number, got {fingerprint!r:.40}")
    return {"slices": slices, "descriptors": list(descriptors), "memories": checked, "maskmem_pos_enc": list(pos_enc),
            "image_size": size, "slice_direction": direction.double().numpy(), "fingerprint": float(fingerprint)}


def _bank_name(bank: SupportBank) -> str:
    return f"bank {bank.source}" if bank.source else "bank"


@dataclass(frozen=True, eq=False)
class FewShotResult:
    """The segmentation of one query volume.

    Attributes:
        labels: the label map on the query's grid and geometry (uint8/int16 values of the bank's labels).
        logits: per label, float32 logits on the query grid (``-inf`` where never predicted).
        retrieved: per label, ``(D, k)`` bank rows used for each query slice (-1: none).
        start_slice: per label, the slice the passes started from.
        encoder_calls: image-encoder passes spent on the query (1 per slice).
        axis: the query's axis it was sliced along (``retrieved`` and ``start_slice`` count
            slices along it).
    """

    labels: Volume
    logits: Mapping[int, Volume]
    retrieved: Mapping[int, np.ndarray]
    start_slice: Mapping[int, int]
    encoder_calls: int
    axis: int


class SupportMemoryAssembler:
    """Turns retrieved supports into SAM2 memory and segments query volumes without prompts.

    Args:
        predictor: the same frozen SAM2 the bank was built with.
        bank: the :class:`SupportBank`.
        top_k: supports per query slice and label (FATE-SAM: 3).
        distance: ``"l1"`` (mean absolute difference averaged over the FPN levels, as the public
            code) or ``"cosine"`` (1 - cosine similarity of the flattened levels, as the paper).
        position_weight: weight of the relative-slice-position prior added to the normalised
            distance (0 disables): ``score = d / median(d) + w * |pos_q - pos_s|``.
        start: ``"middle"`` slice, or ``"best"``: the slice whose top-k supports are closest.
        direction: ``"both"`` (forward from the start slice, then reverse, as the predictor's
            ``propagate``), ``"forward"`` (increasing slice index) or ``"reverse"``.
        max_volumetric: how many previously predicted query slices are kept as memory (sam2
            attends to at most six mask memories and fifteen object pointers).
    """

    def __init__(
        self,
        predictor: SAM2Predictor,
        bank: SupportBank,
        *,
        top_k: int = 3,
        distance: Distance = "l1",
        position_weight: float = 0.0,
        start: Start | int = "middle",
        direction: Direction = "both",
        max_volumetric: int = 15,
    ) -> None:
        if not isinstance(bank, SupportBank):
            raise InvalidTypeError(f"bank: expected a SupportBank, got {type(bank).__name__}")
        name = _bank_name(bank)
        if bank.image_size != predictor.image_size:
            raise InvalidInputError(
                f"{name}: built at image_size {bank.image_size}, the predictor runs at {predictor.image_size}"
            )
        if abs(bank.fingerprint - model_fingerprint(predictor.model)) > 1e-6 * max(1.0, abs(bank.fingerprint)):
            raise CheckpointError(f"{name}: built with other model weights than this predictor's; rebuild it")
        _check_memory_widths(bank, predictor)
        if top_k < 1:
            raise InvalidInputError(f"top_k: expected >= 1, got {top_k}")
        if distance not in ("l1", "cosine"):
            raise InvalidInputError(f"distance: expected 'l1' or 'cosine', got {distance!r}")
        if position_weight < 0:
            raise InvalidInputError(f"position_weight: expected >= 0, got {position_weight}")
        if direction not in ("forward", "reverse", "both"):
            raise InvalidInputError(f"direction: expected 'forward', 'reverse' or 'both', got {direction!r}")
        if not isinstance(start, int) and start not in ("middle", "best"):
            raise InvalidInputError(f"start: expected 'middle', 'best' or a slice index, got {start!r}")
        if max_volumetric < 0:
            raise InvalidInputError(f"max_volumetric: expected >= 0, got {max_volumetric}")
        self.predictor = predictor
        self.bank = bank
        self.top_k = int(top_k)
        self.distance = distance
        self.position_weight = float(position_weight)
        self.start = start
        self.direction = direction
        self.max_volumetric = int(max_volumetric)
        self._descriptors = [d.to(predictor.device, torch.float32) for d in bank.descriptors]
        # per label, bank row -> index in the label's memories; the memory positional encoding on the device
        self._row_index = {lab: {int(r): i for i, r in enumerate(m["rows"].tolist())} for lab, m in bank.memories.items()}
        self._pos_enc = [p.to(predictor.device) for p in bank.maskmem_pos_enc]

    def distances(self, fpn: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N,)`` distances from one query slice's FPN features ``[(1, C_l, H_l, W_l)]`` to the bank."""
        total = torch.zeros(len(self.bank), device=self.predictor.device)
        if len(fpn) != len(self._descriptors) or any(q.shape[1:] != s.shape[1:] for q, s in zip(fpn, self._descriptors)):
            raise CheckpointError(
                f"{_bank_name(self.bank)}: descriptors of shape {[tuple(s.shape[1:]) for s in self._descriptors]} "
                f"do not fit this predictor's features {[tuple(q.shape[1:]) for q in fpn]}; rebuild the bank"
            )
        for q, s in zip(fpn, self._descriptors):
            q = q.float()
            if self.distance == "l1":
                total += (s - q).abs().flatten(1).mean(dim=1)
            else:
                total += 1.0 - F.cosine_similarity(s.flatten(1), q.flatten(1), dim=1)
        return total / len(self._descriptors)

    def retrieve(self, dist: torch.Tensor, label: int, position: float) -> np.ndarray:
        """The bank rows of the top-k supports holding ``label`` for a query slice, in bank order."""
        rows = self.bank.memories[label]["rows"].numpy()
        score = dist.cpu().double().numpy()[rows]
        score = score / max(float(np.median(score)), 1e-12)
        if self.position_weight:
            score = score + self.position_weight * np.abs(self.bank.positions[rows] - position)
        best = np.argsort(score, kind="stable")[: self.top_k]
        return np.sort(rows[best])

    def segment(
        self,
        volume: Volume,
        *,
        labels: Sequence[int] | None = None,
        axis: int | None = None,
        window: WindowSpec = PercentileWindow(),
    ) -> FewShotResult:
        """Segment a query volume with no prompt.

        Args:
            volume: the query image.
            labels: labels to segment (default: all the bank holds); a label in no support
                gives an empty mask and a :class:`MissingLabelWarning`.
            axis: slicing axis (default: the axis closest to the bank's slice direction).
            window: intensity window of the query.

        Returns:
            A :class:`FewShotResult` on the query's grid and geometry.
        """
        if not isinstance(volume, Volume):
            raise InvalidTypeError(f"volume: expected a medsam2kit Volume, got {type(volume).__name__}")
        ax = axis if axis is not None else axis_along(volume.affine, self.bank.slice_direction)
        seq = sequence_volume(volume, axis=ax, image_size=self.predictor.image_size, window=window)
        wanted = tuple(self.bank.labels if labels is None else (int(x) for x in labels))
        cache = self.predictor.feature_cache(seq)
        depth = len(seq)
        slice_of_frame = list(seq.slice_indices)
        positions = [z / max(seq.layout.num_slices - 1, 1) for z in slice_of_frame]
        with torch.inference_mode(), self.predictor.policy.autocast():
            dists = [self.distances(cache.features(t)[1]["backbone_fpn"]) for t in range(depth)]
        logits: dict[int, Volume] = {}
        retrieved: dict[int, np.ndarray] = {}
        starts: dict[int, int] = {}
        low = self.predictor.image_size // 4
        jobs: dict[int, tuple[np.ndarray, int]] = {}
        for lab_id in wanted:
            if lab_id not in self.bank.memories:
                warnings.warn(f"label {lab_id} is in no support slice; its mask is empty", MissingLabelWarning, stacklevel=2)
                empty = torch.full((depth, low, low), float("-inf"))
                logits[lab_id] = seq.to_volume_logits(self._upsample(empty))
                retrieved[lab_id] = np.full((depth, self.top_k), -1)
                continue
            rows = np.full((depth, self.top_k), -1)
            for t in range(depth):
                chosen = self.retrieve(dists[t], lab_id, positions[t])
                rows[t, : len(chosen)] = chosen
            jobs[lab_id] = (rows, self._start_frame(dists, lab_id, rows, depth))
        for lab_id, low_res in self._segment_labels(cache, jobs, depth).items():
            rows, start = jobs[lab_id]
            logits[lab_id] = seq.to_volume_logits(self._upsample(low_res))
            retrieved[lab_id] = rows
            starts[lab_id] = slice_of_frame[start]
        return FewShotResult(
            labels=volume.with_array(label_map_from_logits(logits, volume.shape)),
            logits=logits,
            retrieved=retrieved,
            start_slice=starts,
            encoder_calls=cache.stats.encoder_calls,
            axis=ax,
        )

    def _upsample(self, low_res: torch.Tensor) -> np.ndarray:
        size = self.predictor.image_size
        finite = torch.isfinite(low_res).all(dim=(-2, -1))
        up = F.interpolate(torch.nan_to_num(low_res, neginf=0.0)[:, None], size=(size, size),
                           mode="bilinear", align_corners=False)[:, 0]
        up[~finite] = float("-inf")
        return up.numpy()

    def _start_frame(self, dists: list[torch.Tensor], label: int, rows: np.ndarray, depth: int) -> int:
        if isinstance(self.start, int):
            if not 0 <= self.start < depth:
                raise InvalidInputError(f"start: expected a slice index in [0, {depth}), got {self.start}")
            return self.start
        if self.start == "middle":
            return depth // 2
        mean_top = [float(dists[t][rows[t][rows[t] >= 0]].mean()) for t in range(depth)]
        return int(np.argmin(mean_top))

    def _passes(self, start: int, depth: int) -> list[list[int]]:
        """Frame orders of the passes, each from ``start``; ``"both"`` is forward, then reverse."""
        forward = list(range(start, depth))
        reverse = list(range(start, -1, -1))
        return {"both": [forward, reverse], "forward": [forward], "reverse": [reverse]}[self.direction]

    def _segment_labels(
        self, cache: FeatureCache, jobs: Mapping[int, tuple[np.ndarray, int]], depth: int
    ) -> dict[int, torch.Tensor]:
        """Low-res logits ``(D, S/4, S/4)`` per label over all query frames.

        Labels that start on the same slice visit the slices in the same order; on each slice
        they are tracked as one batch (at most the predictor's ``max_objects_per_batch``; a label
        with fewer retrieved supports has a shorter, padded memory), sharing the slice's
        features (:func:`medsam2kit.backend.track_frame_batch`). The result equals segmenting
        each label alone.
        """
        by_start: dict[int, list[int]] = {}
        for lab_id, (_, start) in jobs.items():
            by_start.setdefault(start, []).append(lab_id)
        out: dict[int, torch.Tensor] = {}
        with torch.inference_mode(), self.predictor.policy.autocast():
            for start, labels in by_start.items():
                out.update(self._segment_group(cache, {lab: jobs[lab][0] for lab in labels}, start, depth))
        return out

    def _support_memory(self, label: int, rows: np.ndarray) -> dict[int, backend.FrameOutput]:
        """The retrieved supports of one query slice as conditioning memory (virtual frames 0..)."""
        mem = self.bank.memories[label]
        row_index = self._row_index[label]
        device = self.predictor.device
        cond: dict[int, backend.FrameOutput] = {}
        for j, r in enumerate(rows[rows >= 0]):
            e = row_index[int(r)]
            cond[j] = {name: mem[name][e : e + 1].to(device)
                       for name in ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits")}
            cond[j]["maskmem_pos_enc"] = self._pos_enc
        return cond

    def _segment_group(
        self, cache: FeatureCache, rows: Mapping[int, np.ndarray], start: int, depth: int
    ) -> dict[int, torch.Tensor]:
        """The labels of one start slice, each pass laid out as sam2 would see a video: supports
        at virtual frames ``0..k-1``, then the query slices in the pass's order."""
        model = self.predictor.model
        k = self.top_k
        low = self.predictor.image_size // 4
        labels = list(rows)
        out = {lab: torch.full((depth, low, low), float("-inf")) for lab in labels}
        done: dict[int, dict[int, backend.FrameOutput]] = {lab: {} for lab in labels}
        cap = self.predictor.max_objects_per_batch
        for order in self._passes(start, depth):
            history: dict[int, dict[int, backend.FrameOutput]] = {lab: {} for lab in labels}
            for i, t in enumerate(order):
                v = k + i
                todo = []
                for lab in labels:
                    if t in done[lab]:  # the start slice of the second pass: reuse, as memory
                        history[lab][v] = done[lab][t]
                    else:
                        todo.append(lab)
                if not todo:
                    continue
                features = backend.prepare_backbone_features(model, backbone_out=cache.features(t)[1])
                for first in range(0, len(todo), cap):
                    chunk = todo[first : first + cap]
                    memories = [
                        {"cond_frame_outputs": self._support_memory(lab, rows[lab][t]),
                         "non_cond_frame_outputs": {u: o for u, o in history[lab].items() if v - u <= self.max_volumetric}}
                        for lab in chunk
                    ]
                    outputs = backend.track_frame_batch(
                        model, features=features, memories=memories, frame_idx=v, num_frames=k + depth
                    )
                    for lab, current in zip(chunk, outputs):
                        history[lab][v] = current
                        done[lab][t] = current
                        out[lab][t] = current["pred_masks"][0, 0].float().cpu()
        return out


def label_map_from_logits(logits: Mapping[int, Volume], shape: tuple[int, int, int]) -> np.ndarray:
    """Per voxel the label of the largest positive logit, 0 where none is positive.

    Example:
        >>> import numpy as np
        >>> from medsam2kit.volume import Volume
        >>> a = Volume(np.array([[[2.0, -1.0, 0.5]]], np.float32), np.eye(4))
        >>> b = Volume(np.array([[[1.0, -2.0, 3.0]]], np.float32), np.eye(4))
        >>> label_map_from_logits({1: a, 2: b}, (1, 1, 3)).tolist()
        [[[1, 0, 2]]]
    """
    ids = sorted(logits)
    dtype = np.uint8 if (max(ids, default=0) <= 255) else np.int32
    if not ids:
        return np.zeros(shape, dtype)
    stack = np.stack([logits[i].array for i in ids])
    best = np.argmax(stack, axis=0)
    positive = np.take_along_axis(stack, best[None], axis=0)[0] > 0
    return np.where(positive, np.asarray(ids)[best], 0).astype(dtype)


def model_fingerprint(model: torch.nn.Module) -> float:
    """A cheap checksum of a model's weights (sum of a fixed projection of every parameter)."""
    with torch.no_grad():
        total = 0.0
        for i, p in enumerate(model.parameters()):
            flat = p.detach().float().flatten()
            total += float((flat * torch.linspace(-1, 1, flat.numel(), device=flat.device)).sum()) * (1 + i % 7)
    return total


def axis_along(affine: np.ndarray, direction: np.ndarray) -> int:
    """The array axis whose world direction is closest to ``direction`` (up to sign).

    Example:
        >>> import numpy as np
        >>> axis_along(np.diag([1.0, 1.0, 3.0, 1.0])[:, [2, 0, 1, 3]], np.array([0.0, 0.0, 1.0]))
        0
    """
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = np.abs(_unit(direction) @ (cols / np.linalg.norm(cols, axis=0)))
    return int(np.argmax(cosines))


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _check_memory_widths(bank: SupportBank, predictor: SAM2Predictor) -> None:
    """The memory tensors' widths against the model's (a malformed bank fails here, by name)."""
    model = predictor.model
    expected = {"maskmem_features": getattr(model, "mem_dim", None), "obj_ptr": getattr(model, "hidden_dim", None)}
    for label, mem in bank.memories.items():
        for key, width in expected.items():
            if isinstance(width, int) and mem[key].shape[1] != width:
                raise CheckpointError(
                    f"{_bank_name(bank)}: memories[{label}][{key!r}] has width {mem[key].shape[1]}, this model's "
                    f"is {width}; rebuild the bank"
                )


def _default_axis(image: Volume) -> int:
    from medsam2kit.sequencer import default_axis

    return default_axis(image)


class FewShotPipeline:
    """FATE-SAM end to end: supports -> bank -> label maps for query volumes.

    Like :class:`~medsam2kit.pipelines.SAM2Med3DPipeline`: :meth:`run` gives the whole result,
    calling the pipeline gives the label map only.

    Args:
        predictor: the frozen SAM2 predictor.
        supports: ``(image, label)`` pairs, or a :class:`SupportBank` built before.
        adapt: first fine-tune a copy of the model on the supports
            (:func:`medsam2kit.adapt.adapt_to_supports`; the bank is then built with the copy,
            available as :attr:`predictor`); needs the supports, not a bank.
        align: register every support onto each query first and build that query's bank from
            the supports resampled onto its grid (:func:`medsam2kit.register.align_supports`);
            the support slices then show the structure where the query holds it, and retrieval
            is by position (:data:`ALIGNED_RETRIEVAL`, unless ``assembler_options`` say
            otherwise); :func:`segment_registered` segments. Costs one registration per support
            and query and a bank per query; needs the supports.
        near_supports_mm: with ``align``, each label is kept within this distance of where at
            least half of the registered supports hold it (``None``: anywhere; see
            :func:`segment_registered`).
        prior: with ``align``, where the registered supports hold each label as a prior on its
            logits (:class:`SupportPrior`; ``None``: none; see :func:`segment_registered`).
        **assembler_options: keyword options of :class:`SupportMemoryAssembler`.

    Raises:
        InvalidInputError: ``adapt`` or ``align`` with a :class:`SupportBank` (its memories
            are the original model's, on the supports' own grids).

    Example:
        >>> from medsam2kit.phantoms import ellipsoid_phantom
        >>> from medsam2kit.predictor import SAM2Predictor
        >>> pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu")
        >>> pipe = FewShotPipeline(pred, [ellipsoid_phantom((6, 40, 40), rng=1)])
        >>> query, _ = ellipsoid_phantom((6, 40, 40), rng=2)
        >>> result = pipe.run(query)
        >>> result.labels.shape, result.encoder_calls, pipe(query).shape
        ((6, 40, 40), 6, (6, 40, 40))
    """

    def __init__(
        self,
        predictor: SAM2Predictor,
        supports: Sequence[tuple[Volume, Volume]] | SupportBank,
        *,
        adapt: AdaptConfig | None = None,
        align: RegistrationConfig | None = None,
        near_supports_mm: float | None = NEAR_SUPPORTS_MM,
        prior: SupportPrior | None = SupportPrior(),
        **assembler_options: Any,
    ) -> None:
        for name, option in (("adapt", adapt), ("align", align)):
            if option is not None and isinstance(supports, SupportBank):
                raise InvalidInputError(f"{name}: needs the support volumes, got a SupportBank (built by the "
                                        "original model from the supports as they are); pass the (image, label) pairs")
        if align is not None and not isinstance(align, RegistrationConfig):
            raise InvalidTypeError(f"align: expected a RegistrationConfig or None, got {type(align).__name__}")
        _check_near_supports(near_supports_mm)
        _check_prior(prior)
        pairs = () if isinstance(supports, SupportBank) else tuple(
            check_support_pair(pair, i) for i, pair in enumerate(supports))
        if not isinstance(supports, SupportBank) and not pairs:
            raise InvalidInputError("supports: expected at least one (image, label) pair, got none")
        if adapt is not None:
            predictor = adapt_to_supports(predictor, pairs, adapt)
        self.predictor = predictor
        self.supports: tuple[tuple[Volume, Volume], ...] = pairs
        self.align = align
        self.near_supports_mm = near_supports_mm
        self.prior = prior
        self.assembler_options = {**(ALIGNED_RETRIEVAL if align is not None else {}), **assembler_options}
        self.bank: SupportBank | None = (supports if isinstance(supports, SupportBank)
                                         else None if align is not None else SupportBank.build(predictor, pairs))
        # the assembler of the fixed bank (checks the options once, up front); aligned: one per query
        self.assembler = (SupportMemoryAssembler(predictor, self.bank, **self.assembler_options)
                          if self.bank is not None else None)

    def __call__(self, volume: Volume) -> Volume:
        """The label map of ``volume`` (see :meth:`run` for everything else)."""
        return self.run(volume).labels

    def run(self, volume: Volume) -> FewShotResult:
        """Segment one query volume with no prompt (see :meth:`SupportMemoryAssembler.segment`).

        Returns:
            The :class:`FewShotResult` on the query's grid and geometry.
        """
        if self.assembler is not None:
            return self.assembler.segment(volume)
        if not isinstance(volume, Volume):
            raise InvalidTypeError(f"volume: expected a medsam2kit Volume, got {type(volume).__name__}")
        assert self.align is not None
        return segment_registered(self.predictor, align_supports(volume, self.supports, self.align), volume,
                                  near_supports_mm=self.near_supports_mm, prior=self.prior, **self.assembler_options)


def segment_registered(predictor: SAM2Predictor, supports: Sequence[tuple[Volume, Volume]], query: Volume, *,
                       near_supports_mm: float | None = NEAR_SUPPORTS_MM, prior: SupportPrior | None = SupportPrior(),
                       **assembler_options: Any) -> FewShotResult:
    """FATE-SAM from supports registered onto ``query`` (on its grid, as
    :func:`~medsam2kit.register.align_supports` gives them): their bank, retrieval by position
    (:data:`ALIGNED_RETRIEVAL`, which ``assembler_options`` may override), and each label kept
    within ``near_supports_mm`` of where at least half of the supports hold it
    (:func:`~medsam2kit.register.held_near`; its logits set to ``-inf`` beyond, the label map
    taken from them again; ``None``: anywhere), and with ``prior`` each label's logits gain
    where the supports hold it (:func:`add_support_prior`; ``None``: none). A small SAM2 that
    follows the supports' memories by position strays where the query looks like a support's
    structure; the registered supports say where the structure can be. ``FewShotPipeline(..., align=...)`` registers and
    calls this; call it directly to reuse one registration (e.g. for the supports' vote too).

    Raises:
        GeometryError / ShapeMismatchError: a support is not on ``query``'s grid.
        InvalidInputError: ``near_supports_mm`` negative or not finite.
        InvalidTypeError: ``prior`` is not a :class:`SupportPrior` or ``None``.
    """
    _check_near_supports(near_supports_mm)
    _check_prior(prior)
    for i, (_, label) in enumerate(supports):
        check_same_grid(label, query, name=f"supports[{i}] label")
    bank = SupportBank.build(predictor, supports)
    result = SupportMemoryAssembler(predictor, bank, **{**ALIGNED_RETRIEVAL, **assembler_options}).segment(query)
    if near_supports_mm is None and prior is None:
        return result
    logits = dict(result.logits)
    if prior is not None:
        logits = add_support_prior(logits, held_by_supports(supports), prior)
    if near_supports_mm is not None:
        near = held_near(supports, near_supports_mm)
        logits = {lab: v if lab not in near else v.with_array(np.where(near[lab], v.array, -np.inf).astype(v.array.dtype))
                  for lab, v in logits.items()}
    return replace(result, labels=query.with_array(label_map_from_logits(logits, query.shape)), logits=logits)


def add_support_prior(logits: Mapping[int, Volume], held: Mapping[int, np.ndarray], prior: SupportPrior
                      ) -> dict[int, Volume]:
    """Each label's logits plus ``prior.strength * tanh(s / prior.edge_mm)``, ``s`` the signed
    distance in mm (the logits' spacing, in 3D) to the label's ``held`` voxels (positive inside:
    the distance to the nearest voxel outside them; negative outside); labels without ``held``
    voxels keep their logits.

    Example:
        >>> lg = Volume(np.zeros((1, 1, 4), np.float32), np.eye(4))
        >>> out = add_support_prior({1: lg}, {1: np.array([[[False, True, True, False]]])}, SupportPrior(4.0, 1.0))
        >>> np.round(out[1].array.ravel().astype(float), 2).tolist()
        [-3.05, 3.05, 3.05, -3.05]

    Raises:
        ShapeMismatchError: a ``held`` array is not on the logits' grid.
    """
    out: dict[int, Volume] = {}
    for lab, vol in logits.items():
        mask = held.get(lab)
        if mask is None or not mask.any():
            out[lab] = vol
            continue
        if mask.shape != vol.shape:
            raise ShapeMismatchError(f"held[{lab}]: expected the logits' shape {vol.shape}, got {mask.shape}")
        term = (prior.strength * np.tanh(signed_distance(mask, vol.spacing) / prior.edge_mm)).astype(np.float32)
        out[lab] = vol.with_array(np.asarray(vol.array, np.float32) + term)
    return out


def _check_prior(prior: object) -> None:
    if prior is not None and not isinstance(prior, SupportPrior):
        raise InvalidTypeError(f"prior: expected a SupportPrior or None, got {type(prior).__name__}")


def _check_near_supports(value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
        raise InvalidInputError(f"near_supports_mm: expected a distance >= 0 mm or None, got {value!r}")


__all__ = [
    "ALIGNED_RETRIEVAL",
    "FewShotPipeline",
    "FewShotResult",
    "MissingLabelWarning",
    "NEAR_SUPPORTS_MM",
    "SupportBank",
    "SupportMemoryAssembler",
    "SupportPrior",
    "SupportSlice",
    "add_support_prior",
    "axis_along",
    "label_map_from_logits",
    "model_fingerprint",
    "segment_registered",
]
