"""Each fused kernel against the NumPy reference operation it replaces.

Runs on ``fused-host`` (the kernels compiled for the host, everywhere a C++
compiler is) and on ``cupy`` (marked ``gpu``, skipped without a device):
float32 and float64, odd sizes, zero size, more elements than one grid.
The reference is :class:`gpubp.backends.base.Backend` over NumPy.
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
SHAPES = [(1, 1), (7, 13), (33, 257), (0, 5)]
TOL = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=5e-6, atol=5e-6)}


@pytest.fixture(params=["fused-host", pytest.param("cupy", marks=[pytest.mark.gpu, requires_gpu])])
def kb(request):
    """A backend running the fused kernels: on the host build, or on the GPU."""
    if request.param == "fused-host":
        import kernel_host

        return kernel_host.HostFusedBackend(request.getfixturevalue("host_kernels"))
    return gpubp.get_backend("cupy")


def dev(kb, x):
    return kb.asarray(x)


def host(kb, x):
    return kb.to_host(x)


def close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


# --- forward and backward of every activation --------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_bias_activation_forward(kb, name, shape, dtype, rng):
    activation = ACTIVATIONS[name]
    z = (rng.normal(0, 3, shape)).astype(dtype)
    b = rng.normal(0, 1, shape[1]).astype(dtype)
    z_ref, a_ref, tmp = z.copy(), (np.empty_like(z) if activation.needs_z else None), np.empty_like(z)
    a_ref = z_ref if a_ref is None else a_ref
    REFERENCE.bias_activation_forward(activation, z_ref, b, a_ref, tmp)

    z_dev = dev(kb, z)
    a_dev = kb.empty(shape, dtype) if activation.needs_z else z_dev
    kb.bias_activation_forward(activation, z_dev, dev(kb, b), a_dev, kb.empty(shape, dtype))
    close(host(kb, a_dev), a_ref, dtype)
    if activation.needs_z:  # z kept, with the bias added
        close(host(kb, z_dev), z + b, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_backward(kb, name, shape, dtype, rng):
    activation = ACTIVATIONS[name]
    z = rng.normal(0, 3, shape).astype(dtype)
    a = np.empty_like(z)
    activation.forward(np, z, a, np.empty_like(z))
    delta = rng.normal(0, 1, shape).astype(dtype)
    expected = delta.copy()
    REFERENCE.activation_backward(activation, expected, z if activation.needs_z else None, a,
                                  np.empty_like(z), np.empty_like(z))
    delta_dev = dev(kb, delta)
    kb.activation_backward(activation, delta_dev, dev(kb, z) if activation.needs_z else None, dev(kb, a),
                           kb.empty(shape, dtype), kb.empty(shape, dtype))
    close(host(kb, delta_dev), expected, dtype)


def test_bias_add_keeps_z_when_a_is_another_buffer(kb, rng):
    """The sigmoid output of ``bce`` keeps z (the loss needs it) even though σ' needs only a."""
    z = rng.normal(0, 2, (9, 4))
    b = rng.normal(0, 1, 4)
    z_dev, a_dev = dev(kb, z), kb.empty((9, 4), "float64")
    kb.bias_loss_output(LOSSES["bce"], z_dev, dev(kb, b), a_dev, kb.empty((9, 4), "float64"),
                        kb.empty((2, 9, 1), "float64"))
    close(host(kb, z_dev), z + b, "float64")
    close(host(kb, a_dev), 1 / (1 + np.exp(-(z + b))), "float64")


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "gelu", "silu", "softplus", "elu"])
def test_float32_extremes_stay_finite(kb, name):
    activation = ACTIVATIONS[name]
    z = np.array([[-1e4, -100.0, -88.7, -20.0, 0.0, 20.0, 88.7, 100.0, 1e4]], dtype=np.float32)
    z_dev = dev(kb, z)
    a_dev = kb.empty(z.shape, "float32")
    kb.bias_activation_forward(activation, z_dev, kb.zeros(9, "float32"), a_dev, kb.empty(z.shape, "float32"))
    delta = kb.asarray(np.ones_like(z))
    kb.activation_backward(activation, delta, z_dev, a_dev, None, None)
    assert np.isfinite(host(kb, a_dev)).all() and np.isfinite(host(kb, delta)).all()


def test_nan_propagates_like_numpy(kb):
    """A NaN stays a NaN through relu and softmax (it is not clamped away), as in NumPy."""
    z = np.array([[np.nan, 1.0, -1.0]])
    z_dev = dev(kb, z)
    kb.bias_activation_forward(ACTIVATIONS["relu"], z_dev, kb.zeros(3, "float64"), z_dev, None)
    assert np.isnan(host(kb, z_dev)[0, 0]) and host(kb, z_dev)[0, 1] == 1.0
    rows = kb.empty((2, 1, 1), "float64")
    p = kb.empty((1, 3), "float64")
    kb.bias_loss_output(LOSSES["cross_entropy"], dev(kb, z), kb.zeros(3, "float64"), p, None, rows)
    assert np.isnan(host(kb, p)).all()


# --- output layer and losses ---------------------------------------------------------------------------
def _reference_loss(loss, z, b, y, dtype, weight=None):
    z_ref = z.copy()
    a_ref = np.empty_like(z)
    rows = np.empty((2, z.shape[0], 1), dtype)
    if loss.output is not None:
        REFERENCE.bias_loss_output(loss, z_ref, b, a_ref, np.empty_like(z), rows)
    else:
        REFERENCE.bias_activation_forward(ACTIVATIONS["identity"], z_ref, b, a_ref, None)
    delta = np.empty_like(z)
    value = REFERENCE.loss_value_and_delta(loss, z_ref, a_ref, y, delta, np.empty_like(z), rows, weight)
    return float(value), a_ref, delta


def _kernel_loss(kb, loss, z, b, y, dtype, weight=None):
    shape = z.shape
    z_dev = dev(kb, z)
    a_dev = kb.empty(shape, dtype)
    rows = kb.empty((2, shape[0], 1), dtype)
    if loss.output is not None:
        kb.bias_loss_output(loss, z_dev, dev(kb, b), a_dev, kb.empty(shape, dtype), rows)
    else:
        kb.bias_activation_forward(ACTIVATIONS["identity"], z_dev, dev(kb, b), a_dev, None)
    delta = kb.empty(shape, dtype)
    value = kb.loss_value_and_delta(loss, z_dev, a_dev, dev(kb, y), delta, kb.empty(shape, dtype), rows,
                                    None if weight is None else dev(kb, weight))
    return float(value), host(kb, a_dev), host(kb, delta)


def _targets(name, shape, rng, dtype):
    if name == "cross_entropy":
        soft = rng.uniform(0, 1, shape)
        return (soft / soft.sum(axis=1, keepdims=True)).astype(dtype)
    if name == "bce":
        return rng.uniform(0, 1, shape).astype(dtype)
    y = rng.normal(0, 2, shape).astype(dtype)
    y.flat[::3] = 0  # with z = b = 0 there, l1's sign(0) = 0 is exercised
    return y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (301, 10), (3, 1000)], ids=str)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_value_and_delta(kb, name, shape, dtype, rng):
    loss = LOSSES[name]
    z = rng.normal(0, 2, shape).astype(dtype)
    z.flat[::3] = 0
    b = np.zeros(shape[1], dtype) if name in ("l1", "huber", "mse") else rng.normal(0, 1, shape[1]).astype(dtype)
    y = _targets(name, shape, rng, dtype)
    value_ref, a_ref, delta_ref = _reference_loss(loss, z, b, y, dtype)
    value, a, delta = _kernel_loss(kb, loss, z, b, y, dtype)
    assert value == pytest.approx(value_ref, rel=TOL[dtype]["rtol"] * 10, abs=TOL[dtype]["atol"])
    close(a, a_ref, dtype)
    np.testing.assert_allclose(delta, delta_ref, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * max(np.abs(delta_ref).max(), 1e-30))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (301, 10), (3, 1000)], ids=str)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_weighted_loss_value_and_delta(kb, name, shape, dtype, rng):
    """Row weights (mean 1, some 0) in the kernels against the reference, and the reference against the
    definition: the weighted loss is Σ w·ℓ_row / N, each row of δ is w times the unweighted one."""
    loss = LOSSES[name]
    z = rng.normal(0, 2, shape).astype(dtype)
    b = rng.normal(0, 1, shape[1]).astype(dtype)
    y = _targets(name, shape, rng, dtype)
    weight = rng.uniform(0, 3, (shape[0], 1))
    weight[::4] = 0
    weight = (weight * shape[0] / max(weight.sum(), 1e-300)).astype(dtype)
    value_ref, _, delta_ref = _reference_loss(loss, z, b, y, dtype, weight)
    value, _, delta = _kernel_loss(kb, loss, z, b, y, dtype, weight)
    assert value == pytest.approx(value_ref, rel=TOL[dtype]["rtol"] * 10, abs=TOL[dtype]["atol"])
    np.testing.assert_allclose(delta, delta_ref, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * max(np.abs(delta_ref).max(), 1e-30))
    # the reference, row by row from its unweighted self
    rows_loss = [_reference_loss(loss, z[i:i + 1], b, y[i:i + 1], dtype)[0] for i in range(shape[0])]
    _, _, delta_plain = _reference_loss(loss, z, b, y, dtype)
    expected = float(np.dot(weight[:, 0].astype(np.float64), rows_loss)) / shape[0]
    assert value_ref == pytest.approx(expected, rel=TOL[dtype]["rtol"] * 10, abs=TOL[dtype]["atol"])
    np.testing.assert_allclose(delta_ref, delta_plain * weight, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * max(np.abs(delta_ref).max(), 1e-30))


def test_softmax_cross_entropy_with_huge_logits_is_finite(kb):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    y = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    value, p, delta = _kernel_loss(kb, LOSSES["cross_entropy"], z, np.zeros(3, np.float32), y, "float32")
    assert value == pytest.approx((2e4 + np.log(3)) / 2, rel=1e-6)
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    assert np.isfinite(delta).all()


@pytest.mark.parametrize("shape", [(1, 1), (37, 5), (0, 3), (2000, 11)], ids=str)
def test_one_hot(kb, shape, rng):
    labels = rng.integers(0, shape[1], shape[0])
    out = kb.zeros(shape, "float32") + 7
    kb.one_hot(dev(kb, labels), None, out)
    np.testing.assert_array_equal(host(kb, out), np.eye(shape[1], dtype=np.float32)[labels])


# --- BP3: deterministic column sums ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (31, 40), (1000, 7), (4099, 33), (0, 5), (70000, 2)], ids=str)
def test_column_sums(kb, shape, dtype, rng):
    delta = rng.normal(0, 1, shape).astype(dtype)
    chunks, _ = kb.ops.column_sum_plan(*shape)
    partials = kb.empty((chunks, shape[1]), dtype)
    out, again = kb.empty(shape[1], dtype), kb.empty(shape[1], dtype)
    kb.ops.column_sums(dev(kb, delta), out, partials)
    kb.ops.column_sums(dev(kb, delta), again, partials)
    expected = delta.astype(np.float64).sum(axis=0)
    scale = np.sqrt(max(shape[0], 1))
    np.testing.assert_allclose(host(kb, out), expected, rtol=0, atol=scale * (1e-5 if dtype == "float32" else 1e-13))
    np.testing.assert_array_equal(host(kb, out), host(kb, again))  # bit for bit, run to run


def test_column_sum_plan_splits_tall_matrices(kb):
    chunks, chunk_rows = kb.ops.column_sum_plan(70000, 2)
    assert chunks > 1 and chunks * chunk_rows >= 70000 > (chunks - 1) * chunk_rows and chunk_rows >= 32
    assert kb.ops.column_sum_plan(10, 3) == (1, 10)
    assert kb.ops.column_sum_plan(0, 3) == (1, 1)


def test_bias_grad_kernel_and_gemv_agree(kb, rng):
    delta = dev(kb, rng.normal(0, 1, (513, 19)))
    method = kb.bias_grad_method
    try:
        results = []
        for kb.bias_grad_method in ("kernel", "gemv"):
            out = kb.empty(19, "float64")
            kb.bias_grad(delta, kb.asarray(np.ones(513)), out)
            results.append(host(kb, out))
    finally:
        kb.bias_grad_method = method
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-12)


# --- optimizers: one launch over the flat buffer ------------------------------------------------------
SGD_CASES = {
    "plain": dict(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0),
    "momentum": dict(lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.0),
    "nesterov_wd": dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-2),
    "wd": dict(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.5),
}
ADAM_CASES = {
    "adam": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False),
    "adam_l2": dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, decoupled=False),
    "adamw": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 1001, 0])
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_step(kb, case, n, dtype, rng):
    hyper = SGD_CASES[case]
    params, velocity = rng.normal(0, 1, n).astype(dtype), np.zeros(n, dtype)
    p_dev, v_dev, steps = dev(kb, params), dev(kb, velocity), kb.zeros(1, np.int64)
    for _ in range(3):
        grads = rng.normal(0, 1, n).astype(dtype)
        sgd_math(np, params, grads, velocity, np.empty_like(params), **hyper)
        kb.sgd_update(p_dev, dev(kb, grads), v_dev if hyper["momentum"] else None, steps, None, **hyper)
    close(host(kb, p_dev), params, dtype)
    assert host(kb, steps).tolist() == [3]
    if hyper["momentum"]:
        close(host(kb, v_dev), velocity, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 1001, 0])
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_step(kb, case, n, dtype, rng):
    hyper = ADAM_CASES[case]
    params, m, v = rng.normal(0, 1, n).astype(dtype), np.zeros(n, dtype), np.zeros(n, dtype)
    p_dev, m_dev, v_dev, steps = dev(kb, params), dev(kb, m), dev(kb, v), kb.zeros(1, np.int64)
    for step in range(1, 4):  # the kernel reads the step count from the device
        grads = rng.normal(0, 1, n).astype(dtype)
        adam_math(np, params, grads, m, v, np.empty_like(params), np.empty_like(params), step=step, **hyper)
        kb.adam_update(p_dev, dev(kb, grads), m_dev, v_dev, steps, None, **hyper)
    for actual, expected in ((p_dev, params), (m_dev, m), (v_dev, v)):
        close(host(kb, actual), expected, dtype)
    assert host(kb, steps).tolist() == [3]


# --- launches ------------------------------------------------------------------------------------------
def test_more_elements_than_one_grid(kb, rng, monkeypatch):
    """With the grid capped at 2 blocks, each thread loops over many elements; results are unchanged."""
    monkeypatch.setattr(kb.ops, "max_blocks", 2)
    shape = (129, 33)  # 4257 elements for 512 threads, a partial last stride
    z = rng.normal(0, 1, shape)
    b = rng.normal(0, 1, 33)
    z_dev = dev(kb, z)
    kb.bias_activation_forward(ACTIVATIONS["tanh"], z_dev, dev(kb, b), z_dev, None)
    close(host(kb, z_dev), np.tanh(z + b), "float64")
    params = rng.normal(0, 1, 4257)
    p_dev = dev(kb, params)
    kb.sgd_update(p_dev, dev(kb, np.ones(4257)), None, kb.zeros(1, np.int64), None, lr=0.5, momentum=0.0,
                  nesterov=False, weight_decay=0.0)
    close(host(kb, p_dev), params - 0.5, "float64")


def test_every_launch_checks_that_its_arrays_are_contiguous(kb):
    """Also the kernels launched with their own grid (column partials, the non-finite flag)."""
    strided = kb.asarray(np.ones((8, 6)))[:, ::2]
    assert not strided.flags.c_contiguous
    with pytest.raises(AssertionError, match="contiguous"):
        kb.ops.any_nonfinite(strided, kb.asarray(np.array(0.0)), kb.zeros(1, np.int32))
    with pytest.raises(AssertionError, match="contiguous"):
        kb.ops.column_sums(strided, kb.zeros(3, "float64"), None)


def test_a_kernel_with_zero_elements_writes_nothing(kb):
    """Launched on its own with n = 0 (the launcher never does), a grid-stride kernel leaves memory alone."""
    delta = kb.asarray(np.full(4, 3.0))
    function = kb.ops._function(np.float64, "act_backward", "Relu")
    function((1,), (256,), (delta, delta, kb.zeros(4, "float64"), np.int64(0)))
    np.testing.assert_array_equal(host(kb, delta), np.full(4, 3.0))


def test_whole_network_step_runs_only_fused_kernels(host_kernels):
    """On the host build: a training step of each loss launches the fused kernels, grid ≤ max_blocks."""
    import kernel_host

    kb = kernel_host.HostFusedBackend(host_kernels, max_blocks=3)
    for loss in ("cross_entropy", "bce", "mse"):
        net = gpubp.MLP([5, 6, 3], activation="gelu", loss=loss, backend=kb, seed=0)
        rng = np.random.default_rng(0)
        host_kernels.launches.clear()
        net.train_step(rng.normal(size=(40, 5)), targets(loss, 40, 3, rng), gpubp.optim.Adam(1e-3))
        names = [name.split("<")[0] for name, _, _ in host_kernels.launches]
        assert names.count("gpubp::adam_step") == 1
        assert "gpubp::bias_act_forward" in names and "gpubp::act_backward" in names
        assert all(grid[0] <= 3 for name, grid, _ in host_kernels.launches if "column_partials" not in name)


def targets(loss, n, outputs, rng):
    from conftest import targets_for

    return targets_for(loss, n, outputs, rng)


# --- the divergence guard's flag ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [0, 1, 777, 5000])
@pytest.mark.parametrize("bad", [None, "nan_last", "inf_first", "neg_inf_middle", "loss_nan", "loss_inf"])
def test_nonfinite_flag(kb, n, bad, dtype, rng, monkeypatch):
    monkeypatch.setattr(kb.ops, "max_blocks", 2)  # 5000 elements: each thread checks several
    values = rng.normal(0, 1e30, n).astype(dtype)  # large but finite in float32 too
    loss = np.array(1.5, dtype)
    if bad == "nan_last" and n:
        values[-1] = np.nan
    elif bad == "inf_first" and n:
        values[0] = np.inf
    elif bad == "neg_inf_middle" and n:
        values[n // 2] = -np.inf
    elif bad == "loss_nan":
        loss = np.array(np.nan, dtype)
    elif bad == "loss_inf":
        loss = np.array(np.inf, dtype)
    expected = int(bad is not None and (n > 0 or bad.startswith("loss")))
    flags = kb.asarray(np.array([1, 7], np.int32))
    kb.nonfinite_flag(dev(kb, values), dev(kb, loss), flags[1:2], None)  # fresh: 0 or 1
    kb.nonfinite_flag(dev(kb, values), dev(kb, loss), flags[0:1], flags[0:1])  # carried: stays 1
    assert host(kb, flags).tolist() == [1, expected]


def test_optimizer_kernels_skip_when_flagged(kb, rng):
    params = rng.normal(size=50)
    p_dev, skip = dev(kb, params), kb.asarray(np.array([1], np.int32))
    steps = kb.asarray(np.array([5], np.int64))
    kb.sgd_update(p_dev, dev(kb, np.ones(50)), None, steps, skip, lr=0.1, momentum=0.0, nesterov=False,
                  weight_decay=0.0)
    m, v = kb.zeros(50, "float64"), kb.zeros(50, "float64")
    kb.adam_update(p_dev, dev(kb, np.ones(50)), m, v, steps, skip, lr=0.1, beta1=0.9, beta2=0.999,
                   eps=1e-8, weight_decay=0.0, decoupled=False)
    np.testing.assert_array_equal(host(kb, p_dev), params)
    assert not host(kb, m).any() and not host(kb, v).any()
    assert host(kb, steps).tolist() == [5], "a skipped step is not counted"
