"""The shared argument checks: one wording of each error, one rule for randomness arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam2kit._validate import (
    check_axis,
    check_generator,
    check_label_ids,
    check_label_map,
    check_rng,
    check_spacing,
    resolve_axis,
)
from medsam2kit.errors import GeometryError, InvalidInputError, InvalidTypeError
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.volume import Volume


def test_axis_and_spacing() -> None:
    assert [check_axis(a) for a in (0, 1, 2, -1, -3, np.int64(1))] == [0, 1, 2, 2, 0, 1]
    with pytest.raises(InvalidInputError, match=r"axis: expected 0, 1 or 2 \(or -3, -2, -1\), got 3"):
        check_axis(3)
    with pytest.raises(InvalidTypeError, match="axis: expected an integer"):
        check_axis(1.0)
    assert check_spacing(None) == (1.0, 1.0, 1.0) and check_spacing(None, default=(2, 1, 1)) == (2.0, 1.0, 1.0)
    assert check_spacing(0.5, ndim=2) == (0.5, 0.5)
    with pytest.raises(GeometryError, match=r"spacing: expected 3 values"):
        check_spacing((1.0, 1.0))
    with pytest.raises(GeometryError, match="finite positive"):
        check_spacing((1.0, 0.0, 1.0))
    with pytest.raises(InvalidTypeError, match="spacing"):
        check_spacing(object())


def test_resolve_axis_uses_the_volume_or_the_spacing() -> None:
    assert resolve_axis(1, shape=(4, 4, 4)) == 1
    assert resolve_axis(None, shape=(10, 384, 384)) == 0
    assert resolve_axis(None, shape=(10, 384, 384), spacing=(1.0, 1.0, 5.0)) == 2
    cine = Volume(np.zeros((20, 4, 4), np.uint8), np.eye(4), kind="cine")
    assert resolve_axis(None, shape=cine.shape, volume=cine) == 0


def test_label_checks() -> None:
    assert check_label_map(np.array([[0, 3]], np.uint16), "labels").dtype == np.int64
    assert check_label_map(np.array([True, False]), "labels").tolist() == [1, 0]
    with pytest.raises(InvalidInputError, match=r"labels: expected label values in \[0, 2\], got range \[0, 3\]"):
        check_label_map(np.array([0, 3]), "labels", maximum=2)
    with pytest.raises(InvalidInputError, match=r"labels: expected label values in \[0, ...\), got range \[-1, 0\]"):
        check_label_map(np.array([-1, 0]), "labels")
    with pytest.raises(InvalidInputError, match="integer label map"):
        check_label_map(np.array([0.5]), "labels")
    with pytest.raises(InvalidTypeError, match="integer label map"):
        check_label_map(np.array(["a"]), "labels")
    assert check_label_ids([2, 1], maximum=2) == [2, 1]
    with pytest.raises(InvalidInputError, match=r"labels: expected label ids >= 1 and <= 2 \(0 is background\), got \[0, 3\]"):
        check_label_ids([0, 1, 3], maximum=2)


def test_numpy_randomness_takes_a_generator_or_an_int_seed() -> None:
    a = check_rng(5).random(3)
    assert np.array_equal(a, np.random.default_rng(5).random(3))
    gen = np.random.default_rng(1)
    assert check_rng(gen) is gen
    assert isinstance(check_rng(None), np.random.Generator)
    with pytest.raises(InvalidInputError, match="rng: expected an integer >= 0"):
        check_rng(-1)
    with pytest.raises(InvalidTypeError, match="rng"):
        check_rng("seed")
    # the phantoms follow the rule: an int seed and a generator seeded with it agree
    assert np.array_equal(ellipsoid_phantom((4, 16, 16), rng=3)[0].array,
                          ellipsoid_phantom((4, 16, 16), rng=np.random.default_rng(3))[0].array)


def test_torch_randomness_takes_a_generator_only() -> None:
    g = torch.Generator().manual_seed(0)
    assert check_generator(g) is g
    assert isinstance(check_generator(None), torch.Generator)
    with pytest.raises(InvalidTypeError, match="generator: expected a torch.Generator or None, got int 0"):
        check_generator(0)
