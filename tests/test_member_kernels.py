"""The member dimension of the fused kernels (an ensemble's K networks in one launch), against the reference.

Each member's result is checked against the single-network reference operation run on that
member alone — bias + activation, bias + softmax, the losses (each member's own mean), and the
optimizer updates with per-member hyperparameters, step counts and skip flags — on the host
build of the kernels and on a GPU (marked ``gpu``), at odd sizes, with a grid capped so that
threads loop, in float32 and float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_gpu

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.backends.base import Backend, adam_math, sgd_math
from gpubp.losses import LOSSES

REFERENCE = Backend(np)
TOL = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=5e-6, atol=5e-6)}
MEMBER_SHAPES = [(1, 1, 1), (3, 7, 13), (5, 33, 10), (2, 0, 4)]


@pytest.fixture(params=["fused-host", pytest.param("cupy", marks=[pytest.mark.gpu, requires_gpu])])
def kb(request):
    if request.param == "fused-host":
        import kernel_host

        return kernel_host.HostFusedBackend(request.getfixturevalue("host_kernels"))
    return gpubp.get_backend("cupy")


@pytest.fixture(params=[1000, 2], ids=["grid", "capped-grid"])
def blocks(request, kb, monkeypatch):
    monkeypatch.setattr(kb.ops, "max_blocks", request.param)
    return request.param


def _stacked_params(rng, members: int, per_member: int, dtype: str) -> np.ndarray:
    return rng.normal(0, 1, (members, per_member)).astype(dtype)


def _bias_view(params, offset: int, cols: int):
    """Member biases as an ensemble holds them: the (K, 1, cols) view of its (K, P) buffer."""
    members = params.shape[0]
    return params[:, offset:offset + cols].reshape(members, 1, cols)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", MEMBER_SHAPES, ids=str)
@pytest.mark.parametrize("name", ["tanh", "gelu", "relu", "identity"])
def test_bias_activation_forward_members(kb, blocks, name, shape, dtype, rng):
    members, rows, cols = shape
    activation = ACTIVATIONS[name]
    z = rng.normal(0, 2, shape).astype(dtype)
    params = _stacked_params(rng, members, cols + 5, dtype)
    z_dev, p_dev = kb.asarray(z), kb.asarray(params)
    a_dev = kb.empty(shape, dtype) if activation.needs_z else z_dev
    kb.bias_activation_forward(activation, z_dev, _bias_view(p_dev, 3, cols), a_dev, None)
    for k in range(members):
        z_ref = z[k].copy()
        a_ref = np.empty_like(z_ref) if activation.needs_z else z_ref
        REFERENCE.bias_activation_forward(activation, z_ref, params[k, 3:3 + cols], a_ref, np.empty_like(z_ref))
        np.testing.assert_allclose(kb.to_host(a_dev)[k], a_ref, **TOL[dtype])
        if activation.needs_z:
            np.testing.assert_allclose(kb.to_host(z_dev)[k], z_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", MEMBER_SHAPES, ids=str)
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_output_layer_and_loss_members(kb, blocks, loss, shape, dtype, rng):
    """bias + output activation, then each member's loss and δ[L]: as each member alone."""
    members, rows, cols = shape
    spec = LOSSES[loss]
    z = rng.normal(0, 2, shape).astype(dtype)
    params = _stacked_params(rng, members, cols + 2, dtype)
    if loss == "cross_entropy":
        y = np.eye(max(cols, 1), dtype=dtype)[rng.integers(0, max(cols, 1), (members, rows))][..., :cols]
    else:
        y = rng.uniform(0, 1, shape).astype(dtype)
    weight = rng.uniform(0.1, 2, (members, rows, 1)).astype(dtype)
    for w in (None, weight):
        z_dev, p_dev = kb.asarray(z), kb.asarray(params)
        a_dev = kb.empty(shape, dtype) if spec.output is not None else z_dev
        tmp, rows_dev = kb.empty(shape, dtype), kb.empty((2, members * rows, 1), dtype)
        bias = _bias_view(p_dev, 1, cols)
        if spec.output is not None:
            kb.bias_loss_output(spec, z_dev, bias, a_dev, tmp, rows_dev)
        else:
            kb.add_bias(z_dev, bias)
        delta = kb.empty(shape, dtype)

        def stack(x):
            return x.reshape(members * rows, x.shape[-1])

        losses = kb.loss_value_and_delta(spec, stack(z_dev), stack(a_dev), stack(kb.asarray(y)), stack(delta),
                                         stack(tmp), rows_dev, None if w is None else stack(kb.asarray(w)),
                                         members=members)
        losses = np.reshape(kb.to_host(kb.xp.asarray(losses)), members)  # (one member: a 0-d loss, as a network's)
        for k in range(members if rows else 0):  # (an empty batch: the kernels launch nothing)
            z_ref = z[k] + params[k, 1:1 + cols]
            a_ref = np.empty_like(z_ref) if spec.output is not None else z_ref
            rows_ref, tmp_ref = np.empty((2, rows, 1), dtype), np.empty_like(z_ref)
            if spec.output is not None:
                spec.output(np, z_ref, a_ref, tmp_ref, rows_ref)
            delta_ref = np.empty_like(z_ref)
            expected = REFERENCE.loss_value_and_delta(spec, z_ref, a_ref, y[k], delta_ref, tmp_ref, rows_ref,
                                                      None if w is None else w[k])
            np.testing.assert_allclose(kb.to_host(a_dev)[k], a_ref, **TOL[dtype])
            np.testing.assert_allclose(kb.to_host(delta)[k], delta_ref, **TOL[dtype])
            np.testing.assert_allclose(float(losses[k]), float(expected), rtol=TOL[dtype]["rtol"] * 10)


SGD_MEMBERS = {
    "momentum": dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.0, 0.5], nesterov=False, weight_decay=[0.0, 1e-2, 0.5]),
    "nesterov": dict(lr=[0.1, 0.05, 0.2], momentum=[0.9, 0.3, 0.5], nesterov=True, weight_decay=[1e-3, 0.0, 0.0]),
    "plain": dict(lr=[0.1, 0.01, 0.3], momentum=[0.0, 0.0, 0.0], nesterov=False, weight_decay=[0.0, 0.0, 0.0]),
}
ADAM_MEMBERS = {
    "adam": dict(lr=[1e-2, 3e-3, 5e-2], beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=[0.0, 0.1, 0.0],
                 decoupled=False),
    "adamw": dict(lr=[1e-2, 3e-3, 5e-2], beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=[0.1, 0.0, 0.3],
                  decoupled=True),
}
SKIPS = [[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]]
"""The members' skip flags at steps 1–4: a member skipped at a step is left exactly as it was."""


def _one(hyper: dict, k: int) -> dict:
    return {name: (value[k] if isinstance(value, list) else value) for name, value in hyper.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("per_member", [1, 1001, 0])
@pytest.mark.parametrize("case", sorted(SGD_MEMBERS))
def test_sgd_step_members(kb, blocks, case, per_member, dtype, rng):
    hyper = SGD_MEMBERS[case]
    params = _stacked_params(rng, 3, per_member, dtype)
    velocity = np.zeros_like(params)
    p_dev, v_dev, steps = kb.asarray(params), kb.asarray(velocity), kb.zeros(3, np.int64)
    for skip in SKIPS:
        grads = rng.normal(0, 1, params.shape).astype(dtype)
        for k in np.flatnonzero(np.array(skip) == 0):
            sgd_math(np, params[k], grads[k], velocity[k], np.empty_like(params[k]), **_one(hyper, k))
        kb.sgd_update_members(p_dev, kb.asarray(grads), v_dev if any(hyper["momentum"]) else None, steps,
                              kb.asarray(np.array(skip, np.int32)), **hyper)
    np.testing.assert_allclose(kb.to_host(p_dev), params, **TOL[dtype])
    if any(hyper["momentum"]):
        np.testing.assert_allclose(kb.to_host(v_dev), velocity, **TOL[dtype])
    assert kb.to_host(steps).tolist() == [3, 3, 3]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("per_member", [1, 1001, 0])
@pytest.mark.parametrize("case", sorted(ADAM_MEMBERS))
def test_adam_step_members(kb, blocks, case, per_member, dtype, rng):
    """Each member's step count (and so its bias corrections) is its own: skipped steps are not counted."""
    hyper = ADAM_MEMBERS[case]
    params = _stacked_params(rng, 3, per_member, dtype)
    m, v = np.zeros_like(params), np.zeros_like(params)
    p_dev, m_dev, v_dev, steps = kb.asarray(params), kb.asarray(m), kb.asarray(v), kb.zeros(3, np.int64)
    taken = np.zeros(3, dtype=int)
    for skip in SKIPS:
        grads = rng.normal(0, 1, params.shape).astype(dtype)
        for k in np.flatnonzero(np.array(skip) == 0):
            taken[k] += 1
            adam_math(np, params[k], grads[k], m[k], v[k], np.empty_like(params[k]), np.empty_like(params[k]),
                      step=int(taken[k]), **_one(hyper, k))
        kb.adam_update_members(p_dev, kb.asarray(grads), m_dev, v_dev, steps, kb.asarray(np.array(skip, np.int32)),
                               **hyper)
    for actual, expected in ((p_dev, params), (m_dev, m), (v_dev, v)):
        np.testing.assert_allclose(kb.to_host(actual), expected, **TOL[dtype])
    assert kb.to_host(steps).tolist() == taken.tolist() == [3, 3, 3]


def test_the_reference_member_updates_match_the_kernels_with_skips(kb, rng):
    """The reference's own member path (rows gathered when some members are skipped) agrees too."""
    params = _stacked_params(rng, 3, 50, "float64")
    reference, p_dev = params.copy(), kb.asarray(params)
    m_ref, v_ref = np.zeros_like(params), np.zeros_like(params)
    m_dev, v_dev = kb.asarray(m_ref), kb.asarray(v_ref)
    s_ref, s_dev = np.zeros(3, np.int64), kb.zeros(3, np.int64)
    for skip in SKIPS:
        grads = rng.normal(0, 1, params.shape)
        flags = np.array(skip, np.int32)
        REFERENCE.adam_update_members(reference, grads, m_ref, v_ref, s_ref, flags, **ADAM_MEMBERS["adam"])
        kb.adam_update_members(p_dev, kb.asarray(grads), m_dev, v_dev, s_dev, kb.asarray(flags),
                               **ADAM_MEMBERS["adam"])
    np.testing.assert_allclose(kb.to_host(p_dev), reference, **TOL["float64"])
    assert s_ref.tolist() == kb.to_host(s_dev).tolist()


def test_the_member_grid_is_one_block_tall_per_member(host_kernels):
    import kernel_host

    kb = kernel_host.HostFusedBackend(host_kernels, max_blocks=8)
    params = np.zeros((5, 3000))
    kb.sgd_update_members(params, np.ones_like(params), None, np.zeros(5, np.int64), None, lr=[1.0] * 5,
                          momentum=[0.0] * 5, nesterov=False, weight_decay=[0.0] * 5)
    name, grid, block = host_kernels.launches[-1]
    assert name == "gpubp::sgd_step_members<double>" and grid == (1, 5) and block == (256, 1)
    assert (params == -1).all()
