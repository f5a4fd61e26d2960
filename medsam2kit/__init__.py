"""medsam2kit: composable adapters that make SAM2 work on CT/MRI volumes and ultrasound video.

Data flows one way: file -> :mod:`medsam2kit.io` (array + geometry) -> :mod:`medsam2kit.sequencer`
(frames) -> :mod:`medsam2kit.predictor` (logits per frame) -> sequencer inverse -> io (a mask with
the input's geometry). Submodules are imported on use, so ``import medsam2kit`` stays light.
"""

from __future__ import annotations

from medsam2kit.errors import MedSAM2KitError
from medsam2kit.volume import Volume

__version__ = "0.1.0"

__all__ = ["MedSAM2KitError", "Volume", "__version__"]
