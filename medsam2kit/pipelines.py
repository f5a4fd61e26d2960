"""End-to-end pipelines, each one composable object.

* :class:`~medsam2kit.fewshot.FewShotPipeline`: FATE-SAM (supports -> bank -> label maps).

Example:
    >>> from medsam2kit.pipelines import FewShotPipeline
    >>> FewShotPipeline.__name__
    'FewShotPipeline'
"""

from __future__ import annotations

from medsam2kit.fewshot import FewShotPipeline

__all__ = ["FewShotPipeline"]
