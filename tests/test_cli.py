from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam2kit.cli import main


def test_info_prints_versions_and_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sam2 1.1.0" in out and "sam2.1_hiera_micro" in out and "device auto ->" in out


def test_demo_writes_masks_with_the_input_geometry(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    image = nib.load(out / "image.nii.gz")
    mask = nib.load(out / "mask.nii.gz")
    truth = nib.load(out / "ground_truth.nii.gz")
    for other in (mask, truth):
        assert other.shape == image.shape
        np.testing.assert_allclose(other.affine, image.affine, atol=1e-5)
        assert nib.aff2axcodes(other.affine) == nib.aff2axcodes(image.affine)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoder_calls"] == summary["frames"]  # every slice encoded exactly once
    assert np.asarray(truth.dataobj).max() == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "ground_truth.nii.gz", "image.nii.gz", "mask.nii.gz", "summary.json"
    ]


def test_demo_errors_exit_1_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--config", "no_such_config"]) == 1
    assert "no_such_config" in capsys.readouterr().err
    assert not out.exists()
    file_out = tmp_path / "file"
    file_out.write_text("x")
    assert main(["demo", "--out", str(file_out)]) == 1
    assert "--out" in capsys.readouterr().err


def test_help_and_usage_errors() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
