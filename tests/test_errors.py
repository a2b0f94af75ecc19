"""Bad input is refused with a message naming the argument, and a refused call changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import gpubp
from gpubp.errors import GpubpError, GpubpTypeError, GpubpValueError
from gpubp.optim import SGD, Adam


@pytest.fixture
def net(backend):
    return gpubp.MLP([4, 5, 3], activation="relu", loss="cross_entropy", backend=backend, seed=0)


@pytest.fixture
def regression_net(backend):
    return gpubp.MLP([4, 5, 2], activation="tanh", loss="mse", backend=backend, seed=0)


X_OK = np.zeros((6, 4), dtype=np.float32)
LABELS_OK = np.array([0, 1, 2, 0, 1, 2])

BAD_X = [
    (np.zeros((6, 5)), GpubpValueError, "X has 5 features, the network's input layer expects 4"),
    (np.zeros(4), GpubpValueError, r"X must be 2-D \(n_samples, 4 features\), got 1-D shape \(4,\)"),
    (np.zeros((2, 3, 4)), GpubpValueError, "X must be 2-D"),
    (np.zeros((0, 4)), GpubpValueError, "X is empty: it has 0 samples"),
    (np.full((6, 4), np.nan), GpubpValueError,
     r"X contains 24 non-finite value\(s\) \(NaN or Inf\), the first at index \(0, 0\)"),
    (np.where(np.eye(6, 4) > 0, np.inf, 0.0), GpubpValueError, "X contains 4 non-finite"),
    (np.zeros((6, 4), dtype=complex), GpubpTypeError, "X must hold real numbers .* got dtype complex128"),
    (np.array([["a"] * 4] * 6), GpubpTypeError, "X must hold real numbers"),
    (np.zeros((6, 4), dtype=bool), GpubpTypeError, "got dtype bool"),
    ([[1, 2, 3, 4], [1, 2]], GpubpTypeError, "X must be"),
]


def _assert_unchanged(net, before):
    for old, new in zip(before, net.get_weights()):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("X,error,message", BAD_X)
def test_bad_x_in_every_entry_point(net, X, error, message):
    before = net.get_weights()
    optimizer = Adam()
    calls = [lambda: net.train_step(X, LABELS_OK, optimizer), lambda: net.loss_and_grads(X, LABELS_OK),
             lambda: net.predict(X), lambda: net.evaluate(X, LABELS_OK),
             lambda: net.fit(X, LABELS_OK, epochs=1, progress=False, optimizer=optimizer)]
    for call in calls:
        with pytest.raises(error, match=message):
            call()
    _assert_unchanged(net, before)
    assert optimizer.state == {} and optimizer.steps == 0


BAD_LABELS = [
    (np.array([0, 1, 3, 0, 1, 2]), GpubpValueError, r"Y has class labels in \[0, 3\], expected labels in \[0, 2\]"),
    (np.array([0, -1, 2, 0, 1, 2]), GpubpValueError, r"class labels in \[-1, 2\]"),
    (np.array([0.0, 1, 2, 0, 1, 2]), GpubpTypeError, "must be integers, got dtype float64"),
    (np.array([0, 1, 2]), GpubpValueError, "Y has 3 rows but X has 6 samples"),
    (np.zeros((6, 4)), GpubpValueError, r"Y must have shape \(n, 3\) or \(n,\) integer labels"),
    (np.full((6, 3), 0.5), GpubpValueError, "rows must be one-hot or probabilities summing to 1"),
    (np.eye(3)[[0, 1, 2, 0, 1, 2]] * 2 - 0.5, GpubpValueError, r"probabilities in \[0, 1\]"),
    (np.array(1), GpubpValueError, "Y has a scalar but X has 6 samples"),
]


@pytest.mark.parametrize("Y,error,message", BAD_LABELS)
def test_bad_labels(net, Y, error, message):
    before = net.get_weights()
    optimizer = SGD(0.1)
    with pytest.raises(error, match=message):
        net.train_step(X_OK, Y, optimizer)
    with pytest.raises(error, match=message):
        net.fit(X_OK, Y, epochs=1, progress=False)
    with pytest.raises(error, match=message):
        net.evaluate(X_OK, Y)
    _assert_unchanged(net, before)


def test_bad_regression_targets(regression_net):
    with pytest.raises(GpubpValueError, match=r"Y must have shape \(n, 2\) for loss 'mse', got \(6, 3\)"):
        regression_net.loss_and_grads(X_OK, np.zeros((6, 3)))
    Y = np.zeros((6, 2))
    Y[2, 1] = np.nan
    with pytest.raises(GpubpValueError,
                       match=r"Y contains 1 non-finite value\(s\) \(NaN or Inf\), the first at index \(2, 1\)"):
        regression_net.loss_and_grads(X_OK, Y)


def test_bce_targets_must_be_probabilities(backend):
    net = gpubp.MLP([4, 2], loss="bce", backend=backend)
    with pytest.raises(GpubpValueError, match=r"Y must hold probabilities in \[0, 1\] for loss 'bce'"):
        net.loss_and_grads(X_OK, np.full((6, 2), 2.0))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(sizes=[4]), GpubpValueError, "sizes must name at least an input and an output width"),
    (dict(sizes=[4, 0, 2]), GpubpValueError, r"sizes\[1\] must be >= 1, got 0"),
    (dict(sizes=[4, 2.5]), GpubpTypeError, r"sizes\[1\] must be an integer"),
    (dict(sizes="784,10"), GpubpTypeError, "sizes must be a list of layer widths"),
    (dict(activation="sigmod"), GpubpValueError, "unknown activation 'sigmod'; expected one of"),
    (dict(activation=["relu"]), GpubpValueError, r"activation lists 1 names but the network has 2 hidden layer\(s\)"),
    (dict(loss="mse", output_activation="softmax"), GpubpValueError,
     "'softmax' is only supported fused with loss 'cross_entropy'"),
    (dict(loss="cross_entropy", output_activation="relu"), GpubpValueError,
     "output_activation must be None or 'softmax'"),
    (dict(output_activation="nope"), GpubpValueError, "unknown output_activation 'nope'"),
    (dict(loss="hinge"), GpubpValueError, "unknown loss 'hinge'"),
    (dict(dtype="float16"), GpubpValueError, r"dtype must be one of \['float32', 'float64'\], got 'float16'"),
    (dict(dtype="banana"), GpubpValueError, "dtype must be one of"),
    (dict(init="glorot"), GpubpValueError, "unknown init 'glorot'"),
    (dict(seed=-1), GpubpValueError, "seed must be >= 0"),
    (dict(seed="1"), GpubpTypeError, "seed must be None or an integer"),
    (dict(backend="tpu"), GpubpValueError, "unknown backend 'tpu'"),
])
def test_bad_constructor_arguments(kwargs, error, message):
    arguments = {"sizes": [4, 5, 6, 3], **kwargs}
    with pytest.raises(error, match=message):
        gpubp.MLP(backend=arguments.pop("backend", "numpy"), **arguments)


def test_bad_fit_arguments(net):
    before = net.get_weights()
    for kwargs, error, message in [
        (dict(epochs=0), GpubpValueError, "epochs must be >= 1, got 0"),
        (dict(batch_size=0), GpubpValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.0), GpubpTypeError, "batch_size must be an integer"),
        (dict(optimizer="adam"), GpubpTypeError, "optimizer must be a gpubp.optim optimizer"),
        (dict(shuffle="yes"), GpubpTypeError, "shuffle must be True or False"),
        (dict(validation_data=X_OK), GpubpTypeError, r"validation_data must be a pair \(X_val, Y_val\)"),
        (dict(validation_data=(np.zeros((2, 5)), LABELS_OK[:2])), GpubpValueError,
         r"validation_data\[0\] has 5 features"),
        (dict(validation_data=(X_OK[:2], np.array([0, 7]))), GpubpValueError,
         "validation_data\\[1\\] has class labels"),
    ]:
        with pytest.raises(error, match=message):
            net.fit(X_OK, LABELS_OK, progress=False, **kwargs)
    _assert_unchanged(net, before)


def test_set_weights_validates_before_writing(net):
    before = net.get_weights()
    bad_shape = [w.copy() for w in before]
    bad_shape[2] = np.zeros((5, 4))
    with pytest.raises(GpubpValueError, match=r"weights\[2\] \(W2\) must have shape \(5, 3\), got \(5, 4\)"):
        net.set_weights(bad_shape)
    with pytest.raises(GpubpValueError, match="weights must hold 4 arrays"):
        net.set_weights(before[:3])
    with pytest.raises(GpubpTypeError, match="weights must be a list"):
        net.set_weights(np.zeros(4))
    nan_last = [w.copy() for w in before]
    nan_last[3][0] = np.nan
    with pytest.raises(GpubpValueError, match=r"weights\[3\] \(b2\) contains 1 non-finite"):
        net.set_weights(nan_last)
    _assert_unchanged(net, before)


def test_every_error_is_a_gpubp_error_and_a_builtin():
    assert issubclass(GpubpValueError, ValueError) and issubclass(GpubpValueError, GpubpError)
    assert issubclass(GpubpTypeError, TypeError) and issubclass(GpubpTypeError, GpubpError)


def test_cross_entropy_over_one_output_is_refused():
    with pytest.raises(GpubpValueError, match="needs at least 2 outputs .* use loss='bce' with 1 output, or 2 outputs"):
        gpubp.MLP([2, 8, 1], loss="cross_entropy")
    gpubp.MLP([2, 8, 1], loss="bce", backend="numpy")  # the yes/no network it suggests


def test_the_plot_module_is_reachable_without_importing_matplotlib():
    import subprocess
    import sys

    code = "import sys, gpubp; assert callable(gpubp.plot.plot_history); print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_values_the_network_dtype_cannot_hold_are_refused():
    net = gpubp.MLP([4, 3, 2], backend="numpy", seed=0)
    X = np.ones((3, 4))
    X[1, 2] = 3.5e38
    with pytest.raises(GpubpValueError, match=r"X holds 3.5e\+38 \(first beyond the range at index \(1, 2\)\), "
                                              r"more than the largest float32"):
        net.predict(X)
    with pytest.raises(GpubpValueError, match="Y holds 1e\\+39"):
        net.loss_and_grads(np.ones((3, 4)), np.full((3, 2), 1e39))
    gpubp.MLP([4, 3, 2], backend="numpy", dtype="float64", seed=0).predict(X)  # float64 holds it


def test_one_sample_as_a_1d_array_says_how_to_pass_it():
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    with pytest.raises(GpubpValueError, match=r"got 1-D shape \(3,\); for a single sample of 3 features pass "
                                              r"X.reshape\(1, -1\)"):
        net.predict(np.ones(3))
    assert net.predict(np.ones(3).reshape(1, -1)).shape == (1, 2)


def test_boolean_targets_for_the_classification_losses():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    multi_label = rng.random((20, 4)) > 0.5
    bce = gpubp.MLP([3, 5, 4], loss="bce", backend="numpy", seed=0)
    loss_bool, grads_bool = bce.loss_and_grads(X, multi_label)
    loss_float, grads_float = bce.loss_and_grads(X, multi_label.astype(np.float32))
    assert loss_bool == loss_float
    history = bce.fit(X, multi_label, epochs=2, batch_size=8, progress=False)
    assert len(history) == 2
    one_hot = np.eye(3, dtype=bool)[rng.integers(0, 3, 20)]
    ce = gpubp.MLP([3, 5, 3], loss="cross_entropy", backend="numpy", seed=0)
    assert ce.loss_and_grads(X, one_hot)[0] == ce.loss_and_grads(X, one_hot.astype(np.float64))[0]
    with pytest.raises(GpubpTypeError, match="must hold real numbers"):  # not for the regression losses
        gpubp.MLP([3, 5, 4], loss="mse", backend="numpy").loss_and_grads(X, multi_label)


def test_matmul_precision_choices(caplog):
    X, y = gpubp.data.spirals(64, n_classes=3, seed=0)
    exact = gpubp.MLP([2, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    with caplog.at_level("INFO", logger="gpubp"):
        tf32 = gpubp.MLP([2, 8, 3], loss="cross_entropy", backend="numpy", seed=0, matmul_precision="TF32")
    assert "has no effect on backend 'numpy'" in caplog.text and "matmul_precision='tf32'" in repr(tf32)
    assert exact.loss_and_grads(X, y)[0] == tf32.loss_and_grads(X, y)[0]  # the CPU computes exactly either way
    with pytest.raises(GpubpValueError,
                       match=r"unknown matmul_precision 'half'; expected one of \['highest', 'tf32'\]"):
        gpubp.MLP([2, 8, 3], matmul_precision="half")
