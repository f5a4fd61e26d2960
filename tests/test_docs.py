"""The documentation site builds in strict mode (any mkdocs or mkdocstrings warning fails)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (pip install -e .[docs])")
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build.py"), "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "load_volume" in api and "SupportMemoryAssembler" in api
    assert "medsam2kit demo" in (tmp_path / "site" / "cli" / "index.html").read_text()


def test_every_guide_page_is_in_the_nav() -> None:
    nav = (ROOT / "docs" / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages not in docs/mkdocs.yml nav: {missing}"
