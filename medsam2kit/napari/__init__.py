"""napari plugin (the ``medsam2kit[napari]`` extra): an interactive SAM2 annotator for 3D images
and ultrasound cines.

* a reader (:mod:`medsam2kit.napari._reader`): NIfTI, NRRD, npz, DICOM files, series folders and
  cines through :mod:`medsam2kit.io`, shown with the real voxel spacing, the geometry kept in the
  layer metadata;
* the annotator dock widget (:mod:`medsam2kit.napari._widget`): model from the zoo, points
  (positive / negative), boxes and painted masks on any slice, propagation, corrections without
  re-encoding, several labels, undo, SAM2Med3D and FATE-SAM modes, saving as NIfTI or DICOM SEG;
* a writer for labels layers (NIfTI with the image's geometry).

The logic lives in :mod:`medsam2kit.napari.session` and :mod:`medsam2kit.napari.automatic`, which
import neither napari nor Qt (this package's ``__init__`` does not either), so scripts and tests
can drive an annotation session without a viewer.

Start it with ``napari`` (Plugins > SAM2 annotator) or ``python -m medsam2kit.napari [FILE]``.
"""

from medsam2kit.napari.session import AnnotationSession, LabelTally, save_labels, tally

__all__ = ["AnnotationSession", "LabelTally", "save_labels", "tally"]
