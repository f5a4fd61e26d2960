"""Calls run in worker processes (medsam2kit._parallel), and a predictor that travels to one."""

from __future__ import annotations

import operator
from functools import partial

import numpy as np
import pytest
import torch

from medsam2kit._parallel import run_calls, usable_cores
from medsam2kit.phantoms import ellipsoid_phantom
from medsam2kit.predictor import SAM2Predictor
from medsam2kit.tasks import one_prompt_propagation


def test_run_calls_reports_each_result_under_its_index_in_and_out_of_process() -> None:
    calls = [partial(operator.mul, k, 3) for k in range(5)]
    for workers in (1, 2):
        done: dict[int, int] = {}
        order: list[int] = []
        run_calls(calls, workers, lambda i, r: (done.__setitem__(i, r), order.append(i)))
        assert done == {k: 3 * k for k in range(5)}
        if workers == 1:
            assert order == list(range(5))  # in order, here
    assert 1 <= usable_cores()


def test_run_calls_raises_a_workers_error() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        run_calls([partial(int, "7"), partial(int, "x"), partial(int, "8")], 2, lambda i, r: None)


def _propagated_twice(predictor: SAM2Predictor) -> tuple[np.ndarray, np.ndarray]:
    image, label = ellipsoid_phantom((6, 40, 40), rng=3)
    first = one_prompt_propagation(predictor, image, label).labels
    return first, one_prompt_propagation(predictor, image, label, prompt="box").labels


def test_a_predictor_sent_to_a_worker_keeps_its_memory_cast(pred: SAM2Predictor) -> None:
    # In a fresh process a pickled model's hooks keep ids that the process hands out again: a
    # temporary hook of the tracking step took the memory cast's id, removed it with its own,
    # and the next fp32 propagation crashed on the bf16 memory (the demo's first parallel run).
    # Four calls on two workers: one worker runs at least two.
    here = _propagated_twice(pred)
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    run_calls([partial(_propagated_twice, pred)] * 4, 2, done.__setitem__)
    assert sorted(done) == [0, 1, 2, 3]
    for first, second in done.values():
        # one torch thread there, two here: the same masks up to summation order
        assert np.mean(first == here[0]) > 0.99 and np.mean(second == here[1]) > 0.99
        assert (second > 0).any()


def test_an_unpickled_model_registers_its_cast_anew(pred: SAM2Predictor) -> None:
    import pickle

    from medsam2kit.backend.model import _cast_memory_to_query_dtype

    copy = pickle.loads(pickle.dumps(pred)).model
    hooks = copy.memory_attention._forward_pre_hooks
    assert list(hooks.values()).count(_cast_memory_to_query_dtype) == 1
    assert copy.memory_attention._forward_pre_hooks_with_kwargs[next(iter(hooks))]
    # its id is this process's newest: a hook registered next cannot take it
    handle = copy.memory_attention.register_forward_pre_hook(lambda m, a: None)
    handle.remove()
    assert list(copy.memory_attention._forward_pre_hooks.values()) == [_cast_memory_to_query_dtype]
    assert torch.equal(copy.memory_attention.layers[0].self_attn.q_proj.weight,
                       pred.model.memory_attention.layers[0].self_attn.q_proj.weight)
