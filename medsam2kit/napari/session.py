"""The annotator's logic without Qt: prompts in voxel coordinates, SAM2 on one volume, the label map.

:class:`AnnotationSession` is what the napari dock widget drives, and what a script or a test can
drive without any viewer. It holds:

* one :class:`~medsam2kit.sequencer.FrameSequence` of the volume (slices along ``axis``) and one
  predictor :class:`~medsam2kit.predictor.Session` on it, whose feature cache encodes every frame
  once for the whole annotation session (:meth:`AnnotationSession.encode`); nothing is encoded
  again, whatever the prompts, corrections and propagations (only :meth:`AnnotationSession.adapt`,
  which replaces the model by a copy fine-tuned on the prompted slices, encodes them again);
* the prompts, as frozen records in voxel coordinates of the volume (napari's data coordinates
  when the layers' scale is the voxel spacing): positive / negative clicks, boxes and mask
  prompts, each for one label (one SAM2 object per label) on one slice;
* the label map ``labels`` ``(D, H, W)`` uint16 (the napari labels layer shows this very array).

A label painted on a slice (a mask prompt, not corrected by clicks or a box) shapes its
propagated masks near that slice as in ``medsam2kit propagate`` (:class:`~medsam2kit.pipelines.PromptPrior`,
the ``prior`` argument), and where labels overlap the label prompted nearest takes the voxel:
painted slices give the command line's label map.

Every change of the prompts is replayed into a fresh sam2 state (the encoded features stay), so
that every prompted slice is a conditioning frame, undo is exact and a correction on a
propagated slice is a prompt like any other. A correction click on a slice where the label
already has a mask (propagated, automatic or painted) and no prompt yet starts from that mask
(sam2's mask input of a click, as in its own interactive correction).

Model work is split in three steps so that a GUI can run the middle one in a worker thread:
:meth:`AnnotationSession.plan` (main thread: what to compute), :meth:`AnnotationSession.run`
(worker: sam2 only, touches neither the prompts nor the label map) and
:meth:`AnnotationSession.apply` (main thread: write the result into ``labels``).
:meth:`AnnotationSession.refresh` and :meth:`AnnotationSession.propagate` do all three.

Coordinates: every mapping between voxels and SAM2 frames goes through
:mod:`medsam2kit.sequencer` (``frame_of_slice``, ``points_to_frame``, ``boxes_to_frame``,
``mask_to_frame``, ``to_volume_logits``).

Example:
    >>> import numpy as np
    >>> from medsam2kit.phantoms import ellipsoid_phantom
    >>> from medsam2kit.predictor import SAM2Predictor
    >>> image, truth = ellipsoid_phantom((12, 64, 56), (3.0, 1.0, 1.0), rng=0)
    >>> ann = AnnotationSession(SAM2Predictor.from_pretrained("reference", device="cpu"), image)
    >>> ann.encode()
    >>> z, y, x = (int(round(c)) for c in np.argwhere(truth.array == 1).mean(axis=0))
    >>> _ = ann.add_point((z, y, x), label=1)  # a voxel (i, j, k) of the volume
    >>> _ = ann.refresh()
    >>> bool((ann.labels[z] == 1).any()), ann.encoder_calls
    (True, 12)
    >>> _ = ann.propagate("both")
    >>> int((ann.labels == 1).any(axis=(1, 2)).sum()) > 1, ann.encoder_calls
    (True, 12)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, Union

import numpy as np
import numpy.typing as npt
import torch

from medsam2kit.adapt import AdaptConfig, adapt_predictor
from medsam2kit.errors import InvalidInputError, InvalidTypeError, ShapeMismatchError
from medsam2kit.pipelines import PromptPrior, default_propagation_config
from medsam2kit.predictor import PointPrompt, PropagationResult, SAM2Predictor, Session, fill_small_holes
from medsam2kit.sequencer import FrameSequence, PercentileWindow, WindowSpec, default_axis, sequence_volume
from medsam2kit.volume import Volume

#: Propagation choices of the annotator: ``"both"``, ``"forward"`` (increasing slice index) or
#: ``"backward"`` (decreasing slice index).
PropagateDirection = Literal["both", "forward", "backward"]
Progress = Callable[[int, int], None]

#: dtype of the working label map (labels 1 .. 65535; 0 is background).
LABEL_DTYPE = np.uint16
_SLICE_TOL = 1e-3  # a prompt's coordinate along the slicing axis must be this close to a slice
_CHUNK = 32  # frames mapped back to voxels at once


# --------------------------------------------------------------------------------------------
# Prompt records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PointRecord:
    """One click on one slice.

    Attributes:
        uid: the prompt's id in its session (increasing: the order prompts were given).
        label: the label (SAM2 object id) it is for.
        slice_index: the slice along the session's axis.
        xy: ``(x, y)`` in-slice voxel coordinates (column, row of the slice).
        positive: foreground (True) or background (False) click.
        seed: bool ``(h, w)`` mask the click corrects (the label's mask on the slice when the
            click came), or ``None``.
    """

    uid: int
    label: int
    slice_index: int
    xy: tuple[float, float]
    positive: bool = True
    seed: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True, eq=False)
class BoxRecord:
    """A box on one slice: ``box`` ``(x0, y0, x1, y1)`` in in-slice voxel coordinates."""

    uid: int
    label: int
    slice_index: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class MaskRecord:
    """A mask prompt on one slice: ``mask`` bool ``(h, w)`` (the slice's shape)."""

    uid: int
    label: int
    slice_index: int
    mask: np.ndarray = field(repr=False)


PromptRecord = Union[PointRecord, BoxRecord, MaskRecord]
_R = TypeVar("_R", PointRecord, BoxRecord, MaskRecord)


# --------------------------------------------------------------------------------------------
# Jobs and updates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Job:
    """What :meth:`AnnotationSession.run` computes (made by :meth:`AnnotationSession.plan`).

    Attributes:
        prompts: the prompts at planning time.
        groups: ``(label, slice)`` pairs whose slice output changed (recomputed on that slice).
        direction: a propagation over the volume, or ``None``.
        clear: labels SAM2 painted that have no prompt any more, with the slices SAM2 painted
            them on (cleared there).
        restore: ``(label, slice)`` pairs whose last prompt was removed, with the mask their
            first correction started from (put back, as undo should).
        versions: the version of each group's last change (a group changed again while the job
            runs stays pending after :meth:`AnnotationSession.apply`).
    """

    prompts: tuple[PromptRecord, ...]
    groups: frozenset[tuple[int, int]]
    direction: PropagateDirection | None
    clear: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    restore: Mapping[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    versions: Mapping[tuple[int, int], int] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class Update:
    """The result of a :class:`Job`, to be written into the label map by :meth:`AnnotationSession.apply`.

    Attributes:
        slices: slice indices along the session's axis.
        labels: per slice, the labels the update speaks for (their voxels on that slice are
            replaced by the winners).
        winners: ``(len(slices), h, w)`` per slice the winning label of each voxel (0: none):
            of the labels with a logit above 0, the one prompted nearest, then the highest logit.
        clear: labels removed from some slices first (``{label: slices}``, see :class:`Job`).
        restore: masks put back after the slices' outputs (see :class:`Job`).
        direction: the propagation's direction, or ``None`` for single-slice outputs.
        encoder_calls: image-encoder passes spent by the job (0 once the volume is encoded).
        seconds: wall time of the job.
    """

    slices: tuple[int, ...]
    labels: tuple[tuple[int, ...], ...]
    winners: np.ndarray = field(repr=False)
    clear: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    restore: Mapping[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    direction: PropagateDirection | None = None
    encoder_calls: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class LabelTally:
    """One label's size.

    Attributes:
        label: the label value.
        voxels: how many voxels hold it.
        volume_ml: its volume in millilitres (voxels times the voxel volume in mm^3, / 1000).
        slices: how many slices along the axis it appears on.
        first, last: the first and last slice it appears on (-1 when absent).
    """

    label: int
    voxels: int
    volume_ml: float
    slices: int
    first: int
    last: int


def tally(labels: np.ndarray, spacing: Sequence[float], *, axis: int) -> list[LabelTally]:
    """Volume (mL) and slices covered of every label > 0 of a label map.

    Args:
        labels: integer ``(D, H, W)`` label map.
        spacing: voxel size in mm along the three array axes.
        axis: the axis along which slices are counted.

    Returns:
        One :class:`LabelTally` per label present, in increasing label order.

    Example:
        >>> lab = np.zeros((3, 4, 4), np.uint16); lab[1:, :2, :2] = 2
        >>> tally(lab, (2.0, 1.0, 1.0), axis=0)
        [LabelTally(label=2, voxels=8, volume_ml=0.016, slices=2, first=1, last=2)]
    """
    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise ShapeMismatchError(f"labels: expected a (D, H, W) label map, got shape {arr.shape}")
    if axis not in (0, 1, 2):
        raise InvalidInputError(f"axis: expected 0, 1 or 2, got {axis!r}")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    counts = np.bincount(arr.ravel().astype(np.int64, copy=False))
    other = tuple(a for a in range(3) if a != axis)
    out = []
    for lab in np.flatnonzero(counts):
        if lab == 0:
            continue
        present = np.flatnonzero((arr == lab).any(axis=other))
        out.append(LabelTally(label=int(lab), voxels=int(counts[lab]), volume_ml=float(counts[lab]) * voxel_ml,
                              slices=int(present.size), first=int(present[0]), last=int(present[-1])))
    return out


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------


class AnnotationSession:
    """Interactive SAM2 segmentation of one volume (see the module docstring).

    Args:
        predictor: the SAM2 predictor (e.g. ``SAM2Predictor.from_pretrained("reference")``).
        volume: the image, with its geometry (as :func:`medsam2kit.io.load_volume` reads it).
        axis: slicing axis (default :func:`medsam2kit.sequencer.default_axis`; a cine uses 0).
        window: intensity window of the frames (see :mod:`medsam2kit.sequencer`).
        labels: an initial label map on the volume's grid (copied; default empty).
        model_name: the model's name, recorded in saved DICOM SEG files.
        auto_propagate: after a first propagation, every prompt change propagates again (in the
            last direction); otherwise only the prompted slice is recomputed.
        prior: the painted masks' shapes added to their labels' logits near their slices
            (:class:`~medsam2kit.pipelines.PromptPrior`), ``None`` for none; ``"auto"``:
            ``medsam2kit propagate``'s default (a volume: ``PromptPrior()``; a cine: none).

    Attributes:
        volume, seq, session, labels, model_name, auto_propagate, prior: as above; ``seq`` is the
            frame sequence, ``session`` the predictor session (its feature cache lives as long
            as this object).
    """

    def __init__(
        self,
        predictor: SAM2Predictor,
        volume: Volume,
        *,
        axis: int | None = None,
        window: WindowSpec = PercentileWindow(),
        labels: np.ndarray | None = None,
        model_name: str = "reference",
        auto_propagate: bool = True,
        prior: PromptPrior | None | Literal["auto"] = "auto",
    ) -> None:
        if not isinstance(predictor, SAM2Predictor):
            raise InvalidTypeError(f"predictor: expected a SAM2Predictor, got {type(predictor).__name__}")
        if not isinstance(volume, Volume):
            raise InvalidTypeError(f"volume: expected a medsam2kit Volume, got {type(volume).__name__}")
        self.volume = volume
        self.predictor = predictor
        chosen = default_axis(volume) if axis is None else axis
        self.seq: FrameSequence = sequence_volume(volume, axis=chosen, image_size=predictor.image_size, window=window)
        self.session: Session = predictor.start(self.seq)
        self.labels: np.ndarray = np.zeros(volume.shape, LABEL_DTYPE)
        if labels is not None:
            self.set_labels(labels)
        self.model_name = model_name
        self.auto_propagate = bool(auto_propagate)
        if prior == "auto":
            prior = default_propagation_config(volume).prior
        if prior is not None and not isinstance(prior, PromptPrior):
            raise InvalidTypeError(f"prior: expected a PromptPrior, None or 'auto', got {prior!r:.40}")
        self.prior: PromptPrior | None = prior
        self._prompts: tuple[PromptRecord, ...] = ()
        self._next_uid = 1
        self._dirty: dict[tuple[int, int], int] = {}  # changed (label, slice) -> version of the change
        self._version = 0
        self._propagated: PropagateDirection | None = None
        self._sam_slices: dict[int, set[int]] = {}
        self._restore: dict[tuple[int, int], np.ndarray] = {}

    # ---------------------------------------------------------------- properties

    @property
    def axis(self) -> int:
        """The slicing axis."""
        return self.seq.layout.axis

    @property
    def num_slices(self) -> int:
        return self.seq.layout.num_slices

    @property
    def prompts(self) -> tuple[PromptRecord, ...]:
        """The prompts, oldest first."""
        return self._prompts

    @property
    def encoder_calls(self) -> int:
        """Frames the image encoder has processed in this session (each frame once)."""
        return self.session.encoder_calls

    @property
    def propagated(self) -> PropagateDirection | None:
        """The direction of the last propagation (``None``: not propagated yet)."""
        return self._propagated

    @property
    def pending(self) -> bool:
        """Whether prompt changes wait for :meth:`refresh`."""
        return bool(self._dirty) or bool(self._orphans())

    def prompt_labels(self) -> tuple[int, ...]:
        """The labels that have prompts (SAM2's objects), increasing."""
        return tuple(sorted({p.label for p in self._prompts}))

    def slice_of(self, ijk: npt.ArrayLike) -> int:
        """The slice index of a voxel coordinate ``(i, j, k)`` (must lie on a slice)."""
        return self._split(np.asarray(ijk, dtype=np.float64).reshape(1, 3), "point")[0]

    # ---------------------------------------------------------------- encoding

    def encode(self, progress: Progress | None = None, *, batch_size: int | None = None) -> None:
        """Encode every frame once (within the predictor's cache budget); ``progress(done, total)``.

        Runs the image encoder only for frames not encoded yet, ``batch_size`` frames per call
        (default: the predictor's ``encode_batch_size``).
        """
        n = len(self.seq)
        step = batch_size or self.predictor.encode_batch_size
        if step < 1:
            raise InvalidInputError(f"batch_size: expected >= 1, got {batch_size}")
        for start in range(0, n, step):
            self.session.cache.fill(batch_size=step, indices=range(start, min(start + step, n)))
            if progress is not None:
                progress(min(start + step, n), n)

    def adapt(self, config: AdaptConfig | None = None, progress: Progress | None = None) -> int:
        """Fine-tune a copy of the model on the prompted slices' current masks (one-shot
        adaptation, :func:`medsam2kit.adapt.adapt_predictor`), then encode every frame with it
        (the copy's features differ); propagate again to use it. ``progress(done, total)``
        reports the training steps, then the encoding. Returns the number of masks adapted to.

        Raises:
            InvalidInputError: prompt changes are not computed yet, or no prompted slice holds
                its label.
        """
        if self.pending:
            raise InvalidInputError("adapt: prompt changes are not computed yet; let them finish first")
        pairs = []
        for lab, s in sorted({(p.label, p.slice_index) for p in self._prompts}):
            mask = self._slice(self.labels, s) == lab
            if mask.any():
                pairs.append((self.seq.frame_of_slice(s), self.seq.mask_to_frame(mask)))
        if not pairs:
            raise InvalidInputError("adapt: no prompted slice holds its label yet; prompt the object on a slice first")
        adapted = adapt_predictor(self.predictor, self.seq, pairs, config, progress=progress)
        self.predictor, self.session = adapted, adapted.start(self.seq)
        self.encode(progress)
        return len(pairs)

    # ---------------------------------------------------------------- recording prompts (cheap)

    def add_point(self, ijk: npt.ArrayLike, *, label: int, positive: bool = True) -> PointRecord:
        """Record a click at voxel ``(i, j, k)`` (napari data coordinates) for ``label``.

        Raises:
            InvalidInputError: the point is not on a slice along the session's axis, or off the
                slice; the label is not in ``[1, 65535]``.
        """
        lab = self._check_label(label)
        arr = np.asarray(ijk, dtype=np.float64).reshape(1, 3)
        s, xy = self._split(arr, "point")
        self.seq.points_to_frame(xy)  # checks that it lies on the slice (message names it)
        seed = None
        if not any(p.label == lab and p.slice_index == s for p in self._prompts):
            current = self._slice(self.labels, s) == lab
            seed = current.copy() if current.any() else None
        rec = PointRecord(self._uid(), lab, s, (float(xy[0, 0]), float(xy[0, 1])), bool(positive), seed)
        self._push(rec)
        return rec

    def add_box(self, corners_ijk: npt.ArrayLike, *, label: int) -> BoxRecord:
        """Record a box for ``label`` from its corners ``(N, 3)`` in voxel coordinates on one slice
        (a napari rectangle's four vertices); the box is their in-slice bounding box."""
        lab = self._check_label(label)
        arr = np.asarray(corners_ijk, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 2:
            raise ShapeMismatchError(f"box: expected corners (N >= 2, 3) in voxel coordinates, got shape {arr.shape}")
        s, xy = self._split(arr, "box")
        box = (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidInputError(f"box: expected a box with width and height, got (x0, y0, x1, y1) = {box}")
        self.seq.boxes_to_frame(np.asarray(box))  # checks that it overlaps the slice
        rec = BoxRecord(self._uid(), lab, s, box)
        self._push(rec)
        return rec

    def add_mask(self, slice_index: int, mask: npt.ArrayLike, *, label: int) -> MaskRecord:
        """Record a mask prompt: bool ``(h, w)`` on slice ``slice_index`` (e.g. a painted slice)."""
        lab = self._check_label(label)
        s = self._check_slice(slice_index)
        m = np.asarray(mask)
        if m.shape != self.seq.layout.slice_shape:
            raise ShapeMismatchError(
                f"mask: expected the slice's shape {self.seq.layout.slice_shape} (axis {self.axis}), got {m.shape}"
            )
        m = m != 0
        if not m.any():
            raise InvalidInputError(f"mask: slice {s} holds no voxel of label {lab}; paint the object first")
        rec = MaskRecord(self._uid(), lab, s, m.copy())
        self._push(rec)
        return rec

    def remove(self, uids: Iterable[int]) -> tuple[PromptRecord, ...]:
        """Remove prompts by uid (unknown uids are ignored); returns the removed records."""
        drop = set(int(u) for u in uids)
        gone = tuple(p for p in self._prompts if p.uid in drop)
        if gone:
            self._prompts = tuple(p for p in self._prompts if p.uid not in drop)
            self._touch(gone)
            for p in gone:
                group = (p.label, p.slice_index)
                left = any((q.label, q.slice_index) == group for q in self._prompts)
                if isinstance(p, PointRecord) and p.seed is not None and not left:
                    self._restore[group] = p.seed
        return gone

    def move_point(self, uid: int, ijk: npt.ArrayLike) -> PointRecord:
        """Move a click (napari's select mode drags points) to voxel ``(i, j, k)``; keeps its uid."""
        old = self._find(uid, PointRecord)
        arr = np.asarray(ijk, dtype=np.float64).reshape(1, 3)
        s, xy = self._split(arr, "point")
        self.seq.points_to_frame(xy)
        seed = old.seed if s == old.slice_index else None
        new = dataclasses.replace(old, slice_index=s, xy=(float(xy[0, 0]), float(xy[0, 1])), seed=seed)
        self._replace(old, new)
        return new

    def move_box(self, uid: int, corners_ijk: npt.ArrayLike) -> BoxRecord:
        """Move or resize a box (its corners ``(N, 3)``); keeps its uid."""
        old = self._find(uid, BoxRecord)
        arr = np.asarray(corners_ijk, dtype=np.float64)
        s, xy = self._split(arr, "box")
        box = (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InvalidInputError(f"box: expected a box with width and height, got (x0, y0, x1, y1) = {box}")
        self.seq.boxes_to_frame(np.asarray(box))
        new = dataclasses.replace(old, slice_index=s, box=box)
        self._replace(old, new)
        return new

    def undo(self) -> PromptRecord | None:
        """Remove the last prompt; returns it (``None`` when there is none)."""
        if not self._prompts:
            return None
        last = self._prompts[-1]
        self.remove([last.uid])
        return last

    def clear_label(self, label: int) -> int:
        """Remove every prompt of ``label`` and its voxels everywhere; returns the voxels cleared."""
        lab = self._check_label(label)
        self.remove([p.uid for p in self._prompts if p.label == lab])
        self._dirty = {g: v for g, v in self._dirty.items() if g[0] != lab}
        self._restore = {g: m for g, m in self._restore.items() if g[0] != lab}
        self._sam_slices.pop(lab, None)
        hit = self.labels == lab
        count = int(hit.sum())
        self.labels[hit] = 0
        return count

    def reset_prompts(self) -> None:
        """Forget every prompt (the label map and the encoded features stay)."""
        self._prompts = ()
        self._dirty.clear()
        self._restore.clear()
        self._sam_slices.clear()
        self._propagated = None

    def set_labels(self, labels: np.ndarray | Volume) -> None:
        """Replace the label map's content (in place: a viewer showing ``labels`` sees it).

        ``labels`` must have the volume's shape (a :class:`Volume` also its grid) and hold
        integers in ``[0, 65535]``. Labels set this way are not SAM2's: they stay until a prompt
        for the same label on the same slice replaces them.
        """
        arr = labels.array if isinstance(labels, Volume) else np.asarray(labels)
        if isinstance(labels, Volume) and not labels.same_grid(self.volume, atol=1e-3):
            raise ShapeMismatchError(f"labels: expected the image's grid {self.volume.shape}, got {labels!r}")
        if arr.shape != self.volume.shape:
            raise ShapeMismatchError(f"labels: expected shape {self.volume.shape} (the image), got {arr.shape}")
        if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
            if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.mod(arr, 1) == 0):
                raise InvalidInputError(f"labels: expected integer labels, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(LABEL_DTYPE).max):
            raise InvalidInputError(f"labels: expected values in [0, 65535], got [{arr.min()}, {arr.max()}]")
        self.labels[...] = arr.astype(LABEL_DTYPE)

    # ---------------------------------------------------------------- computing

    def plan(self, direction: PropagateDirection | None = None) -> Job:
        """What to compute now: the changed slices, or a propagation (``direction``, or the last
        propagation's when :attr:`auto_propagate` and prompts changed)."""
        if direction is not None and direction not in ("both", "forward", "backward"):
            raise InvalidInputError(f"direction: expected 'both', 'forward' or 'backward', got {direction!r}")
        if direction is not None and not self._prompts:
            raise InvalidInputError(
                "propagate: no prompt yet; click on the object (point), draw a box or use a painted slice "
                "as mask prompt on one slice first"
            )
        chosen = direction
        if chosen is None and self.auto_propagate and self._propagated is not None and self.pending and self._prompts:
            chosen = self._propagated
        clear = {lab: tuple(sorted(self._sam_slices.get(lab, ()))) for lab in sorted(self._orphans())}
        restore = {g: m for g, m in self._restore.items() if g in self._dirty}
        return Job(prompts=self._prompts, groups=frozenset(self._dirty), direction=chosen, clear=clear,
                   restore=restore, versions=dict(self._dirty))

    def run(self, job: Job, progress: Progress | None = None) -> Update:
        """Compute a job with SAM2 (worker-thread safe: reads only ``job``, the sequence and the
        predictor session). No frame is encoded again."""
        t0 = time.perf_counter()
        calls = self.encoder_calls
        if job.direction is not None:
            # a propagation starts from a fresh state holding every prompt, so that its result
            # depends on the prompts only (not on earlier propagations)
            self._replay(job.prompts)
            slices, labels, winners = self._propagate(job, progress)
        else:
            # a prompted slice's output depends on its own prompts only (a conditioning frame
            # sees no memory): replay just the changed (label, slice) groups, so a click costs
            # the same however many slices hold prompts
            self._replay(tuple(p for p in job.prompts if (p.label, p.slice_index) in job.groups))
            slices, labels, winners = self._slice_outputs(job)
        return Update(slices=slices, labels=labels, winners=winners, clear=job.clear, restore=job.restore,
                      direction=job.direction, encoder_calls=self.encoder_calls - calls,
                      seconds=time.perf_counter() - t0)

    def apply(self, update: Update, job: Job | None = None) -> tuple[int, ...]:
        """Write an update into :attr:`labels` (main thread); returns the slices it changed.

        Voxels of other labels (not spoken for by the update) are kept.
        """
        changed: set[int] = set()
        for lab, slices in update.clear.items():
            for s in slices:
                view = self._slice(self.labels, s)
                view[view == lab] = 0
                changed.add(s)
            self._sam_slices.pop(lab, None)
        for i, s in enumerate(update.slices):
            view = self._slice(self.labels, s)
            own = np.isin(view, update.labels[i])
            view[own] = 0
            win = update.winners[i]
            paint = (win > 0) & (view == 0)
            view[paint] = win[paint]
            for lab in update.labels[i]:
                self._sam_slices.setdefault(lab, set()).discard(s)
            for lab in np.unique(win[paint]).tolist():
                self._sam_slices.setdefault(int(lab), set()).add(s)
            changed.add(s)
        for (lab, s), mask in update.restore.items():
            view = self._slice(self.labels, s)
            view[mask & (view == 0)] = lab
            changed.add(s)
        if update.direction is not None:
            self._propagated = update.direction
        if job is not None:
            # groups changed again while the job ran stay pending
            self._dirty = {g: v for g, v in self._dirty.items() if job.versions.get(g) != v}
            for g in job.restore:
                if g not in self._dirty:
                    self._restore.pop(g, None)
        return tuple(sorted(changed))

    def refresh(self, progress: Progress | None = None) -> Update:
        """Plan, run and apply: recompute what the prompt changes need."""
        job = self.plan()
        update = self.run(job, progress)
        self.apply(update, job)
        return update

    def propagate(self, direction: PropagateDirection = "both", progress: Progress | None = None) -> Update:
        """Propagate every label's prompts through the volume (``"both"`` from the first prompted
        slice forward then backward; ``"forward"`` from the first prompted slice to the last
        slice; ``"backward"`` from the last prompted slice to slice 0)."""
        job = self.plan(direction)
        update = self.run(job, progress)
        self.apply(update, job)
        return update

    # ---------------------------------------------------------------- saving

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the label map with the input's exact geometry: NIfTI (``.nii``, ``.nii.gz``) or,
        for DICOM input, DICOM SEG (``.dcm``). Written atomically (never a partial file).

        Raises:
            OutputExistsError: ``path`` exists and ``overwrite`` is false.
            InvalidInputError: a ``.dcm`` name for an image that is not DICOM, or another
                file name ending.
        """
        return save_labels(self.labels, self.volume, path, overwrite=overwrite, algorithm=self.model_name)

    # ---------------------------------------------------------------- internals

    def _uid(self) -> int:
        uid = self._next_uid
        self._next_uid += 1
        return uid

    def _push(self, rec: PromptRecord) -> None:
        self._prompts = (*self._prompts, rec)
        self._touch((rec,))

    def _touch(self, recs: Iterable[PromptRecord]) -> None:
        for r in recs:
            self._version += 1
            self._dirty[(r.label, r.slice_index)] = self._version

    def _find(self, uid: int, kind: type[_R]) -> _R:
        for p in self._prompts:
            if p.uid == uid and isinstance(p, kind):
                return p
        raise InvalidInputError(f"uid: no {kind.__name__} with uid {uid} in this session")

    def _replace(self, old: PromptRecord, new: PromptRecord) -> None:
        self._prompts = tuple(new if p.uid == old.uid else p for p in self._prompts)
        self._touch((old, new))

    def _orphans(self) -> set[int]:
        return set(self._sam_slices) - {p.label for p in self._prompts}

    def _check_label(self, label: object) -> int:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= int(label) <= 65535:
            raise InvalidInputError(f"label: expected an integer in [1, 65535] (0 is background), got {label!r}")
        return int(label)

    def _check_slice(self, slice_index: object) -> int:
        if isinstance(slice_index, bool) or not isinstance(slice_index, (int, np.integer)):
            raise InvalidInputError(f"slice_index: expected an integer, got {slice_index!r}")
        s = int(slice_index)
        if not 0 <= s < self.num_slices:
            raise InvalidInputError(f"slice_index: expected a slice in [0, {self.num_slices - 1}] along axis "
                                    f"{self.axis}, got {s}")
        return s

    def _split(self, ijk: np.ndarray, name: str) -> tuple[int, np.ndarray]:
        """One slice index and the in-slice ``(x, y)`` (column, row) of voxel coordinates ``(N, 3)``."""
        if not np.all(np.isfinite(ijk)):
            raise InvalidInputError(f"{name}: expected finite coordinates, got {ijk.tolist()}")
        along = ijk[:, self.axis]
        s = np.rint(along)
        if np.any(np.abs(along - s) > _SLICE_TOL) or np.unique(s).size != 1:
            raise InvalidInputError(
                f"{name}: expected coordinates on one slice along axis {self.axis} (the session's slicing axis), "
                f"got {np.unique(along).round(3).tolist()} along that axis; view the slices along axis {self.axis}"
            )
        index = int(s[0])
        if not 0 <= index < self.num_slices:
            raise InvalidInputError(
                f"{name}: slice {index} along axis {self.axis} is outside the volume (0 .. {self.num_slices - 1})"
            )
        rows, cols = self.seq.layout.in_plane_axes
        return index, ijk[:, [cols, rows]]

    def _slice(self, arr: np.ndarray, s: int) -> np.ndarray:
        """A writable view of slice ``s`` along the axis, ``(rows, cols)`` as the layout's slice shape."""
        index: list[int | slice] = [slice(None)] * 3
        index[self.axis] = s
        return arr[tuple(index)]

    def _replay(self, prompts: tuple[PromptRecord, ...]) -> None:
        """Put ``prompts`` into a fresh sam2 state (features stay); every prompted slice becomes
        a conditioning frame."""
        self.session.reset()
        for (lab, s), recs in sorted(_by_label_and_slice(prompts).items()):
            t = self.seq.frame_of_slice(s)
            masks = [r for r in recs if isinstance(r, MaskRecord)]
            after = recs[recs.index(masks[-1]) + 1:] if masks else recs
            points = [r for r in after if isinstance(r, PointRecord)]
            boxes = [r for r in after if isinstance(r, BoxRecord)]
            base = masks[-1].mask if masks else next((r.seed for r in points if r.seed is not None), None)
            box = boxes[-1].box if boxes else None
            if base is not None and box is None:
                self.session.add_mask(t, self.seq.mask_to_frame(base), obj_id=lab)
            if points or box is not None:
                xy = (self.seq.points_to_frame(np.array([r.xy for r in points], dtype=np.float64))
                      if points else np.zeros((0, 2)))
                self.session.add(PointPrompt(
                    frame=t,
                    points=torch.as_tensor(xy, dtype=torch.float32).reshape(-1, 2),
                    labels=torch.tensor([1 if r.positive else 0 for r in points], dtype=torch.int32),
                    obj_id=lab,
                    box=None if box is None else torch.as_tensor(self.seq.boxes_to_frame(np.asarray(box)),
                                                                 dtype=torch.float32),
                    clear=base is None or box is not None,
                ))

    def _slice_outputs(self, job: Job) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], np.ndarray]:
        """Each changed (label, slice) pair's mask on its slice: sam2's output on the prompted frame."""
        memories = self.session.conditioning_memories() if job.prompts else {}
        by_slice: dict[int, list[int]] = {}
        for lab, s in sorted(job.groups):
            by_slice.setdefault(s, []).append(lab)
        frame_logits: dict[int, dict[int, torch.Tensor]] = {}
        seen: dict[int, dict[int, bool]] = {}
        size = self.predictor.image_size
        for s, labs in by_slice.items():
            t = self.seq.frame_of_slice(s)
            for lab in labs:
                out = memories.get(lab, {}).get(t)
                if out is None:
                    continue
                low = out["pred_masks"].detach().float().cpu().reshape(1, 1, *out["pred_masks"].shape[-2:])
                if self.predictor.fill_hole_area > 0:
                    low = fill_small_holes(low, self.predictor.fill_hole_area)
                one = PropagationResult(obj_ids=(lab,), low_res_logits=low, object_scores=torch.zeros(1, 1),
                                        ious=torch.zeros(1, 1), visited=torch.ones(1, dtype=torch.bool),
                                        image_size=size)
                frame_logits.setdefault(lab, {})[t] = one.logits()[0, 0]
                seen.setdefault(lab, {})[t] = float(out["object_score_logits"].reshape(-1)[0]) > 0
        slices = tuple(sorted(by_slice))
        winners = self._winners(slices, {s: tuple(by_slice[s]) for s in slices}, frame_logits, _prompted(job),
                                self._shapes(job), seen)
        return slices, tuple(tuple(by_slice[s]) for s in slices), winners

    def _propagate(self, job: Job, progress: Progress | None) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...], np.ndarray]:
        direction = job.direction
        if not job.prompts:
            return (), (), np.zeros((0, *self.seq.layout.slice_shape), LABEL_DTYPE)
        frames = sorted({self.seq.frame_of_slice(p.slice_index) for p in job.prompts})
        if direction == "forward":
            result = self.session.propagate("forward", start=frames[0], progress=progress)
        elif direction == "backward":
            result = self.session.propagate("reverse", start=frames[-1], progress=progress)
        else:
            result = self.session.propagate("both", progress=progress)
        visited = [int(t) for t in torch.nonzero(result.visited).flatten().tolist()]
        obj_ids = result.obj_ids
        speaks = tuple(sorted(set(obj_ids)))
        slices = tuple(sorted(self.seq.slice_indices[t] for t in visited))
        winners = np.zeros((len(slices), *self.seq.layout.slice_shape), LABEL_DTYPE)
        row = {s: i for i, s in enumerate(slices)}
        prompted, shapes = _prompted(job), self._shapes(job)
        for start in range(0, len(visited), _CHUNK):
            chunk = visited[start:start + _CHUNK]
            part = _frames_of(result, chunk)
            logits = part.logits()  # (c, O, S, S)
            frame_logits = {lab: {t: logits[i, o] for i, t in enumerate(chunk)} for o, lab in enumerate(obj_ids)}
            seen = {lab: {t: bool(part.object_scores[i, o] > 0) for i, t in enumerate(chunk)}
                    for o, lab in enumerate(obj_ids)}
            chunk_slices = tuple(sorted(self.seq.slice_indices[t] for t in chunk))
            win = self._winners(chunk_slices, dict.fromkeys(chunk_slices, speaks), frame_logits, prompted, shapes, seen)
            for i, s in enumerate(chunk_slices):
                winners[row[s]] = win[i]
        return slices, tuple(speaks for _ in slices), winners

    def _winners(
        self,
        slices: tuple[int, ...],
        labels: Mapping[int, tuple[int, ...]],
        frame_logits: Mapping[int, Mapping[int, torch.Tensor]],
        prompted: Mapping[int, tuple[int, ...]],
        shapes: Mapping[int, Mapping[int, np.ndarray]],
        seen: Mapping[int, Mapping[int, bool]],
    ) -> np.ndarray:
        """Per slice, of the labels with a logit > 0 there, the label prompted on the nearest
        slice (``prompted``: each label's prompt slices), the highest logit among equally near
        ones: :func:`medsam2kit.pipelines.label_map_nearest_prompt`'s rule, as ``medsam2kit
        propagate`` gives a volume. Where that nearest prompt slice (the lower of two) was
        painted (``shapes``: :meth:`_shapes`) and SAM2 sees the label on the frame (``seen``), the
        logits first gain the prior (:func:`medsam2kit.pipelines.add_prompt_prior`'s term)."""
        shape = self.seq.layout.slice_shape
        best = np.full((len(slices), *shape), -np.inf, np.float32)
        nearest = np.full((len(slices), *shape), np.inf, np.float32)
        winners = np.zeros((len(slices), *shape), LABEL_DTYPE)
        row = {s: i for i, s in enumerate(slices)}
        for lab, per_frame in frame_logits.items():
            if not per_frame:
                continue
            vol = self.seq.to_volume_logits(dict(per_frame)).array
            for t in per_frame:
                s = self.seq.slice_indices[t]
                if s not in row or lab not in labels.get(s, ()):
                    continue
                logit = self._slice(vol, s)
                near = min(prompted.get(lab, ()), key=lambda p: abs(s - p), default=None)
                distance = np.inf if near is None else abs(s - near)
                painted = shapes.get(lab, {}).get(near) if near is not None else None
                if painted is not None and self.prior is not None and seen.get(lab, {}).get(t, False):
                    logit = logit + np.float32(self.prior.weight(distance * self.volume.spacing[self.axis])) * painted
                r = row[s]
                better = (logit > 0) & ((distance < nearest[r]) | ((distance == nearest[r]) & (logit > best[r])))
                best[r][better] = logit[better]
                nearest[r][better] = distance
                winners[r][better] = lab
        return winners

    def _shapes(self, job: Job) -> dict[int, dict[int, np.ndarray]]:
        """Per label, its painted slices (a mask prompt with no click or box after it, as
        :meth:`_replay` gives it to SAM2 alone) and the prior's shape of the mask there."""
        if self.prior is None:
            return {}
        rows, cols = self.seq.layout.in_plane_axes
        spacing = (self.volume.spacing[rows], self.volume.spacing[cols])
        out: dict[int, dict[int, np.ndarray]] = {}
        for (lab, s), recs in _by_label_and_slice(job.prompts).items():
            if isinstance(recs[-1], MaskRecord) and recs[-1].mask.any():
                out.setdefault(lab, {})[s] = self.prior.shape(recs[-1].mask, spacing)
        return out


def _by_label_and_slice(prompts: Iterable[PromptRecord]) -> dict[tuple[int, int], list[PromptRecord]]:
    """The prompts per ``(label, slice)``, each group in the order given."""
    groups: dict[tuple[int, int], list[PromptRecord]] = {}
    for p in prompts:
        groups.setdefault((p.label, p.slice_index), []).append(p)
    return groups


def _prompted(job: Job) -> dict[int, tuple[int, ...]]:
    """Each label's prompted slices at the job's planning time."""
    out: dict[int, set[int]] = {}
    for p in job.prompts:
        out.setdefault(p.label, set()).add(p.slice_index)
    return {lab: tuple(sorted(s)) for lab, s in out.items()}


def _frames_of(result: PropagationResult, frames: Sequence[int]) -> PropagationResult:
    """The part of a propagation result on ``frames`` (to upsample a few frames at a time)."""
    idx = torch.as_tensor(list(frames), dtype=torch.long)
    return dataclasses.replace(
        result,
        low_res_logits=result.low_res_logits[idx],
        object_scores=result.object_scores[idx],
        ious=result.ious[idx],
        visited=result.visited[idx],
    )


def save_labels(
    labels: np.ndarray,
    like: Volume,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    algorithm: str = "medsam2kit",
) -> Path:
    """Write a label map with the exact geometry of ``like``: NIfTI for ``.nii``/``.nii.gz``,
    DICOM SEG for ``.dcm`` (DICOM input only). Refuses to replace a file unless ``overwrite``.

    Example:
        >>> import tempfile, pathlib
        >>> image = Volume(np.zeros((2, 3, 4), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
        >>> save_labels(np.ones((2, 3, 4), np.uint16), image, pathlib.Path(tempfile.mkdtemp()) / "l.nii.gz").name
        'l.nii.gz'
    """
    from medsam2kit._files import check_writable
    from medsam2kit.dicom_seg import is_dicom_path, resolve_output_format, write_labels

    if not str(path).strip():
        raise InvalidInputError("path: expected a file name ending in .nii.gz, .nii or .dcm, got an empty name")
    p = Path(path)
    name = p.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".dcm")):
        raise InvalidInputError(f"path: expected a file name ending in .nii.gz, .nii or .dcm (DICOM SEG), got {p.name!r}")
    fmt = resolve_output_format(None, p)
    if fmt == "dicom-seg" and (like.source is None or like.kind == "cine" or not is_dicom_path(like.source)):
        what = "an in-memory image" if like.source is None else ("a cine" if like.kind == "cine" else like.source)
        raise InvalidInputError(
            f"path: a DICOM SEG (.dcm) references DICOM images, but the image is {what}; save as NIfTI (.nii.gz)"
        )
    check_writable(p, overwrite=overwrite, name="path", hint="tick 'overwrite' (overwrite=True) to replace it")
    return write_labels(labels, like, p, fmt=fmt, algorithm=algorithm)


__all__ = [
    "LABEL_DTYPE",
    "AnnotationSession",
    "BoxRecord",
    "Job",
    "LabelTally",
    "MaskRecord",
    "PointRecord",
    "PromptRecord",
    "PropagateDirection",
    "Update",
    "save_labels",
    "tally",
]
