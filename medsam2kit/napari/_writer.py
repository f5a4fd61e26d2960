"""napari writer contribution: a labels layer as NIfTI with the geometry of the image it was read
with (kept in the layer metadata by the reader and the annotator), atomically.

napari's save dialog asks before replacing a file; this writer then replaces it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsam2kit.napari._reader import volume_of_layer
from medsam2kit.napari.session import save_labels


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one labels layer (napari's single-layer writer signature); returns the paths written.

    The geometry is the :class:`~medsam2kit.volume.Volume` in ``attributes["metadata"]``, else
    ``diag(scale)``.

    Example:
        >>> import tempfile, os
        >>> import numpy as np
        >>> out = os.path.join(tempfile.mkdtemp(), "labels.nii.gz")
        >>> write_labels(out, np.ones((2, 3, 4), np.uint8), {"scale": (2.0, 1.0, 1.0), "name": "labels"}) == [out]
        True
    """
    scale = attributes.get("scale") or (1.0, 1.0, 1.0)
    like = volume_of_layer(np.broadcast_to(np.zeros((), np.uint8), np.shape(data)), scale,
                           attributes.get("metadata"), name=str(attributes.get("name", "labels")))
    return [str(save_labels(np.asarray(data), like, path, overwrite=True))]


__all__ = ["write_labels"]
