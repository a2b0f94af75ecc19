"""The network: learning, the public contract, flat buffers, workspaces."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpubp
from gpubp.optim import SGD, Adam


def test_xor_reaches_full_accuracy(backend):
    X, y = gpubp.data.xor(400, noise=0.1, seed=0)
    net = gpubp.MLP([2, 8, 2], activation="tanh", loss="cross_entropy", backend=backend, seed=0)
    history = net.fit(X, y, epochs=60, batch_size=32, optimizer=Adam(0.02), progress=False, seed=0)
    assert net.evaluate(X, y)["accuracy"] == 1.0
    assert history["loss"][-1] < history["loss"][0] / 10


def test_two_spirals_reach_full_training_accuracy(backend):
    X, y = gpubp.data.spirals(2000, n_classes=2, seed=1)
    net = gpubp.MLP([2, 64, 64, 2], activation="relu", loss="cross_entropy", backend=backend, seed=1)
    net.fit(X, y, epochs=60, batch_size=64, optimizer=Adam(0.01), progress=False, seed=1)
    assert net.evaluate(X, y)["accuracy"] >= 0.995


def test_textbook_sigmoid_network_learns_xor_with_plain_sgd(backend):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    Y = np.array([[0], [1], [1], [0]], dtype=np.float32)
    net = gpubp.MLP([2, 4, 1], activation="sigmoid", output_activation="sigmoid", loss="mse", backend=backend,
                    seed=3)
    optimizer = SGD(lr=2.0, momentum=0.9)
    for _ in range(2000):
        net.train_step(X, Y, optimizer)
    np.testing.assert_array_equal(net.predict(X) > 0.5, Y > 0.5)


def test_regression_reaches_low_mse(backend):
    X, Y = gpubp.data.regression(2000, n_features=4, n_outputs=2, noise=0.01, seed=0)
    net = gpubp.MLP([4, 64, 64, 2], activation="gelu", loss="mse", backend=backend, seed=0)
    history = net.fit(X, Y, epochs=80, batch_size=64, optimizer=Adam(3e-3), progress=False, seed=0)
    assert net.evaluate(X, Y)["loss"] < 2e-3 * float(np.var(Y))
    assert "accuracy" not in history.keys()


def test_bce_multilabel(backend, rng):
    X = rng.normal(0, 1, (500, 3)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0], axis=1).astype(np.float32)
    net = gpubp.MLP([3, 16, 2], activation="relu", loss="bce", backend=backend, seed=0)
    net.fit(X, Y, epochs=40, batch_size=50, optimizer=Adam(0.02), progress=False)
    assert net.evaluate(X, Y)["accuracy"] > 0.97
    probabilities = net.predict(X)
    assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_predict_returns_probabilities_for_cross_entropy(backend, rng):
    net = gpubp.MLP([4, 5, 3], loss="cross_entropy", backend=backend, seed=0)
    p = net.predict(rng.normal(size=(10, 4)))
    assert isinstance(p, np.ndarray) and p.shape == (10, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_forward_returns_backend_array_and_predict_numpy(backend, rng):
    net = gpubp.MLP([4, 5, 2], backend=backend, seed=0)
    X = rng.normal(size=(9, 4))
    out = net.forward(X)
    assert isinstance(out, backend.xp.ndarray)
    np.testing.assert_allclose(backend.to_host(out), net.predict(X))


def test_forward_matches_manual_computation(backend, rng):
    net = gpubp.MLP([4, 6, 5, 3], activation=["relu", "tanh"], output_activation="identity", loss="mse",
                    backend=backend, dtype="float64", seed=4)
    W1, b1, W2, b2, W3, b3 = net.get_weights()
    X = rng.normal(size=(7, 4))
    expected = np.tanh(np.maximum(X @ W1 + b1, 0) @ W2 + b2) @ W3 + b3
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-12)


def test_predict_in_chunks_equals_one_pass(backend, rng):
    net = gpubp.MLP([4, 8, 3], loss="cross_entropy", backend=backend, seed=0)
    X = rng.normal(size=(103, 4))
    np.testing.assert_allclose(net.predict(X, batch_size=10), net.predict(X), rtol=1e-6)


def test_weights_are_views_into_one_flat_buffer(backend):
    net = gpubp.MLP([3, 4, 2], backend=backend, seed=0)
    assert net.n_params == 3 * 4 + 4 + 4 * 2 + 2
    net.params[...] = backend.xp.arange(net.n_params, dtype=net.dtype)
    W1, b1, W2, b2 = net.get_weights()
    np.testing.assert_array_equal(W1.ravel(), np.arange(12))
    np.testing.assert_array_equal(b1, np.arange(12, 16))
    np.testing.assert_array_equal(W2.ravel(), np.arange(16, 24))
    np.testing.assert_array_equal(b2, np.arange(24, 26))
    assert W1.shape == (3, 4) and b1.shape == (4,) and W2.shape == (4, 2) and b2.shape == (2,)


def test_set_weights_round_trip(backend, rng):
    net = gpubp.MLP([3, 4, 2], backend=backend, seed=0)
    new = [rng.normal(size=w.shape) for w in net.get_weights()]
    net.set_weights(new)
    for expected, got in zip(new, net.get_weights()):
        np.testing.assert_allclose(got, expected.astype(np.float32))
        assert got.dtype == np.float32


def test_same_seed_same_network_different_seed_different(backend):
    a = gpubp.MLP([5, 7, 3], backend=backend, seed=11).get_weights()
    b = gpubp.MLP([5, 7, 3], backend=backend, seed=11).get_weights()
    c = gpubp.MLP([5, 7, 3], backend=backend, seed=12).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("activation,scheme_std", [
    ("relu", lambda fi, fo: np.sqrt(2 / fi)),
    ("tanh", lambda fi, fo: np.sqrt(2 / (fi + fo))),
])
def test_auto_init_follows_activation(activation, scheme_std):
    net = gpubp.MLP([400, 300, 10], activation=activation, backend="numpy", seed=0)
    W1 = net.get_weights()[0]
    assert W1.std() == pytest.approx(scheme_std(400, 300), rel=0.02)
    assert np.all(net.get_weights()[1] == 0)


def test_glorot_uniform_init_is_scikit_learns_draw():
    W1 = gpubp.MLP([400, 300, 10], activation="relu", init="glorot_uniform", backend="numpy", seed=0).get_weights()[0]
    bound = np.sqrt(6 / 700)
    assert np.abs(W1).max() <= bound and np.abs(W1).max() > 0.99 * bound
    assert W1.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)


def test_train_step_returns_0d_backend_array_and_updates(backend, rng):
    net = gpubp.MLP([4, 6, 2], backend=backend, seed=0)
    X, Y = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
    before = net.get_weights()
    loss_before, grads = net.loss_and_grads(X, Y)
    loss = net.train_step(X, Y, SGD(lr=0.1))
    assert isinstance(loss, backend.xp.ndarray) and loss.shape == ()
    assert float(loss) == pytest.approx(loss_before, rel=1e-6)
    for old, new, g in zip(before, net.get_weights(), grads):
        np.testing.assert_allclose(new, old - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_loss_and_grads_changes_nothing(backend, rng):
    net = gpubp.MLP([4, 6, 2], backend=backend, seed=0)
    X, Y = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
    before = net.get_weights()
    first = net.loss_and_grads(X, Y)
    second = net.loss_and_grads(X, Y)
    assert first[0] == second[0]
    for a, b, w in zip(first[1], second[1], before):
        np.testing.assert_array_equal(a, b)
        assert a.shape == w.shape
    for old, new in zip(before, net.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_integer_labels_and_one_hot_rows_are_equivalent(backend, rng):
    net = gpubp.MLP([4, 6, 3], loss="cross_entropy", backend=backend, dtype="float64", seed=0)
    X = rng.normal(size=(10, 4))
    labels = rng.integers(0, 3, 10)
    loss_a, grads_a = net.loss_and_grads(X, labels)
    loss_b, grads_b = net.loss_and_grads(X, np.eye(3)[labels])
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_fit_history_and_validation(backend):
    X, y = gpubp.data.spirals(600, n_classes=3, seed=0)
    net = gpubp.MLP([2, 32, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=0)
    history = net.fit(X[:500], y[:500], epochs=3, batch_size=64, validation_data=(X[500:], y[500:]),
                      progress=False)
    assert len(history) == 3 and history.epochs == [1, 2, 3]
    assert set(history.keys()) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time", "samples_per_s",
                                  "val_time"}
    assert history["val_loss"][-1] == pytest.approx(net.evaluate(X[500:], y[500:])["loss"], rel=1e-6)
    assert all(t > 0 for t in history["time"])
    assert history.as_dict()["epoch"] == [1, 2, 3]


def test_fit_is_reproducible_with_seed(backend):
    X, y = gpubp.data.spirals(300, seed=0)
    runs = []
    for _ in range(2):
        net = gpubp.MLP([2, 16, 2], activation="tanh", loss="cross_entropy", backend=backend, seed=5)
        net.fit(X, y, epochs=2, batch_size=32, optimizer=SGD(0.1, momentum=0.9), progress=False, seed=9)
        runs.append(net.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_fit_progress_bar(backend, capsys, monkeypatch):
    """On a terminal a tqdm bar per epoch; into a file or a pipe one plain line per epoch."""
    import sys

    X, y = gpubp.data.xor(64, seed=0)
    net = gpubp.MLP([2, 4, 2], loss="cross_entropy", backend=backend, seed=0)
    net.fit(X, y, epochs=2, batch_size=16, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "loss" in lines[1]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    net.fit(X, y, epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "4/4" in err


def _step_peak_bytes(batch: int) -> int:
    net = gpubp.MLP([64, 256, 256, 10], activation="gelu", loss="cross_entropy", backend="numpy", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 64)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    optimizer = Adam(1e-3)
    net.train_step(X, y, optimizer)
    tracemalloc.start()
    try:
        for _ in range(3):
            net.train_step(X, y, optimizer)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_numpy_training_step_allocates_no_workspace():
    """After the first step of a batch shape, a step allocates nothing that grows with the batch.

    What remains is NumPy's fixed-size iterator buffer for broadcasting ufuncs
    (8192 elements) and small scalars, far below the smallest workspace buffer.
    """
    small, large = _step_peak_bytes(1024), _step_peak_bytes(8192)
    smallest_buffer = 8192 * 10 * 4
    assert large < smallest_buffer / 4, f"a step allocated {large} bytes at peak"
    assert large < small + 4096, f"step allocations grow with the batch: {small} -> {large} bytes"


def test_workspace_is_reused_per_batch_shape(backend, rng):
    net = gpubp.MLP([3, 5, 2], backend=backend, seed=0)
    optimizer = SGD(0.1)
    net.train_step(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)), optimizer)
    first = net.workspace(8)
    net.train_step(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)), optimizer)
    assert net.workspace(8) is first


def test_float64_network(backend, rng):
    net = gpubp.MLP([3, 4, 2], backend=backend, dtype="float64", seed=0)
    assert net.params.dtype == np.float64
    assert net.predict(rng.normal(size=(2, 3))).dtype == np.float64


def test_no_hidden_layer_is_logistic_regression(backend, rng):
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    net = gpubp.MLP([2, 2], loss="cross_entropy", backend=backend, seed=0)
    net.fit(X, y, epochs=30, batch_size=20, optimizer=Adam(0.05), progress=False)
    assert net.evaluate(X, y)["accuracy"] > 0.97
    assert net.activations == [] and net.output_activation == "softmax"


def test_repr_names_the_architecture():
    text = repr(gpubp.MLP([3, 4, 2], activation="relu", loss="cross_entropy", backend="numpy"))
    assert "sizes=[3, 4, 2]" in text and "'relu'" in text and "cross_entropy" in text and "params=26" in text


def test_inference_on_huge_finite_inputs_gives_inf_and_one_gpubp_warning(backend):
    """Found by the property tests: finite inputs near the float32 limit overflow the first GEMM.
    predict and evaluate return the non-finite values (as PyTorch does) with one GpubpWarning and no
    NumPy RuntimeWarning (which this suite turns into an error)."""
    import warnings

    from gpubp.errors import GpubpWarning

    net = gpubp.MLP([4, 5, 3], activation="identity", backend=backend, seed=0)
    X = np.full((2, 4), 2.3690432e38, np.float32)
    with pytest.warns(GpubpWarning, match="predict: 6 value.* inf or NaN") as caught:
        out = net.predict(X)
    assert out.shape == (2, 3) and not np.isfinite(out).any() and len(caught) == 1
    with pytest.warns(GpubpWarning, match="evaluate: the loss"):
        net.evaluate(X, np.zeros((2, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.predict(np.ones((2, 4), np.float32))  # ordinary inputs: no warning at all
