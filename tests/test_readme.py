"""The README's Python snippet runs as written on a fresh machine (bundled model, no file needed)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from medsam2kit.metrics import dice

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs_and_segments_the_phantom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python snippet"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "mask.nii.gz").is_file()
    mask = np.asarray(namespace["mask"].array, bool)  # type: ignore[attr-defined]
    truth = np.asarray(namespace["label"].array) > 0  # type: ignore[attr-defined]
    assert dice(mask, truth) > 0.8
