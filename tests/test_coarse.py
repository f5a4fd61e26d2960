from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medsam2kit.coarse import (
    CoarseConfig,
    CoarseSegmenter,
    FitResult,
    UNet2D,
    build_network,
    context_indices,
    init_weights,
    normalize_intensity,
    soft_dice_loss,
)
from medsam2kit.errors import (
    CheckpointError,
    FileFormatError,
    GeometryError,
    InvalidInputError,
    InvalidTypeError,
    DeviceError,
    MissingFileError,
    ShapeMismatchError,
)
from medsam2kit.prompts import select_slices_multilabel
from medsam2kit.volume import Volume


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = CoarseConfig(num_labels=1, image_size=16, base_channels=4, depth=2)


def ellipsoid_phantom(seed: int, shape: tuple[int, int, int] = (16, 32, 32)) -> tuple[Volume, np.ndarray]:
    """A noisy bright ellipsoid of random centre and radii; label 1 inside."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    c = rng.uniform([d * 0.4, h * 0.35, w * 0.35], [d * 0.6, h * 0.65, w * 0.65])
    r = rng.uniform([d * 0.25, h * 0.18, w * 0.18], [d * 0.35, h * 0.3, w * 0.3])
    lab = (((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1).astype(
        np.uint8
    )
    img = ((rng.normal(0, 0.5, shape) + lab + 0.2) * 100).astype(np.float32)
    return Volume(img, np.diag([2.0, 1.0, 1.0, 1.0])), lab


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_fit(config: CoarseConfig = TINY, seed: int = 0, steps: int = 3) -> CoarseSegmenter:
    vol, lab = ellipsoid_phantom(1, (6, 16, 16))
    seg = CoarseSegmenter(config)
    seg.fit([vol], [lab], steps=steps, batch_size=4, generator=gen(seed))
    return seg


def test_predict_proba_shape_range_and_sum() -> None:
    seg = tiny_fit(CoarseConfig(num_labels=2, image_size=16, base_channels=4, depth=2, context=1))
    img = np.random.default_rng(3).normal(size=(5, 13, 9)).astype(np.float32)
    proba = seg.predict_proba(img)
    assert proba.shape == (3, 5, 13, 9) and proba.dtype == np.float32
    assert proba.min() >= 0.0 and proba.max() <= 1.0
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    assert seg.predict_labels(img).shape == (5, 13, 9)
    np.testing.assert_array_equal(seg(Volume(img, np.eye(4))), proba)


def test_axis_from_geometry_and_exact_grid() -> None:
    seg = tiny_fit()
    vol = Volume(
        np.random.default_rng(0).normal(size=(7, 11, 4)).astype(np.float32), np.diag([1.0, 1.0, 3.0, 1.0])
    )
    assert seg.axis_for(vol) == 2
    assert seg.predict_proba(vol).shape == (2, 7, 11, 4)
    fixed = CoarseSegmenter(CoarseConfig(num_labels=1, image_size=16, base_channels=4, depth=2, axis=1))
    assert fixed.axis_for(vol) == 1
    # The slicing axis matters: an image constant along axis 2 gives slices that are equal along it.
    img = np.repeat(np.random.default_rng(1).normal(size=(7, 11, 1)), 4, axis=2).astype(np.float32)
    seg2 = tiny_fit(CoarseConfig(num_labels=1, image_size=16, base_channels=4, depth=2, axis=2))
    p = seg2.predict_proba(img)
    np.testing.assert_array_equal(p[:, :, :, 0], p[:, :, :, 3])


def test_context_indices_replicate_edges() -> None:
    assert context_indices(4, 2).tolist() == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 3],
        [1, 2, 3, 3, 3],
    ]
    assert context_indices(1, 1).tolist() == [[0, 0, 0]]


def test_normalize_intensity() -> None:
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(4, 8, 8))
    p = normalize_intensity(x)
    assert p.dtype == np.float32 and p.min() == 0.0 and p.max() == 1.0
    z = normalize_intensity(x, mode="zscore")
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1.0) < 1e-5
    assert not normalize_intensity(np.full((2, 2, 2), 7.0)).any()
    with pytest.raises(InvalidInputError):
        normalize_intensity(x, mode="minmax")  # type: ignore[arg-type]


def test_soft_dice_loss() -> None:
    t = torch.zeros(2, 8, 8, dtype=torch.long)
    t[:, 2:5, 2:5] = 1
    perfect = torch.stack([(t == 0).float(), (t == 1).float()], 1) * 40
    assert float(soft_dice_loss(perfect, t)) < 1e-4
    wrong = torch.stack([(t == 1).float(), (t == 0).float()], 1) * 40
    assert float(soft_dice_loss(wrong, t)) > 0.99


def test_determinism_under_seed_and_no_global_rng() -> None:
    state = torch.random.get_rng_state()
    vol, lab = ellipsoid_phantom(1, (6, 16, 16))
    a, b = CoarseSegmenter(TINY), CoarseSegmenter(TINY)
    ra = a.fit([vol], [lab], steps=3, batch_size=4, generator=gen(7))
    rb = b.fit([vol], [lab], steps=3, batch_size=4, generator=gen(7))
    assert torch.equal(torch.random.get_rng_state(), state), "fit must not touch the global RNG"
    assert a.network is not None and b.network is not None
    for (ka, va), (kb, vb) in zip(a.network.state_dict().items(), b.network.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert ra.losses == rb.losses and len(ra.losses) == 3
    c = tiny_fit(seed=8)
    assert c.network is not None
    assert not torch.equal(a.network.head.weight, c.network.head.weight)
    with pytest.raises(InvalidTypeError, match="generator"):  # torch randomness takes a Generator, not a seed
        CoarseSegmenter(TINY).fit([vol], [lab], steps=1, generator=7)  # type: ignore[arg-type]


def test_fit_returns_a_result_with_history() -> None:
    vol, lab = ellipsoid_phantom(1, (6, 16, 16))
    result = CoarseSegmenter(TINY).fit([vol], [lab], steps=4, batch_size=4, lr=0.01, generator=gen(0))
    assert isinstance(result, FitResult) and result.steps == 4 and result.num_slices == 6
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]
    assert [r["epoch"] for r in result.history] == [0, 0, 1, 1]  # 6 slices, batches of 4: 2 steps an epoch
    assert result.history[0]["lr"] == pytest.approx(0.01)  # cosine decay from the peak
    assert all(r["kind"] == "step" and math.isfinite(r["loss"]) for r in result.history)
    assert result.history[-1]["lr"] < result.history[0]["lr"]


def test_device_is_resolved_by_the_predictor_rule() -> None:
    vol, lab = ellipsoid_phantom(1, (6, 16, 16))
    seg = CoarseSegmenter(TINY)
    seg.fit([vol], [lab], steps=1, generator=gen(0), device="cpu")
    assert seg.device == torch.device("cpu")
    with pytest.raises(DeviceError, match="device"):
        seg.fit([vol], [lab], steps=1, generator=gen(0), device="tpu")


def test_init_weights_uses_generator_only() -> None:
    net = build_network(TINY)
    init_weights(net, torch.Generator().manual_seed(0))
    first = [p.clone() for p in net.parameters()]
    init_weights(net, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(first, net.parameters()))
    assert tuple(UNet2D(3, 4, base_channels=2, depth=3)(torch.zeros(2, 3, 24, 24)).shape) == (2, 4, 24, 24)


def test_steps_epochs_and_warm_start() -> None:
    vol, lab = ellipsoid_phantom(1, (6, 16, 16))
    seg = CoarseSegmenter(TINY)
    result = seg.fit([vol], [lab], epochs=2, batch_size=4, generator=gen(0))
    assert result.steps == 2 * math.ceil(6 / 4) and result.num_slices == 6
    assert seg.network is not None
    before = seg.network.head.weight.clone()
    seg.fit([vol], [lab], steps=1, batch_size=4, generator=gen(0), warm_start=True)
    assert not torch.equal(before, seg.network.head.weight)
    with pytest.raises(InvalidInputError, match="warm_start"):
        CoarseSegmenter(TINY).fit([vol], [lab], steps=1, warm_start=True)


def test_save_load_round_trip_exact(tmp_path: Path) -> None:
    seg = tiny_fit(
        CoarseConfig(num_labels=2, image_size=16, base_channels=4, depth=2, context=1, normalization="zscore")
    )
    path = seg.save(tmp_path / "coarse.pt")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format_version", "config", "state_dict"} and isinstance(raw["config"], str)
    loaded = CoarseSegmenter.load(path)
    assert loaded.config == seg.config
    img = np.random.default_rng(4).normal(size=(4, 10, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(img), seg.predict_proba(img))
    assert [p.name for p in tmp_path.iterdir()] == ["coarse.pt"]  # no temporary file left


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        CoarseSegmenter.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(FileFormatError):
        CoarseSegmenter.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(FileFormatError):
        CoarseSegmenter.load(other)
    seg = tiny_fit()
    assert seg.network is not None
    wrong = tmp_path / "wrong.pt"
    torch.save(
        {
            "format_version": 1,
            "config": CoarseConfig(num_labels=3).to_json(),
            "state_dict": seg.network.state_dict(),
        },
        wrong,
    )
    with pytest.raises(CheckpointError):
        CoarseSegmenter.load(wrong)
    with pytest.raises(InvalidInputError):
        CoarseSegmenter(TINY).save(tmp_path / "untrained.pt")
    with pytest.raises(MissingFileError):
        seg.save(tmp_path / "missing_dir" / "m.pt")


def test_learns_ellipsoid_phantom() -> None:
    train = [ellipsoid_phantom(i) for i in range(3)]
    vol, lab = ellipsoid_phantom(10)
    config = CoarseConfig(num_labels=1, image_size=32, base_channels=8, depth=2)
    seg = CoarseSegmenter(config)
    seg.fit([v for v, _ in train], [l for _, l in train], steps=60, batch_size=8, generator=gen(0))
    pred = seg.predict_proba(vol)[1] > 0.5
    truth = lab > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    print(f"ellipsoid phantom: held-out Dice {dice:.3f} after 60 CPU steps")
    assert dice > 0.8


def test_input_errors() -> None:
    vol, lab = ellipsoid_phantom(1, (6, 16, 16))
    seg = CoarseSegmenter(TINY)
    with pytest.raises(InvalidInputError, match="fit\\(\\)"):
        seg.predict_proba(vol)
    with pytest.raises(ShapeMismatchError, match="labels\\[0\\]"):
        seg.fit([vol], [lab[:, :, :-1]], steps=1)
    with pytest.raises(InvalidInputError, match="3 dimensions"):
        seg.fit([vol.array[0]], [lab[0]], steps=1)
    nan = vol.array.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="finite"):
        seg.fit([nan], [lab], steps=1)
    with pytest.raises(InvalidInputError, match="label values"):
        seg.fit([vol], [lab * 2], steps=1)
    with pytest.raises(InvalidInputError, match="label values"):
        seg.fit([vol], [lab.astype(np.int16) - 1], steps=1)
    with pytest.raises(InvalidInputError, match="one per volume"):
        seg.fit([vol, vol], [lab], steps=1)
    with pytest.raises(InvalidInputError, match="at least one"):
        seg.fit([], [], steps=1)
    with pytest.raises(InvalidInputError, match="at most one"):
        seg.fit([vol], [lab], steps=1, epochs=1)
    with pytest.raises(InvalidInputError, match="lr"):
        seg.fit([vol], [lab], steps=1, lr=0.0)
    with pytest.raises(InvalidTypeError):
        seg.fit(vol, lab, steps=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        seg.fit(["image.nii"], [lab], steps=1)  # type: ignore[list-item]
    shifted = np.diag([2.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0
    moved = Volume(lab, shifted)
    with pytest.raises(GeometryError):
        seg.fit([vol], [moved], steps=1)
    fitted = tiny_fit()
    with pytest.raises(InvalidInputError, match="finite"):
        fitted.predict_proba(nan)
    with pytest.raises(InvalidInputError, match="3 dimensions"):
        fitted.predict_proba(np.zeros((4, 4), np.float32))
    with pytest.raises(InvalidTypeError):
        fitted.predict_proba(np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="label values"):  # the hierarchy keeps `except ValueError` working
        seg.fit([vol], [lab * 2], steps=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_labels": 0},
        {"context": -1},
        {"image_size": 30, "depth": 2},
        {"normalization": "minmax"},
        {"percentiles": (99.0, 1.0)},
        {"axis": 3},
        {"norm": "layer"},
        {"depth": 0},
    ],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        CoarseConfig(**kwargs)  # type: ignore[arg-type]


def test_config_json_round_trip() -> None:
    cfg = CoarseConfig(num_labels=2, context=2, percentiles=(1.0, 99.0), axis=1, norm="group")
    assert CoarseConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(FileFormatError):
        CoarseConfig.from_json('{"num_labels": 1, "bogus": 2}')


def test_segmenter_and_a_plain_function_honour_the_coarse_model_contract() -> None:
    """CoarseModel is a protocol (any callable passes isinstance), so check behaviour instead: the
    fitted segmenter and a plain function both give (L + 1, D, H, W) probabilities summing to 1
    that the slice filter accepts with the volume's geometry; a label map does not pass."""
    vol, _ = ellipsoid_phantom(1, (6, 16, 16))

    def model(volume: Volume) -> np.ndarray:
        fg = (volume.array > 100).astype(np.float32)
        return np.stack([1 - fg, fg])

    for candidate in (tiny_fit(), model):
        proba = candidate(vol)
        assert proba.shape == (2, *vol.shape) and proba.dtype == np.float32
        np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
        assert set(select_slices_multilabel(proba, like=vol)) == {1}
    with pytest.raises(InvalidInputError, match="proba"):
        select_slices_multilabel(model(vol)[1], like=vol)
