"""Sample weights: the weighted mean loss, its gradients, and fit/evaluate/train_step with weights, on every
backend. The oracle is the unweighted path on repeated rows: integer weights w mean "this row w times"."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import targets_for

import gpubp
from gpubp.errors import GpubpTypeError, GpubpValueError
from gpubp.gradcheck import gradcheck

LOSS_OUTPUTS = {"mse": ("tanh", 3), "l1": ("identity", 2), "huber": ("identity", 2),
                "cross_entropy": (None, 4), "bce": (None, 3)}


def _net(backend, loss, seed=0, dtype="float64"):
    output_activation, outputs = LOSS_OUTPUTS[loss]
    return gpubp.MLP([5, 7, outputs], activation="tanh", output_activation=output_activation, loss=loss,
                     backend=backend, dtype=dtype, seed=seed)


def _data(rng, loss, n=23):
    X = rng.normal(0, 1, (n, 5))
    return X, targets_for(loss, n, LOSS_OUTPUTS[loss][1], rng)


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
def test_integer_weights_equal_repeated_rows(backend, loss, rng):
    X, Y = _data(rng, loss)
    weight = rng.integers(0, 4, X.shape[0])
    weight[0] = 2
    net = _net(backend, loss)
    value, grads = net.loss_and_grads(X, Y, sample_weight=weight)
    value_rep, grads_rep = net.loss_and_grads(X.repeat(weight, axis=0), Y.repeat(weight, axis=0))
    assert value == pytest.approx(value_rep, rel=1e-12)
    for g, g_rep in zip(grads, grads_rep):
        np.testing.assert_allclose(g, g_rep, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("loss", sorted(LOSS_OUTPUTS))
def test_weighted_gradients_match_finite_differences(loss, rng):
    X, Y = _data(rng, loss, n=9)
    net = _net("numpy", loss)
    weight = rng.uniform(0, 2, X.shape[0])
    ws = net.load_batch(X, Y, weight)
    net.compute_gradients(ws)
    analytic = net.backend.to_host(net.grads).copy()
    eps, worst = 1e-6, 0.0
    params = net.backend.to_host(net.params).copy()
    for index in range(net.n_params):
        losses = []
        for sign in (1, -1):
            net.params[index] = params[index] + sign * eps
            net.feedforward(ws)
            losses.append(float(net.compute_loss(ws)))
        net.params[index] = params[index]
        numeric = (losses[0] - losses[1]) / (2 * eps)
        worst = max(worst, abs(numeric - analytic[index]) / max(abs(numeric) + abs(analytic[index]), 1e-6))
    assert worst < 1e-5
    # the weighted loss is Σ w ℓ / Σ w of the per-sample losses
    per_sample = [net.evaluate(X[i:i + 1], Y[i:i + 1])["loss"] for i in range(X.shape[0])]
    assert net.evaluate(X, Y, sample_weight=weight)["loss"] == pytest.approx(
        np.dot(weight, per_sample) / weight.sum(), rel=1e-12)
    assert gradcheck(net, X, Y) < 1e-5  # and the unweighted check still holds on the same network


def test_unit_weights_change_nothing(backend, rng):
    X, Y = _data(rng, "cross_entropy", n=40)
    plain, weighted = _net(backend, "cross_entropy"), _net(backend, "cross_entropy")
    h1 = plain.fit(X, Y, epochs=3, batch_size=8, seed=1, progress=False, validation_split=0.25)
    h2 = weighted.fit(X, Y, epochs=3, batch_size=8, seed=1, progress=False, validation_split=0.25,
                      sample_weight=np.ones(40))
    for a, b in zip(plain.get_weights(), weighted.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h1["loss"] == h2["loss"] and h1["val_accuracy"] == h2["val_accuracy"]


@pytest.mark.parametrize("optimizer", [lambda: gpubp.optim.SGD(0.1, momentum=0.9), lambda: gpubp.optim.Adam(0.01)])
def test_full_batch_fit_with_weights_equals_fit_on_repeated_rows(backend, optimizer, rng):
    X, Y = _data(rng, "bce", n=17)
    weight = rng.integers(0, 3, 17)
    weight[0] = 1
    weighted, repeated = _net(backend, "bce"), _net(backend, "bce")
    h1 = weighted.fit(X, Y, epochs=5, batch_size=10_000, optimizer=optimizer(), progress=False,
                      sample_weight=weight)
    h2 = repeated.fit(X.repeat(weight, axis=0), Y.repeat(weight, axis=0), epochs=5, batch_size=10_000,
                      optimizer=optimizer(), progress=False)
    for a, b in zip(weighted.get_weights(), repeated.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-10)
    np.testing.assert_allclose(h1["accuracy"], h2["accuracy"], rtol=1e-12)


def test_train_step_and_evaluate_weighted(backend, rng):
    X, Y = _data(rng, "cross_entropy", n=30)
    weight = rng.integers(0, 3, 30)
    a, b = _net(backend, "cross_entropy"), _net(backend, "cross_entropy")
    loss_a = a.train_step(X, Y, gpubp.optim.SGD(0.5), sample_weight=weight)
    loss_b = b.train_step(X.repeat(weight, axis=0), Y.repeat(weight, axis=0), gpubp.optim.SGD(0.5))
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-12)
    metrics = a.evaluate(X, Y, batch_size=7, sample_weight=weight)
    expected = a.evaluate(X.repeat(weight, axis=0), Y.repeat(weight, axis=0))
    assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"], rel=1e-12)


def test_validation_data_with_weights_and_split_keeps_weights(rng):
    X, Y = _data(rng, "cross_entropy", n=40)
    weight = rng.uniform(0.5, 2, 40)
    net = _net("numpy", "cross_entropy")
    x_val, y_val, w_val = X[:10], Y[:10], weight[:10]
    history = net.fit(X[10:], Y[10:], epochs=1, progress=False, validation_data=(x_val, y_val, w_val))
    assert history["val_loss"][-1] == pytest.approx(net.evaluate(x_val, y_val, sample_weight=w_val)["loss"])
    split = _net("numpy", "cross_entropy")
    history = split.fit(X, Y, epochs=2, seed=3, progress=False, validation_split=0.25, sample_weight=weight)
    held_out = np.random.default_rng(3).permutation(40)[:10]
    assert history["val_loss"][-1] == pytest.approx(
        split.evaluate(X[held_out], Y[held_out], sample_weight=weight[held_out])["loss"], rel=1e-12)


@pytest.mark.parametrize("weight, error, words", [
    (np.array([1.0, -1.0, 1.0]), GpubpValueError, "sample_weight must be >= 0"),
    (np.array([1.0, np.nan, 1.0]), GpubpValueError, "sample_weight"),
    (np.zeros(3), GpubpValueError, "zero for every sample"),
    (np.ones(4), GpubpValueError, "shape (3,)"),
    (np.ones((3, 2)), GpubpValueError, "shape (3,)"),
    (np.array(["a", "b", "c"]), GpubpTypeError, "sample_weight"),
])
def test_bad_sample_weight_is_refused_naming_it(weight, error, words, rng):
    X, Y = _data(rng, "mse", n=3)
    net = _net("numpy", "mse")
    before = net.get_weights()
    for call in (lambda: net.fit(X, Y, epochs=1, progress=False, sample_weight=weight),
                 lambda: net.train_step(X, Y, gpubp.optim.SGD(0.1), sample_weight=weight),
                 lambda: net.evaluate(X, Y, sample_weight=weight)):
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            call()
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_validation_split_that_leaves_no_weight_is_refused(rng):
    X, Y = _data(rng, "mse", n=4)
    held_out = np.random.default_rng(0).permutation(4)[:2]
    weight = np.ones(4)
    weight[held_out] = 0
    with pytest.raises(GpubpValueError, match="validation_split held out"):
        _net("numpy", "mse").fit(X, Y, epochs=1, progress=False, seed=0, validation_split=0.5, sample_weight=weight)


def test_bad_validation_triple_is_refused(rng):
    X, Y = _data(rng, "mse", n=4)
    with pytest.raises(GpubpValueError, match=r"validation_data\[2\]"):
        _net("numpy", "mse").fit(X, Y, epochs=1, progress=False, validation_data=(X, Y, np.ones(3)))
    with pytest.raises(GpubpTypeError, match="triple"):
        _net("numpy", "mse").fit(X, Y, epochs=1, progress=False, validation_data=(X, Y, None, None))


def test_callback_adds_metrics_and_stops(rng):
    X, Y = _data(rng, "mse", n=20)
    seen = []

    def callback(epoch, record):
        seen.append(epoch)
        record["double_loss"] = 2 * record["loss"]
        return epoch == 3

    history = _net("numpy", "mse").fit(X, Y, epochs=10, progress=False, callback=callback)
    assert seen == [1, 2, 3] and history.epochs == [1, 2, 3] and history.stopped_epoch == 3
    assert history["double_loss"] == [2 * v for v in history["loss"]]
    with pytest.raises(GpubpTypeError, match="callback"):
        _net("numpy", "mse").fit(X, Y, epochs=1, progress=False, callback=3)


def test_a_batch_whose_weights_are_all_zero_counts_for_nothing(backend, rng):
    X, Y = _data(rng, "cross_entropy", n=40)
    weight = np.ones(40)
    weight[:8] = 0
    net = _net(backend, "cross_entropy", dtype="float32")
    metrics = net.evaluate(X, Y, batch_size=8, sample_weight=weight)
    assert metrics == pytest.approx(net.evaluate(X[8:], Y[8:]), rel=1e-6)
    # a zero-weight batch has zero gradients: plain SGD leaves the weights as they were
    weighted, without = _net(backend, "cross_entropy"), _net(backend, "cross_entropy")
    history = weighted.fit(X, Y, epochs=2, batch_size=8, shuffle=False, optimizer=gpubp.optim.SGD(0.1),
                           progress=False, sample_weight=weight)
    without.fit(X[8:], Y[8:], epochs=2, batch_size=8, shuffle=False, optimizer=gpubp.optim.SGD(0.1), progress=False)
    assert np.isfinite(history["loss"]).all()
    for a, b in zip(weighted.get_weights(), without.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", [1e-300, 1e-30, 1e30, 1e300])
def test_the_scale_of_the_weights_does_not_matter(scale, rng):
    """Weights far outside float32's range (their sum too) give the loss and gradients of the same weights
    near 1: they are divided by the largest on the way in."""
    X, Y = _data(rng, "mse", n=12)
    weight = rng.uniform(0.5, 2, 12)
    net = _net("numpy", "mse", dtype="float32")
    value, grads = net.loss_and_grads(X, Y, sample_weight=weight)
    value_scaled, grads_scaled = net.loss_and_grads(X, Y, sample_weight=weight * scale)
    assert np.isfinite(value_scaled) and value_scaled == pytest.approx(value, rel=1e-6)
    for a, b in zip(grads, grads_scaled):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
