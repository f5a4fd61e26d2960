"""The annotator dock widget: napari + Qt around :class:`~medsam2kit.napari.session.AnnotationSession`.

Model loading, encoding, slice outputs, propagation and the automatic modes run in napari worker
threads (one job at a time), with a progress bar; the viewer never waits for the model. Prompts
given while a job runs are recorded at once and computed by the next job. Errors are shown as
one line in the widget (and as a napari notification), never as a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from medsam2kit._files import one_line
from medsam2kit.adapt import AdaptConfig
from medsam2kit.errors import InvalidInputError, MedSAM2KitError
from medsam2kit.io import load_label
from medsam2kit.napari import _layers, automatic
from medsam2kit.napari._keys import SHORTCUTS, bind_shortcuts
from medsam2kit.napari._reader import METADATA_KEY, napari_get_reader, read_layers, volume_of_layer
from medsam2kit.napari.session import AnnotationSession, Job, PropagateDirection, Update, tally
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.sequencer import default_axis
from medsam2kit.volume import Volume

_DIRECTIONS: tuple[PropagateDirection, ...] = ("both", "forward", "backward")
_DEVICES = ("auto", "cpu", "cuda", "mps")


class _Relay(QObject):
    """Carries progress from worker threads to the GUI thread (queued signal)."""

    progress = Signal(int, int)


class AnnotatorWidget(QWidget):
    """Interactive SAM2 segmentation of 3D images and cines in napari (see ``docs/napari.md``).

    Args:
        napari_viewer: the viewer (npe2 passes it).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.ann: AnnotationSession | None = None
        self.image_layer: Any = None
        self.points: Any = None
        self.boxes: Any = None
        self.labels: Any = None
        self.last_update: Update | None = None
        self.last_auto: automatic.AutoResult | None = None
        self.coarse: Any = None
        self.bank: Any = None
        self.training_pairs: list[tuple[Path, Path]] = []
        self.support_pairs: list[tuple[Path, Path]] = []
        self._predictors: dict[tuple[str, str], SAM2Predictor] = {}
        self._worker: Any = None
        self._refresh_wanted = False
        self._syncing = False
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_image_choices)
        self.viewer.layers.events.removed.connect(self._refresh_image_choices)
        self._refresh_image_choices()
        bind_shortcuts([self.viewer], self._actions())
        self._enable()

    # ================================================================ construction

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)

        setup = QGroupBox("Image and model")
        form = QFormLayout(setup)
        self.image_combo = QComboBox()
        form.addRow("image", self.image_combo)
        self.model_combo = QComboBox()
        self._fill_models()
        form.addRow("model", self.model_combo)
        row = QHBoxLayout()
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(_DEVICES))
        self.axis_combo = QComboBox()
        self.axis_combo.addItems(["default", "0", "1", "2"])
        self.axis_combo.setToolTip("slicing axis; default: the axis of largest spacing (medsam2kit.sequencer.default_axis)")
        row.addWidget(QLabel("device"))
        row.addWidget(self.device_combo)
        row.addWidget(QLabel("axis"))
        row.addWidget(self.axis_combo)
        form.addRow(row)
        row = QHBoxLayout()
        self.open_button = QPushButton("Open image…")
        self.open_button.clicked.connect(self._choose_image)
        self.start_button = QPushButton("Start session")
        self.start_button.setToolTip("load the model and encode every slice once (kept for the whole session)")
        self.start_button.clicked.connect(self.start_session)
        row.addWidget(self.open_button)
        row.addWidget(self.start_button)
        form.addRow(row)
        outer.addWidget(setup)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_interactive(), "Interactive")
        self.tabs.addTab(self._build_automatic(), "Automatic")
        self.tabs.addTab(self._build_save(), "Save")
        outer.addWidget(self.tabs)

        self.progress = QProgressBar()
        self._idle("idle")
        outer.addWidget(self.progress)
        self.status = QLabel("Open an image (File > Open, or 'Open image…'), then 'Start session'.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.status)

        self.tally_table = QTableWidget(0, 4)
        self.tally_table.setHorizontalHeaderLabels(["label", "volume (mL)", "slices", "voxels"])
        vertical, horizontal = self.tally_table.verticalHeader(), self.tally_table.horizontalHeader()
        if vertical is not None and horizontal is not None:
            vertical.setVisible(False)
            horizontal.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.tally_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.tally_table.setMinimumHeight(125)
        self.tally_table.setMaximumHeight(160)
        outer.addWidget(self.tally_table)
        outer.addStretch(1)

    def _build_interactive(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        row = QHBoxLayout()
        row.addWidget(QLabel("label"))
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.label_spin.setValue(1)
        self.label_spin.setToolTip("the active label: each label is one SAM2 object (C: next label)")
        self.label_spin.valueChanged.connect(self._on_label_spin)
        row.addWidget(self.label_spin)
        self.positive_radio = QRadioButton("positive (T)")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        group = QButtonGroup(page)
        group.addButton(self.positive_radio)
        group.addButton(self.negative_radio)
        self.positive_radio.toggled.connect(self._on_polarity)
        row.addWidget(self.positive_radio)
        row.addWidget(self.negative_radio)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.points_button = QPushButton("Points (P)")
        self.points_button.clicked.connect(self.points_mode)
        self.box_button = QPushButton("Box (B)")
        self.box_button.clicked.connect(self.box_mode)
        self.mask_button = QPushButton("Painted mask (M)")
        self.mask_button.setToolTip("use the active label's painted voxels on this slice as a mask prompt")
        self.mask_button.clicked.connect(self.mask_prompt)
        row.addWidget(self.points_button)
        row.addWidget(self.box_button)
        row.addWidget(self.mask_button)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo prompt (U)")
        self.undo_button.clicked.connect(self.undo)
        self.clear_button = QPushButton("Clear label (Shift+C)")
        self.clear_button.clicked.connect(self.clear_label)
        row.addWidget(self.undo_button)
        row.addWidget(self.clear_button)
        lay.addLayout(row)

        row = QHBoxLayout()
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(list(_DIRECTIONS))
        self.direction_combo.setToolTip("both: from the first prompted slice forward, then backward; forward: "
                                        "increasing slice index; backward: decreasing, from the last prompted slice")
        self.propagate_button = QPushButton("Propagate (Shift+S)")
        self.propagate_button.clicked.connect(self.propagate)
        row.addWidget(self.direction_combo)
        row.addWidget(self.propagate_button, 1)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.adapt_steps = QSpinBox()
        self.adapt_steps.setRange(1, 5000)
        self.adapt_steps.setValue(AdaptConfig().steps)
        self.adapt_steps.setToolTip("training steps of the one-shot adaptation (about 0.2 s each for the bundled "
                                    "model on a CPU)")
        self.adapt_button = QPushButton("Adapt model to prompted slices")
        self.adapt_button.setToolTip("fine-tune a copy of the model on the prompted slices' masks (medsam2kit.adapt), "
                                     "encode the slices again and propagate again: helps a model that loses the "
                                     "object on the next slice")
        self.adapt_button.clicked.connect(self.adapt)
        row.addWidget(QLabel("steps"))
        row.addWidget(self.adapt_steps)
        row.addWidget(self.adapt_button, 1)
        lay.addLayout(row)
        self.auto_check = QCheckBox("after propagating, a correction propagates again")
        self.auto_check.setChecked(True)
        self.auto_check.toggled.connect(self._on_auto)
        lay.addWidget(self.auto_check)

        row = QHBoxLayout()
        self.load_labels_button = QPushButton("Load labels…")
        self.load_labels_button.setToolTip("a label file on the image's grid (NIfTI, NRRD, DICOM SEG, npz)")
        self.load_labels_button.clicked.connect(self._choose_labels)
        row.addWidget(self.load_labels_button)
        lay.addLayout(row)
        box = QGroupBox("Shortcuts")
        grid = QGridLayout(box)
        grid.setVerticalSpacing(1)
        for i, sc in enumerate(SHORTCUTS):
            row_, col = divmod(i, 2)
            key = QLabel(f"<b>{sc.key.replace('-', '+')}</b>")
            key.setToolTip(sc.description)
            text = QLabel(sc.short or sc.description)
            text.setToolTip(sc.description)
            grid.addWidget(key, row_, 2 * col)
            grid.addWidget(text, row_, 2 * col + 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        lay.addWidget(box)
        lay.addStretch(1)
        return page

    def _build_automatic(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        sam = QGroupBox("SAM2Med3D (coarse network + SAM2)")
        form = QVBoxLayout(sam)
        row = QHBoxLayout()
        self.coarse_edit = QLineEdit()
        self.coarse_edit.setPlaceholderText("saved coarse network (.pt)")
        load = QPushButton("Load…")
        load.clicked.connect(self._choose_coarse)
        row.addWidget(self.coarse_edit, 1)
        row.addWidget(load)
        form.addLayout(row)
        self.training_list = QListWidget()
        self.training_list.setMaximumHeight(70)
        self.training_list.setToolTip("labelled volumes to train a coarse network on")
        form.addWidget(self.training_list)
        row = QHBoxLayout()
        add = QPushButton("Add image + labels…")
        add.clicked.connect(lambda: self._choose_pair(self.add_training_pair))
        self.train_current = QCheckBox("and this image")
        self.train_current.setToolTip("train also on the current image with its labels")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100000)
        self.steps_spin.setValue(200)
        self.steps_spin.setMinimumWidth(90)
        self.steps_spin.setToolTip("training steps of the coarse network")
        row.addWidget(add)
        row.addWidget(self.train_current)
        row.addWidget(QLabel("steps"))
        row.addWidget(self.steps_spin)
        form.addLayout(row)
        row = QHBoxLayout()
        train = QPushButton("Train")
        train.clicked.connect(lambda: self.train_coarse())
        save = QPushButton("Save network…")
        save.clicked.connect(self._save_coarse)
        self.sam2med3d_button = QPushButton("Run SAM2Med3D")
        self.sam2med3d_button.clicked.connect(lambda: self.run_sam2med3d())
        row.addWidget(train)
        row.addWidget(save)
        row.addWidget(self.sam2med3d_button)
        form.addLayout(row)
        self.slices_list = QListWidget()
        self.slices_list.setMaximumHeight(90)
        self.slices_list.setToolTip("the prompt slices SAM2Med3D chose (click to go there)")
        self.slices_list.itemClicked.connect(self._go_to_slice)
        form.addWidget(self.slices_list)
        lay.addWidget(sam)

        few = QGroupBox("FATE-SAM (few-shot, from labelled volumes)")
        form = QVBoxLayout(few)
        self.support_list = QListWidget()
        self.support_list.setMaximumHeight(70)
        self.support_list.setToolTip("labelled support volumes for the support bank")
        form.addWidget(self.support_list)
        row = QHBoxLayout()
        add = QPushButton("Add image + labels…")
        add.clicked.connect(lambda: self._choose_pair(self.add_support_pair))
        self.bank_edit = QLineEdit()
        self.bank_edit.setPlaceholderText("or a saved support bank (.pt)")
        load = QPushButton("Load…")
        load.clicked.connect(self._choose_bank)
        row.addWidget(add)
        row.addWidget(self.bank_edit, 1)
        row.addWidget(load)
        form.addLayout(row)
        self.align_check = QCheckBox("register the support volumes onto the image (no bank)")
        self.align_check.setChecked(True)
        self.align_check.setToolTip("as the command line's default: every support volume is registered onto the image "
                                    "(similarity, then demons) and a bank is built from them for this image; "
                                    "unchecked, or with no support volume listed, the built or loaded bank is used")
        form.addWidget(self.align_check)
        row = QHBoxLayout()
        build = QPushButton("Build bank")
        build.clicked.connect(lambda: self.build_bank())
        save = QPushButton("Save bank…")
        save.clicked.connect(self._save_bank)
        self.fewshot_button = QPushButton("Run FATE-SAM")
        self.fewshot_button.clicked.connect(lambda: self.run_fewshot())
        row.addWidget(build)
        row.addWidget(save)
        row.addWidget(self.fewshot_button)
        form.addLayout(row)
        lay.addWidget(few)
        lay.addStretch(1)
        return page

    def _build_save(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        row = QHBoxLayout()
        self.save_edit = QLineEdit()
        self.save_edit.setPlaceholderText("labels.nii.gz (or .dcm: DICOM SEG, for DICOM input)")
        browse = QPushButton("…")
        browse.clicked.connect(self._choose_save_path)
        row.addWidget(self.save_edit, 1)
        row.addWidget(browse)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.overwrite_check = QCheckBox("overwrite")
        self.save_button = QPushButton("Save labels")
        self.save_button.clicked.connect(self._save_clicked)
        row.addWidget(self.overwrite_check)
        row.addWidget(self.save_button, 1)
        lay.addLayout(row)
        note = QLabel("<small>NIfTI with the input's exact shape and affine; DICOM SEG referencing the "
                      "DICOM images when the input is DICOM.</small>")
        note.setWordWrap(True)
        lay.addWidget(note)
        lay.addStretch(1)
        return page

    def _fill_models(self) -> None:
        from medsam2kit.models import REFERENCE, cached_checkpoint, list_models

        for entry in list_models():
            ready = entry.bundled or cached_checkpoint(entry) is not None
            self.model_combo.addItem(entry.name if ready else f"{entry.name} (download)", entry.name)
            self.model_combo.setItemData(self.model_combo.count() - 1, entry.description, Qt.ItemDataRole.ToolTipRole)
        index = self.model_combo.findData(REFERENCE)
        self.model_combo.setCurrentIndex(max(index, 0))

    def _actions(self) -> dict[str, Callable[[], None]]:
        return {
            "toggle_polarity": self.toggle_polarity,
            "segment_slice": self.segment_slice,
            "propagate": lambda: self.propagate(),
            "next_label": self.next_label,
            "clear_label": lambda: self.clear_label(),
            "undo": self.undo,
            "points_mode": self.points_mode,
            "box_mode": self.box_mode,
            "mask_prompt": self.mask_prompt,
        }

    # ================================================================ state

    @property
    def busy(self) -> bool:
        """Whether a model job runs now."""
        return self._worker is not None

    @property
    def active_label(self) -> int:
        return int(self.label_spin.value())

    def _enable(self) -> None:
        ready = self.ann is not None and not self.busy
        for w in (self.propagate_button, self.undo_button, self.clear_button, self.mask_button, self.points_button,
                  self.box_button, self.save_button, self.sam2med3d_button, self.fewshot_button,
                  self.load_labels_button, self.adapt_button):
            w.setEnabled(ready)
        self.start_button.setEnabled(not self.busy)

    def message(self, text: str, *, error: bool = False) -> None:
        """Show one line in the widget (red for errors; also a napari notification)."""
        self.status.setText(text)
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")
        if error:
            show_error(text)

    def _fail(self, err: BaseException) -> None:
        text = one_line(err) if isinstance(err, MedSAM2KitError) else f"{type(err).__name__}: {one_line(err)}"
        self.message(text, error=True)

    # ================================================================ image and session

    def _refresh_image_choices(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        self.image_combo.clear()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)

    def open_image(self, path: str | Path) -> list[Any]:
        """Open a file or DICOM folder with the medsam2kit reader; errors are shown, not raised."""
        if napari_get_reader(str(path)) is None:
            self.message(f"open: {path} is not an image medsam2kit reads (NIfTI .nii/.nii.gz, NRRD, DICOM file or "
                         "series folder, npz)", error=True)
            return []
        try:
            layers = []
            for data, kwargs, kind in read_layers(str(path)):
                layers.append(self.viewer.add_labels(data, **kwargs) if kind == "labels"
                              else self.viewer.add_image(data, **kwargs))
        except Exception as err:  # noqa: BLE001 - shown to the person, one line
            self._fail(err)
            return []
        image = next((layer for layer in layers if isinstance(layer, Image)), None)
        if image is not None:
            self.image_combo.setCurrentText(image.name)
            self.message(f"opened {image.name}: {image.metadata[METADATA_KEY]!r}")
        return layers

    def _image(self) -> Any:
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise InvalidInputError("image: open an image first (File > Open, or 'Open image…')")
        return self.viewer.layers[name]

    def start_session(self) -> None:
        """Load the chosen model and encode every slice of the chosen image once (worker thread)."""
        if self.busy:
            self.message("busy: wait for the running job to finish")
            return
        try:
            layer = self._image()
            volume = volume_of_layer(layer.data, layer.scale, layer.metadata, name=layer.name)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        name = str(self.model_combo.currentData())
        device = self.device_combo.currentText()
        axis_text = self.axis_combo.currentText()
        axis = None if axis_text == "default" else int(axis_text)
        keep = self.labels.data if self.labels is not None and self.labels.data.shape == volume.shape else None

        def job(progress: Callable[[int, int], None]) -> AnnotationSession:
            predictor = self._predictors.get((name, device))
            if predictor is None:
                predictor = SAM2Predictor.from_pretrained(name, device=device)
                self._predictors[(name, device)] = predictor
            ann = AnnotationSession(predictor, volume, axis=axis, model_name=name, labels=keep,
                                    auto_propagate=self.auto_check.isChecked())
            ann.encode(progress)
            return ann

        self.image_layer = layer
        self._start(f"loading {name} and encoding {volume.shape} along axis "
                    f"{default_axis(volume) if axis is None else axis}…", job, self._session_ready)

    def _session_ready(self, ann: AnnotationSession) -> None:
        old = self.ann
        self.ann = ann
        scale = tuple(float(s) for s in self.image_layer.scale)
        meta = {METADATA_KEY: ann.volume, "path": ann.volume.source}
        self._syncing = True
        try:
            self.labels = _layers.labels_layer(self.viewer, ann.labels, scale=scale, metadata=meta)
            self.boxes = _layers.boxes_layer(self.viewer, scale=scale)
            size = max(3.0, 0.02 * float(max(s * n for s, n in zip(scale, ann.volume.shape))))
            self.points = _layers.points_layer(self.viewer, scale=scale, point_size=size)
            _layers.draw_points(self.points, (), layout=ann.seq.layout)
            _layers.draw_boxes(self.boxes, (), layout=ann.seq.layout)
        finally:
            self._syncing = False
        if old is None:
            self.points.events.data.connect(self._on_points)
            self.boxes.events.data.connect(self._on_boxes)
            self.labels.events.paint.connect(lambda _e: self.update_tally())
            self.labels.events.selected_label.connect(self._on_selected_label)
            bind_shortcuts([self.points, self.boxes, self.labels], self._actions())
        self.labels.selected_label = self.active_label
        rows, cols = ann.seq.layout.in_plane_axes
        self.viewer.dims.axis_labels = tuple(f"axis {a}" for a in range(self.viewer.dims.ndim))
        self.viewer.dims.order = (ann.axis, rows, cols)
        self.viewer.dims.set_current_step(ann.axis, ann.num_slices // 2)
        self.points_mode()
        stats = ann.session.cache.stats
        self.message(f"ready: {ann.encoder_calls} slices encoded along axis {ann.axis} in "
                     f"{stats.encoder_seconds:.1f} s ({ann.predictor.image_size} px, {ann.model_name}). "
                     "Click on the object (positive), T for a negative click, B for a box.")
        self.update_tally()

    # ================================================================ jobs

    def _start(self, text: str, fn: Callable[[Callable[[int, int], None]], Any],
               done: Callable[[Any], None]) -> None:
        """Run ``fn(progress)`` in a worker thread; ``done(result)`` in the GUI thread."""
        self.message(text)
        self.progress.setFormat("%v / %m")
        self.progress.setRange(0, 0)  # busy until the first progress report
        relay = self._relay

        def report(i: int, n: int) -> None:
            relay.progress.emit(int(i), int(n))

        worker = create_worker(fn, report, _start_thread=False)
        self._worker = worker

        def finished(result: Any) -> None:
            self._worker = None
            self._idle("done")
            try:
                done(result)
            except Exception as err:  # noqa: BLE001
                self._fail(err)
            self._enable()
            self._after_job()

        def failed(err: BaseException) -> None:
            self._worker = None
            self._idle("failed")
            self._fail(err)
            self._enable()

        worker.returned.connect(finished)
        worker.errored.connect(failed)
        self._enable()
        worker.start()

    def _idle(self, text: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if text == "done" else 0)
        self.progress.setFormat(text)

    def _on_progress(self, i: int, n: int) -> None:
        self.progress.setRange(0, max(n, 1))
        self.progress.setValue(i)

    def _after_job(self) -> None:
        if self.ann is not None and (self._refresh_wanted or self.ann.pending):
            self._refresh_wanted = False
            self.segment_slice()

    def segment_slice(self) -> None:
        """Compute what the prompt changes need now (the prompted slices' masks, or a new
        propagation after a correction)."""
        if self.ann is None:
            return
        if self.busy:
            self._refresh_wanted = True
            return
        try:
            job = self.ann.plan()
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        if not job.groups and job.direction is None and not job.clear:
            return
        ann = self.ann
        what = f"propagating ({job.direction})…" if job.direction else "segmenting the prompted slice…"
        self._start(what, lambda progress: ann.run(job, progress), lambda u: self._applied(ann, job, u))

    def propagate(self, direction: PropagateDirection | None = None) -> None:
        """Propagate every label's prompts through the volume (worker thread, with progress)."""
        ann = self._free_session("propagate")
        if ann is None:
            return
        chosen = direction or self.direction_combo.currentText()
        try:
            job = ann.plan(chosen)  # type: ignore[arg-type]
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        self._start(f"propagating ({chosen})…", lambda progress: ann.run(job, progress),
                    lambda u: self._applied(ann, job, u))

    def adapt(self) -> None:
        """Adapt a copy of the model to the prompted slices' masks (worker thread), then
        propagate again in the chosen direction."""
        ann = self._free_session("adapt")
        if ann is None:
            return
        config = AdaptConfig(steps=self.adapt_steps.value())
        start = time.perf_counter()

        def adapted(count: int) -> None:
            if ann is not self.ann:
                return
            self.message(f"adapted a copy of the model to {count} prompted slice mask(s) in "
                         f"{time.perf_counter() - start:.1f} s ({config.steps} steps); propagating again")
            self.propagate()

        self._start(f"adapting a copy of the model to the prompted slices ({config.steps} steps), then encoding…",
                    lambda progress: ann.adapt(config, progress), adapted)

    def _free_session(self, action: str) -> AnnotationSession | None:
        """The session, when one is started and no job runs (else a message and ``None``)."""
        if self.ann is None:
            self.message(f"{action}: start a session first", error=True)
            return None
        if self.busy:
            self.message("busy: wait for the running job to finish")
            return None
        return self.ann

    def _applied(self, ann: AnnotationSession, job: Job, update: Update) -> None:
        if ann is not self.ann:
            return
        ann.apply(update, job)
        self.last_update = update
        self.labels.refresh()
        self.update_tally()
        what = (f"propagated ({update.direction}) over {len(update.slices)} slices"
                if update.direction else f"segmented slice(s) {', '.join(map(str, update.slices)) or '-'}")
        self.message(f"{what} in {update.seconds:.2f} s; image encoder calls: {update.encoder_calls} "
                     f"(session total {ann.encoder_calls})")

    # ================================================================ prompts from the layers

    def _index(self, i: int, n: int) -> int:
        return int(i) + n if int(i) < 0 else int(i)

    def _on_points(self, event: Any) -> None:
        if self._syncing or self.ann is None:
            return
        action = str(getattr(event, "action", ""))
        layer = self.points
        if action == "added":
            bad = []
            for raw in event.data_indices:
                i = self._index(raw, len(layer.data))
                positive = str(layer.features["prompt"].iloc[i]) == _layers.POSITIVE
                try:
                    rec = self.ann.add_point(layer.data[i], label=self.active_label, positive=positive)
                except MedSAM2KitError as err:
                    bad.append(i)
                    self._fail(err)
                    continue
                layer.features.loc[layer.features.index[i], "uid"] = rec.uid
                layer.features.loc[layer.features.index[i], "label"] = rec.label
            if bad:
                self._redraw_prompts()
        elif action == "removed":
            self._sync_removed(layer, point=True)
        elif action == "changed":
            for raw in event.data_indices:
                i = self._index(raw, len(layer.data))
                uid = int(layer.features["uid"].iloc[i])
                try:
                    self.ann.move_point(uid, layer.data[i])
                except MedSAM2KitError as err:
                    self._fail(err)
                    self._redraw_prompts()
                    return
        else:
            return
        self.segment_slice()

    def _on_boxes(self, event: Any) -> None:
        if self._syncing or self.ann is None:
            return
        action = str(getattr(event, "action", ""))
        layer = self.boxes
        if action == "added":
            bad = False
            for raw in event.data_indices:
                i = self._index(raw, len(layer.data))
                try:
                    rec = self.ann.add_box(layer.data[i], label=self.active_label)
                except MedSAM2KitError as err:
                    bad = True
                    self._fail(err)
                    continue
                layer.features.loc[layer.features.index[i], "uid"] = rec.uid
                layer.features.loc[layer.features.index[i], "label"] = rec.label
            if bad:
                self._redraw_prompts()
        elif action == "removed":
            self._sync_removed(layer, point=False)
        elif action == "changed":
            for raw in event.data_indices:
                i = self._index(raw, len(layer.data))
                try:
                    self.ann.move_box(int(layer.features["uid"].iloc[i]), layer.data[i])
                except MedSAM2KitError as err:
                    self._fail(err)
                    self._redraw_prompts()
                    return
        else:
            return
        self.segment_slice()

    def _sync_removed(self, layer: Any, *, point: bool) -> None:
        from medsam2kit.napari.session import BoxRecord, PointRecord

        assert self.ann is not None
        kind = PointRecord if point else BoxRecord
        kept = set(int(u) for u in layer.features["uid"]) if len(layer.features) else set()
        self.ann.remove([p.uid for p in self.ann.prompts if isinstance(p, kind) and p.uid not in kept])

    def _redraw_prompts(self) -> None:
        if self.ann is None:
            return
        self._syncing = True
        try:
            _layers.draw_points(self.points, self.ann.prompts, layout=self.ann.seq.layout)
            _layers.draw_boxes(self.boxes, self.ann.prompts, layout=self.ann.seq.layout)
        finally:
            self._syncing = False

    # ================================================================ actions

    def current_slice(self) -> int:
        """The slice shown now along the session's axis."""
        assert self.ann is not None
        point = self.image_layer.world_to_data(self.viewer.dims.point)
        return int(round(float(point[self.ann.axis])))

    def toggle_polarity(self) -> None:
        """Switch the next click between positive and negative (T)."""
        if self.positive_radio.isChecked():
            self.negative_radio.setChecked(True)
        else:
            self.positive_radio.setChecked(True)

    def _on_polarity(self, *_: Any) -> None:
        if self.points is not None:
            value = _layers.POSITIVE if self.positive_radio.isChecked() else _layers.NEGATIVE
            self.points.feature_defaults["prompt"] = value
            self.points.refresh_colors()

    def _on_label_spin(self, value: int) -> None:
        if self.labels is not None and self.labels.selected_label != value:
            self.labels.selected_label = value

    def _on_selected_label(self, *_: Any) -> None:
        value = int(self.labels.selected_label)
        if value >= 1 and value != self.label_spin.value():
            self.label_spin.setValue(value)

    def _on_auto(self, checked: bool) -> None:
        if self.ann is not None:
            self.ann.auto_propagate = bool(checked)

    def next_label(self) -> None:
        """Commit the current object: the next prompts go to a new label (C)."""
        used = set(int(v) for v in np.unique(self.labels.data)) if self.labels is not None else set()
        if self.ann is not None:
            used |= set(self.ann.prompt_labels())
        nxt = self.active_label + 1
        while nxt in used:
            nxt += 1
        self.label_spin.setValue(nxt)
        self.message(f"label {nxt}: the next prompts segment a new object")

    def points_mode(self) -> None:
        """Select the points layer in add mode (P)."""
        if self.points is not None:
            self.viewer.layers.selection.active = self.points
            self.points.mode = "add"

    def box_mode(self) -> None:
        """Select the boxes layer in rectangle mode (B)."""
        if self.boxes is not None:
            self.viewer.layers.selection.active = self.boxes
            self.boxes.mode = "add_rectangle"

    def mask_prompt(self) -> None:
        """The active label's voxels on the current slice as a mask prompt (M)."""
        if self.ann is None:
            return
        try:
            s = self.current_slice()
            mask = np.take(self.ann.labels, s, axis=self.ann.axis) == self.active_label
            self.ann.add_mask(s, mask, label=self.active_label)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        self.segment_slice()

    def undo(self) -> None:
        """Remove the last prompt (U)."""
        if self.ann is None:
            return
        rec = self.ann.undo()
        if rec is None:
            self.message("undo: no prompt to undo")
            return
        self._redraw_prompts()
        self.message(f"undone: {type(rec).__name__.replace('Record', '').lower()} prompt of label {rec.label} "
                     f"on slice {rec.slice_index}")
        self.segment_slice()

    def clear_label(self, label: int | None = None) -> None:
        """Remove the prompts and voxels of one label (Shift+C)."""
        if self.ann is None:
            return
        if self.busy:
            self.message("busy: wait for the running job to finish")
            return
        lab = self.active_label if label is None else int(label)
        try:
            count = self.ann.clear_label(lab)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        self._redraw_prompts()
        self.labels.refresh()
        self.update_tally()
        self.message(f"label {lab} cleared ({count} voxels)")
        if self.ann.pending:
            self.segment_slice()

    def load_labels(self, path: str | Path) -> None:
        """Put a label file (on the image's grid) into the label map."""
        if self.ann is None:
            self.message("labels: start a session first", error=True)
            return
        try:
            lab = load_label(path, like=self.ann.volume)
            self.ann.set_labels(lab.array)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        self.labels.refresh()
        self.update_tally()
        self.message(f"labels loaded from {path}")

    def update_tally(self) -> None:
        """Refresh the per-label table: volume (mL) from the voxel spacing, slices covered."""
        if self.ann is None:
            return
        rows = tally(self.ann.labels, self.ann.volume.spacing, axis=self.ann.axis)
        self.tally_table.setRowCount(len(rows))
        for r, t in enumerate(rows):
            cells = [str(t.label), f"{t.volume_ml:.3f}", f"{t.slices} ({t.first}-{t.last})", str(t.voxels)]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.tally_table.setItem(r, c, item)

    # ================================================================ saving

    def _save_clicked(self) -> None:
        self.save()

    def save(self, path: str | Path | None = None, *, overwrite: bool | None = None) -> Path | None:
        """Save the label map (NIfTI, or DICOM SEG for ``.dcm`` with DICOM input); errors shown."""
        if self.ann is None:
            self.message("save: start a session first", error=True)
            return None
        target = str(path) if path is not None else self.save_edit.text().strip()
        allow = self.overwrite_check.isChecked() if overwrite is None else overwrite
        try:
            written = self.ann.save(target, overwrite=allow)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return None
        self.message(f"saved {written}")
        return written

    # ================================================================ automatic modes

    def add_training_pair(self, image: str | Path, labels: str | Path) -> None:
        """Add a labelled volume (image file, label file) to the coarse network's training set."""
        self.training_pairs.append((Path(image), Path(labels)))
        self.training_list.addItem(f"{Path(image).name}  +  {Path(labels).name}")

    def add_support_pair(self, image: str | Path, labels: str | Path) -> None:
        """Add a labelled support volume (image file, label file) for FATE-SAM's bank."""
        self.support_pairs.append((Path(image), Path(labels)))
        self.support_list.addItem(f"{Path(image).name}  +  {Path(labels).name}")

    def _training_data(self, pairs: list[tuple[Path, Path]], *, current: bool) -> list[tuple[Volume, Volume]]:
        data = automatic.load_pairs(pairs)
        if current and self.ann is not None:
            data.append((self.ann.volume, self.ann.volume.with_array(self.ann.labels.copy())))
        return data

    def train_coarse(self, pairs: list[tuple[Path, Path]] | None = None, *, steps: int | None = None,
                     current: bool | None = None) -> None:
        """Train SAM2Med3D's coarse network on labelled volumes (worker thread)."""
        if self.busy:
            self.message("busy: wait for the running job to finish")
            return
        chosen = list(self.training_pairs if pairs is None else pairs)
        use_current = self.train_current.isChecked() if current is None else current
        n = int(self.steps_spin.value() if steps is None else steps)
        try:
            data = self._training_data(chosen, current=use_current)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return

        def job(progress: Callable[[int, int], None]) -> Any:
            return automatic.train_coarse(data, steps=n, progress=progress)

        def done(seg: Any) -> None:
            self.coarse = seg
            self.message(f"coarse network trained on {len(data)} volume(s), {n} steps; 'Run SAM2Med3D' uses it")

        self._start(f"training the coarse network on {len(data)} volume(s)…", job, done)

    def _idle_session(self, what: str) -> AnnotationSession | None:
        """The open session when no job runs; otherwise ``None``, saying why (prefixed by ``what``)."""
        if self.ann is None or self.busy:
            self.message(f"{what}: start a session first" if self.ann is None else "busy", error=self.ann is None)
            return None
        return self.ann

    def load_coarse(self, path: str | Path) -> None:
        from medsam2kit.coarse import CoarseSegmenter

        try:
            self.coarse = CoarseSegmenter.load(path)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        self.coarse_edit.setText(str(path))
        self.message(f"coarse network loaded from {path}")

    def run_sam2med3d(self) -> None:
        """SAM2Med3D on the image; its prompt slices are highlighted (worker thread)."""
        ann = self._idle_session("SAM2Med3D")
        if ann is None:
            return
        if self.coarse is None and self.coarse_edit.text().strip():
            self.load_coarse(self.coarse_edit.text().strip())
        if self.coarse is None:
            self.message("SAM2Med3D: no coarse network; load a saved one or train one first", error=True)
            return
        coarse = self.coarse
        self._start("SAM2Med3D: coarse network, slice filter, SAM2, fusion…",
                    lambda _p: automatic.run_sam2med3d(ann.predictor, coarse, ann.volume, axis=ann.axis),
                    self._auto_done)

    def build_bank(self, pairs: list[tuple[Path, Path]] | None = None) -> None:
        """Build FATE-SAM's support bank from the support volumes (worker thread)."""
        ann = self._idle_session("FATE-SAM")
        if ann is None:
            return
        chosen = list(self.support_pairs if pairs is None else pairs)
        predictor = ann.predictor

        def job(_p: Callable[[int, int], None]) -> Any:
            return automatic.build_bank(predictor, automatic.load_pairs(chosen))

        def done(bank: Any) -> None:
            self.bank = bank
            self.message(f"support bank: {len(bank)} slices from {len(chosen)} volume(s), labels {bank.labels}")

        self._start(f"building the support bank from {len(chosen)} volume(s)…", job, done)

    def load_bank(self, path: str | Path) -> None:
        try:
            self.bank = automatic.load_bank(path)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
            return
        self.bank_edit.setText(str(path))
        self.message(f"support bank loaded from {path}: {len(self.bank)} slices, labels {self.bank.labels}")

    def run_fewshot(self) -> None:
        """FATE-SAM on the image (worker thread): from the support volumes registered onto it when
        the box is checked and volumes are listed, else from the support bank."""
        ann = self._idle_session("FATE-SAM")
        if ann is None:
            return
        if self.align_check.isChecked() and self.support_pairs:
            chosen = list(self.support_pairs)
            self._start(f"FATE-SAM: registering {len(chosen)} support volume(s) onto the image, then segmenting…",
                        lambda _p: automatic.run_fewshot(ann.predictor, automatic.load_pairs(chosen), ann.volume),
                        self._auto_done)
            return
        if self.bank is None and self.bank_edit.text().strip():
            self.load_bank(self.bank_edit.text().strip())
        if self.bank is None:
            self.message("FATE-SAM: no support bank; add support volumes and 'Build bank', or load a saved bank",
                         error=True)
            return
        bank = self.bank
        self._start("FATE-SAM: retrieving support memories, segmenting every slice…",
                    lambda _p: automatic.run_fewshot(ann.predictor, bank, ann.volume), self._auto_done)

    def _auto_done(self, result: automatic.AutoResult) -> None:
        assert self.ann is not None
        self.ann.reset_prompts()
        self.ann.set_labels(result.labels)
        self._redraw_prompts()
        self.labels.refresh()
        self.last_auto = result
        self.slices_list.clear()
        scale = tuple(float(s) for s in self.image_layer.scale)
        if _layers.PROMPT_SLICES in self.viewer.layers:  # they belong to an earlier result
            self.viewer.layers.remove(_layers.PROMPT_SLICES)
        if result.prompt_slices:
            _layers.prompt_slices_layer(self.viewer, layout=self.ann.seq.layout, slices=dict(result.prompt_slices),
                                        scale=scale)
            for lab, chosen in sorted(result.prompt_slices.items()):
                for s in chosen:
                    item = QListWidgetItem(f"label {lab}: slice {s}")
                    item.setData(Qt.ItemDataRole.UserRole, (result.axis, s))
                    self.slices_list.addItem(item)
        # show the prompt slice that holds the most of the result (any slice without prompts)
        chosen_slices = sorted(s for chosen in result.prompt_slices.values() for s in chosen)
        area = (result.labels > 0).sum(axis=tuple(a for a in range(3) if a != result.axis))
        if chosen_slices:
            self.viewer.dims.set_current_step(result.axis, max(chosen_slices, key=lambda s: (int(area[s]), -s)))
        elif result.labels.any():
            self.viewer.dims.set_current_step(result.axis, int(np.argmax(area)))
        self.update_tally()
        name = "SAM2Med3D" if result.method == "sam2med3d" else "FATE-SAM"
        extra = ""
        if result.prompt_slices:
            extra = "; prompt slices " + ", ".join(f"label {lab}: {list(s)}" for lab, s in sorted(result.prompt_slices.items())
                                                   if s)
        self.message(f"{name}: labels {sorted(int(v) for v in np.unique(result.labels) if v)} in {result.seconds:.1f} s"
                     f"{extra}. Click to correct.")

    def _go_to_slice(self, item: QListWidgetItem) -> None:
        axis, s = item.data(Qt.ItemDataRole.UserRole)
        self.viewer.dims.set_current_step(int(axis), int(s))

    # ================================================================ file dialogs (thin)

    def _choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", "Images (*.nii *.nii.gz *.nrrd *.nhdr *.dcm *.npz);;All (*)")
        if path:
            self.open_image(path)

    def _choose_labels(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load labels", "", "Labels (*.nii *.nii.gz *.nrrd *.dcm *.npz);;All (*)")
        if path:
            self.load_labels(path)

    def _choose_pair(self, add: Callable[[str | Path, str | Path], None]) -> None:
        image, _ = QFileDialog.getOpenFileName(self, "Image", "", "Images (*.nii *.nii.gz *.nrrd *.dcm *.npz);;All (*)")
        if not image:
            return
        guess = automatic.label_file_for(image)
        label, _ = QFileDialog.getOpenFileName(self, "Its labels", str(guess or Path(image).parent),
                                               "Labels (*.nii *.nii.gz *.nrrd *.dcm *.npz);;All (*)")
        if label:
            add(image, label)

    def _choose_coarse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Coarse network", "", "Torch (*.pt);;All (*)")
        if path:
            self.load_coarse(path)

    def _save_coarse(self) -> None:
        if self.coarse is None:
            self.message("save network: train or load a coarse network first", error=True)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save coarse network", "coarse.pt", "Torch (*.pt)")
        if path:
            try:
                self.message(f"coarse network saved to {self.coarse.save(path)}")
            except Exception as err:  # noqa: BLE001
                self._fail(err)

    def _choose_bank(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Support bank", "", "Torch (*.pt);;All (*)")
        if path:
            self.load_bank(path)

    def _save_bank(self) -> None:
        if self.bank is None:
            self.message("save bank: build or load a support bank first", error=True)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save support bank", "bank.pt", "Torch (*.pt)")
        if path:
            try:
                self.message(f"support bank saved to {self.bank.save(path)}")
            except Exception as err:  # noqa: BLE001
                self._fail(err)

    def _choose_save_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", self.save_edit.text() or "labels.nii.gz",
                                              "NIfTI (*.nii.gz *.nii);;DICOM SEG (*.dcm)")
        if path:
            self.save_edit.setText(path)


__all__ = ["AnnotatorWidget"]
