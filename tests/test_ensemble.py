"""gpubp.Ensemble: K networks trained together equal K networks trained alone.

The central check: member k of an ensemble, trained with seed k, learning rate k (weight decay
k, momentum k), equals a gpubp.MLP trained alone with the same seed, rates, data order and
epochs — to 1e-9 relative in float64 — for every loss and optimizer, with and without a
validation split and early stopping, on every backend (NumPy; the CUDA kernels built for the
host; CuPy where a GPU is present).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import interrupted_before, targets_for

import gpubp
from gpubp import optim
from gpubp.errors import DivergenceError, GpubpTypeError, GpubpValueError, GpubpWarning

SEEDS = [3, 11, 7]
LOSSES = ["mse", "l1", "huber", "cross_entropy", "bce"]


def _data(loss: str, rng: np.random.Generator, n: int = 90, features: int = 5, outputs: int = 3):
    X = rng.normal(size=(n, features))
    return X, targets_for(loss, n, outputs, rng)


def _optimizer(kind: str, members: bool):
    """A sweep's optimizer (one value per member), or member k's own, for each kind."""
    lrs, decays, momenta = [0.05, 0.2, 0.1], [0.0, 1e-3, 3e-2], [0.9, 0.0, 0.5]

    def pick(values, k):
        return values if members else values[k]

    def build(k: int = 0):
        if kind == "sgd":
            return optim.SGD(lr=pick(lrs, k), momentum=pick(momenta, k), weight_decay=pick(decays, k))
        if kind == "nesterov":
            return optim.SGD(lr=pick(lrs, k), momentum=pick([0.9, 0.5, 0.7], k), nesterov=True)
        if kind == "adam":
            return optim.Adam(lr=pick([rate / 10 for rate in lrs], k), weight_decay=pick(decays, k))
        return optim.AdamW(lr=pick([rate / 10 for rate in lrs], k), weight_decay=pick(decays, k))

    return build


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def _check_members(ensemble, nets, history, histories, keys=("loss", "val_loss", "accuracy", "val_accuracy")):
    for k, (net, alone) in enumerate(zip(nets, histories)):
        assert _relative(ensemble.backend.to_host(ensemble.params[k]), net.backend.to_host(net.params)) < 1e-9, k
        mine = history.member(k)
        assert mine.epochs == alone.epochs, k
        assert (mine.best_epoch, mine.stopped_epoch) == (alone.best_epoch, alone.stopped_epoch), k
        for key in keys:
            if key in alone.keys():
                assert _relative(mine[key], alone[key]) < 1e-9, (k, key)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
def test_members_equal_networks_trained_alone(backend, loss, kind, rng):
    X, Y = _data(loss, rng)
    build = _optimizer(kind, members=True)
    sizes = [5, 7, 3]
    ensemble = gpubp.Ensemble(sizes, 3, activation="tanh", loss=loss, backend=backend, dtype="float64", seeds=SEEDS)
    history = ensemble.fit(X, Y, epochs=4, batch_size=16, optimizer=build(), seed=21, progress=False)
    alone = _optimizer(kind, members=False)
    nets, histories = [], []
    for k, seed in enumerate(SEEDS):
        net = gpubp.MLP(sizes, activation="tanh", loss=loss, backend=backend, dtype="float64", seed=seed)
        histories.append(net.fit(X, Y, epochs=4, batch_size=16, optimizer=alone(k), seed=21, progress=False))
        nets.append(net)
    _check_members(ensemble, nets, history, histories)
    assert history["loss"].shape == (4, 3)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("loss", LOSSES)
def test_equal_with_validation_split_and_early_stopping(backend, kind, loss, rng):
    """Members stop at different epochs: each is frozen with its best weights, exactly as alone."""
    X, Y = _data(loss, rng, n=120)
    sizes = [5, 6, 4, 3]
    settings = dict(epochs=9, batch_size=20, seed=4, progress=False, validation_split=0.25, early_stopping=2,
                    min_delta=1e-3)
    ensemble = gpubp.Ensemble(sizes, 3, activation=["relu", "sigmoid"], loss=loss, backend=backend,
                              dtype="float64", seeds=SEEDS)
    history = ensemble.fit(X, Y, optimizer=_optimizer(kind, True)(), **settings)
    nets, histories = [], []
    for k, seed in enumerate(SEEDS):
        net = gpubp.MLP(sizes, activation=["relu", "sigmoid"], loss=loss, backend=backend, dtype="float64",
                        seed=seed)
        histories.append(net.fit(X, Y, optimizer=_optimizer(kind, False)(k), **settings))
        nets.append(net)
    _check_members(ensemble, nets, history, histories)


def test_some_members_stop_early_and_the_others_go_on(rng):
    X, Y = _data("mse", rng, n=120)
    ensemble = gpubp.Ensemble([5, 6, 3], 3, loss="mse", backend="numpy", dtype="float64", seeds=SEEDS)
    history = ensemble.fit(X, Y, epochs=30, batch_size=20, optimizer=optim.SGD(lr=[3.0, 1e-3, 0.05]), seed=1,
                           progress=False, validation_split=0.25, early_stopping=1, min_delta=1e-4)
    stopped = history.member_stopped
    assert any(e is not None for e in stopped)
    losses = history["val_loss"]
    for k, epoch in enumerate(stopped):
        if epoch is not None and epoch < len(history):
            assert np.isnan(losses[epoch:, k]).all() and np.isfinite(losses[:epoch, k]).all()
    assert history.stopped_epoch in (None, max(e or 0 for e in stopped))


def test_validation_data_sample_weights_and_a_schedule(backend, rng):
    X, Y = _data("cross_entropy", rng, n=80)
    Xv, Yv = _data("cross_entropy", rng, n=30)
    w, wv = rng.uniform(0, 2, 80), rng.uniform(0, 2, 30)
    settings = dict(epochs=3, batch_size=16, seed=2, progress=False, lr_schedule="cosine", sample_weight=w,
                    validation_data=(Xv, Yv, wv))
    ensemble = gpubp.Ensemble([5, 4, 3], 3, activation="gelu", loss="cross_entropy", backend=backend,
                              dtype="float64", seeds=SEEDS)
    history = ensemble.fit(X, Y, optimizer=optim.AdamW(lr=[1e-2, 3e-2, 2e-2], weight_decay=[0.0, 0.1, 0.01]),
                           **settings)
    nets, histories = [], []
    for k, (lr, wd) in enumerate(zip([1e-2, 3e-2, 2e-2], [0.0, 0.1, 0.01])):
        net = gpubp.MLP([5, 4, 3], activation="gelu", loss="cross_entropy", backend=backend, dtype="float64",
                        seed=SEEDS[k])
        histories.append(net.fit(X, Y, optimizer=optim.AdamW(lr=lr, weight_decay=wd), **settings))
        nets.append(net)
    _check_members(ensemble, nets, history, histories, keys=("loss", "accuracy", "val_loss", "val_accuracy", "lr"))


def test_train_step_returns_each_members_loss_on_the_device(backend, rng):
    X, Y = _data("bce", rng, n=24)
    ensemble = gpubp.Ensemble([5, 4, 3], 3, loss="bce", backend=backend, dtype="float64", seeds=SEEDS)
    losses = ensemble.train_step(X, Y, optim.SGD(lr=[0.1, 0.2, 0.3]))
    assert backend.is_device_array(losses) and losses.shape == (3,)
    for k in range(3):
        net = gpubp.MLP([5, 4, 3], loss="bce", backend=backend, dtype="float64", seed=SEEDS[k])
        assert float(net.train_step(X, Y, optim.SGD(lr=0.1 * (k + 1)))) == pytest.approx(float(losses[k]), rel=1e-12)
        assert _relative(backend.to_host(ensemble.params[k]), backend.to_host(net.params)) < 1e-12


def test_bootstrap_gives_each_member_its_own_resample(rng):
    X, Y = _data("mse", rng, n=64)
    ensemble = gpubp.Ensemble([5, 4, 3], 2, loss="mse", backend="numpy", dtype="float64", seeds=[1, 1])
    ensemble.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.SGD(lr=0.1), seed=3, progress=False, bootstrap=True)
    same_start = gpubp.Ensemble([5, 4, 3], 2, loss="mse", backend="numpy", dtype="float64", seeds=[1, 1])
    same_start.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.SGD(lr=0.1), seed=3, progress=False)
    assert not np.allclose(ensemble.params[0], ensemble.params[1])  # the same start, other rows
    assert np.array_equal(same_start.params[0], same_start.params[1])
    again = gpubp.Ensemble([5, 4, 3], 2, loss="mse", backend="numpy", dtype="float64", seeds=[1, 1])
    again.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.SGD(lr=0.1), seed=3, progress=False, bootstrap=True)
    assert np.array_equal(again.params, ensemble.params)  # reproducible from the seed


def test_bootstrap_on_the_fused_kernels_matches_numpy(host_kernels, rng):
    import kernel_host

    X, Y = _data("cross_entropy", rng, n=64)
    results = []
    for backend in ("numpy", kernel_host.HostFusedBackend(host_kernels)):
        ensemble = gpubp.Ensemble([5, 4, 3], 3, loss="cross_entropy", backend=backend, dtype="float64", seeds=SEEDS)
        ensemble.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.Adam(lr=[0.01, 0.02, 0.03]), seed=3,
                     progress=False, bootstrap=True)
        results.append(ensemble.params.copy())
    assert _relative(results[1], results[0]) < 1e-9


def test_seeds_initialise_members_as_networks(rng):
    ensemble = gpubp.Ensemble([4, 6, 2], 3, activation="relu", backend="numpy", dtype="float64", seeds=7)
    assert len(set(ensemble.seeds)) == 3
    for k, seed in enumerate(ensemble.seeds):
        net = gpubp.MLP([4, 6, 2], activation="relu", backend="numpy", dtype="float64", seed=seed)
        assert np.array_equal(ensemble.params[k], net.params)
    again = gpubp.Ensemble([4, 6, 2], 3, activation="relu", backend="numpy", dtype="float64", seeds=7)
    assert again.seeds == ensemble.seeds
    drawn = gpubp.Ensemble([4, 6, 2], 3, backend="numpy")
    assert len(set(drawn.seeds)) == 3


def test_predict_evaluate_member_and_from_members(rng):
    X, Y = _data("cross_entropy", rng, n=50)
    ensemble = gpubp.Ensemble([5, 8, 3], 4, activation="tanh", loss="cross_entropy", backend="numpy",
                              dtype="float64", seeds=[1, 2, 3, 4])
    ensemble.fit(X, Y, epochs=3, batch_size=10, optimizer=optim.Adam(lr=[1e-2, 2e-2, 3e-2, 4e-2]), seed=0,
                 progress=False)
    every = ensemble.predict(X, members=True)
    assert every.shape == (4, 50, 3)
    np.testing.assert_allclose(ensemble.predict(X), every.mean(axis=0), rtol=1e-12)
    nets = [ensemble.member(k) for k in range(4)]
    for k, net in enumerate(nets):
        np.testing.assert_allclose(net.predict(X), every[k], rtol=1e-12)
    metrics = ensemble.evaluate(X, Y)
    for k, net in enumerate(nets):
        alone = net.evaluate(X, Y)
        assert metrics["loss"][k] == pytest.approx(alone["loss"], rel=1e-12)
        assert metrics["accuracy"][k] == pytest.approx(alone["accuracy"], rel=1e-12)
    mean = every.mean(axis=0)
    expected = -np.mean(np.log(mean[np.arange(50), Y]))
    assert metrics["ensemble_loss"] == pytest.approx(expected, rel=1e-10)
    assert metrics["ensemble_accuracy"] == pytest.approx(np.mean(mean.argmax(axis=1) == Y))
    rebuilt = gpubp.Ensemble.from_members(nets)
    assert np.array_equal(rebuilt.params, ensemble.params)
    weights = ensemble.get_weights()
    assert weights[0].shape == (4, 5, 8) and weights[1].shape == (4, 8)
    np.testing.assert_array_equal(weights[2][1], nets[1].get_weights()[2])


def test_weighted_evaluate_matches_the_networks(rng):
    X, Y = _data("bce", rng, n=40)
    w = rng.uniform(0, 3, 40)
    ensemble = gpubp.Ensemble([5, 4, 3], 2, loss="bce", backend="numpy", dtype="float64", seeds=[5, 6])
    metrics = ensemble.evaluate(X, Y, sample_weight=w, batch_size=16)
    for k in range(2):
        alone = ensemble.member(k).evaluate(X, Y, sample_weight=w, batch_size=16)
        assert metrics["loss"][k] == pytest.approx(alone["loss"], rel=1e-12)
        assert metrics["accuracy"][k] == pytest.approx(alone["accuracy"], rel=1e-12)


def test_save_load_and_checkpoint_resume(tmp_path, rng, monkeypatch):
    X, Y = _data("cross_entropy", rng, n=60)
    settings = dict(epochs=6, batch_size=16, seed=8, progress=False, validation_split=0.2, early_stopping=2)

    def fresh():
        return gpubp.Ensemble([5, 6, 3], 3, loss="cross_entropy", backend="numpy", dtype="float64", seeds=SEEDS)

    whole = fresh()
    expected = whole.fit(X, Y, optimizer=optim.Adam(lr=[0.01, 0.05, 0.02]), **settings)
    path = tmp_path / "run.npz"
    first = fresh()
    interrupted_before(4, lambda: first.fit(X, Y, optimizer=optim.Adam(lr=[0.01, 0.05, 0.02]), checkpoint=path,
                                            **settings), monkeypatch)
    resumed = fresh()
    history = resumed.fit(X, Y, optimizer=optim.Adam(lr=[0.01, 0.05, 0.02]), checkpoint=path, resume=True,
                          **settings)
    assert history.resumed_from == 3
    np.testing.assert_allclose(resumed.params, whole.params, rtol=1e-12)
    np.testing.assert_allclose(history["loss"], expected["loss"], rtol=1e-12, equal_nan=True)
    assert history.best_epoch == expected.best_epoch
    model_path = tmp_path / "ensemble.npz"
    whole.save(model_path)
    loaded = gpubp.load(model_path, backend="numpy")
    assert isinstance(loaded, gpubp.Ensemble) and loaded.seeds == whole.seeds
    np.testing.assert_array_equal(loaded.params, whole.params)
    drawn = gpubp.Ensemble([5, 6, 3], 3, loss="cross_entropy", backend="numpy", dtype="float64")  # seeds drawn
    drawn.fit(X, Y, optimizer=optim.Adam(lr=[0.01, 0.05, 0.02]), checkpoint=path, resume=True, **settings)
    assert drawn.seeds == SEEDS  # the checkpoint's: those that drew the weights it trained on
    checkpointed = gpubp.io.load_checkpoint(path, backend="numpy")
    assert isinstance(checkpointed.net, gpubp.Ensemble)
    assert checkpointed.optimizer.member_steps == [int(s) for s in first_steps(path)]


def first_steps(path):
    meta = gpubp.serialization.read_metadata(path)
    return meta["optimizer"]["steps"]


def test_resume_refuses_another_number_of_members(tmp_path, rng):
    X, Y = _data("mse", rng, n=40)
    path = tmp_path / "run.npz"
    gpubp.Ensemble([5, 4, 3], 2, backend="numpy", seeds=[1, 2]).fit(X, Y, epochs=2, checkpoint=path, progress=False,
                                                                      seed=1)
    other = gpubp.Ensemble([5, 4, 3], 3, backend="numpy", seeds=[1, 2, 3])
    before = other.params.copy()
    with pytest.raises(GpubpValueError, match="different network"):
        other.fit(X, Y, epochs=2, checkpoint=path, resume=True, progress=False, seed=1)
    assert np.array_equal(other.params, before)


def _exploding(rng):
    X = rng.normal(size=(64, 5)) * 50
    return X, rng.normal(size=(64, 3)) * 50


def test_freeze_member_freezes_the_diverging_member_and_trains_the_others(backend, rng):
    X, Y = _exploding(rng)
    ensemble = gpubp.Ensemble([5, 16, 3], 3, activation="relu", loss="mse", backend=backend, dtype="float64",
                              seeds=SEEDS)
    with pytest.warns(GpubpWarning, match="member 1 produced NaN or Inf"):
        history = ensemble.fit(X, Y, epochs=4, batch_size=16, optimizer=optim.SGD(lr=[1e-5, 10.0, 2e-5]), seed=0,
                               progress=False, on_nonfinite="freeze_member")
    frozen = history.frozen[1]
    assert frozen is not None and frozen < 4 and history.frozen[0] is None and history.frozen[2] is None
    assert np.isfinite(ensemble.backend.to_host(ensemble.params)).all()  # frozen at its last finite weights
    assert np.isnan(history["loss"][frozen:, 1]).all() and np.isfinite(history["loss"][:, [0, 2]]).all()
    assert len(history.member(1)) == frozen
    for k in (0, 2):  # the others exactly as alone
        net = gpubp.MLP([5, 16, 3], activation="relu", loss="mse", backend=backend, dtype="float64", seed=SEEDS[k])
        net.fit(X, Y, epochs=4, batch_size=16, optimizer=optim.SGD(lr=[1e-5, 10.0, 2e-5][k]), seed=0,
                progress=False)
        assert _relative(backend.to_host(ensemble.params[k]), backend.to_host(net.params)) < 1e-9


@pytest.mark.parametrize("check_every", [1, 3])
def test_raise_names_the_member_and_keeps_every_member_before_the_bad_step(rng, check_every):
    import re

    X, Y = _exploding(rng)
    ensemble = gpubp.Ensemble([5, 16, 3], 3, activation="relu", loss="mse", backend="numpy", dtype="float64",
                              seeds=SEEDS)
    with pytest.raises(DivergenceError, match="member 1 had NaN or Inf") as raised:
        ensemble.fit(X, Y, epochs=3, batch_size=16, optimizer=optim.SGD(lr=[1e-5, 10.0, 2e-5]), seed=0,
                     progress=False, check_every=check_every)
    assert np.isfinite(ensemble.params).all()
    bad_step = int(re.search(r"at step (\d+)", str(raised.value)).group(1))
    for k in (0, 2):  # the healthy members too are as after the step before the bad one
        net = gpubp.MLP([5, 16, 3], activation="relu", loss="mse", backend="numpy", dtype="float64", seed=SEEDS[k])
        order = np.random.default_rng(0).permutation(64)
        rate = [1e-5, 10.0, 2e-5][k]
        sgd = optim.SGD(lr=rate)
        for step in range(bad_step - 1):
            rows = order[(step % 4) * 16:(step % 4 + 1) * 16]
            assert step < 4  # (one epoch's permutation is enough here)
            net.train_step(X[rows], Y[rows], sgd)
        np.testing.assert_allclose(ensemble.params[k], net.params, rtol=1e-12)


def test_two_ensembles_on_one_fused_backend_keep_their_own_rates(host_kernels, rng):
    """The device tables of per-member hyperparameters are shared scratch: each ensemble's step uploads its own."""
    import kernel_host

    backend = kernel_host.HostFusedBackend(host_kernels)
    X, Y = _data("mse", rng, n=32)
    big = gpubp.Ensemble([5, 4, 3], 3, backend=backend, dtype="float64", seeds=SEEDS)
    small = gpubp.Ensemble([5, 4, 3], 2, backend=backend, dtype="float64", seeds=[1, 2])
    big_rates, small_rates = optim.Adam(lr=[1e-3, 2e-3, 3e-3]), optim.Adam(lr=[0.5, 0.7])
    for _ in range(2):
        big.train_step(X, Y, big_rates)
        small.train_step(X, Y, small_rates)
    for k, rate in enumerate([1e-3, 2e-3, 3e-3]):
        net = gpubp.MLP([5, 4, 3], backend="numpy", dtype="float64", seed=SEEDS[k])
        adam = optim.Adam(lr=rate)
        for _ in range(2):
            net.train_step(X, Y, adam)
        np.testing.assert_allclose(big.params[k], net.params, rtol=1e-10)


def test_a_loss_of_ones_own_works_without_ensemble_metrics(rng):
    from gpubp.losses import LOSSES, Loss

    mine = Loss("my_l1", LOSSES["l1"].value_and_delta)
    X, Y = _data("mse", rng, n=30)
    ensemble = gpubp.Ensemble([5, 4, 3], 2, loss=mine, backend="numpy", dtype="float64", seeds=[1, 2])
    ensemble.fit(X, Y, epochs=2, batch_size=10, progress=False, seed=0)
    metrics = ensemble.evaluate(X, Y)
    assert "ensemble_loss" not in metrics and metrics["loss"].shape == (2,)
    assert ensemble.member(1).evaluate(X, Y)["loss"] == pytest.approx(metrics["loss"][1], rel=1e-12)


def test_a_callback_stops_the_run_as_it_stops_a_network(rng):
    X, Y = _data("mse", rng, n=40)

    def stop(epoch, record):
        return epoch == 2

    ensemble = gpubp.Ensemble([5, 4, 3], 2, backend="numpy", dtype="float64", seeds=[1, 2])
    history = ensemble.fit(X, Y, epochs=5, progress=False, seed=0, callback=stop)
    net = gpubp.MLP([5, 4, 3], backend="numpy", dtype="float64", seed=1)
    alone = net.fit(X, Y, epochs=5, progress=False, seed=0, callback=stop)
    assert history.member(0).stopped_epoch == alone.stopped_epoch == 2 and len(history) == 2
    assert history.member(0).epochs == alone.epochs


def test_skip_step_per_member(rng):
    X, Y = _exploding(rng)
    ensemble = gpubp.Ensemble([5, 16, 3], 2, activation="relu", loss="mse", backend="numpy", dtype="float64",
                              seeds=[1, 2])
    with pytest.raises(DivergenceError, match="member 1"):  # every step of member 1 skipped: as an MLP would
        ensemble.fit(X, Y, epochs=3, batch_size=16, optimizer=optim.SGD(lr=[1e-5, 10.0]), seed=0,
                     progress=False, on_nonfinite="skip_step")


def test_every_member_frozen_ends_the_run(rng):
    X, Y = _exploding(rng)
    ensemble = gpubp.Ensemble([5, 16, 3], 2, activation="relu", loss="mse", backend="numpy", dtype="float64",
                              seeds=[1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GpubpWarning)
        history = ensemble.fit(X, Y, epochs=5, batch_size=16, optimizer=optim.SGD(lr=10.0), seed=0, progress=False,
                               on_nonfinite="freeze_member")
    assert None not in history.frozen and history.stopped_epoch == max(history.frozen) == len(history) < 5


def test_progress_lines_show_the_members_spread(rng, capsys):
    X, Y = _data("cross_entropy", rng, n=40)
    ensemble = gpubp.Ensemble([5, 4, 3], 3, loss="cross_entropy", backend="numpy", seeds=SEEDS)
    ensemble.fit(X, Y, epochs=2, batch_size=16, progress="lines", seed=0)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "loss" in lines[0] and "[" in lines[0] and "training 3" in lines[0]


def test_bad_arguments_are_named(rng):
    X, Y = _data("mse", rng, n=20)
    with pytest.raises(GpubpValueError, match="n_members"):
        gpubp.Ensemble([5, 3], 0)
    with pytest.raises(GpubpValueError, match="seeds must hold one seed per member"):
        gpubp.Ensemble([5, 3], 3, seeds=[1, 2])
    with pytest.raises(GpubpTypeError, match="seeds"):
        gpubp.Ensemble([5, 3], 2, seeds="a")
    ensemble = gpubp.Ensemble([5, 3], 3, backend="numpy", seeds=SEEDS)
    before = ensemble.params.copy()
    with pytest.raises(GpubpValueError, match="lr \\(2 values\\).*Ensemble of 2 members.*3 members"):
        ensemble.train_step(X, Y, optim.SGD(lr=[0.1, 0.2]))
    with pytest.raises(GpubpValueError, match="lr \\(2 values\\).*single network"):
        gpubp.MLP([5, 3], backend="numpy").train_step(X, Y, optim.SGD(lr=[0.1, 0.2]))
    with pytest.raises(GpubpValueError, match="lr\\[1\\]"):
        optim.Adam(lr=[0.1, -1.0])
    with pytest.raises(GpubpValueError, match="one value per member alike"):
        optim.SGD(lr=[0.1, 0.2], momentum=[0.9, 0.9, 0.9])
    with pytest.raises(GpubpValueError, match="nesterov"):
        optim.SGD(lr=0.1, momentum=[0.9, 0.0], nesterov=True)
    with pytest.raises(GpubpValueError, match="X has 4 features"):
        ensemble.fit(X[:, :4], Y, progress=False)
    with pytest.raises(GpubpValueError, match="on_nonfinite"):
        ensemble.fit(X, Y, progress=False, on_nonfinite="explode")
    with pytest.raises(GpubpValueError, match="freeze_member is for a gpubp.Ensemble"):
        gpubp.MLP([5, 3], backend="numpy").fit(X, Y, progress=False, on_nonfinite="freeze_member")
    with pytest.raises(GpubpTypeError, match="bootstrap"):
        ensemble.fit(X, Y, progress=False, bootstrap="yes")
    with pytest.raises(GpubpValueError, match="member index"):
        ensemble.member(3)
    with pytest.raises(GpubpValueError, match="one architecture"):
        gpubp.Ensemble.from_members([gpubp.MLP([5, 3], backend="numpy"), gpubp.MLP([5, 4, 3], backend="numpy")])
    assert np.array_equal(ensemble.params, before)


def test_float32_members_track_float32_networks(backend, rng):
    X, Y = _data("cross_entropy", rng, n=64)
    ensemble = gpubp.Ensemble([5, 8, 3], 2, activation="relu", loss="cross_entropy", backend=backend, seeds=[1, 2])
    ensemble.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.Adam(lr=[1e-2, 3e-2]), seed=0, progress=False)
    for k, lr in enumerate([1e-2, 3e-2]):
        net = gpubp.MLP([5, 8, 3], activation="relu", loss="cross_entropy", backend=backend, seed=k + 1)
        net.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.Adam(lr=lr), seed=0, progress=False)
        np.testing.assert_allclose(backend.to_host(ensemble.params[k]), backend.to_host(net.params), atol=2e-5)


def test_numpy_splits_a_batched_gemm_over_its_threads_with_blas_single_threaded(rng):
    """The split product equals NumPy's stacked one, and BLAS's thread count is put back after it."""
    from gpubp.backends.blas import BLAS
    from gpubp.backends.numpy_backend import NumpyBackend

    backend = NumpyBackend(threads=2)
    a = rng.normal(size=(8, 256, 64))
    shared = rng.normal(size=(256, 64))
    w = rng.normal(size=(8, 64, 80))
    for left, expected in ((a, np.matmul(a, w)), (shared, np.matmul(shared, w))):
        out = np.empty((8, 256, 80))
        backend.matmul(left, w, out=out)
        np.testing.assert_allclose(out, expected, rtol=1e-12)
    transposed = np.empty((8, 64, 80))
    backend.matmul(shared.T, rng.normal(size=(8, 256, 80)), out=transposed)
    if BLAS.available:
        get, _ = BLAS._lookup()
        before = get()
        with BLAS.single():
            with BLAS.single():
                assert get() == 1
            assert get() == 1
        assert get() == before


def test_plot_members_draws_every_member(tmp_path, rng):
    pytest.importorskip("matplotlib")
    from gpubp.plot import plot_members

    X, Y = _data("cross_entropy", rng, n=40)
    ensemble = gpubp.Ensemble([5, 4, 3], 4, loss="cross_entropy", backend="numpy", seeds=[1, 2, 3, 4])
    history = ensemble.fit(X, Y, epochs=2, batch_size=16, progress=False, validation_split=0.25, seed=0)
    path = plot_members(history, tmp_path / "members.png", labels=["a", "a", "b", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(GpubpValueError, match="labels must name each of the 4 members"):
        plot_members(history, tmp_path / "other.png", labels=["a"])
    assert not (tmp_path / "other.png").exists()


def test_select_leaves_out_members_and_keeps_their_seeds(rng):
    X, Y = _exploding(rng)
    ensemble = gpubp.Ensemble([5, 16, 3], 3, activation="relu", loss="mse", backend="numpy", dtype="float64",
                              seeds=SEEDS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GpubpWarning)
        history = ensemble.fit(X, Y, epochs=2, batch_size=16, optimizer=optim.SGD(lr=[1e-5, 10.0, 2e-5]), seed=0,
                               progress=False, on_nonfinite="freeze_member")
    healthy = ensemble.select([k for k, epoch in enumerate(history.frozen) if epoch is None])
    assert healthy.n_members == 2 and healthy.seeds == [SEEDS[0], SEEDS[2]]
    np.testing.assert_array_equal(healthy.params, ensemble.params[[0, 2]])
    assert np.isfinite(healthy.predict(X)).all()
    with pytest.raises(GpubpValueError, match="member index"):
        ensemble.select([0, 3])
    with pytest.raises(GpubpValueError, match="member index in \\[0, 3\\)"):
        history.member(3)


def test_sweep_table_refuses_what_it_does_not_have(rng):
    X, Y = _data("mse", rng, n=40)
    ensemble = gpubp.Ensemble([5, 4, 3], 2, backend="numpy", seeds=[1, 2])
    history = ensemble.fit(X, Y, epochs=2, progress=False, seed=0, validation_split=0.25)
    rows = gpubp.sweep.results(history, [0.1, 0.2], ensemble.seeds, restored=False)
    with pytest.raises(GpubpValueError, match="'val_los'"):
        gpubp.sweep.ranked(rows, "val_los")
    with pytest.raises(GpubpValueError, match="columns \\['val_acc'\\]"):
        gpubp.sweep.table(rows, ["member", "val_acc"])
    with pytest.raises(GpubpValueError, match="one value per member"):
        gpubp.sweep.results(history, [0.1], ensemble.seeds, restored=False)
    assert gpubp.sweep.table(gpubp.sweep.ranked(rows, "val_loss"), ["member", "val_loss"]).count("\n") == 2
