"""The on-disk feature store: exact reuse, and every mismatch detected and recomputed."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medsam2kit.errors import InvalidInputError
from medsam2kit.fewshot import SupportBank, SupportMemoryAssembler
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.predictor import SAM2Predictor, build_model
from medsam2kit.store import FeatureStore, FeatureStoreWarning

S = 128


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("sam2.1_hiera_micro", device="cpu")
    with torch.no_grad():  # random weights often say "no object": raise the object-score bias
        m.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.add_(10.0)
    return m


def _frames(seed: int = 0, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, 3, S, S, generator=g) * 0.3
    frames[:, :, 40:80, 40:80] += 1.5
    return frames


def _mask() -> torch.Tensor:
    m = torch.zeros(S, S, dtype=torch.bool)
    m[42:78, 42:78] = True
    return m


def _run(pred: SAM2Predictor, frames: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    session = pred.start(frames)
    session.add_mask(2, _mask())
    logits = session.propagate("both").low_res_logits
    return logits, session.encoder_calls, session.cache.stats.store_hits


def test_second_run_reads_every_frame_and_equals_a_fresh_run(model: torch.nn.Module, tmp_path: Path) -> None:
    frames = _frames()
    pred = SAM2Predictor(model, feature_store=FeatureStore(tmp_path / "store"))
    first, calls1, hits1 = _run(pred, frames)
    second, calls2, hits2 = _run(pred, frames)
    fresh, _, _ = _run(SAM2Predictor(model), frames)
    assert (calls1, hits1) == (6, 0) and (calls2, hits2) == (0, 6)
    assert torch.equal(first, fresh) and torch.equal(second, fresh)  # stored as produced: exact
    files = sorted(p.name for p in (tmp_path / "store").rglob("*.safetensors"))
    assert len(files) == 7 and "pos.safetensors" in files  # one file per frame + positional encodings
    # batched filling reads the store too
    session = pred.start(frames)
    session.encode_all(batch_size=4)
    assert session.encoder_calls == 0 and session.cache.stats.store_hits == 6


def test_other_weights_and_other_frames_are_not_reused(model: torch.nn.Module, tmp_path: Path) -> None:
    frames = _frames()
    store = FeatureStore(tmp_path)
    _run(SAM2Predictor(model, feature_store=store), frames)
    other = build_model("sam2.1_hiera_micro", device="cpu")
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.image_encoder.trunk.patch_embed.proj.bias.add_(1e-3)
    _, calls, hits = _run(SAM2Predictor(other, feature_store=store), frames)
    assert (calls, hits) == (6, 0)
    changed = frames.clone()
    changed[4] += 0.01  # one frame differs (another window, say)
    _, calls, hits = _run(SAM2Predictor(model, feature_store=store), changed)
    assert (calls, hits) == (1, 5)


def test_bf16_store_halves_the_disk(model: torch.nn.Module, tmp_path: Path) -> None:
    frames = _frames()
    exact = FeatureStore(tmp_path / "fp32")
    half = FeatureStore(tmp_path / "bf16", dtype=torch.bfloat16)
    fresh, _, _ = _run(SAM2Predictor(model, feature_store=exact), frames)
    _run(SAM2Predictor(model, feature_store=half), frames)
    again, calls, _ = _run(SAM2Predictor(model, feature_store=half), frames)
    assert calls == 0
    size = lambda root: sum(p.stat().st_size for p in root.rglob("[0-9a-f]*.safetensors"))  # noqa: E731
    assert size(tmp_path / "bf16") < 0.55 * size(tmp_path / "fp32")
    assert 0 < (again - fresh)[torch.isfinite(fresh)].abs().max().item() <= 0.5


def test_corrupt_and_foreign_files_are_recomputed_with_a_warning(model: torch.nn.Module, tmp_path: Path) -> None:
    frames = _frames()
    pred = SAM2Predictor(model, feature_store=FeatureStore(tmp_path))
    fresh, _, _ = _run(pred, frames)
    files = sorted(p for p in tmp_path.rglob("[0-9a-f]*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    shutil.copy(files[2], files[1])  # another frame's features under this frame's name
    with pytest.warns(FeatureStoreWarning) as record:
        again, calls, hits = _run(pred, frames)
    messages = " ".join(str(w.message) for w in record)
    assert "cannot be read" in messages and "instead of the expected signatures" in messages
    assert (calls, hits) == (2, 4)
    assert torch.equal(again, fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: clean now
        _, calls, hits = _run(pred, frames)
    assert (calls, hits) == (0, 6)


def test_an_unwritable_store_warns_once_and_the_run_goes_on(model: torch.nn.Module, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    pred = SAM2Predictor(model, feature_store=FeatureStore(blocker / "store"))
    with pytest.warns(FeatureStoreWarning, match="going on without it") as record:
        logits, calls, _ = _run(pred, _frames())
    assert len(record) == 1 and calls == 6
    assert torch.equal(logits, _run(SAM2Predictor(model), _frames())[0])


def test_bad_arguments(model: torch.nn.Module, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidInputError, match="root"):
        FeatureStore(tmp_path / "f")
    with pytest.raises(InvalidInputError, match="dtype"):
        FeatureStore(tmp_path, dtype=torch.int8)
    with pytest.raises(TypeError, match="feature_store"):
        SAM2Predictor(model, feature_store=str(tmp_path))  # type: ignore[arg-type]


def test_fewshot_query_reuses_the_store(model: torch.nn.Module, tmp_path: Path) -> None:
    pred = SAM2Predictor(model, feature_store=FeatureStore(tmp_path))
    image, label = ellipsoid_phantom((6, 48, 40), (3.0, 1.0, 1.0), rng=1)
    query, _ = ellipsoid_phantom((6, 48, 40), (3.0, 1.0, 1.0), rng=2)
    assembler = SupportMemoryAssembler(pred, SupportBank.build(pred, [(image, label)]))
    first = assembler.segment(query)
    second = assembler.segment(query)
    assert first.encoder_calls == 6 and second.encoder_calls == 0
    for lab in first.logits:
        np.testing.assert_array_equal(first.logits[lab].array, second.logits[lab].array)


def test_fewshot_command_with_a_feature_store_encodes_the_query_once(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from medsam2kit.cli import main
    from medsam2kit.io import save_mask, save_volume

    image, label = ellipsoid_phantom((6, 48, 40), (3.0, 1.0, 1.0), rng=1)
    query, _ = ellipsoid_phantom((6, 48, 40), (3.0, 1.0, 1.0), rng=2)
    save_volume(image, tmp_path / "a_img.nii.gz")
    save_mask(label.array, image, tmp_path / "a_label.nii.gz")
    save_volume(query, tmp_path / "q_img.nii.gz")
    # the bundled model adapts a copy to the supports by default (2 steps here): the copy's frozen
    # encoder reads the same store
    args = ["fewshot", "--support", str(tmp_path / "a_img.nii.gz"), str(tmp_path / "a_label.nii.gz"),
            "--query", str(tmp_path / "q_img.nii.gz"), "--feature-store", str(tmp_path / "features"),
            "--adapt-steps", "2"]
    assert main([*args, "--out", str(tmp_path / "one.nii.gz")]) == 0
    assert "6 query encoder calls" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "two.nii.gz")]) == 0
    assert "0 query encoder calls" in capsys.readouterr().out
